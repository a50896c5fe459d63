"""Export-friendly StyleGAN2 generator with rosinality's ``stylegan2-pytorch`` parameter names.

A ``g_ema`` state dict (or pSp's ``decoder.*`` keys with the prefix stripped) loads with
``strict=True``. There are no custom CUDA ops: the FIR filter (:func:`upfirdn2d`) and the fused
leaky ReLU are plain PyTorch, and the modulated convolution defaults to the *unfused* form
(scale the input by the style, convolve with the static weight, multiply by the demodulation
coefficient), which exports to ONNX with a dynamic batch dimension. ``fused=True`` selects the
public repos' grouped-convolution form (per-sample weights, ``groups=batch``); both agree to
float32 precision. Noise always comes from the ``noises.noise_i`` buffers (rosinality's
``randomize_noise=False`` path), so ``forward`` contains no random op.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EqualLinear, FusedLeakyReLU

__all__ = [
    "make_kernel",
    "upfirdn2d",
    "PixelNorm",
    "Upsample",
    "Blur",
    "ModulatedConv2d",
    "NoiseInjection",
    "ConstantInput",
    "StyledConv",
    "ToRGB",
    "Generator",
]


def make_kernel(k: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """2-D FIR kernel from a 1-D (outer product with itself) or 2-D one, normalised to sum 1."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)
) -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR filter, downsample; rosinality's ``upfirdn2d_native``.

    ``x`` is ``[N, C, H, W]``; ``kernel`` is ``[kh, kw]`` and is applied as a true convolution
    (flipped). ``pad`` is ``(p0, p1)`` for both axes or ``(px0, px1, py0, py1)``; negative pads
    crop. Output is ``[N, C, (H*up + py0 + py1 - kh) // down + 1, (W*up + px0 + px1 - kw) // down + 1]``.
    The batch dimension is never folded into another one, so it may be symbolic when exported.
    """
    px0, px1, py0, py1 = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else tuple(pad)
    _, c, h, w = x.shape
    if up > 1:  # each sample followed by up-1 zeros, along both axes
        x = x.reshape(-1, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(-1, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(c, 1, -1, -1)
    return F.conv2d(x, weight, stride=down, groups=c)


def epsilon_buffer(module: nn.Module, value: float = 1e-8) -> None:
    """Register ``module.eps`` (not saved in state dicts). A tensor, not a Python float: the
    ONNX exporter's optimiser treats ``x + 1e-8`` as ``x + 0`` and drops it, which turns
    ``rsqrt(0)`` into Inf (e.g. PixelNorm of a zero vector)."""
    module.register_buffer("eps", torch.full((1, 1), value), persistent=False)


class PixelNorm(nn.Module):
    """Normalise each vector ``[N, D]`` to unit root-mean-square over dim 1."""

    def __init__(self):
        super().__init__()
        epsilon_buffer(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + self.eps)


class Upsample(nn.Module):
    """2x FIR upsampling of ``[N, C, H, W]`` to ``[N, C, 2H, 2W]`` (the ToRGB skip path); buffer ``kernel``."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR filter with padding ``pad``; the kernel is scaled by ``upsample_factor**2``; buffer ``kernel``."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution: ``[N, in, H, W]`` and style ``[N, style_dim]`` -> ``[N, out, H', W']``.

    ``H' = H`` or ``2H`` with ``upsample`` (transposed conv, stride 2, then :class:`Blur`).
    Parameters: ``weight`` ``[1, out, in, k, k]`` (run-time scale ``1/sqrt(in*k*k)``) and
    ``modulation`` (``EqualLinear(style_dim, in, bias_init=1)``). ``fused`` picks the
    grouped-conv form of the public code; the default unfused form has static conv weights.

    ``fp16_safe`` (default off; set on the whole generator with :meth:`Generator.set_fp16_safe`)
    is NVlabs' StyleGAN2-ADA pre-normalisation for FP16 export: with demodulation, the weight is
    divided by its max abs over (in, kh, kw) per output channel and the styles by their max abs
    per sample before they meet. Demodulation divides both factors out again, so the maths is
    unchanged (up to the 1e-8 epsilon and rounding), but ``x * s`` and the conv output stay
    within FP16 range.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        fused: bool = False,
    ):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample, self.fused = demodulate, upsample, fused
        self.fp16_safe = False
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        epsilon_buffer(self)
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, upsample={self.upsample}, "
            f"demodulate={self.demodulate}, fused={self.fused}"
        )

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)  # [N, in]
        weight = self.scale * self.weight[0]  # [out, in, k, k]
        if self.fp16_safe and self.demodulate:  # NVlabs' FP16 pre-normalisation (see class doc)
            weight = weight * (self.scale / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
            s = s / s.abs().amax(dim=1, keepdim=True)
        if self.fused:
            return self._forward_grouped(x, s, weight)
        x = x * s.reshape(-1, self.in_channel, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,kh,kw} (w[o,i,kh,kw] * s[b,i])^2 as a [N, in] @ [in, out] matmul
            d = torch.rsqrt((s * s) @ (weight * weight).sum([2, 3]).t() + self.eps)
            out = out * d.reshape(-1, self.out_channel, 1, 1)
        return out

    def _forward_grouped(self, x: torch.Tensor, s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per-sample weights and ``groups=batch`` (the public code path; not batch-symbolic)."""
        batch, _, height, width = x.shape
        k, cin, cout = self.kernel_size, self.in_channel, self.out_channel
        w = weight[None] * s[:, None, :, None, None]  # [N, out, in, k, k]
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + self.eps[0])[:, :, None, None, None]
        x = x.reshape(1, batch * cin, height, width)
        if self.upsample:
            w = w.transpose(1, 2).reshape(batch * cin, cout, k, k)
            out = F.conv_transpose2d(x, w, stride=2, padding=0, groups=batch)
            return self.blur(out.reshape(batch, cout, out.shape[2], out.shape[3]))
        out = F.conv2d(x, w.reshape(batch * cout, cin, k, k), padding=self.padding, groups=batch)
        return out.reshape(batch, cout, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    """``x + weight * noise``; ``weight`` is ``[1]``, ``noise`` ``[1, 1, H, W]`` broadcasts over the batch."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """Learned constant ``input`` ``[1, C, 4, 4]``, expanded to the batch of ``like``."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        return self.input.expand(like.shape[0], -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv, noise injection, fused leaky ReLU (``conv``, ``noise``, ``activate``)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        demodulate: bool = True,
        fused: bool = False,
    ):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel,
            out_channel,
            kernel_size,
            style_dim,
            demodulate=demodulate,
            upsample=upsample,
            blur_kernel=blur_kernel,
            fused=fused,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, plus ``bias`` ``[1, 3, 1, 1]``, plus the upsampled skip."""

    def __init__(
        self,
        in_channel: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        fused: bool = False,
    ):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False, fused=fused)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def _channels(channel_multiplier: int) -> dict[int, int]:
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


class Generator(nn.Module):
    """StyleGAN2 synthesis network + mapping MLP; W+ ``[B, n_latent, style_dim]`` -> image ``[B, 3, size, size]``.

    The image is roughly in ``[-1, 1]`` and not clipped. ``n_latent = 2*log2(size) - 2``.
    """

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        fused: bool = False,
        channels: Mapping[int, int] | None = None,
    ):
        super().__init__()
        self.log_size = int(round(math.log2(size)))
        if size < 4 or 2**self.log_size != size or size > 1024:
            raise ValueError(f"size must be a power of two in [4, 1024], got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier = channel_multiplier
        # ``channels`` (resolution -> width) overrides rosinality's table: small models such as
        # the demo (export/demo/train.py) keep the architecture and names with fewer channels
        self.channels = (
            _channels(channel_multiplier) if channels is None else {int(k): int(v) for k, v in channels.items()}
        )
        missing = [2**i for i in range(2, self.log_size + 1) if 2**i not in self.channels]
        if missing:
            raise ValueError(f"channels has no width for resolutions {missing}")
        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)],
        )

        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel, fused=fused)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False, fused=fused)

        self.num_layers = (self.log_size - 2) * 2 + 1
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))

        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        in_channel = c4
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(
                StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel, fused=fused)
            )
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel, fused=fused))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel, fused=fused))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2

    @classmethod
    def config_from_state_dict(cls, sd: dict) -> dict:
        """Infer ``size``, ``style_dim``, ``n_mlp``, ``channel_multiplier`` from an unprefixed state dict."""
        if "conv1.conv.weight" not in sd or "style.1.weight" not in sd:
            raise KeyError(
                "not a rosinality StyleGAN2 generator state dict "
                "(missing 'conv1.conv.weight' / 'style.1.weight'; strip any prefix first)"
            )
        n_mlp = len({m.group(1) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k))})
        style_dim = int(sd["style.1.weight"].shape[1])
        n_rgbs = len({m.group(1) for k in sd if (m := re.fullmatch(r"to_rgbs\.(\d+)\.bias", k))})
        size = 2 ** (n_rgbs + 2)
        # the width at each resolution, read off the weights: conv1 (4 px), then each upsampling conv
        widths = {4: int(sd["conv1.conv.weight"].shape[1])}
        for i in range(n_rgbs):
            key = f"convs.{2 * i}.conv.weight"
            if key not in sd:
                raise KeyError(f"missing {key!r} for the {2 ** (i + 3)} px block")
            widths[2 ** (i + 3)] = int(sd[key].shape[1])
        config = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": 2}
        for cm in (2, 1, 4):  # rosinality's table (the public checkpoints) where it fits
            if all(_channels(cm)[r] == w for r, w in widths.items()):
                return {**config, "channel_multiplier": cm}
        return {**config, "channels": widths}

    def set_fused(self, fused: bool) -> Generator:
        """Switch every modulated conv between the grouped (``True``) and unfused (``False``) forms."""
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.fused = fused
        return self

    def set_fp16_safe(self, enabled: bool = True) -> Generator:
        """Switch NVlabs' FP16 pre-normalisation (see :class:`ModulatedConv2d`) on every modulated conv."""
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.fp16_safe = enabled
        return self

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """Style MLP: ``z`` ``[B, style_dim]`` -> ``w`` ``[B, style_dim]``."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int, seed: int = 0) -> torch.Tensor:
        """Mean of ``mapping(z)`` over ``n`` seeded standard-normal ``z``: ``[1, style_dim]``."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=gen).to(self.input.input.device)
        return self.mapping(z).mean(0, keepdim=True)

    @torch.no_grad()
    def sample_latents(
        self, batch: int, seed: int = 0, truncation: float = 1.0, truncation_latent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """W+ ``[batch, n_latent, style_dim]`` from seeded random ``z`` (optionally truncated)."""
        gen = torch.Generator().manual_seed(seed)
        w = self.mapping(torch.randn(batch, self.style_dim, generator=gen).to(self.input.input.device))
        if truncation != 1.0:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (see mean_latent)")
            w = truncation_latent + truncation * (w - truncation_latent)
        return w[:, None, :].repeat(1, self.n_latent, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """W+ ``[B, n_latent, style_dim]`` float -> image ``[B, 3, size, size]`` (fixed noise buffers)."""
        if latents.ndim != 3:
            raise ValueError(
                f"latents must be W+ [B, {self.n_latent}, {self.style_dim}], got rank "
                f"{latents.ndim} shape {tuple(latents.shape)}"
            )
        if latents.shape[1] != self.n_latent or latents.shape[2] != self.style_dim:
            raise ValueError(
                f"latents must be [B, {self.n_latent}, {self.style_dim}] for a "
                f"{self.size} px generator, got {tuple(latents.shape)}"
            )
        noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        out = self.conv1(self.input(latents), latents[:, 0], noise[0])
        skip = self.to_rgb1(out, latents[:, 1])
        i = 1
        for up_conv, conv, noise1, noise2, to_rgb in zip(
            self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs
        ):
            out = up_conv(out, latents[:, i], noise1)
            out = conv(out, latents[:, i + 1], noise2)
            skip = to_rgb(out, latents[:, i + 2], skip)
            i += 2
        return skip
