"""The Winograd products' transposes folded into ONNX Runtime's FusedMatMul for batch 1
(export/ort_cpu/winograd_matmuls.py), as the build applies it (export.ort_cpu.batch1_branch.apply_batch1_rewrites)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.fast_forms.winograd_conv import WinogradConv2d
from export.onnx.tracing import export_onnx
from export.ort_cpu.batch1_branch import apply_batch1_rewrites
from export.ort_cpu.cpu_graphs import _preoptimised_session, _session


class _WinogradNet(nn.Module):
    """Each form of Winograd convolution the graphs carry: stride 1 with per-sample weight scales
    (the generator's modulated convs: products as a MatMul on per-call weights), stride 2 (the
    encoders' heads: three polyphase paths) and stride 1 where the weights outweigh the tiles
    (products as grouped 1x1 convs: only the output side's transpose can go)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = lambda o, i: torch.randn(o, i, 3, 3, generator=g) / (3 * i**0.5)  # noqa: E731
        self.modulated = WinogradConv2d(w(32, 32))  # 16 px: 16 tiles, 32 < 4 * 16 outputs -> MatMul
        self.strided = WinogradConv2d(w(96, 32), torch.randn(96, generator=g), stride=2)
        self.wide = WinogradConv2d(w(128, 96))  # 8 px: 4 tiles, 128 outputs -> grouped 1x1 convs
        self.style = nn.Linear(32, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.style(x.mean(dim=(2, 3))))  # [B, 64]: per-sample in and out scales
        y = F.leaky_relu(self.modulated(x, in_scale=s[:, :32], out_scale=s[:, 32:]), 0.2)
        return self.wide(F.leaky_relu(self.strided(y), 0.2))


def _run(path, x: np.ndarray) -> np.ndarray:
    return _preoptimised_session(path).run(None, {"x": x})[0]  # as the SDK opens it


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("winograd_matmuls")
    net = _WinogradNet().eval()
    x = torch.randn(2, 32, 16, 16)
    export_onnx(net, {"x": x}, "y", tmp / "net.onnx", max_batch=4)
    _session(tmp / "net.onnx", optimise_into=tmp / "net.cpu.onnx")
    path = tmp / "net.cpu.onnx"
    before = {n: _run(path, x.numpy()[:n]) for n in (1, 2)}
    counts = apply_batch1_rewrites(path)
    with torch.no_grad():
        want = net(x).numpy()
    return path, x.numpy(), want, before, counts


def test_transposes_fold_at_each_winograd_form(rewritten):
    path, _, _, _, counts = rewritten
    # the modulated conv: input and output side; the strided conv: three paths' output sides;
    # the wide conv: its output side
    assert counts.get("winograd_matmuls_batch1", 0) >= 5
    model = onnx.load(str(path), load_external_data=False)
    switch = next(n for n in model.graph.node if n.op_type == "If")
    branches = {a.name: a.g for a in switch.attribute}
    one, many = branches["then_branch"].node, branches["else_branch"].node
    count = lambda nodes, op: sum(n.op_type == op for n in nodes)  # noqa: E731
    assert count(one, "FusedMatMul") == counts["winograd_matmuls_batch1"] and count(many, "FusedMatMul") == 0
    # what is left: the transposes that make the grouped 1x1 convs' input position-major
    assert count(one, "Transpose") == count(many, "Transpose") - counts["winograd_matmuls_batch1"]
    assert all(n.attribute[0].i == 1 for n in one if n.op_type == "FusedMatMul")  # transBatchB


def test_batch_1_gives_the_same_products_and_more_runs_the_original(rewritten):
    path, x, want, before, _ = rewritten
    one = _run(path, x[:1])
    # the same multiply-adds in the same order; allow for MLAS blocking a strided operand differently
    assert np.abs(one - before[1]).max() <= 1e-6 * np.abs(before[1]).max()
    assert np.abs(one - want[:1]).max() <= 1e-4 * np.abs(want).max()  # Winograd: ~1e-5 per layer
    assert np.array_equal(_run(path, x), before[2])  # batch 2: the original nodes, bit for bit
