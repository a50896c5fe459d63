"""benchmarks/gpu_latency.py without a GPU: --help works, and a run says in one line that there is
no GPU and exits with status 2 (it measures nothing here; the GPU numbers come from GPU machines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_latency.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_modes():
    r = run("--help")
    assert r.returncode == 0
    assert "tensorrt+graphs" in r.stdout and "--device-io" in r.stdout and "--iterations" in r.stdout


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    from sdk.backends.cuda import device_count

    if device_count() > 0:
        pytest.skip("a GPU is visible here: the benchmark would run")
    r = run("--out", str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU 0 is visible" in lines[0]
    assert not list(tmp_path.iterdir())  # no empty result files


# --------------------------------------------------------------------------- benchmarks/gpu_check.py

CHECK = SCRIPT.with_name("gpu_check.py")


def load_gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_lists_every_step_within_eight_minutes():
    gc = load_gpu_check()
    r = subprocess.run([sys.executable, str(CHECK), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for step in gc.STEPS:
        assert f"{step.name}" in r.stdout and f"{step.budget_s:.0f}s" in r.stdout
    assert sum(s.budget_s for s in gc.STEPS) <= 480 and "limit 480 s" in r.stdout
    assert {"device_arrays", "stream_race", "cuda_runtime", "second_thread", "tests_gpu", "gpu_latency", "anchor"} == {
        s.name for s in gc.STEPS
    }


def test_gpu_check_without_a_gpu_says_what_it_would_run(tmp_path):
    from sdk.backends.cuda import device_count

    if device_count() > 0:
        pytest.skip("a GPU is visible here: the check would run")
    r = subprocess.run(
        [sys.executable, str(CHECK), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "nothing was run. On a GPU machine it runs:" in r.stdout
    assert "stream_race" in r.stdout and not (tmp_path / "out").exists()


def test_gpu_check_control_flow(tmp_path):
    """Missing libraries skip with the reason, a raising step fails and the next one still runs, a
    step that would overrun the total is skipped, and the reports say so."""
    import json

    gc = load_gpu_check()
    ran = []

    def ok(env, allowed):
        ran.append(allowed)
        return {"fine": True}

    def boom(env, allowed):
        raise AssertionError("stale data")

    def skip(env, allowed):
        raise gc.Skip("no engines")

    steps = (
        gc.Step("a", 10, ("cuda",), "passes", ok),
        gc.Step("b", 10, ("cuda", "tensorrt"), "needs TRT", ok),
        gc.Step("c", 10, ("cuda",), "fails", boom),
        gc.Step("d", 10, ("cuda",), "skips itself", skip),
        gc.Step("e", 10, ("cuda",), "passes", ok),
        gc.Step("f", 100, ("cuda",), "too long", ok),
    )
    env = {"device": 0, "cuda_devices": 1, "cuda_reason": None, "have": {"cuda"}, "gpu": {"name": "Stand-in GPU"}}
    rc = gc.main(["--out", str(tmp_path), "--budget", "60"], steps=steps, probe_fn=lambda device: dict(env))
    assert rc == 1 and ran == [10, 10]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {r["step"]: (r["status"], r.get("reason", "")) for r in report["results"]}
    assert status["a"][0] == status["e"][0] == "passed"
    assert status["b"] == ("skipped", "needs tensorrt, not present here")
    assert status["c"] == ("failed", "AssertionError: stale data")
    assert status["d"] == ("skipped", "no engines") and status["f"][0] == "skipped" and "out of time" in status["f"][1]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Stand-in GPU" in md and "| c | failed |" in md
