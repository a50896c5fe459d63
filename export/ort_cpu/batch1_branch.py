"""Build step: the batch-1 branch of a CPU-optimised graph (export/ort_cpu/cpu_graphs.py).

Two rewrites of the graph ONNX Runtime optimised only hold for one sample: the generator's styles
inside its blocked convolutions' weights (export/ort_cpu/blocked_styles.py: the weights are per sample)
and the Winograd products reading their operands in place (export/ort_cpu/winograd_matmuls.py: the batch
would have to be the contracted dimension). The graph's top part -- everything that depends on
the first node either rewrite changes -- becomes an ``If`` on the batch size: the rewritten copy
for one frame (the real-time case), the original nodes for more. Every other value the top part
reads is shared from the outer graph, weights included, so the file's weights stay where they
are. The build checks both branches against the portable graph.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx.edit import GraphIndex, renamed
from export.ort_cpu import blocked_styles, winograd_matmuls

log = logging.getLogger(__name__)

B1, BN = "__b1", "__bn"  # name suffixes of the If branches' values


def rewrite_batch1(model: onnx.ModelProto, block: int | None) -> dict[str, int]:
    """Give ``model`` (an ONNX Runtime-optimised CPU graph) its batch-1 branch, in place; returns
    how many sites each rewrite changed (``{}``: none matched, the model is unchanged). ``block``:
    the NCHWc block size, or None where the CPU has no blocked layout (then only the Winograd
    rewrite can apply)."""
    g = GraphIndex(model.graph)
    sites = blocked_styles.find_sites(g, block) if block else []
    starts = [s.scale for s in sites] + [n for n in [winograd_matmuls.first_site(g)] if n is not None]
    if not starts:
        return {}
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    first = min(order[id(n)] for n in starts)
    values, top = set(model.graph.node[first].output), [first]
    for k in range(first + 1, len(model.graph.node)):
        n = model.graph.node[k]
        if any(i in values for i in n.input):
            top.append(k)
            values.update(n.output)
    top_set = set(top)
    sites = [s for s in sites if order[id(s.scale)] in top_set]
    outputs = [o for o in model.graph.output if o.name in values]
    copies = [copy.deepcopy(model.graph.node[k]) for k in top]
    then_nodes, inits = copies, []
    if sites:
        copy_of = {id(model.graph.node[k]): c for k, c in zip(top, copies)}
        then_nodes, inits = blocked_styles.rewrite_copies(g, sites, copy_of, copies, {o.name for o in outputs}, block)
    then_nodes, folded = winograd_matmuls.fold_transposes(GraphIndex(model.graph, then_nodes), inits)
    counts = {k: v for k, v in (("blocked_styles_batch1", len(sites)), ("winograd_matmuls_batch1", folded)) if v}
    if not counts:
        return {}
    else_nodes = [copy.deepcopy(model.graph.node[k]) for k in top]
    then_values = values | {o for n in then_nodes for o in n.output}

    def branch(nodes, produced, suffix):
        return helper.make_graph(
            renamed(nodes, produced, suffix),
            "batch_1" if suffix == B1 else "batch_n",
            [],
            [helper.make_tensor_value_info(o.name + suffix, onnx.TensorProto.FLOAT, None) for o in outputs],
        )

    batched = model.graph.input[0].name  # every input is [B, ...]
    cond = [
        helper.make_node("Shape", [batched], ["batch1_size"], name="batch1_size", start=0, end=1),
        helper.make_node("Equal", ["batch1_size", "batch1_one"], ["batch1_is_1"], name="batch1_is_1"),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "batch1_one"))
    switch = helper.make_node(
        "If",
        ["batch1_is_1"],
        [o.name for o in outputs],
        name="batch1_if",
        then_branch=branch(then_nodes, then_values, B1),
        else_branch=branch(else_nodes, values, BN),
    )
    outer = [n for k, n in enumerate(model.graph.node) if k not in top_set]
    del model.graph.node[:]
    model.graph.node.extend(outer + cond + [switch])
    model.graph.initializer.extend(inits)
    log.info("batch-1 branch: %s", ", ".join(f"{k} at {v} sites" for k, v in counts.items()))
    return counts


def apply_batch1_rewrites(path) -> dict[str, int]:
    """Give the optimised graph at ``path`` its batch-1 branch where a rewrite applies (its weights
    stay where they are, in its ``.data`` file); returns :func:`rewrite_batch1`'s counts."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    nchwc = any(n.domain == blocked_styles.NCHWC for n in model.graph.node)
    counts = rewrite_batch1(model, blocked_styles.nchwc_block_size() if nchwc else None)
    if counts:
        tmp = path.with_name(path.name + ".tmp")
        try:
            onnx.save(model, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return counts
