"""Export-time rewrites: modules that compute what the public-format modules compute, faster.

The checkpoint modules (``export/models/``) keep the public state-dict layouts, so every
checkpoint loads unchanged; the rewrites here are *wrappers* built from a loaded module, used
only for the graphs the bundle carries. The build's parity check compares each exported graph
with the original module, so a rewrite that changed the maths would fail the build.

Every graph (:func:`optimize_graph`):

* encoders (pSp / ReStyle ``GradualStyleEncoder`` and ``BackboneEncoder``): the map-to-style
  heads reading the same feature map **merged** into one conv, grouped convs and one batched
  matmul (one large GEMM instead of k small ones; same weights, same sums);
* generators (StyleGAN2): **one style matmul** for every modulated conv's affine transform,
  **precomputed constants** (weight scales, demodulation matrices, noise injections, NVlabs' FP16
  weight normalisation) instead of graph arithmetic, and the leaky ReLU's ``sqrt(2)`` gain
  **deferred** into the next layers' ``[B, C]`` styles instead of the ``[B, C, H, W]`` map.

CPU graphs only (``cpu=True``, the source of export/ort_cpu/cpu_graphs.py's optimised graphs),
because ONNX Runtime's CPU kernels favour them while other runtimes need not:

* up-convolutions and the ToRGB skip's FIR upsampling as **phase** convolutions and an
  interleave (export/fast_forms/phase_upsample.py) instead of ``ConvTranspose`` or zero insertion;
* wide 3x3 convolutions as **Winograd** F(4x4, 3x3) (stride 1) or its polyphase stride-2 form for
  the fine style heads (export/fast_forms/winograd_conv.py): 4x (1.44-1.78x) fewer multiply-adds;
* **styles folded into weights** where the weights are smaller than the maps they would scale
  (the ToRGB 1x1 convs as one batched matmul, the Winograd convs of the 128 and 256 px layers);
* the IR units' **PReLUs and identity pools** in forms ONNX Runtime keeps in its blocked layout
  (export/fast_forms/prelu_pools.py).

After ONNX Runtime has optimised a CPU graph, export/ort_cpu/ adds the batch-1 branch (styles in
the blocked convolutions' weights, the Winograd products' transposes folded into their matmuls).
Families without a rewrite (E2Style's pooled heads, ProGAN, MTV-TSA) export unchanged.

Each rewrite in detail, with what it measured: docs/measurements/export.md, "Fast forms".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.fast_forms.phase_upsample import PhaseFirUpsample, PhaseUpsampleConv
from export.fast_forms.prelu_pools import drop_identity_pools, rewrite_prelus
from export.fast_forms.winograd_conv import (
    WinogradConv2d,
    replace_convs,
    strided_even_phase,
    worth_it,
    worth_it_strided,
)
from export.models.encoders import BackboneEncoder, GradualStyleBlock, GradualStyleEncoder
from export.models.stylegan2 import Generator, ModulatedConv2d
from export.onnx.graphs import EncoderStep, GeneratorGraph

HEAD_SLOPE = 0.01  # nn.LeakyReLU's default, as GradualStyleBlock uses it
REWRITES_VERSION = 11  # recorded in the manifest; bump when a rewrite changes (cached bundles are rebuilt)


# --------------------------------------------------------------------------- encoder


class MergedStyleHeads(nn.Module):
    """k :class:`GradualStyleBlock` heads that read the same ``[B, C, s, s]`` map, as one conv,
    ``log2(s) - 1`` grouped convs and one batched linear; returns ``[B, k, out_c]``."""

    def __init__(self, heads: Sequence[GradualStyleBlock], cpu: bool = False):
        super().__init__()
        if not heads or len({(h.spatial, h.out_c) for h in heads}) != 1:
            raise ValueError("merged heads must read maps of one size and have one width")
        self.k, self.out_c = len(heads), heads[0].out_c
        self.first: nn.Module | None = None  # the CPU form of the first (widest) conv, where it pays
        convs = [[m for m in h.convs if isinstance(m, nn.Conv2d)] for h in heads]
        with torch.no_grad():
            # conv j of every head, stacked along the output channels: [k * out_c, in_c (or out_c), 3, 3]
            for j in range(len(convs[0])):
                self.register_buffer(f"weight_{j}", torch.cat([c[j].weight for c in convs]).contiguous())
                self.register_buffer(f"bias_{j}", torch.cat([c[j].bias for c in convs]).contiguous())
            # EqualLinear: x @ (weight * scale)^T + bias * lr_mul, per head: [k, in, out] and [k, 1, out]
            self.register_buffer(
                "linear_weight", torch.stack([(h.linear.weight * h.linear.scale).t() for h in heads]).contiguous()
            )
            self.register_buffer(
                "linear_bias", torch.stack([h.linear.bias * h.linear.lr_mul for h in heads])[:, None, :].contiguous()
            )
        self.n_convs = len(convs[0])
        if cpu and worth_it_strided(self.weight_0.shape[1], self.weight_0.shape[0], heads[0].spatial):
            self.first = WinogradConv2d(
                self.weight_0,
                self.bias_0,
                stride=2,
                even=strided_even_phase(self.weight_0.shape[1], self.weight_0.shape[0]),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j in range(self.n_convs):
            if j == 0 and self.first is not None:
                x = F.leaky_relu(self.first(x), HEAD_SLOPE)
                continue
            # the first conv reads the shared map (one group); the later ones each head's own channels
            groups = 1 if j == 0 else self.k
            x = F.leaky_relu(
                F.conv2d(
                    x, getattr(self, f"weight_{j}"), getattr(self, f"bias_{j}"), stride=2, padding=1, groups=groups
                ),
                HEAD_SLOPE,
            )
        x = x.reshape(x.shape[0], self.k, 1, self.out_c)  # [B, k*out_c, 1, 1] -> one row per head
        return (torch.matmul(x, self.linear_weight) + self.linear_bias).squeeze(2)


class FastStyleEncoder(nn.Module):
    """A ``GradualStyleEncoder`` or ``BackboneEncoder`` with its heads merged per feature map
    (:class:`MergedStyleHeads`); same input and output as the wrapped encoder."""

    def __init__(self, encoder: GradualStyleEncoder | BackboneEncoder, cpu: bool = False):
        super().__init__()
        self.encoder = encoder  # its backbone and FPN run as they are
        sides = [encoder.style_spatial(i) for i in range(len(encoder.styles))]
        # runs of consecutive heads on one map, in style order (the public order: coarse, medium, fine)
        runs: list[tuple[int, list[GradualStyleBlock]]] = []
        for side, head in zip(sides, encoder.styles):
            if runs and runs[-1][0] == side:
                runs[-1][1].append(head)
            else:
                runs.append((side, [head]))
        self.sides = [side for side, _ in runs]
        self.groups = nn.ModuleList(MergedStyleHeads(heads, cpu) for _, heads in runs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encoder.feature_maps(x)
        return torch.cat([group(maps[side]) for side, group in zip(self.sides, self.groups)], dim=1)


# --------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class _StyleSlot:
    """Where a modulated conv's style vector sits in the fused style matmul's output."""

    row: int  # the W+ entry it reads
    offset: int
    width: int  # the conv's input channels


class _PreparedConv(nn.Module):
    """A :class:`ModulatedConv2d` with its constants precomputed: the scaled weight (transposed
    for the upsampling form), the demodulation matrix ``[in, out]``, and the FP16 normalisation."""

    def __init__(self, conv: ModulatedConv2d, slot: _StyleSlot, cpu: bool = False, side: int | None = None):
        super().__init__()
        self.slot = slot
        self.upsample, self.demodulate, self.padding = conv.upsample, conv.demodulate, conv.padding
        self.normalise_styles = conv.fp16_safe and conv.demodulate
        with torch.no_grad():
            weight = conv.scale * conv.weight[0]  # [out, in, k, k]
            if self.normalise_styles:  # NVlabs' pre-normalisation, as ModulatedConv2d applies it
                weight = weight * (conv.scale / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
            self.register_buffer("weight", (weight.transpose(0, 1) if conv.upsample else weight).contiguous())
            if conv.demodulate:
                self.register_buffer("demod", (weight * weight).sum([2, 3]).t().contiguous())
        self.register_buffer("eps", conv.eps.clone(), persistent=False)
        self.blur = conv.blur if conv.upsample else None
        # the CPU graphs' forms: the up-conv as phases (export/fast_forms/phase_upsample.py), wide 3x3 convs as
        # Winograd F(4x4, 3x3) (export/fast_forms/winograd_conv.py)
        self.phase_conv = (
            PhaseUpsampleConv(weight, conv.blur) if conv.upsample and cpu and conv.kernel_size == 3 else None
        )
        self.winograd = (
            WinogradConv2d(weight)
            if cpu
            and not conv.upsample
            and conv.kernel_size == 3
            and conv.padding == 1
            and worth_it(conv.in_channel, conv.out_channel, side)
            else None
        )
        # where the [B, C] style vectors are cheaper to fold into the weights than to apply to the
        # maps (module docstring): the 1x1 ToRGB convs, and Winograd convs on large maps
        self.pointwise = cpu and conv.kernel_size == 1 and not conv.upsample
        self.fold_styles = self.winograd is not None and side is not None and self.winograd.folds_styles_cheaply(side)

    def forward(self, x: torch.Tensor, s: torch.Tensor, input_gain: float = 1.0) -> torch.Tensor:
        """``x`` is the previous layer's activation still missing its constant gain ``input_gain``
        (see :meth:`FastGenerator._styled`): it is applied to the [B, in] styles instead of the map."""
        if self.normalise_styles:
            s = s / s.abs().amax(dim=1, keepdim=True)
        d = torch.rsqrt((s * s) @ self.demod + self.eps) if self.demodulate else None  # [B, out]
        s = s if input_gain == 1.0 else s * input_gain
        if self.pointwise:  # [B, out, in] @ [B, in, H * W]: the styles scale the weights, not the map
            w = self.weight[:, :, 0, 0] * s[:, None, :]
            w = w if d is None else w * d[:, :, None]
            b, _, h, wd = x.shape
            return torch.matmul(w, x.reshape(b, x.shape[1], h * wd)).reshape(b, w.shape[1], h, wd)
        if self.fold_styles:
            return self.winograd(x, in_scale=s, out_scale=d)
        x = x * s.reshape(s.shape[0], -1, 1, 1)
        if self.phase_conv is not None:
            out = self.phase_conv(x)
        elif self.winograd is not None:
            out = self.winograd(x)
        elif self.upsample:
            out = self.blur(F.conv_transpose2d(x, self.weight, stride=2, padding=0))
        else:
            out = F.conv2d(x, self.weight, padding=self.padding)
        return out if d is None else out * d.reshape(d.shape[0], -1, 1, 1)


class FastGenerator(nn.Module):
    """The synthesis network of a :class:`Generator` (unfused form) with one style matmul and
    precomputed constants; ``[B, M, D]`` W+ -> ``[B, 3, R, R]``, as ``Generator.forward``."""

    def __init__(self, g: Generator, cpu: bool = False):
        super().__init__()
        self.n_latent, self.style_dim = g.n_latent, g.style_dim
        # (modulated conv, W+ entry) in the order Generator.forward runs them
        plan = [(g.conv1.conv, 0), (g.to_rgb1.conv, 1)]
        for b in range(len(g.to_rgbs)):
            i = 1 + 2 * b
            plan += [(g.convs[2 * b].conv, i), (g.convs[2 * b + 1].conv, i + 1), (g.to_rgbs[b].conv, i + 2)]
        slots, used = [], [0] * g.n_latent
        for conv, row in plan:
            slots.append(_StyleSlot(row, used[row], conv.in_channel))
            used[row] += conv.in_channel
        width = max(used)
        weight = torch.zeros(g.n_latent, g.style_dim, width)
        bias = torch.zeros(g.n_latent, 1, width)
        with torch.no_grad():
            for (conv, _), slot in zip(plan, slots):
                mod = conv.modulation
                cols = slice(slot.offset, slot.offset + slot.width)
                weight[slot.row, :, cols] = (mod.weight * mod.scale).t()
                bias[slot.row, 0, cols] = mod.bias * mod.lr_mul
        self.register_buffer("style_weight", weight)
        self.register_buffer("style_bias", bias)
        sides = [4, 4] + [8 << b for b in range(len(g.to_rgbs)) for _ in range(3)]  # each conv's output side
        self.convs = nn.ModuleList(
            _PreparedConv(conv, slot, cpu, side) for (conv, _), slot, side in zip(plan, slots, sides)
        )
        self.register_buffer("input", g.input.input.detach().clone())
        styled = [g.conv1] + list(g.convs)
        noises = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
        with torch.no_grad():
            for i, (layer, noise) in enumerate(zip(styled, noises)):
                # x + weight * noise: the product is a constant
                self.register_buffer(f"noise_{i}", (layer.noise.weight * noise).contiguous())
                self.register_buffer(f"act_bias_{i}", layer.activate.bias.detach().clone())
            for i, rgb in enumerate([g.to_rgb1] + list(g.to_rgbs)):
                self.register_buffer(f"rgb_bias_{i}", rgb.bias.detach().clone())
        self.act = [(layer.activate.negative_slope, layer.activate.scale) for layer in styled]
        # the CPU graphs: the skip path's FIR upsampling as phases too (export/fast_forms/phase_upsample.py)
        self.skip_upsample = nn.ModuleList(PhaseFirUpsample(r.upsample) if cpu else r.upsample for r in g.to_rgbs)

    def styles(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Every modulated conv's style vector ``[B, in]``, from one batched matmul."""
        rows = torch.matmul(latents.unsqueeze(2), self.style_weight) + self.style_bias  # [B, M, 1, P]
        rows = rows.squeeze(2)
        return [rows[:, c.slot.row, c.slot.offset : c.slot.offset + c.slot.width] for c in self.convs]

    def _styled(
        self, i: int, x: torch.Tensor, conv: _PreparedConv, s: torch.Tensor, input_gain: float
    ) -> tuple[torch.Tensor, float]:
        """StyledConv ``i``: modulated conv, noise, bias, leaky ReLU. The leaky ReLU's gain (sqrt 2) is
        returned, not applied: leaky ReLU is positively homogeneous and every consumer of the
        output (the next conv, the ToRGB) first scales it per channel by its styles, so the gain
        joins those [B, C] vectors instead of costing a pass over the [B, C, H, W] map."""
        slope, gain = self.act[i]
        out = conv(x, s, input_gain) + getattr(self, f"noise_{i}")
        return F.leaky_relu(out + getattr(self, f"act_bias_{i}").reshape(1, -1, 1, 1), slope), gain

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 3 or tuple(latents.shape[1:]) != (self.n_latent, self.style_dim):
            raise ValueError(f"latents must be [B, {self.n_latent}, {self.style_dim}], got {tuple(latents.shape)}")
        s = self.styles(latents)
        x = self.input.expand(latents.shape[0], -1, -1, -1)
        out, gain = self._styled(0, x, self.convs[0], s[0], 1.0)
        skip = self.convs[1](out, s[1], gain) + self.rgb_bias_0
        for b, upsample in enumerate(self.skip_upsample):
            k = 2 + 3 * b  # this block's up conv, conv and ToRGB in self.convs
            out, gain = self._styled(1 + 2 * b, out, self.convs[k], s[k], gain)
            out, gain = self._styled(2 + 2 * b, out, self.convs[k + 1], s[k + 1], gain)
            skip = self.convs[k + 2](out, s[k + 2], gain) + getattr(self, f"rgb_bias_{b + 1}") + upsample(skip)
        return skip


# --------------------------------------------------------------------------- entry points


def optimize_encoder(encoder: nn.Module, cpu: bool = False) -> tuple[nn.Module, list[str]]:
    """The fastest equivalent of ``encoder`` for export, and the names of the rewrites applied.
    ``cpu``: the form for ONNX Runtime's CPU provider (the wide heads' first conv as Winograd)."""
    if isinstance(encoder, (GradualStyleEncoder, BackboneEncoder)):
        fast = FastStyleEncoder(encoder, cpu).eval()
        strided = any(group.first is not None for group in fast.groups)
        return fast, ["merged_style_heads"] + (["winograd_strided_heads"] if strided else [])
    return encoder, []


def optimize_generator(generator: nn.Module, cpu: bool = False) -> tuple[nn.Module, list[str]]:
    """The fastest equivalent of ``generator`` (a StyleGAN2 :class:`Generator` in the unfused
    form) for export, and the names of the rewrites applied; other generators unchanged.
    ``cpu``: the form for ONNX Runtime's CPU provider (up-convs as phase convolutions)."""
    if isinstance(generator, Generator) and not any(getattr(m, "fused", False) for m in generator.modules()):
        fast = FastGenerator(generator, cpu=cpu).eval()
        names = ["fused_style_affines", "precomputed_constants", "deferred_activation_gain"]
        names += ["phase_upsample_convs"] if any(c.phase_conv is not None for c in fast.convs) else []
        names += ["phase_skip_upsample"] if any(isinstance(u, PhaseFirUpsample) for u in fast.skip_upsample) else []
        names += ["styles_in_weights"] if any(c.pointwise or c.fold_styles for c in fast.convs) else []
        return fast, names + (["winograd_convs"] if any(c.winograd is not None for c in fast.convs) else [])
    return generator, []


def optimize_graph(module: nn.Module, cpu: bool = False) -> tuple[nn.Module, list[str]]:
    """The module to export for one of the bundle's graph wrappers (export/onnx/graphs.py), with its
    encoder or generator replaced by the optimised equivalent; ``module`` itself is untouched
    (the build checks the exported graph against it). ``cpu``: the form for the CPU-optimised
    graphs (export/ort_cpu/cpu_graphs.py), where it differs."""
    if isinstance(module, EncoderStep):
        encoder, rewrites = optimize_encoder(module.encoder, cpu)
        if cpu:  # on a copy: the fast form may still share modules with the original
            encoder = copy.deepcopy(encoder)
            channels = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d)).in_channels
            example = torch.zeros(1, channels, module.input_size, module.input_size)
            rewrites = rewrites + (["winograd_convs"] if replace_convs(encoder, example) else [])
            split, maxed = rewrite_prelus(encoder)
            rewrites = rewrites + (["split_prelu"] if split else []) + (["prelu_as_max"] if maxed else [])
            rewrites = rewrites + (["identity_pools_dropped"] if drop_identity_pools(encoder) else [])
        if not rewrites:
            return module, []
        return EncoderStep(
            encoder,
            feedback=module.feedback,
            residual=module.residual,
            input_size=module.input_size,
            output_size=module.output_size,
            n_latent=module.n_latent,
        ).eval(), rewrites
    if isinstance(module, GeneratorGraph):
        generator, rewrites = optimize_generator(module.generator, cpu)
        return (GeneratorGraph(generator).eval(), rewrites) if rewrites else (module, [])
    return module, []
