"""MTV-TSA (``mtv_tsa``, Deep-GAN-Encoders).

``mtv_tsa``: the authors' bare ``BE`` state dict (``disanda/Deep-GAN-Encoders``,
``torch.save(E.state_dict())``; a DataParallel ``module.`` prefix is stripped) plus a StyleGAN2
generator given with ``--generator`` (rosinality ``g_ema``) whose W+ count matches the encoder's
codes (14 / 16 / 18 for 256 / 512 / 1024 px). Schedule: one pass, ``w = E(x)`` (absolute codes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.checkpoints.formats import MTV_FORMATS
from export.checkpoints.loading import build_generator, build_loaded, g_ema, latent_avg_of, strip_prefix
from export.checkpoints.types import CheckpointError, LoadedCheckpoint, StageModel
from export.checkpoints.values import tensor_dict
from export.models.mtv import NOISE_SEED, MTVEncoder, infer_mtv_config

log = logging.getLogger(__name__)

FORMATS = MTV_FORMATS


def detect(ckpt: Mapping) -> str | None:
    """``mtv_tsa`` for a bare BE state dict (a DataParallel ``module.`` prefix allowed), else None."""
    keys = [k[len("module.") :] if isinstance(k, str) and k.startswith("module.") else k for k in ckpt]
    if "FromRGB.from_rgb.weight" in keys and any(str(k).startswith("decode_block.") for k in keys):
        return "mtv_tsa"
    return None


def load(fmt: str, ckpt: Any, where: str, generator_file: Mapping | None) -> LoadedCheckpoint:
    """Build and load an ``mtv_tsa`` encoder with the ``--generator`` file's StyleGAN2."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{where} is a {type(ckpt).__name__}; expected the MTV-TSA encoder state dict")
    state = tensor_dict(ckpt.get("state_dict", ckpt), where)
    if state and all(k.startswith("module.") for k in state):
        log.info("%s: stripping the DataParallel 'module.' prefix", where)
        state = strip_prefix(state, "module.")
    encoder, config = build_loaded(state, where, infer_mtv_config, lambda c: MTVEncoder(**c), "MTV-TSA encoder")
    if not isinstance(generator_file, Mapping) or "g_ema" not in generator_file:
        raise CheckpointError(
            f"{where} holds only the MTV-TSA encoder; pass its StyleGAN2 generator with --generator "
            f"(a rosinality file with 'g_ema', {encoder.size} px, {encoder.n_styles} W+ codes)"
        )
    generator = build_generator(g_ema(generator_file), "--generator (g_ema)")
    if generator.n_latent != encoder.n_styles or generator.style_dim != config["latent_size"]:
        raise CheckpointError(
            f"the encoder predicts {encoder.n_styles} x {config['latent_size']} codes but the "
            f"{generator.size} px generator takes {generator.n_latent} x {generator.style_dim}; "
            f"they belong to different models"
        )
    stage_config = {
        "encoder_type": "MTVEncoder",
        "mode": "mtv",
        "num_layers": config["layer_count"],
        "input_nc": config["channels"],
        "n_styles": encoder.n_styles,
        "startf": config["startf"],
        "maxf": config["maxf"],
        "noise_seed": NOISE_SEED,
    }
    return LoadedCheckpoint(
        format="mtv_tsa",
        path=Path(where),
        sha256="",
        opts={},
        generator=generator,
        latent_avg=latent_avg_of((generator_file, "--generator"), generator),
        stages=[StageModel(encoder.eval(), stage_config, False, False)],
        repeat_last=False,
        default_iterations=1,
        input_size=encoder.size,
    )
