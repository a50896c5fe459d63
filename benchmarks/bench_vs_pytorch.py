#!/usr/bin/env python
"""Per-frame time of one checkpoint: the public PyTorch eager loop vs sdk.Translator on ONNX Runtime CPU.

    python benchmarks/bench_vs_pytorch.py                                  # the demo model, N = 5
    python benchmarks/bench_vs_pytorch.py --checkpoint restyle.pt --bundle engines/restyle
    python benchmarks/bench_vs_pytorch.py --iterations 1 --repeats 5

(A) PyTorch eager as the public repos run inference: torch.no_grad(), eval mode, the generator
    in its fused grouped-convolution form, ReStyle's run_on_batch loop (or pSp's single pass).
(B) sdk.Translator(bundle, backend="onnxruntime").infer(x, iterations=N).

Same --threads for both. Final images must agree (relative max error <= 1e-3), then runs are
interleaved A B A B ...; per-frame median/p95/min, the speed-up A/B and a per-stage split go to
stdout and RESULTS/vs_pytorch_<checkpoint stem>.{json,md}. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime

from sdk import Bundle, SdkError, Translator
from sdk.extras import exit_for_missing_extra

try:
    import torch

    from benchmarks.harness.backends import EagerLoop, StageTarget, stage_split
    from benchmarks.harness.measure import interleave
    from export.builder.bundle import build_bundle
    from export.checkpoints.registry import load_checkpoint
    from export.checkpoints.types import CheckpointError
    from export.demo.model import make_demo_checkpoint
    from export.onnx.parity import ParityError
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "export", __name__)

log = logging.getLogger("bench_vs_pytorch")
HERE = Path(__file__).resolve().parent
DEMO_NAME = "demo_restyle_fpn_seed0.pt"  # the name engines/demo was built from: same bytes, same sha256
TOLERANCE = 1e-3
NAMES = {"pytorch": "PyTorch eager (public loop, fused G)", "onnxruntime": "sdk.Translator (ONNX Runtime CPU)"}


def summary(samples: list[float], batch: int) -> dict:
    per_frame = np.asarray(samples) / batch
    return {
        "samples_s": samples,
        "median_s": float(np.median(per_frame)),
        "p95_s": float(np.percentile(per_frame, 95)),
        "min_s": float(per_frame.min()),
    }


def machine() -> dict:
    from benchmarks.harness.measure import cpu_model

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_at_start": list(os.getloadavg()),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def markdown(r: dict) -> str:
    ms = lambda s: f"{1e3 * s:.1f}"  # noqa: E731
    m, sp = r["machine"], r["speedup"]
    lines = [
        f"### {r['checkpoint']['file']} ({r['checkpoint']['format']}): N = {r['iterations']}, batch {r['batch']}, "
        f"{r['threads']} threads, {r['repeats']} interleaved pairs",
        f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}, onnxruntime {m['onnxruntime']}; "
        f"final-image parity {r['parity']['relative']:.2e}",
        "",
        "| back end | median ms/frame | p95 ms/frame | min ms/frame | encoder ms* | generator ms* | other ms* |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, name in NAMES.items():
        s, st = r["per_frame"][key], r["stages_per_frame_s"].get(key, {})
        cells = [ms(st[k]) if k in st else "-" for k in ("encoder", "generator", "other")]
        cells = [ms(s["median_s"]), ms(s["p95_s"]), ms(s["min_s"])] + cells
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"**Speed-up A/B** (PyTorch / ONNX Runtime, > 1 = the SDK is faster): ratio of medians "
        f"**{sp['ratio_of_medians']:.2f}x**, median of per-pair ratios {sp['median_of_pair_ratios']:.2f}x "
        f"(pairs {min(sp['pair_ratios']):.2f}..{max(sp['pair_ratios']):.2f}), ratio of minimums "
        f"{sp['ratio_of_minimums']:.2f}x",
    ]
    if r["stages_per_frame_s"]:
        lines += [
            "",
            f"\\* per frame, summed over the N iterations, from {r['split_runs']} extra run(s) per back end "
            "(other: pooling, concat, copies, Python)",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint in any format export.checkpoints accepts (default: the demo model, temp folder)",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        help="bundle built from that same checkpoint (checked by sha256; "
        "default: build one into a temp folder, a few minutes)",
    )
    p.add_argument(
        "--iterations", "-n", type=int, help="refinement iterations N (default 5; pSp: 1, E2Style: its stage count)"
    )
    p.add_argument("--batch", type=int, default=1, help="frames per call (default 1); times are divided by it")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help=f"torch.set_num_threads and ORT intra-op threads (default os.cpu_count() = {os.cpu_count()})",
    )
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs per back end, not measured (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="measured runs per back end, interleaved (default 10)")
    p.add_argument(
        "--split-runs",
        type=int,
        default=2,
        help="extra runs per back end for the per-stage split, after the measurement (default 2; 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random input in [-1, 1] (default 0)")
    p.add_argument("--results", type=Path, default=HERE / "results", help="output folder (default benchmarks/results)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if min(args.batch, args.threads, args.repeats, args.iterations or 1) < 1 or min(args.warmup, args.split_runs) < 0:
        p.error("--batch, --threads, --repeats, --iterations must be >= 1; --warmup, --split-runs >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for noisy_exporter_logger in ("onnxscript", "onnx_ir"):  # the export's per-initializer INFO lines
        logging.getLogger(noisy_exporter_logger).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-vs-pytorch-") as scratch:
            return run(args, Path(scratch))
    except (CheckpointError, ParityError, SdkError) as e:
        log.error("%s", e)
        return 1


def run(args: argparse.Namespace, scratch: Path) -> int:
    host = machine()  # the load average before this script adds its own
    if args.checkpoint is None:
        log.info("no --checkpoint: writing the demo model (untrained, deterministic) to %s", scratch)
        args.checkpoint = make_demo_checkpoint(scratch / DEMO_NAME)
    ckpt = load_checkpoint(args.checkpoint)  # ckpt.sha256 is sdk.bundle.sha256_file(checkpoint)
    n = args.iterations or (5 if ckpt.repeat_last else ckpt.default_iterations)
    if not ckpt.repeat_last and n > len(ckpt.stages):
        log.error(
            "%s (%s) has %d stage(s) and no repeat: --iterations must be <= %d",
            args.checkpoint,
            ckpt.format,
            len(ckpt.stages),
            len(ckpt.stages),
        )
        return 1
    if args.bundle is not None:
        source = Bundle(args.bundle, verify=False).manifest.info("build").get("source", {}).get("sha256")
        if source != ckpt.sha256:
            log.error(
                "--bundle %s was built from sha256 %s, but --checkpoint %s has sha256 %s: not the same model; "
                "drop --bundle to build a matching one",
                args.bundle,
                source,
                args.checkpoint,
                ckpt.sha256,
            )
            return 1
        bundle = args.bundle
    else:  # before EagerLoop switches the generator to the fused (not batch-symbolic) form
        log.info("no --bundle: building one into %s (export + parity check)", scratch)
        bundle = build_bundle(ckpt, scratch / "bundle", progress=not args.quiet)

    eager = EagerLoop(ckpt)
    sdk_t = Translator(bundle, backend="onnxruntime", threads=args.threads)
    x = np.random.default_rng(args.seed).uniform(-1, 1, (args.batch, *sdk_t.input_shape)).astype(np.float32)
    backends = {"pytorch": lambda: eager.run(x, n), "onnxruntime": lambda: sdk_t.infer(x, iterations=n).images}

    a, b = backends["pytorch"](), backends["onnxruntime"]()
    diff, ref = float(np.abs(a - b).max()), float(np.abs(a).max())
    parity = {"max_abs_diff": diff, "max_abs_reference": ref, "relative": diff / ref if ref else float("inf")}
    print(f"parity after N={n}: max|A-B| / max|A| = {parity['relative']:.3e} (max|A-B| {diff:.3e}, bound {TOLERANCE})")
    if not parity["relative"] <= TOLERANCE:
        log.error("the two back ends disagree beyond %g: not timing different computations", TOLERANCE)
        return 1

    log.info("warm-up: %d run(s) per back end", args.warmup)
    samples = interleave(backends, args.repeats, args.warmup, progress=not args.quiet)
    stages = {}
    if args.split_runs:
        log.info("per-stage split: %d more run(s) per back end", args.split_runs)
        stages["pytorch"] = stage_split(backends["pytorch"], eager.stage_targets(), args.split_runs, args.batch)
        runners = sdk_t._loop.runners  # the loop's graph runners (internal; wrapped, then restored)
        targets = [StageTarget(r, "run", "generator" if k == "generator" else "encoder") for k, r in runners.items()]
        stages["onnxruntime"] = stage_split(backends["onnxruntime"], targets, args.split_runs, args.batch)
    sdk_t.close()

    pairs = [sa / sb for sa, sb in zip(samples["pytorch"], samples["onnxruntime"])]
    per_frame = {k: summary(v, args.batch) for k, v in samples.items()}
    result = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"file": Path(args.checkpoint).name, "sha256": ckpt.sha256, "format": ckpt.format},
        "bundle": str(args.bundle) if args.bundle else "built into a temporary folder",
        "iterations": n,
        "batch": args.batch,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "split_runs": args.split_runs,
        "seed": args.seed,
        "parity": parity,
        "per_frame": per_frame,
        "speedup": {
            "ratio_of_medians": per_frame["pytorch"]["median_s"] / per_frame["onnxruntime"]["median_s"],
            "median_of_pair_ratios": float(np.median(pairs)),
            "pair_ratios": pairs,
            "ratio_of_minimums": per_frame["pytorch"]["min_s"] / per_frame["onnxruntime"]["min_s"],
        },
        "stages_per_frame_s": stages,
        "machine": {**host, "load_avg_at_end": list(os.getloadavg())},
    }
    noisy = [k for k, v in per_frame.items() if v["p95_s"] > 1.25 * v["min_s"]]
    if noisy:  # a diagnostic only: the numbers above are reported unchanged
        log.warning(
            "%s: p95 > 1.25 x the fastest run; the host was busy (load %.1f at the start, %d cores), so the "
            "medians include interference",
            ", ".join(noisy),
            host["load_avg_at_start"][0],
            host["cores"],
        )
    table = markdown(result)
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"vs_pytorch_{Path(args.checkpoint).stem}"  # not with_suffix: stems may hold dots
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Path(f"{stem}.md").write_text(table, encoding="utf-8")
    log.info("wrote %s.json and %s.md", stem, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
