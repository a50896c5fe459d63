"""The blocked-layout rewrites of the CPU graphs (export/fast_forms/prelu_pools.py): same values as the
modules they replace, applied only where they hold, and in ONNX Runtime they leave no ``PRelu``
and no reorder between the convolutions around it; PReLUs elsewhere become a max, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.fast_forms.optimize import optimize_graph
from export.fast_forms.prelu_pools import MaxPReLU, SplitPReLU, drop_identity_pools, rewrite_prelus, splittable
from export.fast_forms.winograd_conv import WinogradConv2d
from export.models.encoders import build_encoder
from export.models.ir_backbone import BottleneckIR
from export.onnx.graphs import EncoderStep
from export.onnx.tracing import export_onnx


def _prelu(slopes) -> nn.PReLU:
    p = nn.PReLU(len(slopes))
    with torch.no_grad():
        p.weight.copy_(torch.tensor(slopes, dtype=torch.float32))
    return p


def test_split_prelu_equals_prelu():
    torch.manual_seed(0)
    prelu = _prelu([-0.3, 0.0, 0.25, 0.9, 0.999, 0.5])
    y = torch.randn(2, 6, 7, 5) * 3
    y[0, :, 0, 0] = 0.0  # the kink itself
    got = SplitPReLU(prelu)(y)
    want = prelu(y)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("slopes", [[0.2, 1.0], [0.1, 1.5, 0.3]])
def test_prelu_with_a_slope_of_one_or_more_is_kept(slopes):
    prelu = _prelu(slopes)
    assert not splittable(prelu)
    with pytest.raises(ValueError, match="each < 1"):
        SplitPReLU(prelu)
    with pytest.raises(ValueError, match="each < 1"):
        MaxPReLU(prelu)
    seq = nn.Sequential(nn.Conv2d(3, len(slopes), 3, padding=1), prelu)
    assert rewrite_prelus(seq) == (0, 0) and seq[1] is prelu


def test_max_prelu_is_prelu_bit_for_bit():
    torch.manual_seed(1)
    prelu = _prelu([-0.3, 0.0, 0.25, 0.9, 0.999, 0.5])
    y = torch.randn(2, 6, 7, 5) * 3
    y[0, :, 0, 0] = 0.0  # the kink itself
    y[1, :, 0, 0] = -0.0
    assert torch.equal(MaxPReLU(prelu)(y), prelu(y))


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, y):
        return self.inner(y)


def test_max_prelu_is_prelu_bit_for_bit_in_onnxruntime(tmp_path):
    """ONNX Runtime's PRelu and the exported Mul + Max give the same floats."""
    import onnxruntime as ort

    torch.manual_seed(2)
    prelu = _prelu(list(np.linspace(-0.2, 0.95, 16)))
    y = torch.randn(1, 16, 12, 12) * 2
    outs = []
    for module, name in ((_Wrap(prelu), "prelu"), (_Wrap(MaxPReLU(prelu)), "max")):
        path = tmp_path / f"{name}.onnx"
        export_onnx(module.eval(), {"y": y}, "out", path, 2)
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ("PRelu" in ops) == (name == "prelu")
        outs.append(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"y": y.numpy()})[0])
    assert np.array_equal(outs[0], outs[1])


def test_prelus_after_a_plain_conv_are_split_the_others_maxed():
    single = nn.PReLU()  # one shared slope: ONNX Runtime's PRelu broadcasts it; nothing to gain
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.PReLU(8),  # conv -> BN -> PReLU: split
        nn.Conv2d(8, 8, 3, padding=1),
        nn.PReLU(8),  # conv -> PReLU: split
        WinogradConv2d(torch.randn(8, 8, 3, 3)),
        nn.PReLU(8),  # Winograd's output is plain: a max
        nn.Conv2d(8, 8, 1),
        single,  # one shared slope: kept
        nn.ReLU(),
        nn.PReLU(8),  # not after a conv: a max
    )
    assert rewrite_prelus(seq) == (2, 2)
    assert [type(m).__name__ for m in seq][2::2] == ["SplitPReLU", "SplitPReLU", "MaxPReLU", "PReLU", "MaxPReLU"]
    assert seq[8] is single


def test_identity_pools_are_dropped_and_subsampling_ones_kept():
    unit_same, unit_down = BottleneckIR(16, 16, 1), BottleneckIR(16, 16, 2)
    block = nn.Sequential(unit_same, unit_down)
    assert drop_identity_pools(block) == 1
    assert isinstance(unit_same.shortcut_layer, nn.Identity)
    assert isinstance(unit_down.shortcut_layer, nn.MaxPool2d)


def test_cpu_encoder_with_both_rewrites_equals_the_encoder():
    torch.manual_seed(2)
    enc = build_encoder(
        {"encoder_type": "BackboneEncoder", "num_layers": 50, "mode": "ir_se", "input_nc": 6, "n_styles": 10}
    ).eval()
    with torch.no_grad():  # slopes as a trained net has them: spread, all below 1
        for m in enc.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(-0.1, 0.6)
    step = EncoderStep(enc, feedback=True, residual=True, input_size=256, output_size=256, n_latent=10).eval()
    cpu, rewrites = optimize_graph(step, cpu=True)
    assert "split_prelu" in rewrites and "identity_pools_dropped" in rewrites
    # the stem, the 7 units on 64-128 channels and the first 256-channel unit (its first conv reads
    # 128 channels at 64 px); the other units' first convs are Winograd convolutions
    assert sum(isinstance(m, SplitPReLU) for m in cpu.modules()) == 9
    assert not any(isinstance(m, nn.MaxPool2d) and m.stride in (1, (1, 1)) for m in cpu.modules())
    x, y, z = torch.rand(1, 3, 256, 256) * 2 - 1, torch.rand(1, 3, 256, 256) * 2 - 1, torch.randn(1, 10, 512)
    with torch.no_grad():
        want = step(x, y, z)
        got = cpu(x, y, z)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    # the checkpoint module itself is untouched
    assert sum(isinstance(m, nn.PReLU) for m in enc.modules()) == 24 + 1


def _optimised_ops(module: nn.Module, x: torch.Tensor, tmp_path) -> tuple[list[str], np.ndarray]:
    """Op types of ``module`` as ONNX Runtime's CPU provider optimises it, and its output on ``x``."""
    import onnx
    import onnxruntime as ort

    src, dst = tmp_path / "src.onnx", tmp_path / "opt.onnx"
    export_onnx(module, {"x": x}, "out", src, max_batch=2)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    out = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    return [n.op_type for n in onnx.load(str(dst)).graph.node], out


class _ConvPReLUConv(nn.Module):
    def __init__(self, prelu: nn.Module):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, bias=False), prelu, nn.Conv2d(32, 32, 3, padding=1, bias=False)
        )

    def forward(self, x):
        return self.body(x)


def test_onnxruntime_keeps_the_split_prelu_in_the_blocked_layout(tmp_path):
    torch.manual_seed(3)
    model = _ConvPReLUConv(_prelu(list(np.linspace(-0.2, 0.8, 32)))).eval()
    x = torch.randn(1, 16, 24, 24)
    with torch.no_grad():
        want = model(x).numpy()
    before, _ = _optimised_ops(model, x, tmp_path)
    assert "PRelu" in before and before.count("ReorderOutput") == 2  # out of the blocked layout and back
    assert rewrite_prelus(model) == (1, 0)
    after, got = _optimised_ops(model, x, tmp_path)
    assert "PRelu" not in after and "Relu" not in after  # the relu is fused into a blocked conv
    assert after.count("ReorderOutput") == 1  # only the graph's output leaves the blocked layout
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
