"""Start the demo's training from an earlier demo checkpoint (``train.py --init-from``)."""

from __future__ import annotations

from pathlib import Path

import torch

from export.checkpoints.types import CheckpointError


def load_demo_weights(model: torch.nn.Module, path: Path) -> dict:
    """Load an ``ome_stylegan2`` checkpoint written by ``train.py`` into ``model`` (a
    ``DemoModel`` of the same architecture); returns the checkpoint's ``opts``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({e}); pass a demo checkpoint") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != "ome_stylegan2":
        raise CheckpointError(f"{path}: not an ome_stylegan2 checkpoint; pass one written by export/demo/train.py")
    state = ckpt["state_dict"]
    parts = {"encoder.": model.encoder, "decoder.": model.generator}
    for prefix, module in parts.items():
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise CheckpointError(
                f"{path}: its {prefix[:-1]} does not match the demo architecture ({first}); "
                "train with the same DemoConfig"
            ) from e
    with torch.no_grad():
        model.latent_avg.copy_(ckpt["latent_avg"].reshape(model.latent_avg.shape))
    return dict(ckpt.get("opts", {}))
