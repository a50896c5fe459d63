"""A fake ``cuda.bindings.runtime`` (cuda-python): host memory posing as device memory.

Only the calls ``sdk/backends/cuda.py`` makes. Each returns a tuple whose first element is
the error code, like cuda-python. ``calls`` records (name, args) in order; ``fail`` maps a
call name to an error code to return once (fault injection).
"""
from __future__ import annotations

import ctypes
import enum
import sys
import types
from dataclasses import dataclass


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:
    def __init__(self, value: int):
        self.value = value

    def __int__(self) -> int:
        return self.value


@dataclass
class _Props:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int


class FakeCudart:
    """The module object installed as ``cuda.bindings.runtime``."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamNonBlocking = 1

    def __init__(self, devices: int = 1, name: str = "Fake GPU (host memory)", capability=(8, 6)):
        self.devices, self.gpu_name, self.capability = devices, name, capability
        self.device_mem: dict[int, ctypes.Array] = {}  # ptr -> backing buffer
        self.host_mem: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.calls: list[tuple] = []
        self.fail: dict[str, cudaError_t] = {}
        self._next_stream = 0x5000

    def _call(self, name: str, *args):
        self.calls.append((name, args))
        err = self.fail.pop(name, None)
        return err

    # ------------------------------------------------------------------ device
    def cudaGetDeviceCount(self):
        err = self._call("cudaGetDeviceCount")
        if err or self.devices == 0:
            return (err or cudaError_t.cudaErrorNoDevice, 0)
        return (cudaError_t.cudaSuccess, self.devices)

    def cudaSetDevice(self, device):
        err = self._call("cudaSetDevice", device)
        ok = err is None and 0 <= device < self.devices
        return (cudaError_t.cudaSuccess if ok else (err or cudaError_t.cudaErrorInvalidValue),)

    def cudaGetDeviceProperties(self, device):
        err = self._call("cudaGetDeviceProperties", device)
        if err or not 0 <= device < self.devices:
            return (err or cudaError_t.cudaErrorInvalidValue, None)
        return (cudaError_t.cudaSuccess, _Props(self.gpu_name.encode(), *self.capability, 16 << 30))

    def cudaGetErrorName(self, err):
        return (cudaError_t.cudaSuccess, cudaError_t(err).name.encode())

    # ------------------------------------------------------------------ memory
    def _alloc(self, table, nbytes):
        buf = (ctypes.c_uint8 * int(nbytes))()
        ptr = ctypes.addressof(buf)
        table[ptr] = buf
        return ptr

    def cudaMalloc(self, nbytes):
        err = self._call("cudaMalloc", nbytes)
        if err:
            return (err, 0)
        return (cudaError_t.cudaSuccess, self._alloc(self.device_mem, nbytes))

    def cudaMallocHost(self, nbytes):
        err = self._call("cudaMallocHost", nbytes)
        if err:
            return (err, 0)
        return (cudaError_t.cudaSuccess, self._alloc(self.host_mem, nbytes))

    def cudaFree(self, ptr):
        self._call("cudaFree", ptr)
        return (cudaError_t.cudaSuccess if self.device_mem.pop(int(ptr), None) is not None
                else cudaError_t.cudaErrorInvalidValue,)

    def cudaFreeHost(self, ptr):
        self._call("cudaFreeHost", ptr)
        return (cudaError_t.cudaSuccess if self.host_mem.pop(int(ptr), None) is not None
                else cudaError_t.cudaErrorInvalidValue,)

    def region(self, table, ptr: int, nbytes: int) -> bool:
        """Is [ptr, ptr + nbytes) inside one allocation of ``table``?"""
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in table.items())

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        err = self._call("cudaMemcpyAsync", int(dst), int(src), int(count), cudaMemcpyKind(kind), int(stream))
        if err:
            return (err,)
        dst_table, src_table = {cudaMemcpyKind.cudaMemcpyHostToDevice: (self.device_mem, self.host_mem),
                                cudaMemcpyKind.cudaMemcpyDeviceToHost: (self.host_mem, self.device_mem),
                                cudaMemcpyKind.cudaMemcpyDeviceToDevice: (self.device_mem, self.device_mem)}[kind]
        if (int(stream) not in self.streams or not self.region(dst_table, int(dst), count)
                or not self.region(src_table, int(src), count)):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), int(count))
        return (cudaError_t.cudaSuccess,)

    # ------------------------------------------------------------------ streams
    def cudaStreamCreateWithFlags(self, flags):
        self._call("cudaStreamCreateWithFlags", flags)
        self._next_stream += 16
        self.streams.add(self._next_stream)
        return (cudaError_t.cudaSuccess, cudaStream_t(self._next_stream))

    def cudaStreamSynchronize(self, stream):
        self._call("cudaStreamSynchronize", int(stream))
        return (cudaError_t.cudaSuccess if int(stream) in self.streams else cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamDestroy(self, stream):
        self._call("cudaStreamDestroy", int(stream))
        self.streams.discard(int(stream))
        return (cudaError_t.cudaSuccess,)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def install(monkeypatch, cudart: FakeCudart) -> FakeCudart:
    """Make ``from cuda.bindings import runtime`` return ``cudart`` for this test."""
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return cudart
