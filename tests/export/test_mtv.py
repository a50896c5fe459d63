"""MTV-TSA encoder (Deep-GAN-Encoders ``BE``): reference vector, bundle, fixed noise.

* the ``mtv256`` vector (``BE(startf=64, maxf=512, layer_count=7)``, zero noise weights) is
  reproduced by our module (codes and the 4x4 feature) and, through a bundle built from the
  authors' bare state dict, by ONNX Runtime via ``Translator.infer``;
* the bundle is a single pass (absolute codes, no feedback) and matches PyTorch;
* with non-zero noise weights the graph holds one fixed noise sample: deterministic, no
  random op, and ONNX equals PyTorch.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export import build_engines
from export.checkpoints.registry import load_checkpoint
from export.checkpoints.types import CheckpointError
from export.models.mtv import MTVEncoder, infer_mtv_config
from export.models.stylegan2 import Generator
from export.onnx.graphs import EncoderStep
from export.onnx.parity import check_parity
from export.onnx.tracing import export_onnx
from helpers.reference import relative, write_checkpoint
from sdk import Translator

pytestmark = pytest.mark.slow(minutes=3)  # on 2 shared cores; conftest starts the longest first

BAR = 1e-3


def have_vector(reference_dir) -> bool:
    return (reference_dir / "mtv256_reference.npz").is_file() and (reference_dir / "mtv256_layout.json").is_file()


@pytest.fixture(scope="module")
def mtv_files(reference_dir, tmp_path_factory):
    """The authors'-layout encoder file (the reference one when present) and a 256 px g_ema file."""
    tmp = tmp_path_factory.mktemp("mtv")
    if have_vector(reference_dir):
        write_checkpoint(reference_dir, "mtv256", tmp / "E.pth")
    else:
        torch.manual_seed(0)
        torch.save(MTVEncoder().state_dict(), tmp / "E.pth")  # same keys as the authors' BE
    torch.manual_seed(1)
    g = Generator(256, style_dim=512, n_mlp=2, channel_multiplier=1)
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.mean_latent(256)[0]}, tmp / "g.pt")
    return tmp / "E.pth", tmp / "g.pt"


@pytest.fixture(scope="module")
def mtv_bundle(mtv_files):
    encoder, generator = mtv_files
    out = encoder.parent / "bundle"
    assert (
        build_engines.main(
            [
                "--checkpoint",
                str(encoder),
                "--generator",
                str(generator),
                "--out",
                str(out),
                "--quiet",
                "--max-batch",
                "2",
            ]
        )
        == 0
    )
    return out


def test_mtv256_matches_the_public_encoder(reference_dir, mtv_files):
    if not have_vector(reference_dir):
        pytest.skip(f"mtv256 vector files are not in {reference_dir}")
    ref = np.load(reference_dir / "mtv256_reference.npz")
    sd = torch.load(mtv_files[0], weights_only=True)
    encoder = MTVEncoder(**infer_mtv_config(sd))
    encoder.load_state_dict(sd, strict=True)
    with torch.no_grad():
        features, w = encoder.eval().encode(torch.from_numpy(ref["input"]))
    assert w.shape == ref["w"].shape == (1, 14, 512)
    assert relative(w.numpy(), ref["w"]) <= BAR
    assert relative(features.numpy(), ref["features"]) <= BAR


def test_mtv_bundle_is_one_pass_and_matches(reference_dir, mtv_files, mtv_bundle):
    manifest = json.loads((mtv_bundle / "manifest.json").read_text())
    assert manifest["family"] == "mtv_tsa" and manifest["latent"] == {"count": 14, "dim": 512}
    assert manifest["schedule"]["stages"] == [{"graph": "encoder_0", "feedback": False, "residual": False}]
    assert not manifest["schedule"]["repeat_last"] and manifest["schedule"]["default_iterations"] == 1
    assert [t["role"] for t in manifest["graphs"]["encoder_0"]["inputs"]] == ["condition"]

    ckpt = load_checkpoint(mtv_files[0], None, mtv_files[1])
    if have_vector(reference_dir):
        x = np.load(reference_dir / "mtv256_reference.npz")["input"]
    else:
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    with torch.no_grad():
        w = ckpt.stages[0].encoder(torch.from_numpy(x))
        y = ckpt.generator(w).numpy()
    with Translator(mtv_bundle, backend="onnxruntime") as t:
        res = t.infer(x)
        with pytest.raises(Exception, match="iterations"):
            t.infer(x, iterations=2)  # a single-pass schedule
    assert relative(res.latents, w.numpy()) <= 1e-4
    assert relative(res.images, y) <= 1e-4
    if have_vector(reference_dir):  # ONNX Runtime against the public code's numbers
        assert relative(res.latents, np.load(reference_dir / "mtv256_reference.npz")["w"]) <= BAR


def test_trained_noise_weights_use_one_fixed_sample(tmp_path):
    torch.manual_seed(2)
    encoder = MTVEncoder(startf=8, maxf=16, layer_count=7).eval()
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "noise_weight" in name:
                p.normal_(0, 0.5)
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        w = encoder(x)
        torch.testing.assert_close(encoder(x), w, rtol=0, atol=0)  # deterministic
        torch.testing.assert_close(encoder(x[1:]), w[1:], rtol=1e-5, atol=1e-6)  # one sample for every batch row
        quiet = MTVEncoder(startf=8, maxf=16, layer_count=7)
        quiet.load_state_dict({k: (v * 0 if "noise_weight" in k else v) for k, v in encoder.state_dict().items()})
        assert not torch.allclose(quiet.eval()(x), w)  # the noise does act
    step = EncoderStep(encoder, feedback=False, residual=False, input_size=256, output_size=256, n_latent=14).eval()
    export_onnx(step, {"x": x}, "z_next", tmp_path / "mtv.onnx", max_batch=4)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "mtv.onnx")).graph.node}
    assert not {op for op in ops if op.startswith("Random")}, ops
    report = check_parity(step, tmp_path / "mtv.onnx", {"x": x}, "encoder", 1e-4)
    assert report.ok, str(report)
    # the fixed sample is seeded: a fresh module draws the same noise
    again = MTVEncoder(startf=8, maxf=16, layer_count=7)
    torch.testing.assert_close(again.decode_block[0].noise_1, encoder.decode_block[0].noise_1)


def test_mtv_needs_a_matching_generator(mtv_files, tmp_path):
    encoder, _ = mtv_files
    with pytest.raises(CheckpointError, match="--generator"):
        load_checkpoint(encoder)
    torch.save({"g_ema": Generator(64, n_mlp=1, channel_multiplier=1).state_dict()}, tmp_path / "g64.pt")
    with pytest.raises(CheckpointError, match="different models"):
        load_checkpoint(encoder, None, tmp_path / "g64.pt")
    sd = torch.load(encoder, weights_only=True)
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pth")  # DataParallel prefix
    assert load_checkpoint(tmp_path / "dp.pth", None, mtv_files[1]).format == "mtv_tsa"
