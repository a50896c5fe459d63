"""Write a stock Triton model repository from a bundle, for GPU fleets.

    python -m serving.model_repository --bundle engines/demo --out triton_models
    python -m serving.model_repository --bundle engines/demo --out triton_models --format onnx --kind cpu
    tritonserver --model-repository=$PWD/triton_models        # inside NVIDIA's tritonserver container

What it writes (``NAME`` = ``--model-name``, default ``translator``)::

    triton_models/
      NAME_<graph>/            one per graph the loop runs (the encoder stage(s), the generator)
        config.pbtxt           platform tensorrt_plan (the bundle's TensorRT engines) or
        1/model.plan           onnxruntime_onnx (1/model.onnx) where the bundle has no engines
      NAME/                    the entry point: Python backend, BLS (serving/bls_model.py)
        config.pbtxt           inputs condition, iterations; outputs output, output_raw, latents
        1/model.py             runs the refinement loop over the models above
        1/loop.json            the schedule as data: model and tensor names per step
        1/constants.npz        latent_avg and average_image (the loop's start)
      README.md                what the plans were built for, how to serve and call it

Configs are built as ``ModelConfig`` protobuf messages (tritonclient ships Triton's
``model_config.proto``) and written in protobuf text format, so field names and types are
Triton's own. TensorRT plans only run on the TensorRT release and GPU architecture they were
built for (the manifest's ``engines`` section, repeated in the README): the Triton container
must carry that TensorRT. This machine has no GPU and PyTriton's server no GPU backends, so the
repository is validated here by structure (tests/serving/test_model_repository.py) and by running
``model.py`` over ONNX Runtime stand-ins, not served.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdk import Bundle
from sdk.bundle import GraphSpec, iter_stage_graphs, sha256_file
from sdk.errors import BundleError, InputError, SdkError
from sdk.manifest import EngineSpec

from .environment import missing_serve_extra

log = logging.getLogger(__name__)

FORMATS = ("auto", "tensorrt", "onnx")
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
BLS_SOURCE = Path(__file__).with_name("bls_model.py")


@dataclass
class RepositoryOptions:
    bundle: Path
    out: Path
    model_name: str = "translator"
    format: str = "auto"
    kind: str = "gpu"
    instances: int = 1  # per engine model
    bls_instances: int = 2  # Python models: one execution at a time each
    max_batch: int | None = None
    max_queue_delay_us: int = 2000
    link: bool = False  # hard-link large files instead of copying (same file system)
    force: bool = False


def write_repository(options: RepositoryOptions) -> Path:
    """Write the repository; returns its path. Raises :class:`sdk.SdkError` subclasses."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    o = options
    if o.format not in FORMATS or o.kind not in KINDS:
        raise InputError(
            f"format must be one of {FORMATS} and kind one of {sorted(KINDS)}; got {o.format!r}, {o.kind!r}"
        )
    bundle = Bundle(o.bundle)
    m = bundle.manifest
    engines = m.engines
    fmt = ("tensorrt" if engines else "onnx") if o.format == "auto" else o.format
    graphs = list(iter_stage_graphs(m)) + [m.graphs["generator"]]
    if fmt == "tensorrt":
        missing = [g.key for g in graphs if g.key not in engines]
        if missing:
            raise BundleError(
                f"{o.bundle} has no TensorRT engine for {missing}; build them on a GPU machine "
                f"(python export/build_engines.py ...) or write --format onnx"
            )
    if fmt == "tensorrt" and o.kind == "cpu":  # Triton refuses to load a tensorrt_plan model with KIND_CPU
        raise InputError(
            f"TensorRT engines run only on GPU instances; use --kind gpu, or --format onnx with "
            f"--kind cpu to serve {o.bundle} on the CPU"
        )
    max_batch = _max_batch(m, engines if fmt == "tensorrt" else {}, o.max_batch)
    if o.out.exists():
        if not o.force:
            raise InputError(f"{o.out} exists; pass --force to replace it")
        shutil.rmtree(o.out)
    names = {g.key: f"{o.model_name}_{g.key}" for g in graphs}
    for g in graphs:
        folder = o.out / names[g.key] / "1"
        folder.mkdir(parents=True)
        if fmt == "tensorrt":
            plan = bundle.file(engines[g.key].file)
            if sha256_file(plan) != engines[g.key].sha256:
                raise BundleError(f"engine file {plan} does not match its SHA-256 in the manifest; rebuild the bundle")
            _place(plan, folder / "model.plan", o.link)
        else:
            _place(bundle.graph_path(g.key), folder / "model.onnx", o.link)
        _write_config(text_format, _engine_config(mc, names[g.key], g, fmt, max_batch, o), o.out / names[g.key])
    entry = o.out / o.model_name / "1"
    entry.mkdir(parents=True)
    shutil.copyfile(BLS_SOURCE, entry / "model.py")
    shutil.copyfile(bundle.file(m.constants_file), entry / "constants.npz")
    (entry / "loop.json").write_text(json.dumps(_loop_description(m, names), indent=2), encoding="utf-8")
    _write_config(text_format, _bls_config(mc, m, max_batch, o), o.out / o.model_name)
    (o.out / "README.md").write_text(
        _readme(m, engines if fmt == "tensorrt" else {}, names, o, max_batch, fmt), encoding="utf-8"
    )
    log.info("wrote %s: %s (%s), %d engine model(s), max batch %d", o.out, o.model_name, fmt, len(graphs), max_batch)
    return o.out


def _max_batch(m, engines: Mapping[str, EngineSpec], wanted: int | None) -> int:
    """Triton's max_batch_size: within the bundle's batch range and every engine's profile."""
    limit = min([m.batch_max] + [m.batch_max if e.batch_max is None else e.batch_max for e in engines.values()])
    value = limit if wanted is None else wanted
    if not max(1, m.batch_min) <= value <= limit:
        raise InputError(
            f"--max-batch {value} is outside what the bundle's graphs and engines accept ({m.batch_min}..{limit})"
        )
    return value


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not permitted: copy instead
            log.debug("cannot hard-link %s; copying", src)
    shutil.copyfile(src, dst)


def _io(message, spec):
    """A ModelInput/ModelOutput from a manifest tensor: dims without the batch dimension."""
    return message(name=spec.name, data_type=_DTYPES[spec.dtype], dims=list(spec.shape[1:]))


def _engine_config(mc, name: str, g: GraphSpec, fmt: str, max_batch: int, o: RepositoryOptions):
    platform, filename = ("tensorrt_plan", "model.plan") if fmt == "tensorrt" else ("onnxruntime_onnx", "model.onnx")
    return mc.ModelConfig(
        name=name,
        platform=platform,
        default_model_filename=filename,
        max_batch_size=max_batch,
        input=[_io(mc.ModelInput, spec) for spec in g.inputs],
        output=[_io(mc.ModelOutput, g.output)],
        instance_group=[mc.ModelInstanceGroup(kind=KINDS[o.kind], count=o.instances)],
    )


def _bls_config(mc, m, max_batch: int, o: RepositoryOptions):
    r = m.output_size
    return mc.ModelConfig(
        name=o.model_name,
        backend="python",
        max_batch_size=max_batch,
        input=[
            mc.ModelInput(name="condition", data_type="TYPE_FP32", dims=[m.input_channels, m.input_size, m.input_size]),
            mc.ModelInput(name="iterations", data_type="TYPE_INT32", dims=[1], optional=True),
        ],
        output=[
            mc.ModelOutput(name="output", data_type="TYPE_UINT8", dims=[r, r, 3]),
            mc.ModelOutput(name="output_raw", data_type="TYPE_FP32", dims=[3, r, r]),
            mc.ModelOutput(name="latents", data_type="TYPE_FP32", dims=[m.latent_count, m.latent_dim]),
        ],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=o.max_queue_delay_us),
        instance_group=[mc.ModelInstanceGroup(kind="KIND_CPU", count=o.bls_instances)],
    )


def _loop_description(m, names: dict) -> dict:
    """The manifest's schedule in terms of Triton models and tensor names (read by model.py)."""
    stages = []
    for st in m.schedule.stages:
        g = m.graphs[st.graph]
        stages.append({"model": names[g.key], "inputs": {t.role: t.name for t in g.inputs}, "output": g.output.name})
    gen = m.graphs["generator"]
    return {
        "bundle": m.name,
        "family": m.family,
        "task": m.task,
        "schedule": {
            "stages": stages,
            "repeat_last": m.schedule.repeat_last,
            "default_iterations": m.schedule.default_iterations,
            "max_iterations": m.schedule.max_iterations or 1000,
        },
        "generator": {"model": names["generator"], "input": gen.input("latents").name, "output": gen.output.name},
        "batch": {"min": m.batch_min, "max": m.batch_max},
    }


def _write_config(text_format, config, folder: Path) -> None:
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")


def _readme(m, engines: Mapping[str, EngineSpec], names: dict, o: RepositoryOptions, max_batch: int, fmt: str) -> str:
    built = sorted({(e.tensorrt, e.compute_capability, e.gpu) for e in engines.values()})
    needs = (
        "\n".join(
            f"* TensorRT {trt}, compute capability {cc} ({gpu}): use the tritonserver container whose "
            f"TensorRT is {trt}, on GPUs of that architecture"
            for trt, cc, gpu in built
        )
        if engines
        else "* ONNX Runtime (Triton's onnxruntime backend); no TensorRT plans in this bundle"
    )
    return f"""# Triton model repository: {m.name} ({m.family}, {m.task})

Written by `python -m serving.model_repository --bundle {o.bundle}`. Entry model: `{o.model_name}`
(Python backend, BLS), which runs the refinement loop over {", ".join(f"`{n}`" for n in names.values())}
({fmt}). Max batch {max_batch}; default iterations {m.schedule.default_iterations}.

What the engine models need:

{needs}

Serve (NVIDIA's container; the Python backend needs numpy, which it ships):

```bash
docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD:/models \\
    nvcr.io/nvidia/tritonserver:<YY.MM>-py3 tritonserver --model-repository=/models
```

Call it with `serving.client.TranslationClient(url, model="{o.model_name}").infer(x)`, where `x` is
the pre-processed input [B, {m.input_channels}, {m.input_size}, {m.input_size}] float32
(`Translator.preprocess`, or `sdk.tasks.preprocess(image, Bundle(path).manifest)` without
opening sessions); the optional `iterations` input sets the loop length per row.
"""


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serving.model_repository",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", type=Path, default=Path("engines/demo"), help="bundle folder (default: engines/demo)")
    p.add_argument("--out", type=Path, required=True, help="repository folder to write")
    p.add_argument("--model-name", default="translator", help="entry model name; engine models get it as prefix")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="tensorrt: the bundle's plans; onnx: its ONNX graphs; auto: plans where built (default)",
    )
    p.add_argument("--kind", choices=sorted(KINDS), default="gpu", help="instance kind of the engine models")
    p.add_argument("--instances", type=int, default=1, help="instances per engine model (default: 1)")
    p.add_argument("--bls-instances", type=int, default=2, help="instances of the loop model (default: 2)")
    p.add_argument("--max-batch", type=int, help="max_batch_size (default: the bundle's and engines' limit)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="the loop model's dynamic batcher delay")
    p.add_argument("--link", action="store_true", help="hard-link the graphs and plans instead of copying them")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = missing_serve_extra("tritonclient.grpc")  # Triton's config messages
    if missing:
        log.error("%s", missing)
        return 2
    options = RepositoryOptions(
        bundle=a.bundle,
        out=a.out,
        model_name=a.model_name,
        format=a.format,
        kind=a.kind,
        instances=a.instances,
        bls_instances=a.bls_instances,
        max_batch=a.max_batch,
        max_queue_delay_us=a.max_queue_delay_us,
        link=a.link,
        force=a.force,
    )
    try:
        write_repository(options)
    except SdkError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
