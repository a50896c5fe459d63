"""Tiny bundles for the runtime tests: the real export path on toy modules.

The encoder and generator here are a few hundred parameters each, so exporting them takes
seconds, but they go through the same ``export.onnx.graphs`` wrappers, ``export_onnx`` and
``BundleWriter`` as ``export/build_engines.py``, and the manifest has the same shape as the
one ``build_bundle`` writes. Their numpy twins (:class:`TinyModel`) give an independent
reference for the refinement recurrence.

Graphs exported (once per test session, into a cache folder):

* ``encoder``        feedback + residual step ``(x, y, z) -> z'`` (ReStyle / OME-like)
* ``encoder_first``  no feedback, residual ``(x, z) -> z'`` (pSp-like, E2Style's first stage)
* ``generator``      ``z -> y``

Bundle variants (:data:`VARIANTS`): ``iterative`` (one repeating feedback stage),
``single`` (one pSp stage, no repeat) and ``two_stage`` (pSp stage then feedback stage,
no repeat: an E2Style-like schedule of two different graphs).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

S = 256  # encoder input size (every public encoder)
R = 16  # generator resolution
M, D = 4, 8  # latents: count, dim
C_X = 3  # condition channels (RGB)
POOL = 64  # the encoder pools S x S to 4 x 4
MAX_BATCH = 4

# graph key -> (feedback, residual)
GRAPHS = {"encoder": (True, True), "encoder_first": (False, True)}
VARIANTS = {
    # name: (stage graph keys, repeat_last, default_iterations, family)
    "iterative": (["encoder"], True, 3, "restyle_psp"),
    "single": (["encoder_first"], False, 1, "psp"),
    "two_stage": (["encoder_first", "encoder"], False, 2, "e2style"),
}


# --------------------------------------------------------------------------- numpy twin


@dataclass
class TinyModel:
    """The weights of the toy graphs and a numpy implementation of each (float64)."""

    enc_w: dict  # key -> [M*D, C_in*16]
    enc_b: dict  # key -> [M*D]
    gen_w: np.ndarray  # [3*R*R, M*D]
    gen_b: np.ndarray  # [3*R*R]
    latent_avg: np.ndarray  # [M, D]

    @classmethod
    def make(cls, seed: int = 0) -> TinyModel:
        rng = np.random.default_rng(seed)
        enc_w, enc_b = {}, {}
        for key, (feedback, _) in GRAPHS.items():
            c_in = C_X + (3 if feedback else 0)
            enc_w[key] = (rng.standard_normal((M * D, c_in * 16)) * 0.15).astype(np.float32)
            enc_b[key] = (rng.standard_normal(M * D) * 0.05).astype(np.float32)
        gen_w = (rng.standard_normal((3 * R * R, M * D)) * 0.4).astype(np.float32)
        gen_b = (rng.standard_normal(3 * R * R) * 0.1).astype(np.float32)
        latent_avg = (rng.standard_normal((M, D)) * 0.5).astype(np.float32)
        return cls(enc_w, enc_b, gen_w, gen_b, latent_avg)

    def encode(self, key: str, x: np.ndarray, y: np.ndarray | None, z: np.ndarray | None) -> np.ndarray:
        """``EncoderStep(TinyEncoder)``: pool y (R px) to S by repetition, concat, pool to 4x4,
        linear, add z. Repeating y by S/R and then averaging POOL x POOL blocks is averaging
        (POOL*R/S)-blocks of y."""
        feedback, residual = GRAPHS[key]
        b = x.shape[0]
        feats = [x.astype(np.float64).reshape(b, C_X, 4, POOL, 4, POOL).mean(axis=(3, 5))]
        if feedback:
            k = POOL * R // S
            feats.append(y.astype(np.float64).reshape(b, 3, 4, k, 4, k).mean(axis=(3, 5)))
        h = np.concatenate(feats, axis=1).reshape(b, -1) @ self.enc_w[key].T.astype(np.float64) + self.enc_b[key]
        codes = h.reshape(b, M, D)
        return z.astype(np.float64) + codes if residual else codes

    def generate(self, z: np.ndarray) -> np.ndarray:
        h = z.reshape(z.shape[0], -1).astype(np.float64) @ self.gen_w.T.astype(np.float64) + self.gen_b
        return (h / (1.0 + np.abs(h))).reshape(z.shape[0], 3, R, R)

    @property
    def average_image(self) -> np.ndarray:
        return self.generate(self.latent_avg[None])[0]

    def steps(self, keys: list[str], x: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(z_t, y_t) of each of ``n`` loop steps from the average, graph ``keys[t]`` at step t
        (the last one repeating): what a backend must compute for a schedule of these graphs."""
        z = np.repeat(self.latent_avg[None].astype(np.float64), x.shape[0], axis=0)
        y = np.repeat(self.average_image[None], x.shape[0], axis=0)
        out = []
        for t in range(n):
            z = self.encode(keys[min(t, len(keys) - 1)], x, y, z)
            y = self.generate(z)
            out.append((z, y))
        return out


# --------------------------------------------------------------------------- torch modules


def _torch_modules(model: TinyModel):
    import torch
    from torch import nn

    class TinyEncoder(nn.Module):
        """[B, C_in, 256, 256] -> avg-pool to 4x4 -> linear -> [B, M, D]."""

        def __init__(self, w: np.ndarray, b: np.ndarray):
            super().__init__()
            self.linear = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                self.linear.weight.copy_(torch.from_numpy(w))
                self.linear.bias.copy_(torch.from_numpy(b))

        def forward(self, x):
            h = torch.nn.functional.avg_pool2d(x, POOL).flatten(1)
            return self.linear(h).reshape(-1, M, D)

    class TinyGenerator(nn.Module):
        """[B, M, D] -> linear -> softsign -> [B, 3, R, R]."""

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(M * D, 3 * R * R)
            with torch.no_grad():
                self.linear.weight.copy_(torch.from_numpy(model.gen_w))
                self.linear.bias.copy_(torch.from_numpy(model.gen_b))

        def forward(self, z):
            h = self.linear(z.flatten(1))
            return (h / (1.0 + h.abs())).reshape(-1, 3, R, R)

    encoders = {k: TinyEncoder(model.enc_w[k], model.enc_b[k]) for k in GRAPHS}
    return encoders, TinyGenerator()


@dataclass
class TinyGraphs:
    """Exported graph files (in ``folder``), the constants, and the numpy twin."""

    folder: Path
    model: TinyModel
    latent_avg: np.ndarray  # float32 [M, D]
    average_image: np.ndarray  # float32 [3, R, R], from the torch generator as build_bundle does


def export_graphs(folder: Path, seed: int = 0) -> TinyGraphs:
    """Export the toy graphs to ``folder`` with ``export.onnx.tracing.export_onnx``."""
    import torch

    from export.onnx.graphs import EncoderStep, GeneratorGraph
    from export.onnx.parity import check_parity
    from export.onnx.tracing import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = TinyModel.make(seed)
    encoders, gen = _torch_modules(model)
    generator = GeneratorGraph(gen).eval()
    latent_avg = torch.from_numpy(model.latent_avg)
    with torch.no_grad():
        average_image = generator(latent_avg[None])[0]
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(2, C_X, S, S, generator=rng) * 2 - 1
    y = average_image[None].repeat(2, 1, 1, 1)
    z = latent_avg[None].repeat(2, 1, 1) + 0.1 * torch.randn(2, M, D, generator=rng)
    for key, (feedback, residual) in GRAPHS.items():
        step = EncoderStep(
            encoders[key], feedback=feedback, residual=residual, input_size=S, output_size=R, n_latent=M
        ).eval()
        inputs = {"x": x, **({"y": y} if feedback else {}), **({"z": z} if residual else {})}
        export_onnx(step, inputs, "z_next", folder / f"{key}.onnx", MAX_BATCH)
        assert check_parity(step, folder / f"{key}.onnx", inputs, key, 1e-5).ok
    export_onnx(generator, {"z": z}, "image", folder / "generator.onnx", MAX_BATCH)
    assert check_parity(generator, folder / "generator.onnx", {"z": z}, "generator", 1e-5).ok
    return TinyGraphs(folder, model, latent_avg.numpy().copy(), average_image.numpy().copy())


# --------------------------------------------------------------------------- bundles


def _io(name: str) -> tuple[str, list]:
    return {
        "x": ("condition", ["batch", C_X, S, S]),
        "y": ("image", ["batch", 3, R, R]),
        "z": ("latents", ["batch", M, D]),
    }[name]


def _graph_entry(
    key: str, file: str, sha: str, input_names: list[str], out_name: str, out_role: str, out_shape: list
) -> dict:
    return {
        "file": file,
        "sha256": sha,
        "precision": "fp32",
        "inputs": [{"name": n, "role": _io(n)[0], "shape": _io(n)[1], "dtype": "float32"} for n in input_names],
        "outputs": [{"name": out_name, "role": out_role, "shape": out_shape, "dtype": "float32"}],
    }


def write_bundle(
    target: Path,
    graphs: TinyGraphs,
    variant: str = "iterative",
    *,
    task: str = "inversion",
    factor: int = 4,
    batch: tuple[int, int] = (1, MAX_BATCH),
    default_iterations: int | None = None,
    edit: Callable[[dict], Any] | None = None,
) -> Path:
    """Write a bundle of ``variant`` at ``target`` with ``sdk.bundle.BundleWriter``; the manifest
    mirrors ``build_bundle``'s. ``edit(manifest)`` may change the manifest before commit."""
    from sdk.bundle import SCHEMA_VERSION, BundleWriter

    keys, repeat_last, default_n, family = VARIANTS[variant]
    manifest_graphs = {}
    with BundleWriter(target) as writer:
        for key in dict.fromkeys(keys):
            feedback, residual = GRAPHS[key]
            file = f"{key}.onnx"
            shutil.copyfile(graphs.folder / file, writer.path(file))
            names = ["x"] + (["y"] if feedback else []) + (["z"] if residual else [])
            manifest_graphs[key] = _graph_entry(
                key, file, writer.add(file), names, "z_next", "latents", ["batch", M, D]
            )
        shutil.copyfile(graphs.folder / "generator.onnx", writer.path("generator.onnx"))
        manifest_graphs["generator"] = _graph_entry(
            "generator", "generator.onnx", writer.add("generator.onnx"), ["z"], "image", "image", ["batch", 3, R, R]
        )
        np.savez(writer.path("constants.npz"), latent_avg=graphs.latent_avg, average_image=graphs.average_image)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": target.name,
            "family": family,
            "task": {"name": task, "options": {"factor": factor} if task == "super_resolution" else {}},
            "input": {"channels": C_X, "size": S, "range": [-1.0, 1.0]},
            "output": {"channels": 3, "size": R, "range": [-1.0, 1.0]},
            "latent": {"count": M, "dim": D},
            "batch": {"min": batch[0], "max": batch[1]},
            "graphs": manifest_graphs,
            "constants": {
                "file": "constants.npz",
                "sha256": writer.add("constants.npz"),
                "arrays": {"latent_avg": [M, D], "average_image": [3, R, R]},
            },
            "schedule": {
                "stages": [{"graph": k, "feedback": GRAPHS[k][0], "residual": GRAPHS[k][1]} for k in keys],
                "repeat_last": repeat_last,
                "default_iterations": default_iterations or default_n,
            },
            "engines": {},
            "parity": {},
            "build": {"source": {"file": "tiny", "format": family}, "onnx_opset": 18},
        }
        if edit is not None:
            edit(manifest)
        writer.commit(manifest)
    return target


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def edit_manifest(bundle: Path, fn: Callable[[dict], Any]) -> dict:
    """Load, ``fn(manifest)`` in place, write back (bypassing the writer's validation)."""
    m = copy.deepcopy(read_manifest(bundle))
    fn(m)
    write_manifest(bundle, m)
    return m


def fix_batch(manifest: dict, batch: int) -> None:
    """Make a manifest describe a fixed batch size (range and every graph tensor's dim 0)."""
    manifest["batch"] = {"min": batch, "max": batch}
    for graph in manifest["graphs"].values():
        for tensor in graph["inputs"] + graph["outputs"]:
            tensor["shape"][0] = batch


def random_input(batch: int = 1, seed: int = 0) -> np.ndarray:
    """A seeded condition batch [batch, C_X, S, S] in [-1, 1], float32."""
    return (np.random.default_rng(seed).random((batch, C_X, S, S)) * 2 - 1).astype(np.float32)


def rehash(bundle: Path, file: str, keys: tuple = ("constants",)) -> dict:
    """Record ``file``'s current SHA-256 at ``keys`` of the manifest, so a corruption under test is
    not caught as a hash mismatch first."""
    from sdk.bundle import sha256_file

    def edit(m):
        d = m
        for k in keys:
            d = d[k]
        d["sha256"] = sha256_file(bundle / file)

    return edit_manifest(bundle, edit)
