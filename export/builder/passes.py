"""The interface of the passes a build runs on the bundle after its graphs are exported and
parity-checked: the CPU-optimised graphs (:mod:`export.ort_cpu.cpu_graphs`), the FP16 graphs
(:mod:`export.precision.fp16`) and the TensorRT engines (:mod:`export.tensorrt.engines`).

A pass reads and extends the uncommitted bundle in ``ctx.folder`` and its manifest (a dict);
every file it adds goes through ``ctx.add_file``, which returns the file's SHA-256.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.builder.options import BuildOptions
    from export.builder.records import GraphRecord


@dataclass
class BuildContext:
    """What a pass works on: the bundle's temporary folder, its manifest, the exported graphs
    (their PyTorch modules and parity inputs), the options, and where the bundle will go."""

    folder: Path
    manifest: dict[str, Any]
    graphs: Sequence[GraphRecord]
    options: BuildOptions
    out: Path
    add_file: Callable[[str], str]


class BundlePass(ABC):
    """One post-export pass. ``name`` labels it in the progress bar and the log."""

    name = "pass"

    @abstractmethod
    def applies(self, options: BuildOptions) -> bool:
        """Whether this build runs the pass (the options, and what this machine has)."""

    @abstractmethod
    def run(self, ctx: BuildContext) -> None:
        """Read and extend the staged bundle in ``ctx.folder`` and ``ctx.manifest``."""
