"""``landmarks="dlib"``: pSp's landmarks, dlib's HOG frontal face detector (one 2x upsample) and
its 68-point shape predictor (``shape_predictor_68_face_landmarks.dat``).

Licence: dlib is Boost-licensed, but the 68-point model was trained on the iBUG 300-W data set,
whose licence excludes commercial use (dlib's model README says so): do not use this back end in
a commercial product. Install: ``pip install 'gan-encoder-rt[faces-dlib]'`` (``dlib-bin`` and
``face_recognition_models``, which ships the model: 126 MB installed). ``SDK_DLIB_PREDICTOR``
names another copy of the ``.dat`` file.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError
from .types import LandmarkBackend, Landmarks

EXTRA_HINT = 'pip install -e ".[faces-dlib]" (dlib-bin and face_recognition_models)'
MODEL_NAME = "shape_predictor_68_face_landmarks.dat"


def predictor_path() -> Path:
    """The 68-point model: ``$SDK_DLIB_PREDICTOR``, else the copy in ``face_recognition_models``
    (found without importing it: its ``__init__`` needs setuptools' ``pkg_resources``)."""
    named = os.environ.get("SDK_DLIB_PREDICTOR")
    if named:
        if not Path(named).is_file():
            raise BackendError(f"SDK_DLIB_PREDICTOR names {named!r}, which is not a file: point it at {MODEL_NAME}")
        return Path(named)
    spec = importlib.util.find_spec("face_recognition_models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "models" / MODEL_NAME
        if path.is_file():
            return path
    raise BackendError(
        f"landmarks='dlib' needs the 68-point model {MODEL_NAME}: {EXTRA_HINT}, or set SDK_DLIB_PREDICTOR"
    )


def anchors_68(points: np.ndarray) -> np.ndarray:
    """The FFHQ anchors of iBUG's 68 points: the eye centres (means of 36-41 and 42-47) and the
    outer mouth corners (48, 54)."""
    return np.stack([points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[48], points[54]])


class DlibLandmarks(LandmarkBackend):
    """dlib's detector and 68-point predictor as pSp runs them (``upsample=1``); faces ordered by
    the detector's score, best first (pSp keeps the last one found instead)."""

    name = "dlib"
    licence = "68-point model trained on iBUG 300-W: non-commercial use only (dlib itself: Boost)"

    def __init__(self, upsample: int = 1, model: str | os.PathLike | None = None) -> None:
        try:
            import dlib
        except ImportError as e:
            raise BackendError(f"landmarks='dlib' needs dlib: {EXTRA_HINT}") from e
        path = os.fspath(model) if model is not None else str(predictor_path())
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(path)
        self._upsample = int(upsample)
        self._lock = threading.Lock()  # dlib's objects are not documented as thread-safe

    def _landmarks(self, image: np.ndarray, rect, score: float) -> Landmarks:
        shape = self._predictor(image, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        return Landmarks(points, anchors_68(points), score, self.name)

    def detect(self, image: np.ndarray) -> list[Landmarks]:
        image = np.ascontiguousarray(image)
        with self._lock:
            rects, scores, _ = self._detector.run(image, self._upsample, 0.0)
            order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
            return [self._landmarks(image, rects[i], scores[i]) for i in order]

    def track(self, image: np.ndarray, previous: Landmarks) -> Landmarks | None:
        """The predictor alone on the box of ``previous``'s points (no detector: about 1 ms);
        ``None`` when that box has left the frame."""
        if previous.points.shape[0] != 68:
            return None
        (x0, y0), (x1, y1) = previous.points.min(axis=0), previous.points.max(axis=0)
        h, w = image.shape[:2]
        if x1 < 0 or y1 < 0 or x0 >= w or y0 >= h:
            return None
        rect = self._dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
        with self._lock:
            return self._landmarks(np.ascontiguousarray(image), rect, previous.score)
