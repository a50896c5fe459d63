"""PSNR against compute for early exit and warm start, on the demo model.

The measurement itself is ``samples/measure_modes.py`` (the webcam sample's video modes:
cold N = 1..5, warm start, early exit, on a synthetic smooth clip and on a camera moving over
photographs, each frame scored against its high-resolution original); it runs here in its own
process and its per-mode means are turned into compute: iterations per frame x the dense FLOPs
of one iteration (encoder step + generator), counted from the bundle's graphs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


class QualityError(RuntimeError):
    """The video-mode measurement failed or produced nothing."""


def measure_modes(
    bundle: Path,
    out: Path,
    flops_per_iteration: float,
    model: str,
    frames: int = 24,
    frames_per_photo: int = 12,
    threads: int = 2,
) -> dict:
    cmd = [
        sys.executable,
        "samples/measure_modes.py",
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--frames",
        str(frames),
        "--frames-per-photo",
        str(frames_per_photo),
        "--threads",
        str(threads),
    ]
    log.info("video modes: %s", " ".join(cmd))
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise QualityError(f"samples/measure_modes.py failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    report = json.loads((out / "results.json").read_text())
    clips = {}
    for name, clip in report["clips"].items():
        clips[name] = [
            {**r, "gflop_per_frame": r["iterations_mean"] * flops_per_iteration / 1e9} for r in clip["summary"]
        ]
    result = {
        "model": model,
        "command": " ".join(cmd),
        "factor": report.get("factor"),
        "gflop_per_iteration": flops_per_iteration / 1e9,
        "clips": clips,
    }
    result["markdown"] = markdown(result)
    return result


def markdown(q: dict) -> list[str]:
    lines = [
        "## Early exit and warm start: PSNR against compute",
        "",
        f"{q['model']} (x{q['factor']} super-resolution), measured by `{q['command']}`; compute = mean "
        f"iterations per frame x {q['gflop_per_iteration']:.2f} dense GFLOP per iteration. PSNR against each "
        f"frame's high-resolution original (uint8, peak 255).",
        "",
    ]
    for name, rows in q["clips"].items():
        lines += [
            f"**{name}**",
            "",
            "| mode | kind | mean PSNR dB | min PSNR dB | iterations per frame | GFLOP per frame | loop ms per frame |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['mode']} | {r['kind']} | {r['psnr_mean']:.2f} | {r['psnr_min']:.2f} | "
                f"{r['iterations_mean']:.2f} | {r['gflop_per_frame']:.2f} | {r['ms_mean']:.1f} |"
            )
        lines.append("")
    return lines
