#!/usr/bin/env python
"""FP16 vs FP32 accuracy of a checkpoint's whole refinement loop, at full size, on CPU.

    python benchmarks/fp16_accuracy.py                                   # the demo model, N = 5
    python benchmarks/fp16_accuracy.py --checkpoint e2style.pt --max-batch 2

Builds the bundle with ``--precision fp16`` (export/build_engines.py: the FP16 graphs are run
against the FP32 graphs over every step of the loop in ONNX Runtime, CPU) into a temporary
folder, and writes the measured accuracy (image PSNR per step, peak = the FP32 output's dynamic
range; max |z_fp16 - z_fp32| per step; NaN/Inf) to RESULTS/fp16_accuracy_<name>.{json,md}.
The numbers are ONNX Runtime CPU FP16 kernels, a proxy for TensorRT's (tests/gpu checks those).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default: the embedded demo model)")
    p.add_argument("--max-batch", type=int, default=2)
    p.add_argument("--min-psnr", type=float, default=40.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import onnxruntime

    from export.builder.bundle import build_bundle
    from export.checkpoints.registry import load_checkpoint
    from sdk import Bundle

    with tempfile.TemporaryDirectory(prefix="fp16-acc-") as scratch:
        ckpt_path = args.checkpoint
        if ckpt_path is None:
            from export.demo.model import make_demo_checkpoint

            ckpt_path = make_demo_checkpoint(Path(scratch) / "demo.pt")
        ckpt = load_checkpoint(ckpt_path)
        out = build_bundle(
            ckpt,
            Path(scratch) / "bundle",
            task=ckpt.suggested_task,
            max_batch=args.max_batch,
            progress=False,
            precision="fp16",
            fp16_min_psnr=args.min_psnr,
        )
        manifest = Bundle(out, verify=False).manifest
    acc = manifest.info("accuracy")
    name = f"{'demo' if args.checkpoint is None else ckpt_path.stem}_{ckpt.format}"
    result = {
        "checkpoint": name,
        "format": ckpt.format,
        "generator_size": manifest.output_size,
        "stages": len(manifest.schedule.stages),
        **acc,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "python benchmarks/fp16_accuracy.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"fp16_accuracy_{name}.json").write_text(json.dumps(result, indent=2))
    f = acc["fp16_vs_fp32"]
    md = [
        f"# FP16 vs FP32 loop accuracy: {name}",
        "",
        f"{ckpt.format}, {manifest.output_size} px, {f['iterations']} steps, batch {f['batch']}, "
        f"ONNX Runtime {onnxruntime.__version__} CPU. Command: `{result['command']}`",
        "",
        "| step | image PSNR (dB) | max abs latent error |",
        "| --- | --- | --- |",
    ]
    md += [
        f"| {i + 1} | {p:.1f} | {e:.3g} |" for i, (p, e) in enumerate(zip(f["image_psnr"], f["latent_max_abs_error"]))
    ]
    md += [
        "",
        f"NaN/Inf in any step's latents or images: {'no' if f['finite'] else 'YES'}; required PSNR >= "
        f"{f['min_psnr_required']:g} dB: {'met' if f['ok'] else 'NOT met'}.",
    ]
    (RESULTS / f"fp16_accuracy_{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if f["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
