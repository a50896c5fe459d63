#!/usr/bin/env python
"""Soak run: many frames through one ``Translator``, watching resident memory.

    python benchmarks/soak.py                                  # engines/demo if built, else a tiny bundle
    python benchmarks/soak.py --bundle engines/demo --frames 5000
    python benchmarks/soak.py --tiny --frames 5000             # the toy bundle of tests/helpers/tiny_bundle.py
    python benchmarks/soak.py --bundle engines/demo --max-seconds 600 --iterations 1

Each frame is an HxWx3 uint8 image (a few random frames cycled) through ``translator(frame)``,
the whole path a video application takes: the task's pre-processing, the refinement loop,
the uint8 output. The resident set size (``VmRSS`` from ``/proc/self/status``) is read after
frame ``--baseline-frame`` (default 100, when allocators and ONNX Runtime's arenas have
settled) and at the end; the run passes when the end is within ``--tolerance`` (default 5%)
of the baseline. Results go to ``benchmarks/results/soak_<bundle>.json`` and ``.md``.
Not a CI test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdk import Translator  # noqa: E402
from sdk.extras import exit_for_missing_extra  # noqa: E402

try:
    from tqdm import tqdm
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "export", __name__)


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def tiny_bundle(folder: Path) -> Path:
    """The toy bundle of tests/helpers/tiny_bundle.py, exported in a subprocess (it needs torch, which
    must not inflate this process's memory)."""
    code = (
        "import sys; from pathlib import Path; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']; "
        "from helpers import tiny_bundle as tb; f = Path(sys.argv[2]); "
        "tb.write_bundle(f / 'tiny', tb.export_graphs(f / 'graphs'), 'iterative')"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return folder / "tiny"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="bundle folder (default: engines/demo if present, else --tiny)")
    p.add_argument("--tiny", action="store_true", help="use the toy bundle of tests/helpers/tiny_bundle.py")
    p.add_argument("--frames", type=int, default=5000, help="frames to run (default 5000)")
    p.add_argument("--max-seconds", type=float, help="stop earlier after this many seconds")
    p.add_argument("--iterations", type=int, help="refinement iterations (default: the bundle's)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: the runtime's choice)")
    p.add_argument("--frame-size", type=int, default=256, help="input frame height and width (default 256)")
    p.add_argument("--baseline-frame", type=int, default=100, help="frame after which RSS is the baseline")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed RSS growth after the baseline (0.05)")
    p.add_argument("--backend", default="onnxruntime", help="Translator backend (default onnxruntime)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    return p.parse_args(argv)


def default_bundle(bundle: Path | None, tiny: bool, scratch: Path) -> Path:
    """``bundle``, else engines/demo if built (and not ``tiny``), else the toy bundle in ``scratch``."""
    if bundle is None and not tiny and (REPO / "engines" / "demo" / "manifest.json").is_file():
        bundle = REPO / "engines" / "demo"
    return tiny_bundle(scratch) if bundle is None else bundle


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        return soak(args, default_bundle(args.bundle, args.tiny, Path(scratch)))


def soak(args: argparse.Namespace, bundle: Path) -> int:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.frame_size, args.frame_size, 3), dtype=np.uint8) for _ in range(8)]
    rss = {"start": rss_mib()}
    trace = []  # (frame, MiB) every 1% of the run
    step = max(1, args.frames // 100)
    with Translator(bundle, backend=args.backend, threads=args.threads) as t:
        name = t.manifest.name or bundle.name
        rss["opened"] = rss_mib()
        iterations = args.iterations or t.manifest.schedule.default_iterations
        t0 = time.perf_counter()
        done = 0
        baseline_time = None
        with tqdm(total=args.frames, desc=f"soak {name}", unit="frame", mininterval=2.0) as bar:
            for i in range(args.frames):
                out = t(frames[i % len(frames)], iterations=iterations)
                done = i + 1
                if done == args.baseline_frame:
                    rss["baseline"] = rss_mib()
                    baseline_time = time.perf_counter()
                if done % step == 0:
                    trace.append((done, rss_mib()))
                    bar.set_postfix_str(f"rss {trace[-1][1]:.1f} MiB")
                bar.update()
                if args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
                    break
        elapsed = time.perf_counter() - t0
        rss["end"] = rss_mib()
        assert out.dtype == np.uint8
    rss["closed"] = rss_mib()
    growth = (rss["end"] - rss["baseline"]) / rss["baseline"] if "baseline" in rss else None
    after = [m for f, m in trace if f >= args.baseline_frame]
    result = {
        "bundle": str(bundle),
        "name": name,
        "family": t.manifest.family,
        "backend": t.backend.name,
        "iterations": iterations,
        "frames": done,
        "frames_requested": args.frames,
        "frame_size": args.frame_size,
        "seconds": round(elapsed, 2),
        "fps": round(done / elapsed, 2),
        "fps_after_baseline": round((done - args.baseline_frame) / (time.perf_counter() - baseline_time), 2)
        if baseline_time and done > args.baseline_frame
        else None,
        "baseline_frame": args.baseline_frame,
        "rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "rss_growth_after_baseline": None if growth is None else round(growth, 4),
        "rss_range_after_baseline_mib": [round(min(after), 1), round(max(after), 1)] if after else None,
        "tolerance": args.tolerance,
        "passed": growth is not None and growth <= args.tolerance,
        "trace": [(f, round(m, 1)) for f, m in trace],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"soak_{name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["passed"] else 1


def markdown(r: dict) -> str:
    rss = r["rss_mib"]
    growth = (
        "n/a (too few frames)"
        if r["rss_growth_after_baseline"] is None
        else f"{100 * r['rss_growth_after_baseline']:+.2f}%"
    )
    verdict = "PASS" if r["passed"] else "FAIL"
    lines = [
        f"### soak: {r['name']} ({r['family']}), {r['backend']}, N = {r['iterations']}, {r['frame_size']} px frames",
        "",
        f"{r['frames']} of {r['frames_requested']} frames in {r['seconds']} s ({r['fps']} frames/s); "
        f"{r['machine']['cpu_count']} CPUs, Python {r['machine']['python']}",
        "",
        f"| RSS (MiB) | start | bundle open | after frame {r['baseline_frame']} | end | after close |",
        "|---|---:|---:|---:|---:|---:|",
        f"| | {rss['start']} | {rss['opened']} | {rss.get('baseline', 'n/a')} | {rss['end']} | {rss['closed']} |",
        "",
        f"Growth from frame {r['baseline_frame']} to the end: **{growth}** (tolerance {100 * r['tolerance']:.0f}%): "
        f"**{verdict}**"
        + (
            f"; range after the baseline {r['rss_range_after_baseline_mib']} MiB"
            if r["rss_range_after_baseline_mib"]
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
