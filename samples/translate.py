#!/usr/bin/env python
"""Translate a photograph, a folder of images or a video file with a bundle.

    python samples/translate.py                                    # the quickstart comparison
    python samples/translate.py --input photo.jpg --align ffhq     # a comparison of its best face
    python samples/translate.py --input photos/ --align ffhq       # every image, faces pasted back
    python samples/translate.py --input clip.mp4 --align ffhq      # every frame: outputs/clip_translated.mp4

A photograph gives, by default, a labelled comparison image: low-resolution input | bicubic |
SDK N = 1 | SDK N = k (the bundle's iterations) | original, each panel with its PSNR against
the original (--no-compare: the result alone). Without --input the photograph is Grace Hopper
from matplotlib's sample data (pip install -e '.[demo]'; without it, a synthetic test card),
which the demo model never trained on. A folder (every image in it and below) or a video gives the results, with a progress bar.

What is translated:

* --align ffhq: every face (--which all) or the best (--which best) is FFHQ-aligned at the
  model's input size, as the public pSp/ReStyle/E2Style/OME face models were trained, with
  --landmarks dlib (exact; its landmark model is for non-commercial use) or mediapipe (fast,
  Apache-2.0); the translations are pasted back into the photograph or frame. A comparison
  shows the best face, and the photograph with its result pasted back. Needs the 'faces'
  extras (see sdk/faces).
* --align none: the image as the Translator takes it (resized to the model's input); the
  result is the model's output. A comparison takes the centred square (the default
  photograph: the square around the face).
* --align auto (default): ffhq when the bundle's manifest says its model expects FFHQ-aligned
  input, else none.

Super-resolution: the input is the original downsampled --factor times (default: the bundle's
factor), as the model was trained; the comparison's first panel shows that input.

Results go under outputs/ (ignored by git) unless --output says otherwise: outputs/NAME_comparison.png
(a photograph; outputs/quickstart_comparison.png without --input), outputs/NAME/ (a folder: the same relative paths, as PNG), outputs/NAME_translated.mp4
(a video). Exits 2 with one line on stderr when the bundle, an input or the output cannot be used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from samples.video_io import SampleError, run_cli
from sdk import SdkError, Translator
from sdk.imaging import as_rgb_uint8

log = logging.getLogger("translate")
OUTPUTS = Path("outputs")
DEFAULT_PHOTO = "grace_hopper"
# the default photograph's face as an axis-aligned square (centre x, y, side, px): its FFHQ quad
# with dlib's landmarks is 327 px, centred at (265, 200), turned by 2 degrees
DEFAULT_FACE = (265.0, 200.0, 327.0)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="engines/demo", help="bundle folder (default engines/demo)")
    p.add_argument(
        "--input", type=Path, help="a photograph, a folder of images or a video file (default: Grace Hopper)"
    )
    p.add_argument(
        "--output", type=Path, help="the file (photograph, video) or folder to write (default: under outputs/)"
    )
    p.add_argument("--align", choices=("auto", "ffhq", "none"), default="auto", help="face alignment (default auto)")
    p.add_argument(
        "--landmarks", choices=("dlib", "mediapipe"), default="dlib", help="landmark back end (default dlib)"
    )
    p.add_argument("--which", choices=("all", "best"), default="all", help="with --align ffhq: every face or the best")
    p.add_argument("--no-compare", dest="compare", action="store_false", help="a photograph: the result alone")
    p.add_argument("--iterations", type=int, help="refinement iterations (default: the bundle's)")
    p.add_argument("--factor", type=int, help="super-resolution factor (default: the bundle's)")
    p.add_argument("--detect-every", type=int, default=5, metavar="K", help="video: detect faces every K frames")
    p.add_argument("--panel-size", type=int, default=192, help="comparison panel side, px (default 192)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | onnxruntime-cuda | tensorrt")
    p.add_argument("-v", "--verbose", action="store_true", help="log the SDK's messages too")
    args = p.parse_args(argv)
    for name in ("iterations", "factor", "detect_every", "panel_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    return args


def main(argv=None) -> int:
    """0: written; 2: bad input (a bundle, an image or an output path it cannot use), said in one line."""
    written = run_cli(run, parse_args(argv), log)
    if written is None:
        return 2
    print(f"wrote {written}")
    return 0


def run(args: argparse.Namespace) -> Path:
    kind = input_kind(args.input)
    output = output_path(args.input, kind, args.output, args.compare)
    with Translator(args.bundle, backend=args.backend) as t:
        job = Job(t, args)
        if kind == "folder":
            job.folder(args.input, output)
        elif kind == "video":
            job.video(args.input, output)
        else:
            image = default_photo() if args.input is None else as_rgb_uint8(args.input)
            save_image(job.comparison(image, args.input is None) if args.compare else job.translate(image), output)
    return output


def input_kind(path: Path | None) -> str:
    """photo, folder or video; :class:`SampleError` for a path that is none of them."""
    if path is None:
        return "photo"
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise SampleError(f"no such file or folder: {str(path)!r} (give a photograph, a folder of images or a video)")
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "photo"


def output_path(source: Path | None, kind: str, output: Path | None, compare: bool) -> Path:
    """The default under outputs/, or ``output``; refuses one that would overwrite the input."""
    name = "quickstart" if source is None else source.stem or source.resolve().name
    if output is None:
        suffix = {"folder": "", "video": "_translated.mp4"}.get(
            kind, "_comparison.png" if compare else "_translated.png"
        )
        output = OUTPUTS / f"{name}{suffix}"
    if source is not None:
        src, out = source.resolve(), output.resolve()
        if out == src or (kind == "folder" and src in out.parents):
            raise SampleError(f"--output {str(output)!r} would write into the input: choose another path")
    if kind == "folder" and output.exists() and not output.is_dir():
        raise SampleError(f"--output {str(output)!r} is a file; a folder input needs an output folder")
    return output


def default_photo() -> np.ndarray:
    """Grace Hopper's photograph, or (matplotlib not installed) a synthetic test card, said in a warning."""
    import importlib.util

    from samples.clips import shipped_photo

    if importlib.util.find_spec("matplotlib") is None:
        log.warning(
            "the default photograph ships with matplotlib (pip install -e '.[demo]'): a synthetic test card instead"
        )
        return test_card()
    return shipped_photo(DEFAULT_PHOTO)


def test_card(size: int = 256) -> np.ndarray:
    """A smooth colour gradient with a face-like disc and two eyes: HxWx3 uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 1 - (xx + yy) / 2], axis=-1)
    img[(xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08] = (0.9, 0.75, 0.6)
    img[(np.abs(xx - 0.4) < 0.03) & (np.abs(yy - 0.4) < 0.03)] = 0.1
    img[(np.abs(xx - 0.6) < 0.03) & (np.abs(yy - 0.4) < 0.03)] = 0.1
    return (img * 255).astype(np.uint8)


class Job:
    """One bundle's work on images: the result, or the comparison, with or without alignment."""

    def __init__(self, t: Translator, args: argparse.Namespace):
        self.t, self.args = t, args
        expected = t.manifest.input_alignment
        self.align = args.align == "ffhq" or (args.align == "auto" and expected == "ffhq")
        self.options = {}
        self.without_face = 0  # aligned images or frames in which no face was found
        if t.manifest.task == "super_resolution" and args.factor is not None:
            self.options["factor"] = args.factor
        elif args.factor is not None:
            raise SampleError(f"--factor applies to super-resolution bundles; this bundle's task is {t.manifest.task}")
        if self.align:
            import sdk.faces  # noqa: F401  (the faces extra, or one line naming it)

    def translate(self, image: np.ndarray, faces=None) -> np.ndarray:
        """The result: the frame with its faces pasted back (aligned), or the model's output."""
        if not self.align:
            return self.t(image, iterations=self.args.iterations, **self.options)
        from sdk.faces.translate import translate_faces_timed

        a = self.args
        result = translate_faces_timed(self.t, image, a.landmarks, a.which, faces, a.iterations, **self.options)
        self.without_face += not result.faces
        return result.frame

    def comparison(self, image: np.ndarray, default: bool) -> np.ndarray:
        from samples.comparison import comparison_panels, render

        t, size = self.t, self.t.output_size
        pasted = None
        if self.align:
            from sdk.faces import align_face, face_from_landmarks

            face = align_face(image, t.manifest.input_size, self.args.landmarks)
            if face is None:
                raise SampleError(f"no face found by {self.args.landmarks}: try --align none")
            crop, reference = face.image, face_from_landmarks(image, face.source, size).image
        else:
            crop = square(image, DEFAULT_FACE if default else None)
            reference = resized(crop, size)
        panels = comparison_panels(t, crop, reference, self.args.iterations, self.options.get("factor"))
        if self.align:
            from samples.comparison import Panel
            from sdk.faces import paste_back

            pasted = Panel("pasted back", paste_back(image, face, panels[-2].image))
            panels.append(pasted)
        return render(panels, self.args.panel_size, footer(t, self.options.get("factor"), self.align))

    def report_faces(self, count: int, what: str) -> None:
        if self.align and self.without_face:
            log.warning("%d of %d %s had no face (written unchanged)", self.without_face, count, what)

    def folder(self, root: Path, output: Path) -> None:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SampleError(f"no images in {str(root)!r} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        failed = []
        for path in progress(files, "images"):
            try:
                result = self.translate(as_rgb_uint8(path))
            except SdkError as e:  # an unreadable file is reported; the others are still written
                log.warning("skipped %s: %s", path, " ".join(str(e).split()))
                failed.append(path)
                continue
            save_image(result, output / path.relative_to(root).with_suffix(".png"))
        self.report_faces(len(files) - len(failed), "images")
        if failed:
            raise SampleError(f"{len(failed)} of {len(files)} images could not be read (see the warnings above)")

    def video(self, source: Path, output: Path) -> None:
        from samples.video_io import import_cv2, open_source, open_writer

        cv2 = import_cv2()
        src = open_source(cv2, str(source))
        tracker = None
        if self.align:
            from sdk.faces.video import FaceVideo

            tracker = FaceVideo(
                self.t.manifest.input_size,
                self.args.landmarks,
                self.args.detect_every,
                max_faces=1 if self.args.which == "best" else 16,
            )
        writer, fps, written = None, src.fps or 30.0, 0
        try:
            # every frame until the stream ends: a container's frame count is only the progress bar's guess
            for index in progress(range(sys.maxsize), "frames", total=src.frame_count or None):
                ok, bgr = src.capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                faces = None if tracker is None else tracker.update(rgb, index / fps)
                result = self.translate(rgb, faces)
                if writer is None:
                    writer = open_writer(cv2, output, fps, (result.shape[1], result.shape[0]))
                writer.write(cv2.cvtColor(result, cv2.COLOR_RGB2BGR))
                written += 1
        finally:
            src.capture.release()
            if writer is not None:
                writer.release()
        if writer is None:
            raise SampleError(f"OpenCV decoded no frame of {str(source)!r}")
        self.report_faces(written, "frames")


def square(image: np.ndarray, box: tuple[float, float, float] | None = None) -> np.ndarray:
    """The square ``box`` = (centre x, centre y, side), moved inside the image, or the centred one."""
    h, w = image.shape[:2]
    cx, cy, side = box or (w / 2.0, h / 2.0, float(min(h, w)))
    side = int(round(min(side, h, w)))
    x0 = int(round(min(max(cx - side / 2.0, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0), h - side)))
    return np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])


def resized(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def footer(t: Translator, factor: int | None, aligned: bool) -> str:
    m = t.manifest
    parts = [f"bundle {m.name} ({m.task}, {m.input_size} px in, {m.output_size} px out)"]
    if m.task == "super_resolution":
        f = int(m.task_options.get("factor", 4)) if factor is None else factor
        parts.append(f"input: the original downsampled x{f}, as the model was trained")
    parts.append("N: refinement passes; PSNR against the original")
    if aligned:
        parts.append("FFHQ-aligned face")
    return " | ".join(parts)


def progress(items, unit: str, total: int | None = None):
    """``items`` with a progress bar on stderr (tqdm, from the samples extra), or as they are."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, unit=unit.rstrip("s"), total=total if total is not None else _len(items), leave=False)


def _len(items) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


def save_image(rgb: np.ndarray, output: Path) -> None:
    """Write an HxWx3 uint8 RGB image (the format from the suffix), making its folder."""
    try:
        from PIL import Image
    except ImportError:
        raise SampleError("writing images needs Pillow: python -m pip install pillow") from None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(output)
    except (OSError, ValueError) as e:  # a missing folder, no permission, a full disk, an unknown extension
        raise SampleError(f"cannot write {str(output)!r}: {getattr(e, 'strerror', None) or e}") from None


if __name__ == "__main__":
    sys.exit(main())
