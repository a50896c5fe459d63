"""pSp and ReStyle encoders (IR / IR-SE ResNet backbones), written for ONNX export.

Parameter names match the public pixel2style2pixel and restyle-encoder checkpoints once the
``encoder.`` prefix is stripped, so their state dicts load with ``strict=True``:

* ``input_layer.{0,1,2}``                     conv 3x3 -> BatchNorm -> PReLU
* ``body.{i}.res_layer.{0,1,2,3,4[,5]}``      one bottleneck unit (``5`` is the SE module)
* ``body.{i}.shortcut_layer.{0,1}``           1x1 conv + BatchNorm when the width changes
* ``styles.{j}.convs.{0,2,4,...}``, ``styles.{j}.linear``   one map-to-style head per W+ entry
* ``latlayer1``, ``latlayer2``                FPN lateral 1x1 convs (GradualStyleEncoder only)

Inputs are ``[B, input_nc, 256, 256]`` float32: pSp takes an RGB image in [-1, 1] (or a sketch /
label map with another ``input_nc``); ReStyle takes the image concatenated with the fed-back
generator image (6 channels). Outputs are style offsets ``[B, n_styles, 512]``.

The modules are meant to run in ``eval()`` mode: BatchNorm then uses the checkpoint's running
statistics, which is what inference and the ONNX export expect. :func:`build_encoder` returns
the module already in eval mode.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .ir_backbone import MODES, STAGE_UNITS, check_input, make_body, make_input_layer, stage_end_indices
from .layers import EqualLinear
from .pooled_encoders import POOLED_TYPES, pooled_encoder_type


class GradualStyleBlock(nn.Module):
    """Map-to-style head: ``[B, in_c, spatial, spatial] -> [B, out_c]``.

    ``log2(spatial)`` stride-2 conv3x3 + LeakyReLU(0.01) steps bring the map down to 1x1
    (``convs.0, convs.2, ...``), then ``linear`` (an :class:`EqualLinear`, lr_mul 1).
    """

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        num_pools = int(math.log2(spatial))
        assert 2**num_pools == spatial, f"spatial must be a power of 2, got {spatial}"
        self.out_c = out_c
        self.spatial = spatial
        layers = [nn.Conv2d(in_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            layers += [nn.Conv2d(out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (self.spatial, self.spatial), (
            f"GradualStyleBlock expects a {self.spatial}x{self.spatial} map, got {tuple(x.shape)}"
        )
        x = self.convs(x)  # [B, out_c, 1, 1]
        return self.linear(x.flatten(1))


class GradualStyleEncoder(nn.Module):
    """pSp's FPN encoder (also ReStyle's ``GradualStyleEncoder`` with ``input_nc=6``).

    ``[B, input_nc, 256, 256] -> [B, n_styles, 512]``. Styles ``0..2`` come from the 16x16 map,
    ``3..6`` from the 32x32 FPN level, the rest from the 64x64 level.
    """

    coarse_ind = 3
    middle_ind = 7

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", input_nc: int = 3, n_styles: int = 18):
        super().__init__()
        self.input_nc = input_nc
        self.n_styles = n_styles
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body(num_layers, mode)
        # Taps: last unit of stages 2, 3 and 4. The reference hard-codes body indices 6, 20, 23,
        # which is right only for 50 layers; computing them gives the same taps for 50 and the
        # correct ones for 100 / 152.
        self.tap_indices = stage_end_indices(num_layers)[1:]
        self.styles = nn.ModuleList(GradualStyleBlock(512, 512, self.style_spatial(i)) for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    @classmethod
    def style_spatial(cls, i: int) -> int:
        """Side of the feature map style ``i`` reads: 16 (coarse), 32 (medium) or 64 (fine)."""
        return 16 if i < cls.coarse_ind else 32 if i < cls.middle_ind else 64

    def backbone_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``c1 [B,128,64,64]``, ``c2 [B,256,32,32]``, ``c3 [B,512,16,16]`` for a 256 px input."""
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.tap_indices:
                taps.append(x)
        c1, c2, c3 = taps
        return c1, c2, c3

    @staticmethod
    def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bilinear (align_corners=True) upsampling of ``x`` to ``y``'s size, plus ``y``."""
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

    def feature_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The FPN levels by side: ``{16: c3, 32: p2, 64: p1}``, each [B, 512, side, side]; head
        ``i`` reads ``feature_maps(x)[style_spatial(i)]`` (export/fast_forms/optimize.py merges the heads)."""
        check_input(x, self.input_nc, type(self).__name__)
        c1, c2, c3 = self.backbone_features(x)
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        return {16: c3, 32: p2, 64: p1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.feature_maps(x)
        latents = [style(levels[self.style_spatial(i)]) for i, style in enumerate(self.styles)]
        return torch.stack(latents, dim=1)


class BackboneEncoder(nn.Module):
    """ReStyle's encoder without FPN: ``[B, input_nc, 256, 256] -> [B, n_styles, 512]``.

    Every style head reads the final 16x16 backbone map.
    """

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", input_nc: int = 6, n_styles: int = 18):
        super().__init__()
        self.input_nc = input_nc
        self.n_styles = n_styles
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body(num_layers, mode)
        self.styles = nn.ModuleList(GradualStyleBlock(512, 512, 16) for _ in range(n_styles))

    @staticmethod
    def style_spatial(i: int) -> int:
        """Side of the map every head reads: the final 16x16 backbone map."""
        return 16

    def feature_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{16: the final backbone map [B, 512, 16, 16]}``, the one map every head reads."""
        check_input(x, self.input_nc, type(self).__name__)
        return {16: self.body(self.input_layer(x))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_maps(x)[16]
        return torch.stack([style(x) for style in self.styles], dim=1)


ENCODER_TYPES = {"GradualStyleEncoder": GradualStyleEncoder, "BackboneEncoder": BackboneEncoder}
_UNITS_TO_LAYERS = {sum(units): n for n, units in STAGE_UNITS.items()}  # 24, 49, 50


def _indices(sd: dict, prefix: str) -> set[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for key in sd if (m := pattern.match(key))}


def infer_encoder_config(sd: dict) -> dict:
    """Read ``encoder_type``, ``num_layers``, ``mode``, ``input_nc``, ``n_styles`` off a state dict.

    Knows the FPN and backbone encoders here and the pooled-head ones (E2Style, pSp's W / W+
    backbone encoders) of :mod:`export.models.pooled_encoders`. ``sd`` holds the encoder's keys
    without their prefix; values only need ``.shape``
    (meta tensors work). Raises ValueError for anything that is not a pSp/ReStyle encoder.
    """
    if any(k.startswith("encoder.") for k in sd):
        raise ValueError("state dict keys still carry the 'encoder.' prefix; strip it first")
    if "input_layer.0.weight" not in sd:
        raise ValueError("not a pSp/ReStyle encoder state dict: 'input_layer.0.weight' is missing")
    units = _indices(sd, "body.")
    if units != set(range(len(units))) or len(units) not in _UNITS_TO_LAYERS:
        raise ValueError(
            f"unrecognised backbone: {len(units)} body units (expected one of "
            f"{sorted(_UNITS_TO_LAYERS)} numbered from 0 for IR-50/100/152)"
        )
    common = {
        "num_layers": _UNITS_TO_LAYERS[len(units)],
        "mode": "ir_se" if "body.0.res_layer.5.fc1.weight" in sd else "ir",
        "input_nc": int(sd["input_layer.0.weight"].shape[1]),
    }
    pooled = pooled_encoder_type(sd)
    if pooled is not None:
        return {"encoder_type": pooled[0], **common, "n_styles": pooled[1]}
    styles = _indices(sd, "styles.")
    if not styles or styles != set(range(len(styles))):
        raise ValueError(f"unrecognised style heads: indices {sorted(styles)} (expected styles.0 .. styles.N-1)")
    encoder_type = "GradualStyleEncoder" if "latlayer1.weight" in sd else "BackboneEncoder"
    return {"encoder_type": encoder_type, **common, "n_styles": len(styles)}


def build_encoder(config: dict) -> nn.Module:
    """Build the encoder a config from :func:`infer_encoder_config` describes, in eval mode.

    Uses the current default device, so ``with torch.device("meta"): build_encoder(cfg)`` builds
    it without allocating weights (then ``load_state_dict(sd, strict=True, assign=True)``).
    """
    types = {**ENCODER_TYPES, **POOLED_TYPES}
    config = dict(config)
    encoder_type = config.pop("encoder_type", None)
    if encoder_type not in types:
        raise ValueError(f"encoder_type must be one of {sorted(types)}, got {encoder_type!r}")
    expected = {"num_layers", "mode", "input_nc", "n_styles"}
    if set(config) - expected:
        raise ValueError(f"unknown encoder config keys: {sorted(set(config) - expected)}")
    if config.get("num_layers", 50) not in STAGE_UNITS:
        raise ValueError(f"num_layers must be one of {sorted(STAGE_UNITS)}, got {config['num_layers']}")
    if config.get("mode", "ir_se") not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {config['mode']!r}")
    return types[encoder_type](**config).eval()
