#!/usr/bin/env python
"""Build a bundle: checkpoint → export-friendly modules → ONNX graphs, parity-checked in
ONNX Runtime → (TensorRT engines where TensorRT is installed) → ``engines/NAME``.

    python export/build_engines.py                                  # the embedded demo model (64 px OME SR)
    python export/build_engines.py --checkpoint restyle.pt --out engines/restyle
    python export/build_engines.py --checkpoint psp_sr.pt --task super_resolution --factor 8

Formats (detected from the file, or --format):
  psp          pixel2style2pixel: GradualStyleEncoder, or the W / W+ backbone encoders
               (learn_in_w); one pass
  restyle_psp  ReStyle BackboneEncoder, iterative (6 input channels, N = 5 by default)
  restyle_fpn  ReStyle GradualStyleEncoder = OME's StyleGAN2 encoder, iterative
  e2style      E2Style: a first stage and k refinement stages, each with its own weights;
               --iterations counts the stages used
  rosinality   a StyleGAN2 file (g_ema) to replace the decoder (--generator)
  ome_stylegan2 / ome_progan / mtv_tsa   see export/family_checkpoints.py
Tasks (default: read from the checkpoint's opts):
  inversion         RGB in, resized to 256
  super_resolution  RGB in, bicubic-downsampled by --factor and resized back (pSp's transforms)
  sketch            one channel in [0, 1]
  segmentation      an HxW label map, one-hot over label_nc channels

The bundle is written to a temporary folder and renamed into place: an interrupted build
leaves the previous bundle intact. A parity break (ONNX vs PyTorch beyond --tolerance) fails
the build with the numbers.

Exit codes: 0 built; 2 a checkpoint, bundle or --out problem, or a disk that filled (one line
naming it, nothing half-written); 1 a parity, FP16 accuracy or TensorRT engine failure; 130
interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from export.checkpoints import FORMATS, CheckpointError, LoadedCheckpoint, load_checkpoint
from export.cpu_graphs import add_cpu_graphs
from export.fp16 import Fp16Error, apply_fp16
from export.graphs import EncoderStep, GeneratorGraph, MappingGraph
from export.onnx_export import (
    OPSET,
    DiskFullError,
    ParityError,
    check_parity,
    disk_full_as_error,
    disk_full_error,
    export_onnx,
)
from export.optimize import REWRITES_VERSION, optimize_graph
from export.tensorrt_build import EngineBuildError, EngineOptions, build_bundle_engines
from sdk.build_target import check_build_target
from sdk.bundle import SCHEMA_VERSION, BundleWriter
from sdk.errors import SdkError
from sdk.tasks import SR_FACTORS, TASKS

log = logging.getLogger("build_engines")
REPO = Path(__file__).resolve().parents[1]
# the encoder input range each task's pre-processing produces (sdk/tasks.py)
TASK_RANGES = {
    "inversion": (-1.0, 1.0),
    "super_resolution": (-1.0, 1.0),
    "sketch": (0.0, 1.0),
    "segmentation": (0.0, 1.0),
}
TASK_CHANNELS = {"inversion": 3, "super_resolution": 3, "sketch": 1}  # segmentation: label_nc


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def build_bundle(
    ckpt: LoadedCheckpoint,
    out: Path,
    task: str = "inversion",
    factor: int = 4,
    max_batch: int = 8,
    tolerance: float = 1e-4,
    name: str | None = None,
    iterations: int | None = None,
    progress: bool = True,
    precision: str = "fp32",
    fp16_min_psnr: float = 40.0,
    engines: EngineOptions | None = None,
    optimize: bool = True,
) -> Path:
    """Export ``ckpt`` into a bundle at ``out``; returns ``out``. ``precision="fp16"``: FP16
    graphs checked against FP32 over the loop (export/fp16.py); ``engines``: TensorRT options
    (export/tensorrt_build.py), used where TensorRT is installed; ``optimize``: export the
    equivalent fast forms of export/optimize.py (parity is still checked against the original)."""
    gen = ckpt.generator.set_fp16_safe(precision == "fp16")  # NVlabs' pre-normalisation, same maths
    size, m, d = gen.size, gen.n_latent, gen.style_dim
    s_in = ckpt.input_size  # the encoder input side
    cond_nc = ckpt.condition_channels
    lo, hi = TASK_RANGES[task]
    with torch.no_grad():
        latent_avg = ckpt.latent_avg.float()
        average_image = gen(latent_avg[None])[0]
    if not bool(torch.isfinite(average_image).all()):
        raise CheckpointError(
            "the generator's image of latent_avg holds NaN/Inf although every weight is finite: "
            "the decoder's weights (or latent_avg) overflow float32; nothing was exported"
        )
    rng = torch.Generator().manual_seed(0)
    example_batch = 2  # batch 1 would be specialised by the exporter
    example = {
        "x": lo + (hi - lo) * torch.rand(example_batch, cond_nc, s_in, s_in, generator=rng),
        "y": average_image[None].repeat(example_batch, 1, 1, 1),
        "z": latent_avg[None].repeat(example_batch, 1, 1) + 0.1 * torch.randn(example_batch, m, d, generator=rng),
    }
    io = {
        "x": ("condition", ["batch", cond_nc, s_in, s_in]),
        "y": ("image", ["batch", 3, size, size]),
        "z": ("latents", ["batch", m, d]),
    }
    graphs, stages = [], []
    for i, stage in enumerate(ckpt.stages):
        step = EncoderStep(
            stage.encoder,
            feedback=stage.feedback,
            residual=stage.residual,
            input_size=s_in,
            output_size=size,
            n_latent=m,
        ).eval()
        inputs = {k: example[k] for k in step.input_names}
        graphs.append((f"encoder_{i}", step, inputs, "z_next", ("latents", ["batch", m, d])))
        stages.append({"graph": f"encoder_{i}", "feedback": stage.feedback, "residual": stage.residual})
    graphs.append(
        ("generator", GeneratorGraph(gen).eval(), {"z": example["z"]}, "image", ("image", ["batch", 3, size, size]))
    )
    # the mapping network z -> w, for style mixing (pSp's multi-modal synthesis); ProGAN has none
    io["sample"] = ("sample", ["batch", d])
    if hasattr(gen, "mapping"):
        graphs.append(
            (
                "mapping",
                MappingGraph(gen).eval(),
                {"sample": torch.randn(example_batch, d, generator=rng)},
                "w",
                ("style", ["batch", d]),
            )
        )
    options = {"super_resolution": {"factor": factor}, "segmentation": {"label_nc": cond_nc}}.get(task, {})

    trt = tensorrt_version()
    if trt is None:
        log.info("TensorRT not found: building the ONNX Runtime bundle only")
    else:
        log.info("TensorRT %s found: engines are built after the ONNX graphs", trt)

    manifest_graphs, parity = {}, {}
    bar = tqdm(total=2 * len(graphs) + 1, desc="build", unit="step", disable=not progress)
    # inside the writer's block: a full disk is told apart before the writer removes its temporary folder
    with BundleWriter(out) as writer, disk_full_as_error(writer.tmp, _bundle_bytes(ckpt, optimize)):
        for key, module, inputs, out_name, (out_role, out_shape) in graphs:
            file = f"{key}.onnx"
            bar.set_postfix_str(f"export {key}")
            exported, rewrites = optimize_graph(module) if optimize else (module, [])
            export_onnx(exported, inputs, out_name, writer.path(file), max_batch)
            del exported  # the rewrites' weight copies
            bar.update()
            bar.set_postfix_str(f"parity {key}")
            report = check_parity(module, writer.path(file), inputs, key, tolerance)
            log.info("parity %s", report)
            if not report.ok:
                raise ParityError(f"ONNX graph breaks parity with PyTorch: {report}")
            parity[key] = report.as_dict()
            manifest_graphs[key] = {
                "file": file,
                "sha256": writer.add(file),
                "precision": "fp32",
                "inputs": [{"name": n, "role": io[n][0], "shape": io[n][1], "dtype": "float32"} for n in inputs],
                "outputs": [{"name": out_name, "role": out_role, "shape": out_shape, "dtype": "float32"}],
                "rewrites": rewrites,
            }
            bar.update()
        np.savez(writer.path("constants.npz"), latent_avg=latent_avg.numpy(), average_image=average_image.numpy())
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name or out.name,
            "family": ckpt.format,
            "task": {"name": task, "options": options},
            "input": {"channels": cond_nc, "size": s_in, "range": [lo, hi]},
            "output": {"channels": 3, "size": size, "range": [-1.0, 1.0]},
            "latent": {"count": m, "dim": d},
            "batch": {"min": 1, "max": max_batch},
            "graphs": manifest_graphs,
            "constants": {
                "file": "constants.npz",
                "sha256": writer.add("constants.npz"),
                "arrays": {"latent_avg": [m, d], "average_image": [3, size, size]},
            },
            "schedule": {
                "stages": stages,
                "repeat_last": ckpt.repeat_last,
                "default_iterations": iterations or ckpt.default_iterations,
            },
            "engines": {},
            "parity": parity,
            "build": {
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "source": {"file": ckpt.path.name, "sha256": ckpt.sha256, "format": ckpt.format},
                "encoders": [st.config for st in ckpt.stages],
                "generator": getattr(gen, "config", None)
                or {"size": size, "style_dim": d, "n_mlp": gen.n_mlp, "channel_multiplier": gen.channel_multiplier},
                "torch": torch.__version__,
                "onnx_opset": OPSET,
                "tensorrt": trt,
                "rewrites_version": REWRITES_VERSION if optimize else None,
                "python": platform.python_version(),
            },
        }
        if precision == "fp16":
            bar.set_postfix_str("fp16 graphs and loop accuracy")
            apply_fp16(writer.tmp, manifest, min_psnr=fp16_min_psnr, add_file=writer.add)
        elif optimize:  # FP32: the graphs as ONNX Runtime's CPU provider optimises them on this machine
            bar.set_postfix_str("CPU-optimised graphs")
            add_cpu_graphs(
                writer.tmp,
                manifest,
                [(key, module, inputs) for key, module, inputs, *_ in graphs],
                writer.add,
                tolerance,
                max_batch,
            )
        if trt is not None:
            bar.set_postfix_str("TensorRT engines")
            build_bundle_engines(
                writer.tmp, manifest, engines or EngineOptions(max_batch=max_batch), add_file=writer.add
            )
        writer.commit(manifest)
        bar.update()
    bar.close()
    return out


def _bundle_bytes(ckpt: LoadedCheckpoint, optimize: bool) -> int:
    """About how much disk a build takes: each graph holds its weights, the CPU-optimised graphs
    a second copy, and a CPU-form source a third while it is optimised."""
    weights = sum(
        t.numel() * t.element_size()
        for module in [ckpt.generator, *(st.encoder for st in ckpt.stages)]
        for t in [*module.parameters(), *module.buffers()]
    )
    return (3 if optimize else 1) * weights + (16 << 20)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="encoder checkpoint (.pt); default: the embedded demo model")
    p.add_argument("--generator", type=Path, help="rosinality StyleGAN2 file (g_ema) to use as the decoder")
    p.add_argument("--format", choices=FORMATS, help="checkpoint format (default: detected from the file)")
    p.add_argument(
        "--out",
        type=Path,
        help="bundle folder to write (default: engines/demo, or engines/<checkpoint "
        "name>): a new path, an empty folder or an earlier bundle, which is replaced; any other folder or "
        "file is refused, never deleted",
    )
    p.add_argument(
        "--task",
        choices=sorted(TASKS),
        help="pre-processing the bundle applies to images "
        "(default: read from the checkpoint's opts; super_resolution for the demo)",
    )
    p.add_argument("--factor", type=int, default=4, choices=SR_FACTORS, help="default super-resolution factor")
    p.add_argument("--iterations", type=int, help="default refinement iterations (default: from the checkpoint)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the graphs accept (default 8)")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="parity bound, max|onnx-torch| / max|torch| (default 1e-4)"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="graph precision: fp16 converts every graph (I/O stays float32) and checks the loop "
        "against fp32 in ONNX Runtime (default fp32)",
    )
    p.add_argument(
        "--fp16-min-psnr",
        type=float,
        default=40.0,
        help="fp16 loop output must reach this PSNR (dB) against fp32 (default 40)",
    )
    p.add_argument("--opt-batch", type=int, default=1, help="TensorRT: batch size the engines are tuned for")
    p.add_argument(
        "--timing-cache",
        type=Path,
        help="TensorRT timing cache file, reused across builds (default: engines/.timing_cache)",
    )
    p.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace (default 4 GiB)")
    p.add_argument(
        "--tf32",
        action="store_true",
        help="TensorRT: keep TF32 for the FP32 engines (faster convs on "
        "Ampere and newer, 10-bit mantissa operands); they are then compared at the looser tf32 tolerance "
        "and the manifest records it. Default: TF32 off, FP32 engines compared at 1e-3",
    )
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="export the checkpoint modules as they are, without the equivalent fast forms of "
        "export/optimize.py (merged style heads, one style matmul), and without the CPU-optimised "
        "graphs of export/cpu_graphs.py (for comparisons)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("onnxscript").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.checkpoint is None:
        from export.demo import DEMO_CHECKPOINT

        log.info(
            "no --checkpoint: the embedded demo model (%s, trained by export/train_demo.py)",
            DEMO_CHECKPOINT.relative_to(REPO),
        )
        args.checkpoint = DEMO_CHECKPOINT
        args.out = args.out or REPO / "engines" / "demo"
    return _build(args)


class _InterruptWatch:
    """Remembers a Ctrl-C while the build runs. The KeyboardInterrupt it raises can land inside a
    library that turns it into its own error (torch.export reports a failed export); the build
    must still say it was interrupted, and exit with 130."""

    seen = False

    def __enter__(self) -> _InterruptWatch:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _build(args: argparse.Namespace) -> int:
    out = args.out or REPO / "engines" / args.checkpoint.stem
    interrupt = _InterruptWatch()
    try:
        with interrupt:
            check_build_target(out)  # before the minutes of loading and tracing: refuse a user's folder now
            _load_and_build(args, out)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or (interrupt.seen and isinstance(e, Exception)):
            log.error("interrupted; the previous bundle (if any) is untouched")
            return 130
        full = disk_full_error(e, out.parent) if isinstance(e, OSError) else None  # outside the bundle writer
        if full is not None or isinstance(e, (CheckpointError, SdkError, DiskFullError)):
            log.error("%s", " ".join(str(full or e).split()))  # one line
            return 2
        if isinstance(e, (ParityError, Fp16Error, EngineBuildError)):
            log.error("%s", e)
            return 1
        raise
    log.info("bundle ready: %s  (try: python samples/translate.py --bundle %s)", out, out)
    return 0


def _load_and_build(args: argparse.Namespace, out: Path) -> None:
    log.info("loading %s", args.checkpoint)
    ckpt = load_checkpoint(args.checkpoint, args.format, args.generator)
    task = args.task or ckpt.suggested_task
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
    build_bundle(
        ckpt,
        out,
        task=task,
        factor=args.factor,
        max_batch=args.max_batch,
        tolerance=args.tolerance,
        iterations=args.iterations,
        progress=not args.quiet,
        precision=args.precision,
        fp16_min_psnr=args.fp16_min_psnr,
        optimize=not args.no_optimize,
        engines=engine_options(args, out),
    )


def engine_options(args: argparse.Namespace, out: Path) -> EngineOptions:
    """The TensorRT build options the command line asks for."""
    return EngineOptions(
        min_batch=1,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_gb=args.workspace_gb,
        tf32=args.tf32,
        rebuild_command=_rebuild_command(args, out),
        timing_cache=args.timing_cache or REPO / "engines" / ".timing_cache",
    )


def _rebuild_command(args: argparse.Namespace, out: Path) -> str:
    from export.demo import DEMO_CHECKPOINT

    ckpt = "" if args.checkpoint is None or args.checkpoint == DEMO_CHECKPOINT else f" --checkpoint {args.checkpoint}"
    gen = f" --generator {args.generator}" if args.generator else ""
    tf32 = " --tf32" if args.tf32 else ""
    return f"python export/build_engines.py{ckpt}{gen} --out {out} --precision {args.precision}{tf32}"


if __name__ == "__main__":
    sys.exit(main())
