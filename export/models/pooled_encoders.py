"""Encoders whose heads pool a backbone map instead of convolving it down (export-friendly).

* :class:`E2StyleEncoder` — E2Style's stage encoders (``encoder_firststage``,
  ``encoder_refinestage_list.{i}``): an IR-SE-50 backbone read after stages 1, 2 and 3
  (64 ch @ 128², 128 ch @ 64², 256 ch @ 32²; the 512-ch stage is never run), each map through
  an efficient head ``BatchNorm -> AdaptiveAvgPool2d(7, 7) -> Flatten -> Linear`` giving
  9 + 5 + 4 codes, concatenated deep-first: ``[B, 18, 512]``.
* :class:`BackboneEncoderUsingLastLayerIntoWPlus` — pSp's W+ encoder without FPN: the 16²
  backbone map through ``output_layer_2`` (same head, 512 ch → 512) then ``linear`` (an
  EqualLinear to ``n_styles * 512``).
* :class:`BackboneEncoderUsingLastLayerIntoW` — pSp's ``learn_in_w`` encoder: global average
  pool of the 16² map, ``linear`` → one ``[B, 512]`` code for every layer.

The 7x7 adaptive pools do not divide 16/32/64/128; :class:`ExactAdaptiveAvgPool2d` computes
PyTorch's bins exactly with averaging matrices, which every runtime supports.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .ir_backbone import STYLE_DIM, check_input, make_body, make_input_layer, stage_end_indices
from .layers import EqualLinear
from .pooling import ExactAdaptiveAvgPool2d

E2STYLE_HEADS = (9, 5, 4)  # codes from the 1/8, 1/4 and 1/2 maps (deep first)


class PooledHead(nn.Sequential):
    """``BatchNorm2d -> AdaptiveAvgPool2d(7, 7) -> Flatten -> Linear``: ``[B, C, s, s] -> [B, out]``.

    Module indices 0..3 match the public ``output_layer_*`` keys (``.0`` BN, ``.3`` Linear).
    """

    def __init__(self, channels: int, spatial: int, out_features: int):
        super().__init__(
            nn.BatchNorm2d(channels),
            ExactAdaptiveAvgPool2d(spatial, 7),
            nn.Flatten(),
            nn.Linear(channels * 49, out_features),
        )


class E2StyleEncoder(nn.Module):
    """One E2Style stage: ``[B, input_nc, 256, 256] -> [B, 18, 512]`` offsets.

    ``input_nc`` is 3 for the first stage and 6 (image + fed-back generator image) for the
    refinement stages. The state dict holds all 24 IR-SE-50 units, as the public checkpoints
    do; only the first 21 run.
    """

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", input_nc: int = 3, n_styles: int = 18):
        super().__init__()
        if num_layers != 50 or n_styles != sum(E2STYLE_HEADS):
            raise ValueError(
                f"E2Style encoders are IR-SE-50 with {sum(E2STYLE_HEADS)} styles; "
                f"got num_layers={num_layers}, n_styles={n_styles}"
            )
        self.input_nc, self.n_styles = input_nc, n_styles
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body(num_layers, mode)
        self.taps = stage_end_indices(num_layers)[:3]  # 2, 6, 20
        n_deep, n_mid, n_shallow = E2STYLE_HEADS
        self.output_layer_3 = PooledHead(256, 32, n_deep * STYLE_DIM)
        self.output_layer_4 = PooledHead(128, 64, n_mid * STYLE_DIM)
        self.output_layer_5 = PooledHead(64, 128, n_shallow * STYLE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_nc, type(self).__name__)
        x = self.input_layer(x)
        maps = []
        for i, unit in enumerate(self.body[: self.taps[-1] + 1]):
            x = unit(x)
            if i in self.taps:
                maps.append(x)
        shallow, middle, deep = maps
        codes = [
            self.output_layer_3(deep).view(-1, E2STYLE_HEADS[0], STYLE_DIM),
            self.output_layer_4(middle).view(-1, E2STYLE_HEADS[1], STYLE_DIM),
            self.output_layer_5(shallow).view(-1, E2STYLE_HEADS[2], STYLE_DIM),
        ]
        return torch.cat(codes, dim=1)


class BackboneEncoderUsingLastLayerIntoWPlus(nn.Module):
    """pSp W+ encoder without FPN: ``[B, input_nc, 256, 256] -> [B, n_styles, 512]``."""

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", input_nc: int = 3, n_styles: int = 18):
        super().__init__()
        self.input_nc, self.n_styles = input_nc, n_styles
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body(num_layers, mode)
        self.output_layer_2 = PooledHead(512, 16, STYLE_DIM)
        self.linear = EqualLinear(STYLE_DIM, STYLE_DIM * n_styles, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_nc, type(self).__name__)
        x = self.output_layer_2(self.body(self.input_layer(x)))
        return self.linear(x).view(-1, self.n_styles, STYLE_DIM)


class BackboneEncoderUsingLastLayerIntoW(nn.Module):
    """pSp ``learn_in_w`` encoder: ``[B, input_nc, 256, 256] -> [B, 512]`` (one W code)."""

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", input_nc: int = 3, n_styles: int = 1):
        super().__init__()
        self.input_nc, self.n_styles = input_nc, 1
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body(num_layers, mode)
        self.linear = EqualLinear(STYLE_DIM, STYLE_DIM, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_nc, type(self).__name__)
        x = self.body(self.input_layer(x)).mean((2, 3))  # AdaptiveAvgPool2d((1, 1)) + view
        return self.linear(x)


POOLED_TYPES = {
    cls.__name__: cls
    for cls in (E2StyleEncoder, BackboneEncoderUsingLastLayerIntoWPlus, BackboneEncoderUsingLastLayerIntoW)
}


def pooled_encoder_type(sd: dict) -> tuple[str, int] | None:
    """``(encoder_type, n_styles)`` when ``sd`` is one of this module's encoders, else None."""
    if "output_layer_3.3.weight" in sd:
        heads = [int(sd[f"output_layer_{i}.3.weight"].shape[0]) // STYLE_DIM for i in (3, 4, 5)]
        if tuple(heads) != E2STYLE_HEADS:
            raise ValueError(f"E2Style heads give {heads} codes; expected {list(E2STYLE_HEADS)}")
        return "E2StyleEncoder", sum(heads)
    if "output_layer_2.3.weight" in sd:
        return "BackboneEncoderUsingLastLayerIntoWPlus", int(sd["linear.weight"].shape[0]) // STYLE_DIM
    if "linear.weight" in sd and not any(re.match(r"styles\.", k) for k in sd):
        return "BackboneEncoderUsingLastLayerIntoW", 1
    return None
