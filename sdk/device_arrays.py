"""GPU-resident arrays in and out of the SDK, without a round trip through host memory.

**In**: an object exposing the CUDA Array Interface (``__cuda_array_interface__``, v2 or v3:
PyTorch CUDA tensors, CuPy, Numba) or DLPack on a CUDA device (``__dlpack__`` and
``__dlpack_device__``: JAX and others) is described by a :class:`DeviceInput` — pointer, shape,
dtype, device and the producer's stream — that the backend copies device-to-device into the
loop's input buffer (:meth:`sdk.backends.cuda.CudaRuntime.copy_in`). DLPack is preferred where
both exist: ``__dlpack__(stream=ours)`` makes the producer order its pending work before our
stream. A CUDA Array Interface without ``stream`` (v2: PyTorch's) is taken as written on the
legacy default stream, and the copy waits for an event recorded there.

**Out**: a :class:`DeviceArray` is device memory the SDK allocated and hands over; it exposes
both protocols, so ``torch.as_tensor(a, device="cuda")``, ``torch.from_dlpack(a)`` and
``cupy.asarray(a)`` use it in place.

The SDK never imports PyTorch or CuPy for this: only the two protocols, parsed here (DLPack's C
structs through ctypes, as ``dlpack.h`` defines them).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import BackendError, InputError

KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13  # DLDeviceType
KDL_FLOAT = 2  # DLDataTypeCode
LEGACY_STREAM, PER_THREAD_STREAM = 1, 2  # the CUDA Array Interface's / DLPack's default-stream handles
_NAME, _USED = b"dltensor", b"used_dltensor"  # capsule names of an unconsumed / consumed tensor


# --------------------------------------------------------------------------- dlpack.h
class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


def _capi(name: str, restype, argtypes):
    """A private handle on a Python C-API function (``pythonapi[name]`` is a fresh object, so
    setting its types does not change ``ctypes.pythonapi`` for anyone else)."""
    fn = ctypes.pythonapi[name]
    fn.restype, fn.argtypes = restype, argtypes
    return fn


_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capsule_new = _capi("PyCapsule_New", ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, _DESTRUCTOR])
_capsule_valid = _capi("PyCapsule_IsValid", ctypes.c_int, [ctypes.py_object, ctypes.c_char_p])
_capsule_pointer = _capi("PyCapsule_GetPointer", ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p])
# the destructor gets a capsule that is being freed: raw pointers only, no new references to it
_raw_valid = _capi("PyCapsule_IsValid", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p])
_raw_pointer = _capi("PyCapsule_GetPointer", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p])

_EXPORTED: dict[int, tuple] = {}  # DLManagedTensor address -> (struct, shape, owner), until the deleter


@_DELETER
def _release(address) -> None:
    _EXPORTED.pop(address, None)


@_DESTRUCTOR
def _capsule_freed(capsule) -> None:
    # DLPack's rule: a capsule that dies unconsumed (still named "dltensor") releases its tensor
    if _raw_valid(capsule, _NAME):
        _release(_raw_pointer(capsule, _NAME))


def export_capsule(ptr: int, shape: tuple, device: tuple[int, int], owner: Any):
    """A DLPack capsule for a C-contiguous float32 tensor at ``ptr`` on ``device`` (DLDeviceType,
    index); ``owner`` is kept alive until the consumer calls the deleter."""
    managed = DLManagedTensor()
    dims = (ctypes.c_int64 * len(shape))(*shape)
    t = managed.dl_tensor
    t.data, t.device, t.ndim = ptr, DLDevice(*device), len(shape)
    t.dtype, t.shape, t.strides, t.byte_offset = DLDataType(KDL_FLOAT, 32, 1), dims, None, 0  # NULL: row-major
    managed.deleter = _release
    address = ctypes.addressof(managed)
    _EXPORTED[address] = (managed, dims, owner)
    return _capsule_new(address, _NAME, _capsule_freed)


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class DeviceInput:
    """A C-contiguous float32 array in device memory that the SDK reads (never writes)."""

    ptr: int
    shape: tuple
    device: int | None  # CUDA device index; None: ask CUDA (cudaPointerGetAttributes)
    stream: int | None  # the producer's stream to order after (CAI; 1: legacy default); None: ready now
    owner: Any = None  # keeps the producer's memory (or its DLPack capsule) alive while we copy
    what: str = "x"
    dtype = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def with_batch(self) -> DeviceInput:
        """The same memory seen as a batch of one."""
        return replace(self, shape=(1,) + tuple(self.shape))


def is_device_array(value) -> bool:
    """Does ``value`` live in CUDA memory (CUDA Array Interface, or DLPack on a CUDA device)?"""
    if isinstance(value, np.ndarray):
        return False
    try:  # PyTorch raises AttributeError for CPU tensors: hasattr() is not enough elsewhere
        if getattr(value, "__cuda_array_interface__", None) is not None:
            return True
    except Exception:  # a property that refuses is not a CUDA array
        pass
    device = getattr(value, "__dlpack_device__", None)
    try:
        return device is not None and int(device()[0]) in (KDL_CUDA, KDL_CUDA_MANAGED)
    except Exception:
        return False


def device_view(value, consumer_stream: int, what: str = "x") -> DeviceInput:
    """Describe a CUDA array without copying it. ``consumer_stream``: the stream the SDK reads it
    on, handed to DLPack producers so that they order their pending work before it."""
    try:
        if _dlpack_on_cuda(value):  # DLPack first: the producer orders its own stream before ours
            return _from_dlpack(value, consumer_stream, what)
        cai = getattr(value, "__cuda_array_interface__", None)
        if cai is not None:
            return _from_cai(value, cai, what)
        return _from_dlpack(value, consumer_stream, what)
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as e:  # a malformed interface
        raise InputError(
            f"{what} claims to be a CUDA array, but its __cuda_array_interface__ / __dlpack__ cannot "
            f"be read ({type(e).__name__}: {str(e)[:120]}); pass a numpy array or a PyTorch/CuPy "
            f"CUDA array"
        ) from None


def _dlpack_on_cuda(value) -> bool:
    """Does ``value`` export DLPack from a CUDA device? (PyTorch tensors also have a CUDA Array
    Interface, but only v2, which names no stream: DLPack's ``stream=`` argument orders it.)"""
    device = getattr(value, "__dlpack_device__", None)
    if device is None or getattr(value, "__dlpack__", None) is None:
        return False
    try:
        return int(device()[0]) in (KDL_CUDA, KDL_CUDA_MANAGED)
    except Exception:  # a refusing __dlpack_device__: read the array interface instead
        return False


def _from_cai(value, cai: dict, what: str) -> DeviceInput:
    shape = tuple(int(d) for d in cai["shape"])
    _check_dtype(np.dtype(cai["typestr"]), what, f"typestr {cai['typestr']!r}")
    if cai.get("mask") is not None:
        raise InputError(f"{what} is a masked CUDA array; pass a plain float32 array")
    strides = cai.get("strides")
    _check_contiguous(shape, None if strides is None else [s // 4 for s in strides], what)
    ptr = int(cai["data"][0])
    # no "stream" key (v2, e.g. PyTorch): the data is ordered on the legacy default stream, which
    # our non-blocking stream does not wait for by itself; "stream": None (v3) means ready now
    stream = cai.get("stream", LEGACY_STREAM)
    if stream == 0:  # CAI v3 forbids 0 (ambiguous between the legacy and per-thread default streams)
        raise InputError(
            f"{what}'s __cuda_array_interface__ names stream 0, which the interface forbids; "
            f"its producer must give 1 (legacy default stream), 2 (per-thread) or a stream handle"
        )
    return DeviceInput(ptr, shape, None, None if stream is None else int(stream), value, what)


def _from_dlpack(value, consumer_stream: int, what: str) -> DeviceInput:
    kind, device = (int(v) for v in value.__dlpack_device__())
    if kind not in (KDL_CUDA, KDL_CUDA_MANAGED):
        raise InputError(f"{what} is a DLPack tensor on device type {kind}, not CUDA; pass a numpy array instead")
    try:  # the producer makes its pending work visible to our stream (array API __dlpack__ semantics)
        capsule, stream = value.__dlpack__(stream=consumer_stream), None
    except TypeError:  # a producer without the stream argument: its data is ordered on the legacy stream
        capsule, stream = value.__dlpack__(), LEGACY_STREAM
    t, data = parse_capsule(capsule)
    if (t.dtype.code, t.dtype.bits, t.dtype.lanes) != (KDL_FLOAT, 32, 1):
        raise InputError(
            f"{what} must be float32; got DLPack dtype code {t.dtype.code}, {t.dtype.bits} bits "
            f"(convert it on the GPU first, e.g. tensor.float())"
        )
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    _check_contiguous(shape, None if not t.strides else [int(t.strides[i]) for i in range(t.ndim)], what)
    return DeviceInput(data, shape, device, stream, capsule, what)  # the capsule keeps the memory alive


def parse_capsule(capsule) -> tuple[DLTensor, int]:
    """The DLTensor of an unconsumed DLPack capsule and its data address (with the byte offset).
    The capsule is left unconsumed: we only borrow the memory, and its destructor releases it."""
    if not _capsule_valid(capsule, _NAME):
        raise InputError("__dlpack__ did not return an unconsumed 'dltensor' capsule")
    managed = DLManagedTensor.from_address(_capsule_pointer(capsule, _NAME))
    t = managed.dl_tensor
    return t, int(t.data or 0) + int(t.byte_offset)


def _check_dtype(dtype: np.dtype, what: str, detail: str) -> None:
    if dtype != np.float32:
        raise InputError(
            f"{what} must be float32; got {dtype} ({detail}); convert it on the GPU first, e.g. tensor.float()"
        )


def _check_contiguous(shape: tuple, strides, what: str) -> None:
    """``strides`` in elements, None for C-contiguous. Dims of size 1 may have any stride."""
    if strides is None:
        return
    expected = 1
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            raise InputError(
                f"{what} must be C-contiguous (strides {list(strides)} for shape {list(shape)}); "
                f"make it so on the GPU first, e.g. tensor.contiguous()"
            )
        expected *= dim


# --------------------------------------------------------------------------- outputs
class DeviceArray:
    """A float32 array in GPU memory that the SDK allocated and now hands over (results of
    ``Translator.infer(..., output="device")``). Ready to use on any stream when returned (the SDK
    synchronised), so its CUDA Array Interface names no stream. It owns its memory: freed when
    the last reference — including PyTorch/CuPy arrays made from it — goes away, not when the
    Translator closes or runs again."""

    def __init__(self, cudart, ptr: int, shape: tuple, dtype, device: int):
        self._cudart, self.ptr, self.shape, self.device = cudart, int(ptr), tuple(shape), int(device)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "version": 3,
            "strides": None,
            "stream": None,
        }

    def __dlpack_device__(self) -> tuple[int, int]:
        return (KDL_CUDA, self.device)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """A legacy (unversioned) DLPack capsule; ``stream`` needs no work: the data is ready."""
        if copy:
            raise BufferError("DeviceArray exports its memory in place; copy on the consumer's side")
        if dl_device is not None and tuple(int(v) for v in dl_device) != self.__dlpack_device__():
            raise BufferError(f"DeviceArray lives on cuda:{self.device}; it cannot be exported to {dl_device}")
        if self.dtype != np.float32:
            raise BufferError(f"DeviceArray of {self.dtype} cannot be exported (float32 only)")
        return export_capsule(self.ptr, self.shape, self.__dlpack_device__(), self)

    def numpy(self) -> np.ndarray:
        """A host copy (the one explicit device → host transfer)."""
        host = np.empty(self.shape, self.dtype)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        err = self._cudart.cudaMemcpy(host.ctypes.data, self.ptr, self.nbytes, kind)[0]
        if err != self._cudart.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA cudaMemcpy (device to host) failed: {err}")
        return host

    def __repr__(self) -> str:
        return f"DeviceArray(shape={list(self.shape)}, dtype={self.dtype}, device=cuda:{self.device})"

    def __del__(self) -> None:
        ptr, self.ptr = self.ptr, 0
        if ptr:
            try:
                self._cudart.cudaFree(ptr)
            except Exception:  # interpreter shutdown: the CUDA bindings may already be gone
                pass
