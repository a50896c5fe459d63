"""The landmark back ends by name, each imported the first time it is named (optional extras)."""

from __future__ import annotations

import importlib
import threading

from ..errors import InputError
from .types import LandmarkBackend

#: name -> (module, class, the extra that installs what it needs)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "dlib": ("sdk.faces.dlib_landmarks", "DlibLandmarks", "faces-dlib"),
    "mediapipe": ("sdk.faces.mediapipe_landmarks", "MediapipeLandmarks", "faces"),
}

_instances: dict[str, LandmarkBackend] = {}
_lock = threading.Lock()


def get_backend(landmarks: str | LandmarkBackend) -> LandmarkBackend:
    """The back end named ``landmarks`` (``"dlib"``: pSp's exact landmarks, a non-commercial
    model; ``"mediapipe"``: the fast Apache-2.0 one), created once per process, or a
    :class:`LandmarkBackend` instance as given. A missing package raises
    :class:`sdk.errors.BackendError` naming the extra."""
    if isinstance(landmarks, LandmarkBackend):
        return landmarks
    if not isinstance(landmarks, str) or landmarks not in BACKENDS:
        raise InputError(
            f"landmarks must be one of {sorted(BACKENDS)} or a sdk.faces.LandmarkBackend; got {landmarks!r}"
        )
    with _lock:
        backend = _instances.get(landmarks)
        if backend is None:
            module, cls, _ = BACKENDS[landmarks]
            backend = getattr(importlib.import_module(module), cls)()
            _instances[landmarks] = backend
        return backend
