#!/usr/bin/env python
"""Translate one image with a bundle and save the encoder input and the result side by side.

    python samples/translate.py --bundle engines/demo --input face.png --output out.png

Without --input a synthetic test card is used. Needs Pillow for PNG files (the SDK itself
needs only numpy and onnxruntime). Exits 2 with one line on stderr when the bundle, the image or
the output path cannot be used.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from sdk import SdkError, Translator
from sdk.imaging import as_rgb_uint8


def test_card(size: int = 256) -> np.ndarray:
    """A smooth colour gradient with a few shapes: HxWx3 uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 1 - (xx + yy) / 2], axis=-1)
    img[(xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08] = (0.9, 0.75, 0.6)
    img[(np.abs(xx - 0.4) < 0.03) & (np.abs(yy - 0.4) < 0.03)] = 0.1
    img[(np.abs(xx - 0.6) < 0.03) & (np.abs(yy - 0.4) < 0.03)] = 0.1
    return (img * 255).astype(np.uint8)


def main(argv=None) -> int:
    """0: written; 2: bad input (a bundle, an image or an output path it cannot use), said in one line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="engines/demo", help="bundle folder (default engines/demo)")
    p.add_argument("--input", type=Path, help="an image file (default: a synthetic test card)")
    p.add_argument("--output", type=Path, default=Path("out.png"), help="where to write the comparison PNG")
    p.add_argument("--iterations", type=int, help="refinement iterations (default: the bundle's)")
    p.add_argument("--factor", type=int, help="super-resolution factor (default: the bundle's)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | onnxruntime-cuda")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        try:
            from PIL import Image
        except ImportError:
            raise SampleError("writing the PNG needs Pillow: pip install pillow") from None
        image = as_rgb_uint8(args.input) if args.input else test_card()  # InputError for unreadable files
        with Translator(args.bundle, backend=args.backend) as t:
            options = {"factor": args.factor} if args.factor and t.manifest.task == "super_resolution" else {}
            t(image, iterations=args.iterations, **options)  # warm-up: first call allocates buffers
            start = time.perf_counter()
            result = t(image, iterations=args.iterations, **options)
            elapsed = time.perf_counter() - start
            x = t.preprocess(image, **options)
        save_comparison(Image, x, result, args.output)
    except (SdkError, SampleError) as e:
        logging.error("%s", " ".join(str(e).split()))  # one line
        return 2
    logging.info("translated in %.1f ms; wrote %s (encoder input | result)", elapsed * 1e3, args.output)
    return 0


class SampleError(Exception):
    """A problem of this script's own (Pillow missing, an output it cannot write)."""


def save_comparison(Image, x: np.ndarray, result: np.ndarray, output: Path) -> None:
    """The encoder input (its first three channels) and the result side by side, as a PNG."""
    size = result.shape[0]
    shown_input = Image.fromarray(np.round((x[:3].transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8))
    panels = [shown_input.resize((size, size), Image.NEAREST), Image.fromarray(result)]
    canvas = Image.new("RGB", (size * len(panels), size))
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * size, 0))
    try:
        canvas.save(output)
    except (OSError, ValueError) as e:  # a missing folder, no permission, a full disk, an unknown extension
        raise SampleError(f"cannot write {str(output)!r}: {getattr(e, 'strerror', None) or e}") from None


if __name__ == "__main__":
    sys.exit(main())
