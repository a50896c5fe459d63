"""MTV-TSA encoder (seed 003), export-friendly, with the authors' parameter names.

The encoder mirrors a style generator: one W code per convolution, read from the instance-norm
statistics (mean and std over H, W) of that convolution's input. Parameter names follow the
``BE`` class of ``disanda/Deep-GAN-Encoders`` (``model/E/E.py``), so the authors' bare state dict
loads with ``strict=True``:

* ``FromRGB.from_rgb``                      1x1 conv, 3 → ``startf`` channels (+ leaky ReLU 0.2)
* ``decode_block.{i}.conv_1``               3x3 conv, ``c_in → c_in`` (no bias)
* ``decode_block.{i}.conv_2``               3x3 conv, ``c_in → c_out`` (no bias; not in the last block)
* ``decode_block.{i}.conv_3``               1x1 conv on the residual when ``c_in != c_out``
* ``decode_block.{i}.inver_mod{1,2}``       ``Linear(2 c_in, 512)``: statistics → one W code
* ``decode_block.{i}.bias_{1,2}``, ``noise_weight_{1,2}``   ``[1, C, 1, 1]`` per-channel bias and
  noise strength (P_zn)

The authors' layers use the implicit equalised learning rate (the stored weights are already
scaled), so they are plain convolutions and linears here. Block ``i``::

    w1 = inver_mod1([mean(x), std(x)])             (statistics of the block input)
    h  = lrelu(conv_1(IN(x)) + noise_weight_1 * n1 + bias_1, 0.2)
    w2 = inver_mod2([mean(h), std(h)])
    h  = IN(h)
    if not last: h = avgpool2(lrelu(conv_2(h) + noise_weight_2 * n2 + bias_2, 0.2)); x = avgpool2(x)
    x  = 0.111 * h + 0.889 * conv_3(x)   (conv_3 only when the width changes)

Output: ``w`` ``[B, 2 * blocks, 512]`` in generator order (the last block's ``[w2, w1]`` first,
the first block's last: the high-resolution encoder layers feed the last generator layers) and
the final ``[B, 512, 4, 4]`` feature (z'_c). A 256 px input gives 7 blocks and 14 codes.

**Noise.** The public code draws ``randn([B, 1, H, W])`` at every call. An exported graph must
not contain a random op, so each noise site here holds one fixed sample, drawn once from a
``torch.Generator`` seeded with :data:`NOISE_SEED` and stored as a (non-persistent) buffer
``[1, 1, H, W]`` shared by the batch. With zero ``noise_weight`` (the reference vectors) the
output is exactly the public code's; with trained non-zero weights it is the public code's
output for that one noise draw (deterministic, like StyleGAN's ``randomize_noise=False``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NOISE_SEED", "MTVBlock", "MTVEncoder", "infer_mtv_config"]

NOISE_SEED = 0
RESIDUAL_MIX = (0.111, 0.889)  # the authors' block output: 0.111 * x + 0.889 * residual


def _stats(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, 2C]``: per-channel mean, then std (biased, no epsilon)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = torch.sqrt(((x - mean) ** 2).mean(dim=(2, 3), keepdim=True))
    return torch.cat([mean, std], dim=1).flatten(1)


def _instance_norm(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``InstanceNorm2d(affine=False)``: per sample and channel over H, W; ``eps`` ``[1, 1, 1, 1]``
    (a tensor: the ONNX exporter's optimiser drops an ``Add`` of a scalar within 1e-8 of zero)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


class MTVBlock(nn.Module):
    """One encoder block: ``x [B, c_in, H, W]`` → ``(x' [B, c_out, H/2, W/2], w1 [B, 512], w2 [B, 512])``.

    The last block (``last=True``) has no ``conv_2`` and keeps the resolution. ``size`` is the
    input side ``H``, needed to fix the noise samples.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        size: int,
        latent_size: int = 512,
        last: bool = False,
        noise: torch.Generator | None = None,
    ):
        super().__init__()
        self.last = last
        self.noise_weight_1 = nn.Parameter(torch.zeros(1, c_in, 1, 1))
        self.bias_1 = nn.Parameter(torch.zeros(1, c_in, 1, 1))
        self.noise_weight_2 = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        self.bias_2 = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        self.inver_mod1 = nn.Linear(2 * c_in, latent_size)
        self.inver_mod2 = nn.Linear(2 * c_in, latent_size)
        self.conv_1 = nn.Conv2d(c_in, c_in, 3, 1, 1, bias=False)
        if not last:
            self.conv_2 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.conv_3 = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.register_buffer("eps", torch.full((1, 1, 1, 1), 1e-8), persistent=False)  # the authors' IN epsilon
        self.register_buffer("noise_1", torch.randn(1, 1, size, size, generator=noise), persistent=False)
        self.register_buffer("noise_2", torch.randn(1, 1, size, size, generator=noise), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w1 = self.inver_mod1(_stats(x))
        residual = x
        h = self.conv_1(_instance_norm(x, self.eps)) + self.noise_weight_1 * self.noise_1 + self.bias_1
        h = F.leaky_relu(h, 0.2)
        w2 = self.inver_mod2(_stats(h))
        h = _instance_norm(h, self.eps)
        if not self.last:
            h = F.leaky_relu(self.conv_2(h) + self.noise_weight_2 * self.noise_2 + self.bias_2, 0.2)
            h = F.avg_pool2d(h, 2, 2)
            residual = F.avg_pool2d(residual, 2, 2)
        if self.conv_3 is not None:
            residual = self.conv_3(residual)
        return RESIDUAL_MIX[0] * h + RESIDUAL_MIX[1] * residual, w1, w2


class FromRGB(nn.Module):
    """``from_rgb`` 1x1 conv with bias, then leaky ReLU 0.2: ``[B, 3, R, R] -> [B, startf, R, R]``."""

    def __init__(self, channels: int, outputs: int):
        super().__init__()
        self.from_rgb = nn.Conv2d(channels, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.from_rgb(x), 0.2)


class MTVEncoder(nn.Module):
    """MTV-TSA ``BE(startf, maxf, layer_count)``: image ``[B, 3, R, R]`` in [-1, 1] → W+ ``[B, 2*layer_count, 512]``.

    ``R = 4 * 2**(layer_count - 1)`` (256 px: 7 blocks, 14 codes; 1024 px: 9 blocks, 18 codes).
    :meth:`forward` returns the codes; :meth:`encode` also returns the final 4x4 feature.
    """

    def __init__(
        self,
        startf: int = 64,
        maxf: int = 512,
        layer_count: int = 7,
        latent_size: int = 512,
        channels: int = 3,
        noise_seed: int = NOISE_SEED,
    ):
        super().__init__()
        self.startf, self.maxf, self.layer_count, self.latent_size = startf, maxf, layer_count, latent_size
        self.input_nc = channels
        self.size = 4 * 2 ** (layer_count - 1)
        self.n_styles = 2 * layer_count
        noise = torch.Generator().manual_seed(noise_seed)
        self.FromRGB = FromRGB(channels, startf)
        self.decode_block = nn.ModuleList()
        c_in, c_out, size = startf, min(2 * startf, maxf), self.size
        for i in range(layer_count):
            last = i == layer_count - 1
            self.decode_block.append(MTVBlock(c_in, c_out, size, latent_size, last=last, noise=noise))
            c_in, c_out, size = min(2 * c_in, maxf), min(2 * c_out, maxf), size // 2

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, 3, R, R]`` → ``(features [B, maxf, 4, 4], w [B, 2*layer_count, 512])``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.input_nc, self.size, self.size):
            raise ValueError(f"MTVEncoder expects [B, {self.input_nc}, {self.size}, {self.size}]; got {tuple(x.shape)}")
        x = self.FromRGB(x)
        codes = []
        for block in self.decode_block:
            x, w1, w2 = block(x)
            codes = [w2, w1] + codes
        return x, torch.stack(codes, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[1]


def infer_mtv_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """``startf``, ``maxf``, ``layer_count``, ``latent_size``, ``channels`` from a ``BE`` state dict."""
    if "FromRGB.from_rgb.weight" not in sd or "decode_block.0.conv_1.weight" not in sd:
        raise KeyError(
            "not an MTV-TSA BE state dict ('FromRGB.from_rgb.weight' / 'decode_block.0.conv_1.weight' "
            "missing; strip any 'module.' prefix first)"
        )
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"decode_block\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))):
        raise ValueError(f"decode blocks are numbered {blocks}; expected 0 .. N-1")
    widths = [int(sd[f"decode_block.{i}.conv_1.weight"].shape[0]) for i in blocks]
    startf, maxf = widths[0], max(widths[-1], int(sd[f"decode_block.{blocks[-1]}.bias_2"].shape[1]))
    config = {
        "startf": startf,
        "maxf": maxf,
        "layer_count": len(blocks),
        "latent_size": int(sd["decode_block.0.inver_mod1.weight"].shape[0]),
        "channels": int(sd["FromRGB.from_rgb.weight"].shape[1]),
    }
    expected = [min(startf * 2**i, maxf) for i in blocks]
    if widths != expected or 2 ** int(math.log2(startf)) != startf:
        raise ValueError(f"block widths {widths} do not follow BE's doubling from {startf} to {maxf}")
    return config
