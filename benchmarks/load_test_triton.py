#!/usr/bin/env python
"""Load test of the Triton serving path (loopback only, bounded in requests and time).

    python benchmarks/load_test_triton.py                        # engines/demo, 96 requests per point, <= 170 s
    python benchmarks/load_test_triton.py --tiny                 # the toy bundle: the serving stack's own cost
    python benchmarks/load_test_triton.py --requests 64 --concurrency 4 8 16 --timeout 170 --instances 2

For dynamic batching on and then off, it starts ``serving.pytriton_server`` on 127.0.0.1 (free
ports), warms it up, and for each concurrency level runs ``--requests`` requests from that many
client threads (one ``tritonclient`` connection each; HTTP, or gRPC with ``--protocol grpc``).
Each request sends one HxWx3 uint8 frame from a small pool (the server pre-processes it) and
asks for the image and the latents; **every response is checked** against the local
``Translator``'s result for that frame (raw image and latents within ``--atol``), and lost,
failed or wrong answers are counted. Per point it reports throughput, client-side p50/p95
latency, and Triton's own Prometheus counters over the point (requests, executions, rows per
execution = the batch the model actually ran, queue and compute time per request).

Bounds: ``--requests`` per point and a global ``--timeout`` (seconds; points not reached are
marked skipped, a point cut short says so). Results: ``benchmarks/results/load_test_triton_<bundle>.json``
and ``.md``. Exit status 1 if any request was lost, failed or answered wrongly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from sdk import Translator  # noqa: E402
from sdk.extras import exit_for_missing_extra  # noqa: E402

try:
    from tqdm import tqdm
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "serve,export", __name__)
from serving.client import ServerError, TranslationClient, model_metrics  # noqa: E402
from serving.pytriton_server import ServeOptions, TranslationServer  # noqa: E402

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="bundle folder (default: engines/demo if built, else --tiny)")
    p.add_argument("--tiny", action="store_true", help="the toy bundle of tests/helpers/tiny_bundle.py (needs torch)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[4, 8, 16], help="client threads per point")
    p.add_argument("--requests", type=int, default=96, help="requests per point (default 96)")
    p.add_argument("--timeout", type=float, default=170.0, help="wall-clock budget for the whole run, s (170)")
    p.add_argument("--iterations", type=int, help="refinement iterations per request (default: the bundle's)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--max-batch", type=int, help="Triton max_batch_size (default: the bundle's batch.max)")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher delay (default 2000 us)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per instance (default: CPUs / instances)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--frame-size", type=int, default=64, help="input frame side in px (default 64)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |served - local| on raw images and latents")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    return p.parse_args(argv)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Point:
    """One (mode, concurrency) measurement: client latencies and the response checks."""

    def __init__(self, requests: int):
        self.latencies: list[float] = []
        self.wrong = self.failed = 0
        self.max_error = 0.0
        self.errors: list[str] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.requests = requests

    def take(self) -> bool:
        with self.lock:
            if self.sent >= self.requests:
                return False
            self.sent += 1
            return True


def run_point(args, server, frames, expected, concurrency: int, deadline: float, bar) -> dict:
    point = Point(args.requests)
    url = server.http_url if args.protocol == "http" else server.grpc_url

    def client_loop(worker: int) -> None:
        k = worker
        with TranslationClient(url, args.protocol, timeout_s=max(5.0, deadline - time.time())) as c:
            while time.time() < deadline and point.take():
                frame = k % len(frames)
                k += concurrency
                t0 = time.perf_counter()
                try:
                    res = c.translate(frames[frame], iterations=args.iterations, latents=True)
                except ServerError as e:
                    with point.lock:
                        point.failed += 1
                        point.errors.append(str(e)[:300])
                    bar.update()
                    continue
                latency = time.perf_counter() - t0
                error = max(
                    float(np.abs(res.raw[0] - expected[frame].images[0]).max()),
                    float(np.abs(res.latents[0] - expected[frame].latents[0]).max()),
                )
                with point.lock:
                    point.latencies.append(latency)
                    point.max_error = max(point.max_error, error)
                    point.wrong += error > args.atol
                bar.update()

    before = model_metrics(server.metrics_url)
    t0 = time.perf_counter()
    workers = [threading.Thread(target=client_loop, args=(w,), daemon=True) for w in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(1.0, deadline - time.time() + 30))  # a request in flight at the deadline finishes
    seconds = time.perf_counter() - t0
    after = model_metrics(server.metrics_url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}
    answered = len(point.latencies)
    lat = np.array(point.latencies) * 1000.0
    executions = delta["nv_inference_exec_count"]
    successes = delta["nv_inference_request_success"]
    return {
        "concurrency": concurrency,
        "requests": args.requests,
        "sent": point.sent,
        "answered": answered,
        "cut_short": point.sent < args.requests,
        "failed": point.failed,
        "wrong": point.wrong,
        "lost": point.sent - answered - point.failed,
        "max_abs_error": point.max_error,
        "seconds": round(seconds, 2),
        "throughput_rps": round(answered / seconds, 3) if seconds else None,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1),
            "max": round(float(lat.max()), 1),
        }
        if answered
        else None,
        "server": {
            "requests": int(successes),
            "failures": int(delta["nv_inference_request_failure"]),
            "executions": int(executions),
            "rows": int(delta["nv_inference_count"]),
            "avg_batch": round(delta["nv_inference_count"] / executions, 2) if executions else None,
            "queue_ms_per_request": round(delta["nv_inference_queue_duration_us"] / successes / 1000, 1)
            if successes
            else None,
            "compute_ms_per_request": round(delta["nv_inference_compute_infer_duration_us"] / successes / 1000, 1)
            if successes
            else None,
        },
        "errors": point.errors[:3],
    }


def run_mode(args, bundle: Path, dynamic: bool, frames, expected, deadline: float, bar) -> dict:
    http, grpc, metrics = free_ports(3)
    log_file = Path(tempfile.gettempdir()) / f"load_test_triton_{os.getpid()}.log"
    options = ServeOptions(
        bundle=bundle,
        instances=args.instances,
        max_batch=args.max_batch,
        dynamic_batching=dynamic,
        max_queue_delay_us=args.queue_delay_us,
        backend="onnxruntime",
        threads=args.threads,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        exit_timeout_s=5,
        verify=False,
        log_file=log_file,
    )
    points = []
    started = time.perf_counter()
    with TranslationServer(options) as server:
        startup = time.perf_counter() - started
        # warm-up: the loop allocates its buffers per batch size on first use; not measured
        with TranslationClient(server.http_url) as c:
            c.translate(frames[0], iterations=args.iterations)
        for concurrency in args.concurrency:
            if time.time() >= deadline:
                points.append({"concurrency": concurrency, "skipped": "the --timeout budget was spent"})
                continue
            bar.set_description(f"batching {'on' if dynamic else 'off'}, {concurrency} clients")
            points.append(run_point(args, server, frames, expected, concurrency, deadline, bar))
        max_batch = server.max_batch
    return {"dynamic_batching": dynamic, "max_batch": max_batch, "startup_s": round(startup, 1), "points": points}


def main(argv=None) -> int:
    args = parse_args(argv)
    deadline = time.time() + args.timeout
    with tempfile.TemporaryDirectory(prefix="load-test-") as scratch:
        from soak import default_bundle  # the same choice (and toy bundle) as the soak run

        bundle = default_bundle(args.bundle, args.tiny, Path(scratch))
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (args.frame_size, args.frame_size, 3), dtype=np.uint8) for _ in range(8)]
        with Translator(bundle, backend="onnxruntime", threads=args.threads) as local:  # the reference answers
            expected = [local.infer(local.preprocess(f)[None], iterations=args.iterations) for f in frames]
            name, family = local.manifest.name or bundle.name, local.manifest.family
            iterations = args.iterations or local.manifest.schedule.default_iterations
        modes = []
        total = 2 * args.requests * len(args.concurrency)
        with tqdm(total=total, unit="req", mininterval=1.0) as bar:
            for dynamic in (True, False):
                if time.time() >= deadline:
                    modes.append({"dynamic_batching": dynamic, "skipped": "the --timeout budget was spent"})
                    continue
                modes.append(run_mode(args, bundle, dynamic, frames, expected, deadline, bar))
    measured = [p for m in modes for p in m.get("points", []) if "skipped" not in p]
    result = {
        "bundle": str(bundle),
        "name": name,
        "family": family,
        "protocol": args.protocol,
        "iterations": iterations,
        "instances": args.instances,
        "queue_delay_us": args.queue_delay_us,
        "frame_size": args.frame_size,
        "atol": args.atol,
        "timeout_s": args.timeout,
        "command": " ".join(["python benchmarks/load_test_triton.py", *(argv if argv is not None else sys.argv[1:])]),
        "modes": modes,
        "all_answered_right": all(p["lost"] == 0 and p["failed"] == 0 and p["wrong"] == 0 for p in measured),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"load_test_triton_{name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    sys.stdout.write(markdown(result))
    return 0 if result["all_answered_right"] else 1


def markdown(r: dict) -> str:
    lines = [
        f"# Triton load test: {r['name']} ({r['family']})",
        "",
        f"`{r['command']}`",
        "",
        f"{r['protocol'].upper()} on loopback, {r['iterations']} iteration(s) per request, {r['instances']} model "
        f"instance(s), {r['frame_size']} px uint8 frames pre-processed by the server; dynamic batcher delay "
        f"{r['queue_delay_us']} us. Every response checked against the local Translator (atol {r['atol']}): "
        f"**{'all answered right' if r['all_answered_right'] else 'FAILURES, see the table'}**.",
        "",
        "| batching | clients | answered/sent | lost | failed | wrong | req/s | p50 ms | p95 ms | server execs "
        "| rows/exec | queue ms/req | compute ms/req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in r["modes"]:
        mode = "on" if m["dynamic_batching"] else "off"
        if "skipped" in m:
            lines.append(f"| {mode} | - | skipped: {m['skipped']} |" + " |" * 10)
            continue
        for p in m["points"]:
            if "skipped" in p:
                lines.append(f"| {mode} | {p['concurrency']} | skipped: {p['skipped']} |" + " |" * 10)
                continue
            lat, s = p["latency_ms"] or {"p50": "-", "p95": "-"}, p["server"]
            cut = " (cut short)" if p["cut_short"] else ""
            lines.append(
                f"| {mode} (max batch {m['max_batch']}) | {p['concurrency']} "
                f"| {p['answered']}/{p['sent']}{cut} "
                f"| {p['lost']} | {p['failed']} | {p['wrong']} | {p['throughput_rps']} | {lat['p50']} "
                f"| {lat['p95']} | {s['executions']} | {s['avg_batch']} | {s['queue_ms_per_request']} "
                f"| {s['compute_ms_per_request']} |"
            )
    m = r["machine"]
    lines += [
        "",
        f"Machine: {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}; load average at the end "
        f"{m['load_average_at_end']}. Server start-up (s): "
        + ", ".join(f"{'on' if x['dynamic_batching'] else 'off'} {x.get('startup_s', '-')}" for x in r["modes"]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
