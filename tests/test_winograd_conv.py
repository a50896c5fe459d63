"""Winograd F(4x4, 3x3) convolutions (export/winograd_conv.py): equal to F.conv2d in PyTorch and in
ONNX Runtime, swapped in only where eligible, and used by the CPU form of the graphs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.winograd_conv import WinogradConv2d, eligible, replace_convs, transformed_weight, worth_it


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (2, 5, 9, 13), (1, 3, 4, 4), (3, 16, 1, 7)])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_the_direct_convolution(shape, bias):
    torch.manual_seed(0)
    b, c, h, w = shape
    weight = torch.randn(7, c, 3, 3)
    bias_t = torch.randn(7) if bias else None
    x = torch.randn(b, c, h, w)
    want = F.conv2d(x.double(), weight.double(), None if bias_t is None else bias_t.double(), padding=1)
    got = WinogradConv2d(weight, bias_t)(x)
    assert got.shape == want.shape and _relative(got, want) < 1e-5


def test_exported_graph_runs_in_onnx_runtime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from export.onnx_export import export_onnx

    torch.manual_seed(1)
    conv = WinogradConv2d(torch.randn(32, 16, 3, 3), torch.randn(32)).eval()
    x = torch.randn(2, 16, 12, 12)
    path = tmp_path / "w.onnx"
    export_onnx(conv, {"x": x}, "y", path, max_batch=4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis stays dynamic
        xb = torch.randn(batch, 16, 12, 12)
        got = torch.from_numpy(session.run(None, {"x": xb.numpy()})[0])
        assert _relative(got, F.conv2d(xb.double(), conv_weight(conv), conv.bias.double(), padding=1)) < 1e-5
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "Col2Im" in ops and "MatMul" in ops and "Conv" in ops


def conv_weight(conv: WinogradConv2d) -> torch.Tensor:
    """Recover g from U = G g G^T (G has a left inverse): the test's independent check of U."""
    from export.winograd_conv import G

    pinv = np.linalg.pinv(G)
    u = conv.u.double().numpy().reshape(6, 6, conv.out_channels, conv.in_channels)
    return torch.from_numpy(np.einsum("pi,ijoc,qj->ocpq", pinv, u, pinv))


def test_replace_swaps_exactly_the_eligible_convs():
    wide = 256
    model = nn.Sequential(
        nn.Conv2d(wide, wide, 3, 1, 1, bias=False),  # swapped
        nn.Sequential(nn.Conv2d(wide, wide, 3, 1, 1)),  # swapped (nested, with bias)
        nn.Conv2d(wide, wide, 3, 2, 1),  # stride 2
        nn.Conv2d(wide, wide, 1),  # 1x1
        nn.Conv2d(wide, wide, 3, 1, 1, groups=2),  # grouped
        nn.Conv2d(wide, wide, 3, 1, 2, dilation=2),  # dilated
        nn.Conv2d(wide, 64, 3, 1, 1),  # too narrow to win
    ).eval()
    x = torch.randn(1, wide, 8, 8)
    with torch.no_grad():
        want = model[:2](x)
    assert replace_convs(model) == 2
    assert isinstance(model[0], WinogradConv2d) and isinstance(model[1][0], WinogradConv2d)
    assert all(isinstance(m, nn.Conv2d) for m in model[2:])
    with torch.no_grad():
        assert _relative(model[:2](x), want) < 5e-5  # two layers, each ~1e-5


def test_map_size_counts_when_an_example_is_given():
    model = nn.Sequential(nn.Conv2d(256, 256, 3, 1, 1), nn.MaxPool2d(4), nn.Conv2d(256, 256, 3, 1, 1)).eval()
    assert replace_convs(model, torch.zeros(1, 256, 16, 16)) == 1  # the second conv reads 4x4 maps
    assert isinstance(model[0], WinogradConv2d) and isinstance(model[2], nn.Conv2d)


def test_worth_it_follows_the_measurements():
    assert worth_it(512, 512) and worth_it(256, 512) and worth_it(128, 128, side=256)
    assert not worth_it(128, 128, side=64) and not worth_it(64, 64, side=1024) and not worth_it(128, 128)
    assert not worth_it(512, 512, side=4)
    assert not eligible(nn.Conv2d(512, 512, 3, 1, 1, padding_mode="reflect"))


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match=r"\[out, in, 3, 3\]"):
        transformed_weight(torch.randn(4, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\[out, in, 3, 3\]"):
        WinogradConv2d(torch.randn(4, 3, 3))


def test_cpu_form_of_the_graphs_uses_it():
    """The CPU form of a wide generator and an IR encoder carry Winograd convs; the portable form not."""
    from export.graphs import GeneratorGraph
    from export.models.stylegan2 import Generator
    from export.optimize import optimize_graph

    torch.manual_seed(2)
    g = Generator(16, 32, 2, channel_multiplier=1,
                  channels={4: 256, 8: 256, 16: 128}).eval()
    graph = GeneratorGraph(g).eval()
    portable, names = optimize_graph(graph)
    cpu, cpu_names = optimize_graph(graph, cpu=True)
    assert "winograd_convs" not in names and "winograd_convs" in cpu_names
    assert not any(isinstance(m, WinogradConv2d) for m in portable.modules())
    assert sum(isinstance(m, WinogradConv2d) for m in cpu.modules()) == 1  # the 256-wide conv at 8 px (not 4)
    z = torch.randn(2, g.n_latent, 32)
    with torch.no_grad():
        assert _relative(cpu(z), graph(z)) < 1e-4


def test_counted_flops_show_the_saving():
    """export/cpu_graphs.dense_flops, which the benchmarks' executed-FLOP figures come from."""
    from export.cpu_graphs import dense_flops

    class Wrap(nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x)

    weight = torch.randn(256, 256, 3, 3)
    x = torch.randn(2, 256, 32, 32)  # counted at batch 1
    direct = dense_flops(Wrap(nn.Conv2d(256, 256, 3, 1, 1, bias=False)), {"x": x})
    assert direct == 2 * 9 * 256 * 256 * 32 * 32
    # 36 products per 16 outputs (a quarter of the direct MACs), plus the two transforms
    assert 0.25 < dense_flops(Wrap(WinogradConv2d(weight)), {"x": x}) / direct < 0.32
