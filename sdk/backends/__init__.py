"""Inference back ends behind one small protocol (see :mod:`sdk.backends.base`)."""
from __future__ import annotations

import logging

from ..errors import BackendError
from .base import Backend, Runner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda")


def create_backend(name: str = "auto", threads: int | None = None, bundle=None) -> Backend:
    """Make a backend by name. ``auto``: TensorRT when ``bundle`` has engines and TensorRT, cuda-python
    and a GPU are present and the engines match them (else a warning says why not); otherwise ONNX
    Runtime on CUDA where available, else CPU. ``tensorrt`` needs ``bundle``."""
    from .onnxruntime import OrtBackend

    if name == "auto":
        if bundle is not None and bundle.manifest.raw.get("engines"):
            from . import tensorrt as trt_backend

            reason = trt_backend.unavailable_reason()
            if reason is None:
                try:
                    return trt_backend.TensorRTBackend(bundle)
                except BackendError as e:  # stale engines, CUDA errors: the ONNX graphs still run
                    reason = str(e)
            log.warning("bundle %s has TensorRT engines but they cannot run here (%s); falling back to "
                        "ONNX Runtime", bundle.path, reason)
        return OrtBackend("cuda" if OrtBackend.cuda_available() else "cpu", threads=threads)
    if name == "tensorrt":
        if bundle is None:
            raise BackendError("backend 'tensorrt' runs a bundle's engines: pass the bundle (Translator does)")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(bundle)
    if name == "onnxruntime":
        return OrtBackend("cpu", threads=threads)
    if name == "onnxruntime-cuda":
        return OrtBackend("cuda", threads=threads)
    raise BackendError(f"unknown backend {name!r}; expected one of {BACKENDS}")


__all__ = ["Backend", "Runner", "create_backend", "BACKENDS"]
