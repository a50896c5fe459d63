"""Small tools for editing ONNX graphs in place: producer/consumer indices, node attributes,
splicing node lists, dead-node pruning, renaming. Used by the build's rewrites of graphs that
ONNX Runtime optimised (export/ort_cpu/batch1_branch.py, blocked_styles.py, winograd_matmuls.py), which are
edited as node lists."""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper


class GraphIndex:
    """Producer/consumer indices over a graph's nodes (or over ``nodes``, a list of nodes edited
    apart from it, such as a branch being built; the graph's constants and outputs still count)."""

    def __init__(self, graph: onnx.GraphProto, nodes: list | None = None):
        self.graph = graph
        self.nodes = list(graph.node) if nodes is None else nodes
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.outputs = {o.name for o in graph.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def only_consumer(self, name: str, op: str, domain: str = ""):
        """The one node reading ``name`` if it is an ``op`` (and ``name`` is no graph output), else None."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op and users[0].domain == domain and name not in self.outputs:
            return users[0]
        return None

    def is_init(self, name: str, rank: int | None = None) -> bool:
        return name in self.inits and (rank is None or len(self.inits[name].dims) == rank)


def attr(node, name, default=None):
    """A node attribute's value, or ``default`` where the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def const_values(g: GraphIndex, name: str) -> list | None:
    """The values of a constant stored in the graph file (not in its external data), as a list."""
    init = g.inits.get(name)
    if init is None or init.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return numpy_helper.to_array(init).tolist()


def splice(nodes: list, drop: list, new: list, before) -> list:
    """``nodes`` without ``drop``, with ``new`` inserted where ``before`` was."""
    gone = {id(n) for n in drop}
    out = []
    for n in nodes:
        if n is before:
            out.extend(new)
        if id(n) not in gone:
            out.append(n)
    return out


def prune(nodes: list, keep: set[str]) -> list:
    """``nodes`` without those whose outputs nothing reads (``keep``: the branch outputs)."""
    while True:
        used = set(keep) | {i for n in nodes for i in n.input}
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            return nodes
        nodes = live


def renamed(nodes: list, produced: set[str], suffix: str) -> list:
    """``nodes`` (in place) with every value in ``produced`` and every node name suffixed."""
    for n in nodes:
        for seq in (n.input, n.output):
            for k, name in enumerate(seq):
                if name in produced:
                    seq[k] = name + suffix
        if n.name:
            n.name += suffix
    return nodes
