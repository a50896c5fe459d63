#!/usr/bin/env python
"""Live face super-resolution from a webcam or a video file, with the SDK's refinement loop.

    python samples/webcam_sr.py --source 0                            # camera 0, window
    python samples/webcam_sr.py --source outputs/clip.mp4 --headless --output outputs/out.mp4
    python samples/webcam_sr.py --source 0 --align ffhq --landmarks mediapipe    # face models: align, paste back
    python samples/webcam_sr.py --source 0 --warm-start 1                  # N = 5 cold, 1 warm

Each frame: find the most confident face (OpenCV's Haar cascade, on a downscaled gray copy; the box is
smoothed between frames) or, with --no-face, take the centre square; make it low resolution;
run the loop; show three panels side by side — the low-resolution input (nearest neighbour),
bicubic upsampling of the same input, and the SDK result — over a bar with the FPS and each
stage's milliseconds (cap = capture/decode, det = face detection, pre = crop and
pre-processing, sdk = the loop, post = composite, txt = overlay, out = display or write).

Face models (--align ffhq [--landmarks mediapipe|dlib]): the best face is FFHQ-aligned at the
model's input size as the public pSp/ReStyle/E2Style/OME face models were trained (sdk.faces;
the detector runs every --detect-every frames, default 5, the landmark model tracks the face in
between, and the four alignment points are smoothed with a One Euro filter: --min-cutoff,
--beta), translated, and pasted back into the frame; two panels show the input frame and the
pasted-back frame (aln = the crop's resampling, paste = the warp back). dlib's landmark model is
for non-commercial use only; mediapipe's is Apache-2.0. Needs the faces extras (sdk/faces).

Low resolution: --factor F (F > 1) simulates it — the crop is taken at the model's input size
and downsampled by F by the task's pre-processing, as the model was trained (default: the
bundle's factor); the overlay says "xF: downsampled Fx". --factor 1 does not downsample: the
crop at its own size is resized to the model's input ("x1: as captured"), which is low
resolution only if the face really is small or distant. Inversion bundles take the crop as it is.

Video: --warm-start [N] starts each frame's loop from the previous frame's codes and runs N
iterations (default --iterations); a frame starts from the average again when the face box
jumps and every --warm-refresh K frames (default 4), because the codes of an encoder trained
on the first steps from the average drift when it keeps running (the demo model's do: see
docs/webcam_sample.md). --early-exit T stops a frame's loop once the mean absolute latent
change of a step falls below T (OME Eq. 16), the frame's iterations being the cap.

Frames are read in their own thread: from a camera the newest frame is always taken (a slow
frame never stalls the camera; frames in between are dropped); from a file every frame is
processed, so --output has the input's frame count. The output video is --panel-size * 3 wide
and --panel-size + 40 high (mp4v). Press q or Esc in the window to stop.

Needs OpenCV 4 (pip install -e '.[samples]': opencv-python-headless, enough for --headless).
For the window install opencv-python instead of the headless wheel.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from samples.face_crop import FaceTracker, centre_box, crop_square
from samples.frame_stats import FrameStats, Summary
from samples.sr_pipeline import Compositor, LowResolution, SideBySide, VideoLoop, result_image, status_lines
from samples.video_io import (
    FrameGrabber,
    import_cv2,
    open_source,
    open_writer,
    require_window_support,
    run_cli,
)
from sdk import Translator

log = logging.getLogger("webcam_sr")
WINDOW = "webcam_sr: input | bicubic | SDK (q to quit)"
CAMERA_OUTPUT_FPS = 15.0  # a camera's --output is written at this rate (the loop's, not the camera's)
REPORT_EVERY_S = 5.0  # headless camera runs log a status line this often
# --warm-start without N: warm frames run --iterations too (not a str: argparse would pass it through int())
WARM_AS_COLD = ("--iterations",)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="0", help="camera index (0, 1, ...) or a video file (default 0)")
    p.add_argument("--bundle", default="engines/demo", help="bundle folder (default engines/demo)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | onnxruntime-cuda | tensorrt")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU inference threads (default 1: at 64 px the demo's graphs gain nothing from a second "
        "thread, and capture and face detection need the other core; raise it for larger models)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        help="refinement iterations per frame, the cap with --early-exit (default: the bundle's)",
    )
    p.add_argument(
        "--warm-start",
        type=int,
        nargs="?",
        const=WARM_AS_COLD,
        metavar="N",
        help="start each frame from the previous frame's codes and run N iterations (default: "
        "--iterations); frames that start from the average run --iterations",
    )
    p.add_argument(
        "--warm-refresh",
        type=int,
        default=4,
        metavar="K",
        help="with --warm-start, every K-th frame starts from the average again, which bounds the "
        "drift of the codes (default 4; 0: never)",
    )
    p.add_argument(
        "--early-exit",
        type=float,
        metavar="T",
        help="stop a frame's loop once the mean absolute latent change of a step is below T (the "
        "frame's iterations are the cap)",
    )
    p.add_argument(
        "--factor",
        type=int,
        help="F > 1: simulate F-times low resolution; 1: the input is really low "
        "resolution (default: the bundle's factor)",
    )
    p.add_argument("--no-face", action="store_true", help="use the centre square of the frame, no face detection")
    p.add_argument(
        "--align",
        choices=("none", "ffhq"),
        default="none",
        help="ffhq: FFHQ-align the best face (face models), paste the result back (default none: Haar box)",
    )
    p.add_argument(
        "--landmarks",
        choices=("mediapipe", "dlib"),
        default="mediapipe",
        help="with --align ffhq: mediapipe (fast, Apache-2.0; default) or dlib (pSp's own, non-commercial model)",
    )
    p.add_argument(
        "--min-cutoff",
        type=float,
        default=1.0,
        metavar="HZ",
        help="with --align ffhq: the One Euro filter's cutoff at rest; lower = steadier, more lag (default 1)",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=1.0,
        help="with --align ffhq: how fast the cutoff rises with the face's speed (face sizes per second); "
        "higher = less lag on motion (default 1)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.5,
        help="face box margin each side, as a fraction of the detected face size (default 0.5: the crop is 2x the box)",
    )
    p.add_argument(
        "--smoothing",
        type=float,
        default=0.3,
        help="weight of a new detection in the box's moving average, 0..1 (1 = no smoothing; default 0.3)",
    )
    p.add_argument(
        "--detect-width",
        type=int,
        default=160,
        metavar="PX",
        help="detect faces on a copy this wide (default 160: faces of at least 15%% of the frame width; "
        "raise it for small, distant faces, at a cost in time)",
    )
    p.add_argument(
        "--detect-every",
        type=int,
        metavar="K",
        help="run the face detector on every K-th frame, keep the box (--align ffhq: track the landmarks) "
        "in between (default 1; 5 with --align ffhq)",
    )
    p.add_argument("--panel-size", type=int, default=256, help="side of each of the three panels, px (default 256)")
    p.add_argument("--headless", action="store_true", help="no window: write --output and/or print statistics")
    p.add_argument("--output", type=Path, help="write the side-by-side video here (.mp4, mp4v)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (default: the whole stream)")
    p.add_argument("-v", "--verbose", action="store_true", help="log the SDK's messages too")
    args = p.parse_args(argv)
    for name in ("iterations", "threads", "max_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    if args.detect_every is None:
        args.detect_every = 5 if args.align == "ffhq" else 1
    if args.detect_every < 1:
        p.error(f"--detect-every must be at least 1; got {args.detect_every}")
    if args.align == "ffhq" and args.no_face:
        p.error("--align ffhq finds faces; it cannot be combined with --no-face")
    if isinstance(args.warm_start, int) and args.warm_start < 1:
        p.error(f"--warm-start N must be at least 1; got {args.warm_start}")
    if args.warm_refresh < 0:
        p.error(f"--warm-refresh must be 0 (never) or more; got {args.warm_refresh}")
    if args.early_exit is not None and not args.early_exit > 0:
        p.error(f"--early-exit must be a positive latent change; got {args.early_exit}")
    return args


def main(argv=None) -> int:
    summary = run_cli(run, parse_args(argv), log)
    if summary is None:
        return 2
    for line in summary.lines():
        print(line)
    return 0


class FramePipeline:
    """One frame's work, timed stage by stage: box, crop and low resolution, the loop (warm
    started from the previous frame where asked), the composite and its overlay."""

    def __init__(self, cv2, t: Translator, args: argparse.Namespace, stats: FrameStats):
        self.cv2, self.t, self.args, self.stats = cv2, t, args, stats
        self.low_res = LowResolution(t, args.factor)
        self.compositor: Compositor | SideBySide = Compositor(cv2, t.output_size, args.panel_size)
        self.size = self.compositor.size
        self.tracker = None if args.no_face else FaceTracker(cv2, args.margin, args.smoothing, args.detect_width)
        warm = args.warm_start is not None
        warm_iterations = None if args.warm_start == WARM_AS_COLD else args.warm_start
        self.loop = VideoLoop(t, args.iterations, warm, warm_iterations, args.warm_refresh, args.early_exit)
        refresh = f"/{args.warm_refresh}" if warm and args.warm_refresh else ""
        self.mode = " ".join(
            filter(
                None,
                [
                    self.low_res.describe(),
                    f"warm{refresh}" if warm else "cold",
                    f"exit<{args.early_exit:g}" if args.early_exit else "",
                ],
            )
        )
        self._box = None
        # warm-up: the first call allocates the buffers; keep it out of the first frame's time
        blank = np.full((t.input_shape[1],) * 2 + (3,), 128, np.uint8)
        t.infer(self.low_res(blank).x[None], iterations=1)

    def process(self, frame) -> tuple[np.ndarray, int, bool | None]:
        """An RGB composite of ``frame``, the iterations the loop ran, and whether a face was
        found (None: no detector)."""
        cv2, args, stats = self.cv2, self.args, self.stats
        stats.add("capture", frame.decode_ms)
        jumped = False
        with stats.stage("detect"):
            image = frame.image
            if self.tracker is None:
                self._box = centre_box(image.shape[1], image.shape[0])
            elif self._box is None or frame.index % args.detect_every == 0:
                self._box = self.tracker.update(image)
                jumped = self.tracker.jumped
        with stats.stage("preprocess"):
            inp = self.low_res(crop_square(cv2, image, self._box, self.low_res.crop_size))
        with stats.stage("sdk"):
            # after a jump (a new face, a cut) the previous codes are a worse start than the average
            result = self.loop(inp.x[None], restart=jumped)
        with stats.stage("compose"):
            canvas = self.compositor.compose(inp.low_res, result_image(self.t, result.images))
        with stats.stage("overlay"):
            labels = (f"input ({self.low_res.describe()})", "bicubic", f"SDK N={result.iterations}")
            self.compositor.overlay(canvas, labels, status_lines(stats, result.iterations, self.mode))
        return canvas, result.iterations, None if self.tracker is None else self.tracker.found


class AlignedPipeline(FramePipeline):
    """``--align ffhq``: the best face FFHQ-aligned (detected every ``--detect-every`` frames,
    tracked between, its anchors smoothed), made low resolution, translated, pasted back; the
    composite is the input frame beside the pasted-back frame."""

    def __init__(self, cv2, t: Translator, args: argparse.Namespace, stats: FrameStats, source):
        from sdk.faces import paste_back
        from sdk.faces.video import FaceVideo

        super().__init__(cv2, t, args, stats)
        self.compositor = SideBySide(cv2, source.size, args.panel_size)
        self.size = self.compositor.size
        self.tracker = None
        self.faces = FaceVideo(
            t.manifest.input_size, args.landmarks, args.detect_every, min_cutoff=args.min_cutoff, beta=args.beta
        )
        self._paste, self._fps, self._lost = paste_back, source.fps or CAMERA_OUTPUT_FPS, True
        self.mode = f"ffhq {args.landmarks} " + self.mode

    def process(self, frame) -> tuple[np.ndarray, int, bool | None]:
        stats, image = self.stats, frame.image
        stats.add("capture", frame.decode_ms)
        faces = self.faces.update(image, frame.index / self._fps)
        stats.add("detect", self.faces.last_ms["detect"])
        stats.add("align", self.faces.last_ms["align"])
        iterations, pasted = 0, image
        if faces:
            with stats.stage("preprocess"):
                inp = self.low_res(faces[0].image)
            with stats.stage("sdk"):
                # a new face or a frame after one without: the previous codes are a worse start than the average
                result = self.loop(inp.x[None], restart=self._lost or self.faces.jumped[0])
            with stats.stage("paste"):
                pasted = self._paste(image, faces[0], result_image(self.t, result.images))
            iterations = result.iterations
        self._lost = not faces
        with stats.stage("compose"):
            canvas = self.compositor.compose(image, pasted)
        with stats.stage("overlay"):
            found = f"SDK N={iterations}, pasted back" if faces else "no face: frame as it is"
            labels = ("input frame", found)  # what the model saw (the factor) is on the status line
            self.compositor.overlay(canvas, labels, status_lines(stats, iterations, self.mode))
        return canvas, iterations, bool(faces)


def run(args: argparse.Namespace) -> Summary:
    cv2 = import_cv2()
    cv2.setNumThreads(1)  # OpenCV's own pool would compete with ONNX Runtime's threads for the cores
    if not args.headless:
        require_window_support(cv2)
    source = open_source(cv2, args.source)  # first: a wrong source fails before the model loads
    grabber = FrameGrabber(cv2, source, args.max_frames)
    writer = progress = pipeline = None
    stats = FrameStats()
    try:
        with Translator(args.bundle, backend=args.backend, threads=args.threads) as t:
            if args.align == "ffhq":
                pipeline = AlignedPipeline(cv2, t, args, stats, source)
            else:
                pipeline = FramePipeline(cv2, t, args, stats)
            if args.output is not None:
                writer = open_writer(cv2, args.output, source.fps or CAMERA_OUTPUT_FPS, pipeline.size)
            progress = _progress(args, source)
            grabber.start()
            _frames(cv2, args, pipeline, grabber, writer, progress)
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        grabber.stop()
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.release()
        if not args.headless:
            cv2.destroyAllWindows()
    summary = stats.summary(grabber.dropped)
    if args.output is not None and pipeline is not None:
        log.info("wrote %s (%d frames, %dx%d)", args.output, summary.frames, *pipeline.size)
    return summary


def _frames(cv2, args: argparse.Namespace, pipeline: FramePipeline, grabber: FrameGrabber, writer, progress) -> None:
    """Process frames until the stream ends or the user closes the window."""
    stats, last_report = pipeline.stats, time.perf_counter()
    while (frame := grabber.get()) is not None:
        canvas, iterations, face = pipeline.process(frame)
        with stats.stage("output"):
            bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
            if writer is not None:
                writer.write(bgr)
            if not args.headless and not _show(cv2, bgr):
                return
        stats.end_frame(iterations, face)
        if progress is not None:
            progress.update(1)
        elif args.headless and time.perf_counter() - last_report > REPORT_EVERY_S:
            last_report = time.perf_counter()
            log.info(
                "%d frames, %.1f FPS, %s", stats.frames, stats.fps, status_lines(stats, iterations, pipeline.mode)[1]
            )


def _show(cv2, bgr) -> bool:
    """Show a frame; False once the user pressed q or Esc or closed the window."""
    cv2.imshow(WINDOW, bgr)
    if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27):
        return False
    return cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1


def _progress(args: argparse.Namespace, source):
    """A progress bar for a headless run over a file (its length is known); none otherwise."""
    if not args.headless or source.is_camera:
        return None
    from tqdm import tqdm

    total = min(source.frame_count or 0, args.max_frames or sys.maxsize) or None
    return tqdm(total=total, unit="frame", desc=Path(source.name).name, leave=False)


if __name__ == "__main__":
    sys.exit(main())
