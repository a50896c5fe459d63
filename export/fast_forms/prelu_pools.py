"""Rewrites that keep ONNX Runtime's CPU provider in its blocked layout between convolutions.

ONNX Runtime runs convolutions in the blocked NCHWc layout; an operator without an NCHWc kernel
between two of them costs a reorder out of the blocked layout and one back in, each a pass over
the map. Two such operators in the IR-SE backbone (pSp, ReStyle, E2Style encoders) are removed:

**PReLU after a convolution, as two depthwise 1x1 convolutions.** ``PRelu`` (a per-channel
slope) has no NCHWc kernel: every PReLU of the IR-SE backbone costs a reorder out of the blocked
layout, the PReLU itself, and a reorder back in for the next convolution (timings:
docs/measurements/export.md, "PReLU forms"). For slopes ``a < 1``::

    prelu(y) = a * y + relu((1 - a) * y)        (1 - a > 0, so the relu commutes with the scale)

Both products are depthwise 1x1 convolutions (groups = channels), which ONNX Runtime keeps in
the blocked layout; the relu fuses into the second and the sum into its output buffer. PReLU
slopes start at 0.25 (PyTorch's init) and the reference-scale checkpoints' lie in 0.07-0.39; a
PReLU with any slope >= 1 (where 1 - a <= 0 and the form does not hold) is left as it is.

Applied only where the PReLU reads a plain ``nn.Conv2d`` (optionally through a BatchNorm that
ONNX Runtime folds into it). After a Winograd convolution (export/fast_forms/winograd_conv.py), whose
output is interleaved in the plain layout, there is no blocked layout to keep:

**PReLU in the plain layout, as a max.** For slopes ``a <= 1``, ``prelu(y) = max(y, a * y)``
(``a * y <= y`` where ``y >= 0`` and ``a * y >= y`` where ``y < 0``): the same product, so the
same float, bit for bit. ONNX Runtime's ``PRelu`` broadcasts its slope element by element;
``Mul`` and ``Max`` run at memory speed (timings: docs/measurements/export.md, "PReLU forms").

**Identity max pools.** An IR unit that keeps its width and resolution has ``MaxPool2d(1, 1)``
as its shortcut, the identity, which ONNX Runtime runs as a blocked max pool between two
reorders; it is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitPReLU(nn.Module):
    """``nn.PReLU(C)`` (all slopes < 1) on ``[B, C, H, W]`` as ``a * y + relu((1 - a) * y)``, both
    products depthwise 1x1 convolutions."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        slopes = prelu.weight.detach().float().reshape(-1)
        if not splittable(prelu):
            raise ValueError("SplitPReLU needs one slope per channel, each < 1")
        self.channels = slopes.numel()
        self.register_buffer("linear", slopes.reshape(-1, 1, 1, 1).clone())
        self.register_buffer("rectified", (1.0 - slopes).reshape(-1, 1, 1, 1).contiguous())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        assert y.ndim == 4 and y.shape[1] == self.channels, f"expected [B, {self.channels}, H, W], got {tuple(y.shape)}"
        return F.conv2d(y, self.linear, groups=self.channels) + F.relu(
            F.conv2d(y, self.rectified, groups=self.channels)
        )


class MaxPReLU(nn.Module):
    """``nn.PReLU(C)`` (:func:`splittable`: all slopes below 1, where the identity holds) on
    ``[B, C, H, W]`` as ``max(y, a * y)``."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        if not splittable(prelu):
            raise ValueError("MaxPReLU needs one slope per channel, each < 1")
        self.register_buffer("slope", prelu.weight.detach().float().reshape(1, -1, 1, 1).clone())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        assert y.ndim == 4 and y.shape[1] == self.slope.shape[1], (
            f"expected [B, {self.slope.shape[1]}, H, W], got {tuple(y.shape)}"
        )
        return torch.maximum(y, y * self.slope)


def splittable(prelu: nn.Module) -> bool:
    """A per-channel ``nn.PReLU`` (more than one slope) whose slopes are all below 1."""
    return isinstance(prelu, nn.PReLU) and prelu.weight.numel() > 1 and bool((prelu.weight < 1).all())


def _after_plain_conv(previous: list[nn.Module]) -> bool:
    """Whether the modules before a PReLU in its Sequential end in a plain ``nn.Conv2d``, with at
    most a BatchNorm after it (ONNX Runtime folds that into the convolution)."""
    if previous and isinstance(previous[-1], nn.BatchNorm2d):
        previous = previous[:-1]
    return bool(previous) and type(previous[-1]) is nn.Conv2d


def rewrite_prelus(module: nn.Module) -> tuple[int, int]:
    """Swap every :func:`splittable` PReLU inside ``module`` for its :class:`SplitPReLU` where it
    follows a plain convolution in an ``nn.Sequential``, else for its :class:`MaxPReLU`, in place
    (work on a copy to keep the original); returns how many of each were swapped."""
    split = maxed = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not splittable(child):
                continue
            if isinstance(parent, nn.Sequential) and _after_plain_conv([c for _, c in children[:i]]):
                setattr(parent, name, SplitPReLU(child))
                split += 1
            else:
                setattr(parent, name, MaxPReLU(child))
                maxed += 1
    return split, maxed


def drop_identity_pools(module: nn.Module) -> int:
    """Replace every ``nn.MaxPool2d`` inside ``module`` with a 1x1 window and stride 1 (the identity)
    by ``nn.Identity``, in place; returns how many were replaced."""

    def identity(m: nn.Module) -> bool:
        return (
            isinstance(m, nn.MaxPool2d)
            and _pair(m.kernel_size) == (1, 1)
            and _pair(m.stride) == (1, 1)
            and _pair(m.padding) == (0, 0)
            and _pair(m.dilation) == (1, 1)
            and not m.return_indices
        )

    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if identity(child):
                setattr(parent, name, nn.Identity())
                replaced += 1
    return replaced


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
