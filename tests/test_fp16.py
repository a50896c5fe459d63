"""FP16 graphs (export/fp16.py) and the FP16-safe StyleGAN2 formulation, checked on CPU.

The loop test builds a small bundle twice from the same modules — FP32 graphs, and the FP16
variant made by ``apply_fp16`` — with a real StyleGAN2 generator (16 px, 512 channels, the
FP16-safe modulated convolution) and a small conv encoder step (conv, BatchNorm, PReLU, an SE
gate, linear head) with image feedback and residual latents, and runs both through
``Translator`` on ONNX Runtime (CPU) over the whole N-step loop. Full-size numbers (the demo
model, IR-SE-50 + 64 px generator) come from ``benchmarks/fp16_accuracy.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from export.fp16 import apply_fp16, check_finite_activations, convert_to_fp16, fp32_nodes, psnr
from export.graphs import EncoderStep, GeneratorGraph
from export.models.stylegan2 import Generator
from export.onnx_export import export_onnx

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


@pytest.fixture(scope="module")
def fp_bundles(tmp_path_factory):
    """{"fp32": path, "fp16": path, "accuracy": LoopAccuracy} for the small model."""
    from sdk.bundle import SCHEMA_VERSION, BundleWriter

    root = tmp_path_factory.mktemp("fp16")
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


# --------------------------------------------------------------------------- formulation


@pytest.mark.parametrize("fused", [False, True])
def test_fp16_safe_formulation_is_the_same_maths_in_fp32(fused):
    g = small_generator().set_fused(fused)
    z = g.sample_latents(2, seed=3) * 4  # large styles
    with torch.no_grad():
        plain = g(z)
        safe = g.set_fp16_safe(True)(z)
    err = float((plain - safe).abs().max() / plain.abs().max())
    assert err < 1e-5, err


def test_fp16_safe_is_off_by_default():
    assert not any(getattr(m, "fp16_safe", False) for m in small_generator().modules())


# --------------------------------------------------------------------------- conversion


def test_conversion_keeps_float32_io_and_demodulation_in_fp32(fp_bundles, tmp_path):
    import onnx
    from onnx import TensorProto

    report = convert_to_fp16(fp_bundles["graphs"] / "generator.onnx", tmp_path / "g16.onnx")
    model = onnx.load(str(tmp_path / "g16.onnx"))
    assert all(t.type.tensor_type.elem_type == TensorProto.FLOAT for t in [*model.graph.input, *model.graph.output])
    # the big weights are FP16 now
    weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert weights and all(w.data_type == TensorProto.FLOAT16 for w in weights)
    # every demodulation statistic (Sqrt, its Reciprocal, the sum-of-squares MatMul) stays FP32
    kept = set(fp32_nodes(model))
    for node in model.graph.node:
        if node.op_type in ("Sqrt", "Reciprocal", "MatMul"):
            assert node.name in kept or node.op_type == "Reciprocal", node.name
    assert report.fp32_nodes >= 3 * 3  # 3 demodulated convs at 16 px: Sqrt, Add(eps), MatMul (+ Mul)


def test_fp16_generator_has_no_nan_or_inf_in_any_activation(fp_bundles, tmp_path):
    convert_to_fp16(fp_bundles["graphs"] / "generator.onnx", tmp_path / "g16.onnx")
    z = small_generator().sample_latents(2, seed=5).numpy() * 3
    assert check_finite_activations(tmp_path / "g16.onnx", {"z": z}) == []


def test_psnr_peak_is_the_reference_range():
    ref = np.array([0.0, 2.0, -2.0, 0.0])
    assert psnr(ref, ref + 0.04) == pytest.approx(20 * np.log10(4 / 0.04))
    assert psnr(ref, ref) == float("inf")
    assert psnr(ref, np.array([0.0, np.inf, 0, 0])) == float("-inf")


# --------------------------------------------------------------------------- the loop


def test_fp16_manifest_records_precision_and_accuracy(fp_bundles):
    from sdk import Bundle

    b = Bundle(fp_bundles["fp16"])
    assert {g.precision for g in b.manifest.graphs.values()} == {"fp16"}
    assert all(t.dtype == "float32" for g in b.manifest.graphs.values() for t in g.inputs + g.outputs)
    acc = b.manifest.raw["accuracy"]["fp16_vs_fp32"]
    assert acc["ok"] and acc["finite"] and acc["iterations"] == ITERATIONS and len(acc["image_psnr"]) == ITERATIONS
    assert not (fp_bundles["fp16"] / "generator.onnx").exists()  # only the FP16 graphs ship


def test_fp16_loop_matches_fp32_through_the_translator(fp_bundles):
    from sdk import Translator

    x = np.random.default_rng(7).uniform(-1, 1, (3, 3, S, S)).astype(np.float32)
    with (
        Translator(fp_bundles["fp32"], backend="onnxruntime", threads=1) as t32,
        Translator(fp_bundles["fp16"], backend="onnxruntime", threads=1) as t16,
    ):
        ref = t32.infer(x, return_steps=True)
        got = t16.infer(x, return_steps=True)
    assert len(got.steps) == ITERATIONS
    for step, (a, b) in enumerate(zip(ref.steps, got.steps)):
        assert np.all(np.isfinite(b.image)) and np.all(np.isfinite(b.latents)), step
        assert psnr(a.image, b.image) >= 40.0, (step, psnr(a.image, b.image))
    assert fp_bundles["accuracy"].min_image_psnr >= 40.0
