"""A small FP32 bundle and its FP16 variant (``apply_fp16``), built from a real StyleGAN2 generator
(16 px, the FP16-safe modulated convolution) and a toy conv encoder step with the IR-SE encoders' op
types: the FP16 tests on CPU (tests/export/test_fp16.py) and on a GPU (tests/gpu) share them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.models.stylegan2 import Generator
from export.onnx.graphs import EncoderStep, GeneratorGraph
from export.onnx.tracing import export_onnx
from export.precision.fp16 import apply_fp16

SIZE, STYLE_DIM, S, ITERATIONS = 16, 64, 256, 5


def small_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    g = Generator(SIZE, style_dim=STYLE_DIM, n_mlp=2, channel_multiplier=1).eval()
    with torch.no_grad():  # trained-like noise strengths and biases instead of zeros
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias"):
                p.normal_(0, 0.1)
    return g


class SmallEncoder(nn.Module):
    """[B, 6, 256, 256] -> [B, M, D]: the op types of the IR-SE encoders at a toy size."""

    def __init__(self, n_latent: int, dim: int):
        super().__init__()
        self.n_latent, self.dim = n_latent, dim
        self.body = nn.Sequential(
            nn.Conv2d(6, 16, 4, 4),
            nn.BatchNorm2d(16),
            nn.PReLU(16),
            nn.Conv2d(16, 32, 4, 4),
            nn.BatchNorm2d(32),
            nn.PReLU(32),
        )
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 32, 1), nn.Sigmoid()
        )
        self.head = nn.Linear(32 * 16, n_latent * dim)
        with torch.no_grad():
            for bn in (self.body[1], self.body[4]):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 2.0)
            self.head.weight.mul_(0.2)

    def forward(self, x):
        h = self.body(x)
        h = h * self.se(h)
        h = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        return self.head(h).reshape(-1, self.n_latent, self.dim)


def build_fp_bundles(root: Path) -> dict:
    """{"fp32": path, "fp16": path, "accuracy": LoopAccuracy} for the small model, under ``root``."""
    from sdk.bundle import SCHEMA_VERSION, BundleWriter

    gen = small_generator().set_fp16_safe(True)
    m = gen.n_latent
    torch.manual_seed(1)
    step = EncoderStep(
        SmallEncoder(m, STYLE_DIM).eval(), feedback=True, residual=True, input_size=S, output_size=SIZE, n_latent=m
    ).eval()
    with torch.no_grad():
        latent_avg = gen.mean_latent(512)[0].repeat(m, 1)
        average_image = gen(latent_avg[None])[0]
    rng = torch.Generator().manual_seed(0)
    z = latent_avg[None].repeat(2, 1, 1) + 0.1 * torch.randn(2, m, STYLE_DIM, generator=rng)
    inputs = {"x": torch.rand(2, 3, S, S, generator=rng) * 2 - 1, "y": average_image[None].repeat(2, 1, 1, 1), "z": z}
    graphs = root / "graphs"
    graphs.mkdir()
    export_onnx(step, inputs, "z_next", graphs / "encoder.onnx", 4)
    export_onnx(GeneratorGraph(gen).eval(), {"z": z}, "image", graphs / "generator.onnx", 4)
    io = {
        "x": ("condition", ["batch", 3, S, S]),
        "y": ("image", ["batch", 3, SIZE, SIZE]),
        "z": ("latents", ["batch", m, STYLE_DIM]),
    }

    def entry(file, names, out, role, shape):
        return {
            "file": file,
            "sha256": "",
            "precision": "fp32",
            "inputs": [{"name": n, "role": io[n][0], "shape": io[n][1], "dtype": "float32"} for n in names],
            "outputs": [{"name": out, "role": role, "shape": shape, "dtype": "float32"}],
        }

    out, accuracy = {}, None
    for precision in ("fp32", "fp16"):
        with BundleWriter(root / precision) as writer:
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "name": precision,
                "family": "restyle_fpn",
                "task": {"name": "inversion", "options": {}},
                "input": {"channels": 3, "size": S, "range": [-1.0, 1.0]},
                "output": {"channels": 3, "size": SIZE, "range": [-1.0, 1.0]},
                "latent": {"count": m, "dim": STYLE_DIM},
                "batch": {"min": 1, "max": 4},
                "graphs": {
                    "encoder": entry("encoder.onnx", ["x", "y", "z"], "z_next", "latents", io["z"][1]),
                    "generator": entry("generator.onnx", ["z"], "image", "image", io["y"][1]),
                },
                "constants": {"file": "constants.npz", "sha256": ""},
                "schedule": {
                    "stages": [{"graph": "encoder", "feedback": True, "residual": True}],
                    "repeat_last": True,
                    "default_iterations": ITERATIONS,
                },
                "engines": {},
            }
            for key in ("encoder", "generator"):
                writer.path(f"{key}.onnx").write_bytes((graphs / f"{key}.onnx").read_bytes())
                manifest["graphs"][key]["sha256"] = writer.add(f"{key}.onnx")
            np.savez(writer.path("constants.npz"), latent_avg=latent_avg.numpy(), average_image=average_image.numpy())
            manifest["constants"]["sha256"] = writer.add("constants.npz")
            if precision == "fp16":
                accuracy = apply_fp16(writer.tmp, manifest, add_file=writer.add, threads=1)
            out[precision] = writer.commit(manifest)
    out["accuracy"] = accuracy
    out["graphs"] = graphs
    return out
