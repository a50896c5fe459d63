"""Inference back ends behind one small protocol (see :mod:`sdk.backends.base`)."""

from __future__ import annotations

import logging

from ..checks import is_int
from ..errors import BackendError
from .base import Backend, Runner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt")


def create_backend(name: str = "auto", threads: int | None = None, bundle=None, device: int = 0) -> Backend:
    """Make a backend by name. ``auto``: TensorRT when ``bundle`` has engines and TensorRT, cuda-python
    and a GPU are present and the engines match them (else a warning says why not); otherwise ONNX
    Runtime on CUDA where available, else CPU. ``tensorrt`` needs ``bundle``. ``device``: the GPU
    index for the GPU backends."""
    from .onnxruntime import OrtBackend

    if not is_int(device) or device < 0:
        raise BackendError(f"device must be a GPU index (an int >= 0); got {device!r}")

    if name == "auto":
        if bundle is not None and bundle.manifest.raw.get("engines"):
            from . import tensorrt as trt_backend

            reason = trt_backend.unavailable_reason()
            if reason is None:
                try:
                    return trt_backend.TensorRTBackend(bundle, device)
                except BackendError as e:  # stale engines, CUDA errors: the ONNX graphs still run
                    reason = str(e)
            log.warning(
                "bundle %s has TensorRT engines but they cannot run here (%s); falling back to ONNX Runtime",
                bundle.path,
                reason,
            )
        return OrtBackend("cuda" if OrtBackend.cuda_available() else "cpu", device, threads=threads)
    if name == "tensorrt":
        if bundle is None:
            raise BackendError("backend 'tensorrt' runs a bundle's engines: pass the bundle (Translator does)")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(bundle, device)
    if name == "onnxruntime":
        return OrtBackend("cpu", threads=threads)
    if name == "onnxruntime-cuda":
        return OrtBackend("cuda", device, threads=threads)
    if name == "onnxruntime-tensorrt":
        fp16 = bundle is not None and any(g.precision == "fp16" for g in bundle.manifest.graphs.values())
        return OrtBackend("tensorrt", device, threads=threads, fp16=fp16)
    raise BackendError(f"unknown backend {name!r}; expected one of {BACKENDS}")


__all__ = ["Backend", "Runner", "create_backend", "BACKENDS"]
