"""FLOPs and bytes moved per frame, counted from the ONNX graphs a bundle runs.

The graphs are read with their batch fixed to 1 and every tensor shape inferred (ONNX shape
inference with data propagation, so the exporter's computed ``Reshape`` targets resolve).
Per node:

* **dense FLOPs** (``Conv``, ``ConvTranspose``, ``MatMul``, ``Gemm``): 2 x multiply-adds,
  e.g. a convolution costs ``2 * N * C_out * H_out * W_out * C_in/groups * kh * kw``. These are
  the FLOPs the ceilings (a matmul, an FMA loop) are about; the efficiency figures use them.
* **other FLOPs**: one per output element of every other arithmetic node (adds, activations,
  normalisations; reductions count their input). Reported beside, never mixed in.
* **bytes**: every node's inputs (weights included) and outputs, read or written once each:
  the traffic of an unfused execution, an upper bound on what a fusing GPU runtime moves.
  ``weight_bytes`` (initialisers) is the lower bound any runtime must read per call.

Shape-only nodes and data movement (``Reshape``, ``Concat``, ``Transpose``, ...) count no
FLOPs; views (``Reshape``, ``Squeeze``, ...) count no bytes either, copies do.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

log = logging.getLogger(__name__)

DENSE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
FREE = {
    "Shape",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Transpose",
    "Concat",
    "Slice",
    "Gather",
    "Expand",
    "Identity",
    "Constant",
    "ConstantOfShape",
    "Cast",
    "Range",
    "Tile",
    "Pad",
    "Split",
}
VIEWS = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Shape", "Constant"}  # no data moves
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceSumSquare", "GlobalAveragePool", "ReduceL2"}
_ITEM = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.DOUBLE: 8,
}


class FlopsError(RuntimeError):
    """A graph's shapes could not be inferred well enough to count it."""


@dataclass
class GraphCost:
    """The cost of one call of one graph at batch 1."""

    dense_flops: float = 0.0
    other_flops: float = 0.0
    bytes: float = 0.0
    weight_bytes: float = 0.0
    by_op: dict = field(default_factory=dict)  # op type -> dense FLOPs
    unknown_nodes: int = 0  # nodes whose shapes stayed unknown (counted as 0)
    # per node: (op type, FLOPs, activation bytes in + out, weight bytes), for the roofline
    nodes: list = field(default_factory=list, repr=False)

    def as_dict(self, with_nodes: bool = False) -> dict:
        d = asdict(self)
        if not with_nodes:
            d.pop("nodes")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GraphCost:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _fix_batch(model: onnx.ModelProto, batch: int) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """Tensor name -> (shape, bytes per element) for every tensor with a fully known shape."""
    out = {}
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.HasField("shape") and None not in dims:
            out[v.name] = (tuple(dims), _ITEM.get(t.elem_type, 4))
    for init in model.graph.initializer:
        out[init.name] = (tuple(init.dims), _ITEM.get(init.data_type, 4))
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _dense(node: onnx.NodeProto, shapes: dict) -> float | None:
    ins = [shapes.get(n, (None,))[0] for n in node.input]
    out = shapes.get(node.output[0], (None,))[0]
    if out is None or any(s is None for s in ins[:2]):
        return None
    if node.op_type == "Conv":  # out [N, Cout, *spatial], weight [Cout, Cin/g, *k]
        return 2.0 * np.prod(out) * np.prod(ins[1][1:])
    if node.op_type == "ConvTranspose":  # in [N, Cin, *spatial], weight [Cin, Cout/g, *k]
        return 2.0 * np.prod(ins[0]) * np.prod(ins[1][1:])
    if node.op_type == "MatMul":  # [..., M, K] @ [..., K, N] -> [..., M, N]
        return 2.0 * np.prod(out) * ins[0][-1]
    a = ins[0]  # Gemm: A [M, K] (or transposed)
    k = a[0] if _attr(node, "transA", 0) else a[1]
    return 2.0 * np.prod(out) * k


def graph_cost(path: Path | str, batch: int = 1) -> GraphCost:
    """Count one call of the graph at ``path`` with batch ``batch`` (see the module doc)."""
    model = onnx.load(str(path), load_external_data=False)
    _fix_batch(model, batch)
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # onnx raises its own InferenceError and a few others
        raise FlopsError(f"shape inference failed on {path}: {type(e).__name__}: {e}") from None
    shapes = _shapes(model)
    weights = {i.name for i in model.graph.initializer}
    cost = GraphCost(
        weight_bytes=float(sum(np.prod(i.dims) * _ITEM.get(i.data_type, 4) for i in model.graph.initializer))
    )
    for node in model.graph.node:
        sizes = (
            {}
            if node.op_type in VIEWS
            else {
                n: float(np.prod(shapes[n][0])) * shapes[n][1]
                for n in list(node.input) + list(node.output)
                if n and n in shapes
            }
        )
        w_bytes = sum(v for n, v in sizes.items() if n in weights)
        cost.bytes += sum(sizes.values())
        flops, dense = 0.0, node.op_type in DENSE
        if dense:
            flops = _dense(node, shapes)
            if flops is None:
                cost.unknown_nodes += 1
                flops = 0.0
            cost.dense_flops += flops
            cost.by_op[node.op_type] = cost.by_op.get(node.op_type, 0.0) + flops
        elif node.op_type not in FREE:
            ref = node.input[0] if node.op_type in REDUCTIONS and node.input else node.output[0]
            if ref in shapes:
                flops = float(np.prod(shapes[ref][0]))
                cost.other_flops += flops
            else:
                cost.unknown_nodes += 1
        cost.nodes.append((node.op_type, flops, sum(sizes.values()) - w_bytes, w_bytes))
    if cost.unknown_nodes:
        log.warning("%s: %d node(s) with unknown shapes were counted as 0 FLOPs", path, cost.unknown_nodes)
    return cost


def loop_cost(graph_costs: dict[str, GraphCost], stage_graphs: list[str], iterations: int) -> dict:
    """FLOPs and bytes of a frame through ``iterations`` steps: each step runs its stage's encoder
    graph (``stage_graphs[t]``, the last repeating) and the generator."""
    total = {"dense_flops": 0.0, "other_flops": 0.0, "bytes": 0.0}
    for t in range(iterations):
        for key in (stage_graphs[min(t, len(stage_graphs) - 1)], "generator"):
            for k in total:
                total[k] += getattr(graph_costs[key], k)
    return total
