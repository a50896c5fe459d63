"""The ONNX Runtime backend (CPU, CUDA, and ORT's TensorRT provider).

``backend.py``: :class:`OrtBackend` and its runners; ``cpu.py``: which graph the CPU provider
opens (the build machine's optimised one where this CPU matches); ``providers.py``: the GPU
execution-provider lists; ``gpu_io.py``: GPU-resident inputs/outputs, a component the backend
holds on CUDA; ``tensors.py``: ``OrtValue`` element types and the graph-manifest comparison.
"""

from __future__ import annotations

from .backend import OrtBackend, OrtRunner, import_ort

__all__ = ["OrtBackend", "OrtRunner", "import_ort"]
