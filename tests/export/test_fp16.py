"""FP16 graphs (export/precision/fp16.py) and the FP16-safe StyleGAN2 formulation, checked on CPU.

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

from export.precision.accuracy import psnr
from export.precision.fp16 import check_finite_activations, convert_to_fp16, fp32_nodes
from helpers.fp16_bundles import ITERATIONS, S, small_generator

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
    acc = b.manifest.info("accuracy")["fp16_vs_fp32"]
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
