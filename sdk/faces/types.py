"""The records and the landmark back-end interface of :mod:`sdk.faces`.

Coordinates everywhere are ``(x, y)`` float64 pixel coordinates with pixel centres at whole
numbers (OpenCV's convention): the top-left pixel covers ``[-0.5, 0.5) x [-0.5, 0.5)``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from ..checks import plain_array
from ..errors import InputError
from ..imaging import check_image_side


@dataclass(frozen=True, eq=False)
class Landmarks:
    """One face as a landmark back end finds it, in frame coordinates.

    * ``points``: ``(N, 2)`` float64, every landmark the back end gives (68 iBUG points for
      dlib, 478 mesh points for mediapipe).
    * ``anchors``: ``(4, 2)`` float64, the only points the FFHQ geometry uses, in this order:
      the image-left eye centre, the image-right eye centre, the image-left and the image-right
      outer mouth corner. Smoothing across video frames filters these.
    * ``score``: the detector's confidence, larger is better (dlib: its SVM score, about -1..3;
      mediapipe: a probability 0..1). Only comparable within one back end.
    * ``backend``: the name of the back end that found it.
    """

    points: np.ndarray
    anchors: np.ndarray
    score: float
    backend: str

    def __post_init__(self) -> None:
        anchors = np.asarray(self.anchors, dtype=np.float64)
        if anchors.shape != (4, 2) or not np.isfinite(anchors).all():
            raise InputError(
                f"Landmarks.anchors must be 4x2 finite (x, y) points (eye left, eye right, mouth left, "
                f"mouth right); got shape {list(anchors.shape)}"
            )
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise InputError(f"Landmarks.points must be Nx2 (x, y) points; got shape {list(points.shape)}")
        object.__setattr__(self, "anchors", anchors)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "score", float(self.score))

    def with_anchors(self, anchors: np.ndarray) -> Landmarks:
        """The same face with replaced (e.g. smoothed) anchors; ``points`` are kept as found."""
        return Landmarks(self.points, anchors, self.score, self.backend)


@dataclass(frozen=True, eq=False)
class Face:
    """An aligned face and where it came from.

    * ``image``: ``size x size x 3`` uint8 RGB, the FFHQ-aligned crop (pSp's ``align_face``
      output for ``landmarks="dlib"``).
    * ``matrix``: ``3x3`` float64, maps crop pixel coordinates ``(x, y, 1)`` to frame
      coordinates, pixel centres at whole numbers in both: the crop's outer corners
      ``(-0.5, -0.5), (-0.5, S-0.5), (S-0.5, S-0.5), (S-0.5, -0.5)`` land on the FFHQ quad's
      corners ``c-x-y, c-x+y, c+x+y, c+x-y`` (up to the pre-shrink's rounding, which pSp has too:
      well under 1 crop pixel). It is where the crop's pixels were sampled, so
      :func:`sdk.faces.paste_back` puts them back exactly there.
    * ``landmarks``: ``(N, 2)`` float64, the landmarks used, in frame coordinates.
    * ``score``: the detector's confidence (see :class:`Landmarks`).
    * ``quad``: ``(4, 2)`` float64, the FFHQ quad ``c-x-y, c-x+y, c+x+y, c+x-y`` in frame
      coordinates, computed from ``source.anchors``.
    * ``source``: the :class:`Landmarks` the crop was built from.
    """

    image: np.ndarray
    matrix: np.ndarray
    landmarks: np.ndarray
    score: float
    quad: np.ndarray
    source: Landmarks = field(repr=False)

    @property
    def size(self) -> int:
        """The crop's side in pixels."""
        return int(self.image.shape[0])


class LandmarkBackend(abc.ABC):
    """A face detector with a landmark model: finds every face in an RGB frame.

    Back ends are small modules imported only when first named; a missing optional package
    raises :class:`sdk.errors.BackendError` naming the extra to install.
    """

    #: the name :func:`sdk.faces.get_backend` knows it by
    name: str = ""
    #: the licence of the model files it runs, as users must see it before choosing
    licence: str = ""

    @abc.abstractmethod
    def detect(self, image: np.ndarray) -> list[Landmarks]:
        """Every face in ``image`` (``HxWx3`` uint8 RGB, checked by the caller), best first.
        No face is an empty list."""

    def track(self, image: np.ndarray, previous: Landmarks) -> Landmarks | None:
        """The face near ``previous`` (found in the frame before) in ``image``, without running
        the detector: the landmark model on a region taken from ``previous``. ``None`` when the
        face is lost (the caller then detects again). The default always returns ``None``."""
        return None


def check_rgb_uint8(image, what: str = "image") -> np.ndarray:
    """``image`` as an ``HxWx3`` uint8 array (not copied), or :class:`InputError` naming what is
    wrong and the conversion to use."""
    arr = plain_array(image, what)
    if arr.dtype != np.uint8:
        raise InputError(
            f"{what} must be uint8 RGB (0..255); got dtype {arr.dtype}: convert it first, e.g. "
            f"sdk.imaging.as_rgb_uint8({what})"
        )
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(
            f"{what} must be HxWx3 RGB; got shape {list(arr.shape)} (gray or RGBA? sdk.imaging.as_rgb_uint8 "
            f"converts them; OpenCV's BGR frames: frame[..., ::-1])"
        )
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise InputError(f"{what} is {arr.shape[0]}x{arr.shape[1]} px; a face needs at least 8x8 px")
    check_image_side(arr.shape, what)
    return arr
