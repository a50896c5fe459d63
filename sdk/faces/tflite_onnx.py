"""Convert the mediapipe back end's two ``.tflite`` models to ONNX, so ONNX Runtime (a core
dependency) runs them and the back end needs no extra package:
``python -m sdk.faces.tflite_onnx`` (needs ``ai-edge-litert`` for the TFLite schema, and ``onnx``).

A converter for exactly the operators these graphs use (CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU,
PRELU, MAX_POOL_2D, PAD, RESHAPE, CONCATENATION, DEQUANTIZE of float16 weights), not a general
one: any other operator stops it with its name. Activations are laid out NCHW inside the graph
(ONNX's convolutions); the inputs and outputs keep TFLite's NHWC shapes and names, so the two
runtimes are interchangeable (``tests/sdk/faces/test_face_landmarks_fast.py`` compares them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MODELS = Path(__file__).with_name("models")
NAMES = ("face_detection_short_range", "face_landmark")
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}


class _Graph:
    """One TFLite subgraph read into ONNX nodes, initializers and per-tensor layouts."""

    def __init__(self, schema, model) -> None:
        self.S, self.model = schema, model
        self.g = model.Subgraphs(0)
        self.codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self.consts: dict[int, np.ndarray] = {}
        self.nchw: set[int] = set()  # tensors held NCHW in the ONNX graph
        self._n = 0

    def name(self, t: int) -> str:
        return self.g.Tensors(t).Name().decode()

    def const(self, t: int) -> np.ndarray | None:
        if t in self.consts:
            return self.consts[t]
        tensor = self.g.Tensors(t)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            return None
        arr = np.frombuffer(data.tobytes(), dtype=_DTYPES[tensor.Type()]).reshape(tensor.ShapeAsNumpy())
        self.consts[t] = arr
        return arr

    def weight(self, t: int) -> np.ndarray:
        """The constant tensor ``t`` (a weight), or ValueError when it is computed."""
        arr = self.const(t)
        if arr is None:
            raise ValueError(f"tensor {self.name(t)!r} was expected to be a constant")
        return arr

    def init(self, arr: np.ndarray, hint: str) -> str:
        self._n += 1
        name = f"{hint}_{self._n}"
        self.inits[name] = np.ascontiguousarray(arr)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        from onnx import helper

        self._n += 1
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{self._n}", **attrs))

    def act(self, fused: int, out: str) -> str:
        """``out`` through a fused activation: the name of the pre-activation tensor to write."""
        if fused == 0:
            return out
        if fused != 1:
            raise ValueError(f"fused activation {fused} is not supported (RELU only)")
        pre = out + "_pre"
        self.node("Relu", [pre], [out])
        return pre

    def options(self, op, cls):
        table = op.BuiltinOptions()
        opts = getattr(self.S, cls)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def padding(self, opts) -> str:
        return "SAME_UPPER" if opts.Padding() == self.S.Padding.SAME else "VALID"

    def convert(self) -> None:
        g = self.g
        for i in range(g.InputsLength()):  # NHWC in, NCHW inside
            t = g.Inputs(i)
            self.node("Transpose", [self.name(t)], [self.name(t) + "_nchw"], perm=TO_NCHW)
            self.nchw.add(t)
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            kind = self.codes[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            ins = [op.Inputs(j) for j in range(op.InputsLength())]
            out = op.Outputs(0)
            getattr(self, "op_" + kind.lower(), self.unsupported(kind))(op, ins, out)
        for i in range(g.OutputsLength()):
            t = g.Outputs(i)
            if t in self.nchw:  # else the last operator wrote it under its own name
                self.node("Transpose", [self.ref(t)], [self.name(t)], perm=TO_NHWC)

    def unsupported(self, kind: str):
        def fail(*_):
            raise ValueError(f"TFLite operator {kind} has no conversion here")

        return fail

    def ref(self, t: int) -> str:
        """The ONNX name of tensor ``t`` (its NCHW copy where it has one)."""
        return self.name(t) + ("_nchw" if t in self.nchw else "")

    def out(self, t: int, nchw: bool) -> str:
        if nchw:
            self.nchw.add(t)
        return self.ref(t)

    def op_dequantize(self, op, ins, out) -> None:
        self.consts[out] = self.weight(ins[0]).astype(np.float32)

    def _conv(self, op, ins, out, weights: np.ndarray, group: int, opts) -> None:
        bias = self.weight(ins[2]).astype(np.float32)
        pre = self.act(opts.FusedActivationFunction(), self.out(out, True))
        self.node(
            "Conv",
            [self.ref(ins[0]), self.init(weights, "w"), self.init(bias, "b")],
            [pre],
            strides=[opts.StrideH(), opts.StrideW()],
            dilations=[opts.DilationHFactor(), opts.DilationWFactor()],
            auto_pad=self.padding(opts),
            kernel_shape=list(weights.shape[2:]),
            group=group,
        )

    def op_conv_2d(self, op, ins, out) -> None:
        w = self.weight(ins[1]).astype(np.float32)  # O H W I
        self._conv(op, ins, out, w.transpose(0, 3, 1, 2), 1, self.options(op, "Conv2DOptions"))

    def op_depthwise_conv_2d(self, op, ins, out) -> None:
        opts = self.options(op, "DepthwiseConv2DOptions")
        w = self.weight(ins[1]).astype(np.float32)  # 1 H W C*M
        channels = int(self.g.Tensors(ins[0]).ShapeAsNumpy()[3])
        self._conv(op, ins, out, w.transpose(3, 0, 1, 2), channels, opts)

    def _operand(self, t: int, nchw: bool) -> str:
        arr = self.const(t)
        if arr is None:
            return self.ref(t)
        arr = arr.astype(np.float32)
        if nchw and arr.ndim == 4:
            arr = arr.transpose(TO_NCHW)
        elif nchw and arr.ndim in (1, 3):  # broadcast over channels (C) or (H, W, C) as TFLite does
            arr = arr.reshape(-1, 1, 1) if arr.ndim == 1 or arr.shape[:2] == (1, 1) else arr.transpose(2, 0, 1)
        return self.init(arr, "k")

    def op_add(self, op, ins, out) -> None:
        nchw = any(t in self.nchw for t in ins)
        pre = self.act(self.options(op, "AddOptions").FusedActivationFunction(), self.out(out, nchw))
        self.node("Add", [self._operand(t, nchw) for t in ins], [pre])

    def op_relu(self, op, ins, out) -> None:
        self.node("Relu", [self.ref(ins[0])], [self.out(out, ins[0] in self.nchw)])

    def op_prelu(self, op, ins, out) -> None:
        nchw = ins[0] in self.nchw
        self.node("PRelu", [self.ref(ins[0]), self._operand(ins[1], nchw)], [self.out(out, nchw)])

    def op_max_pool_2d(self, op, ins, out) -> None:
        opts = self.options(op, "Pool2DOptions")
        pre = self.act(opts.FusedActivationFunction(), self.out(out, True))
        self.node(
            "MaxPool",
            [self.ref(ins[0])],
            [pre],
            kernel_shape=[opts.FilterHeight(), opts.FilterWidth()],
            strides=[opts.StrideH(), opts.StrideW()],
            auto_pad=self.padding(opts),
        )

    def op_pad(self, op, ins, out) -> None:
        pads = self.weight(ins[1]).astype(np.int64)  # [4, 2] NHWC (before, after)
        if ins[0] in self.nchw:
            pads = pads[TO_NCHW]
        self.node(
            "Pad", [self.ref(ins[0]), self.init(pads.T.reshape(-1), "pads")], [self.out(out, ins[0] in self.nchw)]
        )

    def op_reshape(self, op, ins, out) -> None:
        src = self.ref(ins[0])
        if ins[0] in self.nchw:  # reshape in TFLite's element order
            src = self.name(ins[0]) + "_nhwc"
            self.node("Transpose", [self.ref(ins[0])], [src], perm=TO_NHWC)
        shape = self.g.Tensors(out).ShapeAsNumpy().astype(np.int64)
        self.node("Reshape", [src, self.init(shape, "shape")], [self.out(out, False)])

    def op_concatenation(self, op, ins, out) -> None:
        opts = self.options(op, "ConcatenationOptions")
        nchw = all(t in self.nchw for t in ins)
        axis = opts.Axis() % len(self.g.Tensors(out).ShapeAsNumpy())
        pre = self.act(opts.FusedActivationFunction(), self.out(out, nchw))
        self.node("Concat", [self.ref(t) for t in ins], [pre], axis=TO_NCHW.index(axis) if nchw else axis)


def convert(tflite: Path, onnx_path: Path) -> None:
    """Write ``tflite``'s graph as ONNX (opset 17) to ``onnx_path``."""
    import onnx
    from ai_edge_litert import schema_py_generated as schema
    from onnx import TensorProto, helper, numpy_helper

    model = schema.Model.GetRootAsModel(tflite.read_bytes(), 0)
    graph = _Graph(schema, model)
    graph.convert()
    g = model.Subgraphs(0)

    def info(t: int):
        return helper.make_tensor_value_info(graph.name(t), TensorProto.FLOAT, g.Tensors(t).ShapeAsNumpy().tolist())

    onnx_graph = helper.make_graph(
        graph.nodes,
        tflite.stem,
        [info(g.Inputs(i)) for i in range(g.InputsLength())],
        [info(g.Outputs(i)) for i in range(g.OutputsLength())],
        [numpy_helper.from_array(v, k) for k, v in graph.inits.items()],
    )
    out = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sdk.faces.tflite_onnx"
    )
    out.ir_version = 8
    onnx.checker.check_model(out)
    onnx.save(out, str(onnx_path))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Convert sdk/faces/models/*.tflite to ONNX beside them")
    parser.add_argument("--models", type=Path, default=MODELS)
    args = parser.parse_args(argv)
    for name in NAMES:
        convert(args.models / f"{name}.tflite", args.models / f"{name}.onnx")
        print(args.models / f"{name}.onnx")


if __name__ == "__main__":
    main()
