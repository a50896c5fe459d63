"""``OrtValue`` element types and how a loaded graph's tensors are compared with the manifest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import BackendError
from ...manifest import TensorSpec

NP_DTYPES = {"float32": np.float32, "float16": np.float16}
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}  # ORT's type names -> the manifest's


def tensor_mismatch(spec: TensorSpec, shape: Sequence[Any], ort_type: str) -> str | None:
    """How the graph's ``shape`` (ints, or names/None for dynamic dims) and element type differ
    from the manifest's ``spec``, else None. A dim the manifest fixes may be dynamic in the graph;
    a dim the manifest leaves dynamic (the batch) may not be fixed in the graph."""
    dtype = ORT_TYPES.get(ort_type, ort_type)
    if dtype != spec.dtype:
        return f"{dtype} in the graph but {spec.dtype} in the manifest"
    ok = len(shape) == len(spec.shape) and all(
        not isinstance(g, int) if isinstance(m, str) else (not isinstance(g, int) or g == m)
        for g, m in zip(shape, spec.shape)
    )
    return None if ok else f"{list(shape)} in the graph but {list(spec.shape)} in the manifest"


def ortvalue_nbytes(value: Any) -> int:
    """The byte size of a dense ``OrtValue`` from its shape and element type
    (``OrtValue.tensor_size_in_bytes`` exists only from onnxruntime 1.23)."""
    dtype = ORT_TYPES.get(value.data_type())
    if dtype is None:
        raise BackendError(f"an OrtValue of {value.data_type()} is not a loop buffer (float32/float16 only)")
    return int(np.prod(value.shape(), dtype=np.int64)) * np.dtype(dtype).itemsize
