"""ONNX Runtime backend: sessions with IOBinding over ``OrtValue`` buffers allocated once.

Runs on the CPU execution provider everywhere and on CUDA (or ORT's TensorRT provider) where
onnxruntime-gpu is installed; the loop code is the same for all. The CPU graph choice is
``cpu.py``, the GPU provider lists ``providers.py``, and GPU-resident inputs/outputs a component
the backend holds on CUDA (``gpu_io.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...device_arrays import DeviceArray, DeviceInput
from ...errors import BackendError, BundleError
from ...manifest import GraphSpec
from ..base import Backend, Runner
from .cpu import choose_graph, configure, graph_files
from .gpu_io import OrtGpuIO
from .providers import gpu_providers
from .tensors import NP_DTYPES, tensor_mismatch

log = logging.getLogger(__name__)


def import_ort() -> Any:
    """The ``onnxruntime`` module, imported when a backend is made (tests substitute it)."""
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a hard dependency
        raise BackendError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu for CUDA)") from e
    return onnxruntime


class OrtRunner(Runner):
    """One ``InferenceSession``; ``bind`` returns a prepared ``IOBinding``."""

    def __init__(self, backend: OrtBackend, spec: GraphSpec, path: Path):
        ort = backend.ort
        self.spec = spec
        opts = backend.session_options()
        if backend.device == "cpu":  # the build machine's optimised graph, where it fits this machine
            path, preoptimised = choose_graph(spec, path, ort)
            configure(opts, ort, preoptimised)
        try:
            self.session: Any = ort.InferenceSession(str(path), sess_options=opts, providers=backend.providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            raise BundleError(
                f"ONNX Runtime could not load {path} ({type(e).__name__}: {e}); the file is "
                f"corrupt or not an ONNX graph. Rebuild with export/build_engines.py"
            ) from None
        names = {i.name for i in self.session.get_inputs()} | {o.name for o in self.session.get_outputs()}
        wanted = {t.name for t in spec.inputs + spec.outputs}
        if names != wanted:
            raise BundleError(
                f"{path} has tensors {sorted(names)} but the manifest declares {sorted(wanted)}; "
                f"the graph and manifest come from different builds. Rebuild the bundle"
            )
        declared = {t.name: t for t in spec.inputs + spec.outputs}
        for arg in self.session.get_inputs() + self.session.get_outputs():
            problem = tensor_mismatch(declared[arg.name], arg.shape, arg.type)
            if problem:
                raise BundleError(
                    f"{path}: tensor {arg.name!r} is {problem}; the graph and manifest come from "
                    f"different builds. Rebuild the bundle with export/build_engines.py"
                )

    def bind(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        return binding

    def run(self, binding: Any) -> None:
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:  # onnxruntime's own exception types
            raise BackendError(
                f"ONNX Runtime failed running graph {self.spec.key!r} ({type(e).__name__}: {e})"
            ) from None

    def close(self) -> None:
        """Drop the session (its memory returns when the loop's bindings are gone too)."""
        self.session = None


class OrtBackend(Backend):
    """``device="cpu"``, ``"cuda"`` or ``"tensorrt"`` (ORT's TensorRT provider; both need
    onnxruntime-gpu) on GPU ``device_id``; ``threads`` caps intra-op threads; ``fp16`` lets ORT's
    TensorRT provider pick FP16 kernels."""

    name = "onnxruntime"

    def __init__(self, device: str = "cpu", device_id: int = 0, threads: int | None = None, fp16: bool = False):
        self.ort = import_ort()
        available = self.ort.get_available_providers()
        if device in ("cuda", "tensorrt"):
            self.providers = gpu_providers(available, device, device_id, fp16)
        elif device == "cpu":
            self.providers = ["CPUExecutionProvider"]
        else:
            raise BackendError(
                f"unknown device {device!r} for the onnxruntime backend; expected 'cpu', 'cuda' or 'tensorrt'"
            )
        self.device, self.device_id, self.threads = device, device_id, threads
        self.memory = "cpu" if device == "cpu" else "cuda"  # where OrtValues live (TensorRT's are CUDA memory)
        self.gpu_io = OrtGpuIO(device_id) if self.memory == "cuda" else None

    @staticmethod
    def cuda_available() -> bool:
        try:
            return "CUDAExecutionProvider" in import_ort().get_available_providers()
        except BackendError:
            return False

    def session_options(self) -> Any:
        opts = self.ort.SessionOptions()
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if self.device == "cpu":
            # The memory pattern reserves one block for the planned peak of every intermediate,
            # reorder copies included: hundreds of MB more per session at reference scale than
            # allocating from the arena as the graph runs, for no speed (docs/measurements/runtime.md)
            opts.enable_mem_pattern = False
            # A translation alternates sessions (encoder, generator) with numpy work between
            # them; each session's intra-op threads would otherwise spin on after its Run()
            # returns, taking cores from the next session (docs/measurements/runtime.md). Threads
            # still spin inside a Run().
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        return opts

    def files(self, spec: GraphSpec) -> list[str]:
        """The bundle files ``load`` reads for ``spec``: the build machine's optimised graph and its
        weights where the CPU provider can use them, else the portable graph."""
        return graph_files(spec, self.ort) if self.device == "cpu" else [spec.file]

    def load(self, spec: GraphSpec, path: Path) -> OrtRunner:
        return OrtRunner(self, spec, path)

    def empty(self, shape: Sequence[int], dtype: str) -> Any:
        return self.ort.OrtValue.ortvalue_from_shape_and_type(
            list(shape), NP_DTYPES[dtype], self.memory, self.device_id
        )

    def upload(self, dst: Any, array: np.ndarray) -> None:
        dtype = np.float16 if dst.data_type() == "tensor(float16)" else np.float32
        dst.update_inplace(np.ascontiguousarray(array, dtype=dtype))

    def download(self, src: Any) -> np.ndarray:
        return np.array(src.numpy(), copy=True)

    # ------------------------------------------------------------------ device I/O (CUDA memory only)
    @property
    def device_io(self) -> bool:
        return self.gpu_io is not None

    @property
    def consumer_stream(self) -> int:
        return 0 if self.gpu_io is None else self.gpu_io.consumer_stream

    def put_device(self, dst: Any, src: DeviceInput) -> None:
        if self.gpu_io is None:
            return super().put_device(dst, src)
        self.gpu_io.put(dst, src)

    def fetch_device(self, src: Any) -> DeviceArray:
        if self.gpu_io is None:
            return super().fetch_device(src)
        return self.gpu_io.fetch(src)

    def synchronize(self) -> None:
        if self.gpu_io is not None:
            self.gpu_io.synchronize()

    def close(self) -> None:
        if self.gpu_io is not None:
            self.gpu_io.close()
