"""CUDA memory and streams through cuda-python (``cuda.bindings.runtime``), as NVIDIA's TensorRT
samples do; pycuda is not needed.

Every ``cudart`` call returns a tuple whose first element is the error code; :func:`check`
turns a failure into a :class:`sdk.BackendError` naming the call. :class:`CudaRuntime` owns one
non-blocking stream, the device buffers it allocated and one pinned host mirror per buffer, so
uploads and downloads are asynchronous copies on that stream and nothing else touches the host.
"""
from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import BackendError

log = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}
INSTALL_HINT = "pip install 'cuda-python>=12' (see the README's GPU section)"


def import_cudart():
    """``cuda.bindings.runtime`` (cuda-python >= 12.6), else the older ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as e:
            raise BackendError(f"cuda-python is not installed; {INSTALL_HINT}") from e
    return cudart


def check(cudart, result, what: str):
    """Unpack a ``cudart`` result tuple; raise :class:`BackendError` on a CUDA error."""
    err, rest = result[0], tuple(result[1:])
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            name = cudart.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the error name is a courtesy; never mask the real failure
            name = str(err)
        raise BackendError(f"CUDA {what} failed: {name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def device_count() -> int:
    """Number of visible CUDA devices; 0 without cuda-python, a driver or a GPU."""
    try:
        cudart = import_cudart()
        return int(check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    except BackendError:
        return 0


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "8.6"
    total_memory: int

    def as_dict(self) -> dict:
        return {"name": self.name, "compute_capability": self.compute_capability, "total_memory": self.total_memory}


def device_info(device: int = 0) -> DeviceInfo:
    cudart = import_cudart()
    prop = check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(device, name.rstrip("\x00"), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


@dataclass
class DeviceBuffer:
    """A contiguous device allocation of ``shape`` and ``dtype``; ``ptr`` is the device address."""

    ptr: int
    shape: tuple
    dtype: str
    nbytes: int
    host: np.ndarray | None = None  # pinned host mirror for uploads/downloads, made on first use
    host_ptr: int = 0


def stream_handle(stream) -> int:
    """The integer handle TensorRT's ``execute_async_v3`` takes."""
    try:
        return int(stream)
    except TypeError:
        return int(stream.getPtr())


class CudaRuntime:
    """One device, one non-blocking stream, and every buffer allocated through it."""

    def __init__(self, device: int = 0):
        self.cudart = cudart = import_cudart()
        self.device = device
        check(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
        flags = getattr(cudart, "cudaStreamNonBlocking", None)
        if flags is not None:
            self.stream = check(cudart, cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        else:
            self.stream = check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = stream_handle(self.stream)
        self._buffers: list[DeviceBuffer] = []
        self._scratch: list[int] = []

    # ------------------------------------------------------------------ memory
    def empty(self, shape: Sequence[int], dtype: str) -> DeviceBuffer:
        if dtype not in _NP_DTYPES:
            raise BackendError(f"unsupported buffer dtype {dtype!r}; expected float32 or float16")
        shape = tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape)) * np.dtype(_NP_DTYPES[dtype]).itemsize
        ptr = check(self.cudart, self.cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        buf = DeviceBuffer(int(ptr), shape, dtype, nbytes)
        self._buffers.append(buf)
        return buf

    def scratch(self, nbytes: int) -> int:
        """Raw device memory (TensorRT activation memory shared by the contexts of one engine)."""
        ptr = int(check(self.cudart, self.cudart.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))
        self._scratch.append(ptr)
        return ptr

    def _mirror(self, buf: DeviceBuffer) -> np.ndarray:
        if buf.host is None:
            ptr = int(check(self.cudart, self.cudart.cudaMallocHost(buf.nbytes), f"cudaMallocHost({buf.nbytes})"))
            raw = (ctypes.c_uint8 * buf.nbytes).from_address(ptr)
            buf.host = np.frombuffer(raw, dtype=_NP_DTYPES[buf.dtype]).reshape(buf.shape)
            buf.host_ptr = ptr
        return buf.host

    # ------------------------------------------------------------------ copies
    def upload(self, dst: DeviceBuffer, array: np.ndarray) -> None:
        """Host array → device buffer, asynchronously on the stream (through the pinned mirror)."""
        if tuple(array.shape) != dst.shape:
            raise BackendError(f"upload of shape {list(array.shape)} into a buffer of shape {list(dst.shape)}")
        host = self._mirror(dst)
        self.synchronize()  # the mirror may still feed an earlier copy
        np.copyto(host, array, casting="same_kind")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart, self.cudart.cudaMemcpyAsync(dst.ptr, dst.host_ptr, dst.nbytes, kind, self.stream),
              "cudaMemcpyAsync (host to device)")

    def download(self, src: DeviceBuffer) -> np.ndarray:
        """Device buffer → new host array; waits for the stream (the loop's only sync point)."""
        host = self._mirror(src)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart, self.cudart.cudaMemcpyAsync(src.host_ptr, src.ptr, src.nbytes, kind, self.stream),
              "cudaMemcpyAsync (device to host)")
        self.synchronize()
        return np.array(host, copy=True)

    def synchronize(self) -> None:
        check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self.cudart is None:
            return
        cudart, self.cudart = self.cudart, None
        try:
            check(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        finally:
            for buf in self._buffers:
                cudart.cudaFree(buf.ptr)
                if buf.host_ptr:
                    cudart.cudaFreeHost(buf.host_ptr)
                buf.host, buf.host_ptr = None, 0
            for ptr in self._scratch:
                cudart.cudaFree(ptr)
            cudart.cudaStreamDestroy(self.stream)
            self._buffers.clear()
            self._scratch.clear()
