"""TF32 emulation for the fake TensorRT's engines (a stand-in for Ampere+ tensor-core numerics).

TensorRT sets ``BuilderFlag.TF32`` by default, and then Conv/ConvTranspose/MatMul/Gemm may read
their FP32 operands rounded to TF32 (1 sign, 8 exponent, 10 mantissa bits) and accumulate in
FP32. :func:`tf32_graph` rewrites an ONNX graph so that ONNX Runtime on the CPU computes exactly
that: every FP32 data/weight operand of those ops goes through a Veltkamp split
(``t = c*x; hi = t - (t - x)``, ``c = 2**13 + 1``), which rounds a float32 to 11 significant
bits, round-to-nearest — the TF32 value — and the op itself still runs in FP32. Bias inputs
(Conv's and Gemm's third) are added in FP32 by the hardware and are left alone.
"""

from __future__ import annotations

import numpy as np

TF32_OPS = {"Conv": 2, "ConvTranspose": 2, "MatMul": 2, "Gemm": 2}  # op -> how many leading operands are rounded
_SPLIT = float(2**13 + 1)


def round_to_tf32(x: np.ndarray) -> np.ndarray:
    """The numpy twin of the graph rewrite (for tests of the emulation itself)."""
    x = np.asarray(x, np.float32)
    t = (x * np.float32(_SPLIT)).astype(np.float32)
    return (t - (t - x)).astype(np.float32)


def tf32_graph(onnx_bytes: bytes) -> bytes:
    """``onnx_bytes`` with TF32 rounding in front of every FP32 operand of :data:`TF32_OPS`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    model = onnx.load_from_string(onnx_bytes)
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    fp32 = {
        v.name
        for v in list(g.input) + list(g.value_info) + list(g.output)
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    fp32 |= {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(_SPLIT, np.float32), "tf32_split_c"))
    rounded: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        if node.op_type in TF32_OPS:
            for i in range(min(TF32_OPS[node.op_type], len(node.input))):
                name = node.input[i]
                if name not in fp32:
                    continue
                if name not in rounded:
                    base = f"tf32_{len(rounded)}"
                    new_nodes += [
                        helper.make_node("Mul", [name, "tf32_split_c"], [base + "_t"]),
                        helper.make_node("Sub", [base + "_t", name], [base + "_d"]),
                        helper.make_node("Sub", [base + "_t", base + "_d"], [base]),
                    ]
                    rounded[name] = base
                node.input[i] = rounded[name]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model.SerializeToString()
