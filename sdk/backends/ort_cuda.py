"""ONNX Runtime on NVIDIA GPUs: the execution-provider lists for ``backend="onnxruntime-cuda"``
and ``"onnxruntime-tensorrt"``, and GPU-resident inputs/outputs for :class:`OrtBackend`.

The loop's buffers are ``OrtValue``s allocated on ``"cuda"`` once per batch and bound through
IOBinding, so ORT runs every step on device memory. Device inputs are copied into those buffers
(and results out of them) with cuda-python on a stream of our own, followed by one stream
synchronisation: ORT runs its kernels on its own stream, which we cannot order against with an
event, and by default synchronises it at the end of each run, so a completed copy before the run
and ORT's own sync after it order everything without a host copy.

ORT's own CUDA-graph mode (``enable_cuda_graph``) is not used: it records one graph per session
with fixed bindings, while the loop binds each session to several buffer arrangements.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..device_arrays import DeviceArray, DeviceInput
from ..errors import BackendError

log = logging.getLogger(__name__)

ORT_GPU_HINT = (
    "pip install onnxruntime-gpu (after pip uninstall onnxruntime: both packages install the same 'onnxruntime' module)"
)


def ort_tensorrt_cache() -> Path:
    """Where ONNX Runtime's TensorRT provider keeps its engines: a per-user cache, not the bundle
    (bundles are verified by hash and may be read-only)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "gan-encoder-rt" / "ort-tensorrt"
    path.mkdir(parents=True, exist_ok=True)
    return path


def gpu_providers(available: list, kind: str, device_id: int, fp16: bool) -> list:
    """The ``providers`` argument of ``InferenceSession`` for ``kind`` "cuda" or "tensorrt"."""
    if "CUDAExecutionProvider" not in available:
        raise BackendError(
            f"onnxruntime has no CUDA execution provider here (available: {available}); "
            f"{ORT_GPU_HINT}; or use backend='onnxruntime' (CPU)"
        )
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if kind == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available:
        raise BackendError(
            f"onnxruntime has no TensorRT execution provider here (available: {available}); "
            f"install onnxruntime-gpu and the TensorRT major it was built with (TensorRT 10 for the "
            f"CUDA 12 wheels: pip install 'tensorrt-cu12>=10,<11'; TensorRT 11 does not load), or "
            f"use backend='onnxruntime-cuda'"
        )
    # nodes TensorRT cannot take fall back to CUDA, then CPU (the order is the priority)
    trt = (
        "TensorrtExecutionProvider",
        {
            "device_id": device_id,
            "trt_fp16_enable": bool(fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(ort_tensorrt_cache()),
        },
    )
    return [trt, cuda, "CPUExecutionProvider"]


def ortvalue_nbytes(value) -> int:
    """The byte size of a dense ``OrtValue`` from its shape and element type
    (``OrtValue.tensor_size_in_bytes`` exists only from onnxruntime 1.23)."""
    import numpy as np

    from .onnxruntime import _ORT_TYPES

    dtype = _ORT_TYPES.get(value.data_type())
    if dtype is None:
        raise BackendError(f"an OrtValue of {value.data_type()} is not a loop buffer (float32/float16 only)")
    return int(np.prod(value.shape(), dtype=np.int64)) * np.dtype(dtype).itemsize


class OrtDeviceIO:
    """Device-resident inputs/outputs of :class:`sdk.backends.onnxruntime.OrtBackend` on a GPU.
    Needs cuda-python (the ``gpu`` extra); a clear :class:`BackendError` says so otherwise."""

    memory = "cpu"  # where the backend's OrtValues live: "cpu" or "cuda"
    device_id = 0
    _cuda = None

    @property
    def device_io(self) -> bool:
        return self.memory == "cuda"

    def _runtime(self):
        if self._cuda is None:
            from .cuda import CudaRuntime

            self._cuda = CudaRuntime(self.device_id)
        return self._cuda

    @property
    def consumer_stream(self) -> int:
        return self._runtime().handle

    def put_device(self, dst, src: DeviceInput) -> None:
        rt = self._runtime()
        rt.copy_in(int(dst.data_ptr()), ortvalue_nbytes(dst), src)
        rt.synchronize()  # ORT reads dst on its own stream: the copy must have finished

    def fetch_device(self, src) -> DeviceArray:
        from .onnxruntime import _ORT_TYPES

        return self._runtime().device_copy(int(src.data_ptr()), tuple(src.shape()), _ORT_TYPES[src.data_type()])

    def synchronize(self) -> None:
        if self._cuda is not None:
            self._cuda.synchronize()

    def close_device_io(self) -> None:
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None
