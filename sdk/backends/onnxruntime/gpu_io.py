"""GPU-resident inputs and outputs of the ONNX Runtime backend on CUDA.

The loop's buffers are ``OrtValue``s allocated on ``"cuda"`` once per batch and bound through
IOBinding, so ORT runs every step on device memory. Device inputs are copied into those buffers
(and results out of them) with cuda-python on a stream of our own, followed by one stream
synchronisation: ORT runs its kernels on its own stream, which we cannot order against with an
event, and by default synchronises it at the end of each run, so a completed copy before the run
and ORT's own sync after it order everything without a host copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...device_arrays import DeviceArray, DeviceInput
from .tensors import ORT_TYPES, ortvalue_nbytes

if TYPE_CHECKING:
    from ..cuda import CudaRuntime


class OrtGpuIO:
    """Copies between ``OrtValue`` buffers on GPU ``device_id`` and other libraries' CUDA memory,
    held by :class:`sdk.backends.onnxruntime.OrtBackend` on CUDA. Needs cuda-python (the ``gpu``
    extra), imported on first use; a clear :class:`sdk.errors.BackendError` says so otherwise."""

    def __init__(self, device_id: int):
        self.device_id = device_id
        self._cuda: CudaRuntime | None = None

    def runtime(self) -> CudaRuntime:
        """The CUDA stream and copies, made on first use (a session without device I/O needs none)."""
        if self._cuda is None:
            from ..cuda import CudaRuntime

            self._cuda = CudaRuntime(self.device_id)
        return self._cuda

    @property
    def consumer_stream(self) -> int:
        return self.runtime().handle

    def put(self, dst: Any, src: DeviceInput) -> None:
        """Copy ``src`` into the ``OrtValue`` ``dst`` and wait for the copy."""
        rt = self.runtime()
        rt.copy_in(int(dst.data_ptr()), ortvalue_nbytes(dst), src)
        rt.synchronize()  # ORT reads dst on its own stream: the copy must have finished

    def fetch(self, src: Any) -> DeviceArray:
        """A new device array holding a copy of the ``OrtValue`` ``src`` (queued on our stream)."""
        return self.runtime().device_copy(int(src.data_ptr()), tuple(src.shape()), ORT_TYPES[src.data_type()])

    def synchronize(self) -> None:
        if self._cuda is not None:
            self._cuda.synchronize()

    def close(self) -> None:
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None
