"""Per-stage latency and frames per second for the webcam sample.

Each frame's stages are timed with :meth:`FrameStats.stage`; the window shows the FPS over the
last :data:`FPS_WINDOW` frames, the summary the mean over the run after the warm-up frames
(the first calls allocate buffers and fill caches, which says nothing about the steady state).
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

# (key, short label for the overlay): the order of a frame's work
STAGES = (
    ("capture", "cap"),
    ("detect", "det"),
    ("align", "aln"),  # --align ffhq: the FFHQ crop's resampling
    ("preprocess", "pre"),
    ("sdk", "sdk"),
    ("paste", "paste"),  # --align ffhq: the result warped back into the frame
    ("compose", "post"),
    ("overlay", "txt"),
    ("output", "out"),
)
FPS_WINDOW = 30


@dataclass
class Summary:
    frames: int
    fps: float  # mean over the frames after the warm-up (0 when there are none)
    stage_ms: dict  # stage -> median ms over the frames after the warm-up
    iterations: float  # mean refinement iterations per frame
    dropped: int = 0  # camera frames replaced before the model took them
    faces: int | None = None  # frames in which a face was found (None: not counted, no detector)

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items())
        lines = [
            f"frames: {self.frames} ({self.dropped} camera frames dropped while busy)"
            if self.dropped
            else f"frames: {self.frames}",
            f"FPS (mean after warm-up): {self.fps:.1f}",
            f"per-stage ms (median): {stages}",
            f"iterations per frame (mean): {self.iterations:.2f}",
        ]
        if self.faces is not None:
            lines.append(f"frames with a face: {self.faces}")
        return lines


class FrameStats:
    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self._current: dict = {}
        self._frames: list[dict] = []
        self._iterations: list[int] = []
        self._ends: deque = deque(maxlen=FPS_WINDOW + 1)
        self._steady_start: float | None = None
        self._last_end: float | None = None
        self.faces: int | None = None  # counted by end_frame(face=...) once a caller passes it

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1e3)

    def add(self, name: str, ms: float) -> None:
        self._current[name] = self._current.get(name, 0.0) + ms

    def current(self, name: str) -> float:
        """This frame's time so far in a stage (for the overlay, before the frame ends)."""
        return self._current.get(name, 0.0)

    def last(self, name: str) -> float:
        return self._frames[-1].get(name, 0.0) if self._frames else 0.0

    def recorded(self, name: str) -> bool:
        """Whether this frame or the last one timed stage ``name`` (the overlay shows those only)."""
        return name in self._current or bool(self._frames and name in self._frames[-1])

    def end_frame(self, iterations: int, face: bool | None = None) -> None:
        """Close the frame: ``iterations`` the loop ran, ``face`` whether one was found (None: no detector)."""
        now = time.perf_counter()
        if face is not None:
            self.faces = (self.faces or 0) + bool(face)
        self._frames.append(self._current)
        self._iterations.append(iterations)
        self._current = {}
        self._ends.append(now)
        if len(self._frames) == self.warmup:
            self._steady_start = now  # the FPS clock starts when the warm-up frames are done
        self._last_end = now

    @property
    def frames(self) -> int:
        return len(self._frames)

    @property
    def fps(self) -> float:
        """Frames per second over the last :data:`FPS_WINDOW` frames."""
        if len(self._ends) < 2:
            return 0.0
        return (len(self._ends) - 1) / max(self._ends[-1] - self._ends[0], 1e-9)

    def summary(self, dropped: int = 0) -> Summary:
        steady = self._frames[self.warmup :]
        fps = 0.0
        if steady and self._steady_start is not None and self._last_end > self._steady_start:
            fps = len(steady) / (self._last_end - self._steady_start)
        timed = [key for key, _ in STAGES if any(key in f for f in steady)]
        stage_ms = {key: float(np.median([f.get(key, 0.0) for f in steady])) for key in timed}
        iterations = float(np.mean(self._iterations)) if self._iterations else 0.0
        return Summary(len(self._frames), fps, stage_ms, iterations, dropped, self.faces)
