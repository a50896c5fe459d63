"""Per-frame time of each landmark back end and of the alignment and paste-back steps on a
640x480 frame: ``python -m sdk.faces.timing [--image PATH] [--repeats N]``.

Without ``--image`` the frame is matplotlib's ``grace_hopper.jpg`` (the ``demo`` extra) scaled to
480 px high on a 640 x 480 gray canvas, a webcam-sized frame with one face. Prints one line per
stage: the median and the 10th-90th percentile in milliseconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np

from ..imaging import as_rgb_uint8
from .align import face_from_landmarks
from .backends import BACKENDS, get_backend
from .paste import paste_back


def webcam_frame(image: np.ndarray, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """``image`` scaled to fit ``size = (width, height)``, centred on a gray canvas."""
    w, h = size
    k = min(w / image.shape[1], h / image.shape[0])
    small = cv2.resize(image, (round(image.shape[1] * k), round(image.shape[0] * k)), interpolation=cv2.INTER_AREA)
    out = np.full((h, w, 3), 118, np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """``fn()`` once to warm up, then ``repeats`` times: (median, p10, p90) in ms."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return float(median), float(p10), float(p90)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="a photograph with a face (default: matplotlib's grace_hopper.jpg)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args(argv)
    if args.image:
        photo = as_rgb_uint8(args.image)
    else:
        from matplotlib import cbook

        photo = as_rgb_uint8(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    frame = webcam_frame(photo)
    print(f"frame {frame.shape[1]}x{frame.shape[0]}, cv2 threads {cv2.getNumThreads()}, {args.repeats} repeats")
    for name in args.backends.split(","):
        backend = get_backend(name)
        found = backend.detect(frame)
        if not found:
            print(f"{name}: no face found in the frame")
            continue
        rows: dict[str, Callable[[], object]] = {f"{name} detect": partial(backend.detect, frame)}
        if name == "dlib":  # pSp's upsample doubles the frame; without it small faces are missed
            from .dlib_landmarks import DlibLandmarks

            rows["dlib detect, upsample 0"] = partial(DlibLandmarks(upsample=0).detect, frame)
        if name == "mediapipe" and getattr(backend, "runtime", "") == "litert":  # the no-extra runtime too
            from .mediapipe_landmarks import MediapipeLandmarks

            on_ort = MediapipeLandmarks(runtime="onnxruntime")
            rows["mediapipe detect, onnxruntime"] = partial(on_ort.detect, frame)
            rows["mediapipe track, onnxruntime"] = partial(on_ort.track, frame, found[0])
        if backend.track(frame, found[0]) is not None:
            rows[f"{name} track"] = partial(backend.track, frame, found[0])
        face = face_from_landmarks(frame, found[0])
        rows["align 256 (pSp resampling)"] = partial(face_from_landmarks, frame, found[0])
        rows["paste_back 256"] = partial(paste_back, frame, face, face.image)
        rows["paste_back 1024"] = partial(paste_back, frame, face, cv2.resize(face.image, (1024, 1024)))
        for label, fn in rows.items():
            median, p10, p90 = timed(fn, args.repeats)
            print(f"{label:30s} {median:8.2f} ms  (p10 {p10:.2f}, p90 {p90:.2f})")


if __name__ == "__main__":
    main()
