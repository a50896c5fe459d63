"""What a build is asked for: one :class:`BuildOptions`, the single source of the defaults for
the command line (``python export/build_engines.py``; its parser is generated from the fields)
and for the Python API (:func:`export.builder.bundle.build_bundle`).

Imports neither torch nor onnx, so ``--help`` and option errors work with the runtime alone.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.checkpoints.formats import FORMATS
from sdk.tasks import SR_FACTORS, TASKS

PRECISIONS = ("fp32", "fp16")


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its command-line help; ``cli`` holds argparse keywords (``flag`` names a
    flag other than ``--field-name``; ``flag=None`` keeps the field off the command line)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class BuildOptions:
    """The options of one bundle build. ``None`` means "read from the checkpoint" (``task``,
    ``iterations``) or "the default place" (``out``, ``timing_cache``)."""

    checkpoint: Path | None = _option(None, "encoder checkpoint (.pt); default: the embedded demo model", type=Path)
    generator: Path | None = _option(None, "rosinality StyleGAN2 file (g_ema) to use as the decoder", type=Path)
    format: str | None = _option(None, "checkpoint format (default: detected from the file)", choices=FORMATS)
    out: Path | None = _option(
        None,
        "bundle folder to write (default: engines/demo, or engines/<checkpoint name>): a new path, an empty "
        "folder or an earlier bundle, which is replaced; any other folder or file is refused, never deleted",
        type=Path,
    )
    task: str | None = _option(
        None,
        "pre-processing the bundle applies to images (default: read from the checkpoint's opts; "
        "super_resolution for the demo)",
        choices=sorted(TASKS),
    )
    factor: int = _option(4, "default super-resolution factor", type=int, choices=SR_FACTORS)
    iterations: int | None = _option(None, "default refinement iterations (default: from the checkpoint)", type=int)
    max_batch: int = _option(8, "largest batch the graphs accept (default {default})", type=int)
    tolerance: float = _option(1e-4, "parity bound, max|onnx-torch| / max|torch| (default {default:g})", type=float)
    precision: str = _option(
        "fp32",
        "graph precision: fp16 converts every graph (I/O stays float32) and checks the loop against fp32 "
        "in ONNX Runtime (default {default})",
        choices=PRECISIONS,
    )
    fp16_min_psnr: float = _option(
        40.0, "fp16 loop output must reach this PSNR (dB) against fp32 (default {default:g})", type=float
    )
    opt_batch: int = _option(1, "TensorRT: batch size the engines are tuned for", type=int)
    timing_cache: Path | None = _option(
        None, "TensorRT timing cache file, reused across builds (default: engines/.timing_cache)", type=Path
    )
    workspace_gb: float = _option(4.0, "TensorRT builder workspace (default {default:g} GiB)", type=float)
    tf32: bool = _option(
        False,
        "TensorRT: keep TF32 for the FP32 engines (faster convs on Ampere and newer, 10-bit mantissa "
        "operands); they are then compared at the looser tf32 tolerance and the manifest records it. "
        "Default: TF32 off, FP32 engines compared at 1e-3",
        action="store_true",
    )
    optimize: bool = _option(
        True,
        "export the checkpoint modules as they are, without the equivalent fast forms of export/fast_forms/ "
        "(merged style heads, one style matmul), and without the CPU-optimised graphs of export/ort_cpu/ "
        "(for comparisons)",
        flag="--no-optimize",
        action="store_false",
    )
    progress: bool = _option(True, "no progress bar", flag="--quiet", action="store_false")
    name: str | None = _option(None, "the bundle's name in its manifest (default: the folder's name)", flag=None)

    def replace(self, **changes: Any) -> BuildOptions:
        """A copy with ``changes``; an unknown name raises TypeError."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildOptions:
        """The options of a namespace from :func:`add_arguments`' parser."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per :class:`BuildOptions` field, its default and help taken from the field."""
    for f in dataclasses.fields(BuildOptions):
        cli = dict(f.metadata)
        flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
        if flag is None:
            continue
        text = cli.pop("help").format(default=f.default)
        parser.add_argument(flag, dest=f.name, default=f.default, help=text, **cli)
