"""FP16 graphs keep a Resize's ``scales`` as an FP32 initializer (``export/precision/fp16.py``): computed
scales (an FP16 constant plus a Cast) send TensorRT down its dynamic-resize path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxconverter_common")


def test_resize_scales_stay_float32_initializers(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export.precision.fp16 import convert_to_fp16

    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest", name="up"),
        helper.make_node("Mul", ["r", "w"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 16, 16])],
        [
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(np.full((1, 4, 1, 1), 0.5, np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "fp32.onnx")
    convert_to_fp16(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx")
    converted = onnx.load(tmp_path / "fp16.onnx")
    resize = next(n for n in converted.graph.node if n.op_type == "Resize")
    inits = {t.name: t for t in converted.graph.initializer}
    assert resize.input[2] in inits and inits[resize.input[2]].data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(numpy_helper.to_array(inits[resize.input[2]]), [1, 1, 2, 2])
    assert not [n for n in converted.graph.node if resize.input[2] in n.output]  # no Cast computes it
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 8, 8)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(tmp_path / "fp16.onnx"), run(tmp_path / "fp32.onnx"), rtol=2e-3, atol=2e-3)
