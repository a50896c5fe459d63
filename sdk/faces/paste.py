"""Paste a translated face back into its frame: the inverse of the alignment warp, blended through
a feathered elliptical mask so that no seam shows."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from ..checks import finite_float
from ..errors import InputError
from .types import Face, check_rgb_uint8

#: the mask's outer ellipse, semi-axes in half-crop units (x, y): inside the crop, so the crop's
#: edges (background, pSp's blurred padding) never show; the FFHQ face is taller than wide
MASK_AXES = (0.88, 0.98)


@functools.lru_cache(maxsize=8)
def crop_mask(size: int, feather: float) -> np.ndarray:
    """``size x size`` float32 mask in crop coordinates: 1 inside the ellipse shrunk by
    ``feather`` (a fraction of the half-crop, 0 < feather <= 1), 0 outside :data:`MASK_AXES`, a
    smoothstep between (no visible edge). Read-only (cached)."""
    centre = (size - 1) / 2.0
    t = (np.arange(size, dtype=np.float64) - centre) / (size / 2.0)
    r = np.hypot(t[None, :] / MASK_AXES[0], t[:, None] / MASK_AXES[1])
    s = np.clip((1.0 - r) / feather, 0.0, 1.0)
    mask = (s * s * (3.0 - 2.0 * s)).astype(np.float32)
    mask.flags.writeable = False
    return mask


def _scaled(matrix: np.ndarray, crop: int, side: int) -> np.ndarray:
    """``matrix`` (a ``crop`` px crop -> frame) for the same square sampled at ``side`` px: edges
    map to edges, ``x_crop + 0.5 = (x + 0.5) * crop / side``."""
    k = crop / side
    return matrix @ np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5], [0.0, 0.0, 1.0]])


def paste_back(frame, face: Face, translated, feather: float = 0.25) -> np.ndarray:
    """``frame`` (``HxWx3`` uint8 RGB, not modified) with ``translated`` (the model's output for
    ``face.image``: ``T x T x 3`` uint8 RGB, any ``T``, e.g. 1024 from a 1024 px generator) warped
    back to where ``face`` was cut from and blended in through :func:`crop_mask` (``feather``: the
    soft edge's width, a fraction 0.01..1 of the half-crop). Returns a new frame; pixels outside
    the mask are the frame's, unchanged."""
    frame = check_rgb_uint8(frame, "frame")
    translated = check_rgb_uint8(translated, "translated")
    if not isinstance(face, Face):
        raise InputError(f"face must be a sdk.faces.Face (from align_face or detect_faces); got {type(face).__name__}")
    if translated.shape[0] != translated.shape[1]:
        raise InputError(f"translated must be a square image (the model's output); got {list(translated.shape)}")
    feather_value = finite_float(feather)
    if feather_value is None or not 0.01 <= feather_value <= 1.0:
        raise InputError(f"feather must be a number in 0.01..1 (a fraction of the half-crop); got {feather!r}")
    size = face.size
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = _mask_box(face.matrix, size, w, h)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out  # the face lies outside the frame
    # a much larger output is first halved (Gaussian pyramid) down to under twice its size in the
    # frame: a bilinear warp alone would alias
    side_in_frame = float(np.hypot(*face.matrix[:2, 0])) * size
    while translated.shape[0] % 2 == 0 and translated.shape[0] >= 2 * max(side_in_frame, 8):
        translated = cv2.pyrDown(translated)
    roi_to_frame = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    dsize = (x1 - x0, y1 - y0)
    warp = _affine_inverse(_scaled(face.matrix, size, translated.shape[0])) @ roi_to_frame
    image = cv2.warpAffine(
        translated, warp[:2], dsize, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    mask = cv2.warpAffine(
        crop_mask(size, feather_value),
        (_affine_inverse(face.matrix) @ roi_to_frame)[:2],
        dsize,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0.0,),
    )
    roi = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = cv2.blendLinear(image, roi, mask, 1.0 - mask)
    return out


def _affine_inverse(m: np.ndarray) -> np.ndarray:
    """The inverse of a 3x3 affine matrix (last row 0, 0, 1)."""
    inv = np.eye(3)
    inv[:2, :2] = np.linalg.inv(m[:2, :2])
    inv[:2, 2] = -inv[:2, :2] @ m[:2, 2]
    return inv


def _mask_box(matrix: np.ndarray, size: int, w: int, h: int) -> tuple[int, int, int, int]:
    """The frame pixels ``x0, y0, x1, y1`` (clipped to ``w x h``) the mask's outer ellipse covers:
    its bounding box in the crop, mapped to the frame, one pixel wider each side."""
    half = size / 2.0
    ax, ay = MASK_AXES[0] * half, MASK_AXES[1] * half
    cx = (size - 1) / 2.0
    box = np.array([[cx - ax, cx - ay, 1], [cx - ax, cx + ay, 1], [cx + ax, cx + ay, 1], [cx + ax, cx - ay, 1]])
    corners = matrix @ box.T
    x0, y0 = (max(int(np.floor(corners[i].min())) - 1, 0) for i in (0, 1))
    return x0, y0, min(int(np.ceil(corners[0].max())) + 2, w), min(int(np.ceil(corners[1].max())) + 2, h)
