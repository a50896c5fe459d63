"""The steps every checkpoint format shares: reading the file, building a module from the
config its state dict describes and loading the weights strictly, and the pieces common to
several formats (``g_ema``, ``opts``, ``latent_avg``, prefixed parts of a state dict).

Files are read with ``torch.load(weights_only=True)``: tensors, containers and the few option
types public checkpoints carry; anything else (a pickled callable) is refused before it can
run. Every value read from the file is checked first (:mod:`export.checkpoints.values`). State
dicts must match the modules exactly; a mismatch names the missing and unexpected keys and the
likely cause.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.checkpoints.types import CheckpointError
from export.checkpoints.values import CheckedState, check_file, check_opts, latent_avg_tensor, tensor_dict
from export.models.stylegan2 import Generator

log = logging.getLogger(__name__)

SAFE_GLOBALS = [argparse.Namespace]  # option objects some public checkpoints carry
# what inferring a config from odd shapes, or building a module from it, raises
CONFIG_ERRORS = (KeyError, ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError, RuntimeError)


def read_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` and our allow-list, mapped to CheckpointError,
    after :func:`~export.checkpoints.values.check_file` (file type, permissions, zip CRCs)."""
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
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({reason(e)})") from None


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
        raise CheckpointError(f"{where}: not a {kind} state dict ({reason(e)})") from None
    module = construct(build, config, where)
    load_strict(module, state, where)
    return module.eval(), config


def construct(build: Callable[[dict], nn.Module], config: dict, where: str) -> nn.Module:
    """``build(config)``: a config read off odd shapes can still be one the module rejects."""
    try:
        return build(config)
    except CONFIG_ERRORS as e:
        raise CheckpointError(f"{where}: the weights describe a module that cannot be built ({reason(e)})") from None


def reason(e: BaseException) -> str:
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


def checked_opts(ckpt: Mapping, where: str = "checkpoint") -> dict:
    """The checkpoint's ``opts`` (a dict or argparse.Namespace) as a checked dict."""
    return check_opts(ckpt.get("opts"), where)


def g_ema(generator_file: Any) -> dict[str, torch.Tensor]:
    """The checked ``g_ema`` state dict of a ``--generator`` rosinality file."""
    if not isinstance(generator_file, Mapping) or not isinstance(generator_file.get("g_ema"), Mapping):
        raise CheckpointError("the --generator file is not a rosinality file with 'g_ema' (a dict of tensors)")
    return tensor_dict(generator_file["g_ema"], "--generator (g_ema)")


def avg_source(ckpt: Mapping, generator_file: Mapping | None) -> tuple[Mapping, str]:
    """Where ``latent_avg`` comes from: the generator file when it has one, else the checkpoint."""
    if generator_file is not None and "latent_avg" in generator_file:
        return generator_file, "--generator"
    return ckpt, "checkpoint"


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    kind = CheckedState if isinstance(state, CheckedState) else dict  # a checked dict's parts stay checked
    return kind((k[len(prefix) :], v) for k, v in state.items() if k.startswith(prefix))


def latent_avg_of(source: tuple[Mapping, str], generator: Generator, where: str = "checkpoint") -> torch.Tensor:
    """[M, D]: the file's ``latent_avg`` ([M, D] or [D], repeated), else the generator's mean."""
    ckpt, name = source
    m, d = generator.n_latent, generator.style_dim
    avg = ckpt.get("latent_avg")
    if avg is None:
        log.warning("checkpoint has no latent_avg; using the mean of 10000 mapped samples (seed 0)")
        with torch.no_grad():
            avg = generator.mean_latent(10000, seed=0)
    return latent_avg_tensor(avg, m, d, where if name == "checkpoint" else name)
