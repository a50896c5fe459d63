"""Loaders for the public checkpoint formats, unchanged.

Formats (detected from the file; ``--format`` overrides):

============  ===================================================================
psp           pixel2style2pixel: ``{state_dict, opts, latent_avg}``, one pass
restyle_psp   restyle-encoder, ``BackboneEncoder`` (6 input channels), iterative
restyle_fpn   restyle-encoder, ``GradualStyleEncoder`` (6 channels) = the OME
              StyleGAN2 encoder, iterative
rosinality    stylegan2-pytorch: ``{g_ema, latent_avg, ...}`` (a generator only; use it
              with ``--generator`` to replace an encoder checkpoint's decoder)
ome_progan    our OME-over-ProGAN format (multi-scale encoder, dynamic fusion, genforce
              PGGAN decoder), iterative; see export/family_checkpoints.py
ome_stylegan2 our OME-over-StyleGAN2 format (multi-scale encoder, rosinality decoder of any
              width; the demo model), iterative
mtv_tsa       Deep-GAN-Encoders' bare MTV-TSA ``BE`` state dict + ``--generator``
              (rosinality g_ema); one pass
============  ===================================================================

Files are read with ``torch.load(weights_only=True)``: tensors, containers and the few
option types public checkpoints carry; anything else (a pickled callable) is refused before
it can run. State dicts must match the modules exactly; a mismatch names the missing and
unexpected keys and the likely cause.
"""
from __future__ import annotations

import argparse
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from export.models.encoders import build_encoder, infer_encoder_config
from export.models.stylegan2 import Generator
from sdk.bundle import sha256_file

log = logging.getLogger(__name__)

FORMATS = ("psp", "restyle_psp", "restyle_fpn", "e2style", "rosinality")
# ProGAN-based OME and MTV-TSA: loaded by export/family_checkpoints.py (formats documented there)
FORMATS += ("ome_progan", "ome_stylegan2", "mtv_tsa")
ITERATIVE = ("restyle_psp", "restyle_fpn")
SAFE_GLOBALS = [argparse.Namespace]  # option objects some public checkpoints carry


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of an unknown format, or does not match its modules."""


@dataclass
class StageModel:
    """One encoder of the refinement schedule and how the loop uses it."""

    encoder: nn.Module
    config: dict
    feedback: bool  # takes the previous synthesised image (concatenated after pooling)
    residual: bool  # its output is added to the previous latents


@dataclass
class LoadedCheckpoint:
    """Modules built and loaded from a checkpoint, in eval mode, plus what the bundle needs.

    ``stages`` run in order; past the last one, the last repeats when ``repeat_last``
    (ReStyle/OME) — otherwise the number of stages bounds the iterations (pSp 1, E2Style k).
    """

    format: str
    path: Path
    sha256: str
    opts: dict
    generator: Generator
    latent_avg: torch.Tensor  # [M, D]
    stages: list[StageModel] = field(default_factory=list)
    repeat_last: bool = False
    default_iterations: int = 1
    input_size: int = 256  # encoder input side: 256 for every public encoder, G's size for MTV-TSA

    @property
    def encoder_config(self) -> dict:
        return self.stages[0].config

    @property
    def condition_channels(self) -> int:
        """Channels of the conditional input x (the first stage's input minus any feedback)."""
        first = self.stages[0]
        return first.config["input_nc"] - (3 if first.feedback else 0)

    @property
    def suggested_task(self) -> str:
        """The task the checkpoint was trained for, read from its opts (pSp's dataset types)."""
        if "super_resolution" in str(self.opts.get("dataset_type", "")):
            return "super_resolution"
        if int(self.opts.get("label_nc", 0) or 0) > 0:
            return "segmentation"
        if self.condition_channels == 1:
            return "sketch"
        return "inversion"


def read_file(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` and our allow-list, mapped to CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        refused = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), None)
        if refused is None:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({text.splitlines()[0]})") from None
        raise CheckpointError(f"refused to load {path}: it holds objects outside the safe allow-list "
                              f"(weights_only=True), so nothing in it was run. {refused}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def detect_format(ckpt: Any) -> str:
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"expected a dict checkpoint, found {type(ckpt).__name__}")
    if "g_ema" in ckpt:
        return "rosinality"
    from export.family_checkpoints import detect_family_format  # imports this module: import lazily

    family = detect_family_format(ckpt)
    if family is not None:
        return family
    if "state_dict" not in ckpt:
        raise CheckpointError(f"unknown checkpoint layout (top-level keys {sorted(ckpt)[:8]}); expected "
                              f"'state_dict' + 'opts' (pSp/ReStyle) or 'g_ema' (rosinality). Use --format")
    keys = ckpt["state_dict"].keys()
    if any(k.startswith("encoder_firststage.") for k in keys):
        return "e2style"
    opts = _opts(ckpt)
    encoder_type = opts.get("encoder_type", "GradualStyleEncoder")
    restyle = "n_iters_per_batch" in opts or opts.get("input_nc") == 6 or encoder_type == "BackboneEncoder"
    if not restyle:
        return "psp"
    return "restyle_psp" if encoder_type == "BackboneEncoder" else "restyle_fpn"


def load_checkpoint(path: str | Path, format: str | None = None, generator_path: str | Path | None = None
                    ) -> LoadedCheckpoint:
    """Load an encoder checkpoint (with its decoder, or the generator from ``generator_path``)."""
    path = Path(path)
    ckpt = read_file(path)
    generator_file = read_file(generator_path) if generator_path is not None else None
    loaded = from_dict(ckpt, format, where=str(path), generator_file=generator_file)
    loaded.path, loaded.sha256 = path, sha256_file(path)
    return loaded


def from_dict(ckpt: Any, format: str | None = None, where: str = "checkpoint",
              generator_file: Mapping | None = None) -> LoadedCheckpoint:
    """Build and load the modules from an in-memory checkpoint dict (``load_checkpoint`` minus
    the file). Under ``torch.device("meta")`` with meta tensors it checks a layout for free."""
    fmt = format or detect_format(ckpt)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt in ("ome_progan", "ome_stylegan2", "mtv_tsa"):
        from export.family_checkpoints import load_family

        return load_family(fmt, ckpt, where, generator_file)
    if fmt == "rosinality":
        raise CheckpointError(f"{where} is a rosinality generator file (g_ema) without an encoder; pass an encoder "
                              f"checkpoint with --checkpoint and this file with --generator")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(f"{where} has no 'state_dict'; it is not a {fmt} checkpoint")
    state = ckpt["state_dict"]
    opts = _opts(ckpt)
    stages = _load_stages(state, opts, fmt, where)
    if generator_file is not None:
        if detect_format(generator_file) != "rosinality":
            raise CheckpointError("the --generator file is not a rosinality file with 'g_ema'")
        dec_sd, dec_where = dict(generator_file["g_ema"]), "--generator (g_ema)"
    else:
        dec_sd, dec_where = _strip(state, "decoder."), f"{where} (decoder.*)"
        if not dec_sd:
            raise CheckpointError(f"{where} has no 'decoder.*' weights; pass the generator with --generator")
    generator = build_generator(dec_sd, dec_where)
    for st in stages:
        n_styles = st.config["n_styles"]
        if n_styles != generator.n_latent and st.config["encoder_type"] != "BackboneEncoderUsingLastLayerIntoW":
            raise CheckpointError(f"the encoder predicts {n_styles} styles but the {generator.size}px "
                                  f"generator takes {generator.n_latent}; they belong to different models")
    source = generator_file if generator_file is not None and "latent_avg" in generator_file else ckpt
    if fmt in ITERATIVE:
        iterations = int(opts.get("n_iters_per_batch", 5))
    else:
        iterations = min(int(opts.get("training_stage", len(stages)) or len(stages)), len(stages))
    return LoadedCheckpoint(format=fmt, path=Path(where), sha256="", opts=opts, generator=generator,
                            latent_avg=_latent_avg(source, generator), stages=stages,
                            repeat_last=fmt in ITERATIVE, default_iterations=iterations)


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
    expected_type = {"restyle_psp": ("BackboneEncoder",), "restyle_fpn": ("GradualStyleEncoder",),
                     "e2style": ("E2StyleEncoder",)}.get(fmt, ("GradualStyleEncoder", "BackboneEncoderUsingLastLayerIntoW",
                                                              "BackboneEncoderUsingLastLayerIntoWPlus"))
    stages = []
    for prefix, feedback, residual in prefixes:
        sd = _strip(state, prefix)
        if not sd:
            raise CheckpointError(f"{where} has no '{prefix}*' weights; it is not a {fmt} checkpoint (try --format)")
        try:
            config = infer_encoder_config(sd)  # checked against the format before anything is built
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{where}: the {prefix}* weights are not a known encoder ({e})") from None
        if config["encoder_type"] not in expected_type:
            raise CheckpointError(f"{where}: the {prefix}* weights are a {config['encoder_type']} but format "
                                  f"{fmt!r} uses {' or '.join(expected_type)}; drop --format or pick the matching one")
        input_nc = config["input_nc"] - (3 if feedback else 0)
        if not stages and "input_nc" in opts and opts["input_nc"] not in (config["input_nc"], input_nc):
            raise CheckpointError(f"{where}: opts.input_nc = {opts['input_nc']} but the input layer takes "
                                  f"{config['input_nc']} channels; the file is inconsistent")
        if feedback and config["input_nc"] < 4:
            raise CheckpointError(f"{where}: the {prefix}* encoder takes {config['input_nc']} channels, too few "
                                  f"for the input plus the fed-back image")
        encoder = build_encoder(config)
        load_strict(encoder, sd, f"{where} ({prefix}*)")
        stages.append(StageModel(encoder.eval(), config, feedback, residual))
    return stages


def build_loaded(state: Mapping[str, torch.Tensor], where: str, infer: Callable[[Mapping], dict],
                 build: Callable[[dict], nn.Module], kind: str) -> tuple[nn.Module, dict]:
    """Read a module's config off ``state`` (``infer``), ``build`` it and load ``state``
    strictly; returns the module in eval mode and its config. Errors name ``where`` and ``kind``."""
    try:
        config = infer(state)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: not a {kind} state dict ({e})") from None
    module = build(config)
    load_strict(module, state, where)
    return module.eval(), config


def build_generator(state: Mapping[str, torch.Tensor], where: str, cls: type = Generator,
                    kind: str = "StyleGAN2 generator") -> nn.Module:
    """A generator of ``cls`` (anything with ``config_from_state_dict``) loaded strictly."""
    return build_loaded(state, where, cls.config_from_state_dict, lambda config: cls(**config), kind)[0]


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with a message that names the keys and the likely cause."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or wrong):
        # assign: the module takes the checkpoint's tensors (no second copy; works on meta)
        module.load_state_dict(state, strict=True, assign=True)
        return
    lines = [f"{where} does not match {type(module).__name__}:"]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            lines.append(f"  {len(keys)} {label} keys: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    for k in wrong[:6]:
        lines.append(f"  shape of {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
    lines.append(f"  likely cause: {_likely_cause(missing, unexpected, wrong)}")
    raise CheckpointError("\n".join(lines))


def _likely_cause(missing: list, unexpected: list, wrong: list) -> str:
    if unexpected and all(k.startswith("module.") for k in unexpected):
        return "the weights were saved from nn.DataParallel ('module.' prefix); strip it"
    if any(k.startswith("noises.") for k in missing):
        return "the generator file lacks the noise buffers (an old rosinality version); re-save g_ema"
    if any("input_layer.0" in k for k in wrong):
        return "the input channel count differs (opts.input_nc / label_nc); check the task"
    if any(k.startswith("styles.") for k in missing + unexpected):
        return "the number of styles differs (opts.output_size); the encoder belongs to another resolution"
    if any(k.startswith(("convs.", "to_rgbs.", "noises.")) for k in missing + unexpected):
        return "the generator resolution differs from the state dict's"
    return "the file is a different model or format; try --format"


def _opts(ckpt: Mapping) -> dict:
    opts = ckpt.get("opts", {}) or {}
    if isinstance(opts, argparse.Namespace):
        opts = vars(opts)
    if not isinstance(opts, Mapping):
        raise CheckpointError(f"checkpoint 'opts' is a {type(opts).__name__}; expected a dict")
    return dict(opts)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _latent_avg(ckpt: Mapping, generator: Generator) -> torch.Tensor:
    """[M, D]: the file's ``latent_avg`` ([M, D] or [D], repeated), else the generator's mean."""
    m, d = generator.n_latent, generator.style_dim
    avg = ckpt.get("latent_avg")
    if avg is None:
        log.warning("checkpoint has no latent_avg; using the mean of 10000 mapped samples (seed 0)")
        with torch.no_grad():
            avg = generator.mean_latent(10000, seed=0)
    avg = avg.detach().float().reshape(-1, d)
    if avg.shape[0] == 1:
        avg = avg.repeat(m, 1)
    if avg.shape != (m, d):
        raise CheckpointError(f"latent_avg has shape {tuple(avg.shape)}; expected [{m}, {d}] or [{d}]")
    return avg.contiguous()

