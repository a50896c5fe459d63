"""FP16 variants of the bundle's ONNX graphs, and their accuracy over the whole refinement loop.

Conversion (:func:`convert_to_fp16`): constants are folded first (onnxscript's optimizer), so the
static weight arithmetic of the modulated convolutions (squares, sums, the FP16-safe weight
pre-normalisation) is computed once in FP32 and stored as FP16 initialisers. Then
onnxconverter-common's ``convert_float_to_float16`` turns the graph to FP16 with the graph's
inputs and outputs kept float32 (``keep_io_types``), so the manifest's I/O contract and the
runtime loop do not change. Kept in FP32 (:func:`fp32_nodes`):

* every ``Sqrt`` / ``Reciprocal`` (the demodulation coefficient ``rsqrt(sum + 1e-8)``; in FP16 the
  epsilon underflows and the reciprocal of a small sum overflows), and the statistics chain
  feeding each ``Sqrt`` (``Mul`` of the styles, the ``MatMul`` with the squared weights, the
  ``Add`` of the epsilon), found by walking the graph upstream, not by node names;
* the node that produces each graph output (the encoder step's residual ``z_t + offsets``: the
  latents accumulate over the loop and FP16 rounding of ``|z| ~ 1`` is 1e-3 per step).

The generator is exported with :meth:`Generator.set_fp16_safe` (NVlabs' pre-normalisation) so
the FP16 activations stay in range; see ``export/models/stylegan2.py``.

The loop accuracy check the build runs after conversion is in :mod:`export.precision.accuracy`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.builder.options import BuildOptions
from export.builder.passes import BuildContext, BundlePass
from export.precision.accuracy import DEFAULT_MIN_PSNR, LoopAccuracy, StagedBundle, accuracy_input, compare_loops

log = logging.getLogger(__name__)

# op types never run in FP16 (besides onnxconverter-common's own list of ops without FP16 kernels)
FP32_OPS = ("Sqrt", "Reciprocal")
# ops that may form the statistic under a Sqrt (sum of squares, mean, epsilon)
STATISTIC_OPS = ("Add", "MatMul", "Mul", "ReduceSum", "ReduceMean", "Pow")
STATISTIC_DEPTH = 3


class Fp16Error(RuntimeError):
    """FP16 conversion is unavailable or the FP16 graphs are not accurate enough."""


def _float16_module():
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise Fp16Error(
            "FP16 conversion needs onnxconverter-common: pip install -e '.[export]' "
            "(or pip install onnxconverter-common)"
        ) from e
    return float16


def fold_constants(model):
    """Fold constant subgraphs (weights only) with onnxscript's optimizer, without size limits."""
    import onnxscript.optimizer

    limit = 1 << 31
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]  # per-initializer INFO lines
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(max(q.getEffectiveLevel(), logging.WARNING))
    try:
        return onnxscript.optimizer.optimize(model, input_size_limit=limit, output_size_limit=limit)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def fp32_nodes(model, depth: int = STATISTIC_DEPTH) -> list[str]:
    """Names of the nodes to keep in FP32: each Sqrt's statistics chain (up to ``depth`` producers
    of the types in :data:`STATISTIC_OPS`) and the producers of the graph outputs."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    keep: set[str] = set()
    for node in graph.node:
        if node.op_type != "Sqrt":
            continue
        stack = [(node, 0)]
        while stack:
            cur, d = stack.pop()
            keep.add(cur.name)
            if d == depth:
                continue
            for name in cur.input:
                src = producer.get(name)
                if src is not None and src.op_type in STATISTIC_OPS and src.name not in keep:
                    stack.append((src, d + 1))
    outputs = {o.name for o in graph.output}
    keep.update(n.name for n in graph.node if outputs.intersection(n.output))
    return sorted(keep)


@dataclass
class ConversionReport:
    graph: str
    nodes: int
    fp32_nodes: int
    casts: int

    def as_dict(self) -> dict:
        return asdict(self)


def convert_to_fp16(src: Path, dst: Path, graph: str = "") -> ConversionReport:
    """Write the FP16 variant of the ONNX graph ``src`` to ``dst`` (float32 inputs and outputs)."""
    import onnx

    float16 = _float16_module()
    model = fold_constants(onnx.load(str(src)))
    for node_index, node in enumerate(model.graph.node):  # the block list needs unique, non-empty names
        if not node.name:
            node.name = f"{node.op_type}_{node_index}"
    keep = fp32_nodes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-value notes about rounding tiny weights
        # min_positive_val tiny: values below FP16's range round to zero as IEEE does, instead of
        # being clamped up to 1e-7 (the library's default); max_finite_val: saturate, never inf
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            min_positive_val=1e-30,
            max_finite_val=65504.0,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
            node_block_list=keep,
        )
    _restore_float32_outputs(converted, {o.name for o in model.graph.output})
    _restore_float32_resize_scales(converted, model)
    onnx.save(converted, str(dst))
    nodes = [n for n in converted.graph.node]
    report = ConversionReport(
        graph or Path(src).stem,
        sum(n.op_type != "Cast" for n in nodes),
        len(keep),
        sum(n.op_type == "Cast" for n in nodes),
    )
    log.info(
        "fp16 %s: %d nodes, %d kept in fp32 (demodulation statistics, outputs), %d casts",
        report.graph,
        report.nodes,
        report.fp32_nodes,
        report.casts,
    )
    return report


def _restore_float32_outputs(model, outputs: set[str]) -> None:
    """onnxconverter-common (1.16) casts the output of a *blocked* node that produces a graph
    output to FP16 and declares the graph output FP16, despite ``keep_io_types``: drop that Cast
    so the FP32 node writes the float32 graph output directly."""
    from onnx import TensorProto

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    for out in graph.output:
        cast = producer.get(out.name)
        if out.name not in outputs or cast is None or cast.op_type != "Cast":
            continue
        to = next((a.i for a in cast.attribute if a.name == "to"), None)
        src = producer.get(cast.input[0])
        if to != TensorProto.FLOAT16 or src is None or src.op_type == "Cast":
            continue
        inner = cast.input[0]
        src.output[list(src.output).index(inner)] = out.name
        for node in graph.node:  # other readers of the FP32 value now read the graph output
            for i, name in enumerate(node.input):
                if name == inner:
                    node.input[i] = out.name
        graph.node.remove(cast)
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    for out in graph.output:
        if out.name in outputs and out.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise Fp16Error(
                f"FP16 conversion left graph output {out.name!r} as type {out.type.tensor_type.elem_type}, not float32"
            )


def _restore_float32_resize_scales(model, original) -> None:
    """onnxconverter-common stores a Resize's ``scales`` initializer as FP16 and casts it back to
    FP32 in the graph; TensorRT then sees computed scales and takes its dynamic-resize path. Feed
    each Resize the original FP32 initializer again, and drop the Cast and FP16 copy if unused."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    fp32 = {t.name: t for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    for node in [n for n in graph.node if n.op_type == "Resize" and len(n.input) > 2 and n.input[2]]:
        cast = producer.get(node.input[2])
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in fp32 or cast.input[0] not in inits:
            continue
        name = cast.input[0]
        restored = f"{name}_fp32"
        if restored not in inits:
            inits[restored] = numpy_helper.from_array(numpy_helper.to_array(fp32[name]), restored)
            graph.initializer.append(inits[restored])
        node.input[2] = restored
        readers = [i for n in graph.node for i in n.input]
        if cast.output[0] not in readers:
            graph.node.remove(cast)
            if name not in [i for n in graph.node for i in n.input]:
                graph.initializer.remove(inits.pop(name))


# --------------------------------------------------------------------------- accuracy


def apply_fp16(
    folder: Path,
    manifest: dict,
    *,
    min_psnr: float = DEFAULT_MIN_PSNR,
    batch: int = 2,
    add_file=None,
    threads: int | None = None,
    keep_fp32: bool = False,
) -> LoopAccuracy:
    """Convert every graph of the (uncommitted) bundle in ``folder`` to FP16, measure the loop
    against the FP32 graphs, and point ``manifest['graphs']`` at the FP16 files (``precision:
    "fp16"``, accuracy under ``manifest['accuracy']``). Raises :class:`Fp16Error` when the FP16
    loop is not finite or below ``min_psnr``. ``add_file(name) -> sha256`` registers a new file
    (``BundleWriter.add``); ``keep_fp32`` keeps the FP32 graphs in the folder (not in the manifest).
    """
    import copy

    from sdk.bundle import sha256_file

    folder = Path(folder)
    fp32_manifest = copy.deepcopy(manifest)
    fp16_manifest = copy.deepcopy(manifest)
    reports = {}
    for key, graph in fp16_manifest["graphs"].items():
        src = folder / graph["file"]
        name = f"{Path(graph['file']).stem}.fp16.onnx"
        reports[key] = convert_to_fp16(src, folder / name, key).as_dict()
        graph["file"], graph["precision"] = name, "fp16"
        graph["sha256"] = add_file(name) if add_file else sha256_file(folder / name)
    iterations = manifest["schedule"]["default_iterations"]
    x = accuracy_input(manifest, batch=batch)
    acc = compare_loops(
        StagedBundle(folder, fp32_manifest),
        StagedBundle(folder, fp16_manifest),
        x,
        iterations,
        min_psnr=min_psnr,
        threads=threads,
    )
    log.info("%s", acc)
    if not acc.ok:
        raise Fp16Error(
            f"FP16 graphs are not accurate enough: {acc}. Build with --precision fp32, or "
            f"lower --fp16-min-psnr if this model tolerates it"
        )
    if not keep_fp32:
        for graph in fp32_manifest["graphs"].values():
            (folder / graph["file"]).unlink(missing_ok=True)
    manifest["graphs"] = fp16_manifest["graphs"]
    manifest["accuracy"] = {
        "fp16_vs_fp32": acc.as_dict(),
        "conversion": reports,
        "method": "onnxconverter-common float16, keep_io_types, FP32 demodulation statistics",
    }
    return acc


def check_finite_activations(path: Path, feeds: Mapping[str, np.ndarray], sample: Sequence[str] | None = None) -> list:
    """Names of the intermediate tensors of the graph at ``path`` that hold NaN or Inf on ``feeds``
    (every node output is exposed as a graph output; meant for small graphs in tests)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    typed = {vi.name: vi for vi in model.graph.value_info}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in known and out in typed and (sample is None or out in sample):
                model.graph.output.append(typed[out])
                known.add(out)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, dict(feeds))
    return [
        n
        for n, v in zip(names, values)
        if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))
    ]


class Fp16Pass(BundlePass):
    """``--precision fp16``: every graph converted, the loop checked against FP32 (the FP32
    graphs leave the bundle)."""

    name = "fp16 graphs and loop accuracy"

    def applies(self, options: BuildOptions) -> bool:
        return options.precision == "fp16"

    def run(self, ctx: BuildContext) -> None:
        apply_fp16(ctx.folder, ctx.manifest, min_psnr=ctx.options.fp16_min_psnr, add_file=ctx.add_file)
