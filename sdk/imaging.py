"""Image conversions and resampling in numpy, matching what the public training code used.

* :func:`resize_bilinear` is PIL's ``Image.resize(..., BILINEAR)`` as torchvision's
  ``transforms.Resize`` applies it to the training images: a triangle filter on pixel
  centres whose support widens with the downscale factor (antialiasing), separable.
* :func:`bicubic_downsample` is the ``BicubicDownSample`` of pSp's super-resolution
  transforms (from PULSE): a separable bicubic kernel (a = -0.5) of 4 * factor taps,
  reflect padding, stride ``factor``.

Images are float32 arrays laid out ``[..., H, W]`` (channels first) unless stated otherwise.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from .checks import plain_array
from .errors import InputError

if TYPE_CHECKING:  # Pillow is optional at run time: imported where an image file is opened
    import PIL.Image

MAX_IMAGE_SIDE = 8192  # larger images are refused: resizing them to 256 px would take gigabytes


def check_image_side(shape, what: str = "image") -> None:
    """Refuse an image whose height or width (``shape[:2]``) exceeds :data:`MAX_IMAGE_SIDE`."""
    if len(shape) >= 2 and max(shape[:2]) > MAX_IMAGE_SIDE:
        raise InputError(
            f"the {what} is {shape[0]}x{shape[1]} px; at most {MAX_IMAGE_SIDE} px a side is accepted "
            f"(the model reads it at its input size): downscale it first"
        )


def as_rgb_uint8(image) -> np.ndarray:
    """An HxWx3 uint8 RGB array from an image in any of the forms a caller has at hand:

    * a numpy array (or nested list) HxW (gray), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) of uint8
      (0..255), uint16 (0..65535, as 16-bit files hold), bool (black and white) or float in [0, 1];
    * a PIL image in any mode (1, L, LA, La, P, PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV;
      16-bit I;16*, and I as 16-bit; F in Pillow's 0..255 scale);
    * a path (``str`` or ``os.PathLike``) of an image file, read with Pillow (imported only then;
      loading files needs Pillow installed), as users of an image API expect.

    Gray is repeated to three channels; an alpha channel is dropped (not composited). 16-bit
    values are scaled to 8 bits (65535 -> 255). Masked arrays, ragged lists, unreadable files
    and truncated images raise :class:`InputError`.
    """
    if isinstance(image, (str, os.PathLike)):
        with open_image(image) as pil:
            return _pil_rgb(pil, f"image file {os.fspath(image)!r}")
    if _is_pil(image):
        return _pil_rgb(image, "PIL image" + (f" of {image.filename!r}" if getattr(image, "filename", "") else ""))
    if image is None or isinstance(image, (bytes, bytearray, memoryview)):
        raise InputError(
            f"expected an image (an HxWx3 array, a PIL image or a file path); got a non-numeric "
            f"{type(image).__name__} (encoded file bytes? decode them with "
            f"PIL.Image.open(io.BytesIO(data)))"
        )
    return _array_rgb(plain_array(image, "image"))


def as_label_array(labels) -> np.ndarray:
    """A label map as an array, not converted: an array, a PIL image (its pixel values, e.g. a
    palette image's indices) or the path of an image file (read with Pillow)."""
    if isinstance(labels, (str, os.PathLike)):
        with open_image(labels) as pil:
            return _decoded(pil, f"label map {os.fspath(labels)!r}", np.asarray)
    if _is_pil(labels):
        check_image_side((labels.size[1], labels.size[0]), "label map")
        return _decoded(labels, "PIL label map", np.asarray)
    return plain_array(labels, "label map")


def open_image(path) -> PIL.Image.Image:
    """Open an image file with Pillow (lazy import), its size checked before it is decoded; use
    as a context manager. Unreadable files raise :class:`InputError` naming the file."""
    name = os.fspath(path)
    try:
        from PIL import Image
    except ImportError:
        raise InputError(
            f"reading the image file {name!r} needs Pillow (pip install pillow); or pass the image "
            f"as an HxWx3 uint8 array"
        ) from None
    try:
        pil = Image.open(name)
    except Exception as e:  # missing, a folder, no permission, not an image, a NUL in the name, ...
        raise InputError(f"cannot read the image file {name!r}: {_reason(e)}") from None
    try:
        check_image_side((pil.size[1], pil.size[0]), f"image in {name!r}")
    except InputError:
        pil.close()
        raise
    return pil


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_AS_ARRAY = ("1", "L", "RGB", "RGBA", "RGBX", "LA", "F", "I") + _SIXTEEN_BIT  # modes read as arrays
_UNPREMULTIPLY = {"La": "LA", "RGBa": "RGBA"}  # premultiplied alpha: divide it out before dropping alpha


def _pil_rgb(pil, source: str) -> np.ndarray:
    check_image_side((pil.size[1], pil.size[0]), source)

    def convert(image):
        mode = _UNPREMULTIPLY.get(image.mode, image.mode)
        if mode != image.mode:
            image = image.convert(mode)
        elif mode not in _AS_ARRAY:  # palette indices, CMYK, YCbCr, ...: not RGB values as stored
            image = image.convert("RGB")
        arr = np.asarray(image)
        if mode == "LA":
            return arr[:, :, 0]
        if mode == "F":  # Pillow's float mode uses the 8-bit scale (convert("L") clips it to 0..255)
            return _scaled_float(arr, 255.0, "a PIL mode F image")
        if mode == "I":  # 32-bit ints: what 16-bit gray files open as in some Pillow releases
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise InputError(
                    f"the {source} (mode I) has values in [{arr.min()}, {arr.max()}]; 16-bit values "
                    f"0..65535 are accepted: scale it to 8 bits (mode L) first"
                )
            return arr.astype(np.uint16)
        return arr

    return _array_rgb(_decoded(pil, source, convert))


def _decoded(pil, source: str, read):
    """``read(pil)`` with the pixels decoded first: truncated or corrupt data raise InputError."""
    try:
        pil.load()
        return read(pil)
    except InputError:
        raise
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, zlib.error...
        raise InputError(
            f"cannot decode the {source} (mode {getattr(pil, 'mode', '?')}): {_reason(e)} "
            f"(a truncated or corrupt file?)"
        ) from None


def _array_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        raise InputError(f"expected an HxWx3 image, got an empty array of shape {arr.shape}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"expected an image HxWx3 (RGB), HxWx4 (RGBA) or HxW (gray); got shape {arr.shape}")
    check_image_side(arr.shape)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # 16-bit: round(v * 255 / 65535)
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _scaled_float(arr, 1.0, "a float image")
    else:
        raise InputError(
            f"unsupported image dtype {arr.dtype}; pass uint8 (0..255), uint16 (0..65535) or float in [0, 1]"
        )
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _scaled_float(arr: np.ndarray, top: float, what: str) -> np.ndarray:
    """Floats in [0, top] -> uint8 0..255 (rounded)."""
    if not np.all(np.isfinite(arr)):
        raise InputError("the image contains NaN or Inf values")
    if arr.min() < 0.0 or arr.max() > top:
        fix = "Pass uint8 0..255 or divide by 255" if top == 1.0 else "Scale it to 0..255"
        raise InputError(f"{what} must be in [0, {top:g}]; got values in [{arr.min():.3g}, {arr.max():.3g}]. {fix}")
    return np.round(arr.astype(np.float32) * np.float32(255.0 / top)).astype(np.uint8)


def _is_pil(value) -> bool:
    """A PIL image, without importing PIL: whoever made one has imported it."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def _reason(e: BaseException) -> str:
    text = (getattr(e, "strerror", None) or str(e) or type(e).__name__).splitlines()[0]
    return text[:160]


@functools.lru_cache(maxsize=16)
def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] resampling matrix of PIL's bilinear filter (support 1, widened
    by the scale when downsampling; edge taps renormalised), float32, read-only: cached, as
    building it takes longer than resizing a 1024 px frame with it (a video resizes every
    frame to the same size)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((taps + 0.5 - centre) / support), 0.0, None)
        weights[i, lo:hi] = w / w.sum()
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


BAND = 32  # outputs per block of a banded resampling product


def _bands(weights: np.ndarray):
    """``(outputs, lo, hi)`` blocks of :data:`BAND` rows of ``weights [out, in]``, with the range
    of inputs ``lo:hi`` the block reads (the rest of its rows is zeros)."""
    for start in range(0, weights.shape[0], BAND):
        block = weights[start : start + BAND]
        cols = np.flatnonzero(block.any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 0)
        yield slice(start, start + BAND), lo, hi


def resample_leading(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``weights [out, in]`` applied along the first axis of ``x [in, ...]`` -> ``[out, ...]``.

    The other axes are flattened in their memory order (no copy where they are contiguous, as
    an HxWx3 image's are), so each product is one wide matmul; and as the filter reads a few
    inputs per output (a band), it runs in blocks of :data:`BAND` outputs over just the inputs
    they read: a 1024 -> 256 px resize does 0.2 instead of 2 GFLOP (the zeros skipped)."""
    order = [0] + sorted(range(1, x.ndim), key=lambda a: -x.strides[a])
    xt = x.transpose(order)
    flat = xt.reshape(xt.shape[0], -1)
    out = np.empty((weights.shape[0], flat.shape[1]), np.float32)
    for rows, lo, hi in _bands(weights):
        np.matmul(weights[rows, lo:hi], flat[lo:hi], out=out[rows])
    return out.reshape((weights.shape[0],) + xt.shape[1:]).transpose(np.argsort(order))


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``[..., H, W]`` to ``size = (height, width)`` with PIL's bilinear filter."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image.astype(np.float32, copy=True)
    return _separable(image, _bilinear_weights(h, size[0]), _bilinear_weights(w, size[1]))


def _separable(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``rows [h', H]`` along the rows of ``image [..., H, W]``, then ``cols [w', W]`` along its
    columns -> float32 ``[..., h', w']``."""
    x = np.asarray(image, dtype=np.float32)  # keeps the memory layout (an HWC image's planes stay interleaved)
    x = np.moveaxis(resample_leading(rows, np.moveaxis(x, -2, 0)), 0, -2)
    x = np.moveaxis(resample_leading(cols, np.moveaxis(x, -1, 0)), 0, -1)
    return np.ascontiguousarray(x)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    ax = np.abs(x)
    near = (a + 2.0) * ax**3 - (a + 3.0) * ax**2 + 1.0
    far = a * ax**3 - 5.0 * a * ax**2 + 8.0 * a * ax - 4.0 * a
    return np.where(ax <= 1.0, near, np.where(ax < 2.0, far, 0.0))


def bicubic_kernel(factor: int) -> np.ndarray:
    """The 4 * factor taps of pSp's ``BicubicDownSample(factor)``, normalised to sum 1."""
    size = 4 * factor
    taps = (np.arange(size) - size // 2 + 0.5) / factor
    k = _bicubic(taps)
    return (k / k.sum()).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _bicubic_matrix(in_size: int, factor: int) -> np.ndarray:
    """``[in_size // factor, in_size]``: one axis of :func:`bicubic_downsample` as a matrix, the
    reflect padding folded in (a padded tap adds its weight to the sample it mirrors)."""
    k = bicubic_kernel(factor).astype(np.float64)
    pad = max(4 * factor - factor, 0)
    before = pad // 2
    n_out = (in_size + pad - k.size) // factor + 1
    matrix = np.zeros((n_out, in_size), np.float64)
    period = max(2 * (in_size - 1), 1)
    for i in range(n_out):
        for t, weight in enumerate(k):
            j = i * factor + t - before
            j %= period  # numpy's "reflect", any number of times over
            matrix[i, period - j if j >= in_size else j] += weight
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def bicubic_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """pSp's ``BicubicDownSample``: ``[..., H, W]`` → ``[..., H/factor, W/factor]`` (reflect padding,
    rows filtered first as the reference does)."""
    h, w = image.shape[-2:]
    return _separable(image, _bicubic_matrix(h, factor), _bicubic_matrix(w, factor))


def to_model_range(rgb01: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[0, 1] → the model's input range (pSp normalises with mean 0.5, std 0.5 → [-1, 1])."""
    return (rgb01 * (hi - lo) + lo).astype(np.float32)


def to_uint8_image(chw: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """A generator output [3, H, W] in [lo, hi] → HxWx3 uint8 RGB (clipped, rounded)."""
    x = (np.clip(chw, lo, hi) - lo) / (hi - lo)
    return np.round(x.transpose(1, 2, 0) * 255.0).astype(np.uint8)
