"""Video in and out for the webcam sample: opening a camera or a file, a capture thread, the
writer, and the check that OpenCV can open a window.

OpenCV comes in two wheels: ``opencv-python`` (with highgui windows; needs libGL, so its import
fails on many servers) and ``opencv-python-headless`` (no windows; what CI and ``--headless``
use). Both provide ``cv2``; :func:`require_window_support` tells them apart at run time.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sdk import SdkError

log = logging.getLogger(__name__)


class SampleError(Exception):
    """A problem with the sample's inputs or environment (camera, file, OpenCV build), with a
    message that says what to do."""


def import_cv2():
    """``cv2``, or :class:`SampleError` saying which wheel to install."""
    try:
        import cv2
    except ImportError as e:
        raise SampleError(
            f"OpenCV is not importable ({e}). Install it: python -m pip install -e '.[samples]' "
            f"(opencv-python-headless); for a window, opencv-python instead"
        ) from None
    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the Haar detector out of the main wheel
        raise SampleError(
            f"this OpenCV ({cv2.__version__}) has no CascadeClassifier; install OpenCV 4: "
            f"python -m pip install 'opencv-python-headless>=4.8,<5'"
        )
    return cv2


def require_window_support(cv2) -> None:
    """Fail clearly when no window can be shown: a headless OpenCV build, or no display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise SampleError(
            "no display (DISPLAY is not set): run with --headless (add --output outputs/out.mp4 to keep the video)"
        )
    try:
        cv2.namedWindow("probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("probe")
    except cv2.error as e:
        if "not implemented" not in str(e).lower():
            raise
        raise SampleError(
            "this OpenCV build has no window support (the opencv-python-headless wheel). For a window: "
            "python -m pip uninstall opencv-python-headless && python -m pip install 'opencv-python>=4.8,"
            "<5'; or run with --headless --output outputs/out.mp4"
        ) from None


@dataclass
class Frame:
    """One captured frame: ``image`` HxWx3 uint8 **RGB**, its index in the stream, and how long
    reading and decoding it took (in the capture thread)."""

    image: object
    index: int
    decode_ms: float


@dataclass
class Source:
    capture: object  # cv2.VideoCapture
    name: str
    is_camera: bool
    fps: float  # 0 when unknown
    frame_count: int  # 0 for cameras or when unknown
    size: tuple[int, int]  # (width, height)


def open_source(cv2, source: str) -> Source:
    """``source``: a camera index ("0") or a video file path."""
    is_camera = source.isdigit()
    if not is_camera and not Path(source).is_file():
        raise SampleError(f"no such video file: {source} (give a camera index such as 0, or an existing file)")
    cap = cv2.VideoCapture(int(source) if is_camera else source)
    if not cap.isOpened():
        cap.release()
        if is_camera:
            raise SampleError(
                f"camera {source} cannot be opened: no such device, busy, or no permission "
                f"(try another index, or a video file)"
            )
        raise SampleError(f"OpenCV cannot decode {source} (unsupported container or codec)")
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = 0 if is_camera else max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    return Source(cap, source, is_camera, fps if 0 < fps < 1000 else 0.0, count, size)


class FrameGrabber(threading.Thread):
    """Reads frames in its own thread so the camera is drained at its own pace.

    Camera: a queue of one frame; a new frame replaces one not yet taken (the consumer always
    gets the newest, and a slow model never makes the camera buffer stale frames). File:
    every frame is delivered (the reader waits for room), so the output has the input's
    frame count. ``None`` in the queue marks the end of the stream.
    """

    def __init__(self, cv2, source: Source, max_frames: int | None = None):
        super().__init__(name="frame-grabber", daemon=True)
        self._cv2, self._source, self._max = cv2, source, max_frames
        self._queue: queue.Queue = queue.Queue(maxsize=1 if source.is_camera else 4)
        self._stop_event = threading.Event()
        self.dropped = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        index = 0
        try:
            while not self._stop_event.is_set() and (self._max is None or index < self._max):
                start = time.perf_counter()
                ok, bgr = self._source.capture.read()
                if not ok:
                    break
                rgb = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
                self._put(Frame(rgb, index, (time.perf_counter() - start) * 1e3))
                index += 1
        except BaseException as e:  # surfaced to the consumer by get()
            self.error = e
        finally:
            self._put(None)

    def _put(self, item) -> None:
        if self._source.is_camera:
            while True:  # replace a stale frame rather than wait for the consumer
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1  # the frame taken out was never processed
                    except queue.Empty:
                        pass
        while not self._stop_event.is_set():  # a file: wait for room, never drop
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, timeout: float = 10.0) -> Frame | None:
        """The next frame, or ``None`` at the end of the stream."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise SampleError(f"no frame from {self._source.name} for {timeout:.0f} s (camera disconnected?)") from None
        if item is None and self.error is not None:
            raise SampleError(f"reading {self._source.name} failed: {self.error}") from self.error
        return item

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=2.0)
        if not self.is_alive():  # never release a capture another thread is still reading
            self._source.capture.release()


def open_writer(cv2, path: Path, fps: float, size: tuple[int, int]):
    """An MPEG-4 (``mp4v``) writer of ``size`` = (width, height) frames, BGR."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise SampleError(
            f"cannot write {path}: OpenCV has no mp4v encoder for it (use a .mp4 path, or check the folder is writable)"
        )
    return writer


def write_video(cv2, path: Path, frames, fps: float = 25.0) -> int:
    """Write HxWx3 uint8 RGB frames (an iterable of equal-size arrays) to ``path``; returns the count."""
    writer, n = None, 0
    try:
        for rgb in frames:
            if writer is None:
                writer = open_writer(cv2, path, fps, (rgb.shape[1], rgb.shape[0]))
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            n += 1
    finally:
        if writer is not None:
            writer.release()
    return n


def run_cli(run, args, log: logging.Logger):
    """Run a sample's work with its logging set up: ``run(args)``'s result, or None after one
    error line (bad input, or a bundle that cannot run it) for the caller to exit 2 with, as every
    CLI of the SDK does. ``args.verbose`` shows the SDK's INFO messages too."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    try:
        return run(args)
    except (SampleError, SdkError) as e:
        log.error("%s", " ".join(str(e).split()))  # one line
        return None
