"""Tracing modules to ONNX with the torch.export-based exporter."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

OPSET = 18
# node metadata the exporter fills with the build machine's source paths and line numbers: it
# leaks them into the bundle and makes two builds of the same checkpoint differ
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def drop_stack_traces(model) -> None:
    """Remove :data:`STACK_TRACE_KEY` from every node of an ``onnx_ir`` model (subgraphs and
    functions included); the other metadata (name scopes, module classes) stays for debugging."""
    import onnx_ir as ir

    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            node.metadata_props.pop(STACK_TRACE_KEY, None)


def export_onnx(
    module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], output_name: str, path: Path, max_batch: int
) -> None:
    """Export ``module(**inputs)`` to ``path`` with a dynamic batch dim 1..max_batch.

    Uses the torch.export-based exporter; weights are embedded (graphs stay under 2 GB for
    every public checkpoint: the largest, an 18-style pSp encoder, is about 1 GB).
    """
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    dynamic = {name: {0: batch} for name in inputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (),
            kwargs=dict(inputs),
            dynamo=True,
            input_names=list(inputs),
            output_names=[output_name],
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            verbose=False,
        )
    drop_stack_traces(program.model)
    program.save(str(path), external_data=False)
