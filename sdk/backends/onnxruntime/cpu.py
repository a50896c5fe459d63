"""Graphs optimised for ONNX Runtime's CPU provider at build time, and when they may be used.

Opening an ONNX graph costs ONNX Runtime seconds per GB (parsing, constant folding, fusing,
reordering every convolution's weights into the blocked NCHWc layout) and, while it does, two
or three copies of the weights in memory. ``export/build_engines.py`` therefore also writes each
graph as ONNX Runtime optimised it on the build machine (``<graph>.cpu.onnx``) with its
weights in a separate file (``<graph>.cpu.onnx.data``) at page-aligned offsets, which ONNX
Runtime maps into memory instead of reading and copying it: a session opens in milliseconds,
and the weights are resident once, as shared, clean file pages. They stay mapped while the
session lives, so a bundle must be replaced by renaming a new folder into place, never by
writing over its files (a truncated mapped file kills the process with SIGBUS); the SHA-256
checked at open holds because only the user and root may write the bundle (``sdk/permissions.py``,
``engines/README.md``).

**Portability.** The optimised graph holds the NCHWc layout of the build machine's CPU (8
floats per block with AVX2, 16 with AVX-512) and ONNX Runtime's internal operators of that
release, so it is used only where both match what the manifest records (``onnxruntime``,
``cpu``); anywhere else the portable ``<graph>.onnx`` is opened as before, and a line in the
log says why. The manifest entry, per graph (``graphs.<key>.onnxruntime_cpu``)::

    {"file": "encoder_0.cpu.onnx", "sha256": "...", "data": "encoder_0.cpu.onnx.data",
     "data_sha256": "...", "onnxruntime": "1.32.0", "cpu": "x86_64-avx2"}
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from pathlib import Path

from ...bundle import resolve_inside

log = logging.getLogger(__name__)


def cpu_tag() -> str:
    """What an NCHWc-optimised graph depends on: the architecture and the widest vector ISA
    ONNX Runtime's MLAS picks its block size from."""
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            flags = cpu_flags(f)
    except OSError:  # not Linux: the architecture alone (a mismatch just means the portable graph)
        flags = None
    return tag_of(platform.machine(), flags)


CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo_lines) -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo``'s lines (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo_lines:
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def tag_of(machine: str, flags: frozenset[str] | None) -> str:
    """The CPU tag of an architecture (``platform.machine()``) with these feature flags (None:
    unknown, the architecture alone)."""
    machine = machine.lower() or "unknown"
    if flags is None or machine not in ("x86_64", "amd64"):
        return machine
    isa = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else "sse"
    return f"x86_64-{isa}"


def unusable_reason(entry: Mapping[str, str], onnxruntime_version: str) -> str | None:
    """Why the optimised graph cannot run here (None: it can)."""
    if entry["onnxruntime"] != onnxruntime_version:
        return f"it was optimised by onnxruntime {entry['onnxruntime']}, this is {onnxruntime_version}"
    here = cpu_tag()
    if entry["cpu"] != here:
        return f"it was optimised for a {entry['cpu']} CPU, this one is {here}"
    return None


def usable_entry(spec, ort) -> Mapping[str, str] | None:
    """``spec``'s optimised-graph entry where it can run here, else None (quietly)."""
    entry = spec.onnxruntime_cpu
    return entry if entry is not None and unusable_reason(entry, ort.__version__) is None else None


def graph_files(spec, ort) -> list[str]:
    """The bundle files the CPU provider reads for ``spec`` (a :class:`sdk.manifest.GraphSpec`)."""
    entry = usable_entry(spec, ort)
    return [entry["file"], entry["data"]] if entry else [spec.file]


def choose_graph(spec, path: Path, ort) -> tuple[Path, bool]:
    """The file to open for ``spec`` on the CPU provider: its optimised graph where usable (True),
    else ``path`` (False)."""
    entry = usable_entry(spec, ort)
    if entry is None:
        if spec.onnxruntime_cpu is not None:
            log.info(
                "graph %s: opening the portable %s, not the build machine's optimised graph (%s)",
                spec.key,
                path.name,
                unusable_reason(spec.onnxruntime_cpu, ort.__version__),
            )
        return path, False
    chosen = resolve_inside(path.parent, entry["file"])
    log.debug("graph %s: opening the build machine's optimised graph %s", spec.key, chosen.name)
    return chosen, True


def configure(opts, ort, preoptimised: bool) -> None:
    """Session options for an optimised graph: every optimisation is already in the file."""
    if preoptimised:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
