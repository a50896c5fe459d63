#!/usr/bin/env python
"""Translate one image with a bundle and save the encoder input and the result side by side.

    python samples/translate.py --bundle engines/demo --input face.png --output out.png

Without --input a synthetic test card is used. Needs Pillow for PNG files (the SDK itself
needs only numpy and onnxruntime).
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


def test_card(size: int = 256) -> np.ndarray:
    """A smooth colour gradient with a few shapes: HxWx3 uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 1 - (xx + yy) / 2], axis=-1)
    img[(xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08] = (0.9, 0.75, 0.6)
    img[(np.abs(xx - 0.4) < 0.03) & (np.abs(yy - 0.4) < 0.03)] = 0.1
    img[(np.abs(xx - 0.6) < 0.03) & (np.abs(yy - 0.4) < 0.03)] = 0.1
    return (img * 255).astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="engines/demo", help="bundle folder (default engines/demo)")
    p.add_argument("--input", type=Path, help="an RGB image file (default: a synthetic test card)")
    p.add_argument("--output", type=Path, default=Path("out.png"), help="where to write the comparison PNG")
    p.add_argument("--iterations", type=int, help="refinement iterations (default: the bundle's)")
    p.add_argument("--factor", type=int, help="super-resolution factor (default: the bundle's)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | onnxruntime-cuda")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from PIL import Image

    image = np.asarray(Image.open(args.input).convert("RGB")) if args.input else test_card()
    try:
        with Translator(args.bundle, backend=args.backend) as t:
            options = {"factor": args.factor} if args.factor and t.manifest.task == "super_resolution" else {}
            t(image, iterations=args.iterations, **options)  # warm-up: first call allocates buffers
            start = time.perf_counter()
            result = t(image, iterations=args.iterations, **options)
            elapsed = time.perf_counter() - start
            x = t.preprocess(image, **options)
    except SdkError as e:
        logging.error("%s", e)
        return 1
    size = result.shape[0]
    shown_input = Image.fromarray(np.round((x[:3].transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8))
    panels = [shown_input.resize((size, size), Image.NEAREST), Image.fromarray(result)]
    canvas = Image.new("RGB", (size * len(panels), size))
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * size, 0))
    canvas.save(args.output)
    logging.info("translated in %.1f ms; wrote %s (encoder input | result)", elapsed * 1e3, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
