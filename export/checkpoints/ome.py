"""Our OME formats: OME's multi-scale encoder over a ProGAN (``ome_progan``) or StyleGAN2
(``ome_stylegan2``) decoder. The OME authors published no weights; these layouts are ours.

``ome_progan`` (our format; the OME authors published no weights)::

    {"format": "ome_progan", "format_version": 1,
     "state_dict": {"encoder.*":  OMEEncoder (export/models/ome_encoder.py: ResNet-34/50 + FPN + F2C heads),
                    "fusion.*":   DynamicFusion "fc0.weight" [C/8, C], "fc1.weight" [C, C/8]
                                  (absent: the static average of the M feature maps),
                    "decoder.*":  the genforce PGGAN generator state dict (optional: --generator FILE
                                  with the bare genforce file instead)},
     "latent_avg": [D] or [M, D]  (z_0; absent: zeros, the mean of N(0, I)),
     "opts": {"split": 8, "n_iters_per_batch": 5, "dataset_type": ..., "label_nc": ...}}

    M (the number of codes, 20 in the paper) is the number of encoder heads; the encoder takes
    C_x + 3 channels (condition + fed-back image). Schedule: OME's loop, z_{t+1} = z_t + E(x, y_t).

``ome_stylegan2`` (our format: OME's multi-scale encoder over a StyleGAN2 decoder, e.g. the demo
model of export/demo/train.py)::

    {"format": "ome_stylegan2", "format_version": 1,
     "state_dict": {"encoder.*": OMEEncoder (ResNet-18/34/50 + FPN + F2C heads, M = n_latent heads of D),
                    "decoder.*": a rosinality StyleGAN2 generator (any widths; --generator FILE instead)},
     "latent_avg": [M, D] or [D]   (z_0),
     "opts": {"input_size": 256, "n_iters_per_batch": 5, "dataset_type": ...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from export.checkpoints.formats import OME_FORMATS
from export.checkpoints.loading import (
    avg_source,
    build_generator,
    build_loaded,
    checked_opts,
    g_ema,
    latent_avg_of,
    load_strict,
    strip_prefix,
)
from export.checkpoints.types import CheckpointError, LoadedCheckpoint, StageModel
from export.checkpoints.values import CheckedState, latent_avg_tensor, tensor_dict
from export.models.ome_encoder import OMEEncoder, infer_ome_config
from export.models.progan import OME_SPLIT, DynamicFusion, MultiCodeProGAN, ProGANGenerator, StaticFusion

FORMATS = OME_FORMATS


def detect(ckpt: Mapping) -> str | None:
    """``ome_progan`` / ``ome_stylegan2`` by the ``format`` marker, else None."""
    marker = ckpt.get("format")
    return marker if isinstance(marker, str) and marker in FORMATS else None


def load(fmt: str, ckpt: Any, where: str, generator_file: Mapping | None) -> LoadedCheckpoint:
    """Build and load an ``ome_progan`` or ``ome_stylegan2`` checkpoint."""
    if fmt == "ome_progan":
        return load_ome_progan(ckpt, where, generator_file)
    return load_ome_stylegan2(ckpt, where, generator_file)


def build_progan(state: Mapping[str, torch.Tensor], where: str) -> ProGANGenerator:
    """A genforce PGGAN generator from its bare state dict (``lod`` must be 0 or absent)."""
    state = CheckedState(tensor_dict(state, where))
    lod = state.pop("lod", None)
    if lod is not None and lod.numel() != 1:
        raise CheckpointError(f"{where}: lod has shape {tuple(lod.shape)}; expected one number (0)")
    if lod is not None and lod.device.type != "meta" and float(lod) != 0.0:
        raise CheckpointError(f"{where}: lod = {float(lod)}; only fully grown generators (lod 0) are supported")
    return build_generator(state, where, ProGANGenerator, "genforce PGGAN generator")


def build_fusion(state: Mapping[str, torch.Tensor], channels: int, where: str) -> torch.nn.Module:
    """:class:`DynamicFusion` from ``fc0`` / ``fc1`` weights, or :class:`StaticFusion` when empty."""
    if not state:
        return StaticFusion()
    if "fc0.weight" not in state:
        raise CheckpointError(f"{where}: fusion.* has no fc0.weight (keys {sorted(state)[:4]})")
    if state["fc0.weight"].ndim != 2:
        raise CheckpointError(
            f"{where}: fusion.fc0.weight has shape {tuple(state['fc0.weight'].shape)}; expected [C/r, C]"
        )
    hidden = int(state["fc0.weight"].shape[0])
    if hidden <= 0 or channels % hidden:
        raise CheckpointError(
            f"{where}: fusion.fc0.weight is {tuple(state['fc0.weight'].shape)}, which does not "
            f"reduce the {channels} channels at the split by a whole ratio"
        )
    fusion = DynamicFusion(channels, reduction=channels // hidden, bias="fc0.bias" in state)
    load_strict(fusion, state, f"{where} (fusion.*)")
    return fusion.eval()


def _ome_stage(ckpt: Any, fmt: str, where: str) -> tuple[dict, StageModel, CheckedState]:
    """The opts, the OME encoder stage (feedback + residual) and the checked state dict of an
    ``ome_*`` checkpoint; the encoder input side is ``opts.input_size`` for ``ome_stylegan2``,
    256 for ``ome_progan``."""
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(f"{where} has no 'state_dict'; it is not an {fmt} checkpoint")
    opts = checked_opts(ckpt, where)
    input_size = (opts.get("input_size") if fmt == "ome_stylegan2" else None) or 256
    state = tensor_dict(ckpt["state_dict"], f"{where} (state_dict)")
    enc_sd = strip_prefix(state, "encoder.")
    encoder, config = build_loaded(
        enc_sd,
        f"{where} (encoder.*)",
        lambda sd: infer_ome_config(sd, input_size),
        lambda c: OMEEncoder(**c),
        "OME encoder",
    )
    if config["input_nc"] < 4:
        raise CheckpointError(
            f"{where}: the encoder takes {config['input_nc']} channels, too few for the input plus the fed-back image"
        )
    stage_config = {
        "encoder_type": "OMEEncoder",
        "mode": f"resnet{config['depth']}",
        "num_layers": config["depth"],
        "input_nc": config["input_nc"],
        "n_styles": encoder.n_styles,
        "code_dim": config["code_dim"],
        **{k: config[k] for k in ("width", "fpn_dim")},
        "codes_per_level": list(config["codes_per_level"]),
    }
    return opts, StageModel(encoder.eval(), stage_config, True, True), state


def load_ome_stylegan2(ckpt: Any, where: str, generator_file: Mapping | None) -> LoadedCheckpoint:
    opts, stage, state = _ome_stage(ckpt, "ome_stylegan2", where)
    if generator_file is not None:
        generator = build_generator(g_ema(generator_file), "--generator (g_ema)")
    else:
        dec_sd = strip_prefix(state, "decoder.")
        if not dec_sd:
            raise CheckpointError(f"{where} has no 'decoder.*' weights; pass the StyleGAN2 file with --generator")
        generator = build_generator(dec_sd, f"{where} (decoder.*)")
    m, d = stage.config["n_styles"], stage.config["code_dim"]
    if (m, d) != (generator.n_latent, generator.style_dim):
        raise CheckpointError(
            f"the encoder predicts {m} x {d} codes but the {generator.size} px generator takes "
            f"{generator.n_latent} x {generator.style_dim}; they belong to different models"
        )
    avg = latent_avg_of(avg_source(ckpt, generator_file), generator, where)
    return _loaded("ome_stylegan2", where, opts, stage, generator, avg, input_size=opts.get("input_size") or 256)


def load_ome_progan(ckpt: Any, where: str, generator_file: Mapping | None) -> LoadedCheckpoint:
    opts, stage, state = _ome_stage(ckpt, "ome_progan", where)
    if generator_file is not None:
        generator = build_progan(generator_file, "--generator (genforce PGGAN)")
    else:
        dec_sd = strip_prefix(state, "decoder.")
        if not dec_sd:
            raise CheckpointError(f"{where} has no 'decoder.*' weights; pass the genforce PGGAN file with --generator")
        generator = build_progan(dec_sd, f"{where} (decoder.*)")
    split = opts.get("split") or OME_SPLIT
    if not 1 <= split < generator.num_layers:
        raise CheckpointError(f"{where}: opts.split = {split} is outside 1..{generator.num_layers - 1}")
    fusion = build_fusion(strip_prefix(state, "fusion."), generator.split_channels(split), where)
    m, d = stage.config["n_styles"], generator.z_dim
    if stage.config["code_dim"] != d:
        raise CheckpointError(
            f"{where}: the encoder predicts {stage.config['code_dim']}-d codes but the generator "
            f"takes z of {d}; they belong to different models"
        )
    multi = MultiCodeProGAN(generator, m, fusion, split).eval()
    avg = ckpt.get("latent_avg")  # OME: the average code, repeated M times; absent: the mean of N(0, I)
    avg = torch.zeros(m, d) if avg is None else latent_avg_tensor(avg, m, d, where)
    return _loaded("ome_progan", where, opts, stage, multi, avg)


def _loaded(
    fmt: str, where: str, opts: dict, stage: StageModel, generator, latent_avg: torch.Tensor, input_size: int = 256
) -> LoadedCheckpoint:
    """OME's schedule: the one stage repeated (``opts.n_iters_per_batch`` steps by default, 5)."""
    return LoadedCheckpoint(
        format=fmt,
        path=Path(where),
        sha256="",
        opts=opts,
        generator=generator,
        latent_avg=latent_avg,
        stages=[stage],
        repeat_last=True,
        default_iterations=opts.get("n_iters_per_batch") or 5,
        input_size=input_size,
    )


def save_ome_progan(
    path,
    encoder: OMEEncoder,
    generator: ProGANGenerator,
    fusion: torch.nn.Module | None = None,
    latent_avg: torch.Tensor | None = None,
    opts: Mapping | None = None,
) -> None:
    """Write an ``ome_progan`` checkpoint (the layout in this module's docstring) from trained
    modules: ``fusion`` a :class:`DynamicFusion` (None or :class:`StaticFusion`: static average),
    ``latent_avg`` the z_0 code ``[D]`` or ``[M, D]``, ``opts`` e.g. ``{"split": 8}``."""
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in generator.state_dict().items()})
    if isinstance(fusion, DynamicFusion):
        state.update({f"fusion.{k}": v for k, v in fusion.state_dict().items()})
    payload = {
        "format": "ome_progan",
        "format_version": 1,
        "state_dict": state,
        "opts": {"split": OME_SPLIT, "n_iters_per_batch": 5, **dict(opts or {})},
    }
    if latent_avg is not None:
        payload["latent_avg"] = latent_avg.detach().float()
    torch.save(payload, path)
