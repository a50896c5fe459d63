"""Photographs that ship inside Python packages, as training and evaluation crops for the demo
model (export/demo/train.py, benchmarks/demo_quality.py).

No dataset can be downloaded on the project's machines, so the demo trains on the sample
images of scikit-image and matplotlib (``pip install scikit-image matplotlib``, the ``demo``
extra). Two faces (astronaut, camera) and textures/objects for detail; three photographs,
a face among them, are held out and never trained on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdk.tasks import simulate_low_resolution

# (package, file) pairs; the weight is how often a crop comes from the image
TRAIN_IMAGES = {
    ("skimage", "astronaut.png"): 3.0,  # a face: the sample's domain
    ("skimage", "camera.png"): 2.0,  # a face and a tripod, gray
    ("skimage", "rocket.jpg"): 1.0,
    ("skimage", "motorcycle_left.png"): 1.0,
    ("skimage", "color.png"): 0.5,
    ("skimage", "coins.png"): 1.0,
    ("skimage", "brick.png"): 0.5,
    ("skimage", "grass.png"): 0.5,
    ("skimage", "gravel.png"): 0.5,
    ("skimage", "moon.png"): 0.5,
    ("skimage", "hubble_deep_field.jpg"): 0.5,
    ("skimage", "ihc.png"): 0.5,
    ("skimage", "retina.jpg"): 0.5,
}
HELD_OUT = {("matplotlib", "grace_hopper.jpg"): 1.0, ("skimage", "coffee.png"): 1.0, ("skimage", "chelsea.png"): 1.0}
PYRAMID_RATIO = 0.75  # crops come from the image at scales 1, 0.75, 0.56, ... (short side >= 80 px)


class MissingPhotographs(RuntimeError):
    """The packages that ship the photographs are not installed."""


def photograph_path(package: str, name: str) -> Path:
    if importlib.util.find_spec(package) is None:
        raise MissingPhotographs(
            f"the demo's photographs come with {package}; pip install -e '.[demo]' (scikit-image, matplotlib)"
        )
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def load_photographs(names) -> list[tuple[np.ndarray, float]]:
    """``[(HxWx3 uint8 RGB, weight)]`` for ``{(package, file): weight}``."""
    out = []
    for (package, name), weight in dict(names).items():
        with Image.open(photograph_path(package, name)) as im:
            out.append((np.asarray(im.convert("RGB")), float(weight)))
    return out


class CropSampler:
    """Random ``size`` x ``size`` crops at random scales, flipped and colour-jittered.

    ``batch`` returns [B, 3, size, size] float32 in [-1, 1] (the high-resolution targets);
    ``low_resolution`` makes the model input from them with the SDK's own pre-processing.
    """

    def __init__(
        self, photographs: list[tuple[np.ndarray, float]], size: int, rng: np.random.Generator, jitter: bool = True
    ):
        self.size, self.rng, self.jitter = size, rng, jitter
        self.levels: list[np.ndarray] = []  # [3, H, W] float32 in [0, 1]
        weights = []
        for rgb, weight in photographs:
            image = Image.fromarray(rgb)
            scale, levels = 1.0, []
            while min(image.size) * scale >= max(80, size):
                w, h = (round(image.size[0] * scale), round(image.size[1] * scale))
                levels.append(
                    np.asarray(image.resize((w, h), Image.LANCZOS), dtype=np.float32).transpose(2, 0, 1) / 255
                )
                scale *= PYRAMID_RATIO
            self.levels += levels
            weights += [weight / len(levels)] * len(levels)
        self.p = np.asarray(weights) / np.sum(weights)

    def crop(self, shift: int = 0) -> np.ndarray:
        """One crop, [3, S, S] in [0, 1]; with ``shift`` > 0 a pair [2, 3, S, S]: the crop and a
        neighbouring video frame (the same view moved by up to ``shift`` px each way)."""
        level = self.levels[self.rng.choice(len(self.levels), p=self.p)]
        _, h, w = level.shape
        s, pad = self.size, min(shift, (min(h, w) - self.size) // 2)
        top, left = self.rng.integers(pad, h - s - pad + 1), self.rng.integers(pad, w - s - pad + 1)
        dy, dx = self.rng.integers(-pad, pad + 1, size=2) if pad else (0, 0)
        c = np.stack(
            [level[:, top : top + s, left : left + s], level[:, top + dy : top + dy + s, left + dx : left + dx + s]]
        )
        if self.rng.random() < 0.5:
            c = c[..., ::-1]
        if self.jitter:  # one camera: the same colour change for both frames
            gray = c.mean(axis=1, keepdims=True)
            c = gray + (c - gray) * self.rng.uniform(0.7, 1.3)  # saturation
            c = c.mean() + (c - c.mean()) * self.rng.uniform(0.8, 1.2)  # contrast
            c = c * self.rng.uniform(0.8, 1.2)  # brightness
        # the targets are 8-bit images, as every input the SDK sees
        c = np.round(np.clip(c, 0.0, 1.0) * 255) / 255
        return c if shift else c[0]

    def batch(self, n: int) -> torch.Tensor:
        crops = np.stack([self.crop() for _ in range(n)]).astype(np.float32)
        return torch.from_numpy(crops * 2 - 1)

    def pairs(self, n: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames, neighbouring frames), each [n, 3, S, S] in [-1, 1]: video-like pairs."""
        crops = np.stack([self.crop(shift) for _ in range(n)]).astype(np.float32) * 2 - 1
        return torch.from_numpy(crops[:, 0]), torch.from_numpy(crops[:, 1])

    @staticmethod
    def low_resolution(hr: torch.Tensor, factor: int) -> torch.Tensor:
        """pSp's super-resolution input for each image of ``hr`` ([-1, 1]): downsampled by
        ``factor`` and resized back, by ``sdk.tasks.simulate_low_resolution``."""
        rgb01 = (hr.numpy() + 1) / 2
        low = np.stack([simulate_low_resolution(img, factor) for img in rgb01]).astype(np.float32)
        return torch.from_numpy(low * 2 - 1)
