#!/usr/bin/env python
"""Measure the loop's video modes: PSNR per frame against iterations per frame.

    python samples/measure_modes.py                           # engines/demo, both clips
    python samples/measure_modes.py --clips smooth --frames 24 --out /tmp/modes

Two clips, each frame's ground truth being the high-resolution frame at the model's output
size and its input the task's pre-processing at --factor (default: the bundle's):

* smooth: the bundle's own generator rendering interpolated codes. The loop's N = 5 codes of
  each photograph's subject crop (the first frame of its shot in the photo clip) are
  keyframes; the clip eases between them in W+ (smoothstep), --frames frames in all. Every
  ground-truth frame is exactly an image the generator can make, so the encoder and the loop
  alone limit the PSNR.
* photos: real video — a camera panning and zooming over photographs shipped with
  scikit-image and matplotlib (samples/clips.py), --frames-per-photo frames each, cut
  between photographs.

Modes: cold N = 1..5 from the average latent (one 5-step run per frame, each step scored);
warm start N = 1, 2, 3 (each frame's loop starts from the previous frame's result; a shot's
first frame runs --first-iterations from the average, counted in the mean); warm N = 1, 2
with a frame from the average every --refresh frames ("/4"); early exit at each --thresholds
value, cold and warm (with refresh), capped at 5. The default thresholds are the median
latent changes of the cold run's steps 2 and 3 on that clip, so that a typical frame stops
after about 3 or 4 steps. Bicubic upsampling of the low-resolution frame is the baseline.

PSNR: on uint8 images at the output size, peak 255; a frame's mean over pixels and channels.
The cold modes' loop time is the 5-step run's, shared out per step (it also reads every step
back); the other modes are timed per frame.
Writes results.json, results.md (the table) and modes.png (PSNR against iterations per frame,
and PSNR per frame) into --out (default benchmarks/results/video_modes, git-ignored).
Needs OpenCV, scikit-image and matplotlib: pip install -e '.[samples,demo]'.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from samples.clips import DEFAULT_PHOTOS, photo_clip
from samples.mode_report import plot_modes, write_table
from samples.sr_pipeline import LowResolution, VideoLoop, bicubic, result_image
from samples.video_io import SampleError, import_cv2
from sdk import SdkError, Translator
from sdk.extras import exit_for_missing_extra

try:
    from tqdm import tqdm
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "samples,demo", __name__)

log = logging.getLogger("measure_modes")
COLD_MAX = 5
EXIT_CAP = 5
WARM_N = (1, 2, 3)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Clip:
    name: str
    truth: list  # HxWx3 uint8 at the output size
    crops: list  # HxWx3 uint8 at the model's input size
    starts: list  # first frame of each shot (a warm start begins afresh there)


@dataclass
class ModeResult:
    mode: str
    kind: str  # "cold", "warm", "exit", "warm+exit", "bicubic"
    psnr: list = field(default_factory=list)  # per frame, dB
    iterations: list = field(default_factory=list)  # per frame
    ms: list = field(default_factory=list)  # per frame, the loop's time

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "kind": self.kind,
            "psnr_mean": float(np.mean(self.psnr)),
            "psnr_min": float(np.min(self.psnr)),
            "iterations_mean": float(np.mean(self.iterations)) if self.iterations else 0.0,
            "ms_mean": float(np.mean(self.ms)) if self.ms else 0.0,
        }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images, peak 255 (100 dB for identical images)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _resize(cv2, rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size:
        return rgb
    interp = cv2.INTER_AREA if size < rgb.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)


def make_photo_clip(cv2, t: Translator, photos, frames_per_photo: int) -> Clip:
    """Rendered once at the larger of the input and output sizes, then resized to each."""
    size = max(t.input_shape[1], t.output_size)
    frames, starts = photo_clip(cv2, photos, frames_per_photo, (size, size))
    return Clip(
        "photos",
        [_resize(cv2, f, t.output_size) for f in frames],
        [_resize(cv2, f, t.input_shape[1]) for f in frames],
        starts,
    )


def make_smooth_clip(cv2, t: Translator, low_res: LowResolution, keyframes: list, frames: int) -> Clip:
    """The generator along eased W+ paths between the codes of ``keyframes`` (input crops)."""
    codes = [t.infer(low_res(k).x[None], iterations=COLD_MAX).latents[0] for k in keyframes]
    if len(codes) < 2:
        raise SampleError("the smooth clip needs at least two keyframe photographs")
    path = []
    for i in range(frames):
        u = i / max(frames - 1, 1) * (len(codes) - 1)
        k = min(int(u), len(codes) - 2)
        s = u - k
        s = s * s * (3.0 - 2.0 * s)  # smoothstep: no velocity jump at the keyframes
        path.append((1.0 - s) * codes[k] + s * codes[k + 1])
    batch = t.manifest.batch_max
    truth = []
    for i in range(0, frames, batch):
        images = t.synthesise(np.stack(path[i : i + batch]).astype(np.float32))
        truth += [result_image(t, images[j : j + 1]) for j in range(images.shape[0])]
    return Clip("smooth", truth, [_resize(cv2, f, t.input_shape[1]) for f in truth], [0])


def run_modes(
    t: Translator,
    low_res: LowResolution,
    clip: Clip,
    cv2,
    thresholds,
    first_iterations: int,
    refresh: int = 4,
    progress: bool = True,
) -> list[ModeResult]:
    inputs = [low_res(c) for c in clip.crops]
    xs = [i.x[None] for i in inputs]
    results = [
        ModeResult(
            "bicubic",
            "bicubic",
            [psnr(bicubic(cv2, i.low_res, t.output_size), gt) for i, gt in zip(inputs, clip.truth)],
        )
    ]
    cold = [ModeResult(f"cold N={n}", "cold") for n in range(1, COLD_MAX + 1)]
    changes = []
    for x, gt in tqdm(list(zip(xs, clip.truth)), desc=f"{clip.name}: cold", disable=not progress, leave=False):
        start = time.perf_counter()
        # early_exit far below any change: never stops, but reports each step's latent change
        r = t.infer(x, iterations=COLD_MAX, return_steps=True, early_exit=1e-30)
        ms = (time.perf_counter() - start) * 1e3
        changes.append(r.latent_change)
        for n, step in enumerate(r.steps, 1):
            cold[n - 1].psnr.append(psnr(result_image(t, step.image), gt))
            cold[n - 1].iterations.append(n)
            cold[n - 1].ms.append(ms * n / COLD_MAX)  # the steps cost the same
    results += cold
    if thresholds is None:
        # steps 2 and 3, rounded as reported; one mode per distinct value
        thresholds = sorted({float(f"{np.median([c[k] for c in changes]):.3g}") for k in (1, 2)}, reverse=True)
    for spec in mode_specs(thresholds, refresh):
        results.append(run_video_mode(t, spec, xs, clip, first_iterations, progress))
    return results


@dataclass(frozen=True)
class ModeSpec:
    name: str
    kind: str
    iterations: int  # per warm frame (warm modes) or per frame (cold early exit: the cap)
    warm: bool
    refresh: int = 0
    early_exit: float | None = None


def mode_specs(thresholds, refresh: int) -> list[ModeSpec]:
    """Warm N without refresh (how far the codes carry on their own), warm N with a cold frame
    every ``refresh`` frames, and early exit, cold and warm."""
    every = f" /{refresh}" if refresh else ""
    specs = [ModeSpec(f"warm N={n}", "warm", n, True) for n in WARM_N]
    if refresh:
        specs += [ModeSpec(f"warm N={n}{every}", "warm+refresh", n, True, refresh) for n in WARM_N[:2]]
    specs += [ModeSpec(f"exit {th:.3g}", "exit", EXIT_CAP, False, 0, th) for th in thresholds]
    specs += [ModeSpec(f"warm+exit {th:.3g}{every}", "warm+exit", EXIT_CAP, True, refresh, th) for th in thresholds]
    return specs


def run_video_mode(
    t: Translator, spec: ModeSpec, xs: list, clip: Clip, first_iterations: int, progress: bool
) -> ModeResult:
    """One mode over the clip, frame by frame; a shot's first frame starts from the average
    (``first_iterations`` steps in warm modes, counted in the mean)."""
    cold_n = first_iterations if spec.warm else spec.iterations
    loop = VideoLoop(t, cold_n, spec.warm, spec.iterations, spec.refresh, spec.early_exit)
    mode, starts = ModeResult(spec.name, spec.kind), set(clip.starts)
    frames = list(zip(xs, clip.truth))
    for i, (x, gt) in enumerate(tqdm(frames, desc=f"{clip.name}: {spec.name}", disable=not progress, leave=False)):
        start = time.perf_counter()
        r = loop(x, restart=i in starts)
        mode.ms.append((time.perf_counter() - start) * 1e3)
        mode.psnr.append(psnr(result_image(t, r.images), gt))
        mode.iterations.append(r.iterations)
    return mode


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="engines/demo", help="an iterative bundle (default engines/demo)")
    p.add_argument("--clips", default="smooth,photos", help="smooth, photos or both (default smooth,photos)")
    p.add_argument("--frames", type=int, default=60, help="frames of the smooth clip (default 60)")
    p.add_argument("--frames-per-photo", type=int, default=30, help="frames per photograph (default 30)")
    p.add_argument(
        "--photos",
        default=",".join(DEFAULT_PHOTOS),
        help=f"photographs of the real clip, comma-separated (default {','.join(DEFAULT_PHOTOS)})",
    )
    p.add_argument("--factor", type=int, help="super-resolution factor (default: the bundle's)")
    p.add_argument(
        "--thresholds",
        help="early-exit thresholds, comma-separated (default: per clip, the median "
        "latent change of the cold run's steps 2 and 3)",
    )
    p.add_argument(
        "--first-iterations",
        type=int,
        default=COLD_MAX,
        help=f"iterations of a warm mode's first frame of a shot (default {COLD_MAX})",
    )
    p.add_argument(
        "--refresh",
        type=int,
        default=4,
        metavar="K",
        help="warm modes with refresh start every K-th frame from the average (default 4; 0: leave those modes out)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU inference threads (default 1, as the webcam sample)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "video_modes",
        help="results folder (default benchmarks/results/video_modes)",
    )
    args = p.parse_args(argv)
    args.clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    if not args.clips or set(args.clips) - {"smooth", "photos"}:
        p.error(f"--clips takes smooth and/or photos; got {args.clips}")
    try:
        args.thresholds = None if args.thresholds is None else [float(v) for v in args.thresholds.split(",")]
    except ValueError:
        p.error(f"--thresholds must be numbers separated by commas; got {args.thresholds!r}")
    if args.thresholds is not None and not all(v > 0 for v in args.thresholds):
        p.error("--thresholds must be positive")
    if args.refresh < 0:
        p.error(f"--refresh must be 0 or more; got {args.refresh}")
    if min(args.frames, args.frames_per_photo, args.first_iterations) < 1:
        p.error("--frames, --frames-per-photo and --first-iterations must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cv2 = import_cv2()
        cv2.setNumThreads(1)
        with Translator(args.bundle, backend="onnxruntime", threads=args.threads) as t:
            low_res = LowResolution(t, args.factor)
            if not low_res.simulated:
                raise SampleError(
                    "measuring needs a super-resolution bundle and a factor > 1 (the ground truth is "
                    "the frame before downsampling)"
                )
            photos = args.photos.split(",")
            clips = []
            if "smooth" in args.clips:
                keyframes = make_photo_clip(cv2, t, photos, 1).crops  # each photograph's subject, still
                clips.append(make_smooth_clip(cv2, t, low_res, keyframes, args.frames))
            if "photos" in args.clips:
                clips.append(make_photo_clip(cv2, t, photos, args.frames_per_photo))
            report = {
                "bundle": str(args.bundle),
                "factor": low_res.factor,
                "input_size": t.input_shape[1],
                "output_size": t.output_size,
                "threads": args.threads,
                "clips": {},
            }
            for clip in clips:
                results = run_modes(t, low_res, clip, cv2, args.thresholds, args.first_iterations, args.refresh)
                report["clips"][clip.name] = {
                    "frames": len(clip.truth),
                    "shots": len(clip.starts),
                    "summary": [r.summary() for r in results],
                    "per_frame": [asdict(r) for r in results],
                }
                log.info("%s: %d frames measured", clip.name, len(clip.truth))
    except (SampleError, SdkError) as e:
        log.error("%s", e)
        return 2  # bad input or a bundle that cannot run it, as every CLI of the SDK
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    table = write_table(report, args.out / "results.md")
    plot = plot_modes(report, args.out / "modes.png")
    print(table)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}" + (f", {plot}" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
