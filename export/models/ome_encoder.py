"""OME's multi-scale encoder for ProGAN (seed 000, Sec. 3.2, Fig. 3): FPN over a ResNet, with
one feature-to-code head (F2C_m) per latent code.

This is the layout of our ``ome_progan`` checkpoint format (the authors published no weights).
Keys, after the ``encoder.`` prefix is stripped:

* ``conv1``, ``bn1``, ``layer{1..4}.{j}.*``   a torchvision-named ResNet-34 (``BasicBlock``:
  ``conv1 bn1 conv2 bn2 [downsample.0 .1]``) or ResNet-50 (``Bottleneck``: ``conv1..3 bn1..3
  [downsample.0 .1]``) with stem width ``w`` (64 for the standard nets) and input channels
  ``C_x + 3`` (the condition and the fed-back image)
* ``fpn.lateral{3,4,5}``                     1x1 convs of C3 (1/8), C4 (1/16), C5 (1/32) to ``fpn_dim``
* ``fpn.smooth{3,4,5}``                      3x3 convs on the merged levels P3, P4, P5
* ``heads.{m}.convs.{0,2,..}``                F2C_m: stride-2 3x3 convs + leaky ReLU 0.2 from its
  level down to 1x1 (``log2(side)`` of them: 3 for P5, 4 for P4, 5 for P3 at 256 px)
* ``heads.{m}.linear``                        ``Linear(fpn_dim, D)``: the offset code

Codes come coarse to fine: the first heads read P5 (8x8), then P4 (16x16), then P3 (32x32);
which level a head reads is its number of convs, so the split is read off the weights (the
default for M = 20 is 4 / 6 / 10). Input ``[B, C_x + 3, 256, 256]``; output offsets ``[B, M, D]``.
BatchNorm runs on its stored statistics (``eval()``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RESNET_UNITS", "ResNetBackbone", "FPN", "F2CHead", "OMEEncoder", "infer_ome_config"]

RESNET_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
DEFAULT_CODES_PER_LEVEL = {20: (4, 6, 10)}  # P5, P4, P3
INPUT_SIZE = 256


class BasicBlock(nn.Module):
    """ResNet-34 unit: two 3x3 convs + identity (or 1x1 ``downsample``); ``expansion = 1``."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(c_in, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """ResNet-50 unit: 1x1, 3x3 (stride), 1x1 to ``4 * width`` + identity / ``downsample``."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.downsample = _downsample(c_in, 4 * width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNetBackbone(nn.Module):
    """Torchvision-named ResNet-18/34/50 trunk; :meth:`features`: ``[B, C_in, S, S]`` → C3 (S/8), C4 (S/16), C5 (S/32)."""

    def __init__(self, depth: int = 50, input_nc: int = 6, width: int = 64):
        super().__init__()
        if depth not in RESNET_UNITS:
            raise ValueError(f"depth must be one of {sorted(RESNET_UNITS)}; got {depth}")
        block = Bottleneck if depth == 50 else BasicBlock
        self.conv1 = nn.Conv2d(input_nc, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c_in, self.out_channels = width, []
        for i, units in enumerate(RESNET_UNITS[depth]):
            w = width * 2**i
            layers = []
            for j in range(units):
                layers.append(block(c_in, w, 2 if (j == 0 and i > 0) else 1))
                c_in = w * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(c_in)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c3, c4, c5


class FPN(nn.Module):
    """Top-down feature pyramid: lateral 1x1 convs, nearest 2x upsampling + add, 3x3 smoothing.

    ``(C3, C4, C5)`` → ``(P3, P4, P5)``, each ``fpn_dim`` channels at its input's resolution.
    """

    def __init__(self, in_channels: Sequence[int], fpn_dim: int):
        super().__init__()
        for level, c in zip((3, 4, 5), in_channels):
            self.add_module(f"lateral{level}", nn.Conv2d(c, fpn_dim, 1))
            self.add_module(f"smooth{level}", nn.Conv2d(fpn_dim, fpn_dim, 3, 1, 1))

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor):
        p5 = self.lateral5(c5)
        p4 = self.lateral4(c4) + F.interpolate(p5, scale_factor=2, mode="nearest")
        p3 = self.lateral3(c3) + F.interpolate(p4, scale_factor=2, mode="nearest")
        return self.smooth3(p3), self.smooth4(p4), self.smooth5(p5)


class F2CHead(nn.Module):
    """Feature-to-code network F2C_m: ``[B, C, s, s]`` → ``[B, D]`` (``log2 s`` stride-2 convs, linear)."""

    def __init__(self, channels: int, spatial: int, code_dim: int):
        super().__init__()
        n = int(math.log2(spatial))
        if 2**n != spatial:
            raise ValueError(f"spatial must be a power of two; got {spatial}")
        layers = []
        for _ in range(n):
            layers += [nn.Conv2d(channels, channels, 3, 2, 1), nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(channels, code_dim)
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


class OMEEncoder(ResNetBackbone):
    """OME multi-scale encoder: ``[B, input_nc, S, S]`` → offsets ``[B, sum(codes_per_level), D]``.

    ``codes_per_level``: how many codes read P5, P4, P3 (coarse → fine). The backbone's
    modules sit at the top level, so its keys are torchvision's. ``input_size`` S is 256 in the
    paper; the demo model (export/demo/train.py) uses 64 with a ResNet-18 trunk.
    """

    def __init__(
        self,
        depth: int = 50,
        input_nc: int = 6,
        width: int = 64,
        fpn_dim: int = 512,
        code_dim: int = 512,
        codes_per_level: Sequence[int] = (4, 6, 10),
        input_size: int = INPUT_SIZE,
    ):
        super().__init__(depth, input_nc, width)
        if input_size < 64 or input_size & (input_size - 1):
            raise ValueError(f"input_size must be a power of two >= 64 (P5 is S/32); got {input_size}")
        self.input_nc, self.codes_per_level, self.input_size = input_nc, tuple(codes_per_level), input_size
        self.n_styles = sum(self.codes_per_level)
        self.fpn = FPN(self.out_channels[1:], fpn_dim)
        sides = (input_size // 32, input_size // 16, input_size // 8)
        self.heads = nn.ModuleList(
            F2CHead(fpn_dim, side, code_dim) for side, n in zip(sides, self.codes_per_level) for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.input_nc, s, s):
            raise ValueError(f"OMEEncoder expects [B, {self.input_nc}, {s}, {s}]; got {tuple(x.shape)}")
        p3, p4, p5 = self.fpn(*self.features(x))
        levels = {p5.shape[-1]: p5, p4.shape[-1]: p4, p3.shape[-1]: p3}
        return torch.stack([head(levels[head.spatial]) for head in self.heads], dim=1)


def infer_ome_config(sd: Mapping[str, torch.Tensor], input_size: int = INPUT_SIZE) -> dict:
    """The :class:`OMEEncoder` arguments from its (unprefixed) state dict, for ``input_size``
    (the weights do not fix it: it sets how many stride-2 convs each head has)."""
    if "conv1.weight" not in sd or "fpn.lateral5.weight" not in sd:
        raise KeyError("not an OME encoder state dict ('conv1.weight' / 'fpn.lateral5.weight' missing)")
    units = tuple(len({m.group(1) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    depth = 50 if bottleneck else {RESNET_UNITS[18]: 18}.get(units, 34)
    if units != RESNET_UNITS[depth]:
        raise ValueError(f"backbone units per stage {units}; expected {RESNET_UNITS[depth]} (ResNet-{depth})")
    heads = sorted({int(m.group(1)) for k in sd if (m := re.match(r"heads\.(\d+)\.", k))})
    if not heads or heads != list(range(len(heads))):
        raise ValueError(f"heads are numbered {heads}; expected heads.0 .. heads.M-1")
    n_convs = [len({k for k in sd if re.fullmatch(rf"heads\.{m}\.convs\.\d+\.weight", k)}) for m in heads]
    sides = [int(math.log2(input_size // s)) for s in (32, 16, 8)]
    if any(n not in sides for n in n_convs) or n_convs != sorted(n_convs):
        raise ValueError(f"head conv counts {n_convs}: expected coarse-to-fine heads with {sides} convs")
    return {
        "depth": depth,
        "input_nc": int(sd["conv1.weight"].shape[1]),
        "width": int(sd["conv1.weight"].shape[0]),
        "fpn_dim": int(sd["fpn.lateral5.weight"].shape[0]),
        "code_dim": int(sd["heads.0.linear.weight"].shape[0]),
        "codes_per_level": tuple(n_convs.count(n) for n in sides),
        "input_size": input_size,
    }
