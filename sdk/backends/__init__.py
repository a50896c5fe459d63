"""Inference back ends behind one small protocol (see :mod:`sdk.backends.base`)."""

from __future__ import annotations

import logging

from ..checks import is_int
from ..errors import BackendError
from .base import Backend, Runner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # reduced ones: the openvino backend (and auto on a CPU)


def create_backend(
    name: str = "auto",
    threads: int | None = None,
    bundle=None,
    device: int = 0,
    precision: str = "auto",
    options=None,
) -> Backend:
    """Make a backend by name. ``auto``: TensorRT when ``bundle`` has engines and TensorRT, cuda-python
    and a GPU are present and the engines match them (else a warning says why not); otherwise ONNX
    Runtime on CUDA where available, else the CPU rule of :func:`sdk.backends.openvino.auto_cpu`
    (OpenVINO at a gated BF16/FP16 where the CPU has it, else ONNX Runtime). ``tensorrt`` needs
    ``bundle``. ``device``: the GPU index for the GPU backends. ``precision``: one of
    :data:`PRECISIONS` (reduced ones on OpenVINO only); ``options``: OpenVINO's ``hint`` and
    ``pinning`` (:func:`sdk.backends.openvino.options_from`)."""
    from .onnxruntime import OrtBackend

    if not is_int(device) or device < 0:
        raise BackendError(f"device must be a GPU index (an int >= 0); got {device!r}")
    if precision not in PRECISIONS or (precision not in ("auto", "fp32") and name not in ("auto", "openvino")):
        raise BackendError(
            f"precision {precision!r} is not available on backend {name!r}; expected 'auto' or 'fp32' "
            f"(bf16 and fp16 run on backend 'openvino' or 'auto' on a CPU)"
        )
    if options is not None and name not in ("auto", "openvino"):
        raise BackendError(f"options are OpenVINO's (hint, pinning); backend {name!r} takes none")

    if name == "auto":
        if bundle is not None and bundle.manifest.engines:
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
        if OrtBackend.cuda_available():
            return OrtBackend("cuda", device, threads=threads)
        from . import openvino

        return openvino.auto_cpu(
            bundle, precision, openvino.options_from(threads, options), lambda: OrtBackend("cpu", threads=threads)
        )
    if name == "openvino":
        from . import openvino

        return openvino.open_backend(bundle, precision, openvino.options_from(threads, options))
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


__all__ = ["Backend", "Runner", "create_backend", "BACKENDS", "PRECISIONS"]
