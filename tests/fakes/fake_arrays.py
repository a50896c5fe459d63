"""A stand-in for another library's CUDA array (a PyTorch CUDA tensor, a CuPy array) on the fake
CUDA runtime: what ``Translator.infer`` sees of such an object is only its protocols."""

from __future__ import annotations

import ctypes

import numpy as np

from .fake_cuda import FakeCudart


class FakeCudaTensor:
    """A stand-in for a producer's CUDA array: fake device memory allocated through the fake
    cudart, seen only through the protocols of ``protocol``:

    * ``"cai"``: a CUDA Array Interface v3 naming the producer's ``stream`` (CuPy, Numba);
    * ``"cai_v2"``: a CUDA Array Interface v2, which has no ``stream`` key;
    * ``"dlpack"``: DLPack only (JAX and others);
    * ``"torch"``: what a PyTorch CUDA tensor offers: CAI v2 and ``__dlpack__(stream=...)``.

    ``pending=True``: the values are written by work still queued on the producer's stream
    (``stream``, else the legacy default stream), as when a kernel is still running; a consumer
    that does not order itself after that stream reads zeros. DLPack's ``__dlpack__(stream=s)``
    does what PyTorch and CuPy do: records an event on the producer's stream and makes ``s`` wait."""

    def __init__(
        self,
        cudart: FakeCudart,
        array,
        stream: int | None = None,
        device: int = 0,
        protocol: str = "cai",
        strides=None,
        pending: bool = False,
    ):
        self.cudart, self.array = cudart, np.asarray(array)
        previous, cudart.current_device = cudart.current_device, device
        self.ptr = cudart.cudaMalloc(max(self.array.nbytes, 1))[1]
        cudart.current_device = previous
        self.stream, self.device, self.protocol, self.strides = stream, device, protocol, strides
        self.dlpack_streams: list = []  # the stream argument of each __dlpack__ call
        source = np.ascontiguousarray(self.array)
        write = lambda: ctypes.memmove(self.ptr, source.ctypes.data, source.nbytes)  # noqa: E731
        if pending:
            self._keep = source
            cudart.enqueue(self.producer_stream, cudart.cudaGraphNodeType.cudaGraphNodeTypeKernel, "producer", write)
        else:
            write()

    @property
    def producer_stream(self) -> int:
        return FakeCudart.LEGACY_STREAM if self.stream is None else int(self.stream)

    def __getattr__(self, name):
        if name == "__cuda_array_interface__" and self.protocol in ("cai", "cai_v2", "torch"):
            cai = {
                "shape": self.array.shape,
                "typestr": self.array.dtype.str,
                "data": (self.ptr, False),
                "version": 3,
                "strides": self.strides,
                "stream": self.stream,
            }
            if self.protocol != "cai":
                del cai["stream"]
                cai["version"] = 2
            return cai
        if name in ("__dlpack__", "__dlpack_device__") and self.protocol in ("dlpack", "torch"):
            return getattr(self, "_" + name.strip("_"))
        raise AttributeError(name)

    def _dlpack_device(self):
        return (2, self.device)

    def _dlpack(self, stream=None):
        from sdk.device_arrays import export_capsule

        self.dlpack_streams.append(stream)
        if stream is not None and stream != -1 and int(stream) != self.producer_stream:
            cudart = self.cudart
            event = cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming)[1]
            cudart.cudaEventRecord(event, self.producer_stream)
            cudart.cudaStreamWaitEvent(int(stream), event, 0)
            cudart.cudaEventDestroy(event)
        return export_capsule(self.ptr, self.array.shape, (2, self.device), self)

    def numpy(self):
        out = np.empty_like(self.array)
        ctypes.memmove(out.ctypes.data, self.ptr, self.array.nbytes)
        return out
