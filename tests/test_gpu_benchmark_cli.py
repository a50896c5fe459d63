"""benchmarks/gpu_latency.py without a GPU: --help works, and a run says in one line that there is
no GPU and exits with status 2 (it measures nothing here; the GPU numbers come from GPU machines)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_latency.py"


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
