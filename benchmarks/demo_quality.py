#!/usr/bin/env python
"""The demo model's super-resolution quality on held-out photographs, through the SDK.

    python benchmarks/demo_quality.py                     # engines/demo, x4, N = 1..5
    python benchmarks/demo_quality.py --factor 8 --bundle engines/demo

Crops: 64 x 64 tiles of the photographs that ``export/demo/train.py`` never trains on
(``export.demo.data.HELD_OUT``), each image resized so its short side is 64, 128 and 256 px
(a thumbnail, then closer views), tiled without overlap. For each crop the SDK's own
super-resolution pre-processing makes the input (bicubic downsampling by ``--factor``, 8-bit,
resized back); the baselines start from the same 8-bit low-resolution image:

* ``bicubic``: the low-resolution image upsampled with PIL's bicubic filter,
* ``encoder input``: what the model sees (pSp's bilinear resize back),
* ``N = k``: the SDK output after k refinement iterations (one ``infer(..., return_steps=True)``).

PSNR on 8-bit RGB at the output size (peak 255), averaged per image and over all crops.
Writes JSON + markdown to ``benchmarks/results/`` and an example strip to ``--examples``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from sdk import Translator
from sdk.extras import exit_for_missing_extra
from sdk.imaging import to_uint8_image
from sdk.tasks import low_resolution

try:
    from PIL import Image
    from tqdm import tqdm

    from export.demo.data import HELD_OUT, load_photographs
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "export,demo", __name__)

REPO = Path(__file__).resolve().parents[1]
LEVELS = (64, 128, 256)  # short side of the resized photograph before tiling


def held_out_crops(size: int) -> list[tuple[str, np.ndarray]]:
    """``[(image name, size x size x 3 uint8)]``: tiles of each held-out photograph at each level."""
    crops = []
    for ((_, name), _), (rgb, _) in zip(HELD_OUT.items(), load_photographs(HELD_OUT)):
        image = Image.fromarray(rgb)
        for short in LEVELS:
            scale = short * size / 64 / min(image.size)
            w, h = round(image.size[0] * scale), round(image.size[1] * scale)
            level = np.asarray(image.resize((w, h), Image.LANCZOS))
            top0, left0 = (h % size) // 2, (w % size) // 2  # centred grid
            for top in range(top0, h - size + 1, size):
                for left in range(left0, w - size + 1, size):
                    crops.append((name, level[top : top + size, left : left + size]))
    return crops


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def bicubic_baseline(hr: np.ndarray, factor: int) -> np.ndarray:
    """The same 8-bit low-resolution image the SDK makes, upsampled with PIL's bicubic filter."""
    low = low_resolution(hr.transpose(2, 0, 1) / 255.0, factor)
    low = Image.fromarray(low.transpose(1, 2, 0).astype(np.uint8))
    return np.asarray(low.resize((hr.shape[1], hr.shape[0]), Image.BICUBIC))


def evaluate(
    bundle: Path,
    factor: int,
    iterations: int,
    threads: int | None = None,
    examples: Path | None = None,
    progress: bool = True,
) -> dict:
    with Translator(bundle, backend="onnxruntime", threads=threads) as t:
        size = t.manifest.input_size
        if t.manifest.task != "super_resolution" or t.output_size != size:
            raise SystemExit(f"{bundle} is not a super-resolution bundle with equal input and output size")
        rows, strips = [], []
        for i, (name, hr) in enumerate(tqdm(held_out_crops(size), desc="held-out crops", disable=not progress)):
            x = t.preprocess(hr, factor=factor)
            res = t.infer(x[None], iterations=iterations, return_steps=True)
            outs = [to_uint8_image(s.image[0]) for s in res.steps]
            seen = to_uint8_image(x)
            bicubic = bicubic_baseline(hr, factor)
            rows.append(
                {
                    "image": name,
                    "bicubic": psnr(bicubic, hr),
                    "encoder_input": psnr(seen, hr),
                    "iterations": [psnr(o, hr) for o in outs],
                }
            )
            if examples is not None and i % 9 == 4 and len(strips) < 6:
                low = Image.fromarray(seen).resize((size // factor,) * 2, Image.BOX).resize((size,) * 2, Image.NEAREST)
                strips.append(np.concatenate([np.asarray(low), bicubic, outs[0], outs[-1], hr], axis=1))
    summary = {
        "bundle": str(bundle),
        "factor": factor,
        "crops": len(rows),
        "rows": rows,
        "mean": _means(rows),
        "per_image": {n: _means([r for r in rows if r["image"] == n]) for n in dict.fromkeys(r["image"] for r in rows)},
    }
    if examples is not None and strips:
        examples.parent.mkdir(parents=True, exist_ok=True)
        grid = np.concatenate(strips, axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(examples)
        summary["examples"] = str(examples)
    return summary


def _means(rows: list[dict]) -> dict:
    return {
        "bicubic": float(np.mean([r["bicubic"] for r in rows])),
        "encoder_input": float(np.mean([r["encoder_input"] for r in rows])),
        "iterations": np.mean([r["iterations"] for r in rows], axis=0).round(4).tolist(),
        "crops": len(rows),
    }


def markdown(summary: dict) -> str:
    n = len(summary["mean"]["iterations"])
    head = "| photograph | crops | bicubic | encoder input | " + " | ".join(f"N = {k}" for k in range(1, n + 1)) + " |"
    lines = [
        f"Held-out photographs, x{summary['factor']}, PSNR (dB) on 8-bit RGB at the output size "
        f"(`python benchmarks/demo_quality.py`):",
        "",
        head,
        "|" + " --- |" * (n + 4),
    ]
    for name, m in [*summary["per_image"].items(), ("**all**", summary["mean"])]:
        lines.append(
            f"| {name} | {m['crops']} | {m['bicubic']:.2f} | {m['encoder_input']:.2f} | "
            + " | ".join(f"{v:.2f}" for v in m["iterations"])
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "engines" / "demo", help="bundle (default engines/demo)")
    p.add_argument("--factor", type=int, default=4, help="super-resolution factor (default 4)")
    p.add_argument("--iterations", type=int, default=5, help="refinement iterations (default 5)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    p.add_argument(
        "--examples",
        type=Path,
        default=REPO / "docs" / "img" / "demo_sr_examples.png",
        help="example strip PNG: low-res (nearest) | bicubic | N = 1 | N = last | original",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = evaluate(args.bundle, args.factor, args.iterations, args.threads, args.examples)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"demo_quality_x{args.factor}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    stem.with_suffix(".md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
