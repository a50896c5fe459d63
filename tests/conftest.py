"""Shared test fixtures: the reference data folders and tiny bundles.

The team's shared folder (``../shared`` beside the checkout) is preferred, so new vectors
dropped there are picked up; the copies under ``tests/data`` keep CI self-contained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.shared_data import shared_path

# --------------------------------------------------------------------------- scheduling
# The suite runs on two pytest-xdist workers (pyproject's addopts: -n 2 --dist loadfile), each
# test module on one worker, so its fixtures are built once. The modules marked ``slow``
# (real-scale and trained bundles) start first, the longest first (their ``minutes``), so that
# the two workers finish together.


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(minutes=N): builds real-scale or trained bundles; -m 'not slow' is the fast lane"
    )
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with TensorRT or onnxruntime-gpu (tests/gpu)")


def pytest_collection_modifyitems(config, items):
    for item in items:  # everything under tests/gpu is a GPU test, whether it skips or runs
        if "gpu" in Path(str(item.fspath)).parent.parts[-1:]:
            item.add_marker(pytest.mark.gpu)

    def minutes(item) -> float:
        mark = item.get_closest_marker("slow")
        return mark.kwargs.get("minutes", 1.0) if mark else 0.0

    items.sort(key=lambda item: -minutes(item))  # stable: file order otherwise


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return shared_path("reference_vectors")


@pytest.fixture(scope="session")
def layouts_dir() -> Path:
    return shared_path("checkpoint_layouts")


# --------------------------------------------------------------------------- tiny bundles
# Toy encoder/generator graphs exported once per session (tests/helpers/tiny_bundle.py), and bundles
# of them for the runtime tests (test_loop, test_bundle, test_translator).


@pytest.fixture(scope="session")
def tiny_graphs(tmp_path_factory):
    from helpers import tiny_bundle

    return tiny_bundle.export_graphs(tmp_path_factory.mktemp("tiny_graphs"))


@pytest.fixture(scope="session")
def tiny_bundles(tiny_graphs, tmp_path_factory) -> dict:
    """One read-only bundle per variant (iterative, single, two_stage): {variant: path}."""
    from helpers import tiny_bundle

    root = tmp_path_factory.mktemp("tiny_bundles")
    return {v: tiny_bundle.write_bundle(root / v, tiny_graphs, v) for v in tiny_bundle.VARIANTS}


@pytest.fixture
def make_tiny_bundle(tiny_graphs, tmp_path):
    """``make_tiny_bundle(variant="iterative", name="bundle", **write_bundle_options)`` → a
    fresh bundle folder under this test's tmp_path, free to corrupt."""
    from helpers import tiny_bundle

    def make(variant: str = "iterative", name: str = "bundle", **options) -> Path:
        return tiny_bundle.write_bundle(tmp_path / name, tiny_graphs, variant, **options)

    return make


@pytest.fixture(scope="module")
def translators(tiny_bundles):
    """One ONNX Runtime ``Translator`` (1 thread) per tiny bundle variant, per test module."""
    from sdk import Translator

    ts = {v: Translator(p, backend="onnxruntime", threads=1) for v, p in tiny_bundles.items()}
    yield ts
    for t in ts.values():
        t.close()


# --------------------------------------------------------------------------- stand-ins and small models


@pytest.fixture
def fake_gpu(monkeypatch):
    """The CUDA runtime and TensorRT stand-ins of tests/fakes installed: (tensorrt, cudart)."""
    from fakes import fake_cuda, fake_tensorrt

    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    trt = fake_tensorrt.install(monkeypatch, cudart)
    return trt, cudart


@pytest.fixture(scope="module")
def fp_bundles(tmp_path_factory):
    """{"fp32": path, "fp16": path, "accuracy": LoopAccuracy, "graphs": folder} (tests/helpers/fp16_bundles.py)."""
    from helpers.fp16_bundles import build_fp_bundles

    return build_fp_bundles(tmp_path_factory.mktemp("fp16"))
