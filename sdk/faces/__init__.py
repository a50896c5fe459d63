"""Real faces for face models: FFHQ alignment as pSp computes it, landmark back ends, paste-back.

::

    from sdk.faces import align_face, detect_faces, paste_back
    face = align_face(frame_rgb, size=256, landmarks="dlib")  # None when there is no face
    face.image   # 256x256x3 uint8, pSp's aligned crop
    face.matrix  # 3x3: crop pixel (x, y, 1) -> frame pixel
    frame = paste_back(frame_rgb, face, translated_rgb)

Landmark back ends (optional extras, imported when first named):

* ``"dlib"`` (extra ``faces-dlib``): dlib's HOG detector (one 2x upsample) and 68-point shape
  predictor, exactly pSp's. The 68-point model was trained on iBUG 300-W, whose licence excludes
  commercial use.
* ``"mediapipe"``: MediaPipe's face detector and face mesh (Apache-2.0 models, shipped in
  ``sdk/faces/models``), on LiteRT where the ``faces`` extra installed it, else on ONNX Runtime.

Needs OpenCV (``opencv-python-headless``, in the ``faces`` extra).
"""

from __future__ import annotations

from ..errors import BackendError

try:
    import cv2  # noqa: F401
except ImportError as e:  # the one line an optional extra gives
    raise BackendError('sdk.faces needs OpenCV (cv2 is not installed); pip install -e ".[faces]"') from e

from .align import align_face, crop_corners, detect_faces, face_from_landmarks
from .backends import BACKENDS, get_backend
from .ffhq import ffhq_quad
from .paste import paste_back
from .types import Face, LandmarkBackend, Landmarks

__all__ = [
    "BACKENDS",
    "Face",
    "LandmarkBackend",
    "Landmarks",
    "align_face",
    "crop_corners",
    "detect_faces",
    "face_from_landmarks",
    "ffhq_quad",
    "get_backend",
    "paste_back",
]
