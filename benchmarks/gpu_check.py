#!/usr/bin/env python
"""The first run on a GPU: everything the CPU-only development machines could not prove, in one
command of at most 8 minutes, written as one JSON and one markdown report.

    python benchmarks/gpu_check.py --dry-run      # the steps, what each needs and its time budget
    python benchmarks/gpu_check.py                # run them (one NVIDIA GPU; PyTorch with CUDA)

It assumes PyTorch (CUDA), CuPy and cuda-python, possibly without TensorRT or onnxruntime-gpu,
and installs nothing. A step whose library is missing is skipped with the reason; a step that
raises is recorded as failed and the next one runs; a step that would overrun the total budget
is skipped. Without a GPU it says what it would run and exits 0. Exit status: 0 when nothing
failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("gpu_check")
TOTAL_BUDGET_S = 480.0


class Skip(Exception):
    """A step that finds it has nothing to run here (its message says why)."""


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float
    needs: tuple  # of "cuda", "torch", "cupy", "tensorrt", "ort-gpu", "bundle"
    what: str
    run: Callable[[dict, float], dict]  # (environment, seconds allowed) -> details; raises on failure


# --------------------------------------------------------------------------- environment


def probe(device: int = 0) -> dict:
    """What this machine has: CUDA devices (or why none), PyTorch with CUDA, CuPy, TensorRT,
    onnxruntime-gpu, the demo bundle's engines."""
    from sdk.backends.cuda import cuda_status, device_info

    count, why = cuda_status()
    env = {"device": device, "cuda_devices": count, "cuda_reason": why, "have": set()}
    if count > device:
        env["have"].add("cuda")
        env["gpu"] = device_info(device).as_dict()
    if count and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            env["have"].add("torch")
            env["torch"] = torch.__version__
    for module, tag in (("cupy", "cupy"), ("tensorrt", "tensorrt")):
        if importlib.util.find_spec(module) is not None:
            env["have"].add(tag)
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            env["have"].add("ort-gpu")
    bundle = ROOT / "engines" / "demo"
    if (bundle / "manifest.json").is_file():
        env["have"].add("bundle")
        env["bundle"] = str(bundle)
    return env


# --------------------------------------------------------------------------- the steps (GPU only)


class _View:
    """Device memory seen through a CUDA Array Interface (v3, ready now), owned by someone else."""

    def __init__(self, ptr: int, shape: tuple):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": "<f4",
            "data": (ptr, False),
            "version": 3,
            "strides": None,
            "stream": None,
        }


def _torch_cai_only(tensor):
    """A PyTorch tensor's own CUDA Array Interface (v2, no stream), without its DLPack."""
    return type("TorchCAI", (), {"__cuda_array_interface__": tensor.__cuda_array_interface__})()


def check_device_arrays(env: dict, allowed: float) -> dict:
    """CAI and DLPack in (PyTorch, CuPy), DeviceArray out (torch.from_dlpack, torch.as_tensor, cupy)."""
    import numpy as np
    import torch

    from sdk.backends.cuda import CudaRuntime
    from sdk.device_arrays import device_view

    rt, out = CudaRuntime(env["device"]), {}
    try:
        x = torch.randn(1, 3, 64, 64, device=f"cuda:{env['device']}")
        buf = rt.empty(tuple(x.shape), "float32")
        for label, value in (("torch dlpack", x), ("torch cai v2", _torch_cai_only(x))):
            view = device_view(value, rt.handle, label)
            rt.copy_in(buf.ptr, buf.nbytes, view)
            ok = bool(np.array_equal(rt.download(buf), x.cpu().numpy()))
            out[label] = {"stream": view.stream, "equal": ok}
            assert ok, f"{label}: the copied values differ"
        result = rt.device_copy(buf.ptr, buf.shape, "float32")
        rt.synchronize()
        for label, make in (
            ("torch.from_dlpack", torch.from_dlpack),
            ("torch.as_tensor", lambda a: torch.as_tensor(a, device=x.device)),
        ):
            ok = bool(torch.equal(make(result), x))
            out[label] = ok
            assert ok, f"{label} of a DeviceArray differs"
        if "cupy" in env["have"]:
            import cupy

            out["cupy.asarray"] = bool(np.array_equal(cupy.asnumpy(cupy.asarray(result)), x.cpu().numpy()))
            c = cupy.asarray(x)  # CAI v3 / DLPack from CuPy into the SDK
            rt.copy_in(buf.ptr, buf.nbytes, device_view(c, rt.handle, "cupy"))
            out["cupy in"] = bool(np.array_equal(rt.download(buf), x.cpu().numpy()))
            assert out["cupy.asarray"] and out["cupy in"], "CuPy round trip differs"
        return out
    finally:
        rt.close()


def _producer(torch, n: int, value: float, stream=None):
    """A tensor whose ``fill_`` is queued behind a long kernel (about 100 ms) on ``stream``."""
    ctx = torch.cuda.stream(stream) if stream is not None else torch.cuda.device(torch.cuda.current_device())
    with ctx:
        t = torch.zeros(n, device="cuda")
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(int(2e8))
        else:  # a long kernel anyway
            a = torch.randn(4096, 4096, device="cuda")
            for _ in range(20):
                a = a @ a / 64
        t.fill_(value)
    return t


def check_stream_race(env: dict, allowed: float) -> dict:
    """Defect 2 provoked on purpose: a PyTorch tensor still being written behind a long kernel is
    read through the SDK (ordered: must be right) and through an unordered copy (shows the race)."""
    import numpy as np
    import torch

    from sdk.backends.cuda import CudaRuntime
    from sdk.device_arrays import DeviceInput, device_view

    rt, n, out = CudaRuntime(env["device"]), 1 << 22, {}
    try:
        buf = rt.empty((n,), "float32")
        cases = {
            "dlpack, default stream": (lambda t: t, None),
            "cai v2, default stream": (_torch_cai_only, None),
            "dlpack, side stream": (lambda t: t, torch.cuda.Stream()),
        }
        for label, (wrap, stream) in cases.items():
            t = _producer(torch, n, 7.0, stream)
            # handed over where it was written: PyTorch's __dlpack__ orders its *current* stream
            with torch.cuda.stream(stream) if stream is not None else torch.cuda.device(t.device):
                view = device_view(wrap(t), rt.handle, label)
            rt.copy_in(buf.ptr, buf.nbytes, view)
            out[label] = bool((rt.download(buf) == 7.0).all())
            torch.cuda.synchronize()
        t = _producer(torch, n, 9.0)
        rt.copy_in(buf.ptr, buf.nbytes, DeviceInput(t.data_ptr(), (n,), env["device"], None, t, "unordered"))
        out["unordered copy read stale data (race reproduced)"] = not bool(np.all(rt.download(buf) == 9.0))
        torch.cuda.synchronize()
        bad = [k for k, v in out.items() if k in cases and not v]
        assert not bad, f"ordered reads returned stale data: {bad}"
        return out
    finally:
        rt.close()


def check_cuda_runtime(env: dict, allowed: float) -> dict:
    """Buffers, events, streams, and a CUDA graph captured from copies and a kernel, replayed."""
    import numpy as np
    import torch

    from sdk.backends.cuda import CudaRuntime, check

    rt, out = CudaRuntime(env["device"]), {}
    cudart = rt.cudart
    try:
        a, b = rt.empty((1024,), "float32"), rt.empty((1024,), "float32")
        rt.upload(a, np.arange(1024, dtype=np.float32))
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        tb = torch.as_tensor(_View(b.ptr, (1024,)), device=f"cuda:{env['device']}")
        ext = torch.cuda.ExternalStream(rt.handle)

        def work():
            check(cudart, cudart.cudaMemcpyAsync(b.ptr, a.ptr, a.nbytes, kind, rt.stream), "cudaMemcpyAsync")
            with torch.cuda.stream(ext):
                tb.mul_(2.0)  # a kernel on our stream, no allocation

        graph = rt.capture(work)
        assert graph is not None, "the copy + kernel could not be captured (see the warning)"
        out["nodes"] = graph.node_types()
        for _ in range(3):
            graph.launch()
        out["replayed"] = bool(np.array_equal(rt.download(b), np.arange(1024, dtype=np.float32) * 2))
        start, end = (check(cudart, cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(2))
        check(cudart, cudart.cudaEventRecord(start, rt.stream), "cudaEventRecord")
        graph.launch()
        check(cudart, cudart.cudaEventRecord(end, rt.stream), "cudaEventRecord")
        check(cudart, cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
        out["graph_launch_ms"] = float(check(cudart, cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
        for e in (start, end):
            cudart.cudaEventDestroy(e)
        assert out["replayed"] and "cudaGraphNodeTypeKernel" in out["nodes"], out
        return out
    finally:
        rt.close()


def check_second_thread(env: dict, allowed: float) -> dict:
    """A runtime made in this thread, used from another: its memory lands on its own device."""
    import threading

    from sdk.backends.cuda import CudaRuntime, check

    device = env["cuda_devices"] - 1  # the last GPU: another thread starts on GPU 0
    rt, out = CudaRuntime(device), {"device": device}
    try:

        def other():
            buf = rt.empty((256,), "float32")
            out["allocated_on"] = rt.pointer_device(buf.ptr)
            out["thread_current"] = int(check(rt.cudart, rt.cudart.cudaGetDevice(), "cudaGetDevice"))

        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
        assert out.get("allocated_on") == device, out
        return out
    finally:
        rt.close()


def _subprocess(cmd: list, allowed: float) -> dict:
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(allowed, 1.0))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(cmd[1:3])} ran past its budget of {allowed:.0f} s") from e
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, f"exit status {r.returncode}:\n{tail}"
    return {"command": " ".join(cmd[1:]), "output_tail": tail}


def check_gpu_tests(env: dict, allowed: float) -> dict:
    """tests/gpu (TensorRT vs ONNX Runtime incl. TF32 off, CUDA graphs, ORT CUDA); pytest skips
    what lacks TensorRT / onnxruntime-gpu and says why (-rs)."""
    if not {"tensorrt", "ort-gpu"} & set(env["have"]):
        raise Skip("neither TensorRT nor onnxruntime-gpu is installed: every test in tests/gpu would skip")
    return _subprocess([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/gpu"], allowed)


def check_gpu_latency(env: dict, allowed: float) -> dict:
    manifest = json.loads((Path(env["bundle"]) / "manifest.json").read_text())
    have = set(env["have"]) | ({"engines"} if manifest.get("engines") else set())
    modes = [
        m
        for m, needs in (
            ("tensorrt", {"tensorrt", "engines"}),
            ("tensorrt+graphs", {"tensorrt", "engines"}),
            ("onnxruntime-cuda", {"ort-gpu"}),
        )
        if needs <= have
    ]
    if not modes:
        raise Skip(f"neither TensorRT with engines in {env['bundle']} nor onnxruntime-gpu is present")
    return _subprocess(
        [
            sys.executable,
            "benchmarks/gpu_latency.py",
            "--bundle",
            env["bundle"],
            "--modes",
            *modes,
            "--iterations",
            "1",
            "5",
            "--frames",
            "50",
            "--warmup",
            "10",
            "--out",
            env["out"],
        ],
        allowed,
    )


def check_anchor(env: dict, allowed: float) -> dict:
    """The public PyTorch eager loop (ReStyle run_on_batch: ir_se-50 encoder, fused StyleGAN2
    generator, random weights), N = 5, batch 1, FP32 and FP16 autocast, at 256 and 1024 px:
    median of 10 calls between CUDA events after 3 warm-up calls."""
    import torch

    from export.models.encoders import build_encoder
    from export.models.stylegan2 import Generator

    out, dev, deadline = {}, f"cuda:{env['device']}", time.monotonic() + allowed
    for size in (256, 1024):
        torch.manual_seed(0)
        g = Generator(size, style_dim=512, n_mlp=8, channel_multiplier=2).to(dev).eval()
        g.set_fused(True)
        enc = (
            build_encoder(
                {
                    "encoder_type": "GradualStyleEncoder",
                    "num_layers": 50,
                    "mode": "ir_se",
                    "input_nc": 6,
                    "n_styles": g.n_latent,
                }
            )
            .to(dev)
            .eval()
        )
        pool, x = torch.nn.AdaptiveAvgPool2d((256, 256)), torch.rand(1, 3, 256, 256, device=dev) * 2 - 1
        z0 = torch.zeros(1, g.n_latent, 512, device=dev)

        @torch.no_grad()
        def loop(g=g, enc=enc, x=x, pool=pool, z0=z0):  # this size's modules, bound now
            z, y = z0, g(z0)
            for _ in range(5):
                z = enc(torch.cat([x, pool(y)], dim=1)) + z
                y = g(z)
            return y

        for precision in ("fp32", "fp16-autocast"):
            if time.monotonic() > deadline:
                out[f"{size}px {precision}"] = "skipped: out of time"
                continue
            times = []
            with torch.autocast("cuda", dtype=torch.float16, enabled=precision != "fp32"):
                for i in range(13):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    loop()
                    end.record()
                    end.synchronize()
                    if i >= 3:
                        times.append(start.elapsed_time(end))
            out[f"{size}px {precision}"] = {"median_ms": sorted(times)[len(times) // 2], "min_ms": min(times)}
        del g, enc
        torch.cuda.empty_cache()
    return out


STEPS = (
    Step(
        "device_arrays",
        45,
        ("cuda", "torch"),
        "sdk/device_arrays.py with PyTorch (and CuPy) CUDA arrays: CAI v2 "
        "and DLPack in, DeviceArray out through torch.from_dlpack / torch.as_tensor / cupy",
        check_device_arrays,
    ),
    Step(
        "stream_race",
        30,
        ("cuda", "torch"),
        "defect 2 on purpose: PyTorch tensors still written behind a ~100 ms "
        "kernel (default and side stream) read through the SDK, and one unordered read",
        check_stream_race,
    ),
    Step(
        "cuda_runtime",
        30,
        ("cuda", "torch"),
        "CudaRuntime buffers, events, streams; a CUDA graph captured from a "
        "copy and a kernel on our stream, replayed and timed",
        check_cuda_runtime,
    ),
    Step(
        "second_thread",
        10,
        ("cuda",),
        "device selection from a second host thread (memory lands on the runtime's device)",
        check_second_thread,
    ),
    Step(
        "tests_gpu",
        190,
        ("cuda",),
        "pytest tests/gpu: TensorRT engines vs ONNX Runtime (TF32 off and on), FP16, "
        "CUDA graphs, ORT CUDA provider (each skipped with its reason where TensorRT / onnxruntime-gpu is missing)",
        check_gpu_tests,
    ),
    Step(
        "gpu_latency",
        80,
        ("cuda", "bundle"),
        "benchmarks/gpu_latency.py on engines/demo, N = 1 and 5, 50 frames, for the backends present",
        check_gpu_latency,
    ),
    Step(
        "anchor",
        90,
        ("cuda", "torch"),
        "GPU anchor: the public PyTorch eager loop, FP32 and FP16 autocast, 256 and "
        "1024 px, N = 5, batch 1, CUDA events",
        check_anchor,
    ),
)


# --------------------------------------------------------------------------- driver


def plan_text(steps=STEPS, total: float = TOTAL_BUDGET_S) -> str:
    lines = [f"{'step':<14} {'budget':>7}  needs / what it runs"]
    for s in steps:
        lines.append(f"{s.name:<14} {s.budget_s:>6.0f}s  [{', '.join(s.needs)}] {s.what}")
    lines.append(f"{'total':<14} {sum(s.budget_s for s in steps):>6.0f}s  (limit {total:.0f} s)")
    return "\n".join(lines)


def run_steps(steps, env: dict, total: float = TOTAL_BUDGET_S, clock=time.monotonic) -> list[dict]:
    """Run ``steps`` in order within ``total`` seconds; one result per step, never raises."""
    results, start = [], clock()
    for s in steps:
        missing = [n for n in s.needs if n not in env["have"]]
        left = total - (clock() - start)
        row = {"step": s.name, "budget_s": s.budget_s, "what": s.what}
        if missing:
            row.update(status="skipped", reason=f"needs {', '.join(missing)}, not present here")
        elif left < s.budget_s:
            row.update(status="skipped", reason=f"out of time ({left:.0f} s left of {total:.0f} s)")
        else:
            t0 = clock()
            try:
                row.update(status="passed", details=s.run(env, s.budget_s))
            except Skip as e:
                row.update(status="skipped", reason=str(e))
            except Exception as e:  # a failed check is a result; the next step still runs
                row.update(
                    status="failed", reason=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-3000:]
                )
            row["seconds"] = round(clock() - t0, 2)
        log.info("%-14s %s %s", s.name, row["status"], row.get("reason", ""))
        results.append(row)
    return results


def markdown(report: dict) -> str:
    gpu = report["environment"].get("gpu", {})
    lines = [
        f"# GPU check on {gpu.get('name', '?')} (compute capability {gpu.get('compute_capability', '?')})",
        "",
        f"present: {', '.join(report['environment']['have'])}; {report['seconds']:.0f} s in all",
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for r in report["results"]:
        result = r.get("reason") or json.dumps(r.get("details"), default=str)[:300]
        lines.append(f"| {r['step']} | {r['status']} | {r.get('seconds', '-')} | {result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None, steps=STEPS, probe_fn=probe) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="list the steps and their time budgets; run nothing")
    p.add_argument("--device", type=int, default=0, help="GPU index")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the reports go")
    p.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="total seconds (default 480)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dry_run:
        print(plan_text(steps, args.budget))
        return 0
    env = probe_fn(args.device)
    if "cuda" not in env["have"]:
        print(
            f"gpu_check: no CUDA GPU {args.device} here ({env['cuda_reason']}); nothing was run. "
            f"On a GPU machine it runs:\n{plan_text(steps, args.budget)}"
        )
        return 0
    env["out"] = str(args.out)
    t0 = time.monotonic()
    results = run_steps(steps, env, args.budget)
    report = {
        "environment": {**env, "have": sorted(env["have"])},
        "results": results,
        "seconds": round(time.monotonic() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(
        f"gpu_check: {sum(r['status'] == 'failed' for r in results)} failed, "
        f"{sum(r['status'] == 'passed' for r in results)} passed; wrote {args.out / 'gpu_check'}.{{json,md}}"
    )
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
