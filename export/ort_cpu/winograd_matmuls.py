"""Build step: the Winograd convolutions' transposes folded into their matmuls (batch 1), as a
rewrite of the graph ONNX Runtime optimised (export/ort_cpu/cpu_graphs.py).

A Winograd convolution (export/fast_forms/winograd_conv.py) reorders its data twice around the products::

    V: dw Conv -> [B, in, P, T] -> Transpose -> [B, P, in, T] -> MatMul(U [P, out, in]) -> M [B, P, out, T]
    Y: MatMul(A [m2, P], M as [B, P, out * T]) -> [B, m2, out, T] -> Transpose -> [B, out, m2, T] -> Col2Im

(the encoders' products are grouped 1x1 convs, which need ``V`` position-major; only ``Y``'s
reorder applies there). Each transpose is a pass over a map 2.25x the layer's input or output.
ONNX Runtime's contrib ``FusedMatMul`` reads an operand stored as [K, batch, N] with
``transBatchB=1`` (a strided view, no copy: MLAS packs the operand anyway), so for one sample::

    M = FusedMatMul(U [P, out, in], V as [in, P, T], transBatchB=1)            -> [P, out, T]
    Y = FusedMatMul(A [1, m2, P], M [P, out, T], transBatchB=1)                 -> [out, m2, T]

the same products in the same order, no transposes (bit-identical results in every graph
measured here). The batch is the outermost dimension of ``V`` and ``M``, though, and
``transBatchB`` needs the contracted one there, so this serves **batch 1**: the rewrite runs on
the batch-1 branch of the graph (export/ort_cpu/batch1_branch.py, which any graph with Winograd products
gets).

What it gains: docs/measurements/export.md, "Winograd products without transposes".
"""

from __future__ import annotations

import itertools

import numpy as np
from onnx import helper, numpy_helper

from export.onnx.edit import GraphIndex, const_values, splice

MS = "com.microsoft"
SWAP_12 = [0, 2, 1, 3]


def _transpose_12(g: GraphIndex, name: str):
    """The ``Transpose(perm=[0, 2, 1, 3])`` reading ``name`` alone, else None."""
    t = g.only_consumer(name, "Transpose")
    return t if t is not None and list(helper.get_attribute_value(t.attribute[0])) == SWAP_12 else None


def _shape(g: GraphIndex, reshape, rank: int) -> list | None:
    """A Reshape's constant target shape, if it has ``rank`` dims and a batch of -1 or 1."""
    shape = const_values(g, reshape.input[1]) if reshape.op_type == "Reshape" else None
    return (
        shape
        if shape is not None and len(shape) == rank and shape[0] in (-1, 1) and all(d > 0 for d in shape[1:])
        else None
    )


def _input_sites(g: GraphIndex) -> list:
    """``(reshape, transpose, matmul)``: V reshaped to [B, in, P, T], transposed, as a MatMul's B."""
    sites = []
    for rs in g.nodes:
        shape = _shape(g, rs, 4)
        t = shape and _transpose_12(g, rs.output[0])
        mm = t and g.only_consumer(t.output[0], "MatMul")
        if mm is not None and mm.input[1] == t.output[0]:
            sites.append((rs, t, mm))
    return sites


def _output_sites(g: GraphIndex) -> list:
    """``(reshape, matmul, reshape, transpose, reshape)``: M as [B, P, out * T], A [m2, P] @ it,
    [B, m2, out, T], transposed, [B, out * m2, T] (into a Col2Im)."""
    sites = []
    for rs1 in g.nodes:
        flat = _shape(g, rs1, 3)
        mm = flat and g.only_consumer(rs1.output[0], "MatMul")
        if mm is None or mm.input[1] != rs1.output[0] or not g.is_init(mm.input[0], 2):
            continue
        rs2 = g.only_consumer(mm.output[0], "Reshape")
        split = rs2 is not None and _shape(g, rs2, 4)
        t = split and _transpose_12(g, rs2.output[0])
        rs3 = t and g.only_consumer(t.output[0], "Reshape")
        if rs3 is None or not _shape(g, rs3, 3) or g.only_consumer(rs3.output[0], "Col2Im") is None:
            continue
        m2, p = g.inits[mm.input[0]].dims
        if flat[1] == p and split[1] == m2 and split[2] * split[3] == flat[2]:
            sites.append((rs1, mm, rs2, t, rs3))
    return sites


def first_site(g: GraphIndex):
    """The first node (in ``g``'s order) the rewrite would replace, or None."""
    firsts = {id(s[0]) for s in _input_sites(g) + _output_sites(g)}
    return next((n for n in g.nodes if id(n) in firsts), None)


def fold_transposes(g: GraphIndex, new_inits: list, prefix: str = "winograd_matmul") -> tuple[list, int]:
    """``g.nodes`` (a batch-1 graph's or branch's nodes, indexed by ``g``) with the transposes of
    their Winograd products folded as described in the module docstring, and how many went; new
    constants are appended to ``new_inits``. Values keep their names (some their shapes too)."""
    taken, serial = set(g.inits) | {i.name for i in new_inits}, itertools.count()

    def const(value: np.ndarray) -> str:
        name = next(n for n in (f"{prefix}_{k}" for k in serial) if n not in taken)
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op, inputs, output, name, domain="", **attrs):
        return helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs)

    nodes, done = list(g.nodes), 0
    for rs, t, mm in _input_sites(g):
        _, cin, p, tiles = const_values(g, rs.input[1])
        stem = mm.name or mm.output[0]
        new = [
            node("Reshape", [rs.input[0], const(np.array([cin, p, tiles], np.int64))], rs.output[0], rs.name),
            node("Reshape", [mm.input[0], const(np.array([p, -1, cin], np.int64))], stem + "_u", stem + "_u"),
            node("FusedMatMul", [stem + "_u", rs.output[0]], stem + "_pot", stem, MS, transBatchB=1),
            node("Reshape", [stem + "_pot", const(np.array([1, p, -1, tiles], np.int64))], mm.output[0], stem + "_4d"),
        ]
        nodes = splice(nodes, [rs, t, mm], new, mm)
        done += 1
    for rs1, mm, rs2, t, rs3 in _output_sites(g):
        _, p, _ = const_values(g, rs1.input[1])
        _, m2, out, tiles = const_values(g, rs2.input[1])
        a = numpy_helper.to_array(g.inits[mm.input[0]]).reshape(1, m2, p)
        stem = mm.name or mm.output[0]
        new = [
            node("Reshape", [rs1.input[0], const(np.array([p, out, tiles], np.int64))], rs1.output[0], rs1.name),
            node("FusedMatMul", [const(a), rs1.output[0]], stem + "_omt", stem, MS, transBatchB=1),
            node("Reshape", [stem + "_omt", rs3.input[1]], rs3.output[0], rs3.name),
        ]
        nodes = splice(nodes, [rs1, mm, rs2, t, rs3], new, rs3)
        done += 1
    return nodes, done
