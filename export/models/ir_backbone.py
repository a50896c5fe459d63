"""The IR / IR-SE ResNet backbone the pSp-family encoders share (pSp, ReStyle, E2Style), as
flat ``input_layer`` and ``body`` modules whose parameter names match the public checkpoints
(``input_layer.{0,1,2}``, ``body.{i}.res_layer.*``, ``body.{i}.shortcut_layer.*``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 256
STYLE_DIM = 512

# Units per stage for each depth; every stage's first unit downsamples by 2.
STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
# (in_channels, out_channels) of each stage.
STAGE_CHANNELS = ((64, 64), (64, 128), (128, 256), (256, 512))
MODES = ("ir", "ir_se")


class UnitSpec(NamedTuple):
    """One bottleneck unit of the backbone: input width, output width (``depth``), stride."""

    in_channel: int
    depth: int
    stride: int


def get_blocks(num_layers: int) -> list[list[UnitSpec]]:
    """The backbone's units, grouped by stage (4 stages), for IR-50, IR-100 or IR-152."""
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"num_layers must be one of {sorted(STAGE_UNITS)}, got {num_layers}")
    stages = []
    for (in_c, depth), n_units in zip(STAGE_CHANNELS, STAGE_UNITS[num_layers]):
        stages.append([UnitSpec(in_c, depth, 2)] + [UnitSpec(depth, depth, 1)] * (n_units - 1))
    return stages


def stage_end_indices(num_layers: int) -> tuple[int, ...]:
    """Index in ``body`` of the last unit of each stage, e.g. ``(2, 6, 20, 23)`` for 50 layers."""
    ends, total = [], 0
    for n_units in STAGE_UNITS[num_layers]:
        total += n_units
        ends.append(total - 1)
    return tuple(ends)


class SEModule(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    ``[B, C, H, W] -> [B, C, H, W]``; ``fc1`` is ``[C // reduction, C, 1, 1]``, ``fc2`` is
    ``[C, C // reduction, 1, 1]``, both without bias.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Global average pool written as a mean (the reference uses AdaptiveAvgPool2d(1)).
        gate = x.mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class BottleneckIR(nn.Module):
    """Pre-activation residual unit of the IR ResNet (``bottleneck_IR`` / ``bottleneck_IR_SE``).

    ``[B, in_channel, H, W] -> [B, depth, H / stride, W / stride]``.
    ``res_layer``: BN -> conv3x3 -> PReLU -> conv3x3 (stride) -> BN [-> SE when ``use_se``].
    ``shortcut_layer``: 1x1 max pool with stride (subsampling) when the width is unchanged,
    otherwise 1x1 conv (stride) -> BN.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, use_se: bool = False):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if use_se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(input_nc: int) -> nn.Sequential:
    """Stem: ``[B, input_nc, H, W] -> [B, 64, H, W]`` (conv3x3 -> BN -> PReLU)."""
    return nn.Sequential(nn.Conv2d(input_nc, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))


def make_body(num_layers: int, mode: str) -> nn.Sequential:
    """All bottleneck units in one flat Sequential: ``[B, 64, 256, 256] -> [B, 512, 16, 16]``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    units = [BottleneckIR(*spec, use_se=(mode == "ir_se")) for stage in get_blocks(num_layers) for spec in stage]
    return nn.Sequential(*units)


def check_input(x: torch.Tensor, input_nc: int, name: str) -> None:
    """Assert ``x`` is ``[B, input_nc, 256, 256]`` (the encoders' input; resize first)."""
    assert x.ndim == 4 and x.shape[1] == input_nc, (
        f"{name} expects [B, {input_nc}, {INPUT_SIZE}, {INPUT_SIZE}] input (input_nc={input_nc}), got {tuple(x.shape)}"
    )
    assert x.shape[-2:] == (INPUT_SIZE, INPUT_SIZE), (
        f"{name} expects {INPUT_SIZE}x{INPUT_SIZE} images (resize first), got {tuple(x.shape)}"
    )
