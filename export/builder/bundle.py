"""The bundle build: checkpoint → export-friendly modules → ONNX graphs, parity-checked in ONNX
Runtime → the post-export passes (CPU-optimised graphs or FP16 graphs, TensorRT engines where
TensorRT is installed) → a bundle folder, written to a temporary folder and renamed into place."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.builder.disk import disk_full_as_error
from export.builder.manifest import CONSTANTS_FILE, TASK_RANGES, bundle_manifest, graph_entry
from export.builder.options import BuildOptions
from export.builder.passes import BuildContext, BundlePass
from export.builder.records import GraphRecord, examples, graph_records
from export.checkpoints.registry import load_checkpoint
from export.checkpoints.types import CheckpointError, LoadedCheckpoint
from export.fast_forms.optimize import optimize_graph
from export.onnx.parity import ParityError, check_parity
from export.onnx.tracing import export_onnx
from export.ort_cpu.cpu_graphs import CpuGraphsPass
from export.precision.fp16 import Fp16Pass
from export.tensorrt.engines import TensorRtPass, tensorrt_version
from sdk.bundle import BundleWriter

log = logging.getLogger("build_engines")

TASK_CHANNELS = {"inversion": 3, "super_resolution": 3, "sketch": 1}  # segmentation: label_nc
PASSES: tuple[BundlePass, ...] = (Fp16Pass(), CpuGraphsPass(), TensorRtPass())


def build(options: BuildOptions) -> Path:
    """Load ``options.checkpoint`` and build its bundle into ``options.out``; returns the folder."""
    if options.checkpoint is None or options.out is None:
        raise ValueError("build() needs options.checkpoint and options.out (the command line fills in defaults)")
    log.info("loading %s", options.checkpoint)
    ckpt = load_checkpoint(options.checkpoint, options.format, options.generator)
    task = options.task or ckpt.suggested_task
    if TASK_CHANNELS.get(task, ckpt.condition_channels) != ckpt.condition_channels:
        raise CheckpointError(
            f"task {task!r} needs {TASK_CHANNELS[task]} input channels but the encoder takes "
            f"{ckpt.condition_channels}; pick another --task"
        )
    cfg = ckpt.encoder_config
    log.info(
        "%s: %d stage(s) of %s (%s-%d, %d input channels, %d styles), %dpx generator",
        ckpt.format,
        len(ckpt.stages),
        cfg["encoder_type"],
        cfg["mode"],
        cfg["num_layers"],
        cfg["input_nc"],
        cfg["n_styles"],
        ckpt.generator.size,
    )
    return build_bundle(ckpt, options.out, options.replace(task=task))


def build_bundle(ckpt: LoadedCheckpoint, out: Path, options: BuildOptions | None = None, **changes: Any) -> Path:
    """Export ``ckpt`` into a bundle at ``out``; returns ``out``. ``options`` (default
    :class:`BuildOptions`), with ``changes`` to its fields, e.g. ``task="super_resolution"``,
    ``precision="fp16"``, ``progress=False``; ``task=None`` is ``"inversion"`` here."""
    options = (options or BuildOptions()).replace(**changes)
    if options.checkpoint is None:  # named in the TensorRT engines' rebuild command
        options = options.replace(checkpoint=ckpt.path)
    task = options.task or "inversion"
    gen = ckpt.generator.set_fp16_safe(options.precision == "fp16")  # NVlabs' pre-normalisation, same maths
    ex = examples(ckpt, gen, TASK_RANGES[task])
    if not bool(torch.isfinite(ex.average_image).all()):
        raise CheckpointError(
            "the generator's image of latent_avg holds NaN/Inf although every weight is finite: "
            "the decoder's weights (or latent_avg) overflow float32; nothing was exported"
        )
    records = graph_records(ckpt, gen, ex)
    trt = tensorrt_version()
    if trt is None:
        log.info("TensorRT not found: building the ONNX Runtime bundle only")
    else:
        log.info("TensorRT %s found: engines are built after the ONNX graphs", trt)

    bar = tqdm(total=2 * len(records) + 1, desc="build", unit="step", disable=not options.progress)
    # inside the writer's block: a full disk is told apart before the writer removes its temporary folder
    with BundleWriter(out) as writer, disk_full_as_error(writer.tmp, _bundle_bytes(ckpt, options.optimize)):
        graphs, parity = {}, {}
        for record in records:
            graphs[record.key], parity[record.key] = _export_graph(record, writer, options, bar)
        np.savez(writer.path(CONSTANTS_FILE), latent_avg=ex.latent_avg.numpy(), average_image=ex.average_image.numpy())
        manifest = bundle_manifest(
            ckpt,
            gen,
            options,
            name=options.name or out.name,
            task=task,
            graphs=graphs,
            parity=parity,
            constants_sha256=writer.add(CONSTANTS_FILE),
            tensorrt=trt,
        )
        ctx = BuildContext(writer.tmp, manifest, records, options, out, writer.add)
        for bundle_pass in PASSES:
            if bundle_pass.applies(options):
                bar.set_postfix_str(bundle_pass.name)
                bundle_pass.run(ctx)
        writer.commit(manifest)
        bar.update()
    bar.close()
    return out


def _export_graph(record: GraphRecord, writer: BundleWriter, options: BuildOptions, bar: tqdm) -> tuple[dict, dict]:
    """Export one graph (in its fast forms unless ``--no-optimize``), check it against the
    original module, and add it to the bundle; returns its manifest entry and parity record."""
    bar.set_postfix_str(f"export {record.key}")
    exported, rewrites = optimize_graph(record.module) if options.optimize else (record.module, [])
    export_onnx(exported, record.inputs, record.output.name, writer.path(record.file), options.max_batch)
    del exported  # the rewrites' weight copies
    bar.update()
    bar.set_postfix_str(f"parity {record.key}")
    report = check_parity(record.module, writer.path(record.file), record.inputs, record.key, options.tolerance)
    log.info("parity %s", report)
    if not report.ok:
        raise ParityError(f"ONNX graph breaks parity with PyTorch: {report}")
    entry = graph_entry(record, writer.add(record.file), rewrites)
    bar.update()
    return entry, report.as_dict()


def _bundle_bytes(ckpt: LoadedCheckpoint, optimize: bool) -> int:
    """About how much disk a build takes: each graph holds its weights, the CPU-optimised graphs
    a second copy, and a CPU-form source a third while it is optimised."""
    weights = sum(
        t.numel() * t.element_size()
        for module in [ckpt.generator, *(st.encoder for st in ckpt.stages)]
        for t in [*module.parameters(), *module.buffers()]
    )
    return (3 if optimize else 1) * weights + (16 << 20)
