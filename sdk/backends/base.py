"""The backend protocol: what the refinement loop needs from an inference runtime.

A backend owns device memory and loads graphs into runners (Polygraphy's split of loaders
and runners). The loop allocates every buffer once per batch shape, binds each runner once
per buffer arrangement, and then only calls ``run`` — no host work between engine calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ..bundle import GraphSpec

Buffer = Any  # a device-resident tensor of the backend (OrtValue, CUDA pointer wrapper, ...)
Binding = Any  # a prepared call: a runner with its inputs and outputs bound


class Runner(Protocol):
    """One loaded graph (an ONNX Runtime session, a TensorRT execution context)."""

    spec: GraphSpec

    def bind(self, inputs: Mapping[str, Buffer], outputs: Mapping[str, Buffer]) -> Binding:
        """Prepare a call with buffers keyed by graph tensor name. Done once, reused per run."""

    def run(self, binding: Binding) -> None:
        """Execute a prepared call; outputs land in the bound buffers."""


class Backend(Protocol):
    name: str

    def load(self, spec: GraphSpec, path: Path) -> Runner:
        """Load the graph file at ``path`` described by ``spec``."""

    def empty(self, shape: Sequence[int], dtype: str) -> Buffer:
        """A device buffer of ``shape`` and ``dtype`` ("float32" or "float16")."""

    def upload(self, dst: Buffer, array: np.ndarray) -> None:
        """Copy a host array (same shape, dtype) into a device buffer."""

    def download(self, src: Buffer) -> np.ndarray:
        """Copy a device buffer into a new host array."""

    def close(self) -> None:
        """Release sessions and device memory."""
