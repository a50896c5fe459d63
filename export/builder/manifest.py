"""The bundle manifest a build writes (the layout :mod:`sdk.manifest` parses): every field in one
place, from the checkpoint, the options and what the export recorded."""

from __future__ import annotations

import datetime
import platform
from typing import Any

import torch
from torch import nn

from export.builder.options import BuildOptions
from export.builder.records import GraphRecord
from export.checkpoints.types import LoadedCheckpoint
from export.fast_forms.optimize import REWRITES_VERSION
from export.onnx.tracing import OPSET
from sdk.bundle import SCHEMA_VERSION

# the encoder input range each task's pre-processing produces (sdk/tasks.py)
TASK_RANGES = {
    "inversion": (-1.0, 1.0),
    "super_resolution": (-1.0, 1.0),
    "sketch": (0.0, 1.0),
    "segmentation": (0.0, 1.0),
}
CONSTANTS_FILE = "constants.npz"


def graph_entry(record: GraphRecord, sha256: str, rewrites: list[str]) -> dict:
    """``graphs.<key>``: the FP32 graph's file, digest, I/O and the fast forms it was exported in."""
    return {
        "file": record.file,
        "sha256": sha256,
        "precision": "fp32",
        "inputs": [spec.as_dict() for spec in record.input_specs],
        "outputs": [record.output.as_dict()],
        "rewrites": rewrites,
    }


def bundle_manifest(
    ckpt: LoadedCheckpoint,
    generator: nn.Module,
    options: BuildOptions,
    *,
    name: str,
    task: str,
    graphs: dict[str, dict],
    parity: dict[str, dict],
    constants_sha256: str,
    tensorrt: str | None,
) -> dict:
    """The whole manifest of a bundle before the post-export passes add to it (their CPU graphs,
    FP16 files and accuracy, TensorRT engines)."""
    size, m, d = generator.size, generator.n_latent, generator.style_dim
    cond_nc = ckpt.condition_channels
    lo, hi = TASK_RANGES[task]
    task_options = {"super_resolution": {"factor": options.factor}, "segmentation": {"label_nc": cond_nc}}.get(task, {})
    inputs: dict[str, Any] = {"channels": cond_nc, "size": ckpt.input_size, "range": [lo, hi]}
    alignment = ckpt.alignment(task)
    if alignment is not None:  # read by Translator.translate_faces and samples/translate.py --align auto
        inputs["alignment"] = alignment
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "family": ckpt.format,
        "task": {"name": task, "options": task_options},
        "input": inputs,
        "output": {"channels": 3, "size": size, "range": [-1.0, 1.0]},
        "latent": {"count": m, "dim": d},
        "batch": {"min": 1, "max": options.max_batch},
        "graphs": graphs,
        "constants": {
            "file": CONSTANTS_FILE,
            "sha256": constants_sha256,
            "arrays": {"latent_avg": [m, d], "average_image": [3, size, size]},
        },
        "schedule": {
            "stages": [
                {"graph": f"encoder_{i}", "feedback": st.feedback, "residual": st.residual}
                for i, st in enumerate(ckpt.stages)
            ],
            "repeat_last": ckpt.repeat_last,
            "default_iterations": options.iterations or ckpt.default_iterations,
        },
        "engines": {},
        "parity": parity,
        "build": {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {"file": ckpt.path.name, "sha256": ckpt.sha256, "format": ckpt.format},
            "encoders": [st.config for st in ckpt.stages],
            "generator": getattr(generator, "config", None)
            or {
                "size": size,
                "style_dim": d,
                "n_mlp": generator.n_mlp,
                "channel_multiplier": generator.channel_multiplier,
            },
            "torch": torch.__version__,
            "onnx_opset": OPSET,
            "tensorrt": tensorrt,
            "rewrites_version": REWRITES_VERSION if options.optimize else None,
            "python": platform.python_version(),
        },
    }
