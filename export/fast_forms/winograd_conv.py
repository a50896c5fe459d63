"""3x3 convolutions (stride 1 or 2) as Winograd minimal filtering, for ONNX Runtime's CPU provider.

At reference scale the loop already runs near the machine's matmul peak in ONNX Runtime, whose
CPU convolutions (MLAS) are direct: going faster means fewer multiplications.
Winograd's minimal filtering (Lavin & Gray, 2015) computes each 4x4 output tile of a 3x3
convolution from a 6x6 input tile with 36 products per (input, output) channel pair instead of
144, i.e. 2.25 instead of 9 per output pixel: 4x fewer multiply-adds, paid for by transforms
that are linear in the channels (the products are quadratic), so it wins on wide layers::

    V = B^T d B      (input tiles d: 6x6, stride 4)       a depthwise Conv, 36 fixed 6x6 kernels
    M[k] = U[k] @ V[k]   for each of the 36 positions k    one batched MatMul, U = G g G^T
    Y = A^T M A      (output tiles: 4x4)                   a MatMul by [16, 36], then Col2Im

**Stride 2** (the encoders' map-to-style heads, about half of a ReStyle encoder's FLOPs) by
polyphase decomposition: in each dimension the even taps ``(g0, g2)`` of the kernel meet the
even input samples, a stride-1 correlation with a 2-tap kernel (Winograd F(m, 2): m + 1
products per m outputs), and the odd tap ``g1`` meets the odd samples (m products). The
convolution is the sum of three :class:`WinogradPath` s (even x even, even x odd, odd x even)
and a 1x1 stride-2 conv for the centre tap. With m = 2 (:data:`EVEN`) that is 25 products per
2x2 output tile instead of 36 (1.44x fewer) from 16 distinct transformed [out, in] matrices
(1.78x the direct weights' memory); m = 4 (``even_phase(4)``) does 81 instead of 144 (1.78x
fewer) but needs 36 matrices (4x the memory); m = 4 measured faster on the fine heads
(docs/measurements/export.md, "Stride-2 Winograd"). :func:`strided_even_phase` takes m = 4 where
its 20 extra matrices stay under :data:`STRIDED_M4_MAX_EXTRA` bytes (the 256 px encoders' 7 fine
heads); at 1024 px the 11 heads' would take the loop's peak memory past its budget.

Everything is in standard ONNX operators (Conv with groups, MatMul, Transpose, Col2Im), so the
graph runs anywhere; it is only worth it where direct convolutions are slow relative to
matmuls, hence only in the CPU-optimised graphs (export/ort_cpu/cpu_graphs.py). The transforms
dominate narrow layers, hence :func:`worth_it` (per-layer timings: docs/measurements/export.md,
"Winograd per layer"). The float32 error grows (the transforms' constants 1/4, 1/6, 1/24 and
powers of two round); ``U`` is computed in float64.

The transposes keep whole rows of tiles contiguous (block copies), and the output is
interleaved by ``Col2Im`` rather than a 6-D permute, which at 128 px costs more than the matmul.
Where the weights outweigh the tiles (``WEIGHT_BOUND``), the products are grouped 1x1 convs
instead of a MatMul: ONNX Runtime packs a Conv's weights once, not on every call.

The stride-2 form is used only where it measured a win (:func:`worth_it_strided`: the merged
fine style heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

M = 4  # output tile side


@dataclass(frozen=True)
class Transform1d:
    """One dimension of a Winograd computation: ``at @ ((g @ w[taps]) * (bt @ d))`` gives ``m``
    consecutive outputs of the correlation of the kernel taps ``taps`` with the input samples
    ``d``: ``span`` of them from the tile's start in the zero-padded input, tiles every ``step``."""

    at: np.ndarray  # [m, positions]
    g: np.ndarray  # [positions, len(taps)]
    bt: np.ndarray  # [positions, span]
    step: int
    taps: tuple[int, ...]

    @property
    def m(self) -> int:
        return self.at.shape[0]

    @property
    def positions(self) -> int:
        return self.g.shape[0]

    @property
    def span(self) -> int:
        return self.bt.shape[1]


def toom_cook(m: int, r: int, points: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(AT [m, n], G [n, r], BT [n, n])`` of Winograd F(m, r), ``n = m + r - 1``, from the
    ``n - 1`` finite interpolation ``points`` and infinity (Toom-Cook for the linear convolution,
    transposed into a correlation). Each row of ``BT`` is scaled to small integers and the
    matching row of ``G`` divided by the same factor: ``G`` is applied to the weights once, in
    float64, so the fractions cost no run-time rounding."""
    n = m + r - 1
    if len(points) != n - 1 or len(set(points)) != n - 1:
        raise ValueError(f"F({m}, {r}) needs {n - 1} distinct finite points, got {points}")

    def evaluation(cols: int) -> np.ndarray:  # rows: a polynomial of `cols` coefficients at each point
        rows = [[float(p) ** j for j in range(cols)] for p in points]
        return np.array(rows + [[0.0] * (cols - 1) + [1.0]])  # infinity: the leading coefficient

    at, g, bt = evaluation(m).T, evaluation(r), np.linalg.inv(evaluation(n)).T
    for k in range(n):  # the smallest integer multiple of each row of BT
        scale = next(s for s in range(1, 10_000) if np.allclose(bt[k] * s, np.round(bt[k] * s), atol=1e-9))
        bt[k], g[k] = np.round(bt[k] * scale), g[k] / scale
    return at, g, bt


# stride 1: Lavin & Gray's F(4, 3) (interpolation points 0, +-1, +-2, infinity)
F43 = Transform1d(
    at=np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64),
    g=np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        np.float64,
    ),
    bt=np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        np.float64,
    ),
    step=M,
    taps=(0, 1, 2),
)


def even_phase(m: int = M) -> Transform1d:
    """Stride 2, taps ``(g0, g2)`` on the even samples ``0, 2, .., 2m`` of a tile: F(m, 2)."""
    at, g, bt = toom_cook(m, 2, (0, 1, -1, 2, -2)[:m])
    spread = np.zeros((bt.shape[0], 2 * m + 1))
    spread[:, 0::2] = bt
    return Transform1d(at, g, spread, step=2 * m, taps=(0, 2))


EVEN = even_phase(2)  # stride 2: the m = 2 form, for its memory (module docstring)
ODD = Transform1d(np.ones((1, 1)), np.ones((1, 1)), np.array([[0.0, 1.0]]), step=2, taps=(1,))  # g1 x odd samples
STRIDED_M4_MAX_EXTRA = 160 * 2**20  # bytes of transformed weights the m = 4 form may add


def strided_matrices(even: Transform1d) -> int:
    """The ``[out, in]`` matrices a stride-2 Winograd conv stores with this even-tap transform: one
    per position of its even x even, even x odd and odd x even paths, and the centre tap's."""
    return even.positions**2 + 2 * even.positions * ODD.positions + ODD.positions**2


def strided_even_phase(in_channels: int, out_channels: int) -> Transform1d:
    """The even-tap transform of a stride-2 Winograd conv of these widths: m = 4 where its extra
    float32 matrices (36 instead of 16) fit :data:`STRIDED_M4_MAX_EXTRA`, else m = 2."""
    wide = even_phase(4)
    extra = (strided_matrices(wide) - strided_matrices(EVEN)) * in_channels * out_channels * 4
    return wide if extra <= STRIDED_M4_MAX_EXTRA else EVEN


# the products as grouped 1x1 convs where out_channels >= WEIGHT_BOUND * tiles, else one batched
# MatMul: the conv form wins where the weights are at least 4x the tiles' data and loses its
# extra NCHWc reorders elsewhere (docs/measurements/export.md, "Winograd products: conv or matmul")
WEIGHT_BOUND = 4
MIN_SIDE = 8  # below, a map is one or two tiles: 36 products per tile do not beat 9 per pixel
MIN_CHANNELS = 256  # where it wins at any size measured here (16-128 px)
MIN_CHANNELS_LARGE = 128  # ... and from 128 px up (at 256 px: 0.64 of the Conv's time)
LARGE_SIDE = 128


def worth_it(in_channels: int, out_channels: int, side: int | None = None) -> bool:
    """Whether a 3x3 stride-1 conv of these widths (and output side, where known) runs faster
    as Winograd in ONNX Runtime's CPU provider, by the measurements in the module docstring."""
    if side is not None and side < MIN_SIDE:
        return False
    narrow = min(in_channels, out_channels)
    return narrow >= MIN_CHANNELS or (side is not None and side >= LARGE_SIDE and narrow >= MIN_CHANNELS_LARGE)


def worth_it_strided(in_channels: int, out_channels: int, side: int) -> bool:
    """Whether a 3x3 stride-2 conv reading ``side``-pixel maps runs faster in its polyphase
    Winograd form. Measured (ORT 1.32, 2 threads, shared host; Winograd time / Conv time) it wins
    on 64 px maps with wide outputs, 0.6-0.9 for 512 -> 1536, 3584 and 5632 channels (the merged
    fine style heads at 256 and 1024 px), and not on narrow outputs (512 -> 512 at 64 px: 1.04),
    smaller maps (512 -> 2048 at 32 px: 0.94-1.16) or narrow inputs (256 -> 1024 at 128 px: 1.04)."""
    return side >= 64 and in_channels >= 512 and out_channels >= 3 * in_channels


def transformed_weight(weight: torch.Tensor, rows: Transform1d = F43, cols: Transform1d = F43) -> torch.Tensor:
    """``U = G_rows g G_cols^T`` of a ``[out, in, 3, 3]`` weight (the taps each transform reads), as
    ``[positions, out, in]`` float32, computed in float64: the fractions of ``G`` would otherwise
    add their rounding to every product."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"Winograd convolutions here take a [out, in, 3, 3] weight; got {tuple(weight.shape)}")
    g = weight.detach().double().cpu().numpy()[:, :, list(rows.taps)][:, :, :, list(cols.taps)]
    u = np.einsum("ip,ocpq,jq->ijoc", rows.g, g, cols.g)
    return torch.from_numpy(np.ascontiguousarray(u.reshape(-1, *weight.shape[:2]))).float()


class WinogradPath(nn.Module):
    """The part of a 3x3 convolution that one pair of 1-D transforms computes (its taps only):
    ``[B, in, H, W] -> [B, out, th * m_rows, tw * m_cols]`` for ``th x tw`` output tiles, uncropped."""

    def __init__(self, weight: torch.Tensor, rows: Transform1d, cols: Transform1d):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.in_channels, self.out_channels = int(weight.shape[1]), int(weight.shape[0])
        self.register_buffer("u", transformed_weight(weight, rows, cols))  # [P, out, in]
        kernels = np.einsum("ip,jq->ijpq", rows.bt, cols.bt).reshape(-1, 1, rows.span, cols.span)
        self.register_buffer("input_transform", torch.from_numpy(np.tile(kernels, (self.in_channels, 1, 1, 1))).float())
        self.register_buffer(
            "output_transform",
            torch.from_numpy(np.einsum("ui,vj->uvij", rows.at, cols.at).reshape(rows.m * cols.m, -1)).float(),
        )

    def products_as_matmul(self, tiles: int) -> bool:
        """Whether the products run as one batched MatMul (else grouped 1x1 convs), for ``tiles`` tiles."""
        return self.out_channels < WEIGHT_BOUND * tiles

    def forward(self, x: torch.Tensor, th: int, tw: int, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: the unpadded input; it is read as if padded by 1 (and by zeros past the last tile).
        ``scale`` ``[B, 1, out, in]``: per-sample factors of the weights (matmul form only)."""
        b, c, h, w = x.shape[0], x.shape[1], int(x.shape[2]), int(x.shape[3])
        need_h, need_w = self.rows.step * (th - 1) + self.rows.span, self.cols.step * (tw - 1) + self.cols.span
        if h + 2 < need_h or w + 2 < need_w:  # tiles past the edge read zeros; their outputs are cropped
            v = F.conv2d(
                F.pad(x, [1, need_w - 1 - w, 1, need_h - 1 - h]),
                self.input_transform,
                stride=(self.rows.step, self.cols.step),
                groups=c,
            )
        else:
            v = F.conv2d(x, self.input_transform, stride=(self.rows.step, self.cols.step), padding=1, groups=c)
            if v.shape[2] != th or v.shape[3] != tw:  # the odd phases' last tile may be past the output
                v = v[:, :, :th, :tw]
        p, t, mm = self.u.shape[0], th * tw, self.rows.m * self.cols.m
        v = v.reshape(b, c, p, t).transpose(1, 2)  # [B, P, in, T]: blocks of T stay whole
        if not self.products_as_matmul(t):
            # P 1x1 convs (one group each): ONNX Runtime packs a Conv's weights once, a MatMul's
            # first operand on every call, which costs most where the weights outweigh the tiles
            assert scale is None, "per-sample weight scales need the matmul form"
            products = F.conv2d(v.reshape(b, p * c, th, tw), self.u.reshape(-1, c, 1, 1), groups=p)
        else:
            products = torch.matmul(self.u if scale is None else self.u * scale, v)  # [B, P, out, T]
        y = torch.matmul(self.output_transform, products.reshape(b, p, -1))  # [B, m_r * m_c, out * T]
        y = y.reshape(b, mm, self.out_channels, t).transpose(1, 2).reshape(b, self.out_channels * mm, t)
        tile = (self.rows.m, self.cols.m)
        return F.fold(y, (th * tile[0], tw * tile[1]), kernel_size=tile, stride=tile)  # Col2Im


class WinogradConv2d(nn.Module):
    """``F.conv2d(x, weight, bias, stride, padding=1)`` for a fixed 3x3 ``weight [out, in, 3, 3]``,
    as Winograd F(4x4, 3x3) (stride 1) or its polyphase form (stride 2: the ``even`` x ``even``,
    ``even`` x odd and odd x ``even`` paths plus a strided 1x1 conv for the centre tap).
    ``[B, in, H, W] -> [B, out, ceil(H / stride), ceil(W / stride)]``, any H and W (padded up to
    whole tiles and cropped back); H and W are fixed when the graph is traced."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1, even: Transform1d = EVEN
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"Winograd convolutions here have stride 1 or 2, not {stride}")
        transformed_weight(weight[:1, :1])  # checks the shape
        self.stride = stride
        self.in_channels, self.out_channels = int(weight.shape[1]), int(weight.shape[0])
        pairs = [(F43, F43)] if stride == 1 else [(even, even), (even, ODD), (ODD, even)]
        self.paths = nn.ModuleList(WinogradPath(weight, rows, cols) for rows, cols in pairs)
        # stride 2: the odd-odd phase is g1,1 alone, a 1x1 conv of the even samples of the unpadded input
        self.register_buffer("centre", weight.detach()[:, :, 1:2, 1:2].clone().float() if stride == 2 else None)
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())

    def folds_styles_cheaply(self, side: int) -> bool:
        """Whether per-sample channel scales of the input and output (a modulated conv's style and
        demodulation) cost less applied to the transformed weights, ``36 * out * in`` products per
        call, than to ``side`` x ``side`` input and output maps, a pass over each: stride 1, the
        products a matmul, and maps with more pixels than twice ``36 * in * out / (in + out)``."""
        path = self.paths[0]
        weights = path.u.shape[0] * self.in_channels * self.out_channels
        return (
            self.stride == 1
            and path.products_as_matmul((-(-side // M)) ** 2)
            and 2 * weights <= (self.in_channels + self.out_channels) * side * side
        )

    def forward(
        self, x: torch.Tensor, in_scale: torch.Tensor | None = None, out_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``in_scale`` ``[B, in]``, ``out_scale`` ``[B, out]`` (stride 1 only): the result is
        ``conv(x * in_scale) * out_scale (+ bias)`` per channel, the scales applied to the weights."""
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"expected [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
        )
        scale = None
        if in_scale is not None or out_scale is not None:
            assert self.stride == 1, "weight scales are for stride-1 Winograd convolutions"
            ones = x.new_ones(x.shape[0], 1)
            scale = (ones if out_scale is None else out_scale)[:, None, :, None] * (
                ones if in_scale is None else in_scale
            )[:, None, None, :]  # [B, 1, out, in]
        ho, wo = -(-int(x.shape[2]) // self.stride), -(-int(x.shape[3]) // self.stride)  # static when traced
        y = F.conv2d(x, self.centre, self.bias, stride=2) if self.centre is not None else None
        for path in self.paths:
            part = path(x, -(-ho // path.rows.m), -(-wo // path.cols.m), scale)
            if part.shape[2] != ho or part.shape[3] != wo:
                part = part[:, :, :ho, :wo]
            y = part if y is None else y + part
        return y if self.bias is None or self.centre is not None else y + self.bias.reshape(1, -1, 1, 1)


def eligible(conv: nn.Module, side: int | None = None) -> bool:
    """A plain 3x3 stride-1 'same' convolution, wide enough to win (:func:`worth_it`) on maps of
    ``side`` pixels (where known)."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and worth_it(conv.in_channels, conv.out_channels, side)
    )


def conv_sides(module: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """The smaller side of the map each ``nn.Conv2d`` of ``module`` reads when ``module(example)`` runs."""
    sides: dict[nn.Module, int] = {}

    def record(conv: nn.Module, args: tuple) -> None:  # a pre-hook returning a value would replace the input
        sides.setdefault(conv, int(min(args[0].shape[-2:])))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    return sides


def replace_convs(module: nn.Module, example: torch.Tensor | None = None) -> int:
    """Swap every :func:`eligible` ``nn.Conv2d`` inside ``module`` for its :class:`WinogradConv2d`,
    in place (work on a copy to keep the original); returns how many were swapped. With an
    ``example`` input (batch 1 is enough), each conv's map size is measured first and counts too."""
    sides = conv_sides(module, example) if example is not None else {}

    def swap(parent: nn.Module) -> int:
        swapped = 0
        for name, child in list(parent.named_children()):
            if eligible(child, sides.get(child)):
                setattr(parent, name, WinogradConv2d(child.weight, child.bias))
                swapped += 1
            else:
                swapped += swap(child)
        return swapped

    return swap(module)
