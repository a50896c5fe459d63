"""One model's full benchmark: every back end side by side, in one process, interleaved.

What :func:`run_model` measures, in this order (the ceilings bracket the timed back ends):

1. cold start and peak memory, each back end in a fresh process (:mod:`.probe`), opening with
   the files in the page cache and out of it;
2. parity: every back end's image after N iterations against the public PyTorch loop;
3. the ceilings (matmul peak, FMA loop), before;
4. latency per frame at batch 1 and N iterations, all back ends interleaved;
5. latency against N = 1..5 and throughput against the batch size (the sweep back ends);
6. the per-stage split (encoder step, generator, the rest; pre- and post-processing);
7. the ceilings, after.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.harness import ceilings as ceil
from benchmarks.harness.backends import CPU_BACKENDS, GPU_BACKENDS, BackendUnavailable, make_backend, stage_split
from benchmarks.harness.flops import GraphCost, graph_cost, loop_cost
from benchmarks.harness.measure import Stats, interleave, load_average, ratios
from benchmarks.harness.models import write_reference_checkpoint
from benchmarks.harness.roofline import estimate_loop
from export.checkpoints.registry import load_checkpoint
from export.checkpoints.types import LoadedCheckpoint
from export.fast_forms.optimize import REWRITES_VERSION
from sdk import Bundle

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PARITY_BOUND = 1e-3
REFERENCE = "pytorch_public"  # the denominator of every speed-up: what users run today


class SuiteError(RuntimeError):
    """A benchmark cannot run as asked (back ends disagree, a probe failed, ...)."""


@dataclass
class Settings:
    """How much to measure; the defaults are the documented run (see benchmarks/README.md)."""

    threads: int = 2
    iterations: int = 5  # N of the headline latency
    rounds: int = 5  # interleaved rounds of the headline latency
    warmup: int = 1
    sweep_rounds: int = 3  # rounds of the N and batch sweeps
    sweep_backends: tuple = ("pytorch_public", "onnxruntime") + GPU_BACKENDS
    sweep_iterations: tuple = (1, 2, 3, 4, 5)
    batches: tuple = (1, 2, 4, 8)
    batch_iterations: int = 1  # N of the batch sweep (a frame of N iterations costs N times one)
    split_runs: int = 1
    probe_frames: int = 2
    ceiling_repeats: int = 7
    backends: tuple = CPU_BACKENDS + GPU_BACKENDS
    progress: bool = True
    cache: Path = field(default_factory=lambda: REPO / "benchmarks" / "results" / "cache")


@dataclass
class Model:
    name: str
    checkpoint: Path
    bundle: Path
    label: str


def reference_model(size: int, cache: Path) -> Model:
    ckpt = cache / f"reference_{size}.pt"
    if not ckpt.exists():
        log.info("writing the %d px reference-scale checkpoint to %s", size, ckpt)
        write_reference_checkpoint(size, ckpt)
    return Model(
        f"reference-{size}",
        ckpt,
        cache / f"bundle_reference_{size}",
        f"reference scale, {size} px: IR-SE-50 FPN encoder (6 ch), StyleGAN2 {size} px",
    )


def demo_model(cache: Path) -> Model:
    from export.demo import DEMO_CHECKPOINT

    return Model("demo", DEMO_CHECKPOINT, cache / "bundle_demo", "the demo model (export/demo/demo_ome_sr.pt)")


def ensure_bundle(model: Model, ckpt: LoadedCheckpoint, progress: bool) -> Path:
    """``model.bundle`` built from this very checkpoint with this code's rewrites (rebuilt otherwise)."""
    from export.builder.bundle import build_bundle

    if (model.bundle / "manifest.json").exists():
        bundle = Bundle(model.bundle, verify=False)
        build = bundle.manifest.info("build")
        if build.get("source", {}).get("sha256") == ckpt.sha256 and build.get("rewrites_version") == REWRITES_VERSION:
            if bundle.add_piece_digests():  # what a build writes today, so opening is measured as users see it
                log.info("%s: recorded the digests of its files' pieces", model.bundle)
            return model.bundle
        log.info("%s was built from another checkpoint or an older exporter: rebuilding", model.bundle)
    log.info("building %s from %s (export and parity check)", model.bundle, model.checkpoint)
    build_bundle(ckpt, model.bundle, task=ckpt.suggested_task, progress=progress)
    return model.bundle


def graph_costs(bundle: Path, cache: Path) -> dict[str, GraphCost]:
    """Cost of each graph the loop runs, cached by the graph's SHA-256 (reading a 1 GB graph takes seconds)."""
    manifest = Bundle(bundle, verify=False).manifest
    keys = [st.graph for st in manifest.schedule.stages] + ["generator"]
    out = {}
    for key in dict.fromkeys(keys):
        spec = manifest.graphs[key]
        file = cache / f"cost_{spec.sha256[:16]}.json"
        if file.exists():
            out[key] = GraphCost.from_dict(json.loads(file.read_text()))
            continue
        cost = graph_cost(bundle / spec.file)
        cache.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(cost.as_dict(with_nodes=True)))
        out[key] = cost
    return out


def run_probe(
    backend: str, source: Path, settings: Settings, page_cache: str = "warm", frames: int | None = None
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.harness.probe",
        backend,
        str(source),
        "--iterations",
        str(settings.iterations),
        "--frames",
        str(settings.probe_frames if frames is None else frames),
        "--threads",
        str(settings.threads),
        "--page-cache",
        page_cache,
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SuiteError(f"probe {backend} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def probe_both_caches(backend: str, source: Path, settings: Settings) -> dict:
    """The warm probe (opening, memory, frames) with the cold probe's opening beside it: the
    source's files in the page cache, then dropped from it (:mod:`.probe`). Cold first, so the
    warm probe's reading puts them back."""
    cold = run_probe(backend, source, settings, page_cache="cold", frames=1)
    warm = run_probe(backend, source, settings, page_cache="warm")
    return dict(
        warm, open_cold_s=cold["open_s"], first_frame_cold_s=cold["first_frame_s"], page_cache_cold=cold["page_cache"]
    )


def _parity(loops: dict, x: np.ndarray, n: int) -> dict:
    """Relative max difference of every back end's image from the public loop's, after one
    iteration (must be within PARITY_BOUND: the same computation) and after ``n`` (reported: with
    random weights the reference-scale loops drift to large values and amplify float rounding
    several times per iteration)."""
    report = {}
    for steps in dict.fromkeys((1, n)):
        images = {k: loop.run(x, steps) for k, loop in loops.items()}
        ref = images[REFERENCE]
        scale = float(np.abs(ref).max())
        report[f"after_{steps}"] = {k: float(np.abs(v - ref).max()) / scale for k, v in images.items()}
    bad = {k: v for k, v in report["after_1"].items() if not v <= PARITY_BOUND}
    if bad:
        raise SuiteError(
            f"back ends disagree with {REFERENCE} beyond {PARITY_BOUND} after one iteration: {bad}; "
            f"not timing different computations"
        )
    return report


def _input(ckpt: LoadedCheckpoint, batch: int, seed: int = 0) -> np.ndarray:
    lo, hi = (0.0, 1.0) if ckpt.suggested_task in ("sketch", "segmentation") else (-1.0, 1.0)
    shape = (batch, ckpt.condition_channels, ckpt.input_size, ckpt.input_size)
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _pre_post(loop, ckpt: LoadedCheckpoint, repeats: int = 5) -> dict:
    """Seconds per frame of the task's pre-processing (a 1024x1024 RGB frame in) and of the
    conversion of the raw output to a uint8 image, as ``Translator.__call__`` does them."""
    from sdk.imaging import to_uint8_image

    t = loop.translator
    frame = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    image = t.infer(t.preprocess(frame)[None], iterations=1).images[0]
    pre = [time.perf_counter()]
    for _ in range(repeats):
        t.preprocess(frame)
        pre.append(time.perf_counter())
    post = [time.perf_counter()]
    for _ in range(repeats):
        to_uint8_image(image)
        post.append(time.perf_counter())
    return {"pre": float(np.median(np.diff(pre))), "post": float(np.median(np.diff(post)))}


def _efficiency(stats: dict, loop_flops: float, peak: float, fma: float) -> dict:
    out = {}
    for k, s in stats.items():
        gflops = loop_flops / s["median_s"] / 1e9
        best = loop_flops / s["min_s"] / 1e9
        out[k] = {
            "gflops": gflops,
            "of_matmul_peak": gflops / peak,
            "of_fma_ceiling": gflops / fma,
            "best_gflops": best,
        }
    return out


def _ceiling_summary(before: dict, after: dict) -> dict:
    both = {}
    for name in before:
        meds = [c[name].get("median_gflops") for c in (before, after) if "median_gflops" in c.get(name, {})]
        maxs = [c[name].get("max_gflops") for c in (before, after) if "max_gflops" in c.get(name, {})]
        both[name] = {"median_gflops": float(np.median(meds)) if meds else None, "max_gflops": max(maxs, default=None)}
    return both


def run_model(model: Model, settings: Settings) -> dict:
    s, t_start = settings, time.time()
    result: dict = {"model": model.name, "label": model.label, "load_avg_start": load_average()}
    ckpt = load_checkpoint(model.checkpoint)
    bundle = ensure_bundle(model, ckpt, s.progress)
    manifest = Bundle(bundle, verify=False).manifest
    stage_graphs = [st.graph for st in manifest.schedule.stages]
    costs = graph_costs(bundle, s.cache)
    document = manifest.document()  # the build details the runtime does not read
    executed = executed_fraction(document)
    result.update(
        {
            "checkpoint": {"file": model.checkpoint.name, "sha256": ckpt.sha256, "format": ckpt.format},
            "bundle": str(bundle),
            "resolution": manifest.output_size,
            "latents": manifest.latent_count,
            "input": [ckpt.condition_channels, ckpt.input_size, ckpt.input_size],
            "iterations": s.iterations,
            "batch_iterations": s.batch_iterations,
            "rewrites": {k: g.get("rewrites", []) for k, g in document["graphs"].items()},
            "flops": {
                "graphs": {k: c.as_dict() for k, c in costs.items()},
                "loop": {n: loop_cost(costs, stage_graphs, n) for n in range(1, 6)},
            },
            "roofline": estimate_loop(costs, stage_graphs),
            "executed_fraction": executed,
            "cpu_rewrites": {
                k: (g.get("onnxruntime_cpu") or {}).get("rewrites", []) for k, g in document["graphs"].items()
            },
        }
    )
    log.info("%s: cold start and memory, one fresh process per back end", model.name)
    result["probes"] = {
        "onnxruntime": probe_both_caches("onnxruntime", bundle, s),
        REFERENCE: probe_both_caches(REFERENCE, model.checkpoint, s),
    }
    loops, skipped = {}, {}
    for name in s.backends:
        try:
            loops[name] = make_backend(name, ckpt, bundle, s.threads)
        except BackendUnavailable as e:
            skipped[name] = str(e)
            log.info("skipping %s", e)
    result["skipped"] = skipped
    try:
        result.update(_timings(loops, ckpt, s, stage_graphs, costs, executed))
    finally:
        for loop in loops.values():
            loop.close()
    result["load_avg_end"] = load_average()
    result["wall_s"] = time.time() - t_start
    return result


def _timings(loops: dict, ckpt: LoadedCheckpoint, s: Settings, stage_graphs: list, costs: dict, executed: dict) -> dict:
    n, x = s.iterations, _input(ckpt, 1)
    out: dict = {"parity": _parity(loops, x, n)}
    log.info("ceilings (before)")
    before = ceil.measure_ceilings(s.threads, s.cache, s.ceiling_repeats)
    log.info("latency: %d back ends, N=%d, batch 1, %d interleaved rounds", len(loops), n, s.rounds)
    samples = interleave(
        {k: (lambda loop=loop: loop.run(x, n)) for k, loop in loops.items()},
        s.rounds,
        s.warmup,
        desc="latency",
        progress=s.progress,
    )
    out["latency"] = {k: Stats.of(v).as_dict() for k, v in samples.items()}
    out["speedup"] = ratios(samples, REFERENCE)

    sweep = {k: loop for k, loop in loops.items() if k in s.sweep_backends}
    log.info("N sweep %s: %s", s.sweep_iterations, ", ".join(sweep))
    cands = {
        f"{k}|{m}": (lambda loop=loop, m=m: loop.run(x, m)) for k, loop in sweep.items() for m in s.sweep_iterations
    }
    raw = interleave(cands, s.sweep_rounds, 0, desc="N sweep", progress=s.progress)
    out["by_iterations"] = {k: {m: Stats.of(raw[f"{k}|{m}"]).as_dict() for m in s.sweep_iterations} for k in sweep}

    log.info("batch sweep %s at N=%d", s.batches, s.batch_iterations)
    inputs = {b: _input(ckpt, b) for b in s.batches}
    cands = {
        f"{k}|{b}": (lambda loop=loop, b=b: loop.run(inputs[b], s.batch_iterations))
        for k, loop in sweep.items()
        for b in s.batches
    }
    raw = interleave(cands, s.sweep_rounds, 1, desc="batch sweep", progress=s.progress)
    out["by_batch"] = {
        k: {
            b: {**Stats.of(raw[f"{k}|{b}"], per=b).as_dict(), "fps": b / float(np.median(raw[f"{k}|{b}"]))}
            for b in s.batches
        }
        for k in sweep
    }

    out["stages"] = {}
    for k, loop in loops.items():
        split = stage_split(lambda loop=loop: loop.run(x, n), loop.stage_targets(), s.split_runs, 1)
        if hasattr(loop, "translator"):
            split.update(_pre_post(loop, ckpt))
        out["stages"][k] = split
    log.info("ceilings (after)")
    after = ceil.measure_ceilings(s.threads, s.cache, s.ceiling_repeats)
    summary = _ceiling_summary(before, after)
    peak = max(v["median_gflops"] for k, v in summary.items() if k.startswith("matmul") and v["median_gflops"])
    fma = (summary.get("fma_loop") or {}).get("median_gflops") or float("nan")
    out["ceilings"] = {
        "before": before,
        "after": after,
        "summary": summary,
        "matmul_peak_gflops": peak,
        "fma_gflops": fma,
    }
    loop_flops = loop_cost(costs, stage_graphs, n)["dense_flops"]
    out["efficiency"] = _efficiency(out["latency"], loop_flops, peak, fma)
    if "onnxruntime" in out["efficiency"] and executed:  # what the CPU graphs really multiply-add
        scaled = {k: GraphCost(dense_flops=c.dense_flops * executed.get(k, 1.0)) for k, c in costs.items()}
        ort_flops = loop_cost(scaled, stage_graphs, n)["dense_flops"]
        gflops = ort_flops / out["latency"]["onnxruntime"]["median_s"] / 1e9
        out["efficiency"]["onnxruntime"].update(
            executed_gflop_per_frame=ort_flops / 1e9, executed_gflops=gflops, executed_of_matmul_peak=gflops / peak
        )
    return out


def executed_fraction(manifest: dict) -> dict[str, float]:
    """Per graph, the dense FLOPs the CPU-optimised graph executes over the model's (below 1 where
    Winograd convolutions replace direct ones), as the build counted them; {} without CPU graphs."""
    out = {}
    for key, g in manifest["graphs"].items():
        flops = (g.get("onnxruntime_cpu") or {}).get("dense_flops") or {}
        if flops.get("model"):
            out[key] = flops["executed"] / flops["model"]
    return out
