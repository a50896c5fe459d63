"""The backend protocol: what the refinement loop needs from an inference runtime.

A backend owns device memory and loads graphs into runners (Polygraphy's split of loaders
and runners). The loop allocates every buffer once per batch shape, binds each runner once
per buffer arrangement, and then only calls ``run`` — no host work between engine calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

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

    def files(self, spec: GraphSpec) -> list[str]:
        """The bundle files ``load`` will read for ``spec``, checked against the manifest's
        digests before it is called (the loop falls back to all of the graph's files where a
        backend lacks this method)."""

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


# --------------------------------------------------------------------------- optional abilities
# A backend offers these only where it can; the loop and Translator test for them with hasattr /
# getattr and fall back (eager runs; InputError for device arrays on a CPU backend).


class Replay(Protocol):
    """Recorded loop work (a CUDA graph), replayed on the backend's stream."""

    def launch(self) -> None: ...


class GraphCapture(Protocol):
    def capture(self, work: Callable[[], None]) -> Replay | None:
        """Run ``work`` (runner calls only: no host copies or syncs) once — its outputs are this
        call's — and record it for replay; None when it cannot be recorded."""


class DeviceIO(Protocol):
    """GPU-resident inputs and outputs (``sdk.device_arrays``), where ``device_io`` is true."""

    device_io: bool
    consumer_stream: int  # the stream device inputs are read on (handed to DLPack producers)

    def put_device(self, dst: Buffer, src: Any) -> None:
        """Copy a :class:`sdk.device_arrays.DeviceInput` into a buffer, device to device."""

    def fetch_device(self, src: Buffer) -> Any:
        """A new :class:`sdk.device_arrays.DeviceArray` holding a copy of a buffer (queued)."""

    def synchronize(self) -> None:
        """Wait for the queued work (before device results are handed out)."""
