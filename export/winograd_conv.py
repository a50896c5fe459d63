"""3x3 stride-1 convolutions as Winograd F(4x4, 3x3), for ONNX Runtime's CPU provider.

At reference scale the loop already runs at about 90 % of this machine's matmul peak in ONNX
Runtime, whose CPU convolutions (MLAS) are direct: going faster means fewer multiplications.
Winograd's minimal filtering (Lavin & Gray, 2015) computes each 4x4 output tile of a 3x3
convolution from a 6x6 input tile with 36 products per (input, output) channel pair instead of
144, i.e. 2.25 instead of 9 per output pixel: 4x fewer multiply-adds, paid for by transforms
that are linear in the channels (the products are quadratic), so it wins on wide layers::

    V = B^T d B      (input tiles d: 6x6, stride 4)       a depthwise Conv, 36 fixed 6x6 kernels
    M[k] = U[k] @ V[k]   for each of the 36 positions k    one batched MatMul, U = G g G^T
    Y = A^T M A      (output tiles: 4x4)                   a MatMul by [16, 36], then Col2Im

Everything is in standard ONNX operators (Conv with groups, MatMul, Transpose, Col2Im), so the
graph runs anywhere; it is only worth it where direct convolutions are slow relative to
matmuls, hence only in the CPU-optimised graphs (export/cpu_graphs.py). Measured on this
machine, one layer, ONNX Runtime 1.32, 2 threads (Winograd time / Conv time): 512 ch at 64 px
0.47, at 32 px 0.50, at 16 px 0.64; 256 ch at 128 px 0.56, at 32 px 0.75; 128 ch at 256 px 0.64,
at 64 px 1.06; 64 ch at 128 px 1.8; 32 ch at 1024 px 1.9 (the transforms dominate narrow layers,
hence :func:`worth_it`). Float32 error relative to the output's peak: about 1e-5 (direct: 3e-7):
the transforms' constants (1/4, 1/6, 1/24 and powers of two) round; ``U`` is computed in float64.

The transposes keep whole rows of tiles contiguous (block copies), and the output is
interleaved by ``Col2Im`` rather than a 6-D permute, which at 128 px costs more than the matmul.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

M = 4  # output tile side
A = M + 2  # input tile side
# Lavin & Gray's F(4x4, 3x3) matrices (interpolation points 0, +-1, +-2, infinity)
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)

MIN_SIDE = 8  # below, a map is one or two tiles: 36 products per tile do not beat 9 per pixel
MIN_CHANNELS = 256  # where it wins at any size measured here (16-128 px)
MIN_CHANNELS_LARGE = 128  # ... and from 128 px up (at 256 px: 0.64 of the Conv's time)
LARGE_SIDE = 128


def worth_it(in_channels: int, out_channels: int, side: int | None = None) -> bool:
    """Whether a 3x3 stride-1 conv of these widths (and output side, where known) runs faster
    as Winograd in ONNX Runtime's CPU provider, by the measurements in the module docstring."""
    if side is not None and side < MIN_SIDE:
        return False
    narrow = min(in_channels, out_channels)
    return narrow >= MIN_CHANNELS or (side is not None and side >= LARGE_SIDE and narrow >= MIN_CHANNELS_LARGE)


def transformed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``U = G g G^T`` of a ``[out, in, 3, 3]`` weight, as ``[36, out, in]`` float32 (computed in
    float64: the 1/6 and 1/24 of ``G`` would otherwise add their rounding to every product)."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) takes a [out, in, 3, 3] weight; got {tuple(weight.shape)}")
    g = weight.detach().double().cpu().numpy()
    u = np.einsum("ip,ocpq,jq->ijoc", G, g, G).reshape(A * A, *g.shape[:2])
    return torch.from_numpy(np.ascontiguousarray(u)).float()


class WinogradConv2d(nn.Module):
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` for a fixed 3x3 ``weight [out, in, 3, 3]``,
    computed as Winograd F(4x4, 3x3). ``[B, in, H, W] -> [B, out, H, W]``, any H and W (padded
    up to a multiple of 4 and cropped back); H and W are fixed when the graph is traced."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        u = transformed_weight(weight)
        self.in_channels, self.out_channels = int(weight.shape[1]), int(weight.shape[0])
        self.register_buffer("u", u)  # [36, out, in]
        kernels = np.einsum("ip,jq->ijpq", BT, BT).reshape(A * A, 1, A, A)  # kernel i*6+j: outer(BT[i], BT[j])
        self.register_buffer("input_transform", torch.from_numpy(np.tile(kernels, (self.in_channels, 1, 1, 1))).float())
        self.register_buffer("output_transform", torch.from_numpy(np.einsum("ui,vj->uvij", AT, AT).reshape(M * M, A * A)).float())
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, f"expected [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
        b, c = x.shape[:2]
        h, w = int(x.shape[2]), int(x.shape[3])  # static in the exported graph (Col2Im needs them)
        th, tw = -(-h // M), -(-w // M)
        if h % M or w % M:  # tiles past the edge read zeros; their outputs are cropped below
            x = F.pad(x, [1, 1 + tw * M - w, 1, 1 + th * M - h])
            v = F.conv2d(x, self.input_transform, stride=M, groups=c)
        else:
            v = F.conv2d(x, self.input_transform, stride=M, padding=1, groups=c)  # [B, in * 36, th, tw]
        v = v.reshape(b, c, A * A, th * tw).transpose(1, 2)  # [B, 36, in, T]: blocks of T stay whole
        products = torch.matmul(self.u, v)  # [B, 36, out, T]
        y = torch.matmul(self.output_transform, products.reshape(b, A * A, -1))  # [B, 16, out * T]
        y = y.reshape(b, M * M, self.out_channels, th * tw).transpose(1, 2).reshape(b, self.out_channels * M * M, th * tw)
        y = F.fold(y, (th * M, tw * M), kernel_size=M, stride=M)  # [B, out, th * 4, tw * 4]
        if th * M != h or tw * M != w:
            y = y[:, :, :h, :w]
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


def eligible(conv: nn.Module, side: int | None = None) -> bool:
    """A plain 3x3 stride-1 'same' convolution, wide enough to win (:func:`worth_it`) on maps of
    ``side`` pixels (where known)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and worth_it(conv.in_channels, conv.out_channels, side))


def conv_sides(module: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """The smaller side of the map each ``nn.Conv2d`` of ``module`` reads when ``module(example)`` runs."""
    sides: dict[nn.Module, int] = {}

    def record(conv: nn.Module, args: tuple) -> None:  # a pre-hook returning a value would replace the input
        sides.setdefault(conv, int(min(args[0].shape[-2:])))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    return sides


def replace_convs(module: nn.Module, example: torch.Tensor | None = None) -> int:
    """Swap every :func:`eligible` ``nn.Conv2d`` inside ``module`` for its :class:`WinogradConv2d`,
    in place (work on a copy to keep the original); returns how many were swapped. With an
    ``example`` input (batch 1 is enough), each conv's map size is measured first and counts too."""
    sides = conv_sides(module, example) if example is not None else {}

    def swap(parent: nn.Module) -> int:
        swapped = 0
        for name, child in list(parent.named_children()):
            if eligible(child, sides.get(child)):
                setattr(parent, name, WinogradConv2d(child.weight, child.bias))
                swapped += 1
            else:
                swapped += swap(child)
        return swapped

    return swap(module)
