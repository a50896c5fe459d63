"""StyleGAN2's upsampling convolution (transposed conv, stride 2, then the FIR blur) as four
ordinary convolutions, for ONNX Runtime's CPU provider.

ONNX Runtime runs ``ConvTranspose`` as a GEMM into a column buffer of ``C_out x 9`` times the
input pixels, then scatters it back (col2im): at 1024 px the top layer's buffer is 300 MB and
the layer reaches a quarter of the speed of the plain convolutions next to it, which run in the
blocked NCHWc layout. A stride-2 transposed convolution with a 3x3 kernel is exactly four
convolutions over the input, one per output phase (even/odd row, even/odd column) with the taps
that land there: 2x2, 2x1, 1x2 and 1x1 kernels, 9 taps in all, so the same FLOPs::

    out[2m + py, 2n + px] = sum of x[m + i, n + j] * K_{py,px}[i, j]     (x zero-padded)

``col2im`` with 2x2 blocks and stride 2 (``F.fold``, ONNX ``Col2Im``) interleaves the phases into
the ``2H+2`` grid (one row and column more than the transposed conv's ``2H+1``, always zero), and
the blur pads one less at the end to make up for it. Same sums, other order of float additions.
ONNX Runtime's ``DepthToSpace`` would also interleave, but is several times slower at these sizes.
Only the CPU-optimised graphs use this form (export/ort_cpu/cpu_graphs.py); GPU runtimes run
``ConvTranspose`` well and get the portable graph.

The skip path's plain FIR upsampling (:class:`PhaseFirUpsample`) is decomposed the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.models.stylegan2 import Blur, upfirdn2d

# per output phase (0 even, 1 odd): the kernel rows (or columns) it uses, in correlation order,
# and the zero padding (before, after) of the input along that axis
TAPS = {0: [2, 0], 1: [1]}
PADS = {0: (1, 1), 1: (0, 1)}


class PhaseUpsampleConv(nn.Module):
    """``blur(conv_transpose2d(x, weight.transpose(0, 1), stride=2))`` for a 3x3 ``weight``
    ``[out, in, 3, 3]`` (the convolution form) and the up-conv's :class:`Blur`."""

    def __init__(self, weight: torch.Tensor, blur: Blur):
        super().__init__()
        if tuple(weight.shape[2:]) != (3, 3):
            raise ValueError(f"phase decomposition is written for 3x3 kernels, got {tuple(weight.shape)}")
        self.phases = [(py, px) for py in (0, 1) for px in (0, 1)]
        with torch.no_grad():
            for py, px in self.phases:
                self.register_buffer(f"kernel_{py}{px}", weight[:, :, TAPS[py]][:, :, :, TAPS[px]].contiguous())
        self.register_buffer("blur_kernel", blur.kernel.detach().clone())
        p0, p1 = blur.pad
        if p1 < 1:
            raise ValueError(f"the blur must pad at least one pixel at the end, got {blur.pad}")
        self.blur_pad = (p0, p1 - 1, p0, p1 - 1)  # the extra zero row/column stands for one of them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for py, px in self.phases:
            (top, bottom), (left, right) = PADS[py], PADS[px]
            outs.append(F.conv2d(F.pad(x, [left, right, top, bottom]), getattr(self, f"kernel_{py}{px}")))
        b, c, h, w = outs[0].shape  # each phase: [B, C, H+1, W+1]
        grid = interleave_phases(torch.stack(outs, dim=2).reshape(b, c * 4, h, w))  # [B, C, 2H+2, 2W+2]
        return upfirdn2d(grid, self.blur_kernel, pad=self.blur_pad)


def interleave_phases(phases: torch.Tensor) -> torch.Tensor:
    """``[B, 4C, H, W]``, the four phases (py, px) of each channel in turn, -> ``[B, C, 2H, 2W]``
    with phase (py, px) at rows ``2i + py``, columns ``2j + px``: ``col2im`` with 2x2 blocks and
    stride 2 (``F.fold``, ONNX ``Col2Im``)."""
    b, c4, h, w = phases.shape
    return F.fold(phases.reshape(b, c4, h * w), (2 * h, 2 * w), kernel_size=2, stride=2)


class PhaseFirUpsample(nn.Module):
    """:class:`~export.models.stylegan2.Upsample` (2x zero insertion, then its FIR kernel: the ToRGB
    skip path) as its four output phases, each a small filter of the input: one grouped conv with
    four outputs per channel, then the ``Col2Im`` interleave. ``upfirdn2d`` pads a six-dimensional
    view to insert the zeros and filters the 4x larger map (timings: docs/measurements/export.md).
    ``[N, C, H, W] -> [N, C, 2H, 2W]``."""

    def __init__(self, upsample: nn.Module):
        super().__init__()
        kernel, (p0, p1) = upsample.kernel.detach().double(), upsample.pad
        kh, kw = kernel.shape
        if upsample.factor != 2 or kh != kw or p0 + p1 != kh - 1:
            raise ValueError(
                f"phase form written for 2x upsampling to exactly 2H x 2W, got factor "
                f"{upsample.factor}, kernel {tuple(kernel.shape)}, pad {(p0, p1)}"
            )
        flipped = torch.flip(kernel, [0, 1])  # upfirdn2d applies the kernel as a true convolution
        # output 2m + r reads zero-inserted sample 2m + r + t - p0 for tap t: input m + (r + t - p0) / 2
        taps = {r: [(t, (r + t - p0) // 2) for t in range(kh) if (r + t - p0) % 2 == 0] for r in (0, 1)}
        reach = max(abs(offset) for r in taps for _, offset in taps[r])
        side = 2 * reach + 1
        phases = torch.zeros(4, side, side, dtype=torch.float64)
        for py in (0, 1):
            for px in (0, 1):
                for ty, oy in taps[py]:
                    for tx, ox in taps[px]:
                        phases[2 * py + px, reach + oy, reach + ox] += flipped[ty, tx]
        self.reach = reach
        self.register_buffer("phases", phases.float()[:, None])  # [4, 1, side, side], tiled per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return interleave_phases(F.conv2d(x, self.phases.repeat(c, 1, 1, 1), padding=self.reach, groups=c))
