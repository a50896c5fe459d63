"""Measuring the peers of :mod:`benchmarks.harness.peers` and rendering their table.

Per model and batch: one warm-up call per back end (the torch peers' compile time is that
call's), the per-step PSNR against the FP32 loop, then ``rounds`` interleaved rounds of every
back end (:func:`benchmarks.harness.measure.interleave`). The matmul peaks bracket the rounds.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.harness.backends import BackendUnavailable
from benchmarks.harness.measure import interleave, load_average
from benchmarks.harness.peers import OURS, PEERS, cpu_info, make_peer, matmul_peaks
from sdk import Bundle
from sdk.precision_gate import psnr

log = logging.getLogger(__name__)

REFERENCE_STEPS = ("onnxruntime_portable", "sdk_onnxruntime")  # FP32 loops over the same graphs


@dataclass
class PeerSettings:
    threads: int = 2
    iterations: int = 5
    rounds: int = 5
    batches: tuple = (1,)
    peers: tuple = PEERS
    progress: bool = True
    matmul_n: int = 2048


def _input(ckpt, batch: int, seed: int = 0) -> np.ndarray:
    lo, hi = (0.0, 1.0) if ckpt.suggested_task in ("sketch", "segmentation") else (-1.0, 1.0)
    shape = (batch, ckpt.condition_channels, ckpt.input_size, ckpt.input_size)
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _accuracy(loops: dict, x: np.ndarray, n: int) -> dict:
    """Image PSNR per step against the FP32 graph loop (torch peers: last step against eager)."""
    ref_name = next((r for r in REFERENCE_STEPS if r in loops), None)
    ref = loops[ref_name].steps(x, n) if ref_name else None
    eager = loops["pytorch_eager"].run(x, n) if "pytorch_eager" in loops else None
    out = {}
    for name, loop in loops.items():
        if hasattr(loop, "steps") and ref is not None:
            out[name] = {
                "against": ref_name,
                "psnr_per_step": [round(psnr(r, s), 2) for r, s in zip(ref, loop.steps(x, n))],
            }
        elif name == "pytorch_eager" and ref is not None:
            out[name] = {"against": ref_name, "psnr_last_step": round(psnr(ref[-1], eager), 2)}
        elif eager is not None:
            out[name] = {"against": "pytorch_eager", "psnr_last_step": round(psnr(eager, loop.run(x, n)), 2)}
    return out


def _rates(samples: dict, batch: int, flops: float, peaks: dict) -> dict:
    rows = {}
    for name, secs in samples.items():
        per_frame = float(np.median(secs)) / batch
        rows[name] = {
            "median_s": per_frame,
            "min_s": float(min(secs)) / batch,
            "rounds_s": [s / batch for s in secs],
            "fraction_fp32_peak": flops / per_frame / 1e9 / peaks["fp32"],
            "fraction_bf16_peak": flops / per_frame / 1e9 / peaks["bf16"],
        }
    eager = rows.get("pytorch_eager", {}).get("median_s")
    peers = {k: v["median_s"] for k, v in rows.items() if k not in OURS}
    best_peer = min(peers, key=peers.get) if peers else None
    ours = {k: v["median_s"] for k, v in rows.items() if k in OURS}
    best_ours = min(ours, key=ours.get) if ours else None
    for row in rows.values():
        row["speedup_vs_eager"] = eager / row["median_s"] if eager else None
        row["speedup_vs_best_peer"] = peers[best_peer] / row["median_s"] if best_peer else None
    return {"backends": rows, "best_peer": best_peer, "best_ours": best_ours}


def run_peers(model, settings: PeerSettings) -> dict:
    """Every peer on ``model`` (a :class:`benchmarks.harness.suite.Model`) at each batch size."""
    from benchmarks.harness.flops import loop_cost
    from benchmarks.harness.suite import ensure_bundle, graph_costs
    from export.checkpoints.registry import load_checkpoint

    ckpt = load_checkpoint(model.checkpoint)
    bundle = ensure_bundle(model, ckpt, settings.progress)
    costs = graph_costs(bundle, bundle.parent)
    stage_graphs = [st.graph for st in Bundle(bundle, verify=False).manifest.schedule.stages]
    flops = loop_cost(costs, stage_graphs, settings.iterations)["dense_flops"]
    cpu = cpu_info()
    loops, skipped, opened = {}, {}, {}
    for name in settings.peers:
        t0 = time.perf_counter()
        try:
            loops[name] = make_peer(name, ckpt, bundle, settings.threads, cpu["bf16_hardware"])
            opened[name] = time.perf_counter() - t0
        except BackendUnavailable as e:
            skipped[name] = str(e)
            log.warning("%s", e)
    result: dict = {"label": model.label, "bundle": str(bundle), "dense_flops_per_frame": flops, "skipped": skipped}
    result["peaks_before_gflops"] = matmul_peaks(settings.threads, settings.matmul_n)
    result["batches"] = {}
    try:
        for batch in settings.batches:
            x, n = _input(ckpt, batch), settings.iterations
            first = {}
            for name, loop in loops.items():  # the first call: torch.compile's compile, OpenVINO's compile per batch
                t0 = time.perf_counter()
                loop.run(x, n)
                first[name] = time.perf_counter() - t0
            accuracy = _accuracy(loops, x, n)
            calls = {name: (lambda loop=loop, x=x, n=n: loop.run(x, n)) for name, loop in loops.items()}
            samples = interleave(
                calls, settings.rounds, warmup=0, desc=f"{model.name} b{batch}", progress=settings.progress
            )
            result["batches"][str(batch)] = {"first_call_s": first, "accuracy": accuracy, "samples": samples}
        result["peaks_after_gflops"] = matmul_peaks(settings.threads, settings.matmul_n)
        peaks = {k: max(result["peaks_before_gflops"][k], result["peaks_after_gflops"][k]) for k in ("fp32", "bf16")}
        for batch, row in result["batches"].items():
            row.update(_rates(row.pop("samples"), int(batch), flops, peaks))
    finally:
        for loop in loops.values():
            loop.close()
    result["open_s"] = opened
    result["precision"] = {name: getattr(loop, "precision", "fp32") for name, loop in loops.items()}
    return result


def measure(models: list, settings: PeerSettings, command: str) -> dict:
    import onnxruntime
    import torch

    try:
        import openvino

        ov_version = openvino.__version__
    except ImportError:
        ov_version = None
    run = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {
            **cpu_info(),
            "cores": os.cpu_count(),
            "threads": settings.threads,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": ov_version,
            "load_avg_start": load_average(),
        },
        "settings": {"iterations": settings.iterations, "rounds": settings.rounds, "batches": list(settings.batches)},
        "models": {},
    }
    for model in models:
        log.info("=== peers: %s", model.label)
        run["models"][model.name] = run_peers(model, settings)
    run["machine"]["load_avg_end"] = load_average()
    return run


def render(run: dict) -> str:
    """The peers' table in Markdown (one per model and batch)."""
    m = run["machine"]
    lines = [
        f"Machine: {m['model']}, {m['cores']} cores, {m['threads']} threads; ISA: {', '.join(m['isa']) or 'none listed'}; "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, openvino {m['openvino']}. "
        f"N = {run['settings']['iterations']}, {run['settings']['rounds']} interleaved rounds, medians per frame. "
        f"Load average {m['load_avg_start'][0]:.1f} -> {m['load_avg_end'][0]:.1f}. Command: `{run['command']}`",
        "",
    ]

    # without BF16 instructions the BF16 matmul is emulated: a share of it would mislead
    def bf16_share(r: dict) -> str:
        return f"{100 * r['fraction_bf16_peak']:.1f}" if m["bf16_hardware"] else "n/a"

    for name, model in run["models"].items():
        pb, pa = model["peaks_before_gflops"], model.get("peaks_after_gflops", {})
        lines.append(
            f"**{name}** ({model['label']}): {model['dense_flops_per_frame'] / 1e9:.1f} dense GFLOP per frame; matmul peaks "
            f"FP32 {pb['fp32']:.0f} / {pa.get('fp32', float('nan')):.0f} GFLOP/s, BF16 {pb['bf16']:.0f} / "
            f"{pa.get('bf16', float('nan')):.0f} GFLOP/s (before / after)"
            f"{'' if m['bf16_hardware'] else ', BF16 emulated (no AVX512-BF16/AMX)'}."
        )
        for peer, why in model["skipped"].items():
            lines.append(f"- {peer} skipped: {why}")
        for batch, row in model["batches"].items():
            lines += [
                "",
                f"Batch {batch}: best peer {row['best_peer']}, our best {row['best_ours']}.",
                "",
                "| back end | precision | ms/frame (median) | min | × eager | × best peer | % FP32 peak | % BF16 peak | PSNR vs FP32 per step (dB) | first call s |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
            ]
            for peer, r in row["backends"].items():
                acc = row["accuracy"].get(peer, {})
                shown = (
                    ", ".join("inf" if p == float("inf") else f"{p:.1f}" for p in acc["psnr_per_step"])
                    if "psnr_per_step" in acc
                    else (f"last {acc['psnr_last_step']:.1f} (vs eager)" if "psnr_last_step" in acc else "")
                )
                lines.append(
                    f"| {peer} | {model['precision'].get(peer, '')} | {r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | "
                    f"{r['speedup_vs_eager'] or float('nan'):.2f} | {r['speedup_vs_best_peer'] or float('nan'):.2f} | "
                    f"{100 * r['fraction_fp32_peak']:.1f} | {bf16_share(r)} | {shown} | "
                    f"{row['first_call_s'][peer]:.2f} |"
                )
        lines.append("")
    return "\n".join(lines)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "cpu_backends.md"
DOCS_BEGIN, DOCS_END = "<!-- peers:begin (benchmarks/run.py --peers --write-docs) -->", "<!-- peers:end -->"


def replace_docs_section(text: str, section: str) -> str:
    """``text`` with the part between the peers markers replaced by ``section``."""
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ValueError(f"no peers markers ({DOCS_BEGIN} ... {DOCS_END}) in the document")
    head, rest = text.split(DOCS_BEGIN, 1)
    return f"{head}{DOCS_BEGIN}\n{section.strip()}\n{DOCS_END}{rest.split(DOCS_END, 1)[1]}"


def main_peers(args, argv) -> int:
    """``benchmarks/run.py --peers``: measure, write RESULTS/peers_<models>.json and .md (and the docs)."""
    import json
    import shlex
    import sys

    from benchmarks.harness.suite import demo_model, reference_model

    settings = PeerSettings(
        threads=args.threads,
        iterations=args.iterations,
        rounds=1 if args.quick else args.rounds,
        batches=tuple(args.batches),
        peers=tuple(args.peer_backends or PEERS),
        progress=not args.quiet,
        matmul_n=256 if args.quick else 2048,
    )
    unknown = sorted(set(settings.peers) - set(PEERS))
    if unknown:
        log.error("unknown peer(s) %s; expected some of %s", unknown, PEERS)
        return 2
    models = [
        demo_model(args.cache) if m == "demo" else reference_model(int(m.split("-")[1]), args.cache)
        for m in args.models
    ]
    command = "python benchmarks/run.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    run = measure(models, settings, command)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "peers_" + "_".join(args.models)
    (args.results / f"{stem}.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    text = render(run)
    (args.results / f"{stem}.md").write_text(text, encoding="utf-8")
    print(text)
    if args.write_docs:  # every peers run in RESULTS (one per model set: the batch sizes may differ)
        runs = [json.loads(f.read_text(encoding="utf-8")) for f in sorted(args.results.glob("peers_*.json"))]
        section = "\n\n".join(render(r) for r in runs)
        DOCS.write_text(replace_docs_section(DOCS.read_text(encoding="utf-8"), section), encoding="utf-8")
        log.info("wrote the peers section of %s", DOCS)
    return 0
