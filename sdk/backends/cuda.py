"""CUDA memory and streams through cuda-python (``cuda.bindings.runtime``), as NVIDIA's TensorRT
samples do; pycuda is not needed.

Every ``cudart`` call returns a tuple whose first element is the error code; :func:`check`
turns a failure into a :class:`sdk.BackendError` naming the call. :class:`CudaRuntime` owns one
non-blocking stream, the device buffers it allocated and one pinned host mirror per buffer, so
uploads and downloads are asynchronous copies on that stream and nothing else touches the host.

It also records work on that stream into CUDA graphs (:meth:`CudaRuntime.capture`, replayed by
:class:`CudaGraph`) and copies between its buffers and other libraries' device memory
(:meth:`CudaRuntime.copy_in`, :meth:`CudaRuntime.device_copy`) for GPU-resident inputs/outputs.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..device_arrays import DeviceArray, DeviceInput
from ..errors import BackendError, InputError

log = logging.getLogger(__name__)

_NP_DTYPES: dict[str, type[np.floating]] = {"float32": np.float32, "float16": np.float16}
INSTALL_HINT = (
    "pip install 'gan-encoder-rt[gpu-cu12]' (cuda-python 12 + TensorRT 10, driver >= 525) or "
    "'[gpu-cu13]' (cuda-python 13 + TensorRT 11, driver >= 580); see the README's GPU section"
)
# the oldest Linux driver each CUDA major runs on (minor-version compatibility)
DRIVER_FOR_CUDA = {12: 525, 13: 580}


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
        name = _error_name(cudart, err)
        if name == "cudaErrorInsufficientDriver":
            raise BackendError(f"CUDA {what} failed: {insufficient_driver(cudart)}")
        raise BackendError(f"CUDA {what} failed: {name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def device_count() -> int:
    """Number of visible CUDA devices; 0 without cuda-python, a driver or a GPU."""
    return cuda_status()[0]


def cuda_status() -> tuple[int, str | None]:
    """(visible CUDA devices, why none: cuda-python missing, the CUDA error's name, or the driver
    too old for this cuda-python's CUDA runtime)."""
    try:
        cudart = import_cudart()
    except BackendError as e:
        return 0, str(e)
    result = cudart.cudaGetDeviceCount()
    if result[0] == cudart.cudaError_t.cudaSuccess:
        count = int(result[1])
        return count, None if count else "no CUDA device is visible (cudaGetDeviceCount returned 0)"
    name = _error_name(cudart, result[0])
    if name == "cudaErrorInsufficientDriver":
        return 0, insufficient_driver(cudart)
    return 0, f"no CUDA device is usable: cudaGetDeviceCount failed with {name} (is the NVIDIA driver loaded?)"


def _cuda_version(result) -> str:
    """ "12.9" from a cudaDriverGetVersion / cudaRuntimeGetVersion result (12090); "none" for 0."""
    value = int(result[1]) if len(result) > 1 and result[1] is not None else 0
    return f"{value // 1000}.{value % 1000 // 10}" if value else "none"


def insufficient_driver(cudart) -> str:
    """The message for ``cudaErrorInsufficientDriver``: which CUDA the driver and cuda-python have."""
    try:
        driver, runtime = _cuda_version(cudart.cudaDriverGetVersion()), _cuda_version(cudart.cudaRuntimeGetVersion())
    except Exception:  # the versions are a courtesy; the error name is the fact
        driver, runtime = "unknown", "unknown"
    major = int(runtime.split(".")[0]) if runtime[:1].isdigit() else 0
    need = f"driver >= {DRIVER_FOR_CUDA[major]}" if major in DRIVER_FOR_CUDA else "a newer driver"
    return (
        f"cudaErrorInsufficientDriver: the NVIDIA driver supports CUDA {driver}, but cuda-python's CUDA runtime "
        f"is {runtime}, which needs {need}; update the driver, or install the pair for your driver "
        f"(pip install 'gan-encoder-rt[gpu-cu12]' for a CUDA 12 driver)"
    )


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


def select_device(device: int) -> None:
    """Make ``device`` the calling thread's current CUDA device (the current device is per host
    thread: allocations, TensorRT builds and launches use the caller's)."""
    cudart = import_cudart()
    check(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")


class CudaRuntime:
    """One device, one non-blocking stream, and every buffer allocated through it. Every entry
    point makes ``device`` current in the calling thread first: CUDA's current device is per host
    thread, so a runtime built in one thread and used from another would otherwise allocate and
    launch on that thread's device (0)."""

    def __init__(self, device: int = 0):
        self.cudart = cudart = import_cudart()
        self.device = device
        self.use()
        flags = getattr(cudart, "cudaStreamNonBlocking", None)
        if flags is not None:
            self.stream = check(cudart, cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        else:
            self.stream = check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = stream_handle(self.stream)
        self._buffers: list[DeviceBuffer] = []
        self._scratch: list[int] = []
        self._graphs: list[CudaGraph] = []
        self._event = None  # orders our stream after a producer's (device inputs), made on first use

    def use(self) -> None:
        """``cudaSetDevice(self.device)`` in the calling thread (cheap when already current)."""
        check(self.cudart, self.cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")

    # ------------------------------------------------------------------ memory
    def empty(self, shape: Sequence[int], dtype: str) -> DeviceBuffer:
        if dtype not in _NP_DTYPES:
            raise BackendError(f"unsupported buffer dtype {dtype!r}; expected float32 or float16")
        shape = tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape)) * np.dtype(_NP_DTYPES[dtype]).itemsize
        self.use()
        ptr = check(self.cudart, self.cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        buf = DeviceBuffer(int(ptr), shape, dtype, nbytes)
        self._buffers.append(buf)
        return buf

    def scratch(self, nbytes: int) -> int:
        """Raw device memory (TensorRT activation memory shared by the contexts of one engine)."""
        self.use()
        ptr = int(check(self.cudart, self.cudart.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))
        self._scratch.append(ptr)
        return ptr

    def _mirror(self, buf: DeviceBuffer) -> np.ndarray:
        if buf.host is None:
            ptr = int(check(self.cudart, self.cudart.cudaMallocHost(buf.nbytes), f"cudaMallocHost({buf.nbytes})"))
            raw = (ctypes.c_uint8 * buf.nbytes).from_address(ptr)
            buf.host = np.frombuffer(memoryview(raw), dtype=_NP_DTYPES[buf.dtype]).reshape(buf.shape)
            buf.host_ptr = ptr
        return buf.host

    # ------------------------------------------------------------------ copies
    def upload(self, dst: DeviceBuffer, array: np.ndarray) -> None:
        """Host array → device buffer, asynchronously on the stream (through the pinned mirror)."""
        if tuple(array.shape) != dst.shape:
            raise BackendError(f"upload of shape {list(array.shape)} into a buffer of shape {list(dst.shape)}")
        self.use()
        host = self._mirror(dst)
        self.synchronize()  # the mirror may still feed an earlier copy
        np.copyto(host, array, casting="same_kind")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(
            self.cudart,
            self.cudart.cudaMemcpyAsync(dst.ptr, dst.host_ptr, dst.nbytes, kind, self.stream),
            "cudaMemcpyAsync (host to device)",
        )

    def download(self, src: DeviceBuffer) -> np.ndarray:
        """Device buffer → new host array; waits for the stream (the loop's only sync point)."""
        self.use()
        host = self._mirror(src)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(
            self.cudart,
            self.cudart.cudaMemcpyAsync(src.host_ptr, src.ptr, src.nbytes, kind, self.stream),
            "cudaMemcpyAsync (device to host)",
        )
        self.synchronize()
        return np.array(host, copy=True)

    def synchronize(self) -> None:
        self.use()
        check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    # ------------------------------------------------------------------ other libraries' device memory
    def pointer_device(self, ptr: int) -> int | None:
        """The device index that owns ``ptr`` (device or managed memory), else None (host memory)."""
        attrs = check(self.cudart, self.cudart.cudaPointerGetAttributes(ptr), "cudaPointerGetAttributes")
        kinds = self.cudart.cudaMemoryType
        if attrs.type in (kinds.cudaMemoryTypeDevice, kinds.cudaMemoryTypeManaged):
            return int(attrs.device)
        return None

    def copy_in(self, dst: int, nbytes: int, src: DeviceInput) -> None:
        """Device → device copy of ``src`` into ``nbytes`` at ``dst`` on our stream. ``src.stream``
        (the producer's stream; 1, the legacy default stream, for a CUDA Array Interface without
        one, as PyTorch's) is waited for with an event: our stream is non-blocking, so nothing else
        orders it after the producer; the GPU orders the copy after the producer's queued work and
        the host does not block. DLPack producers did that ordering themselves (``stream=None``)."""
        if src.nbytes != nbytes:
            raise BackendError(
                f"{src.what} has {src.nbytes} bytes but the loop's buffer {nbytes} (the bundle's input is not float32?)"
            )
        self.use()
        device = src.device if src.device is not None else self.pointer_device(src.ptr)
        if device != self.device:
            where = "host memory" if device is None else f"cuda:{device}"
            raise InputError(
                f"{src.what} is in {where} but this Translator runs on cuda:{self.device}; move it "
                f"there (e.g. tensor.to('cuda:{self.device}')) or open the Translator with "
                f"device={device if device is not None else self.device}"
            )
        if src.stream is not None:
            cudart = self.cudart
            if self._event is None:
                self._event = check(
                    cudart, cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming), "cudaEventCreateWithFlags"
                )
            check(cudart, cudart.cudaEventRecord(self._event, src.stream), "cudaEventRecord (producer stream)")
            check(cudart, cudart.cudaStreamWaitEvent(self.stream, self._event, 0), "cudaStreamWaitEvent")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(
            self.cudart,
            self.cudart.cudaMemcpyAsync(dst, src.ptr, src.nbytes, kind, self.stream),
            "cudaMemcpyAsync (device to device)",
        )

    def device_copy(self, src_ptr: int, shape: Sequence[int], dtype: str) -> DeviceArray:
        """A new device allocation holding a copy of ``src_ptr``, owned by the returned array
        (freed when it is garbage-collected or closed, independently of this runtime). The copy
        is queued on our stream: synchronize before handing the array out."""
        shape = tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape)) * np.dtype(_NP_DTYPES[dtype]).itemsize
        self.use()
        ptr = int(check(self.cudart, self.cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))
        out = DeviceArray(self.cudart, ptr, shape, _NP_DTYPES[dtype], self.device)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(
            self.cudart,
            self.cudart.cudaMemcpyAsync(ptr, src_ptr, nbytes, kind, self.stream),
            "cudaMemcpyAsync (device to device)",
        )
        return out

    # ------------------------------------------------------------------ CUDA graphs
    def capture(self, work: Callable[[], None]) -> CudaGraph | None:
        """Run ``work`` (calls that enqueue on our stream) once, then record it into a CUDA graph.

        The eager run comes first because TensorRT may allocate or upload on a context's first
        enqueue, which must not end up in a graph (NVIDIA's trtexec enqueues once before capturing
        for the same reason); its results are the caller's results for this call. Capture is
        thread-local: a synchronising call from this thread (a host copy, a stream sync) invalidates
        it, while other threads' CUDA work (e.g. PyTorch) is not affected. Returns None, with a
        warning, when the work cannot be captured (TensorRT refuses to enqueue some engines under
        capture); the caller then runs it eagerly."""
        cudart = self.cudart
        self.use()
        work()
        self.synchronize()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        err = cudart.cudaStreamBeginCapture(self.stream, mode)[0]
        if err != cudart.cudaError_t.cudaSuccess:  # this call's results are in already: only replay is lost
            log.warning(
                "CUDA stream capture is unavailable (%s); the loop runs without CUDA graphs", _error_name(cudart, err)
            )
            return None
        failure = None
        try:
            work()
        except BackendError as e:
            failure = str(e)
        finally:
            # always end the capture: a stream left capturing would reject every later call
            err, graph = cudart.cudaStreamEndCapture(self.stream)
        if failure is None and err != cudart.cudaError_t.cudaSuccess:
            failure = f"cudaStreamEndCapture: {_error_name(cudart, err)}"
        if failure is None:
            result = cudart.cudaGraphInstantiateWithFlags(graph, 0)  # same signature in CUDA 11.4 .. 13
            if result[0] == cudart.cudaError_t.cudaSuccess:
                replay = CudaGraph(self, graph, result[1])
                self._graphs.append(replay)
                return replay
            failure = f"cudaGraphInstantiateWithFlags: {_error_name(cudart, result[0])}"
        if graph is not None:
            cudart.cudaGraphDestroy(graph)
        cudart.cudaGetLastError()  # a failed capture leaves its error as this thread's last error
        log.warning("the loop could not be captured into a CUDA graph (%s); it runs without one", failure)
        return None

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self.cudart is None:
            return
        self.cudart.cudaSetDevice(self.device)  # unchecked: closing frees what it can
        cudart, self.cudart = self.cudart, None
        try:
            check(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        finally:
            for replay in self._graphs:
                replay.close()
            if self._event is not None:
                cudart.cudaEventDestroy(self._event)
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
            self._graphs.clear()


class CudaGraph:
    """A captured piece of stream work, instantiated once; :meth:`launch` replays it on the
    runtime's stream (one launch instead of one enqueue per engine call)."""

    def __init__(self, runtime: CudaRuntime, graph, graph_exec):
        # our own cudart reference: the runtime drops its one first when it closes
        self._cudart, self._stream, self.graph, self._exec = runtime.cudart, runtime.stream, graph, graph_exec

    def launch(self) -> None:
        if self._exec is None:
            raise BackendError("this CUDA graph was released (its Translator is closed)")
        check(self._cudart, self._cudart.cudaGraphLaunch(self._exec, self._stream), "cudaGraphLaunch")

    def node_types(self) -> list[str]:
        """The captured nodes' types (``cudaGraphNodeTypeKernel``, ``...Memcpy``, ...), for tests and
        inspection: the loop's graph should hold kernels only."""
        cudart = self._cudart
        _, count = check(cudart, cudart.cudaGraphGetNodes(self.graph, 0), "cudaGraphGetNodes")
        nodes, count = check(cudart, cudart.cudaGraphGetNodes(self.graph, count), "cudaGraphGetNodes")
        return [
            check(cudart, cudart.cudaGraphNodeGetType(node), "cudaGraphNodeGetType").name
            for node in list(nodes)[:count]
        ]

    def close(self) -> None:
        if self._exec is not None:
            self._cudart.cudaGraphExecDestroy(self._exec)
            self._cudart.cudaGraphDestroy(self.graph)
        self._exec = None


def _error_name(cudart, err) -> str:
    try:
        name = cudart.cudaGetErrorName(err)[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # the error name is a courtesy; never mask the real failure
        return str(err)
