#!/usr/bin/env python
"""The benchmark harness: every back end against the public PyTorch loop and the machine's limits.

    python benchmarks/run.py                              # demo, reference 256 px and 1024 px (about 1.5 h)
    python benchmarks/run.py --models reference-256 --rounds 3
    python benchmarks/run.py --checkpoint restyle.pt      # any checkpoint (its bundle is built and cached)
    python benchmarks/run.py --quick --models demo        # a smoke run, minutes
    python benchmarks/run.py --from-json benchmarks/results/performance/results.json --write-docs

Per model (the demo; reference-scale checkpoints at 256 and 1024 px, synthesised in the public
ReStyle-FPN layout): cold start and peak memory per back end in fresh processes; parity of
every back end with the public loop; latency per frame (median, p95, min) at batch 1 and N
iterations with all back ends interleaved A B C A B C ...; latency against N = 1..5;
throughput at batch 1/2/4/8; the split into encoder step, generator, the rest, pre- and
post-processing; FLOPs and bytes per frame from the ONNX graphs; the matmul peak and the
FMA-bound ceiling measured before and after; a roofline estimate for four GPUs. With the demo,
PSNR against compute for early exit and warm start (samples/measure_modes.py).

Back ends: pytorch_public (the public code path, fused modulated conv), pytorch_export (our
export modules in PyTorch), onnxruntime (sdk.Translator on the CPU), and where a GPU is present
onnxruntime-cuda, tensorrt, tensorrt-cudagraphs.

Writes RESULTS/results.json, RESULTS/performance.md and PNG plots (default RESULTS =
benchmarks/results/performance); --write-docs also writes docs/performance.md (and .json), its plots
under docs/img/ and the README's performance section (between its performance markers). See benchmarks/README.md for how to read the numbers on a shared host.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdk.extras import exit_for_missing_extra  # noqa: E402

log = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]
MODELS = ("demo", "reference-256", "reference-1024")
DOCS = REPO / "docs" / "performance.md"
README = REPO / "README.md"


def _ints(text: str) -> tuple:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_args(argv=None) -> argparse.Namespace:
    try:  # the back ends' names come with the harness, which needs torch
        from benchmarks.harness.backends import CPU_BACKENDS, GPU_BACKENDS
    except ModuleNotFoundError as e:
        exit_for_missing_extra(e, "export,bench", __name__)

    every = CPU_BACKENDS + GPU_BACKENDS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", type=_names, default=MODELS, help=f"comma-separated, of {', '.join(MODELS)} (default: all three)"
    )
    p.add_argument("--checkpoint", type=Path, help="benchmark this checkpoint instead of --models")
    p.add_argument(
        "--backends",
        type=_names,
        default=every,
        help=f"comma-separated (default: {','.join(every)}; "
        "GPU ones are skipped with the reason where they cannot run)",
    )
    p.add_argument(
        "--sweep-backends",
        type=_names,
        default=("pytorch_public", "onnxruntime") + GPU_BACKENDS,
        help="back ends of the N and batch sweeps (default: pytorch_public, onnxruntime and the GPU ones)",
    )
    p.add_argument("--iterations", "-n", type=int, default=5, help="N of the headline latency (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the headline latency (default 5)")
    p.add_argument("--sweep-rounds", type=int, default=3, help="rounds of the N and batch sweeps (default 3)")
    p.add_argument("--batches", type=_ints, default=(1, 2, 4, 8), help="batch sizes (default 1,2,4,8)")
    p.add_argument("--batch-iterations", type=int, default=1, help="N of the batch sweep (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help=f"torch and ONNX Runtime intra-op threads (default os.cpu_count() = {os.cpu_count()})",
    )
    p.add_argument(
        "--quality",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PSNR against compute for early exit and warm start (default: on when the demo runs)",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round, N = 1,2, batches 1,2, no quality")
    p.add_argument(
        "--results",
        type=Path,
        default=REPO / "benchmarks" / "results" / "performance",
        help="output folder (default benchmarks/results/performance)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=REPO / "benchmarks" / "results" / "cache",
        help="reference checkpoints, bundles, graph costs (default benchmarks/results/cache)",
    )
    p.add_argument(
        "--from-json", type=Path, help="no measuring: render the report (and plots, docs) of this results.json"
    )
    p.add_argument(
        "--write-docs",
        action="store_true",
        help=f"also write {DOCS.relative_to(REPO)}, its plots and the README's performance section",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="measure the CPU peers instead (benchmarks/harness/peers.py: OpenVINO default and FP32, ONNX Runtime "
        "portable, torch.compile FP32/bf16, eager, our back ends); writes RESULTS/peers.json and peers.md, "
        "with --write-docs the figures section of docs/cpu_backends.md",
    )
    p.add_argument("--peer-backends", type=_names, default=None, help="comma-separated peers (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown and args.checkpoint is None:
        p.error(f"unknown model(s) {unknown}; expected {MODELS}")
    if set(args.backends) - set(every) or "pytorch_public" not in args.backends:
        p.error(f"--backends must come from {every} and include pytorch_public (every speed-up is against it)")
    if min(args.iterations, args.rounds, args.sweep_rounds, args.batch_iterations, args.threads, *args.batches) < 1:
        p.error("--iterations, --rounds, --sweep-rounds, --batch-iterations, --threads and --batches must be >= 1")
    return args


def settings_from(args):
    from benchmarks.harness.suite import Settings

    s = Settings(
        threads=args.threads,
        iterations=args.iterations,
        rounds=args.rounds,
        sweep_rounds=args.sweep_rounds,
        sweep_backends=args.sweep_backends,
        batches=args.batches,
        batch_iterations=args.batch_iterations,
        backends=args.backends,
        progress=not args.quiet,
        cache=args.cache,
    )
    if args.quick:
        s.rounds, s.sweep_rounds, s.sweep_iterations, s.batches = 1, 1, (1, 2), (1, 2)
        s.warmup, s.probe_frames, s.ceiling_repeats, s.iterations = 0, 1, 2, min(args.iterations, 2)
    return s


def machine(load_start: list) -> dict:
    import numpy
    import onnxruntime
    import torch

    from benchmarks.harness.measure import cpu_model, load_average

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
    }


def measure(args, argv) -> dict:
    import torch

    from benchmarks.harness.measure import load_average
    from benchmarks.harness.suite import Model, demo_model, reference_model, run_model

    load_start = load_average()
    settings = settings_from(args)
    torch.set_num_threads(settings.threads)
    if args.checkpoint is not None:
        models = [
            Model(
                args.checkpoint.stem,
                args.checkpoint,
                settings.cache / f"bundle_{args.checkpoint.stem}",
                f"{args.checkpoint.name}",
            )
        ]
    else:
        models = [
            demo_model(settings.cache) if m == "demo" else reference_model(int(m.split("-")[1]), settings.cache)
            for m in args.models
        ]
    run = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()},
        "models": {},
    }
    t0 = datetime.datetime.now()
    run["machine"] = machine(load_start)
    for model in models:
        log.info("=== %s", model.label)
        run["models"][model.name] = run_model(model, settings)
        _save(run, args.results)  # a crash in the next model keeps this one's numbers
    want_quality = args.quality if args.quality is not None else ("demo" in run["models"] and not args.quick)
    if want_quality:
        run["quality"] = _quality(run, settings)
    run["wall_s"] = (datetime.datetime.now() - t0).total_seconds()
    run["machine"]["load_avg_end"] = load_average()
    return run


def _quality(run: dict, settings) -> dict | None:
    from benchmarks.harness.quality import QualityError, measure_modes

    demo = run["models"].get("demo")
    if demo is None:
        log.warning("--quality needs the demo model in --models; skipped")
        return None
    per_iteration = demo["flops"]["loop"][1]["dense_flops"]
    try:
        return measure_modes(
            Path(demo["bundle"]),
            settings.cache.parent / "video_modes",
            per_iteration,
            demo["label"],
            threads=settings.threads,
        )
    except QualityError as e:
        log.error("%s", e)
        return None


def _save(run: dict, folder: Path, name: str = "results.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    return path


def publish(run: dict, args) -> None:
    from benchmarks.harness.plots import write_plots
    from benchmarks.harness.report import readme_section, render, replace_readme_section

    plots = write_plots(run, args.results)
    run["plots"] = {k: v.name for k, v in plots.items()}
    text = render(run)
    (args.results / "performance.md").write_text(text, encoding="utf-8")
    print(text)
    if args.write_docs:
        img = DOCS.parent / "img"
        img.mkdir(parents=True, exist_ok=True)
        for path in plots.values():
            shutil.copyfile(path, img / f"perf_{path.name}")
        run_docs = dict(run, plots={k: f"img/perf_{v.name}" for k, v in plots.items()})
        DOCS.write_text(render(run_docs), encoding="utf-8")
        _save(run, DOCS.parent, DOCS.with_suffix(".json").name)  # the numbers behind the committed text
        README.write_text(
            replace_readme_section(README.read_text(encoding="utf-8"), readme_section(run)), encoding="utf-8"
        )
        log.info("wrote %s, %d plot(s) in %s and the performance section of %s", DOCS, len(plots), img, README)
    log.info("wrote %s", args.results)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):  # the exporter's per-initializer lines
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from benchmarks.harness.suite import SuiteError
    from export.checkpoints.types import CheckpointError
    from sdk import SdkError

    try:
        if args.peers:
            from benchmarks.harness.peers_run import main_peers

            return main_peers(args, argv)
        if args.from_json is not None:
            run = json.loads(args.from_json.read_text(encoding="utf-8"))
        else:
            run = measure(args, argv)
            _save(run, args.results)
        publish(run, args)
    except (SuiteError, CheckpointError, SdkError, OSError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
