"""Tests for export/models/stylegan2.py: modulated conv forms, upfirdn2d, layouts, ONNX export."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.models.stylegan2 import Generator, ModulatedConv2d, upfirdn2d
from helpers.shared_data import shared_path


def shared_dir() -> Path:
    """The folder holding checkpoint_layouts/ and reference_vectors/ (../shared or tests/data)."""
    return shared_path("reference_vectors").parent


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------- naive references


def naive_upfirdn2d(
    x: np.ndarray, k: np.ndarray, up: int, down: int, px0: int, px1: int, py0: int, py1: int
) -> np.ndarray:
    """Zero insertion, explicit pad/crop by index arithmetic, explicit flipped-kernel sum, stride."""
    n, c, h, w = x.shape
    ups = np.zeros((n, c, h * up, w * up), dtype=np.float64)
    ups[:, :, ::up, ::up] = x
    hp, wp = h * up + py0 + py1, w * up + px0 + px1
    padded = np.zeros((n, c, hp, wp), dtype=np.float64)
    for i in range(hp):
        for j in range(wp):
            si, sj = i - py0, j - px0
            if 0 <= si < h * up and 0 <= sj < w * up:
                padded[:, :, i, j] = ups[:, :, si, sj]
    kh, kw = k.shape
    kf = k[::-1, ::-1]
    oh, ow = hp - kh + 1, wp - kw + 1
    full = np.zeros((n, c, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            full[:, :, i, j] = (padded[:, :, i : i + kh, j : j + kw] * kf).sum(axis=(2, 3))
    return full[:, :, ::down, ::down]


def grouped_modconv_reference(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Per-sample modulated weights, groups=batch; the blur done by naive_upfirdn2d."""
    b, cin, h, w = x.shape
    cout, k = conv.out_channel, conv.kernel_size
    s = F.linear(style, conv.modulation.weight * conv.modulation.scale, conv.modulation.bias * conv.modulation.lr_mul)
    weight = conv.scale * conv.weight * s.view(b, 1, cin, 1, 1)  # [B, out, in, k, k]
    if conv.demodulate:
        weight = weight / torch.sqrt((weight**2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    xg = x.reshape(1, b * cin, h, w)
    if conv.upsample:
        wt = weight.permute(0, 2, 1, 3, 4).reshape(b * cin, cout, k, k)
        out = F.conv_transpose2d(xg, wt, stride=2, groups=b).reshape(b, cout, 2 * h + 1, 2 * w + 1)
        (p0, p1), kern = conv.blur.pad, conv.blur.kernel.numpy()
        return torch.from_numpy(naive_upfirdn2d(out.numpy(), kern, 1, 1, p0, p1, p0, p1)).float()
    out = F.conv2d(xg, weight.reshape(b * cout, cin, k, k), padding=k // 2, groups=b)
    return out.reshape(b, cout, h, w)


# --------------------------------------------------------------------------- 1. modulated conv


@pytest.mark.parametrize(
    "kernel_size,upsample,demodulate", [(3, False, True), (3, True, True), (1, False, False), (3, False, False)]
)
def test_unfused_modconv_equals_grouped_reference(kernel_size, upsample, demodulate):
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, kernel_size, 16, demodulate=demodulate, upsample=upsample).eval()
    with torch.no_grad():
        conv.modulation.bias.normal_(1.0, 0.3)
        x, style = torch.randn(3, 8, 7, 7), torch.randn(3, 16)
        ref = grouped_modconv_reference(conv, x, style)
        out = conv(x, style)
        conv.fused = True
        out_fused = conv(x, style)
    assert out.shape == ref.shape == (3, 6, 14 if upsample else 7, 14 if upsample else 7)
    scale = ref.abs().max().item()
    assert scale > 0.1
    assert (out - ref).abs().max().item() < 1e-5 * scale
    assert (out_fused - ref).abs().max().item() < 1e-5 * scale


# --------------------------------------------------------------------------- 2. upfirdn2d


@pytest.mark.parametrize(
    "up,down,pad",
    [(2, 1, (2, 1)), (1, 2, (1, 1)), (2, 1, (-1, 2)), (1, 1, (-2, 3)), (2, 2, (1, -1, 0, 2)), (1, 2, (-1, -1))],
)
def test_upfirdn2d_equals_naive(up, down, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    kernel = rng.standard_normal((4, 3)).astype(np.float32)  # asymmetric: checks the flip
    px0, px1, py0, py1 = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else pad
    ref = naive_upfirdn2d(x, kernel, up, down, px0, px1, py0, py1)
    out = upfirdn2d(torch.from_numpy(x), torch.from_numpy(kernel), up=up, down=down, pad=pad).numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-5 * np.abs(ref).max()


# --------------------------------------------------------------------------- 3. whole generator


def small_generator(size: int = 32) -> Generator:
    torch.manual_seed(0)
    g = Generator(size, style_dim=64, n_mlp=2, channel_multiplier=1).eval()
    with torch.no_grad():  # non-trivial noise weights and biases, so the noise path matters
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias"):
                p.normal_(0.0, 0.2)
    return g


def test_generator_fused_equals_unfused_and_is_deterministic():
    g = small_generator(32)
    latents = g.sample_latents(3, seed=1) + 0.1 * torch.randn(3, g.n_latent, g.style_dim)
    with torch.no_grad():
        a = g(latents)
        a2 = g(latents)
        b = g.set_fused(True)(latents)
        g.set_fused(False)
        single = g(latents[1:2])
    assert a.shape == (3, 3, 32, 32) and g.n_latent == 8
    assert torch.equal(a, a2)
    assert rel_err(b, a) < 1e-5
    assert rel_err(single, a[1:2]) < 1e-5  # batch-independent
    assert a.abs().max().item() > 0.1


def test_generator_noise_buffers_used():
    g = small_generator(16)
    latents = g.sample_latents(2, seed=3)
    with torch.no_grad():
        a = g(latents)
        g.noises.noise_3.mul_(2.0)
        b = g(latents)
    assert (a - b).abs().max().item() > 1e-3


def test_mapping_latents_and_shape_checks():
    g = small_generator(16)
    m1, m2 = g.mean_latent(256, seed=0), g.mean_latent(256, seed=0)
    assert m1.shape == (1, 64) and torch.equal(m1, m2)
    assert not torch.equal(m1, g.mean_latent(256, seed=1))
    w = g.sample_latents(2, seed=5)
    assert w.shape == (2, g.n_latent, 64) and torch.equal(w[:, 0], w[:, -1])
    with torch.no_grad():
        assert torch.allclose(w[:, 0], g.mapping(torch.randn(2, 64, generator=torch.Generator().manual_seed(5))))
    wt = g.sample_latents(2, seed=5, truncation=0.5, truncation_latent=m1)
    assert torch.allclose(wt, m1 + 0.5 * (w - m1), atol=1e-6)
    with pytest.raises(ValueError, match="W\\+"):
        g(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="\\[B, 6, 64\\]"):
        g(torch.zeros(2, 5, 64))


# --------------------------------------------------------------------------- 4. checkpoint layouts


def meta_state_dict(shapes: dict) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def load_on_meta(sd: dict) -> Generator:
    cfg = Generator.config_from_state_dict(sd)
    with torch.device("meta"):
        g = Generator(**cfg)
    g.load_state_dict(sd, strict=True, assign=True)
    assert set(g.state_dict()) == set(sd)
    for k, v in g.state_dict().items():
        assert tuple(v.shape) == tuple(sd[k].shape), k
    return g


def test_rosinality_ffhq_1024_layout_loads_strict():
    layout = json.loads((shared_dir() / "checkpoint_layouts" / "rosinality_stylegan2_ffhq_1024.json").read_text())
    sd = meta_state_dict(layout["keys"])
    assert Generator.config_from_state_dict(sd) == {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}
    g = load_on_meta(sd)
    assert g.n_latent == 18 and g.num_layers == 17 and len(sd) == len(layout["keys"])


def test_psp_decoder_layout_loads_strict():
    layout = json.loads((shared_dir() / "reference_vectors" / "psp_layout.json").read_text())
    shapes = {k[len("decoder.") :]: v["shape"] for k, v in layout["keys"].items() if k.startswith("decoder.")}
    sd = meta_state_dict(shapes)
    assert Generator.config_from_state_dict(sd) == {"size": 64, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}
    assert load_on_meta(sd).n_latent == 10


@pytest.mark.parametrize("size,cm", [(128, 1), (256, 2), (16, 2)])
def test_config_round_trip(size, cm):
    with torch.device("meta"):
        g = Generator(size, style_dim=32, n_mlp=3, channel_multiplier=cm)
    cfg = Generator.config_from_state_dict(g.state_dict())
    assert cfg == {"size": size, "style_dim": 32, "n_mlp": 3, "channel_multiplier": cm}


# --------------------------------------------------------------------------- 5. ONNX export


def test_onnx_export_dynamic_batch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    g = small_generator(16)
    path = tmp_path / "g.onnx"
    torch.onnx.export(
        g,
        (g.sample_latents(2, seed=0),),
        str(path),
        dynamo=True,
        input_names=["latents"],
        output_names=["image"],
        dynamic_shapes={"latents": {0: torch.export.Dim("batch", min=1, max=64)}},
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert not [op for op in ops if "Random" in op or "Bernoulli" in op or "Multinomial" in op], ops
    assert {"Conv", "ConvTranspose"} <= ops
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        latents = g.sample_latents(batch, seed=10 + batch)
        with torch.no_grad():
            ref = g(latents).numpy()
        out = sess.run(None, {"latents": latents.numpy()})[0]
        assert out.shape == (batch, 3, 16, 16)
        assert rel_err(out, ref) < 1e-4


# --------------------------------------------------------------------------- 6. public reference vectors


def test_matches_public_reference_images():
    """The pSp / ReStyle reference images (rosinality code, CPU) are this generator's output, pooled to 256."""
    ref_dir = shared_dir() / "reference_vectors"
    spec = importlib.util.spec_from_file_location("make_checkpoint", ref_dir / "make_checkpoint.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    for name, pairs in (("psp", [("codes_0", "image_0")]), ("restyle_psp", [("latent_avg", "avg_image")])):
        layout = json.loads((ref_dir / f"{name}_layout.json").read_text())
        keys = {k: v for k, v in layout["keys"].items() if k.startswith("decoder.") or k == "latent_avg"}
        state = mk.synthesise(keys, layout["seed"])  # seeds depend on the full (prefixed) key
        latent_avg = state.pop("latent_avg")
        sd = {k[len("decoder.") :]: v for k, v in state.items()}
        g = Generator(**Generator.config_from_state_dict(sd))
        g.load_state_dict(sd, strict=True)
        g.eval()
        ref = np.load(ref_dir / f"{name}_reference.npz")
        for code_key, image_key in pairs:
            codes = latent_avg[None] if code_key == "latent_avg" else torch.from_numpy(ref[code_key])
            with torch.no_grad():
                image = F.adaptive_avg_pool2d(g(codes), (256, 256)).numpy()
            assert rel_err(image, ref[image_key]) < 1e-4, (name, image_key)


def test_epsilons_survive_onnx_export(tmp_path):
    """PixelNorm of a zero z is 0 in PyTorch (rsqrt(0 + 1e-8) * 0); an exporter that drops the
    epsilon gives NaN. The mapping graph must keep it."""
    import onnxruntime as ort

    from export.onnx.graphs import MappingGraph
    from export.onnx.tracing import export_onnx

    g = Generator(16, style_dim=32, n_mlp=2).eval()
    path = tmp_path / "mapping.onnx"
    export_onnx(MappingGraph(g), {"sample": torch.randn(2, 32)}, "w", path, max_batch=4)
    out = ort.InferenceSession(str(path)).run(None, {"sample": np.zeros((1, 32), np.float32)})[0]
    with torch.no_grad():
        ref = g.mapping(torch.zeros(1, 32)).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
