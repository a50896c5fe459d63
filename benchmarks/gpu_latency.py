"""GPU latency of the refinement loop: per engine call and per frame, for N = 1..5 iterations, on
TensorRT with and without CUDA graphs and on ONNX Runtime's CUDA provider. Median and p95, written
as JSON + markdown into ``benchmarks/results/``.

    python benchmarks/gpu_latency.py --bundle engines/demo_fp16            # TensorRT needs its engines
    python benchmarks/gpu_latency.py --bundle engines/demo --modes onnxruntime-cuda --device-io

What is measured:
* ``engine_ms``: one engine call (``execute_async_v3`` of one prepared context) between two CUDA
  events on the backend's stream (TensorRT); for ONNX Runtime, host wall time of one
  ``run_with_iobinding`` (ORT runs on its own stream and synchronises it at the end of each run).
* ``loop_gpu_ms`` (TensorRT): the N-step loop alone — 2N engine calls, or one graph launch —
  between CUDA events, without the input/output copies.
* ``frame_ms``: host wall time of ``Translator.infer`` — what a caller sees, copies included
  (host arrays, or CUDA arrays in and out with ``--device-io``, which needs PyTorch with CUDA).

Without a GPU (or without cuda-python) it prints one line saying so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdk.backends.cuda import check, cuda_status, device_info, import_cudart  # noqa: E402

log = logging.getLogger("gpu_latency")
MODES = ("tensorrt", "tensorrt+graphs", "onnxruntime-cuda")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--bundle", type=Path, default=ROOT / "engines" / "demo", help="bundle folder (default: engines/demo)"
    )
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to measure")
    p.add_argument("--iterations", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="loop lengths N")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=200, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first (and the CUDA-graph capture)")
    p.add_argument("--device", type=int, default=0, help="GPU index")
    p.add_argument("--device-io", action="store_true", help="CUDA tensors in, output='device' (needs torch+CUDA)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_args(argv)


def stats(ms: list[float]) -> dict:
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "n": len(ms)}


class Events:
    """GPU time between two CUDA events on a stream."""

    def __init__(self, stream):
        self.cudart, self.stream = import_cudart(), stream
        self.start, self.end = (check(self.cudart, self.cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(2))

    def time(self, fn) -> float:
        cudart = self.cudart
        check(cudart, cudart.cudaEventRecord(self.start, self.stream), "cudaEventRecord")
        fn()
        check(cudart, cudart.cudaEventRecord(self.end, self.stream), "cudaEventRecord")
        check(cudart, cudart.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        return float(check(cudart, cudart.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime"))


def repeat(fn, args) -> list[float]:
    for _ in range(args.warmup):
        fn()
    return [fn() for _ in range(args.frames)]


def wall(fn):
    def timed() -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return timed


def frame_input(t, args):
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, *t.input_shape)).astype(np.float32)
    if not args.device_io:
        return x
    import torch  # only for --device-io: a CUDA tensor as a caller would pass it

    return torch.from_numpy(x).to(f"cuda:{args.device}")


def measure(mode: str, args) -> list[dict]:
    """One row per N for ``mode``."""
    from sdk import Translator
    from sdk.loop import INIT

    backend = "tensorrt" if mode.startswith("tensorrt") else mode
    rows = []
    with Translator(args.bundle, backend=backend, device=args.device, cuda_graphs=mode.endswith("+graphs")) as t:
        x, output = frame_input(t, args), "device" if args.device_io else "host"
        loop = t._loop  # the benchmark times the loop's parts; users only call infer()
        t.infer(x, iterations=1)  # allocate and bind this batch
        arena = loop._arenas[args.batch]
        engines = {}
        for key, runner in loop.runners.items():
            binding = arena.generator[0] if key == "generator" else arena.encoder.get((key, INIT))
            if binding is None:
                continue

            def run(r=runner, b=binding):
                r.run(b)

            if backend == "tensorrt":
                events = Events(t.backend.cuda.stream)
                engines[key] = stats(repeat(lambda ev=events, fn=run: ev.time(fn), args))
            else:
                engines[key] = stats(repeat(wall(run), args))
        for n in args.iterations:
            row = {
                "mode": mode,
                "iterations": n,
                "batch": args.batch,
                "device_io": args.device_io,
                "engine_ms": engines,
                "frame_ms": stats(repeat(wall(lambda n=n: t.infer(x, iterations=n, output=output)), args)),
            }
            if backend == "tensorrt":
                events = Events(t.backend.cuda.stream)
                row["loop_gpu_ms"] = stats(
                    repeat(lambda ev=events, n=n: ev.time(lambda: loop._run_all(arena, n, INIT)), args)
                )
            rows.append(row)
            log.info("%s N=%d: frame median %.3f ms", mode, n, row["frame_ms"]["median"])
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# GPU latency: {report['bundle']} on {report['gpu']['name']}",
        "",
        f"batch {report['batch']}, {report['frames']} timed calls after {report['warmup']} warm-up calls; "
        f"median / p95 in ms. frame = Translator.infer wall time; loop GPU = the N steps between CUDA events.",
        "",
        "| mode | N | frame median | frame p95 | loop GPU median | loop GPU p95 |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        g = r.get("loop_gpu_ms")
        lines.append(
            f"| {r['mode']} | {r['iterations']} | {r['frame_ms']['median']:.3f} | {r['frame_ms']['p95']:.3f} | "
            + (f"{g['median']:.3f} | {g['p95']:.3f} |" if g else "- | - |")
        )
    lines += ["", "| mode | engine | median | p95 |", "|---|---|---|---|"]
    seen = set()
    for r in report["rows"]:
        for key, s in r["engine_ms"].items():
            if (r["mode"], key) not in seen:
                seen.add((r["mode"], key))
                lines.append(f"| {r['mode']} | {key} | {s['median']:.3f} | {s['p95']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count, why = cuda_status()
    if count <= args.device:
        print(
            f"gpu_latency: no CUDA GPU {args.device} is visible ({why or f'{count} device(s)'}); "
            f"this benchmark measures GPU latency and has nothing to run here",
            file=sys.stderr,
        )
        return 2
    from sdk import SdkError

    rows, skipped = [], {}
    for mode in args.modes:
        try:
            rows += measure(mode, args)
        except SdkError as e:  # e.g. no engines in the bundle, onnxruntime without CUDA: measure the rest
            skipped[mode] = str(e)
            log.warning("%s skipped: %s", mode, e)
    gpu = device_info(args.device)
    report = {
        "bundle": str(args.bundle),
        "gpu": {"index": args.device, **gpu.as_dict()},
        "batch": args.batch,
        "frames": args.frames,
        "warmup": args.warmup,
        "rows": rows,
        "skipped": skipped,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu_latency_{args.bundle.name}_b{args.batch}{'_deviceio' if args.device_io else ''}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(report))
    log.info("wrote %s.{json,md}", args.out / stem)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
