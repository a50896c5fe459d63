"""Carried loop states for the demo's training: truncated backprop through unbounded chains.

A warm start (``infer(init=previous result)``) runs the loop for as long as the video lasts, so
the encoder meets states hundreds of steps deep. Training on chains of at most a few steps
never shows it those states, and the codes drift. :class:`CarriedChains` keeps a share of each
batch as *tracks*: a view of a training photograph that persists across batches with the loop
state ``(z, y)`` the previous batch left for it. Each batch moves a track's view to the same or
a neighbouring frame (a shift of up to ``shift`` px each way, the same colour jitter and
factor throughout: one camera), continues from the carried state, and the caller trains one
step with gradients from there (the state itself is detached: truncated backprop through the
chain). A track ends at random (a geometric length of mean ``mean_length`` steps) or at
``max_chain`` steps, and a new one starts from the average latent ``z_0``.

:func:`warm_chain_psnr` scores the same on held-out photographs: PSNR of a warm start with one
step a frame after ``frames`` frames, against the cold N-step loop on the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from export.demo.data import CropSampler


@dataclass
class Track:
    """One carried view: where it looks, how it is coloured, and how long its chain is."""

    level: int  # index into CropSampler.levels
    top: int
    left: int
    flip: bool
    saturation: float
    contrast: float
    brightness: float
    factor: int  # super-resolution factor of this video
    length: int = 0  # steps the chain has run


class CarriedChains:
    """``slots`` tracks whose loop states carry across batches.

    ``frames(model)`` returns ``(hr, x, z, y)`` for the tracks' next frames: targets and inputs
    [slots, 3, S, S] in [-1, 1], states ``z`` [slots, M, D] and ``y`` [slots, 3, S, S] (detached).
    ``keep(z, y)`` stores the states the trained step produced for them. ``still`` is the share
    of frames that repeat the previous view (a still scene in a video).
    """

    def __init__(
        self,
        sampler: CropSampler,
        slots: int,
        rng: np.random.Generator,
        factors: dict[int, float],
        shift: int = 4,
        still: float = 0.3,
        mean_length: float = 50.0,
        max_chain: int = 300,
    ):
        if slots < 1 or mean_length < 1 or max_chain < 1:
            raise ValueError("slots, mean_length and max_chain must be positive")
        self.sampler, self.slots, self.rng = sampler, slots, rng
        self.factors = list(factors)
        weights = np.array(list(factors.values()), dtype=np.float64)
        self.p_factor = weights / weights.sum()
        self.shift, self.still, self.mean_length, self.max_chain = shift, still, mean_length, max_chain
        self.tracks: list[Track | None] = [None] * slots
        self.z: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def new_track(self) -> Track:
        s, rng = self.sampler, self.rng
        level = int(rng.choice(len(s.levels), p=s.p))
        _, h, w = s.levels[level].shape
        return Track(
            level=level,
            top=int(rng.integers(0, h - s.size + 1)),
            left=int(rng.integers(0, w - s.size + 1)),
            flip=bool(rng.random() < 0.5),
            saturation=float(rng.uniform(0.7, 1.3)) if s.jitter else 1.0,
            contrast=float(rng.uniform(0.8, 1.2)) if s.jitter else 1.0,
            brightness=float(rng.uniform(0.8, 1.2)) if s.jitter else 1.0,
            factor=int(rng.choice(self.factors, p=self.p_factor)),
        )

    def move(self, t: Track) -> None:
        """The next frame: the same view, or the view shifted by up to ``shift`` px (kept inside)."""
        if self.rng.random() < self.still or self.shift == 0:
            return
        _, h, w = self.sampler.levels[t.level].shape
        dy, dx = self.rng.integers(-self.shift, self.shift + 1, size=2)
        t.top = int(np.clip(t.top + dy, 0, h - self.sampler.size))
        t.left = int(np.clip(t.left + dx, 0, w - self.sampler.size))

    def render(self, t: Track) -> np.ndarray:
        """The track's frame, [3, S, S] in [0, 1], 8-bit values (as CropSampler.crop)."""
        s = self.sampler.size
        c = self.sampler.levels[t.level][:, t.top : t.top + s, t.left : t.left + s]
        if t.flip:
            c = c[..., ::-1]
        gray = c.mean(axis=0, keepdims=True)
        c = gray + (c - gray) * t.saturation
        c = c.mean() + (c - c.mean()) * t.contrast
        c = c * t.brightness
        return np.round(np.clip(c, 0.0, 1.0) * 255) / 255

    def frames(self, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z0, y0 = model.start(1)
        fresh = []
        for i, t in enumerate(self.tracks):
            ended = t is None or t.length >= self.max_chain or self.rng.random() < 1.0 / self.mean_length
            if ended:
                self.tracks[i] = self.new_track()
                fresh.append(i)
            else:
                assert t is not None
                self.move(t)
        tracks = [t for t in self.tracks if t is not None]
        hr = torch.from_numpy(np.stack([self.render(t) for t in tracks]).astype(np.float32) * 2 - 1)
        x = torch.cat([self.sampler.low_resolution(hr[i : i + 1], t.factor) for i, t in enumerate(tracks)])
        if self.z is None or self.y is None:
            z, y = z0.expand(self.slots, -1, -1).clone(), y0.expand(self.slots, -1, -1, -1).clone()
        else:
            z, y = self.z.clone(), self.y.clone()
            z[fresh], y[fresh] = z0, y0
        return hr, x, z.detach(), y.detach()

    def keep(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Store the trained step's states (detached) as the tracks' carried states."""
        self.z, self.y = z.detach().clone(), y.detach().clone()
        for t in self.tracks:
            if t is not None:
                t.length += 1

    def lengths(self) -> list[int]:
        return [t.length if t is not None else 0 for t in self.tracks]


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR per image of [B, 3, S, S] in [-1, 1] (peak-to-peak 2), after clipping ``a``."""
    mse = F.mse_loss(a.clamp(-1, 1), b, reduction="none").mean(dim=(1, 2, 3))
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def warm_chain_psnr(
    model, sampler: CropSampler, crops: int = 8, frames: int = 24, iterations: int = 5, factor: int = 4
) -> dict[str, float]:
    """Held-out video: ``crops`` tracks walk ``frames`` frames (``sampler``'s own seeded rng);
    returns the mean PSNR (dB, [-1, 1] images) over the last quarter of frames of the warm start
    (N = 1 a frame, the first frame cold ``iterations`` steps) and of cold N = ``iterations``."""
    chains = CarriedChains(
        sampler, crops, sampler.rng, {factor: 1.0}, mean_length=1e9, max_chain=frames + 1, still=0.3, shift=2
    )
    was_training = model.training
    model.eval()
    warm_scores, cold_scores = [], []
    with torch.no_grad():
        for frame in range(frames):
            hr, x, z, y = chains.frames(model)
            if frame == 0:
                for _ in range(iterations - 1):
                    z, y = model.step(x, z, y)
            z, y = model.step(x, z, y)
            chains.keep(z, y)
            if frame >= frames - max(1, frames // 4):
                warm_scores.append(psnr_per_image(y, hr).mean().item())
                cold_scores.append(psnr_per_image(model.run(x, iterations)[-1], hr).mean().item())
    model.train(was_training)
    return {"warm": float(np.mean(warm_scores)), "cold": float(np.mean(cold_scores))}
