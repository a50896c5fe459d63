"""TensorRT engines from the bundle's ONNX graphs (TensorRT 10.x and 11.x), compared with ONNX Runtime.

* **Typing.** A strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): the
  precisions are the ONNX graph's own, so an FP16 bundle (``export/precision/fp16.py``) gives FP16 kernels
  with the demodulation statistics in FP32, exactly as checked on CPU. TensorRT 11 only has
  strong typing (``BuilderFlag.FP16`` was removed); on a 10.x without the flag, or with
  ``strongly_typed=False``, the network is weakly typed and ``BuilderFlag.FP16`` lets TensorRT
  pick FP16 kernels for FP16 bundles (the 10.x fallback).
* **Profiles.** One optimisation profile over the batch range ``min..opt..max`` for every input
  (the other dims are static in the manifest).
* **Timing cache.** Loaded from and saved back to ``timing_cache`` (atomic replace), so rebuilds
  and the other graphs of a bundle reuse kernel timings.
* **Manifest.** ``engines[key] = {file, sha256, graph, tensorrt, gpu, compute_capability,
  precision, typing, profile, comparison}``; the runtime refuses engines whose TensorRT release
  or compute capability differ from the machine's (``sdk/backends/tensorrt.py``).
* **TF32.** TensorRT enables ``BuilderFlag.TF32`` by default (also for strongly typed
  networks): Conv/MatMul operands rounded to 10 mantissa bits on Ampere and newer, which puts a
  third of an FP32 engine's outputs outside 1e-3 of ONNX Runtime. It is cleared unless
  ``EngineOptions.tf32`` asks for it; then the comparison uses the looser ``tf32`` tolerance and
  the manifest entry says ``"tf32": true``.
* **Check.** Polygraphy runs the engine and the bundle's ONNX graph (ONNX Runtime, CPU) on the
  same random inputs and the tolerances and result go into ``comparison``; a failure fails the
  build.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.builder.options import BuildOptions
from export.builder.passes import BuildContext, BundlePass
from export.demo import DEMO_CHECKPOINT

log = logging.getLogger(__name__)

# output tolerances of the engine vs ONNX Runtime on the same graph, per graph precision
# ("tf32": FP32 graphs built with BuilderFlag.TF32, i.e. 10-bit mantissa operands, FP32 accumulation)
TOLERANCES = {
    "fp32": {"rtol": 1e-3, "atol": 1e-3},
    "tf32": {"rtol": 1e-2, "atol": 1e-2},
    "fp16": {"rtol": 2e-2, "atol": 2e-2},
}


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph, or the engine disagrees with ONNX Runtime."""


@dataclass
class EngineOptions:
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    strongly_typed: bool | None = None  # None: strongly typed where this TensorRT offers it
    compare: bool = True  # Polygraphy TensorRT vs ONNX Runtime after each build
    device: int = 0
    tf32: bool = False  # True: keep TensorRT's default TF32 (faster FP32 convs; compared at the tf32 tolerance)
    rebuild_command: str = "python export/build_engines.py --checkpoint CKPT --out BUNDLE"
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))

    def check(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineBuildError(
                f"batch profile {self.min_batch}..{self.opt_batch}..{self.max_batch} must satisfy "
                f"1 <= min <= opt <= max; fix --opt-batch / --max-batch"
            )


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise EngineBuildError("TensorRT is not installed; see the README's GPU section") from e
    return tensorrt


def profile_shapes(graph: Mapping, options: EngineOptions) -> dict[str, tuple]:
    """``{input name: (min, opt, max)}`` for a manifest graph entry (symbolic dims = batch)."""

    def at(shape, b):
        return tuple(b if isinstance(d, str) else int(d) for d in shape)

    batches = (options.min_batch, options.opt_batch, options.max_batch)
    return {t["name"]: tuple(at(t["shape"], b) for b in batches) for t in graph["inputs"]}


def use_strong_typing(trt, requested: bool | None) -> bool:
    has_flag = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    has_fp16_flag = hasattr(trt.BuilderFlag, "FP16")
    if requested is False and not has_fp16_flag:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} has no weak typing (BuilderFlag.FP16 was removed in 11.x); "
            f"build strongly typed from the FP16 ONNX graph"
        )
    if requested is True and not has_flag and has_fp16_flag:
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot build strongly typed networks; use TensorRT >= 10")
    if requested is None:  # a TensorRT with neither flag (11.x without the legacy enum) is always strongly typed
        return has_flag or not has_fp16_flag
    return requested


def tolerance_key(precision: str, tf32: bool) -> str:
    """Which :data:`TOLERANCES` entry an engine is compared at."""
    return "tf32" if precision == "fp32" and tf32 else precision


def set_tf32(trt, config, wanted: bool) -> bool:
    """Set or clear ``BuilderFlag.TF32`` (TensorRT sets it by default); returns whether it is on."""
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:  # a TensorRT without the flag never uses TF32
        return False
    if wanted:
        config.set_flag(flag)
    else:
        config.clear_flag(flag)
    return bool(wanted)


def _load_timing_cache(config, path: Path | None):
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: a foreign cache is not used
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config, path: Path | None) -> None:
    if path is None:
        return
    data = config.get_timing_cache().serialize()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, path)


def build_engine(
    onnx_path: Path, graph: Mapping, options: EngineOptions, precision: str = "fp32"
) -> tuple[bytes, dict]:
    """Build a serialized engine for the ONNX graph ``onnx_path`` (manifest entry ``graph``).
    Returns the plan bytes and the build facts for the manifest."""
    trt = import_tensorrt()
    options.check()
    from sdk.backends.tensorrt import python_logger

    logger = python_logger(trt)  # TensorRT's messages into logging (export.tensorrt.engines's caller sees them)
    builder = trt.Builder(logger)
    strong = use_strong_typing(trt, options.strongly_typed)
    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(strong_flag) if strong and strong_flag is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if not strong and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10.x weak typing fallback
    tf32 = set_tf32(trt, config, options.tf32)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(graph, options)
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    _load_timing_cache(config, options.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        said = "; ".join(logger.errors[-3:]) or "see the TensorRT log above"
        raise EngineBuildError(f"TensorRT failed to build {onnx_path.name} ({said})")
    _save_timing_cache(config, options.timing_cache)
    facts = {
        "tensorrt": trt.__version__,
        "precision": precision,
        "typing": "strong" if strong else ("weak+FP16 flag" if precision == "fp16" else "weak"),
        "tf32": tf32,
        "profile": {"min": options.min_batch, "opt": options.opt_batch, "max": options.max_batch},
        "workspace_gb": options.workspace_gb,
    }
    return bytes(plan), facts


def engine_runner(plan: bytes):
    """Polygraphy's runner for a serialized engine (tests replace it by the fake engine's)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(plan))


def compare_with_onnxruntime(
    plan: bytes, onnx_path: Path, graph: Mapping, options: EngineOptions, precision: str, tf32: bool = False
) -> dict:
    """Polygraphy: the engine vs ONNX Runtime (CPU) on the bundle's graph, random inputs in [-1, 1]
    at the optimum and maximum batch. Returns the tolerances, pass/fail and error figures."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, DataLoader, SimpleCompareFunc  # polygraphy >= 0.53

    key = tolerance_key(precision, tf32)
    tol = options.tolerances[key]
    report = {"reference": "onnxruntime-cpu (same ONNX graph)", "tolerance": key, **tol, "batches": {}, "passed": True}
    onnx_bytes = onnx_path.read_bytes()
    for batch in sorted({options.opt_batch, options.max_batch}):
        meta = TensorMetadata()
        for t in graph["inputs"]:
            meta.add(
                t["name"],
                np.dtype(t.get("dtype", "float32")),
                tuple(batch if isinstance(d, str) else d for d in t["shape"]),
            )
        runners = [engine_runner(plan), OnnxrtRunner(SessionFromOnnx(onnx_bytes, providers=["CPUExecutionProvider"]))]
        results = Comparator.run(runners, data_loader=DataLoader(input_metadata=meta, val_range=(-1.0, 1.0), seed=0))
        ok = bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(**tol)))
        (_, trt_iters), (_, ort_iters) = results
        errs = {}
        for name in trt_iters[0].keys():
            a, b = np.asarray(trt_iters[0][name], np.float64), np.asarray(ort_iters[0][name], np.float64)
            errs[name] = {
                "max_abs_error": float(np.max(np.abs(a - b))),
                "max_abs_reference": float(np.max(np.abs(b))),
                "finite": bool(np.all(np.isfinite(a))),
            }
        report["batches"][str(batch)] = {"passed": ok, "outputs": errs}
        report["passed"] &= ok
    return report


def build_bundle_engines(
    folder: Path, manifest: dict, options: EngineOptions, add_file: Callable[[str], str] | None = None
) -> dict:
    """Build ``<graph>.plan`` for every graph of the uncommitted bundle in ``folder`` and fill
    ``manifest['engines']``. Raises :class:`EngineBuildError` on a failed build or comparison."""
    from sdk.backends.cuda import device_info, select_device
    from sdk.bundle import sha256_file

    gpu = device_info(options.device)
    engines = {}
    for key, graph in manifest["graphs"].items():
        onnx_path = Path(folder) / graph["file"]
        precision = graph.get("precision", "fp32")
        log.info(
            "TensorRT: building %s (%s, batch %d..%d..%d) on %s",
            key,
            precision,
            options.min_batch,
            options.opt_batch,
            options.max_batch,
            gpu.name,
        )
        select_device(options.device)  # TensorRT builds on the calling thread's current device
        plan, facts = build_engine(onnx_path, graph, options, precision)
        file = f"{key}.plan"
        (Path(folder) / file).write_bytes(plan)
        entry = {
            "file": file,
            "sha256": add_file(file) if add_file else sha256_file(Path(folder) / file),
            "graph": key,
            **facts,
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "rebuild": options.rebuild_command,
        }
        if options.compare:
            entry["comparison"] = compare_with_onnxruntime(plan, onnx_path, graph, options, precision, facts["tf32"])
            log.info(
                "TensorRT vs ONNX Runtime %s: %s (rtol %g, atol %g)",
                key,
                "passed" if entry["comparison"]["passed"] else "FAILED",
                entry["comparison"]["rtol"],
                entry["comparison"]["atol"],
            )
            if not entry["comparison"]["passed"]:
                raise EngineBuildError(
                    f"TensorRT engine {key} disagrees with ONNX Runtime beyond rtol/atol "
                    f"{entry['comparison']['rtol']}/{entry['comparison']['atol']}: "
                    f"{entry['comparison']['batches']}"
                )
        engines[key] = entry
    manifest["engines"] = engines
    return engines


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def engine_options(options: BuildOptions, out: Path) -> EngineOptions:
    """The TensorRT build options of a bundle build into ``out``."""
    return EngineOptions(
        min_batch=1,
        opt_batch=options.opt_batch,
        max_batch=options.max_batch,
        workspace_gb=options.workspace_gb,
        tf32=options.tf32,
        rebuild_command=rebuild_command(options, out),
        timing_cache=options.timing_cache,
    )


def rebuild_command(options: BuildOptions, out: Path) -> str:
    """The command that rebuilds this bundle, for the runtime to print when its engines do not
    fit the machine (another TensorRT release or GPU)."""
    demo = options.checkpoint is None or options.checkpoint == DEMO_CHECKPOINT
    ckpt = "" if demo else f" --checkpoint {options.checkpoint}"
    gen = f" --generator {options.generator}" if options.generator else ""
    tf32 = " --tf32" if options.tf32 else ""
    return f"python export/build_engines.py{ckpt}{gen} --out {out} --precision {options.precision}{tf32}"


class TensorRtPass(BundlePass):
    """Where TensorRT is installed: an engine per graph, compared with ONNX Runtime."""

    name = "TensorRT engines"

    def applies(self, options: BuildOptions) -> bool:
        return tensorrt_version() is not None

    def run(self, ctx: BuildContext) -> None:
        build_bundle_engines(ctx.folder, ctx.manifest, engine_options(ctx.options, ctx.out), add_file=ctx.add_file)
