"""Checking an exported graph against its PyTorch module in ONNX Runtime (CPU, float32)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from export.checkpoints.types import CheckpointError


class ParityError(RuntimeError):
    """An exported graph disagrees with its PyTorch module beyond the tolerance."""


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
