"""Aligned faces from frames: :func:`align_face`, :func:`detect_faces`, :func:`face_from_landmarks`."""

from __future__ import annotations

import numpy as np

from ..checks import check_int
from .backends import get_backend
from .ffhq import align_ffhq
from .types import Face, LandmarkBackend, Landmarks, check_rgb_uint8

MAX_SIZE = 4096


def face_from_landmarks(image, landmarks: Landmarks, size: int = 256) -> Face:
    """The FFHQ-aligned ``size x size`` crop of ``image`` (``HxWx3`` uint8 RGB) for the face at
    ``landmarks`` (e.g. smoothed across video frames), as pSp computes it; see :mod:`sdk.faces.ffhq`."""
    image = check_rgb_uint8(image)
    size = check_int(size, "size", 8, MAX_SIZE, " (256 for pSp, ReStyle, E2Style and OME; 1024 for FFHQ)")
    crop, matrix, quad = align_ffhq(image, landmarks.anchors, size)
    return Face(
        image=crop, matrix=matrix, landmarks=landmarks.points, score=landmarks.score, quad=quad, source=landmarks
    )


def detect_faces(
    image, size: int = 256, landmarks: str | LandmarkBackend = "dlib", max_faces: int | None = None
) -> list[Face]:
    """Every face in ``image`` (``HxWx3`` uint8 RGB), aligned to ``size x size``, best first (the
    back end's order: by detector score). No face is an empty list. ``landmarks``: ``"dlib"``
    (pSp's exact procedure; its 68-point model is trained on iBUG 300-W, licensed for
    non-commercial use only), ``"mediapipe"`` (fast, Apache-2.0) or a :class:`LandmarkBackend`.
    ``max_faces`` keeps the best ones only (the others are not resampled)."""
    image = check_rgb_uint8(image)
    size = check_int(size, "size", 8, MAX_SIZE, " (256 for pSp, ReStyle, E2Style and OME; 1024 for FFHQ)")
    if max_faces is not None:
        max_faces = check_int(max_faces, "max_faces", 1, 1 << 16)
    found = get_backend(landmarks).detect(image)[:max_faces]
    return [face_from_landmarks(image, lm, size) for lm in found]


def align_face(image, size: int = 256, landmarks: str | LandmarkBackend = "dlib") -> Face | None:
    """The best face of ``image`` (``HxWx3`` uint8 RGB), FFHQ-aligned to ``size x size``; ``None``
    when there is none. With ``landmarks="dlib"`` this is pSp's ``align_face`` (the best face,
    not the last one found). See :func:`detect_faces` for ``landmarks``."""
    faces = detect_faces(image, size, landmarks, max_faces=1)
    return faces[0] if faces else None


def crop_corners(size: int) -> np.ndarray:
    """The crop's outer corners ``(-0.5, -0.5), (-0.5, S-0.5), (S-0.5, S-0.5), (S-0.5, -0.5)`` as
    homogeneous ``(4, 3)`` rows, in the order of the quad's corners."""
    lo, hi = -0.5, size - 0.5
    return np.array([[lo, lo, 1.0], [lo, hi, 1.0], [hi, hi, 1.0], [hi, lo, 1.0]])
