"""ProGAN (genforce PGGAN) generator, OME's split and dynamic fusion, and the OME-ProGAN bundle.

* the ``pggan256`` reference vector (genforce/mganprior ``PGGANGeneratorNet(resolution=256)``)
  is reproduced by our module and by its ONNX graph in ONNX Runtime;
* the dynamic fusion equals a direct numpy computation of seed 000 Eq. 7-10;
* the unsplit generator equals ``G_post(fusion(G_pre(z)))`` for M = 1;
* the fused ``G_post(DF(G_pre(z_1..z_M)))`` graph matches PyTorch in ONNX Runtime;
* an ``ome_progan`` checkpoint (M = 20, small widths) builds into a bundle that ``Translator``
  runs with the unchanged loop, matching the PyTorch recurrence step by step.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export import build_engines
from export.checkpoints.ome import build_progan, save_ome_progan
from export.checkpoints.registry import load_checkpoint
from export.checkpoints.types import CheckpointError
from export.models.ome_encoder import OMEEncoder
from export.models.progan import DynamicFusion, MultiCodeProGAN, ProGANGenerator, StaticFusion
from export.onnx.graphs import GeneratorGraph
from export.onnx.parity import check_parity
from export.onnx.tracing import export_onnx
from helpers.reference import relative, write_checkpoint
from sdk import Translator

pytestmark = pytest.mark.slow(minutes=1)  # on 2 shared cores; conftest starts the longest first

BAR = 1e-3


def tiny_generator(seed: int = 0, z_dim: int = 32) -> ProGANGenerator:
    """A 64 px ProGAN (blocks 4..64 px) with 32/16 channels: split 8 leaves layers 8, 9 for G_post."""
    torch.manual_seed(seed)
    g = ProGANGenerator([32, 32, 32, 32, 16], z_dim=z_dim).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("wscale.bias"):
                p.normal_(0, 0.1)
    return g


def tiny_fusion(channels: int = 32, seed: int = 1) -> DynamicFusion:
    torch.manual_seed(seed)
    return DynamicFusion(channels).eval()


# --------------------------------------------------------------------------- reference vector


@pytest.fixture(scope="module")
def pggan256(reference_dir, tmp_path_factory):
    if not (reference_dir / "pggan256_reference.npz").is_file():
        pytest.skip(f"pggan256_reference.npz is not in {reference_dir}")
    path = tmp_path_factory.mktemp("pggan") / "pggan256.pt"
    write_checkpoint(reference_dir, "pggan256", path)
    generator = build_progan(torch.load(path, weights_only=True), str(path))
    return generator, np.load(reference_dir / "pggan256_reference.npz")


def test_pggan256_matches_the_public_generator(pggan256, tmp_path):
    generator, ref = pggan256
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        image = generator(z).numpy()
    assert image.shape == ref["image"].shape == (2, 3, 256, 256)
    assert relative(image, ref["image"]) <= BAR
    export_onnx(generator, {"z": z}, "image", tmp_path / "pggan.onnx", max_batch=4)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "pggan.onnx"), providers=["CPUExecutionProvider"])
    assert relative(session.run(None, {"z": ref["z"]})[0], ref["image"]) <= BAR


def test_lod_and_foreign_state_dicts_are_refused():
    sd = tiny_generator().state_dict()
    with pytest.raises(CheckpointError, match="lod"):
        build_progan({**sd, "lod": torch.tensor(1.0)}, "g.pt")
    build_progan({**sd, "lod": torch.tensor(0.0)}, "g.pt")  # genforce files carry lod = 0
    with pytest.raises(CheckpointError, match="not a genforce PGGAN"):
        build_progan({"conv1.weight": torch.zeros(1)}, "g.pt")


# --------------------------------------------------------------------------- split and fusion


def fusion_numpy(feats: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """Eq. 7-10 written out: feats [B, M, C, H, W], w0 [C/r, C], w1 [C, C/r] -> [B, C, H, W]."""
    b, m, c = feats.shape[:3]
    out = np.zeros((b, c) + feats.shape[3:])
    for i in range(b):
        alpha = np.zeros((m, c))
        for k in range(m):
            gap = feats[i, k].mean(axis=(1, 2))  # GAP(F_m): [C]
            alpha[k] = 1 / (1 + np.exp(-(w1 @ np.maximum(w0 @ gap, 0))))  # Eq. 7
        beta = np.exp(alpha) / np.exp(alpha).sum(axis=0, keepdims=True)  # Eq. 8: softmax over m per channel
        for k in range(m):
            out[i] += feats[i, k] * beta[k][:, None, None]  # Eq. 9-10: channel-wise product, sum
    return out


def test_dynamic_fusion_is_eq_7_to_10():
    fusion = tiny_fusion(channels=16)
    assert fusion.fc0.weight.shape == (2, 16)  # r = 8
    feats = torch.randn(2, 5, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = fusion(feats).numpy()
    expected = fusion_numpy(
        feats.double().numpy(), fusion.fc0.weight.double().detach().numpy(), fusion.fc1.weight.double().detach().numpy()
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(StaticFusion()(feats).numpy(), feats.mean(1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("fusion", ["dynamic", "static"])
def test_unsplit_generator_equals_post_of_pre_for_one_code(fusion):
    g = tiny_generator()
    multi = MultiCodeProGAN(g, n_codes=1, fusion=tiny_fusion() if fusion == "dynamic" else None).eval()
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(multi(z[:, None]), g(z), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g.post(g.pre(z, 8), 8), g(z), rtol=1e-5, atol=1e-6)
    assert multi.feature_shape == (32, 32, 32)


def test_fused_generator_graph_parity(tmp_path):
    multi = GeneratorGraph(MultiCodeProGAN(tiny_generator(), n_codes=20, fusion=tiny_fusion())).eval()
    z = torch.randn(2, 20, 32, generator=torch.Generator().manual_seed(4))
    export_onnx(multi, {"z": z}, "image", tmp_path / "gen.onnx", max_batch=4)
    report = check_parity(multi, tmp_path / "gen.onnx", {"z": z}, "generator", 1e-4)
    assert report.ok, str(report)
    single = check_parity(multi, tmp_path / "gen.onnx", {"z": z[:1]}, "generator", 1e-4)  # dynamic batch
    assert single.ok, str(single)


# --------------------------------------------------------------------------- bundle


def tiny_ome_checkpoint(path, fusion: bool = True) -> None:
    """An ome_progan file: ResNet-34 (width 8) + FPN (16) + 20 heads, 64 px ProGAN, z of 32."""
    torch.manual_seed(5)
    encoder = OMEEncoder(depth=34, input_nc=6, width=8, fpn_dim=16, code_dim=32, codes_per_level=(4, 6, 10))
    with torch.no_grad():
        for head in encoder.heads:
            head.linear.weight.mul_(0.05)  # small offsets, as a trained encoder's
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_ome_progan(
        path,
        encoder,
        tiny_generator(),
        tiny_fusion() if fusion else None,
        latent_avg=0.5 * torch.randn(32),
        opts={"n_iters_per_batch": 3},
    )


def reference_loop(ckpt, x: torch.Tensor, iterations: int) -> list:
    """OME Algorithm 1 in PyTorch: z_0 = latent_avg, y_0 = G(z_0), z += E(x || pool(y)), y = G(z)."""
    encoder, generator = ckpt.stages[0].encoder, ckpt.generator
    with torch.no_grad():
        z = ckpt.latent_avg[None].repeat(x.shape[0], 1, 1)
        y = generator(z)
        steps = []
        for _ in range(iterations):
            z = z + encoder(torch.cat([x, F.adaptive_avg_pool2d(y, 256)], dim=1))
            y = generator(z)
            steps.append((z.numpy(), y.numpy()))
    return steps


@pytest.fixture(scope="module")
def ome_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ome_progan")
    tiny_ome_checkpoint(tmp / "ome.pt")
    assert (
        build_engines.main(
            ["--checkpoint", str(tmp / "ome.pt"), "--out", str(tmp / "bundle"), "--quiet", "--max-batch", "2"]
        )
        == 0
    )
    return tmp / "ome.pt", tmp / "bundle"


def test_ome_progan_bundle_runs_through_translator(ome_bundle):
    ckpt_path, bundle = ome_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["family"] == "ome_progan" and manifest["latent"] == {"count": 20, "dim": 32}
    assert manifest["schedule"]["stages"] == [{"graph": "encoder_0", "feedback": True, "residual": True}]
    assert manifest["schedule"]["repeat_last"] and manifest["schedule"]["default_iterations"] == 3
    assert "mapping" not in manifest["graphs"]  # ProGAN has no mapping network
    assert manifest["build"]["generator"]["fusion"] == "dynamic"

    ckpt = load_checkpoint(ckpt_path)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    expected = reference_loop(ckpt, torch.from_numpy(x), 2)
    with Translator(bundle, backend="onnxruntime") as t:
        np.testing.assert_allclose(t.bundle.constants()["latent_avg"], ckpt.latent_avg.numpy())  # z_0 repeated M times
        res = t.infer(x, iterations=2, return_steps=True)
        assert res.latents.shape == (1, 20, 32) and res.images.shape == (1, 3, 64, 64)
        for (z_ref, y_ref), step in zip(expected, res.steps):
            assert relative(step.latents, z_ref) <= 1e-4
            assert relative(step.image, y_ref) <= 1e-4
        np.testing.assert_allclose(t.synthesise(res.latents), res.images, rtol=0, atol=1e-5)


def test_static_fusion_and_layout_errors(tmp_path):
    tiny_ome_checkpoint(tmp_path / "static.pt", fusion=False)
    ckpt = load_checkpoint(tmp_path / "static.pt")
    assert isinstance(ckpt.generator.fusion, StaticFusion) and ckpt.generator.config["fusion"] == "static"
    payload = torch.load(tmp_path / "static.pt", weights_only=True)
    del payload["state_dict"]["encoder.heads.19.linear.weight"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="heads.19.linear.weight"):
        load_checkpoint(tmp_path / "broken.pt")
