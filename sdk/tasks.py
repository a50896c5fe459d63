"""Pre-processing per task: from a user's image (or label map) to the encoder's input.

Each task is a function registered under the name the manifest's ``task.name`` uses, so a
new task is one function here and one manifest value, not a branch in the translator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .checks import is_int
from .errors import BundleError, InputError
from .imaging import as_label_array, as_rgb_uint8, bicubic_downsample, check_image_side, resize_bilinear, to_model_range

if TYPE_CHECKING:  # sdk.manifest validates task options with check_task_options below
    from .manifest import Manifest

SR_FACTORS = (1, 2, 4, 8, 16, 32)
MAX_LABELS = 256  # label maps are resized as 8-bit planes (as pSp's PIL transforms do)
Preprocess = Callable[..., np.ndarray]
TASKS: dict[str, Preprocess] = {}


def task(name: str):
    def register(fn: Preprocess) -> Preprocess:
        TASKS[name] = fn
        return fn

    return register


def _resize_8bit(planes: np.ndarray, size: int) -> np.ndarray:
    """[C, H, W] 0..255 → [C, size, size] 0..255 like torchvision's Resize on a PIL image
    (bilinear, result rounded to 8 bits as PIL returns 8-bit pixels)."""
    return np.clip(np.round(resize_bilinear(planes.astype(np.float32), (size, size))), 0, 255)


def _resized_rgb01(image, size: int) -> np.ndarray:
    """HxWx3 uint8 → [3, size, size] float32 in [0, 1]."""
    return _resize_8bit(as_rgb_uint8(image).transpose(2, 0, 1), size) / 255.0


@task("inversion")
def preprocess_inversion(image, manifest: Manifest) -> np.ndarray:
    """Resize to S x S, scale to the model range ([-1, 1] for pSp-family models)."""
    lo, hi = manifest.input_range
    return to_model_range(_resized_rgb01(image, manifest.input_size), lo, hi)


def low_resolution(rgb01: np.ndarray, factor: int) -> np.ndarray:
    """The low-resolution image of pSp's super-resolution transform: a [3, S, S] image in [0, 1]
    bicubic-downsampled by ``factor``, clamped and truncated to 8 bits as ``ToPILImage`` does;
    returns [3, S/factor, S/factor] float32 in 0..255 (integral values)."""
    if factor not in SR_FACTORS:
        raise InputError(f"super-resolution factor must be one of {SR_FACTORS}; got {factor!r}")
    if rgb01.shape[-1] % factor:
        raise InputError(f"factor {factor} does not divide the encoder input size {rgb01.shape[-1]}")
    low = np.clip(bicubic_downsample(rgb01, factor), 0.0, 1.0)
    return np.floor(low * 255.0)  # torchvision: pic.mul(255).byte()


def simulate_low_resolution(rgb01: np.ndarray, factor: int) -> np.ndarray:
    """pSp's ``BilinearResize`` inference transform on a [3, S, S] image in [0, 1]:
    bicubic downsampling by ``factor``, clamped, quantised to 8 bits as ``ToPILImage`` does
    (truncation), then resized back to S with PIL's bilinear filter and rounded."""
    size = rgb01.shape[-1]
    back = resize_bilinear(low_resolution(rgb01, factor), (size, size))
    return np.clip(np.round(back), 0, 255) / 255.0


@task("super_resolution")
def preprocess_super_resolution(image, manifest: Manifest, factor: int | None = None) -> np.ndarray:
    """Resize to S, downsample by ``factor`` and resize back (pSp's SuperResTransforms).
    ``factor`` defaults to the manifest's ``task.options.factor``."""
    factor = manifest.task_options.get("factor", 4) if factor is None else factor
    if not is_int(factor):
        raise InputError(f"super-resolution factor must be an int in {SR_FACTORS}; got {factor!r}")
    lo, hi = manifest.input_range
    rgb01 = _resized_rgb01(image, manifest.input_size)
    return to_model_range(simulate_low_resolution(rgb01, int(factor)), lo, hi)


@task("sketch")
def preprocess_sketch(image, manifest: Manifest) -> np.ndarray:
    """pSp's sketch-to-face input: one channel in [0, 1] (white paper = 1). RGB is converted
    to gray as PIL's ``convert("L")`` does (ITU-R 601 luma, rounded), then resized to S."""
    rgb = as_rgb_uint8(image).astype(np.int64)
    gray = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return (_resize_8bit(gray[None], manifest.input_size) / 255.0).astype(np.float32)


@task("segmentation")
def preprocess_segmentation(labels, manifest: Manifest) -> np.ndarray:
    """pSp's segmentation-to-face input: an HxW map of integer labels in 0..label_nc-1 →
    one-hot [label_nc, S, S]. Like pSp's transforms, the label map is resized to S with
    PIL's bilinear filter on its 8-bit values before the one-hot encoding (at S x S input
    nothing is resized; at other sizes boundary pixels get blended labels, as in training)."""
    label_nc = int(manifest.task_options.get("label_nc", manifest.input_channels))
    arr = as_label_array(labels)  # masked, ragged and object arrays refused; paths read with Pillow
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"segmentation takes an HxW map of integer labels; got shape {arr.shape}")
    check_image_side(arr.shape, "label map")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"segmentation labels must be integers 0..{label_nc - 1}; got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= label_nc)
    if bad.any():
        raise InputError(
            f"segmentation labels must be in 0..{label_nc - 1} (label_nc = {label_nc}); found "
            f"{np.unique(arr[bad])[:8].tolist()} at {int(bad.sum())} pixels"
        )
    size = manifest.input_size
    if arr.shape != (size, size):
        arr = _resize_8bit(arr[None], size)[0]
    index = arr.astype(np.int64)
    one_hot = np.zeros((label_nc, size, size), dtype=np.float32)
    np.put_along_axis(one_hot, index[None], 1.0, axis=0)
    return one_hot


# --------------------------------------------------------------------------- the manifest's side


def _option_int(options: Mapping[str, Any], key: str, default: int, allowed, why: str) -> int:
    value = options.get(key, default)
    if not is_int(value) or value not in allowed:
        try:
            text = repr(value)[:60]
        except ValueError:  # an int of thousands of digits
            text = "an integer too long to print"
        raise BundleError(
            f"task.options.{key} is {text}; {why}. Rebuild the bundle with a valid value (export/build_engines.py)"
        )
    return int(value)


def check_task_options(task_name: str, options: Mapping[str, Any], channels: int, size: int) -> None:
    """:class:`BundleError` for a bundle whose task cannot run as the manifest describes it (its
    defaults are checked when it opens, not blamed on the caller's argument at the first call).
    Tasks this SDK does not know are left to ``Translator.infer`` with prepared arrays."""
    needs = {"inversion": 3, "super_resolution": 3, "sketch": 1}.get(task_name)
    if needs is not None and channels != needs:
        raise BundleError(
            f"task {task_name!r} feeds the encoder {needs} channel(s), but input.channels is "
            f"{channels}; the task and the encoder come from different checkpoints"
        )
    if task_name == "super_resolution":
        _option_int(
            options,
            "factor",
            4,
            [f for f in SR_FACTORS if size % f == 0],
            f"the default super-resolution factor must be one of {SR_FACTORS} that divides the encoder "
            f"input size {size}",
        )
    elif task_name == "segmentation":
        _option_int(
            options,
            "label_nc",
            channels,
            [channels] if channels <= MAX_LABELS else [],
            f"it must equal input.channels ({channels}, one one-hot plane per label) and be at most {MAX_LABELS}",
        )


def preprocess(image, manifest: Manifest, **options) -> np.ndarray:
    """The manifest's task pre-processing; returns [C_x, S, S] float32."""
    fn = TASKS.get(manifest.task)
    if fn is None:
        raise InputError(
            f"this SDK has no pre-processing for task {manifest.task!r} (known: {sorted(TASKS)}); "
            f"call Translator.infer with a prepared NCHW array instead"
        )
    unknown = set(options) - set(fn.__code__.co_varnames[2 : fn.__code__.co_argcount])
    if unknown:
        raise InputError(f"task {manifest.task!r} takes no option(s) {sorted(unknown)}")
    return fn(image, manifest, **options)
