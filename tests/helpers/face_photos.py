"""Real face photographs that ship in packages, and transformed versions of them, for the
sdk.faces tests: matplotlib's ``grace_hopper.jpg`` and a face crop of scikit-image's
``astronaut()``; rotated (+15, -25 degrees), scaled (0.5x), offset and flipped."""

from __future__ import annotations

import functools

import cv2
import numpy as np


@functools.cache
def grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


@functools.cache
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def astronaut_face() -> np.ndarray:
    """The astronaut's head and shoulders (300 x 300 px), without the mission patch."""
    return np.ascontiguousarray(astronaut()[0:300, 80:380])


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    """``image`` rotated about its centre (counter-clockwise on screen), on a canvas large enough
    to keep it whole, the corners filled by reflection (no black wedge for a detector to see)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
    m[:, 2] += ((nw - w) / 2, (nh - h) / 2)
    return cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)


def offset(image: np.ndarray, dx: int = 97, dy: int = 41) -> np.ndarray:
    """``image`` on a larger gray canvas, ``dx`` px from the left and ``dy`` px from the top."""
    h, w = image.shape[:2]
    out = np.full((h + dy + 23, w + dx + 31, 3), 118, np.uint8)
    out[dy : dy + h, dx : dx + w] = image
    return out


def flipped(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


PHOTOS = {"grace_hopper": grace_hopper, "astronaut_face": astronaut_face}
VARIANTS = {
    "original": lambda im: im,
    "rotated+15": lambda im: rotated(im, 15),
    "rotated-25": lambda im: rotated(im, -25),
    "scaled0.5": lambda im: scaled(im, 0.5),
    "offset": offset,
    "flipped": flipped,
}
CASES = [(p, v) for p in PHOTOS for v in VARIANTS]


@functools.cache
def photo(name: str, variant: str) -> np.ndarray:
    image = VARIANTS[variant](PHOTOS[name]())
    image.flags.writeable = False
    return image
