"""Shared test fixtures: the reference data folders and tiny bundles.

The team's shared folder (``../shared`` beside the checkout) is preferred, so new vectors
dropped there are picked up; the copies under ``tests/data`` keep CI self-contained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_data import shared_path

# --------------------------------------------------------------------------- scheduling
# The suite runs on two pytest-xdist workers (pyproject's addopts: -n 2 --dist loadfile), each
# test module on one worker, so a module's fixtures are built once. The modules marked ``slow``
# (real-scale and trained bundles) start first, the longest first (their ``minutes``), so that
# the two workers finish together.


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(minutes=N): builds real-scale or trained bundles; -m 'not slow' is the fast lane"
    )


def pytest_collection_modifyitems(config, items):
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
# Toy encoder/generator graphs exported once per session (tests/tiny_bundle.py), and bundles
# of them for the runtime tests (test_loop, test_bundle, test_translator).


@pytest.fixture(scope="session")
def tiny_graphs(tmp_path_factory):
    import tiny_bundle

    return tiny_bundle.export_graphs(tmp_path_factory.mktemp("tiny_graphs"))


@pytest.fixture(scope="session")
def tiny_bundles(tiny_graphs, tmp_path_factory) -> dict:
    """One read-only bundle per variant (iterative, single, two_stage): {variant: path}."""
    import tiny_bundle

    root = tmp_path_factory.mktemp("tiny_bundles")
    return {v: tiny_bundle.write_bundle(root / v, tiny_graphs, v) for v in tiny_bundle.VARIANTS}


@pytest.fixture
def make_tiny_bundle(tiny_graphs, tmp_path):
    """``make_tiny_bundle(variant="iterative", name="bundle", **write_bundle_options)`` → a
    fresh bundle folder under this test's tmp_path, free to corrupt."""
    import tiny_bundle

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
