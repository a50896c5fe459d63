"""Checks on everything read out of a checkpoint: the file itself, its tensors and its options.

A checkpoint is untrusted input. Every value the loaders use passes through one of these
functions first, and anything they cannot use ends in a :class:`CheckpointError` that names
the key and what was expected, never a traceback from deep inside the model code:

* :func:`check_file`: the path is a regular, readable file (a directory, a FIFO, a socket or a
  device each get their own message; a FIFO is never opened, since reading one blocks), and a
  zip checkpoint's members still match their CRC-32 (PyTorch's reader does not check them, so
  flipped bytes would otherwise load as different weights);
* :func:`tensor_dict`: a state dict is a dict of names to dense CPU tensors; float64, float16
  and bfloat16 weights are converted to float32 (logged), integer tensors are accepted only
  for BatchNorm's step counter, bool/complex/quantized/meta tensors are refused, and the
  first tensor holding NaN/Inf (or float64 values beyond float32's range) is named;
* :func:`check_opts`: the option fields the loaders read have the type and range they need;
* :func:`latent_avg_tensor`: ``latent_avg`` is a finite float tensor of ``[D]``, ``[1, D]`` or
  ``[M, D]``.

Meta tensors are accepted only while the default device is ``meta`` (``with
torch.device("meta")``), the caller's way of checking a layout without weights.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from export.checkpoints.types import CheckpointError

log = logging.getLogger(__name__)

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INTEGER_BUFFERS = ("num_batches_tracked",)  # BatchNorm's step counter: an int64 buffer, not a weight
CRC_CHUNK = 1 << 20


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    if isinstance(value, torch.Tensor):
        return _kind(value)
    try:
        text = " ".join(repr(value).split())  # one line: a list of tensors prints over several
    except (ValueError, RecursionError, TypeError):  # e.g. a list holding an int too long to print
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# --------------------------------------------------------------------------- the file

_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_file(path: Path, what: str = "checkpoint") -> None:
    """Raise CheckpointError unless ``path`` is a readable regular file whose zip members (if it
    is a zip checkpoint) match their CRC. Only ``stat`` is used before that: nothing is opened
    that could block."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise CheckpointError(f"{what} {path} cannot be reached: permission denied on a folder above it") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise CheckpointError(f"{what} {path!s:.300} cannot be opened ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{what} {path} is a directory; pass the checkpoint file (.pt / .pth) inside it")
    for test, name in _SPECIAL:
        if test(st.st_mode):
            raise CheckpointError(f"{what} {path} is {name}, not a checkpoint file; pass a regular .pt file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{what} {path} is not a regular file; pass a .pt file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{what} {path} is not readable (permission denied); chmod u+r it or run as its owner")
    check_zip_crc(path, what)


def check_zip_crc(path: Path, what: str = "checkpoint") -> None:
    """For a zip checkpoint (``torch.save``'s default), read every member and compare its CRC-32
    with the one recorded in the archive. Legacy (non-zip) checkpoints carry no checksum."""
    current = None  # the member being read, for the message
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                current = info.filename
                with archive.open(info) as member:
                    while member.read(CRC_CHUNK):
                        pass
    except zipfile.BadZipFile as e:
        where = f" (member {current})" if current is not None else ""
        raise CheckpointError(
            f"{what} {path} is damaged{where}: {e}; the file was corrupted after it was saved (copy it again)"
        ) from None
    except PermissionError:
        raise CheckpointError(f"{what} {path} is not readable (permission denied)") from None
    except (OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{what} {path} is not a readable zip checkpoint ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- tensors


def building_on_meta() -> bool:
    return torch.get_default_device().type == "meta"


class CheckedState(dict):
    """A state dict :func:`tensor_dict` returned (or a part of one): it is not checked twice."""


def tensor_dict(state: Any, where: str) -> CheckedState:
    """``state`` as a dict of float32 CPU tensors (integer BatchNorm counters as int64), checked
    entry by entry (see the module docstring); ``where`` names it in messages."""
    if isinstance(state, CheckedState):
        return state
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where} is a {_kind(state)}; expected a dict of weight names to tensors")
    meta_ok = building_on_meta()
    out, converted = CheckedState(), Counter()
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: key {_short(key)} is a {type(key).__name__}; weight names are strings")
        out[key] = _weight(value, f"{where}: {key!r}", key.endswith(INTEGER_BUFFERS), meta_ok, converted)
    for dtype, n in sorted(converted.items()):
        log.info("%s: converted %d %s tensor(s) to float32", where, n, dtype)
    return out


def _weight(value: Any, name: str, integer_ok: bool, meta_ok: bool, converted: Counter) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{name} is a {type(value).__name__} ({_short(value, 40)}); expected a tensor")
    if value.layout != torch.strided:
        raise CheckpointError(f"{name} is a {value.layout} tensor; expected a dense tensor")
    if value.device.type == "meta":
        if not meta_ok:
            raise CheckpointError(
                f"{name} is on the meta device (a shape without values): the file was saved "
                f"without its weights; save it again from the trained model"
            )
    elif value.device.type != "cpu":
        raise CheckpointError(f"{name} is on {value.device}; expected a CPU tensor (torch.load(map_location='cpu'))")
    dtype = value.dtype
    if integer_ok and not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool:
        return value.to(torch.int64)
    if dtype not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{name} is a {dtype} tensor; expected floating-point weights (float32; float64, "
            f"float16 and bfloat16 are converted)"
        )
    tensor = value.detach()
    if dtype != torch.float32:
        tensor = tensor.float()
        converted[str(dtype).replace("torch.", "")] += 1
    if tensor.device.type != "meta" and not all_finite(tensor):
        raise CheckpointError(
            f"{name} {_non_finite(value, tensor)}; the weights are damaged or diverged in "
            f"training, so nothing was exported"
        )
    return tensor


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a float tensor holds no NaN/Inf. A finite sum proves it (NaN and Inf propagate
    through a sum) and costs a 50th of ``isfinite(t).all()``; only a sum that is not finite (a
    non-finite value, or finite values whose sum overflows) takes the exact test."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _non_finite(original: torch.Tensor, as_float32: torch.Tensor) -> str:
    bad = int((~torch.isfinite(as_float32)).sum())
    if bool(torch.isfinite(original).all()):  # finite float64 values that float32 cannot hold
        top = float(original.abs().max())
        return f"holds {bad} of {as_float32.numel()} values beyond float32's range (max |w| = {top:.3g})"
    nan = int(torch.isnan(original).sum())
    return f"holds NaN/Inf ({nan} NaN, {bad - nan} Inf of {as_float32.numel()} values)"


def latent_avg_tensor(value: Any, m: int, d: int, where: str) -> torch.Tensor:
    """``latent_avg`` as a finite float32 ``[m, d]`` tensor: ``[d]`` and ``[1, d]`` are repeated."""
    name = f"{where}: latent_avg"
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{name} is a {type(value).__name__}; expected a float tensor of [{d}] or [{m}, {d}]")
    shape = tuple(value.shape)
    if shape not in ((d,), (1, d), (m, d)):
        raise CheckpointError(
            f"{name} has shape {shape}; expected [{d}] or [{m}, {d}] (the generator's {m} codes of {d})"
        )
    avg = _weight(value, name, False, building_on_meta(), Counter()).reshape(-1, d)
    if avg.shape[0] == 1:
        avg = avg.repeat(m, 1)
    return avg.contiguous()


# --------------------------------------------------------------------------- options

# field -> (type, lowest, highest): the option fields the loaders and the build read
_INT_FIELDS = {
    "input_nc": (1, 64),
    "label_nc": (0, 4096),
    "n_iters_per_batch": (1, 1000),
    "training_stage": (0, 1000),
    "input_size": (64, 4096),
    "output_size": (4, 4096),
    "split": (1, 64),
}
_STR_FIELDS = ("encoder_type", "dataset_type")
_BOOL_FIELDS = ("start_from_latent_avg", "learn_in_w")


def check_opts(opts: Any, where: str) -> dict:
    """The checkpoint's ``opts`` (a dict, an argparse Namespace, or absent) as a dict whose fields
    of :data:`_INT_FIELDS`, :data:`_STR_FIELDS` and :data:`_BOOL_FIELDS` hold what they must;
    other fields (paths, learning rates) are kept as they are and never read."""
    if opts is None:
        return {}
    if isinstance(opts, argparse.Namespace):
        opts = vars(opts)
    if not isinstance(opts, Mapping):
        raise CheckpointError(f"{where}: 'opts' is a {_kind(opts)}; expected a dict")
    out = {}
    for key, value in opts.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: opts key {_short(key)} is a {type(key).__name__}; expected a string")
        out[key] = value
    for key, (lo, hi) in _INT_FIELDS.items():
        value = out.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CheckpointError(f"{where}: opts.{key} = {_short(value, 40)}; expected an integer in [{lo}, {hi}]")
    if out.get("input_size") is not None and out["input_size"] & (out["input_size"] - 1):
        raise CheckpointError(f"{where}: opts.input_size = {out['input_size']}; expected a power of two")
    for key in _STR_FIELDS:
        if out.get(key) is not None and not isinstance(out[key], str):
            raise CheckpointError(f"{where}: opts.{key} = {_short(out[key], 40)}; expected a string")
    for key in _BOOL_FIELDS:
        if out.get(key) is not None and not isinstance(out[key], (bool, int)):
            raise CheckpointError(f"{where}: opts.{key} = {_short(out[key], 40)}; expected true or false")
    return out
