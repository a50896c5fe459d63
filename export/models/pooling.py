"""``AdaptiveAvgPool2d`` computed exactly, in ops every exporter and runtime supports.

The public code pools the generator output to the encoder size with
``AdaptiveAvgPool2d((256, 256))`` (also when the output is *smaller* than 256, which repeats
pixels), and E2Style's heads pool 32/64/128 px maps to 7 x 7, which does not divide evenly;
the TorchScript exporter refuses that case. Here every case is an exact rewrite:

* output divides input: ``avg_pool2d`` with kernel = stride = ratio;
* input divides output: nearest-neighbour repetition (each output cell covers one pixel);
* otherwise: the adaptive bins as two averaging matrices, ``A_h @ x @ A_w^T``, where row i
  of ``A`` averages input cells ``floor(i*in/out) .. ceil((i+1)*in/out) - 1`` — the same bins
  PyTorch uses, so the result equals ``adaptive_avg_pool2d`` up to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_bins(in_size: int, out_size: int) -> torch.Tensor:
    """[out_size, in_size] matrix whose row i averages PyTorch's adaptive bin i."""
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m.float()


class ExactAdaptiveAvgPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d((out, out))`` when the input size is known at build
    time (``in_size``); input [B, C, in_size, in_size] → [B, C, out, out]."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.in_size, self.out_size = in_size, out_size
        self.mode = (
            "identity"
            if in_size == out_size
            else "avg"
            if in_size % out_size == 0
            else "repeat"
            if out_size % in_size == 0
            else "matrix"
        )
        if self.mode == "matrix":
            self.register_buffer("bins", adaptive_bins(in_size, out_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (self.in_size, self.in_size), f"expected {self.in_size}px input, got {tuple(x.shape)}"
        if self.mode == "identity":
            return x
        if self.mode == "avg":
            k = self.in_size // self.out_size
            return F.avg_pool2d(x, kernel_size=k, stride=k)
        if self.mode == "repeat":
            return F.interpolate(x, scale_factor=self.out_size // self.in_size, mode="nearest")
        return torch.matmul(torch.matmul(self.bins, x), self.bins.t())

    def extra_repr(self) -> str:
        return f"{self.in_size} -> {self.out_size} ({self.mode})"
