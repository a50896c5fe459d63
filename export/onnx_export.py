"""Tracing modules to ONNX and checking the graphs against PyTorch in ONNX Runtime."""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)

OPSET = 18


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
        return (f"{self.graph} (batch {self.batch}): max |onnx - torch| = {self.max_abs_error:.3g}, "
                f"max |torch| = {self.max_abs_reference:.3g}, relative {self.relative_error:.3g} "
                f"(tolerance {self.tolerance:g})")


def relative_error(actual: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    err = float(np.max(np.abs(actual.astype(np.float64) - reference.astype(np.float64))))
    ref = float(np.max(np.abs(reference)))
    return err, ref, err / max(ref, 1e-12)


def export_onnx(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], output_name: str, path: Path,
                max_batch: int) -> None:
    """Export ``module(**inputs)`` to ``path`` with a dynamic batch dim 1..max_batch.

    Uses the torch.export-based exporter; weights are embedded (graphs stay under 2 GB for
    every public checkpoint: the largest, an 18-style pSp encoder, is about 1 GB).
    """
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    dynamic = {name: {0: batch} for name in inputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (), kwargs=dict(inputs), dynamo=True, input_names=list(inputs),
                                    output_names=[output_name], dynamic_shapes=dynamic, opset_version=OPSET,
                                    verbose=False)
    program.save(str(path), external_data=False)


def check_parity(module: torch.nn.Module, path: Path, inputs: Mapping[str, torch.Tensor], graph: str,
                 tolerance: float) -> Parity:
    """Run ``path`` in ONNX Runtime (CPU, float32) and ``module`` in PyTorch on ``inputs``."""
    import onnxruntime as ort

    with torch.no_grad():
        reference = module(**inputs).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in inputs.items()}
    actual = session.run(None, feeds)[0]
    if actual.shape != reference.shape:
        raise ParityError(f"{graph}: ONNX output shape {actual.shape} != PyTorch {reference.shape}")
    err, ref, rel = relative_error(actual, reference)
    return Parity(graph, int(next(iter(inputs.values())).shape[0]), err, ref, rel, tolerance)
