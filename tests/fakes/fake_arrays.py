"""A stand-in for another library's CUDA array (a PyTorch CUDA tensor, a CuPy array) on the fake
CUDA runtime: what ``Translator.infer`` sees of such an object is only its protocols."""
from __future__ import annotations

import ctypes

import numpy as np

from .fake_cuda import FakeCudart


class FakeCudaTensor:
    """A stand-in for a producer's CUDA array (a PyTorch CUDA tensor, a CuPy array): fake device
    memory allocated through the fake cudart, exposed through ``__cuda_array_interface__`` (v3,
    with the producer's ``stream``) or, with ``protocol="dlpack"``, only through DLPack."""

    def __init__(self, cudart: FakeCudart, array, stream: int | None = None, device: int = 0,
                 protocol: str = "cai", strides=None):
        self.cudart, self.array = cudart, np.asarray(array)
        previous, cudart.current_device = cudart.current_device, device
        self.ptr = cudart.cudaMalloc(max(self.array.nbytes, 1))[1]
        cudart.current_device = previous
        ctypes.memmove(self.ptr, self.array.ctypes.data, self.array.nbytes)
        self.stream, self.device, self.protocol, self.strides = stream, device, protocol, strides
        self.dlpack_streams: list = []  # the stream argument of each __dlpack__ call

    def __getattr__(self, name):
        if name == "__cuda_array_interface__" and self.protocol == "cai":
            return {"shape": self.array.shape, "typestr": self.array.dtype.str, "data": (self.ptr, False),
                    "version": 3, "strides": self.strides, "stream": self.stream}
        raise AttributeError(name)

    def __dlpack_device__(self):
        return (2, self.device)

    def __dlpack__(self, stream=None):
        from sdk.device_arrays import export_capsule

        self.dlpack_streams.append(stream)
        return export_capsule(self.ptr, self.array.shape, (2, self.device), self)

    def numpy(self):
        out = np.empty_like(self.array)
        ctypes.memmove(out.ctypes.data, self.ptr, self.array.nbytes)
        return out
