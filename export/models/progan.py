"""Export-friendly ProGAN (PGGAN) generator, split at a layer, with OME's feature fusion.

Parameter names are those of the genforce PyTorch PGGAN generator (``genforce/mganprior``,
``models/pggan_generator_network.py``), so its bare state dict (``lod`` removed or zero)
loads with ``strict=True``:

* ``layer{2b}``, ``layer{2b+1}``   the two conv blocks of resolution ``4 * 2**b``:
  ``.conv.weight`` (``[out, in, k, k]``; ``.weight`` ``[k, k, in, out]`` with ``fused_scale``)
  and ``.wscale.bias`` ``[out]``. ``layer0`` is a 4x4 conv (padding 3) on ``z`` as a 1x1 map.
* ``output{b}``                   1x1 ToRGB of resolution ``4 * 2**b`` (only the last is used
  at inference, ``lod = 0``; the others are kept so the state dict loads unchanged).

Every block is: pixel norm → (nearest 2x upsampling) → conv → ``x * gain/sqrt(fan_in) + bias``
→ leaky ReLU 0.2 (linear for ToRGB, gain 1). ``z`` is ``[N, D]`` standard normal; the image is
``[N, 3, R, R]``, about [-1, 1], not clipped.

OME (seed 000, Sec. 3.3) splits G into ``G_pre`` = layers ``0 .. split-1`` and ``G_post`` =
the rest (``split = 8``: the 32x32 feature map after both 32 px convs, as mGANprior's
composing layer 8), and fuses the M feature maps ``F_m = G_pre(z_m)`` with
:class:`DynamicFusion` (Eq. 7-10) or :class:`StaticFusion` before ``G_post``.
:class:`MultiCodeProGAN` is the whole ``G_post(DF(G_pre(z_1..z_M)))`` as one module, latents
``[B, M, D]`` → image ``[B, 3, R, R]``: one generator graph for the bundle.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PixelNorm",
    "ConvBlock",
    "ProGANGenerator",
    "DynamicFusion",
    "StaticFusion",
    "MultiCodeProGAN",
    "genforce_channels",
]

OME_SPLIT = 8  # OME / mGANprior: fuse after layer7 (32x32), before layer8


def genforce_channels(resolution: int, fmaps_base: int = 16 << 10, fmaps_max: int = 512) -> list[int]:
    """Channels per resolution block 4, 8, .. R, as genforce's ``get_nf``: ``min(base // res, max)``."""
    return [min(fmaps_base // 2**r, fmaps_max) for r in range(2, int(math.log2(resolution)) + 1)]


class PixelNorm(nn.Module):
    """``x / sqrt(mean_c(x^2) + 1e-8)`` over the channel dim of ``[N, C, H, W]``.

    The epsilon is a ``[1, 1, 1, 1]`` buffer, not a Python scalar: the ONNX exporter's optimiser
    drops an ``Add`` of a scalar constant within 1e-8 of zero as a no-op.
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("eps", torch.full((1, 1, 1, 1), eps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + self.eps)


class WScale(nn.Module):
    """Run-time weight scale and bias: ``x * gain / sqrt(fan_in) + bias``; parameter ``bias`` ``[C]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float):
        super().__init__()
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias.view(1, -1, 1, 1)


class ConvBlock(nn.Module):
    """Pixel norm → (2x upsample) → conv → wscale → leaky ReLU 0.2 (or linear).

    ``[N, in, H, W] -> [N, out, H', W']`` with ``H' = 2H`` when ``upsample``. With
    ``fused_scale`` the upsampling and the 3x3 conv are one stride-2 transposed conv whose 4x4
    kernel is the 3x3 kernel summed over its four 2x2 shifts (parameter ``weight``
    ``[k, k, in, out]``); otherwise nearest upsampling then ``conv`` (``nn.Conv2d``, no bias).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        upsample: bool = False,
        fused_scale: bool = False,
        gain: float = math.sqrt(2.0),
        activate: bool = True,
    ):
        super().__init__()
        self.pixel_norm = PixelNorm()
        self.upsample, self.fused = upsample, upsample and fused_scale
        if self.fused:
            self.weight = nn.Parameter(torch.randn(kernel_size, kernel_size, in_channels, out_channels))
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, padding, bias=False)
        self.wscale = WScale(in_channels, out_channels, kernel_size, gain)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pixel_norm(x)
        if self.fused:
            k = F.pad(self.weight, (0, 0, 0, 0, 1, 1, 1, 1))
            k = (k[1:, 1:] + k[:-1, 1:] + k[1:, :-1] + k[:-1, :-1]).permute(2, 3, 0, 1)
            x = F.conv_transpose2d(x, k, stride=2, padding=1)
        else:
            if self.upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.conv(x)
        x = self.wscale(x)
        return F.leaky_relu(x, 0.2) if self.activate else x


class ProGANGenerator(nn.Module):
    """ProGAN generator, ``z [N, D] -> image [N, 3, R, R]``, splittable at any layer.

    ``channels[b]`` is the width of resolution ``4 * 2**b`` (:func:`genforce_channels` gives the
    public configurations: 1024 px CelebA-HQ, 256 px LSUN). ``pre(z, k)`` runs layers
    ``0..k-1`` and returns the feature map; ``post(f, k)`` runs the rest and the last ToRGB.
    """

    def __init__(self, channels: Sequence[int], z_dim: int = 512, image_channels: int = 3, fused_scale: bool = False):
        super().__init__()
        self.channels, self.z_dim = list(channels), z_dim
        self.size = 4 * 2 ** (len(self.channels) - 1)
        self.num_layers = 2 * len(self.channels)
        self.fused_scale = fused_scale
        for b, c in enumerate(self.channels):
            if b == 0:
                first = ConvBlock(z_dim, c, kernel_size=4, padding=3)
            else:
                first = ConvBlock(self.channels[b - 1], c, upsample=True, fused_scale=fused_scale)
            self.add_module(f"layer{2 * b}", first)
            self.add_module(f"layer{2 * b + 1}", ConvBlock(c, c))
            self.add_module(
                f"output{b}", ConvBlock(c, image_channels, kernel_size=1, padding=0, gain=1.0, activate=False)
            )

    @classmethod
    def config_from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> dict:
        """``channels``, ``z_dim``, ``image_channels``, ``fused_scale`` from a genforce state dict."""
        if "layer0.conv.weight" not in sd or "output0.wscale.bias" not in sd:
            raise KeyError("not a genforce PGGAN state dict ('layer0.conv.weight' / 'output0.wscale.bias' missing)")
        blocks = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"output(\d+)\.wscale\.bias", k)))
        if blocks != list(range(len(blocks))):
            raise ValueError(f"ToRGB blocks are numbered {blocks}; expected output0 .. outputN-1")
        channels = [int(sd[f"layer{2 * b + 1}.conv.weight"].shape[0]) for b in blocks]
        return {
            "channels": channels,
            "z_dim": int(sd["layer0.conv.weight"].shape[1]),
            "image_channels": int(sd["output0.wscale.bias"].shape[0]),
            "fused_scale": "layer2.weight" in sd,
        }

    def layer(self, i: int) -> ConvBlock:
        return getattr(self, f"layer{i}")

    def split_channels(self, split: int) -> int:
        """Channels of the feature map after layer ``split - 1``."""
        return self.channels[(split - 1) // 2]

    def split_size(self, split: int) -> int:
        """Side of the feature map after layer ``split - 1``."""
        return 4 * 2 ** ((split - 1) // 2)

    def pre(self, z: torch.Tensor, split: int) -> torch.Tensor:
        """``G_pre``: ``z [N, D]`` → feature map ``[N, C_split, S_split, S_split]``."""
        if not 1 <= split < self.num_layers:
            raise ValueError(f"split must be in 1..{self.num_layers - 1}; got {split}")
        x = z.reshape(-1, self.z_dim, 1, 1)
        for i in range(split):
            x = self.layer(i)(x)
        return x

    def post(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """``G_post``: the feature map from :meth:`pre` → image ``[N, 3, R, R]``."""
        for i in range(split, self.num_layers):
            x = self.layer(i)(x)
        return getattr(self, f"output{len(self.channels) - 1}")(x)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, {self.z_dim}]; got {tuple(z.shape)}")
        return self.post(self.pre(z, 1), 1)


class DynamicFusion(nn.Module):
    """OME's multiple-feature-map dynamic fusion (seed 000, Eq. 7-10).

    ``F [B, M, C, H, W]`` → ``[B, C, H, W]``. One SE module (``fc0``: ``C → C/r``, ``fc1``:
    ``C/r → C``, no bias as in Eq. 7, r = 8) scores each code's map: ``alpha_m =
    sigmoid(fc1(relu(fc0(GAP(F_m)))))`` ``[B, M, C]``; ``beta = softmax_m(alpha)`` per channel;
    the result is ``sum_m F_m * beta_m`` channel-wise.
    """

    def __init__(self, channels: int, reduction: int = 8, bias: bool = False):
        super().__init__()
        if channels % reduction:
            raise ValueError(f"channels ({channels}) must be divisible by the reduction ({reduction})")
        self.fc0 = nn.Linear(channels, channels // reduction, bias=bias)
        self.fc1 = nn.Linear(channels // reduction, channels, bias=bias)

    def weights(self, feats: torch.Tensor) -> torch.Tensor:
        """``beta`` ``[B, M, C]``: softmax over the M codes of each channel's attention."""
        alpha = torch.sigmoid(self.fc1(F.relu(self.fc0(feats.mean(dim=(3, 4))))))
        return torch.softmax(alpha, dim=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        beta = self.weights(feats)
        return (feats * beta[:, :, :, None, None]).sum(dim=1)


class StaticFusion(nn.Module):
    """OME's ablation without DF: the plain average of the M maps, ``[B, M, C, H, W] -> [B, C, H, W]``."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=1)


class MultiCodeProGAN(nn.Module):
    """``G_post(fusion(G_pre(z_1..z_M)))``: latents ``[B, M, D]`` → image ``[B, 3, R, R]``.

    The attributes ``size``, ``n_latent`` (= M) and ``style_dim`` (= D) are what the bundle
    builder reads off a generator. There is no mapping network: the latents are ProGAN ``z``
    codes, and OME starts from the mean code repeated M times.
    """

    def __init__(
        self, generator: ProGANGenerator, n_codes: int, fusion: nn.Module | None = None, split: int = OME_SPLIT
    ):
        super().__init__()
        self.generator, self.fusion, self.split = generator, fusion or StaticFusion(), split
        self.n_latent, self.style_dim, self.size = n_codes, generator.z_dim, generator.size
        self.feature_shape = (generator.split_channels(split), generator.split_size(split), generator.split_size(split))

    @property
    def config(self) -> dict:
        return {
            "kind": "progan",
            "size": self.size,
            "z_dim": self.style_dim,
            "n_codes": self.n_latent,
            "split": self.split,
            "channels": self.generator.channels,
            "fusion": "dynamic" if isinstance(self.fusion, DynamicFusion) else "static",
        }

    def set_fp16_safe(self, enabled: bool = True) -> MultiCodeProGAN:
        """No modulated convolutions here: nothing to pre-normalise (API parity with StyleGAN2)."""
        return self

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """``F_m = G_pre(z_m)`` for every code: ``[B, M, D]`` → ``[B, M, C, S, S]``."""
        if latents.ndim != 3 or tuple(latents.shape[1:]) != (self.n_latent, self.style_dim):
            raise ValueError(f"latents must be [B, {self.n_latent}, {self.style_dim}]; got {tuple(latents.shape)}")
        feats = self.generator.pre(latents.reshape(-1, self.style_dim), self.split)
        return feats.reshape(-1, self.n_latent, *self.feature_shape)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.generator.post(self.fusion(self.features(latents)), self.split)
