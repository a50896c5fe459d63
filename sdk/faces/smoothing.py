"""Landmark smoothing across video frames: the One Euro filter (Casiez, Roussel and Vogel, "1€
Filter: A Simple Speed-based Low-pass Filter for Noisy Input in Interactive Systems", CHI 2012).

A landmark detector run frame by frame jitters by a pixel or two even on a still face; the FFHQ
crop follows the landmarks, so the crop and the translated face shimmer. A fixed low-pass filter
would remove the jitter but make a moving face lag behind. The One Euro filter is a first-order
low-pass whose cutoff frequency rises with the signal's speed:

    cutoff = min_cutoff + beta * |speed|
    alpha  = 1 / (1 + 1 / (2 * pi * cutoff * dt))
    x_hat  = alpha * x + (1 - alpha) * x_hat_previous

where ``speed`` is itself low-passed at ``d_cutoff`` Hz. At rest the cutoff is ``min_cutoff``
(strong smoothing: jitter removed); when the face moves the cutoff rises and the lag disappears.

Parameters (frame-rate independent, since the filter uses the time between frames):

* ``min_cutoff`` (Hz, > 0): the cutoff at rest. Lower removes more jitter and lags more on slow
  motion. Default 1.0 Hz.
* ``beta`` (>= 0): how fast the cutoff rises with speed. Speed is measured in **face sizes per
  second** here (the landmarks' spread), so the same value works for a small distant face and
  a close one. Higher follows fast motion with less lag, and lets more jitter through while
  moving. Default 1.0 (the cutoff doubles at one face size per second above its rest value).
* ``d_cutoff`` (Hz, > 0): the cutoff of the speed estimate. Default 1.0 Hz, the paper's value.

A jump (a new face, a cut: the landmarks' centre moved by more than ``reset_distance`` face
sizes since the last frame, or their spread changed by more than that fraction) restarts the
filter from the new landmarks instead of sliding towards them.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """The smoothing factor of a first-order low-pass with ``cutoff`` Hz sampled every ``dt`` s."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
    return 1.0 / (1.0 + tau / dt)


def face_scale(points: np.ndarray) -> float:
    """A face's size in pixels from its landmarks: the root-mean-square distance to their mean
    (1 for fewer than two distinct points, so speeds stay finite)."""
    centred = points - points.mean(axis=0)
    return max(float(np.sqrt((centred**2).sum(axis=1).mean())), 1.0)


class OneEuroFilter:
    """Smooths an ``[N, 2]`` array of landmark positions (pixels) frame after frame.

    ``filter(points, t)`` returns the smoothed ``[N, 2]`` float64 positions; ``t`` is the frame
    time in seconds (strictly increasing; a camera's clock or ``index / fps`` of a file).
    Each point's cutoff follows its own speed. :meth:`reset` forgets the history (the next
    call returns its input). See the module docstring for the parameters.
    """

    def __init__(
        self,
        min_cutoff: float = 1.0,
        beta: float = 1.0,
        d_cutoff: float = 1.0,
        reset_distance: float = 0.5,
    ):
        for name, value, lo in (("min_cutoff", min_cutoff, 0.0), ("d_cutoff", d_cutoff, 0.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > lo):
                raise InputError(f"{name} must be a positive frequency in Hz; got {value!r}")
        for name, value in (("beta", beta), ("reset_distance", reset_distance)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0; got {value!r}")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset_distance = float(reset_distance)
        self._x: np.ndarray | None = None  # the last smoothed positions
        self._dx: np.ndarray | None = None  # the last smoothed speed, face sizes per second
        self._t: float | None = None
        self.jumped = False  # the last call restarted the filter (a new face or a cut)

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def filter(self, points, t: float) -> np.ndarray:
        x = np.asarray(points, np.float64)
        if x.ndim != 2 or x.shape[1] != 2 or len(x) == 0 or not np.isfinite(x).all():
            raise InputError(f"landmarks must be a finite [N, 2] array of pixel positions; got shape {x.shape}")
        if not math.isfinite(t):
            raise InputError(f"frame time must be a finite number of seconds; got {t!r}")
        self.jumped = self._x is not None and (self._x.shape != x.shape or self._is_jump(x))
        if self._x is None or self._dx is None or self._t is None or self.jumped or t <= self._t:
            # first frame, a jump, or a clock that did not advance (a repeated frame): start here
            self._x, self._dx, self._t = x.copy(), np.zeros(len(x)), t
            return x.copy()
        dt = t - self._t
        scale = face_scale(x)
        speed = np.hypot(*((x - self._x) / dt).T) / scale  # per point, face sizes per second
        a_d = _alpha(self.d_cutoff, dt)
        self._dx = a_d * speed + (1.0 - a_d) * self._dx
        a = _alpha(self.min_cutoff + self.beta * self._dx, dt)[:, None]
        self._x = a * x + (1.0 - a) * self._x
        self._t = t
        return self._x.copy()

    def _is_jump(self, x: np.ndarray) -> bool:
        assert self._x is not None
        before, now = face_scale(self._x), face_scale(x)
        shift = float(np.hypot(*(x.mean(axis=0) - self._x.mean(axis=0))))
        return shift > self.reset_distance * before or abs(now / before - 1.0) > self.reset_distance
