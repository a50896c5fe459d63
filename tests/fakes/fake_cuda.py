"""A fake ``cuda.bindings.runtime`` (cuda-python): host memory posing as device memory.

Only the calls ``sdk/backends/cuda.py`` and ``sdk/device_arrays.py`` make. Each returns a tuple
whose first element is the error code, like cuda-python. ``calls`` records (name, args) in order;
``fail`` maps a call name to an error code to return once (fault injection). The current device
is per host thread (``cudaSetDevice`` in one thread leaves the others on device 0), and memory
is allocated on the calling thread's current device.

Streams are queues, as on a GPU: work enqueued on a stream (copies, fake engine kernels, graph
launches) runs only when something waits for it — ``cudaStreamSynchronize`` of that stream, a
synchronous call that waits for the device (``cudaFree``, ``cudaDeviceSynchronize``; ``cudaMemcpy``
waits for the legacy default stream), or another stream that reaches a ``cudaStreamWaitEvent`` on
an event recorded after it (``cudaEventRecord`` marks the recording stream's queue position).
Nothing orders two streams implicitly (ours are ``cudaStreamNonBlocking``), so a read that is not
ordered after a producer's write sees the old memory. The legacy (1) and per-thread (2) default
streams are queues too; :meth:`FakeCudart.enqueue` puts producer work there.

While a stream is capturing (``cudaStreamBeginCapture``) its work is recorded as graph nodes
instead (kernel nodes come from the fake TensorRT's ``execute_async_v3``, memcpy nodes from
``cudaMemcpyAsync``) and queued only when an instantiated graph is launched. As in CUDA's global
and thread-local capture modes, a synchronising call during capture (stream sync, ``cudaMalloc``,
``cudaMemcpy``) fails with ``cudaErrorStreamCaptureUnsupported`` and invalidates the capture.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import threading
import types
from dataclasses import dataclass

from .fake_streams import QueuedStreams


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaGraphNodeType(enum.IntEnum):
    cudaGraphNodeTypeKernel = 0
    cudaGraphNodeTypeMemcpy = 1


class cudaMemoryType(enum.IntEnum):
    cudaMemoryTypeUnregistered = 0
    cudaMemoryTypeHost = 1
    cudaMemoryTypeDevice = 2
    cudaMemoryTypeManaged = 3


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


@dataclass
class _PointerAttributes:
    type: cudaMemoryType
    device: int


@dataclass
class Node:
    """A recorded piece of stream work: ``run`` does it when a graph is launched."""

    kind: cudaGraphNodeType
    what: str
    run: object


@dataclass
class Graph:
    nodes: list


@dataclass
class GraphExec:
    nodes: list


class FakeCudart(QueuedStreams):
    """The module object installed as ``cuda.bindings.runtime``."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaGraphNodeType = cudaGraphNodeType
    cudaMemoryType = cudaMemoryType
    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2
    LEGACY_STREAM, PER_THREAD_STREAM = 1, 2  # the CUDA Array Interface's special stream values

    def __init__(self, devices: int = 1, name: str = "Fake GPU (host memory)", capability=(8, 6)):
        self.devices, self.gpu_name, self.capability = devices, name, capability
        self.driver_version, self.runtime_version = 12080, 12090  # cudaDriverGetVersion / cudaRuntimeGetVersion
        self.device_mem: dict[int, ctypes.Array] = {}  # ptr -> backing buffer
        self.host_mem: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.calls: list[tuple] = []
        self.fail: dict[str, cudaError_t] = {}
        self._next_stream = 0x5000
        self._thread = threading.local()  # the current device is per host thread, as in CUDA
        self.ptr_device: dict[int, int] = {}  # device allocation -> the device it lives on
        self.capturing: dict[int, dict] = {}  # stream -> {"mode", "nodes", "invalidated"}
        self.graphs: set[int] = set()  # ids of live Graph / GraphExec objects (leak checks)
        self.events: dict[int, tuple | None] = {}  # event -> (stream, queue position) of its last record
        self.queues: dict[int, list] = {}  # stream -> work not yet run, in order
        self.queued: dict[int, int] = {}  # stream -> work items ever enqueued (queue positions)
        self.completed: dict[int, int] = {}  # stream -> work items run
        self.launches = 0
        self._adopted: list = []

    @property
    def current_device(self) -> int:
        """This host thread's current device (0 until it calls ``cudaSetDevice``)."""
        return getattr(self._thread, "device", 0)

    @current_device.setter
    def current_device(self, device: int) -> None:
        self._thread.device = device

    def cudaGetDevice(self):
        self._call("cudaGetDevice")
        return (cudaError_t.cudaSuccess, self.current_device)

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
        err = self._call("cudaSetDevice", device, threading.get_ident())
        ok = err is None and 0 <= device < self.devices
        if ok:
            self.current_device = device
        return (cudaError_t.cudaSuccess if ok else (err or cudaError_t.cudaErrorInvalidValue),)

    def cudaGetDeviceProperties(self, device):
        err = self._call("cudaGetDeviceProperties", device)
        if err or not 0 <= device < self.devices:
            return (err or cudaError_t.cudaErrorInvalidValue, None)
        return (cudaError_t.cudaSuccess, _Props(self.gpu_name.encode(), *self.capability, 16 << 30))

    def cudaDriverGetVersion(self):
        return (cudaError_t.cudaSuccess, self.driver_version)

    def cudaRuntimeGetVersion(self):
        return (cudaError_t.cudaSuccess, self.runtime_version)

    def cudaGetErrorName(self, err):
        return (cudaError_t.cudaSuccess, cudaError_t(err).name.encode())

    # ------------------------------------------------------------------ memory
    def _alloc(self, table, nbytes):
        buf = (ctypes.c_uint8 * int(nbytes))()
        ptr = ctypes.addressof(buf)
        table[ptr] = buf
        return ptr

    def cudaMalloc(self, nbytes):
        err = self._call("cudaMalloc", nbytes) or self._unsafe_during_capture()
        if err:
            return (err, 0)
        ptr = self._alloc(self.device_mem, nbytes)
        self.ptr_device[ptr] = self.current_device
        return (cudaError_t.cudaSuccess, ptr)

    def adopt(self, ptr: int, nbytes: int, owner) -> None:
        """Register memory another fake allocated (fake ORT "CUDA" OrtValues) as device memory."""
        self.device_mem[int(ptr)] = (ctypes.c_uint8 * int(nbytes)).from_address(int(ptr))
        self.ptr_device[int(ptr)] = self.current_device
        self._adopted.append(owner)

    def cudaMallocHost(self, nbytes):
        err = self._call("cudaMallocHost", nbytes) or self._unsafe_during_capture()
        if err:
            return (err, 0)
        return (cudaError_t.cudaSuccess, self._alloc(self.host_mem, nbytes))

    def cudaFree(self, ptr):
        self._call("cudaFree", ptr)
        self.run_all()  # cudaFree waits for the device, as in CUDA
        self.ptr_device.pop(int(ptr), None)
        return (
            cudaError_t.cudaSuccess
            if self.device_mem.pop(int(ptr), None) is not None
            else cudaError_t.cudaErrorInvalidValue,
        )

    def cudaFreeHost(self, ptr):
        self._call("cudaFreeHost", ptr)
        return (
            cudaError_t.cudaSuccess
            if self.host_mem.pop(int(ptr), None) is not None
            else cudaError_t.cudaErrorInvalidValue,
        )

    def region(self, table, ptr: int, nbytes: int) -> bool:
        """Is [ptr, ptr + nbytes) inside one allocation of ``table``?"""
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in table.items())

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        err = self._call("cudaMemcpyAsync", int(dst), int(src), int(count), cudaMemcpyKind(kind), int(stream))
        if err:
            return (err,)
        dst_table, src_table = {
            cudaMemcpyKind.cudaMemcpyHostToDevice: (self.device_mem, self.host_mem),
            cudaMemcpyKind.cudaMemcpyDeviceToHost: (self.host_mem, self.device_mem),
            cudaMemcpyKind.cudaMemcpyDeviceToDevice: (self.device_mem, self.device_mem),
        }[kind]
        if (
            int(stream) not in self.streams
            or not self.region(dst_table, int(dst), count)
            or not self.region(src_table, int(src), count)
        ):
            return (cudaError_t.cudaErrorInvalidValue,)
        self.enqueue(
            int(stream),
            cudaGraphNodeType.cudaGraphNodeTypeMemcpy,
            cudaMemcpyKind(kind).name,
            lambda: ctypes.memmove(int(dst), int(src), int(count)),
        )
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst, src, count, kind):
        """Synchronous copy; here only device to host (``DeviceArray.numpy``) is needed."""
        err = (
            self._call("cudaMemcpy", int(dst), int(src), int(count), cudaMemcpyKind(kind))
            or self._unsafe_during_capture()
        )
        if err:
            return (err,)
        if kind != cudaMemcpyKind.cudaMemcpyDeviceToHost or not self.region(self.device_mem, int(src), count):
            return (cudaError_t.cudaErrorInvalidValue,)
        self.run_until(self.LEGACY_STREAM)  # a synchronous copy runs on the legacy default stream
        ctypes.memmove(int(dst), int(src), int(count))
        return (cudaError_t.cudaSuccess,)

    def cudaPointerGetAttributes(self, ptr):
        self._call("cudaPointerGetAttributes", int(ptr))
        for base, buf in self.device_mem.items():
            if base <= int(ptr) < base + len(buf):
                return (
                    cudaError_t.cudaSuccess,
                    _PointerAttributes(cudaMemoryType.cudaMemoryTypeDevice, self.ptr_device.get(base, 0)),
                )
        kind = (
            cudaMemoryType.cudaMemoryTypeHost
            if self.region(self.host_mem, int(ptr), 1)
            else cudaMemoryType.cudaMemoryTypeUnregistered
        )
        return (cudaError_t.cudaSuccess, _PointerAttributes(kind, -2))

    # ------------------------------------------------------------------ work, capture and graphs
    def is_capturing(self, stream) -> bool:
        return int(stream) in self.capturing

    def synchronous_call(self, what: str):
        """Stands in for a library's own synchronising CUDA calls (TensorRT's setup on a context's
        first enqueue): recorded, and an error while a strict capture is running."""
        self._call("synchronous_call", what)
        return self._unsafe_during_capture()

    def _unsafe_during_capture(self):
        """Global and thread-local capture forbid synchronising calls: they fail and invalidate."""
        strict = [c for c in self.capturing.values() if c["mode"] != cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed]
        for capture in strict:
            capture["invalidated"] = True
        return cudaError_t.cudaErrorStreamCaptureUnsupported if strict else None

    def cudaStreamBeginCapture(self, stream, mode):
        err = self._call("cudaStreamBeginCapture", int(stream), cudaStreamCaptureMode(mode))
        if err:
            return (err,)
        if int(stream) not in self.streams or int(stream) in self.capturing:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.capturing[int(stream)] = {"mode": cudaStreamCaptureMode(mode), "nodes": [], "invalidated": False}
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        self._call("cudaStreamEndCapture", int(stream))
        capture = self.capturing.pop(int(stream), None)
        if capture is None:
            return (cudaError_t.cudaErrorInvalidValue, None)
        if capture["invalidated"]:
            return (cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        graph = Graph(capture["nodes"])
        self.graphs.add(id(graph))
        return (cudaError_t.cudaSuccess, graph)

    def cudaGraphInstantiateWithFlags(self, graph, flags):
        self._call("cudaGraphInstantiateWithFlags", flags)
        exe = GraphExec(list(graph.nodes))
        self.graphs.add(id(exe))
        return (cudaError_t.cudaSuccess, exe)

    def cudaGraphLaunch(self, exe, stream):
        self._call("cudaGraphLaunch", int(stream))
        if id(exe) not in self.graphs or int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.launches += 1
        for node in exe.nodes:
            self.enqueue(int(stream), node.kind, node.what, node.run)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphGetNodes(self, graph, count=0):
        return (cudaError_t.cudaSuccess, list(graph.nodes)[:count], len(graph.nodes))

    def cudaGraphNodeGetType(self, node):
        return (cudaError_t.cudaSuccess, node.kind)

    def cudaGraphExecDestroy(self, exe):
        self._call("cudaGraphExecDestroy")
        self.graphs.discard(id(exe))
        return (cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph):
        self._call("cudaGraphDestroy")
        self.graphs.discard(id(graph))
        return (cudaError_t.cudaSuccess,)

    def cudaGetLastError(self):
        self._call("cudaGetLastError")
        return (cudaError_t.cudaSuccess,)

    # ------------------------------------------------------------------ streams
    def cudaStreamCreateWithFlags(self, flags):
        self._call("cudaStreamCreateWithFlags", flags)
        self._next_stream += 16
        self.streams.add(self._next_stream)
        return (cudaError_t.cudaSuccess, cudaStream_t(self._next_stream))

    def cudaStreamSynchronize(self, stream):
        self._call("cudaStreamSynchronize", int(stream))
        if int(stream) in self.capturing:
            return (self._unsafe_during_capture() or cudaError_t.cudaErrorStreamCaptureUnsupported,)
        if not self._known_stream(stream):
            return (cudaError_t.cudaErrorInvalidValue,)
        self.run_until(stream)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        self._call("cudaStreamDestroy", int(stream))
        self.run_until(stream)  # queued work still completes, as in CUDA
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
