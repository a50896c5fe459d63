"""Faces frame after frame: full detection every ``detect_every`` frames, the back end's cheap
tracking in between, and the four FFHQ anchors smoothed with a One Euro filter
(:mod:`sdk.faces.smoothing`) before each crop is resampled.

::

    from sdk.faces.video import FaceVideo
    video = FaceVideo(size=256, landmarks="mediapipe", detect_every=5)
    for i, frame in enumerate(frames):            # HxWx3 uint8 RGB
        faces = video.update(frame, t=i / fps)    # aligned, smoothed faces, best first
        video.last_ms                             # {"detect": ..., "align": ...} this frame

Tracking: between detections each face is followed with :meth:`LandmarkBackend.track` (the
landmark model on a region taken from the previous frame's landmarks, no detector). A back end
without tracking, a lost face, or a tracked face that moved or changed size by more than
``reset_distance`` face sizes in one frame (a tracker drifting off the face) makes this frame a
detection frame. On a detection frame a
found face continues the track (and its filter) whose anchors are nearest, if they are within
``reset_distance`` face sizes; otherwise it starts a new track. Tracks no detection continues
end. ``jumped`` lists, per face returned, whether its filter restarted on this frame (a new
face, a cut): a warm-started translation should start cold then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..checks import check_int
from .align import face_from_landmarks
from .backends import get_backend
from .smoothing import OneEuroFilter, face_scale
from .types import Face, LandmarkBackend, Landmarks, check_rgb_uint8


@dataclass
class _Track:
    landmarks: Landmarks  # as found (unsmoothed): the next frame's tracking starts from these
    filter: OneEuroFilter
    fresh: bool = True  # the filter restarted on the last update
    anchors: np.ndarray = field(default_factory=lambda: np.zeros((4, 2)))  # smoothed


class FaceVideo:
    """Aligned faces of a video stream (see the module docstring).

    * ``size``: the side of the aligned crops (the model's input size).
    * ``landmarks``: a back-end name (``"mediapipe"``, the fast one; ``"dlib"``, exact but about
      30 ms a frame more and with no tracking) or a :class:`LandmarkBackend`.
    * ``detect_every``: run the detector on every k-th frame (1: every frame), track between.
    * ``max_faces``: the most faces followed (the best ones of each detection).
    * ``smoothing``: False to crop at the raw landmarks; ``min_cutoff``, ``beta``,
      ``d_cutoff``, ``reset_distance``: the One Euro filter's parameters (Hz, face sizes per
      second; see :mod:`sdk.faces.smoothing`).
    """

    def __init__(
        self,
        size: int = 256,
        landmarks: str | LandmarkBackend = "mediapipe",
        detect_every: int = 5,
        max_faces: int = 1,
        smoothing: bool = True,
        min_cutoff: float = 1.0,
        beta: float = 1.0,
        d_cutoff: float = 1.0,
        reset_distance: float = 0.5,
    ):
        self.size = check_int(size, "size", 8, 4096)
        self.detect_every = check_int(detect_every, "detect_every", 1, 1 << 20)
        self.max_faces = check_int(max_faces, "max_faces", 1, 1 << 10)
        self.backend = get_backend(landmarks)
        self.smoothing = bool(smoothing)
        self._filter_options = dict(min_cutoff=min_cutoff, beta=beta, d_cutoff=d_cutoff, reset_distance=reset_distance)
        OneEuroFilter(**self._filter_options)  # checks the parameters now, not on the first face
        self.reset_distance = float(reset_distance)
        self._tracks: list[_Track] = []
        self._since_detect = 0
        self.frames = 0
        self.detected = False  # the last update ran the detector
        self.jumped: list[bool] = []  # per face returned by the last update: its track (re)started
        self.last_ms: dict[str, float] = {}

    def reset(self) -> None:
        """Forget every track (after a seek or a cut the caller knows of)."""
        self._tracks = []

    def update(self, frame, t: float | None = None) -> list[Face]:
        """The faces of ``frame`` (``HxWx3`` uint8 RGB), aligned at their smoothed anchors, best
        first; ``t``: the frame's time in seconds (default: the frame count / 30)."""
        frame = check_rgb_uint8(frame, "frame")
        t = self.frames / 30.0 if t is None else float(t)
        self.frames += 1
        start = time.perf_counter()
        due = not self._tracks or self._since_detect >= self.detect_every - 1
        tracked = [] if due else self._track(frame)
        self.detected = due or tracked is None
        if self.detected:
            self._match(self.backend.detect(frame)[: self.max_faces])
            self._since_detect = 0
        else:
            self._since_detect += 1
        for track in self._tracks:
            raw = track.landmarks.anchors
            track.anchors = track.filter.filter(raw, t) if self.smoothing else raw
            track.fresh = track.fresh or track.filter.jumped
        found = time.perf_counter()
        faces = [face_from_landmarks(frame, tr.landmarks.with_anchors(tr.anchors), self.size) for tr in self._tracks]
        self.jumped = [tr.fresh for tr in self._tracks]
        for track in self._tracks:
            track.fresh = False
        self.last_ms = {"detect": (found - start) * 1e3, "align": (time.perf_counter() - found) * 1e3}
        return faces

    def _track(self, frame: np.ndarray) -> list[Landmarks] | None:
        """Every track followed into ``frame``, or ``None`` when one is lost (detect again)."""
        followed = []
        for track in self._tracks:
            landmarks = self.backend.track(frame, track.landmarks)
            if landmarks is None or self._jumps(track.landmarks, landmarks):
                return None  # lost, or a tracker that drifted off the face: detect instead
            followed.append(landmarks)
        for track, landmarks in zip(self._tracks, followed):
            track.landmarks = landmarks
        return followed

    def _jumps(self, before: Landmarks, after: Landmarks) -> bool:
        """Whether a face moved or changed size by more than ``reset_distance`` face sizes in one frame."""
        scale, now = face_scale(before.anchors), face_scale(after.anchors)
        shift = float(np.hypot(*(after.anchors.mean(axis=0) - before.anchors.mean(axis=0))))
        return shift > self.reset_distance * scale or abs(now / scale - 1.0) > self.reset_distance

    def _match(self, found: list[Landmarks]) -> None:
        """Continue the nearest track of each detection (best first), or start one."""
        free = list(self._tracks)
        tracks = []
        for landmarks in found:
            centre, scale = landmarks.anchors.mean(axis=0), face_scale(landmarks.anchors)
            near = [(float(np.hypot(*(tr.landmarks.anchors.mean(axis=0) - centre))), i) for i, tr in enumerate(free)]
            near = [(d, i) for d, i in near if d <= self.reset_distance * scale]
            if near:
                track = free.pop(min(near)[1])
                track.landmarks = landmarks
            else:
                track = _Track(landmarks, OneEuroFilter(**self._filter_options))
            tracks.append(track)
        self._tracks = tracks
