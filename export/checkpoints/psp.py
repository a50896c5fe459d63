"""The public pSp-family formats: pixel2style2pixel, ReStyle, E2Style, and rosinality's
StyleGAN2 files (a generator only).

============  ===================================================================
psp           pixel2style2pixel: ``{state_dict, opts, latent_avg}``, one pass
restyle_psp   restyle-encoder, ``BackboneEncoder`` (6 input channels), iterative
restyle_fpn   restyle-encoder, ``GradualStyleEncoder`` (6 channels) = the OME
              StyleGAN2 encoder, iterative
e2style       E2Style: a first stage and k refinement stages, each with its own weights
rosinality    stylegan2-pytorch: ``{g_ema, latent_avg, ...}`` (a generator only; use it
              with ``--generator`` to replace an encoder checkpoint's decoder)
============  ===================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from export.checkpoints.formats import PSP_FORMATS
from export.checkpoints.loading import (
    CONFIG_ERRORS,
    avg_source,
    build_generator,
    checked_opts,
    construct,
    g_ema,
    latent_avg_of,
    load_strict,
    reason,
    strip_prefix,
)
from export.checkpoints.types import CheckpointError, LoadedCheckpoint, StageModel
from export.checkpoints.values import tensor_dict
from export.models.encoders import build_encoder, infer_encoder_config

FORMATS = PSP_FORMATS
ITERATIVE = ("restyle_psp", "restyle_fpn")


def is_generator_file(ckpt: Mapping) -> bool:
    """A rosinality StyleGAN2 file: its ``g_ema`` marks it before any other format is tried."""
    return "g_ema" in ckpt


def detect(ckpt: Mapping) -> str:
    """The pSp-family format of a checkpoint that no other family claimed."""
    if is_generator_file(ckpt):
        return "rosinality"
    if "state_dict" not in ckpt:
        raise CheckpointError(
            f"unknown checkpoint layout (top-level keys {sorted(map(str, ckpt))[:8]}); expected "
            f"'state_dict' + 'opts' (pSp/ReStyle) or 'g_ema' (rosinality). Use --format"
        )
    state = ckpt["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"the checkpoint's 'state_dict' is a {type(state).__name__}; expected a dict of weight names to tensors"
        )
    if any(isinstance(k, str) and k.startswith("encoder_firststage.") for k in state):
        return "e2style"
    opts = checked_opts(ckpt)
    encoder_type = opts.get("encoder_type", "GradualStyleEncoder")
    restyle = "n_iters_per_batch" in opts or opts.get("input_nc") == 6 or encoder_type == "BackboneEncoder"
    if not restyle:
        return "psp"
    return "restyle_psp" if encoder_type == "BackboneEncoder" else "restyle_fpn"


def load(fmt: str, ckpt: Any, where: str, generator_file: Mapping | None) -> LoadedCheckpoint:
    """Build and load a ``fmt`` checkpoint (one of :data:`FORMATS`); ``generator_file`` (a
    rosinality file) replaces its decoder."""
    if fmt == "rosinality":
        raise CheckpointError(
            f"{where} is a rosinality generator file (g_ema) without an encoder; pass an encoder "
            f"checkpoint with --checkpoint and this file with --generator"
        )
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(f"{where} has no 'state_dict'; it is not a {fmt} checkpoint")
    state = tensor_dict(ckpt["state_dict"], f"{where} (state_dict)")
    opts = checked_opts(ckpt, where)
    stages = _load_stages(state, opts, fmt, where)
    if generator_file is not None:
        dec_sd, dec_where = g_ema(generator_file), "--generator (g_ema)"
    else:
        dec_sd, dec_where = strip_prefix(state, "decoder."), f"{where} (decoder.*)"
        if not dec_sd:
            raise CheckpointError(f"{where} has no 'decoder.*' weights; pass the generator with --generator")
    generator = build_generator(dec_sd, dec_where)
    for st in stages:
        n_styles = st.config["n_styles"]
        if n_styles != generator.n_latent and st.config["encoder_type"] != "BackboneEncoderUsingLastLayerIntoW":
            raise CheckpointError(
                f"the encoder predicts {n_styles} styles but the {generator.size}px "
                f"generator takes {generator.n_latent}; they belong to different models"
            )
    if fmt in ITERATIVE:
        iterations = opts.get("n_iters_per_batch") or 5
    else:
        iterations = min(opts.get("training_stage") or len(stages), len(stages))
    return LoadedCheckpoint(
        format=fmt,
        path=Path(where),
        sha256="",
        opts=opts,
        generator=generator,
        latent_avg=latent_avg_of(avg_source(ckpt, generator_file), generator, where),
        stages=stages,
        repeat_last=fmt in ITERATIVE,
        default_iterations=iterations,
    )


def _load_stages(state: Mapping[str, torch.Tensor], opts: dict, fmt: str, where: str) -> list[StageModel]:
    """Build and load each stage's encoder. pSp: one pass from latent_avg (if
    start_from_latent_avg); ReStyle: one stage with feedback, repeated, always residual
    (its first step adds latent_avg); E2Style: a first stage and k refinement stages with
    their own weights (``encoder_refinestage_list.{i}``), each with feedback and residual."""
    sfla = bool(opts.get("start_from_latent_avg", True))
    if fmt == "e2style":
        n_refine = len({k.split(".")[1] for k in state if k.startswith("encoder_refinestage_list.")})
        prefixes = [("encoder_firststage.", False, sfla)]
        prefixes += [(f"encoder_refinestage_list.{i}.", True, True) for i in range(n_refine)]
    else:
        prefixes = [("encoder.", fmt in ITERATIVE, fmt in ITERATIVE or sfla)]
    expected_type = {
        "restyle_psp": ("BackboneEncoder",),
        "restyle_fpn": ("GradualStyleEncoder",),
        "e2style": ("E2StyleEncoder",),
    }.get(fmt, ("GradualStyleEncoder", "BackboneEncoderUsingLastLayerIntoW", "BackboneEncoderUsingLastLayerIntoWPlus"))
    stages = []
    for prefix, feedback, residual in prefixes:
        sd = strip_prefix(state, prefix)
        if not sd:
            raise CheckpointError(f"{where} has no '{prefix}*' weights; it is not a {fmt} checkpoint (try --format)")
        try:
            config = infer_encoder_config(sd)  # checked against the format before anything is built
        except CONFIG_ERRORS as e:
            raise CheckpointError(f"{where}: the {prefix}* weights are not a known encoder ({reason(e)})") from None
        if config["encoder_type"] not in expected_type:
            raise CheckpointError(
                f"{where}: the {prefix}* weights are a {config['encoder_type']} but format "
                f"{fmt!r} uses {' or '.join(expected_type)}; drop --format or pick the matching one"
            )
        input_nc = config["input_nc"] - (3 if feedback else 0)
        if not stages and "input_nc" in opts and opts["input_nc"] not in (config["input_nc"], input_nc):
            raise CheckpointError(
                f"{where}: opts.input_nc = {opts['input_nc']} but the input layer takes "
                f"{config['input_nc']} channels; the file is inconsistent"
            )
        if feedback and config["input_nc"] < 4:
            raise CheckpointError(
                f"{where}: the {prefix}* encoder takes {config['input_nc']} channels, too few "
                f"for the input plus the fed-back image"
            )
        encoder = construct(build_encoder, config, f"{where} ({prefix}*)")
        load_strict(encoder, sd, f"{where} ({prefix}*)")
        stages.append(StageModel(encoder.eval(), config, feedback, residual))
    return stages
