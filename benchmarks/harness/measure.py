"""Timing on a shared host: interleaved runs, robust statistics, resident memory.

The machines this project runs on share their host, and their speed drifts by up to 2x over
minutes. Every comparison therefore runs its candidates in turn (A B C A B C ...), so each
round sees the same state of the host, and is summarised by medians, by the median of the
per-round ratios against a reference candidate, and by minimums (the least disturbed runs).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Seconds per unit (a frame, a call) over the measured samples."""

    samples_s: list
    median_s: float
    p95_s: float
    min_s: float

    @classmethod
    def of(cls, samples: list[float], per: int = 1) -> Stats:
        a = np.asarray(samples, dtype=np.float64) / per
        return cls([float(v) for v in a], float(np.median(a)), float(np.percentile(a, 95)), float(a.min()))

    def as_dict(self) -> dict:
        return asdict(self)


def interleave(
    candidates: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    desc: str = "measure",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Wall seconds of each call, ``rounds`` rounds of every candidate in turn after ``warmup``
    unmeasured rounds. The order rotates each round so no candidate always follows the same one
    (a runtime's spinning threads or a cold cache would otherwise always charge the same one)."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    with tqdm(range(rounds), desc=desc, unit="round", disable=not progress, leave=False) as bar:
        for r in bar:
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                candidates[name]()
                samples[name].append(time.perf_counter() - t0)
            bar.set_postfix_str(" ".join(f"{n} {samples[n][-1]:.3g}s" for n in names))
    return samples


def ratios(samples: Mapping[str, list[float]], reference: str) -> dict[str, dict]:
    """Speed-up of ``reference``'s time over each candidate's (> 1: the candidate is faster):
    ratio of medians, median of per-round ratios, ratio of minimums, and the range of rounds."""
    ref = np.asarray(samples[reference])
    out = {}
    for name, values in samples.items():
        v = np.asarray(values)
        per_round = ref / v
        out[name] = {
            "ratio_of_medians": float(np.median(ref) / np.median(v)),
            "median_of_round_ratios": float(np.median(per_round)),
            "ratio_of_minimums": float(ref.min() / v.min()),
            "round_ratio_range": [float(per_round.min()), float(per_round.max())],
        }
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere), for every report."""
    import platform

    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def _status_kb(field: str, pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib(pid: int | str = "self") -> float | None:
    """Resident memory now (``VmRSS``), MiB; None where /proc is missing."""
    kb = _status_kb("VmRSS", pid)
    return None if kb is None else kb / 1024


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident memory of the process so far (``VmHWM``), MiB."""
    kb = _status_kb("VmHWM", pid)
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
