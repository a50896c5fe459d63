"""Tracing modules to ONNX, checking the graphs against PyTorch in ONNX Runtime, and telling a
full disk from the other ways a write can fail."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from export.checkpoint_values import CheckpointError

log = logging.getLogger(__name__)

OPSET = 18
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# ONNX Runtime and protobuf report a failed write without its errno ("Failed to write external
# initializers", "Protobuf serialization failed"); with less than this left on the disk, a write
# that failed is taken for a full disk
LOW_FREE_BYTES = 64 << 20


class ParityError(RuntimeError):
    """An exported graph disagrees with its PyTorch module beyond the tolerance."""


class DiskFullError(RuntimeError):
    """The disk (or the user's quota) filled while the build was writing."""


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _newest_file(folder: Path) -> Path:
    """The file last written in ``folder`` (the one a write without a file name was filling),
    else ``folder``."""
    try:
        files = [(entry.stat().st_mtime_ns, Path(entry.path)) for entry in os.scandir(folder) if entry.is_file()]
    except OSError:
        return folder
    return max(files)[1] if files else folder


def disk_full_error(e: BaseException, folder: Path, need_bytes: int | None = None) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``e`` when it comes from a full disk, else None: an OSError
    with ENOSPC/EDQUOT anywhere in its chain, or a failure of a library outside this project
    (ONNX Runtime, protobuf, torch) while ``folder``'s disk has under LOW_FREE_BYTES left."""
    if not isinstance(e, Exception) or isinstance(e, DiskFullError):
        return None
    full = next((link for link in _chain(e) if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS), None)
    if full is not None:
        path = full.filename
    else:
        if type(e).__module__.split(".")[0] in ("export", "sdk"):  # our own errors say what happened
            return None
        free = _free_bytes(folder)
        if free is None or free >= LOW_FREE_BYTES:
            return None
        named = re.search(r"""file:? ["']([^"']+)["']""", str(e))
        path = named.group(1) if named else None
    where = Path(path) if path else _newest_file(folder)
    if not where.is_absolute():
        where = folder / where
    space = f"{max(0.1, math.ceil(need_bytes / 1e8) / 10):.1f} GB" if need_bytes else "space"
    return DiskFullError(f"no space left on device while writing {where}: free {space} or choose --out on another disk")


@contextlib.contextmanager
def disk_full_as_error(folder: Path, need_bytes: int | None = None) -> Iterator[None]:
    """Raise :class:`DiskFullError` (from the original) for a write that failed on a full disk
    inside the block; put it inside the BundleWriter's block so the check sees the disk before
    the writer removes its temporary folder."""
    try:
        yield
    except Exception as e:
        full = disk_full_error(e, folder, need_bytes)
        if full is None:
            raise
        raise full from e


@dataclass
class Parity:
    """One comparison of an ONNX graph against PyTorch on the same inputs (a first-class
    record: it goes into the manifest and the build log)."""

    graph: str
    batch: int
    max_abs_error: float
    max_abs_reference: float
    relative_error: float  # max abs error / max abs reference value
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.relative_error)) and self.relative_error <= self.tolerance

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.graph} (batch {self.batch}): max |onnx - torch| = {self.max_abs_error:.3g}, "
            f"max |torch| = {self.max_abs_reference:.3g}, relative {self.relative_error:.3g} "
            f"(tolerance {self.tolerance:g})"
        )


def relative_error(actual: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    err = float(np.max(np.abs(actual.astype(np.float64) - reference.astype(np.float64))))
    ref = float(np.max(np.abs(reference)))
    return err, ref, err / max(ref, 1e-12)


def export_onnx(
    module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], output_name: str, path: Path, max_batch: int
) -> None:
    """Export ``module(**inputs)`` to ``path`` with a dynamic batch dim 1..max_batch.

    Uses the torch.export-based exporter; weights are embedded (graphs stay under 2 GB for
    every public checkpoint: the largest, an 18-style pSp encoder, is about 1 GB).
    """
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    dynamic = {name: {0: batch} for name in inputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (),
            kwargs=dict(inputs),
            dynamo=True,
            input_names=list(inputs),
            output_names=[output_name],
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path), external_data=False)


def check_parity(
    module: torch.nn.Module, path: Path, inputs: Mapping[str, torch.Tensor], graph: str, tolerance: float
) -> Parity:
    """Run ``path`` in ONNX Runtime (CPU, float32) and ``module`` in PyTorch on ``inputs``."""
    import onnxruntime as ort

    for name, value in inputs.items():
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{graph}: its example input {name!r} holds NaN/Inf, computed from the checkpoint "
                f"(latent_avg and the generator's image of it): the weights overflow float32"
            )
    with torch.no_grad():
        reference = module(**inputs).float().numpy()
    if not np.isfinite(reference).all():
        raise CheckpointError(
            f"{graph}: PyTorch's own output holds NaN/Inf on finite inputs: the checkpoint's "
            f"weights overflow float32 in this graph (every weight is finite); not an export fault"
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in inputs.items()}
    actual = session.run(None, feeds)[0]
    if actual.shape != reference.shape:
        raise ParityError(f"{graph}: ONNX output shape {actual.shape} != PyTorch {reference.shape}")
    err, ref, rel = relative_error(actual, reference)
    return Parity(graph, int(next(iter(inputs.values())).shape[0]), err, ref, rel, tolerance)
