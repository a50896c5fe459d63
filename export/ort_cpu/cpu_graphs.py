"""Build step: each graph as ONNX Runtime's CPU provider optimises it, saved into the bundle.

ONNX Runtime optimises a graph when a session opens it: constant folding, fusions, and on
x86 the NCHWc layout (every convolution's weights reordered into blocks of 8 or 16 channels).
For a reference-scale encoder (0.8-1.1 GB of weights) that costs seconds and two to three
copies of the weights in memory at every start. Here it is done once, at build time, and the
result saved with ONNX Runtime's own serialiser: the graph in ``<key>.cpu.onnx``, the weights in
``<key>.cpu.onnx.data`` at page-aligned offsets, which ONNX Runtime maps into memory when it
opens the file. The SDK opens it where the ONNX Runtime release and the CPU's vector ISA match
the build machine's (sdk/backends/onnxruntime/cpu.py), else the portable graph.

Where export/fast_forms/optimize.py has a CPU-specific form of a graph (the generator's up-convolutions as
phase convolutions), that form is exported as the source instead, checked against the original
PyTorch module like every graph. Each optimised graph then gets a batch-1 branch where a rewrite
applies (export/ort_cpu/batch1_branch.py): export/ort_cpu/blocked_styles.py, the generator's top layers' styles
in the blocked convolutions' weights; export/ort_cpu/winograd_matmuls.py, the Winograd products'
transposes folded into their matmuls. The result is checked against the portable graph in ONNX
Runtime on the parity inputs, at their batch and at batch 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from export.builder.options import BuildOptions
from export.builder.passes import BuildContext, BundlePass
from export.fast_forms.optimize import optimize_graph
from export.onnx.parity import ParityError, check_parity, relative_error
from export.onnx.tracing import export_onnx
from export.ort_cpu.batch1_branch import apply_batch1_rewrites
from sdk.backends.onnxruntime.cpu import cpu_tag
from sdk.manifest import ORT_CPU_KEY

log = logging.getLogger(__name__)

MIN_EXTERNAL_BYTES = 4096  # initializers below this stay inside the graph file


def _session(path: Path, optimise_into: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # the "hardware specific" warning is the point here, and documented
    if optimise_into is not None:
        opts.optimized_model_filepath = str(optimise_into)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", optimise_into.name + ".data"
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(MIN_EXTERNAL_BYTES)
        )
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _preoptimised_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as the SDK opens it
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def dense_flops(module, inputs: Mapping[str, object]) -> int:
    """Multiply-add FLOPs (2 per MAC: convolutions, matmuls) of one call of ``module`` on the first
    row of ``inputs``, as PyTorch's FLOP counter sees the operators run."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # the counter's module tracker hooks outputs that require grad; a module returning a parameter
    # as it is (a constant input) would trip it, so parameters are frozen while it counts
    frozen = [p for p in module.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad(), counter:
            module(**{k: v[:1] for k, v in inputs.items()})
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return int(counter.get_total_flops())


def _cpu_source(
    folder: Path, key: str, module, inputs: Mapping[str, object], entry: dict, max_batch: int, tolerance: float
) -> tuple[Path | None, list[str], dict]:
    """Export the CPU form of ``module`` (export/fast_forms/optimize.py, ``cpu=True``) where it differs from
    the portable graph's rewrites, checked against the original module like every graph; returns
    (its file, or None to optimise the portable graph), the rewrites applied, and the dense FLOPs
    per frame of the model and of the CPU form (fewer with Winograd convolutions)."""
    exported, rewrites = optimize_graph(module, cpu=True)
    flops = {"model": dense_flops(module, inputs), "executed": dense_flops(exported, inputs)}
    if rewrites == entry.get("rewrites", []):
        return None, rewrites, flops
    path = folder / f"{key}.cpu-source.onnx"
    export_onnx(exported, inputs, entry["outputs"][0]["name"], path, max_batch)
    report = check_parity(module, path, inputs, f"{key} (CPU form)", tolerance)
    if not report.ok:
        path.unlink()
        raise ParityError(f"the CPU form of a graph breaks parity with PyTorch: {report}")
    log.info("parity %s", report)
    return path, rewrites, flops


def add_cpu_graphs(
    folder: Path, manifest: dict, graphs: list, add_file: Callable[[str], str], tolerance: float, max_batch: int
) -> None:
    """For every ``(key, module, inputs)`` of ``graphs`` (the original PyTorch module and its parity
    inputs), write the graph as ONNX Runtime's CPU provider optimises it into ``folder`` and record
    it under ``graphs.<key>.onnxruntime_cpu``; ``add_file`` registers a bundle file, returns its SHA-256."""
    import onnxruntime as ort

    tag = cpu_tag()
    for key, module, inputs in graphs:
        entry = manifest["graphs"][key]
        portable = folder / entry["file"]
        source, rewrites, flops = _cpu_source(folder, key, module, inputs, entry, max_batch, tolerance)
        dst = folder / f"{key}.cpu.onnx"
        try:
            _session(source or portable, optimise_into=dst)  # opening it writes the optimised graph and its weights
        finally:
            if source is not None:
                source.unlink()  # a build intermediate, not part of the bundle
        data_file = dst.with_name(dst.name + ".data")
        if not data_file.exists():  # no weight reached MIN_EXTERNAL_BYTES: ORT wrote none, the manifest names one
            data_file.touch()
        rewrites = rewrites + list(apply_batch1_rewrites(dst))
        feeds = {k: v.numpy() for k, v in inputs.items()}
        portable_session, optimised = _session(portable), _preoptimised_session(dst)
        rel = 0.0
        # the whole batch, and one sample (the batch-1 branch of the rewrites)
        for batch in (feeds, {k: v[:1] for k, v in feeds.items()}):
            err, ref, r = relative_error(optimised.run(None, batch)[0], portable_session.run(None, batch)[0])
            if not r <= tolerance:
                raise ParityError(
                    f"{key}: the CPU-optimised graph differs from the portable one by {r:.3g} relative "
                    f"at batch {len(next(iter(batch.values())))} (max abs {err:.3g} of {ref:.3g}; "
                    f"tolerance {tolerance:g})"
                )
            rel = max(rel, r)
        data = dst.name + ".data"
        entry[ORT_CPU_KEY] = {
            "file": dst.name,
            "sha256": add_file(dst.name),
            "data": data,
            "data_sha256": add_file(data),
            "onnxruntime": ort.__version__,
            "cpu": tag,
            "rewrites": rewrites,
            "dense_flops": flops,
        }
        log.info(
            "%s: CPU-optimised graph for onnxruntime %s on %s (relative difference to the portable graph %.2g)",
            key,
            ort.__version__,
            tag,
            rel,
        )


class CpuGraphsPass(BundlePass):
    """FP32 builds with the fast forms: every graph as ONNX Runtime's CPU provider optimises it
    on this machine, beside the portable graph."""

    name = "CPU-optimised graphs"

    def applies(self, options: BuildOptions) -> bool:
        return options.precision == "fp32" and options.optimize

    def run(self, ctx: BuildContext) -> None:
        graphs = [(g.key, g.module, g.inputs) for g in ctx.graphs]
        add_cpu_graphs(ctx.folder, ctx.manifest, graphs, ctx.add_file, ctx.options.tolerance, ctx.options.max_batch)
