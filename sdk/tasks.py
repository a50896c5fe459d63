"""Pre-processing per task: from a user's HxWx3 uint8 image to the encoder's NCHW input.

Each task is a function registered under the name the manifest's ``task.name`` uses, so a
new task is one function here and one manifest value, not a branch in the translator.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from .bundle import Manifest
from .errors import InputError
from .imaging import as_rgb_uint8, bicubic_downsample, resize_bilinear, to_model_range

SR_FACTORS = (1, 2, 4, 8, 16, 32)
Preprocess = Callable[..., np.ndarray]
TASKS: Dict[str, Preprocess] = {}


def task(name: str):
    def register(fn: Preprocess) -> Preprocess:
        TASKS[name] = fn
        return fn
    return register


def _resized_rgb01(image, size: int) -> np.ndarray:
    """HxWx3 uint8 → [3, size, size] float32 in [0, 1], resized like torchvision's Resize on
    a PIL image (uint8 result rounded, as PIL returns 8-bit pixels)."""
    rgb = as_rgb_uint8(image).transpose(2, 0, 1).astype(np.float32)
    out = resize_bilinear(rgb, (size, size))
    return np.clip(np.round(out), 0, 255) / 255.0


@task("inversion")
def preprocess_inversion(image, manifest: Manifest) -> np.ndarray:
    """Resize to S x S, scale to the model range ([-1, 1] for pSp-family models)."""
    lo, hi = manifest.input_range
    return to_model_range(_resized_rgb01(image, manifest.input_size), lo, hi)


def simulate_low_resolution(rgb01: np.ndarray, factor: int) -> np.ndarray:
    """pSp's ``BilinearResize`` inference transform on a [3, S, S] image in [0, 1]:
    bicubic downsampling by ``factor``, clamped, quantised to 8 bits as ``ToPILImage`` does
    (truncation), then resized back to S with PIL's bilinear filter and rounded."""
    if factor not in SR_FACTORS:
        raise InputError(f"super-resolution factor must be one of {SR_FACTORS}; got {factor!r}")
    size = rgb01.shape[-1]
    if size % factor:
        raise InputError(f"factor {factor} does not divide the encoder input size {size}")
    low = np.clip(bicubic_downsample(rgb01, factor), 0.0, 1.0)
    low = np.floor(low * 255.0)  # torchvision: pic.mul(255).byte()
    back = resize_bilinear(low, (size, size))
    return np.clip(np.round(back), 0, 255) / 255.0


@task("super_resolution")
def preprocess_super_resolution(image, manifest: Manifest, factor: int | None = None) -> np.ndarray:
    """Resize to S, downsample by ``factor`` and resize back (pSp's SuperResTransforms).
    ``factor`` defaults to the manifest's ``task.options.factor``."""
    factor = manifest.task_options.get("factor", 4) if factor is None else factor
    lo, hi = manifest.input_range
    rgb01 = _resized_rgb01(image, manifest.input_size)
    return to_model_range(simulate_low_resolution(rgb01, int(factor)), lo, hi)


def preprocess(image, manifest: Manifest, **options) -> np.ndarray:
    """The manifest's task pre-processing; returns [C_x, S, S] float32."""
    fn = TASKS.get(manifest.task)
    if fn is None:
        raise InputError(f"this SDK has no pre-processing for task {manifest.task!r} (known: {sorted(TASKS)}); "
                         f"call Translator.infer with a prepared NCHW array instead")
    unknown = set(options) - set(fn.__code__.co_varnames[2:fn.__code__.co_argcount])
    if unknown:
        raise InputError(f"task {manifest.task!r} takes no option(s) {sorted(unknown)}")
    return fn(image, manifest, **options)
