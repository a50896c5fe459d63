"""Face models on whole frames: align every face (or the best), translate each aligned crop with
the bundle's task, paste the results back, return the frame.

::

    from sdk.faces.translate import translate_faces
    out = translate_faces(translator, frame, landmarks="dlib", which="all", factor=4)

Public pSp, ReStyle, E2Style and OME face models were trained on FFHQ-aligned crops at their
input size S; the crops here are aligned at S, translated (the task's own pre-processing, e.g.
the super-resolution downsampling by ``factor``), and each R x R result (R may exceed S: a
1024 px generator) is warped back into the frame over the crop's quad with a feathered mask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..imaging import as_rgb_uint8
from .align import face_from_landmarks
from .backends import get_backend
from .paste import paste_back
from .types import Face, LandmarkBackend, check_rgb_uint8

if TYPE_CHECKING:
    from ..translator import Translator

WHICH = ("all", "best")
STAGES = ("detect", "align", "translate", "paste")


@dataclass
class FacesResult:
    """What :func:`translate_faces_timed` did to one frame.

    * ``frame``: ``HxWx3`` uint8 RGB, the input frame (a copy) with every translated face pasted
      back; equal to the input when no face was found.
    * ``faces``: the aligned :class:`Face` records, best first; ``outputs``: their translations,
      ``R x R x 3`` uint8 RGB, in the same order.
    * ``ms``: milliseconds per stage (``detect``, ``align``, ``translate``, ``paste``).
    """

    frame: np.ndarray
    faces: list[Face] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    ms: dict[str, float] = field(default_factory=dict)


def translate_faces_timed(
    translator: Translator,
    frame,
    landmarks: str | LandmarkBackend = "dlib",
    which: str = "all",
    faces: list[Face] | None = None,
    iterations: int | None = None,
    **task_options,
) -> FacesResult:
    """:func:`translate_faces` with the aligned faces, their translations and the time of each
    stage. ``faces``: already aligned faces of this frame (e.g. from
    :class:`sdk.faces.video.FaceVideo`), at the model's input size; then nothing is detected."""
    if which not in WHICH:
        raise InputError(f"which must be one of {WHICH} (every face, or the best one only); got {which!r}")
    image = check_rgb_uint8(as_rgb_uint8(frame), "frame")
    size = translator.manifest.input_size
    translator.check_iterations(iterations)  # a closed translator or bad iterations: before any work
    ms = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    if faces is None:
        backend = get_backend(landmarks)
        found = backend.detect(image)[: 1 if which == "best" else None]
        ms["detect"] = _since(start)
        start = time.perf_counter()
        faces = [face_from_landmarks(image, lm, size) for lm in found]
        ms["align"] = _since(start)
    else:
        faces = list(faces)[: 1 if which == "best" else None]
        for face in faces:
            if face.size != size:
                raise InputError(f"faces must be aligned at the model's input size {size}; got {face.size}")
    out = image.copy()  # the caller's frame is never written to
    outputs = []
    for face in faces:
        start = time.perf_counter()
        translated = translator(face.image, iterations=iterations, **task_options)
        ms["translate"] += _since(start)
        start = time.perf_counter()
        out = paste_back(out, face, translated)
        ms["paste"] += _since(start)
        outputs.append(translated)
    return FacesResult(out, faces, outputs, ms)


def translate_faces(
    translator: Translator,
    frame,
    landmarks: str | LandmarkBackend = "dlib",
    which: str = "all",
    iterations: int | None = None,
    **task_options,
) -> np.ndarray:
    """``frame`` (``HxWx3`` uint8 RGB, or anything :func:`sdk.imaging.as_rgb_uint8` reads) with
    every face (``which="all"``) or the best one (``"best"``) FFHQ-aligned at the model's input
    size, translated by ``translator`` (``iterations``, ``task_options`` as for its call, e.g.
    ``factor=4``) and pasted back: a new ``HxWx3`` uint8 RGB array of the frame's size. No face:
    an unchanged copy. ``landmarks``: ``"dlib"`` (pSp's exact alignment; non-commercial model),
    ``"mediapipe"`` (fast, Apache-2.0) or a :class:`sdk.faces.LandmarkBackend`."""
    return translate_faces_timed(translator, frame, landmarks, which, None, iterations, **task_options).frame


def _since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
