"""The backend base classes: what the refinement loop needs from an inference runtime.

A backend owns device memory and loads graphs into runners (Polygraphy's split of loaders
and runners). The loop allocates every buffer once per batch shape, binds each runner once
per buffer arrangement, and then only calls ``run``: no host work between engine calls.

:class:`Backend` gives every optional ability a default, so callers never probe for one:

* ``files``: all of the graph's files (a backend that reads fewer, or others, says so);
* ``can_capture`` / ``capture``: no CUDA graphs (``capture`` runs the work eagerly, returns None);
* ``device_io`` / ``consumer_stream`` / ``put_device`` / ``fetch_device``: host memory only
  (the device copies raise :class:`sdk.errors.InputError` naming the GPU backends);
* ``synchronize``: nothing queued (a CPU backend's calls return when done);
* ``close``: nothing to release.

A new backend subclasses :class:`Backend` and :class:`Runner` and implements the abstract
methods; ``sdk/backends/__init__.py`` maps its name to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError
from ..manifest import GraphSpec

Buffer = Any  # a device-resident tensor of the backend (OrtValue, CUDA pointer wrapper, ...)
Binding = Any  # a prepared call: a runner with its inputs and outputs bound

DEVICE_IO_HINT = (
    "GPU-resident inputs and output='device' need a GPU backend (tensorrt, onnxruntime-cuda); "
    "pass numpy arrays (e.g. tensor.cpu().numpy()) and use output='host'"
)


class Replay(Protocol):
    """Recorded loop work (a CUDA graph), replayed on the backend's stream."""

    def launch(self) -> None: ...


class Runner(ABC):
    """One loaded graph (an ONNX Runtime session, a TensorRT engine)."""

    spec: GraphSpec

    @abstractmethod
    def bind(self, inputs: Mapping[str, Buffer], outputs: Mapping[str, Buffer]) -> Binding:
        """Prepare a call with buffers keyed by graph tensor name. Done once, reused per run."""

    @abstractmethod
    def run(self, binding: Binding) -> None:
        """Execute a prepared call; outputs land in the bound buffers."""

    def close(self) -> None:  # noqa: B027 - optional: a runner holding nothing releases nothing
        """Release the session or engine; the runner is not used afterwards."""


class Backend(ABC):
    """An inference runtime on one device: loads runners and owns their buffers."""

    name: str = "backend"
    can_capture: bool = False  # whether ``capture`` records CUDA graphs

    # ------------------------------------------------------------------ required
    @abstractmethod
    def load(self, spec: GraphSpec, path: Path) -> Runner:
        """Load the graph file at ``path`` described by ``spec``."""

    @abstractmethod
    def empty(self, shape: Sequence[int], dtype: str) -> Buffer:
        """A device buffer of ``shape`` and ``dtype`` ("float32" or "float16")."""

    @abstractmethod
    def upload(self, dst: Buffer, array: np.ndarray) -> None:
        """Copy a host array (same shape, dtype) into a device buffer."""

    @abstractmethod
    def download(self, src: Buffer) -> np.ndarray:
        """Copy a device buffer into a new host array."""

    # ------------------------------------------------------------------ optional, with defaults
    def files(self, spec: GraphSpec) -> list[str]:
        """The bundle files ``load`` will read for ``spec``, checked against the manifest's
        digests before it is called. Default: all of the graph's files."""
        return [name for name, _ in spec.files()]

    def capture(self, work: Callable[[], None]) -> Replay | None:
        """Run ``work`` (runner calls only: no host copies or syncs) once, its outputs being this
        call's, and record it for replay; None when it cannot be recorded. Default: run it, None."""
        work()
        return None

    @property
    def device_io(self) -> bool:
        """Whether the backend takes and returns GPU-resident arrays (:mod:`sdk.device_arrays`)."""
        return False

    @property
    def consumer_stream(self) -> int:
        """The CUDA stream device inputs are read on (handed to DLPack producers); 0: none."""
        return 0

    def put_device(self, dst: Buffer, src: Any) -> None:
        """Copy a :class:`sdk.device_arrays.DeviceInput` into a buffer, device to device."""
        raise InputError(f"backend {self.name} runs on the CPU: {DEVICE_IO_HINT}")

    def fetch_device(self, src: Buffer) -> Any:
        """A new :class:`sdk.device_arrays.DeviceArray` holding a copy of a buffer (queued)."""
        raise InputError(f"backend {self.name} runs on the CPU: {DEVICE_IO_HINT}")

    def synchronize(self) -> None:  # noqa: B027 - optional: a CPU backend's calls return when done
        """Wait for the queued work (before device results are handed out). Default: none queued."""

    def close(self) -> None:  # noqa: B027 - optional: a backend holding nothing releases nothing
        """Release sessions and device memory."""
