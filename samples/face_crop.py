"""Where to crop: the Haar face detector that ships with OpenCV, a smoothed square box, the crop.

The model sees a square crop; a box that jumps by a few pixels between frames makes the output
flicker and undoes a warm start (the previous frame's codes describe a shifted image), so the
box is smoothed with an exponential moving average, and snapped only when the face really
moved (a cut, or a new face).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from samples.video_io import SampleError

CASCADE = "haarcascade_frontalface_default.xml"
MIN_FACE = 24  # px at the detection width: smaller faces are not searched for (each smaller scale costs more)
LOST_AFTER = 30  # detections missed in a row (about a second of video) before the box returns to the centre
JUMP = 0.5  # a detection whose centre moved by more than this fraction of the box side is a new face


@dataclass(frozen=True)
class Box:
    """A square: centre (cx, cy) and side, in frame pixels (floats: smoothing is sub-pixel)."""

    cx: float
    cy: float
    side: float

    def blend(self, other: Box, weight: float) -> Box:
        """``weight`` of ``other`` plus ``1 - weight`` of this box."""
        return Box(
            *(a + weight * (b - a) for a, b in zip((self.cx, self.cy, self.side), (other.cx, other.cy, other.side)))
        )

    def moved_from(self, other: Box) -> bool:
        shift = np.hypot(self.cx - other.cx, self.cy - other.cy)
        ratio = max(self.side, other.side) / max(min(self.side, other.side), 1e-6)
        return shift > JUMP * other.side or ratio > 1.0 + JUMP


def centre_box(width: int, height: int) -> Box:
    """The largest centred square of a frame (``--no-face``)."""
    return Box(width / 2.0, height / 2.0, float(min(width, height)))


class FaceTracker:
    """The most confident frontal face per frame, as a smoothed square box with ``margin`` added
    each side.

    Detection runs on a gray copy downscaled to ``detect_width`` px: the cascade's cost grows
    with the pixels searched (at 160 px a 640 px webcam frame takes about a sixteenth of the
    time), and faces of at least ``MIN_FACE`` px there (15 % of the width) are still found.
    When no face is found the last box is kept (a missed detection, a turned head); after
    :data:`LOST_AFTER` misses in a row the face is taken as gone and the centre square is used,
    as before the first face.
    """

    def __init__(self, cv2, margin: float = 0.5, smoothing: float = 0.3, detect_width: int = 160):
        if not (margin >= 0 and math.isfinite(margin) and 0 < smoothing <= 1 and detect_width >= 64):  # NaN fails
            raise SampleError(
                f"need margin >= 0, 0 < smoothing <= 1, detect width >= 64; got {margin}, {smoothing}, {detect_width}"
            )
        path = cv2.data.haarcascades + CASCADE
        self._detector = cv2.CascadeClassifier(path)
        if self._detector.empty():
            raise SampleError(f"cannot load OpenCV's face detector from {path}: reinstall opencv-python(-headless)")
        self._cv2, self.margin, self.smoothing, self.detect_width = cv2, margin, smoothing, detect_width
        self.box: Box | None = None
        self.jumped = False  # the box snapped to a new place on the last update (a warm start is stale)
        self.found = False  # the last update detected a face
        self._misses = 0

    def detect(self, rgb: np.ndarray) -> Box | None:
        """The most confident face of an HxWx3 RGB frame as a square box with margin, or ``None``."""
        cv2 = self._cv2
        h, w = rgb.shape[:2]
        scale = min(1.0, self.detect_width / w)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)  # webcam exposure varies; the cascade was trained on normalised faces
        faces, _, weights = self._detector.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE), outputRejectLevels=True
        )
        if len(faces) == 0:
            return None
        # the most confident detection (the cascade's final-stage score): the largest is often a
        # false positive on clothing or background texture
        x, y, fw, fh = faces[int(np.argmax(np.ravel(weights)))] / scale
        return Box(x + fw / 2.0, y + fh / 2.0, max(fw, fh) * (1.0 + 2.0 * self.margin))

    def update(self, rgb: np.ndarray) -> Box:
        found = self.detect(rgb)
        previous = self.box
        self.found = found is not None
        self.jumped = False
        self._misses = 0 if self.found else self._misses + 1
        if found is None:
            centre = centre_box(rgb.shape[1], rgb.shape[0])
            lost = previous is None or (self._misses >= LOST_AFTER and previous != centre)
            self.box = centre if lost else previous
            self.jumped = lost and previous is not None
        elif previous is None or found.moved_from(previous):
            self.box, self.jumped = found, previous is not None
        else:
            self.box = previous.blend(found, self.smoothing)
        return self.box


def crop_square(cv2, rgb: np.ndarray, box: Box, size: int | None = None) -> np.ndarray:
    """The box's pixels (edges replicated where it leaves the frame), resized to ``size`` px
    (area filter when shrinking, bicubic when enlarging); ``size=None``: the box's own size."""
    side = max(int(round(box.side)), 2)
    patch = cv2.getRectSubPix(rgb, (side, side), (box.cx, box.cy))
    if size is None or size == side:
        return patch
    interp = cv2.INTER_AREA if size < side else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)
