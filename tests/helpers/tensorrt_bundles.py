"""Engines added to tiny bundles: through the TensorRT stand-ins (tests/fakes) or, in tests/gpu, the real thing."""

from __future__ import annotations

import shutil

import numpy as np

from helpers import tiny_bundle


def add_engines(bundle, max_batch=tiny_bundle.MAX_BATCH, **options):
    """Build fake engines into an existing tiny bundle with export/tensorrt/engines.py."""
    from export.tensorrt.engines import EngineOptions, build_bundle_engines

    manifest = tiny_bundle.read_manifest(bundle)
    opts = EngineOptions(max_batch=max_batch, compare=False, timing_cache=bundle.parent / "timing.cache", **options)
    build_bundle_engines(bundle, manifest, opts)
    tiny_bundle.write_manifest(bundle, manifest)
    return manifest


def x_input(batch=2, seed=0):
    return (
        np.random.default_rng(seed)
        .uniform(-1, 1, (batch, tiny_bundle.C_X, tiny_bundle.S, tiny_bundle.S))
        .astype(np.float32)
    )


def with_engines(src, dst, max_batch=4, **options):
    """A copy of bundle ``src`` at ``dst`` with real TensorRT engines (tests/gpu)."""
    from export.tensorrt.engines import EngineOptions, build_bundle_engines

    shutil.copytree(src, dst)
    manifest = tiny_bundle.read_manifest(dst)
    build_bundle_engines(
        dst, manifest, EngineOptions(max_batch=max_batch, timing_cache=dst.parent / "timing.cache", **options)
    )
    tiny_bundle.write_manifest(dst, manifest)
    return manifest
