"""Winograd F(4x4, 3x3) convolutions (export/fast_forms/winograd_conv.py): equal to F.conv2d in PyTorch and in
ONNX Runtime, swapped in only where eligible, and used by the CPU form of the graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.fast_forms.winograd_conv import (
    ODD,
    STRIDED_M4_MAX_EXTRA,
    WEIGHT_BOUND,
    WinogradConv2d,
    eligible,
    even_phase,
    replace_convs,
    strided_even_phase,
    toom_cook,
    transformed_weight,
    worth_it,
    worth_it_strided,
)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (2, 5, 9, 13), (1, 3, 4, 4), (3, 16, 1, 7), (1, 4, 2, 3)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_the_direct_convolution(shape, stride, bias):
    torch.manual_seed(0)
    b, c, h, w = shape
    weight = torch.randn(7, c, 3, 3)
    bias_t = torch.randn(7) if bias else None
    x = torch.randn(b, c, h, w)
    want = F.conv2d(x.double(), weight.double(), None if bias_t is None else bias_t.double(), stride=stride, padding=1)
    got = WinogradConv2d(weight, bias_t, stride)(x)
    assert got.shape == want.shape and _relative(got, want) < 1e-5


@pytest.mark.parametrize("in_scaled,out_scaled", [(True, True), (True, False), (False, True)])
def test_channel_scales_folded_into_the_weights(in_scaled, out_scaled):
    """A modulated conv's style and demodulation applied to the transformed weights, per sample."""
    torch.manual_seed(1)
    weight, x = torch.randn(6, 5, 3, 3), torch.randn(2, 5, 12, 10)
    s, d = torch.randn(2, 5) if in_scaled else None, torch.rand(2, 6) + 0.5 if out_scaled else None
    xs = x if s is None else x * s[:, :, None, None]
    want = F.conv2d(xs.double(), weight.double(), padding=1)
    want = want if d is None else want * d[:, :, None, None].double()
    got = WinogradConv2d(weight)(x, in_scale=s, out_scale=d)
    assert got.shape == want.shape and _relative(got, want) < 1e-5
    with pytest.raises(AssertionError, match="stride-1"):
        WinogradConv2d(weight, stride=2)(x, in_scale=torch.ones(2, 5))


def test_styles_fold_where_the_maps_outweigh_the_weights():
    # 36 * 128 * 128 products' weights against 128-channel maps: worth it from about 72 px on
    assert WinogradConv2d(torch.randn(128, 128, 3, 3)).folds_styles_cheaply(128)
    assert WinogradConv2d(torch.randn(256, 256, 3, 3)).folds_styles_cheaply(128)
    assert not WinogradConv2d(torch.randn(512, 512, 3, 3)).folds_styles_cheaply(64)
    assert not WinogradConv2d(torch.randn(128, 128, 3, 3)).folds_styles_cheaply(32)
    assert not WinogradConv2d(torch.randn(8, 8, 3, 3), stride=2).folds_styles_cheaply(1024)


@pytest.mark.parametrize(
    "m,r,points", [(4, 3, (0, 1, -1, 2, -2)), (4, 2, (0, 1, -1, 2)), (2, 2, (0, 1)), (2, 3, (0, 1, -1))]
)
def test_toom_cook_gives_a_correlation(m, r, points):
    """``AT @ ((G @ g) * (BT @ d))`` is the m-output correlation of g with d, and BT is integral."""
    at, g, bt = toom_cook(m, r, points)
    rng = np.random.default_rng(m * r)
    w, d = rng.standard_normal(r), rng.standard_normal(m + r - 1)
    want = np.array([w @ d[i : i + r] for i in range(m)])
    assert np.allclose(at @ ((g @ w) * (bt @ d)), want, atol=1e-12)
    assert np.array_equal(bt, np.round(bt))
    with pytest.raises(ValueError, match="distinct finite points"):
        toom_cook(m, r, points[:-1])


@pytest.mark.parametrize("m", [2, 4])
def test_stride_two_transforms_match_the_polyphase_split(m):
    """One dimension of the stride-2 form: the even phase reads samples 0, 2, .., 2m of a tile with
    the taps (g0, g2), the odd phase samples 1, 3, .., 2m - 1 with g1; together they are the 3-tap
    stride-2 correlation, 2m + 1 products per m outputs instead of 3m."""
    even = even_phase(m)
    rng = np.random.default_rng(3)
    w, d = rng.standard_normal(3), rng.standard_normal(even.span)
    evens = even.at @ ((even.g @ w[list(even.taps)]) * (even.bt @ d))
    odds = np.array([(ODD.g @ w[list(ODD.taps)]) * (ODD.bt @ d[2 * i : 2 * i + ODD.span]) for i in range(m)])[:, 0]
    want = np.array([w @ d[2 * i : 2 * i + 3] for i in range(m)])
    assert np.allclose(evens + odds, want, atol=1e-12)
    assert even.positions + ODD.positions * m == 2 * m + 1 and even.step == 2 * m and ODD.step == 2
    torch.manual_seed(m)
    weight, x = torch.randn(5, 3, 3, 3), torch.randn(1, 3, 11, 14)
    got = WinogradConv2d(weight, stride=2, even=even)(x)
    assert _relative(got, F.conv2d(x.double(), weight.double(), stride=2, padding=1)) < 1e-5


def test_strided_tile_size_follows_the_memory_of_its_weights():
    """m = 4 where its 20 extra [out, in] matrices fit the budget: the 256 px encoders' 7 merged
    fine heads (512 -> 3584), not the 1024 px encoders' 11 (512 -> 5632), whose loop would reach
    its peak-memory limit."""
    assert strided_even_phase(512, 7 * 512).m == 4
    assert strided_even_phase(512, 11 * 512).m == 2
    assert 20 * 512 * 7 * 512 * 4 <= STRIDED_M4_MAX_EXTRA < 20 * 512 * 11 * 512 * 4


@pytest.mark.parametrize("stride,out", [(1, 32), (1, 64), (2, 64), (2, 4)])
def test_exported_graph_runs_in_onnx_runtime(tmp_path, stride, out):
    """Both forms of the products run: grouped 1x1 convs where the weights outweigh the tiles
    (``WEIGHT_BOUND``), one batched MatMul elsewhere."""
    ort = pytest.importorskip("onnxruntime")
    from export.onnx.tracing import export_onnx

    torch.manual_seed(1)
    conv = WinogradConv2d(torch.randn(out, 16, 3, 3), torch.randn(out), stride).eval()
    x = torch.randn(2, 16, 12, 12)
    path = tmp_path / "w.onnx"
    export_onnx(conv, {"x": x}, "y", path, max_batch=4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis stays dynamic
        xb = torch.randn(batch, 16, 12, 12)
        got = torch.from_numpy(session.run(None, {"x": xb.numpy()})[0])
        want = F.conv2d(xb.double(), conv_weight(conv), conv.bias.double(), stride=stride, padding=1)
        assert _relative(got, want) < 1e-5
    graph = __import__("onnx").load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Col2Im" in ops and "Conv" in ops
    side = 12 // stride
    tiles = [-(-side // p.rows.m) * -(-side // p.cols.m) for p in conv.paths]
    as_convs = sum(out >= WEIGHT_BOUND * t for t in tiles)
    grouped = [n for n in graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(grouped) == len(tiles) + as_convs  # the input transforms, and the products where convs
    matmuls = sum(n.op_type == "MatMul" for n in graph.node)
    assert matmuls == 2 * len(tiles) - as_convs  # the output transforms, and the products where MatMuls
    if (stride, out) in ((1, 64), (2, 64)):
        assert as_convs >= 1  # the cases chosen to cover the conv form
    if (stride, out) in ((1, 32), (2, 64), (2, 4)):
        assert as_convs < len(tiles)  # ... and the MatMul form


def conv_weight(conv: WinogradConv2d) -> torch.Tensor:
    """Recover the 3x3 weight from the paths' ``U = G g G^T`` (each G has a left inverse) and the
    centre tap: the test's independent check of the transformed weights."""
    weight = np.zeros((conv.out_channels, conv.in_channels, 3, 3))
    for path in conv.paths:
        rows, cols = path.rows, path.cols
        u = path.u.double().numpy().reshape(rows.positions, cols.positions, conv.out_channels, conv.in_channels)
        sub = np.einsum("pi,ijoc,qj->ocpq", np.linalg.pinv(rows.g), u, np.linalg.pinv(cols.g))
        weight[np.ix_(range(conv.out_channels), range(conv.in_channels), rows.taps, cols.taps)] = sub
    if conv.centre is not None:
        weight[:, :, 1, 1] = conv.centre.double().numpy()[:, :, 0, 0]
    return torch.from_numpy(weight)


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
    # stride 2: the merged fine style heads (512 -> k * 512 on 64 px maps, k >= 3), nothing narrower or smaller
    assert worth_it_strided(512, 3584, 64) and worth_it_strided(512, 1536, 64)
    assert not worth_it_strided(512, 512, 64) and not worth_it_strided(512, 2048, 32)
    assert not worth_it_strided(256, 1024, 128)


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match=r"\[out, in, 3, 3\]"):
        transformed_weight(torch.randn(4, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\[out, in, 3, 3\]"):
        WinogradConv2d(torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match="stride 1 or 2"):
        WinogradConv2d(torch.randn(4, 4, 3, 3), stride=3)


def test_cpu_form_of_the_graphs_uses_it():
    """The CPU form of a wide generator and an IR encoder carry Winograd convs; the portable form not."""
    from export.fast_forms.optimize import optimize_graph
    from export.models.stylegan2 import Generator
    from export.onnx.graphs import GeneratorGraph

    torch.manual_seed(2)
    g = Generator(16, 32, 2, channel_multiplier=1, channels={4: 256, 8: 256, 16: 128}).eval()
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
    """export.ort_cpu.cpu_graphs.dense_flops, which the benchmarks' executed-FLOP figures come from."""
    from export.ort_cpu.cpu_graphs import dense_flops

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
    # stride 2, 4x wider output (as the style heads): 25 products per 4 outputs instead of 36
    # (0.694), plus the transforms (the input transform's is linear in the input channels only)
    direct = dense_flops(Wrap(nn.Conv2d(256, 1024, 3, 2, 1, bias=False)), {"x": x})
    strided = WinogradConv2d(torch.randn(1024, 256, 3, 3), stride=2)
    assert 25 / 36 < dense_flops(Wrap(strided), {"x": x}) / direct < 0.74
