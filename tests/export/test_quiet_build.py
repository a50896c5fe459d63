"""The build's console output (README command 1): a few lines of ours, the progress bar, none
of the libraries' INFO chatter; and graphs without the builder's source paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from export.onnx.tracing import STACK_TRACE_KEY
from helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.slow(minutes=2)  # one full build of the tiny checkpoint

REPO = Path(__file__).resolve().parents[2]
NOISE = (
    "Replaced initializer",
    "No unused functions to remove",
    "unused nodes",
    "PassManager",
    "torchvision is not installed",
    "onnxscript",
    "Traceback",
)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The tiny checkpoint built as the README builds the demo (progress bar on, no -v)."""
    folder = tmp_path_factory.mktemp("quiet")
    torch.save(tiny_checkpoint(), folder / "tiny.pt")
    out = folder / "bundle"
    run = subprocess.run(
        [sys.executable, "export/build_engines.py", "--checkpoint", str(folder / "tiny.pt"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run.stdout + run.stderr


def test_the_build_prints_a_few_lines_and_no_library_chatter(build):
    _, output = build
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(("INFO ", "WARNING ", "ERROR "))]
    bar = [line for line in lines if line.startswith("build:")]
    assert bar, output  # the progress bar is still there
    assert len(ours) <= 15 and len(lines) == len(ours) + len(bar), output
    assert not [line for line in lines if any(noise in line for noise in NOISE)], output
    assert ours[-1].startswith("INFO bundle ready: ")


def test_the_graphs_carry_no_stack_traces_of_the_build_machine(build):
    out, _ = build
    graphs = sorted(out.glob("*.onnx"))
    assert graphs
    for path in graphs:
        model = onnx.load(str(path), load_external_data=False)
        keys = {p.key for node in model.graph.node for p in node.metadata_props}
        assert STACK_TRACE_KEY not in keys, path.name
        assert str(REPO) not in model.SerializeToString().decode("latin-1"), path.name
