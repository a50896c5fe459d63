"""The public-format reference checkpoints of tests/data/reference_vectors (written by its make_checkpoint.py)."""

from __future__ import annotations

import importlib.util

import numpy as np


def relative(actual: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


def write_checkpoint(reference_dir, name: str, path) -> None:
    spec = importlib.util.spec_from_file_location("make_checkpoint", reference_dir / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(reference_dir / f"{name}_layout.json"), str(path))
