"""A landmark back end that finds faces where the test put them: for the video, pipeline and
sample tests, without dlib or MediaPipe and in microseconds."""

from __future__ import annotations

import numpy as np

from sdk.faces import LandmarkBackend, Landmarks


def anchors_at(cx: float, cy: float, d: float) -> np.ndarray:
    """FFHQ anchors (eye left, eye right, mouth left, mouth right) of an upright face centred
    near (cx, cy) with eyes ``2 d`` apart."""
    return np.array(
        [[cx - d, cy - d / 2], [cx + d, cy - d / 2], [cx - 0.7 * d, cy + 1.3 * d], [cx + 0.7 * d, cy + 1.3 * d]]
    )


class FakeLandmarks(LandmarkBackend):
    """``faces``: a callable ``frame_number -> [(cx, cy, d, score), ...]`` or a fixed list.
    ``detect`` and ``track`` count their calls; ``track`` returns the face nearest the previous
    one on the current frame (``None`` when ``can_track`` is False or ``lose_on`` names the
    frame). ``frame`` is set by the test before each call (the fake does not read pixels)."""

    name = "fake"
    licence = "test double"

    def __init__(self, faces, can_track: bool = True, lose_on=(), jitter: float = 0.0, seed: int = 0):
        self.faces = faces if callable(faces) else (lambda _: faces)
        self.can_track, self.lose_on, self.jitter = can_track, set(lose_on), jitter
        self.rng = np.random.default_rng(seed)
        self.frame = 0
        self.detect_calls: list[int] = []
        self.track_calls: list[int] = []

    def _found(self) -> list[Landmarks]:
        found = []
        for cx, cy, d, score in self.faces(self.frame):
            anchors = anchors_at(cx, cy, d) + self.rng.normal(0.0, self.jitter, (4, 2))
            found.append(Landmarks(anchors, anchors, score, self.name))
        return sorted(found, key=lambda lm: -lm.score)

    def detect(self, image):
        self.detect_calls.append(self.frame)
        return self._found()

    def track(self, image, previous):
        self.track_calls.append(self.frame)
        if not self.can_track or self.frame in self.lose_on:
            return None
        found = self._found()
        if not found:
            return None
        centre = previous.anchors.mean(axis=0)
        return min(found, key=lambda lm: float(np.hypot(*(lm.anchors.mean(axis=0) - centre))))
