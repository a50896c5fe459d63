"""The :class:`sdk.Translator`'s argument checks: the constructor's options, W+ codes, warm-start
pairs and layer masks. Each raises an :class:`sdk.errors.SdkError` subclass naming the argument,
what was expected and what came, before any array is converted or copied.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import numpy as np

from .backends import BACKENDS
from .checks import check_bool, check_int, is_int, plain_array, shown
from .errors import BackendError, InputError

MAX_DEVICE = 255  # GPU indices beyond it are typos (CUDA numbers the visible GPUs from 0)


def max_threads() -> int:
    """The most intra-op threads a Translator takes: four per core, at most 1024."""
    return min(4 * (os.cpu_count() or 1), 1024)


def check_options(backend, threads, verify, device, cuda_graphs) -> None:
    """The constructor's arguments other than the bundle, before anything is opened."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise BackendError(f"unknown backend {shown(backend)}; expected one of {BACKENDS}")
    if threads is not None:
        check_int(
            threads,
            "threads",
            1,
            max_threads(),
            f"; None lets the runtime choose (this machine has {os.cpu_count()} cores)",
        )
    check_bool(verify, "verify")
    check_bool(cuda_graphs, "cuda_graphs")
    check_int(device, "device (a GPU index)", 0, MAX_DEVICE)


# W+ codes of a StyleGAN are of order 1 to 10; far beyond, the style affines overflow float32 (Inf
# styles, NaN images), so codes are refused well before that instead of rendering garbage
LATENT_LIMIT = 1e4


def check_magnitude(codes: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(codes)):
        raise InputError(f"{what} must be finite: they contain NaN or Inf (or values too large for float32)")
    if codes.size and np.abs(codes).max() > LATENT_LIMIT:
        raise InputError(
            f"{what} have values up to {np.abs(codes).max():.3g}; W+ codes are of order 1-10 and this "
            f"SDK refuses magnitudes beyond {LATENT_LIMIT:g}, where the style affines overflow"
        )


def float_array(value, what: str, check_shape: Callable[[tuple], object]) -> np.ndarray:
    """``value`` as a C-contiguous float32 array, after ``check_shape(value.shape)`` (which
    raises): nothing is copied before the shape (and so the batch size) is accepted."""
    arr = plain_array(value, what, "float")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{what} must be a float array; got dtype {arr.dtype} ({type(value).__name__})")
    check_shape(arr.shape)
    with np.errstate(over="ignore"):  # beyond float32's range becomes Inf: the callers refuse it
        return np.ascontiguousarray(arr, dtype=np.float32)


def init_pair(init) -> tuple:
    if not isinstance(init, (tuple, list)) or len(init) != 2:
        raise InputError(
            f"init must be a previous TranslationResult or a (latents, images) pair; got {type(init).__name__}"
        )
    return init[0], init[1]


def layer_mask(latent_mask, m: int) -> list[int]:
    """``latent_mask`` (None: pSp's fine layers 8..M-1) as a list of layer indices in 0..M-1."""
    mask = None
    if latent_mask is None:
        mask = list(range(8, m))
    elif not isinstance(latent_mask, (str, bytes)):
        try:  # at most M entries are read: a huge iterator cannot hang the caller
            mask = list(itertools.islice(iter(latent_mask), m + 1))
        except Exception:  # not iterable, or its iterator fails
            mask = None
    if not mask or any(not is_int(i) for i in mask) or any(not 0 <= i < m for i in mask):
        raise InputError(f"latent_mask must list layer indices (ints) in 0..{m - 1}; got {shown(latent_mask)}")
    if len(mask) > m:
        raise InputError(f"latent_mask lists more than the model's {m} layers; got {shown(latent_mask)}")
    return [int(i) for i in mask]
