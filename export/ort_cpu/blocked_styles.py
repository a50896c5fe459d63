"""Build step: the generator's modulated convolutions in ONNX Runtime's blocked layout, styles in
the weights (batch 1), as a rewrite of the graph ONNX Runtime optimised (export/ort_cpu/cpu_graphs.py).

After ONNX Runtime's optimiser, each modulated convolution of StyleGAN2's top layers (the direct
and phase up-convolutions; the Winograd ones fold their styles already, export/fast_forms/optimize.py) is::

    Mul(x, s) -> ReorderInput -> nchwc.Conv(W) [... up-conv: phases, interleave, blur conv]
      -> ReorderOutput -> Mul(d) -> Add(noise) -> Add(bias) -> LeakyRelu

five passes over the map besides the convolution, and two reorders, each costing up to a tenth of
the convolution at 1024 px (docs/measurements/export.md, "Styles in the blocked weights"). ONNX Runtime
does not fuse them: its NCHWc transformer only takes convolutions whose weights are constants.
Its blocked convolution kernel (``com.microsoft.nchwc.Conv``) reads its weights from its input
every call, though, so the styles can go into them instead, as the public fused form does::

    y   = nchwc.Conv(x_blocked, W * s * d)
    out = nchwc.Conv(noise_blocked, ones, bias, Sum = y, activation = LeakyRelu)

with ``W * s * d`` computed per call on the weights in their blocked layout ([O/b, I/b, kh, kw,
b_in, b_out], b = the CPU's block size) -- at 1024 px a 9 K-value tensor instead of a 32 M-value
map -- and the second conv broadcasting the constant noise map to every channel (a 1x1 conv from
its one channel, weights 1) plus the bias, adding ``y`` in place and applying the leaky ReLU.
Consecutive rewritten layers pass their blocked outputs on without reorders; the up-convs' phase
interleave becomes two concats of the blocked phase maps (no reorders, no Col2Im), and a ToRGB
reading a rewritten layer a blocked 1x1 conv (only its 3-channel output is reordered).

What it gains: docs/measurements/export.md, "Styles in the blocked weights".

The weights are per sample, so the rewritten layers serve batch 1 (the real-time case): the
graph's top part becomes an ``If`` on the batch size, the rewritten form for one frame, the
original for more (export/ort_cpu/batch1_branch.py builds that branch, which also carries the Winograd
products' transposes folded into their matmuls, export/ort_cpu/winograd_matmuls.py).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx.edit import GraphIndex, attr, const_values, prune, splice

NCHWC = "com.microsoft.nchwc"
WEIGHTS_PER_MAP = 1  # rewrite a layer where its weights hold at most as many values as its output map


@functools.cache
def nchwc_block_size() -> int | None:
    """The channel block of ONNX Runtime's NCHWc layout on this CPU (8 with AVX2, 16 with AVX-512),
    read from how its optimiser lays out the weights of a small convolution; None where it keeps
    them as they are (no blocked layout: not x86, or another ONNX Runtime)."""
    import onnxruntime as ort

    c = 16
    weight = np.arange(c * c, dtype=np.float32).reshape(c, c, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, c, 8, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
        ort.InferenceSession(helper.make_model(graph).SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimised = onnx.load(opts.optimized_model_filepath)
    if not any(n.domain == NCHWC for n in optimised.graph.node):
        return None
    return block_of(weight, [numpy_helper.to_array(i) for i in optimised.graph.initializer if i.dims[:2] == [c, c]])


def block_of(weight: np.ndarray, laid_out: list[np.ndarray]) -> int | None:
    """The NCHWc block (8 or 16) in which ``laid_out`` (the optimiser's copies of the [c, c, 1, 1]
    ``weight``) holds it; None for any other layout (a layout this rewrite does not know: it then
    leaves the graphs alone)."""
    c = weight.shape[0]
    for b in (8, 16):
        if len(laid_out) == 1 and np.array_equal(_blocked_weight(weight, b).reshape(c, c, 1, 1), laid_out[0]):
            return b
    return None


def _blocked_weight(w: np.ndarray, b: int) -> np.ndarray:
    """OIHW weights in the NCHWc layout, as 6-D [O/b, I/b, kh, kw, b_in, b_out]."""
    o, i, kh, kw = w.shape
    return w.reshape(o // b, b, i // b, b, kh, kw).transpose(0, 2, 4, 5, 3, 1)


@dataclass
class _Site:
    """One modulated conv of the optimised graph: ``scale`` = Mul(x, s) feeding ``reorder``,
    the convs reading it (``modulated``), and the tail ``tail_conv`` -> ReorderOutput -> Mul(d) ->
    Add(noise) -> Add(bias) -> LeakyRelu, which ``tail`` lists in that order."""

    scale: onnx.NodeProto
    reorder: onnx.NodeProto
    modulated: list
    tail_conv: onnx.NodeProto
    tail: list  # [ReorderOutput, Mul d, Add noise, Add bias, LeakyRelu]


def _plain_conv(g: GraphIndex, node) -> bool:
    """A blocked conv with constant weights, no bias, no fused activation or sum."""
    return (
        node.op_type == "Conv"
        and node.domain == NCHWC
        and len(node.input) == 2
        and g.is_init(node.input[1], 4)
        and attr(node, "activation") is None
    )


def _per_channel(g: GraphIndex, name: str) -> bool:
    """``name`` is a [B, C, 1, 1] vector: a Reshape to a constant shape ending in 1, 1."""
    node = g.producer.get(name)
    shape = const_values(g, node.input[1]) if node is not None and node.op_type == "Reshape" else None
    return shape is not None and shape[2:] == [1, 1]


def find_sites(g: GraphIndex, block: int) -> list[_Site]:
    """The modulated convs the rewrite takes, found on the original graph (each starts at its ``scale``)."""
    sites = []
    for scale in g.nodes:
        if (
            scale.op_type != "Mul"
            or len(scale.input) != 2
            or any(g.is_init(i) for i in scale.input)
            or not _per_channel(g, scale.input[1])
            or _per_channel(g, scale.input[0])
        ):
            continue
        reorder = g.only_consumer(scale.output[0], "ReorderInput", NCHWC)
        if reorder is None or attr(reorder, "channels_last", 0) != 0:
            continue
        modulated = g.consumers.get(reorder.output[0], [])
        if not modulated or not all(_plain_conv(g, c) and attr(c, "group", 1) == 1 for c in modulated):
            continue
        tail_conv = modulated[0] if len(modulated) == 1 else _blur_after(g, modulated)
        tail = _tail(g, tail_conv) if tail_conv is not None else None
        dims = [list(g.inits[c.input[1]].dims) for c in modulated]
        if tail is None or any(o % block or i % block for o, i, _, _ in dims):
            continue
        # per call the weights are scaled instead of the maps: worth it where they are smaller
        side = g.inits[tail[2].input[1]].dims[-1]  # the noise map's
        if WEIGHTS_PER_MAP * sum(int(np.prod(d)) for d in dims) > dims[0][0] * side * side:
            continue
        sites.append(_Site(scale, reorder, modulated, tail_conv, tail))
    return sites


def _blur_after(g: GraphIndex, phases: list):
    """The depthwise conv (the blur) that the phase convs' interleaved output feeds, if any."""
    seen, frontier = set(), [p.output[0] for p in phases]
    for _ in range(8):  # ReorderOutput, Unsqueeze, Concat, Reshape, Col2Im, ReorderInput, then the conv
        nxt = []
        for name in frontier:
            for user in g.consumers.get(name, []):
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if user.op_type == "Conv" and user.domain == NCHWC:
                    out_c = g.inits[user.input[1]].dims[0] if g.is_init(user.input[1], 4) else -1
                    return user if _plain_conv(g, user) and attr(user, "group", 1) == out_c else None
                nxt.extend(user.output)
        frontier = nxt
    return None


def _tail(g: GraphIndex, conv) -> list | None:
    ro = g.only_consumer(conv.output[0], "ReorderOutput", NCHWC)
    md = ro and g.only_consumer(ro.output[0], "Mul")
    an = md and g.only_consumer(md.output[0], "Add")
    ab = an and g.only_consumer(an.output[0], "Add")
    lr = ab and g.only_consumer(ab.output[0], "LeakyRelu")
    if (
        lr is None
        or md.input[0] != ro.output[0]
        or an.input[0] != md.output[0]
        or ab.input[0] != an.output[0]
        or not _per_channel(g, md.input[1])
    ):
        return None
    c = g.inits[conv.input[1]].dims[0]
    noise, bias = g.inits.get(an.input[1]), g.inits.get(ab.input[1])
    if noise is None or bias is None or list(noise.dims[:2]) != [1, 1] or list(bias.dims) != [1, c, 1, 1]:
        return None
    return [ro, md, an, ab, lr]


class _Rewriter:
    """Builds the batch-1 form of the top part's nodes (copies), adding its constants to ``inits``."""

    def __init__(self, g: GraphIndex, block: int):
        self.g, self.b = g, block
        self.inits: list = []
        self.nodes: list = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"blocked_styles_{stem}_{self._n}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list, domain: str = "", **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def reshape(self, x: str, shape) -> str:
        return self.node("Reshape", [x, self.const("shape", np.array(shape, np.int64))])

    def modulated_weight(self, conv, s: str, d: str) -> str:
        """``W * s * d`` in the blocked layout: [O, I, kh, kw] whose memory is [O/b, I/b, kh, kw, b_in, b_out]."""
        o, i, kh, kw = self.g.inits[conv.input[1]].dims
        b = self.b
        sd = self.node("Mul", [self.reshape(s, [1, i // b, 1, 1, b, 1]), self.reshape(d, [o // b, 1, 1, 1, 1, b])])
        return self.reshape(
            self.node("Mul", [self.reshape(conv.input[1], [o // b, i // b, kh, kw, b, b]), sd]), [o, i, kh, kw]
        )

    def add_noise_and_activate(self, y: str, noise: str, bias: str, channels: int, alpha: float) -> str:
        """``leaky_relu(y + noise + bias)`` for a blocked [1, C, H, W] ``y``: the [1, 1, H, W] noise map
        broadcast to every channel by a 1x1 blocked conv with the bias, ``y`` summed into its output
        (in place: y is not read again) and the activation fused. The conv reads the noise map as
        it is: with fewer input channels than a block, the blocked conv takes NCHW input and its
        weights blocked by output channel only, which for one input channel is the plain
        ``[C, 1, 1, 1]`` layout (a padded, reordered noise map reads 8x the bytes, and is made
        again on every call)."""
        return self.node(
            "Conv",
            [noise, self.const("broadcast", np.ones((channels, 1, 1, 1), np.float32)), self.reshape(bias, [-1]), y],
            NCHWC,
            group=1,
            pads=[0, 0, 0, 0],
            activation="LeakyRelu",
            activation_params=[alpha],
        )


def _rewrite(nodes: list, sites: list[_Site], rw: _Rewriter) -> list:
    """The batch-1 form of ``nodes`` (copies of the top part, original names): each site's styles in
    its conv weights; noise, bias and leaky ReLU in one blocked 1x1 conv after its tail conv."""
    drop: set[int] = set()
    blocked: dict[str, str] = {}  # NCHW activation -> the same values still blocked
    index = {id(n): k for k, n in enumerate(nodes)}
    extra: dict[int, list] = {}  # new nodes to insert before node k
    for site in sites:
        ro, md, an, ab, lr = site.tail
        x, s = site.scale.input
        d, noise, bias = md.input[1], an.input[1], ab.input[1]
        rw.nodes = []
        channels = rw.g.inits[site.tail_conv.input[1]].dims[0]
        for conv in site.modulated:
            conv.input[1] = rw.modulated_weight(conv, s, d)
        drop.add(index[id(site.scale)])
        if x in blocked:  # the previous rewritten layer's blocked output, no reorder
            drop.add(index[id(site.reorder)])
            for conv in site.modulated:
                conv.input[0] = blocked[x]
        else:
            site.reorder.input[0] = x
        # noise, bias and activation after the conv, in a 1x1 conv that sums the conv's output into
        # its own in place (the other way round, the conv summing a broadcast noise map, ONNX
        # Runtime allocated a separate output: 134 MB more at the peak of a 1024 px generator).
        activated = rw.add_noise_and_activate(
            site.tail_conv.output[0], noise, bias, channels, float(attr(lr, "alpha", 0.01))
        )
        *prepare, last = rw.nodes
        extra.setdefault(index[id(site.modulated[0])], []).extend(prepare)
        extra.setdefault(index[id(lr)], []).append(last)
        for node in (ro, md, an, ab):
            drop.add(index[id(node)])
        # the leaky ReLU's NCHW output, for whatever reads it besides the next rewritten layer
        lr.CopyFrom(
            helper.make_node(
                "ReorderOutput",
                [activated],
                [lr.output[0]],
                name=lr.name,
                domain=NCHWC,
                channels_last=0,
                channels=channels,
            )
        )
        blocked[lr.output[0]] = activated
    out = []
    for k, n in enumerate(nodes):
        out.extend(extra.get(k, []))
        if k not in drop:
            out.append(n)
    return _blocked_to_rgb(_interleave_in_blocks(out, rw), blocked, rw)


def _users(nodes: list, name: str) -> list:
    return [n for n in nodes if name in n.input]


def _interleave_in_blocks(nodes: list, rw: _Rewriter) -> list:
    """The phase up-convs' interleave without leaving the blocked layout. ORT's graph reorders the
    four blocked phase maps out, stacks them, interleaves them with Col2Im and reorders the result
    back in for the blur; in the blocked layout ([C/b, h, w, b] in memory) the interleaved map is
    [C/b, h, 2, w, 2, b], two concats of the phases viewed as [1, C/b, h, 1, w, 1, b]."""
    b = rw.b
    for c2i in [n for n in nodes if n.op_type == "Col2Im"]:
        prod = {o: n for n in nodes for o in n.output}
        rs = prod.get(c2i.input[0])
        cat = rs is not None and rs.op_type == "Reshape" and prod.get(rs.input[0])
        ri = _users(nodes, c2i.output[0])
        if (
            not cat
            or cat.op_type != "Concat"
            or attr(cat, "axis") != 2
            or len(cat.input) != 4
            or len(ri) != 1
            or ri[0].op_type != "ReorderInput"
            or attr(ri[0], "channels_last", 0) != 0
            or attr(c2i, "strides") != [2, 2]
            or any(attr(c2i, "pads", [0] * 4))
            or const_values(rw.g, c2i.input[2]) != [2, 2]
        ):
            continue
        image = const_values(rw.g, c2i.input[1])
        uns = [prod.get(i) for i in cat.input]
        ros = [u is not None and u.op_type == "Unsqueeze" and prod.get(u.input[0]) for u in uns]
        if image is None or not all(
            r and r.op_type == "ReorderOutput" and attr(r, "channels_last", 0) == 0 for r in ros
        ):
            continue
        c, (h, w) = attr(ros[0], "channels"), (image[0] // 2, image[1] // 2)
        if c % b or any(attr(r, "channels") != c or len(_users(nodes, r.output[0])) != 1 for r in ros):
            continue
        rw.nodes = []
        phases = [rw.reshape(r.input[0], [1, c // b, h, 1, w, 1, b]) for r in ros]  # stack order = (row, col)
        rows = [rw.node("Concat", phases[2 * p : 2 * p + 2], axis=5) for p in (0, 1)]
        full = rw.reshape(rw.node("Concat", rows, axis=3), [1, c, 2 * h, 2 * w])
        for user in _users(nodes, ri[0].output[0]):
            user.input[list(user.input).index(ri[0].output[0])] = full
        nodes = splice(nodes, ros + uns + [cat, rs, c2i, ri[0]], rw.nodes, c2i)
    return nodes


def _blocked_to_rgb(nodes: list, blocked: dict, rw: _Rewriter) -> list:
    """A ToRGB matmul (``[1, 3, C] @ [1, C, H*W]``, styles in its weights) that reads a rewritten
    layer's output as a blocked 1x1 conv on the blocked map: no reorder of the C-channel map, only
    of the 3-channel result."""
    b = rw.b
    for nchw, blocked_map in blocked.items():
        for rs1 in [n for n in nodes if n.op_type == "Reshape" and n.input[0] == nchw]:
            mm = [n for n in nodes if rs1.output[0] in n.input]
            rs2 = mm and [n for n in nodes if mm[0].output[0] in n.input]
            if (
                len(mm) != 1
                or mm[0].op_type != "MatMul"
                or mm[0].input[1] != rs1.output[0]
                or len(rs2) != 1
                or rs2[0].op_type != "Reshape"
            ):
                continue
            flat, shape = const_values(rw.g, rs1.input[1]), const_values(rw.g, rs2[0].input[1])
            if flat is None or shape is None or len(flat) != 3 or len(shape) != 4 or flat[1] % b or shape[1] > b:
                continue
            c, o = flat[1], shape[1]
            rw.nodes = []
            padded = rw.node("Pad", [mm[0].input[0], rw.const("pads", np.array([0, 0, 0, 0, b - o, 0], np.int64))])
            weight = rw.reshape(
                rw.node("Transpose", [rw.reshape(padded, [b, c // b, b])], perm=[1, 2, 0]), [b, c, 1, 1]
            )  # [O/b = 1, I/b, 1, 1, b_in, b_out]
            conv = rw.node("Conv", [blocked_map, weight], NCHWC, group=1, pads=[0, 0, 0, 0])
            rw.nodes.append(
                helper.make_node(
                    "ReorderOutput",
                    [conv],
                    [rs2[0].output[0]],
                    name=rs2[0].name,
                    domain=NCHWC,
                    channels_last=0,
                    channels=o,
                )
            )
            nodes = splice(nodes, [rs1, mm[0], rs2[0]], rw.nodes, rs2[0])
    return nodes


def rewrite_copies(
    g: GraphIndex, sites: list[_Site], copy_of: dict, copies: list, outputs: set[str], block: int
) -> tuple[list, list]:
    """The batch-1 form of ``copies`` (the graph's top part, copied: ``copy_of`` maps each original
    node's ``id`` to its copy) with ``sites`` (found on the original nodes) rewritten as the module
    docstring describes; returns the nodes (those no value in ``outputs`` needs pruned) and the
    new constants."""

    def in_copies(s: _Site) -> _Site:
        one = lambda n: copy_of[id(n)]  # noqa: E731
        return _Site(
            one(s.scale), one(s.reorder), [one(c) for c in s.modulated], one(s.tail_conv), [one(t) for t in s.tail]
        )

    rw = _Rewriter(g, block)
    return prune(_rewrite(copies, [in_copies(s) for s in sites], rw), outputs), rw.inits
