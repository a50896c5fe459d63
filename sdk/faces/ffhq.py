"""The FFHQ alignment of pSp (``scripts/align_all_parallel.py``, after NVlabs' ffhq-dataset), in
numpy and OpenCV, with the affine map from the crop back to the frame kept alongside.

The procedure, step by step as pSp runs it for an output of ``S`` px (``transform_size = S``):

1. the quad from four landmarks (:func:`ffhq_quad`);
2. shrink: when the quad is at least ``2 S`` px, the whole frame is resized by the integer
   ``shrink = floor(qsize / S / 2)`` with Pillow's antialiased Lanczos filter (:func:`resize_lanczos`);
3. crop to the quad's bounding box plus a border of ``max(rint(0.1 qsize), 3)`` px;
4. pad, when the quad leaves the image: reflect-pad by at least ``rint(0.3 qsize)``, blur the
   padding (Gaussian, sigma ``0.02 qsize``) and blend it towards the median colour;
5. sample the quad onto ``S x S`` bilinearly (Pillow's QUAD transform; the quad is a square, so
   the map is affine and OpenCV's ``warpAffine`` computes it, within 1/255 of Pillow).

Every step keeps track of where its pixels lie in the original frame, so the returned matrix maps
crop pixels to frame pixels (pixel centres at whole numbers).
"""

from __future__ import annotations

import functools
import importlib.util

import cv2
import numpy as np

from ..errors import InputError
from ..imaging import resample_leading

USE_PILLOW = True  # the pre-shrink by Pillow where it is installed (tests compare it with the numpy one)
MAX_QUAD_RATIO = 16  # a quad larger than this many frame sides is refused (landmarks gone astray)


def ffhq_quad(anchors: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ quad ``c-x-y, c-x+y, c+x+y, c+x-y`` (``(4, 2)`` float64, frame coordinates) and
    its side ``qsize`` from ``anchors`` (eye left, eye right, mouth left, mouth right; image
    left/right). :class:`InputError` when the points are degenerate (all in one place)."""
    eye_left, eye_right, mouth_left, mouth_right = np.asarray(anchors, dtype=np.float64)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    scale = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    if not norm > 1e-6 or not scale > 1e-6:
        raise InputError("the face's landmarks are degenerate (eyes and mouth in one place): no quad to align")
    x = x / norm * scale
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


@functools.lru_cache(maxsize=8)
def _lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` float32 matrix of Pillow's ``resize(..., LANCZOS)`` (support 3, widened by
    the downscale factor; the taps that fall off the image dropped and the rest renormalised)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        w = _lanczos((np.arange(lo, hi) - centre + 0.5) / filterscale)
        total = w.sum()
        weights[i, lo:hi] = w / total if total != 0 else w
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def resize_lanczos(
    image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """``HxWx3`` uint8 resized to ``size = (width, height)`` as Pillow's ``resize(size, LANCZOS)``
    does it (the horizontal pass first, rounded to 8 bits, then the vertical pass), or just the
    region ``box = (x0, y0, x1, y1)`` of that result (the same pixels; only the input rows and
    columns it reads are filtered). Pillow itself does it where installed (3-4x faster on a
    12-megapixel photograph); this numpy version, within 1/255 of it, otherwise."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box if box is not None else (0, 0, size[0], size[1])
    if USE_PILLOW and importlib.util.find_spec("PIL") is not None:
        return _resize_pillow(image, size, (x0, y0, x1, y1))
    cols = _lanczos_weights(w, size[0])[x0:x1]
    rows = _lanczos_weights(h, size[1])[y0:y1]
    used = np.flatnonzero(rows.any(axis=0))
    r0, r1 = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
    src = image[r0:r1].astype(np.float32)
    out = _to_uint8(np.moveaxis(resample_leading(cols, np.moveaxis(src, 1, 0)), 0, 1))
    out = _to_uint8(resample_leading(np.ascontiguousarray(rows[:, r0:r1]), out.astype(np.float32)))
    return np.ascontiguousarray(out)


def _resize_pillow(image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Pillow's ``resize(size, LANCZOS)`` cut to ``box``: Pillow resamples just the source region
    that maps to ``box`` with the full resize's filter positions and edge handling."""
    from PIL import Image

    h, w = image.shape[:2]
    sx, sy = w / size[0], h / size[1]
    x0, y0, x1, y1 = box
    source = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    with Image.fromarray(np.ascontiguousarray(image)) as pil:
        return np.asarray(pil.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS, box=source))


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )


def _pad_blend(img: np.ndarray, pad: np.ndarray, qsize: float) -> np.ndarray:
    """pSp's padding: reflect-pad ``img`` by ``pad = (left, top, right, bottom)``, blur towards
    the padded edges and blend the padding towards the median colour; uint8 out."""
    padded = np.pad(img.astype(np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = padded.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mask = np.maximum(
            1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
            1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]),
        )
    blur = qsize * 0.02
    # scipy.ndimage.gaussian_filter's kernel: radius int(4 sigma + 0.5), mirrored edges (d c b a | a b c d)
    radius = int(4.0 * blur + 0.5)
    blurred = cv2.GaussianBlur(
        padded, (2 * radius + 1, 2 * radius + 1), sigmaX=blur, sigmaY=blur, borderType=cv2.BORDER_REFLECT
    )
    padded += (blurred - padded) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(padded), 0, 255).astype(np.uint8)


def align_ffhq(image: np.ndarray, anchors: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pSp's aligned crop of ``image`` (``HxWx3`` uint8 RGB) for the face at ``anchors``:
    ``(crop size x size x 3 uint8, matrix 3x3 crop -> frame, quad (4, 2) in frame coordinates)``."""
    quad, qsize = ffhq_quad(anchors)
    h, w = image.shape[:2]
    b = _bounds(quad)
    if b[2] < 0 or b[3] < 0 or b[0] >= w or b[1] >= h or qsize > MAX_QUAD_RATIO * max(h, w):
        raise InputError(
            f"the face's FFHQ quad (side {qsize:.0f} px, x {b[0]}..{b[2]}, y {b[1]}..{b[3]}) does not overlap "
            f"the {w}x{h} frame or is over {MAX_QUAD_RATIO}x its size: landmarks from another frame?"
        )
    frame_quad = quad.copy()
    to_frame = np.eye(3)  # current image pixel -> frame pixel, updated with each step
    img = image

    shrink = int(np.floor(qsize / size * 0.5))
    h, w = img.shape[:2]
    if shrink > 1:
        rsize = (max(int(np.rint(float(w) / shrink)), 1), max(int(np.rint(float(h) / shrink)), 1))
        quad = quad / shrink
        qsize /= shrink
        sx, sy = w / rsize[0], h / rsize[1]  # edges map to edges: x_frame + 0.5 = (x + 0.5) * sx
        to_frame = to_frame @ np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        w, h = rsize

    border = max(int(np.rint(qsize * 0.1)), 3)
    b = _bounds(quad)
    crop = (max(b[0] - border, 0), max(b[1] - border, 0), min(b[2] + border, w), min(b[3] + border, h))
    cropped = crop[2] - crop[0] < w or crop[3] - crop[1] < h
    box = crop if cropped else (0, 0, w, h)
    if shrink > 1:  # only the region kept is resampled: the same pixels as shrinking the whole frame, then cropping
        img = resize_lanczos(img, (w, h), box)
    else:
        img = img[box[1] : box[3], box[0] : box[2]]
    if cropped:
        quad = quad - crop[0:2]
        to_frame = to_frame @ _shift(crop[0], crop[1])

    h, w = img.shape[:2]
    b = _bounds(quad)
    pad = np.array(
        (max(-b[0] + border, 0), max(-b[1] + border, 0), max(b[2] - w + border, 0), max(b[3] - h + border, 0))
    )
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = _pad_blend(img, pad, qsize)
        quad = quad + pad[:2]
        to_frame = to_frame @ _shift(-pad[0], -pad[1])

    # Pillow's QUAD: output edge coordinates (u, v) in [0, S] -> nw + (ne - nw) u / S + (sw - nw) v / S,
    # with pSp's corners (quad + 0.5) in edge coordinates; in pixel centres both sides shift by 0.5.
    nw, sw, ne = quad[0], quad[1], quad[3]
    ex, ey = (ne - nw) / size, (sw - nw) / size
    to_img = np.array([[ex[0], ey[0], nw[0] + 0.5 * (ex[0] + ey[0])], [ex[1], ey[1], nw[1] + 0.5 * (ex[1] + ey[1])]])
    crop_img = cv2.warpAffine(
        np.ascontiguousarray(img),
        to_img,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    matrix = to_frame @ np.vstack([to_img, [0.0, 0.0, 1.0]])
    return crop_img, matrix, frame_quad


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])
