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
it can run. Every value read from the file is checked first (export/checkpoint_values.py: the
file's type and zip CRCs, each tensor's type, dtype, device and finiteness, the option fields,
``latent_avg``). State dicts must match the modules exactly; a mismatch names the missing and
unexpected keys and the likely cause.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.checkpoint_values import (
    CheckedState,
    CheckpointError,
    check_file,
    check_opts,
    latent_avg_tensor,
    tensor_dict,
)
from export.models.encoders import build_encoder, infer_encoder_config
from export.models.stylegan2 import Generator
from sdk.bundle import sha256_file

log = logging.getLogger(__name__)

FORMATS = ("psp", "restyle_psp", "restyle_fpn", "e2style", "rosinality")
# ProGAN-based OME and MTV-TSA: loaded by export/family_checkpoints.py (formats documented there)
FORMATS += ("ome_progan", "ome_stylegan2", "mtv_tsa")
ITERATIVE = ("restyle_psp", "restyle_fpn")
SAFE_GLOBALS = [argparse.Namespace]  # option objects some public checkpoints carry
# what inferring a config from odd shapes, or building a module from it, raises
CONFIG_ERRORS = (KeyError, ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError, RuntimeError)


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


def read_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` and our allow-list, mapped to CheckpointError,
    after :func:`~export.checkpoint_values.check_file` (file type, permissions, zip CRCs)."""
    path = Path(path)
    check_file(path, what)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        refused = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), None)
        if refused is None:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({text.splitlines()[0]})") from None
        raise CheckpointError(
            f"refused to load {path}: it holds objects outside the safe allow-list "
            f"(weights_only=True), so nothing in it was run. {refused}"
        ) from None
    except Exception as e:  # noqa: BLE001 - damaged bytes fail anywhere in the unpickler (struct.error, AssertionError...)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_reason(e)})") from None


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
    opts = _opts(ckpt)
    encoder_type = opts.get("encoder_type", "GradualStyleEncoder")
    restyle = "n_iters_per_batch" in opts or opts.get("input_nc") == 6 or encoder_type == "BackboneEncoder"
    if not restyle:
        return "psp"
    return "restyle_psp" if encoder_type == "BackboneEncoder" else "restyle_fpn"


def load_checkpoint(
    path: str | Path, format: str | None = None, generator_path: str | Path | None = None
) -> LoadedCheckpoint:
    """Load an encoder checkpoint (with its decoder, or the generator from ``generator_path``)."""
    path = Path(path)
    ckpt = read_file(path)
    generator_file = read_file(generator_path, "--generator file") if generator_path is not None else None
    loaded = from_dict(ckpt, format, where=str(path), generator_file=generator_file)
    loaded.path, loaded.sha256 = path, sha256_file(path)
    return loaded


def from_dict(
    ckpt: Any, format: str | None = None, where: str = "checkpoint", generator_file: Mapping | None = None
) -> LoadedCheckpoint:
    """Build and load the modules from an in-memory checkpoint dict (``load_checkpoint`` minus
    the file). Under ``torch.device("meta")`` with meta tensors it checks a layout for free."""
    fmt = format or detect_format(ckpt)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt in ("ome_progan", "ome_stylegan2", "mtv_tsa"):
        from export.family_checkpoints import load_family

        return load_family(fmt, ckpt, where, generator_file)
    if fmt == "rosinality":
        raise CheckpointError(
            f"{where} is a rosinality generator file (g_ema) without an encoder; pass an encoder "
            f"checkpoint with --checkpoint and this file with --generator"
        )
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(f"{where} has no 'state_dict'; it is not a {fmt} checkpoint")
    state = tensor_dict(ckpt["state_dict"], f"{where} (state_dict)")
    opts = _opts(ckpt, where)
    stages = _load_stages(state, opts, fmt, where)
    if generator_file is not None:
        dec_sd, dec_where = g_ema(generator_file), "--generator (g_ema)"
    else:
        dec_sd, dec_where = _strip(state, "decoder."), f"{where} (decoder.*)"
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
        latent_avg=_latent_avg(_avg_source(ckpt, generator_file), generator, where),
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
        sd = _strip(state, prefix)
        if not sd:
            raise CheckpointError(f"{where} has no '{prefix}*' weights; it is not a {fmt} checkpoint (try --format)")
        try:
            config = infer_encoder_config(sd)  # checked against the format before anything is built
        except CONFIG_ERRORS as e:
            raise CheckpointError(f"{where}: the {prefix}* weights are not a known encoder ({_reason(e)})") from None
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
        encoder = _construct(build_encoder, config, f"{where} ({prefix}*)")
        load_strict(encoder, sd, f"{where} ({prefix}*)")
        stages.append(StageModel(encoder.eval(), config, feedback, residual))
    return stages


def build_loaded(
    state: Mapping[str, torch.Tensor],
    where: str,
    infer: Callable[[Mapping], dict],
    build: Callable[[dict], nn.Module],
    kind: str,
) -> tuple[nn.Module, dict]:
    """Read a module's config off ``state`` (``infer``), ``build`` it and load ``state``
    strictly; returns the module in eval mode and its config. Errors name ``where`` and ``kind``."""
    state = tensor_dict(state, where)  # returned as it is when checked already
    try:
        config = infer(state)
    except CONFIG_ERRORS as e:
        raise CheckpointError(f"{where}: not a {kind} state dict ({_reason(e)})") from None
    module = _construct(build, config, where)
    load_strict(module, state, where)
    return module.eval(), config


def _construct(build: Callable[[dict], nn.Module], config: dict, where: str) -> nn.Module:
    """``build(config)``: a config read off odd shapes can still be one the module rejects."""
    try:
        return build(config)
    except CONFIG_ERRORS as e:
        raise CheckpointError(f"{where}: the weights describe a module that cannot be built ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:300]


def build_generator(
    state: Mapping[str, torch.Tensor], where: str, cls: type = Generator, kind: str = "StyleGAN2 generator"
) -> nn.Module:
    """A generator of ``cls`` (anything with ``config_from_state_dict``) loaded strictly."""
    return build_loaded(state, where, cls.config_from_state_dict, lambda config: cls(**config), kind)[0]


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message that names the keys (missing,
    unexpected, of another shape, dtype or device) and the likely cause."""
    own = module.state_dict()
    state = {k: v for k, v in state.items()}
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{where}: entries that are not tensors: {', '.join(not_tensors[:6])}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    common = sorted(set(own) & set(state))
    wrong = [k for k in common if tuple(own[k].shape) != tuple(state[k].shape)]
    dtypes = [k for k in common if own[k].dtype != state[k].dtype]
    devices = [k for k in common if own[k].device.type != state[k].device.type]
    if not (missing or unexpected or wrong or dtypes or devices):
        # assign: the module takes the checkpoint's tensors (no second copy; works on meta)
        module.load_state_dict(state, strict=True, assign=True)
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} keys: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    for label, keys, attr in (
        ("shape", wrong, lambda t: tuple(t.shape)),
        ("dtype", dtypes, lambda t: t.dtype),
        ("device", devices, lambda t: t.device.type),
    ):
        parts += [f"{label} of {k}: checkpoint {attr(state[k])}, model {attr(own[k])}" for k in keys[:6]]
    parts.append(f"likely cause: {_likely_cause(missing, unexpected, wrong)}")
    raise CheckpointError(f"{where} does not match {type(module).__name__}: " + "; ".join(parts))


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


def _opts(ckpt: Mapping, where: str = "checkpoint") -> dict:
    return check_opts(ckpt.get("opts"), where)


def g_ema(generator_file: Any) -> dict[str, torch.Tensor]:
    """The checked ``g_ema`` state dict of a ``--generator`` rosinality file."""
    if not isinstance(generator_file, Mapping) or not isinstance(generator_file.get("g_ema"), Mapping):
        raise CheckpointError("the --generator file is not a rosinality file with 'g_ema' (a dict of tensors)")
    return tensor_dict(generator_file["g_ema"], "--generator (g_ema)")


def _avg_source(ckpt: Mapping, generator_file: Mapping | None) -> tuple[Mapping, str]:
    """Where ``latent_avg`` comes from: the generator file when it has one, else the checkpoint."""
    if generator_file is not None and "latent_avg" in generator_file:
        return generator_file, "--generator"
    return ckpt, "checkpoint"


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    kind = CheckedState if isinstance(state, CheckedState) else dict  # a checked dict's parts stay checked
    return kind((k[len(prefix) :], v) for k, v in state.items() if k.startswith(prefix))


def _latent_avg(source: tuple[Mapping, str], generator: Generator, where: str = "checkpoint") -> torch.Tensor:
    """[M, D]: the file's ``latent_avg`` ([M, D] or [D], repeated), else the generator's mean."""
    ckpt, name = source
    m, d = generator.n_latent, generator.style_dim
    avg = ckpt.get("latent_avg")
    if avg is None:
        log.warning("checkpoint has no latent_avg; using the mean of 10000 mapped samples (seed 0)")
        with torch.no_grad():
            avg = generator.mean_latent(10000, seed=0)
    return latent_avg_tensor(avg, m, d, where if name == "checkpoint" else name)
