"""The batch-1 blocked-styles rewrite of the generator's optimised CPU graph (export/ort_cpu/blocked_styles.py):
same images at batch 1 (the rewritten branch) and at larger batches (the original branch), the
styles, noise, bias and leaky ReLU really inside the blocked convolutions, other graphs untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from export.fast_forms.optimize import optimize_graph
from export.models.stylegan2 import Generator
from export.onnx.graphs import GeneratorGraph
from export.onnx.tracing import export_onnx
from export.ort_cpu.batch1_branch import apply_batch1_rewrites, rewrite_batch1
from export.ort_cpu.blocked_styles import NCHWC, block_of, nchwc_block_size
from export.ort_cpu.cpu_graphs import _preoptimised_session, _session
from helpers.generators import noisy
from sdk.backends.onnxruntime.cpu import cpu_tag

CHANNELS = {4: 32, 8: 32, 16: 32, 32: 32, 64: 16}  # multiples of both block sizes (8 and 16)


def _run(path, z: np.ndarray) -> np.ndarray:
    return _preoptimised_session(path).run(None, {"z": z})[0]  # as the SDK opens it


@pytest.fixture(scope="module")
def optimised_generator(tmp_path_factory):
    """A 64 px generator's CPU form as ONNX Runtime optimised it (the build's step before the
    rewrite), and the original module."""
    tmp = tmp_path_factory.mktemp("blocked_styles")
    torch.manual_seed(3)
    original = GeneratorGraph(noisy(Generator(64, style_dim=32, n_mlp=2, channels=CHANNELS))).eval()
    exported, _ = optimize_graph(original, cpu=True)
    z = torch.randn(2, original.generator.n_latent, 32)
    export_onnx(exported, {"z": z}, "image", tmp / "source.onnx", max_batch=4)
    _session(tmp / "source.onnx", optimise_into=tmp / "generator.cpu.onnx")
    with torch.no_grad():
        want = original(z).numpy()
    return tmp / "generator.cpu.onnx", z.numpy(), want


def test_block_size_matches_the_cpu():
    tag, block = cpu_tag(), nchwc_block_size()  # MLAS blocks 16 floats with AVX-512, 8 with AVX2
    assert block == {"x86_64-avx512": 16, "x86_64-avx2": 8}.get(tag, block) and block in (None, 8, 16)


@pytest.mark.parametrize("b", [8, 16])  # the AVX2 and the AVX-512 layout, recognised on any host
def test_block_size_is_read_from_either_layout(b):
    c = 16
    weight = np.arange(c * c, dtype=np.float32).reshape(c, c, 1, 1)
    laid_out = weight.reshape(c // b, b, c // b, b).transpose(0, 2, 3, 1).reshape(c, c, 1, 1)  # [O/b, I/b, i, o]
    assert block_of(weight, [laid_out]) == b
    assert block_of(weight, [weight]) is None and block_of(weight, [laid_out, laid_out]) is None


def test_rewritten_graph_equals_the_module_at_batch_1_and_more(optimised_generator):
    path, z, want = optimised_generator
    before = _run(path, z)
    counts = apply_batch1_rewrites(path)
    assert counts["blocked_styles_batch1"] >= 4  # the 32 and 64 px up-convs and convs at least
    assert not path.with_name(path.name + ".tmp").exists()
    scale = np.abs(want).max()
    for batch in (z[:1], z):  # the rewritten branch, then the original one
        got = _run(path, batch)
        assert np.abs(got - want[: len(batch)]).max() / scale < 1e-4  # Winograd layers: ~1e-5 each
    assert np.array_equal(_run(path, z), before)  # batch 2 runs the original nodes, bit for bit


def test_styles_noise_and_activation_are_inside_the_convs(optimised_generator):
    path, _, _ = optimised_generator
    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type == "If" for n in model.graph.node):
        apply_batch1_rewrites(path)
        model = onnx.load(str(path), load_external_data=False)
    switch = next(n for n in model.graph.node if n.op_type == "If")
    branches = {a.name: a.g for a in switch.attribute}
    one, many = branches["then_branch"].node, branches["else_branch"].node
    fused = [
        n for n in one if n.domain == NCHWC and n.op_type == "Conv" and any(a.name == "activation" for a in n.attribute)
    ]
    assert len(fused) >= 4 and all(len(n.input) == 4 and n.input[3] for n in fused)  # Sum = noise + bias
    # ... reading the constant [1, 1, H, W] noise maps as they are (NCHW input): no per-call pad and reorder
    inits = {i.name: i for i in model.graph.initializer}
    assert all(list(inits[n.input[0]].dims[:2]) == [1, 1] for n in fused)
    # the standalone passes are gone from the batch-1 branch: no leaky ReLU, fewer reorders
    assert sum(n.op_type == "LeakyRelu" for n in one) == 0 < sum(n.op_type == "LeakyRelu" for n in many)
    count = lambda nodes, *ops: sum(n.op_type in ops for n in nodes)  # noqa: E731
    assert count(one, "ReorderInput", "ReorderOutput") < count(many, "ReorderInput", "ReorderOutput")
    assert count(one, "MatMul") == 0 < count(many, "MatMul")  # the ToRGBs as blocked 1x1 convs
    assert count(one, "Col2Im") < count(many, "Col2Im")  # the up-convs' interleaves as blocked concats
    # the weights stay in the data file: no initializer grew inline
    assert all(
        i.data_location == onnx.TensorProto.EXTERNAL or i.ByteSize() < 64 * 1024 for i in model.graph.initializer
    )


def test_graphs_without_modulated_convs_are_left_alone(tmp_path):
    weight = numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.2),
        ],
        "plain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 16, 16])],
        [weight],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    _session(tmp_path / "plain.onnx", optimise_into=tmp_path / "plain.cpu.onnx")
    before = (tmp_path / "plain.cpu.onnx").read_bytes()
    assert apply_batch1_rewrites(tmp_path / "plain.cpu.onnx") == {}
    assert (tmp_path / "plain.cpu.onnx").read_bytes() == before
    model = onnx.load(str(tmp_path / "plain.cpu.onnx"))
    assert rewrite_batch1(model, nchwc_block_size()) == {}
