#!/usr/bin/env python
"""Test clips for the webcam sample and samples/measure_modes.py, made from photographs that ship
inside Python packages (no video or face dataset can be downloaded on the project's machines).

    python samples/clips.py                                     # outputs/clip.mp4: 640x480, 3 photographs x 60 frames
    python samples/clips.py --size 320x240 --frames-per-photo 30 --photos grace_hopper --output outputs/c.mp4

A "camera" moves over each photograph: a slow pan (a Lissajous path of a fifth of the window)
and zoom (up to 20 %), at sub-pixel positions, centred on the face OpenCV's Haar detector finds
(the centre when there is none), then cuts to the next photograph. Photographs: scikit-image's
``skimage.data`` images by name (astronaut, camera, coffee, chelsea, ...), ``grace_hopper``
(matplotlib's sample data), or an image file path; ``pip install -e '.[demo]'`` installs both
packages.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from samples.face_crop import Box, FaceTracker, centre_box
from samples.video_io import SampleError, import_cv2, write_video
from sdk.errors import InputError
from sdk.imaging import as_rgb_uint8

DEFAULT_PHOTOS = ("grace_hopper", "astronaut", "chelsea")
PAN = 0.2  # pan amplitude, fraction of the window
ZOOM = 0.2  # the window shrinks by up to this fraction


def shipped_photo(name: str) -> np.ndarray:
    """HxWx3 uint8 RGB: a ``skimage.data`` image, ``grace_hopper``, or an image file."""
    if Path(name).suffix and Path(name).is_file():
        try:  # the SDK's reader: any mode, 16-bit scaled; a truncated or corrupt file named in one line
            return as_rgb_uint8(name)
        except InputError as e:
            raise SampleError(str(e)) from None
    try:
        if name == "grace_hopper":
            import matplotlib.cbook
            from PIL import Image

            with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
                return np.asarray(im.convert("RGB"))
        import skimage.data
    except ImportError as e:
        raise SampleError(
            f"photograph {name!r} comes with scikit-image or matplotlib ({e}); python -m pip install -e '.[demo]'"
        ) from None
    loader = getattr(skimage.data, name, None)
    if loader is None or name.startswith("_"):
        raise SampleError(
            f"no photograph {name!r}: give a skimage.data image name (astronaut, coffee, chelsea, "
            f"camera, ...), grace_hopper, or an image file"
        )
    image = np.asarray(loader())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise SampleError(f"skimage.data.{name} is not an 8-bit colour or gray photograph")
    return np.ascontiguousarray(image[:, :, :3])


def subject(cv2, photo: np.ndarray, margin: float = 0.5) -> Box:
    """The square the webcam sample would crop: the most confident face with margin, else the centre."""
    face = FaceTracker(cv2, margin=margin).detect(photo)
    if face is not None:
        return face
    box = centre_box(photo.shape[1], photo.shape[0])
    return Box(box.cx, box.cy, box.side * 0.8)


@dataclass
class Shot:
    """One photograph and the window path over it."""

    photo: np.ndarray
    box: Box  # the subject's square, the window's height at zoom 1

    def window(self, t: float, extent: float) -> Box:
        """The window at time ``t`` in [0, 1): height ``extent`` x the box side at zoom 1.
        ``Box.side`` holds the window height here; the width follows the frame's aspect."""
        cx = self.box.cx + PAN * self.box.side * extent * 0.5 * math.sin(2 * math.pi * t)
        cy = self.box.cy + PAN * self.box.side * extent * 0.25 * math.sin(4 * math.pi * t)
        zoom = 1.0 - ZOOM * 0.5 * (1.0 - math.cos(2 * math.pi * t))
        return Box(cx, cy, self.box.side * extent * zoom)


def render(cv2, photo: np.ndarray, window: Box, size: tuple[int, int]) -> np.ndarray:
    """The window (``side`` = its height, centred, aspect of ``size``) resampled to ``size`` =
    (width, height) px: an affine warp at sub-pixel position, after a Gaussian blur as wide as
    the downscale so the result does not alias (a camera's optics do the same)."""
    width, height = size
    window = _inside(window, photo.shape, width / height)
    scale = height / window.side  # output px per photo px
    src = photo
    if scale < 1.0:
        sigma = 0.5 / scale
        src = cv2.GaussianBlur(photo, (0, 0), sigmaX=sigma, sigmaY=sigma)
    matrix = np.array(
        [[scale, 0.0, width / 2.0 - scale * window.cx], [0.0, scale, height / 2.0 - scale * window.cy]], np.float64
    )
    return cv2.warpAffine(src, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)


def _inside(window: Box, shape, aspect: float) -> Box:
    """The window shrunk and shifted to lie inside the photograph (no mirrored borders)."""
    h, w = shape[:2]
    side = min(window.side, h, w / aspect)
    half_w, half_h = side * aspect / 2.0, side / 2.0
    return Box(min(max(window.cx, half_w), w - half_w), min(max(window.cy, half_h), h - half_h), side)


def photo_clip(cv2, photos, frames_per_photo: int, size: tuple[int, int], extent: float = 1.0):
    """Frames (HxWx3 uint8 RGB) of a camera moving over each photograph in turn, and the index
    of each shot's first frame. ``extent``: window height over the subject's square (1: the
    face crop itself; about 2: a webcam view with the face in it)."""
    frames, starts = [], []
    for name in photos:
        image = shipped_photo(name) if isinstance(name, str) else np.asarray(name)
        shot = Shot(image, subject(cv2, image))
        starts.append(len(frames))
        frames += [render(cv2, image, shot.window(i / frames_per_photo, extent), size) for i in range(frames_per_photo)]
    return frames, starts


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 640x480; got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size must be even and at least 16x16; got {text!r}")
    return w, h


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--output",
        type=Path,
        default=Path("outputs/clip.mp4"),
        help="the clip to write (.mp4, mp4v; default outputs/clip.mp4, a folder git ignores)",
    )
    p.add_argument(
        "--photos",
        default=",".join(DEFAULT_PHOTOS),
        help=f"comma-separated photographs (default {','.join(DEFAULT_PHOTOS)})",
    )
    p.add_argument("--frames-per-photo", type=int, default=60, help="frames per photograph (default 60)")
    p.add_argument("--size", type=parse_size, default=(640, 480), help="frame size WIDTHxHEIGHT (default 640x480)")
    p.add_argument(
        "--extent",
        type=float,
        default=2.0,
        help="window height over the face crop's side (default 2: the face crop is half the frame "
        "height; the window is kept inside the photograph)",
    )
    p.add_argument("--fps", type=float, default=30.0, help="frame rate written into the file (default 30)")
    args = p.parse_args(argv)
    if args.frames_per_photo < 1 or not 0 < args.extent < math.inf:  # NaN fails too
        p.error("--frames-per-photo must be >= 1 and --extent > 0")
    try:
        cv2 = import_cv2()
        frames, _ = photo_clip(cv2, args.photos.split(","), args.frames_per_photo, args.size, args.extent)
        n = write_video(cv2, args.output, frames, args.fps)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {n} frames of {args.size[0]}x{args.size[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
