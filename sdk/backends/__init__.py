"""Inference back ends behind one small protocol (see :mod:`sdk.backends.base`)."""
from __future__ import annotations

from ..errors import BackendError
from .base import Backend, Runner

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda")


def create_backend(name: str = "auto", threads: int | None = None) -> Backend:
    """Make a backend by name. ``auto``: ONNX Runtime on CUDA where available, else CPU."""
    from .onnxruntime import OrtBackend

    if name == "auto":
        return OrtBackend("cuda" if OrtBackend.cuda_available() else "cpu", threads=threads)
    if name == "onnxruntime":
        return OrtBackend("cpu", threads=threads)
    if name == "onnxruntime-cuda":
        return OrtBackend("cuda", threads=threads)
    raise BackendError(f"unknown backend {name!r}; expected one of {BACKENDS}")


__all__ = ["Backend", "Runner", "create_backend", "BACKENDS"]
