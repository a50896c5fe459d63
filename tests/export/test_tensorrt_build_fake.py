"""The engine build's numerics policy and its Polygraphy comparison, without a GPU.

The fake TensorRT sets ``BuilderFlag.TF32`` by default, as TensorRT does, and its engines then
compute Conv/MatMul/Gemm on TF32-rounded operands (``fakes/tf32.py``). The comparison runs
Polygraphy for real: ``Comparator.run`` + ``SimpleCompareFunc`` over the fake engine's graph and
the bundle's graph, both on ONNX Runtime (CPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from fakes import fake_cuda, fake_tensorrt
from fakes.tf32 import round_to_tf32

K, N = 512, 64  # a MatMul wide enough for TF32 rounding to show at 1e-3, as the real graphs' convs do


@pytest.fixture
def fake_build(monkeypatch):
    import export.tensorrt.engines as tb

    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    trt = fake_tensorrt.install(monkeypatch, cudart)
    monkeypatch.setattr(tb, "engine_runner", fake_tensorrt.polygraphy_runner)
    return tb, trt


def matmul_folder(tmp_path):
    """A one-graph folder and manifest: ``y = x @ W`` with ``x`` [batch, K], W ~ N(0, 1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    model.ir_version = 8
    onnx.save(model, tmp_path / "mm.onnx")
    entry = {
        "file": "mm.onnx",
        "precision": "fp32",
        "inputs": [{"name": "x", "shape": ["batch", K], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": ["batch", N], "dtype": "float32"}],
    }
    return tmp_path, {"graphs": {"mm": entry}}


def test_tf32_emulation_rounds_to_ten_mantissa_bits():
    x = np.float32([1 + 2**-12, 1 + 3 * 2**-12, -3.14159265, 1e-30])
    got = round_to_tf32(x)
    np.testing.assert_array_equal(got[:2], np.float32([1.0, 1 + 2**-10]))
    assert (got.view(np.uint32) & 0x1FFF == 0).all()  # the 13 low mantissa bits are gone
    np.testing.assert_allclose(got, x, rtol=2**-11)


def test_fp32_builds_clear_tf32_and_pass_polygraphy(fake_build, tmp_path):
    tb, _ = fake_build
    folder, manifest = matmul_folder(tmp_path)
    options = tb.EngineOptions(max_batch=4, opt_batch=2)  # compare=True: Polygraphy runs
    entry = tb.build_bundle_engines(folder, manifest, options)["mm"]
    header, _ = fake_tensorrt.read_plan((folder / entry["file"]).read_bytes())
    assert "TF32" not in header["builder_flags"] and entry["tf32"] is False
    comparison = entry["comparison"]
    assert comparison["passed"] and comparison["tolerance"] == "fp32" and comparison["rtol"] == 1e-3
    assert set(comparison["batches"]) == {"2", "4"}


def test_tf32_is_an_explicit_option_with_its_own_tolerance(fake_build, tmp_path):
    tb, _ = fake_build
    folder, manifest = matmul_folder(tmp_path)
    options = tb.EngineOptions(max_batch=4, tf32=True)
    plan, facts = tb.build_engine(folder / "mm.onnx", manifest["graphs"]["mm"], options)
    assert facts["tf32"] is True and "TF32" in fake_tensorrt.read_plan(plan)[0]["builder_flags"]
    graph = manifest["graphs"]["mm"]
    strict = tb.compare_with_onnxruntime(plan, folder / "mm.onnx", graph, options, "fp32", tf32=False)
    assert not strict["passed"]  # TF32 numerics at FP32's tolerance: what a build left at the default did
    loose = tb.compare_with_onnxruntime(plan, folder / "mm.onnx", graph, options, "fp32", tf32=True)
    assert loose["passed"] and loose["tolerance"] == "tf32" and loose["rtol"] == 1e-2
    entry = tb.build_bundle_engines(folder, manifest, options)["mm"]
    assert entry["tf32"] is True and entry["comparison"]["tolerance"] == "tf32"


def test_the_parser_refuses_ops_tensorrt_has_no_importer_for(fake_build, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    tb, _ = fake_build
    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"], name="dedupe")],
        "u",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "u.onnx")
    entry = {"inputs": [{"name": "x", "shape": ["batch"], "dtype": "float32"}]}
    with pytest.raises(
        tb.EngineBuildError,
        match=r"rejected u\.onnx: In node dedupe .*No importer registered for op: "
        r"Unique",
    ):
        tb.build_engine(tmp_path / "u.onnx", entry, tb.EngineOptions(compare=False))


def test_the_tiny_graphs_use_only_ops_tensorrt_imports(tiny_graphs):
    import onnx

    ops = {n.op_type for f in sorted(tiny_graphs.folder.glob("*.onnx")) for n in onnx.load(f).graph.node}
    assert ops and not ops & fake_tensorrt.UNSUPPORTED_OPS


@pytest.mark.parametrize("argv, tf32", [([], False), (["--tf32"], True)])
def test_the_command_line_asks_for_tf32_explicitly(tmp_path, argv, tf32):
    from export.build_engines import parse_args
    from export.builder.options import BuildOptions
    from export.tensorrt.engines import engine_options

    options = engine_options(BuildOptions.from_args(parse_args(["--out", str(tmp_path / "b"), *argv])), tmp_path / "b")
    assert options.tf32 is tf32 and ("--tf32" in options.rebuild_command) is tf32


def test_the_build_pass_builds_engines_with_the_build_options(fake_build, tmp_path, monkeypatch):
    """TensorRtPass: where TensorRT is found, the engines follow the build's options (batch
    profile, TF32, timing cache) and record the command that rebuilds them."""
    from export.builder.options import BuildOptions
    from export.builder.passes import BuildContext

    tb, _ = fake_build
    monkeypatch.setattr(tb, "tensorrt_version", lambda: "10.9.0")
    folder, manifest = matmul_folder(tmp_path)
    options = BuildOptions(checkpoint=tmp_path / "m.pt", max_batch=4, opt_batch=2, timing_cache=tmp_path / "cache")
    added = []
    ctx = BuildContext(folder, manifest, [], options, tmp_path / "bundle", lambda name: added.append(name) or "0" * 64)
    assert tb.TensorRtPass().applies(options)
    tb.TensorRtPass().run(ctx)
    entry = manifest["engines"]["mm"]
    assert added == [entry["file"]] and entry["tf32"] is False and entry["comparison"]["passed"]
    assert (
        entry["rebuild"]
        == f"python export/build_engines.py --checkpoint {tmp_path / 'm.pt'} --out {tmp_path / 'bundle'} --precision fp32"
    )
    assert (tmp_path / "cache").exists()
