"""ONNX Runtime's execution-provider lists for ``backend="onnxruntime-cuda"`` and
``"onnxruntime-tensorrt"`` (both need onnxruntime-gpu).

ORT's own CUDA-graph mode (``enable_cuda_graph``) is not used: it records one graph per session
with fixed bindings, while the loop binds each session to several buffer arrangements.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import BackendError

ORT_GPU_HINT = (
    "pip install onnxruntime-gpu (after pip uninstall onnxruntime: both packages install the same 'onnxruntime' module)"
)


def ort_tensorrt_cache() -> Path:
    """Where ONNX Runtime's TensorRT provider keeps its engines: a per-user cache, not the bundle
    (bundles are verified by hash and may be read-only)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "gan-encoder-rt" / "ort-tensorrt"
    path.mkdir(parents=True, exist_ok=True)
    return path


def gpu_providers(available: list[str], kind: str, device_id: int, fp16: bool) -> list[Any]:
    """The ``providers`` argument of ``InferenceSession`` for ``kind`` "cuda" or "tensorrt"."""
    if "CUDAExecutionProvider" not in available:
        raise BackendError(
            f"onnxruntime has no CUDA execution provider here (available: {available}); "
            f"{ORT_GPU_HINT}; or use backend='onnxruntime' (CPU)"
        )
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if kind == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available:
        raise BackendError(
            f"onnxruntime has no TensorRT execution provider here (available: {available}); "
            f"install onnxruntime-gpu and the TensorRT major it was built with (TensorRT 10 for the "
            f"CUDA 12 wheels: pip install 'tensorrt-cu12>=10,<11'; TensorRT 11 does not load), or "
            f"use backend='onnxruntime-cuda'"
        )
    # nodes TensorRT cannot take fall back to CUDA, then CPU (the order is the priority)
    trt = (
        "TensorrtExecutionProvider",
        {
            "device_id": device_id,
            "trt_fp16_enable": bool(fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(ort_tensorrt_cache()),
        },
    )
    return [trt, cuda, "CPUExecutionProvider"]
