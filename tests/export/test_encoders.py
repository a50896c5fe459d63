"""Tests for export/models/encoders.py (pSp / ReStyle encoders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.models.encoders import BackboneEncoder, GradualStyleEncoder, build_encoder, infer_encoder_config
from export.models.ir_backbone import BottleneckIR, stage_end_indices
from helpers.shared_data import shared_path  # noqa: E402

LAYOUTS = shared_path("checkpoint_layouts")
VECTORS = shared_path("reference_vectors")


# ----------------------------------------------------------------------------- helpers


def _load_keys(path: Path) -> dict:
    if not path.is_file():
        pytest.skip(f"shared layout file not found: {path} (needs the /work/shared checkout)")
    return json.loads(path.read_text())["keys"]


def _meta_encoder_sd(keys: dict) -> dict[str, torch.Tensor]:
    """Meta tensors for the ``encoder.*`` keys, prefix stripped (as the loader does)."""
    sd = {}
    for key, info in keys.items():
        if not key.startswith("encoder."):
            continue
        shape = info["shape"] if isinstance(info, dict) else info
        if isinstance(info, dict) and "dtype" in info:
            dtype = getattr(torch, info["dtype"])
        else:
            dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        sd[key[len("encoder.") :]] = torch.empty(shape, dtype=dtype, device="meta")
    return sd


def _load_on_meta(sd: dict) -> tuple[dict, torch.nn.Module]:
    config = infer_encoder_config(sd)
    with torch.device("meta"):
        model = build_encoder(config)
    model.load_state_dict(sd, strict=True, assign=True)
    return config, model


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics / affine and PReLU slopes, so eval mode matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.exp(0.1 * torch.randn(m.running_var.shape, generator=g)))
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(0.25 + 0.05 * torch.randn(m.weight.shape, generator=g))
    return model.eval()


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# ----------------------------------------------------------------------------- 1. layouts

CHECKPOINT_CASES = [
    # file, expected config
    (
        LAYOUTS / "psp_ffhq_1024_GradualStyleEncoder.json",
        dict(encoder_type="GradualStyleEncoder", num_layers=50, mode="ir_se", input_nc=3, n_styles=18),
    ),
    (
        LAYOUTS / "restyle_psp_ffhq_1024_BackboneEncoder.json",
        dict(encoder_type="BackboneEncoder", num_layers=50, mode="ir_se", input_nc=6, n_styles=18),
    ),
    (
        LAYOUTS / "restyle_psp_ffhq_1024_GradualStyleEncoder.json",
        dict(encoder_type="GradualStyleEncoder", num_layers=50, mode="ir_se", input_nc=6, n_styles=18),
    ),
    (
        VECTORS / "psp_layout.json",
        dict(encoder_type="GradualStyleEncoder", num_layers=50, mode="ir_se", input_nc=3, n_styles=10),
    ),
    (
        VECTORS / "restyle_psp_layout.json",
        dict(encoder_type="BackboneEncoder", num_layers=50, mode="ir_se", input_nc=6, n_styles=10),
    ),
    (
        VECTORS / "restyle_fpn_layout.json",
        dict(encoder_type="GradualStyleEncoder", num_layers=50, mode="ir_se", input_nc=6, n_styles=10),
    ),
]


@pytest.mark.parametrize("path,expected", CHECKPOINT_CASES, ids=[path.stem for path, _ in CHECKPOINT_CASES])
def test_layout_loads_strict(path, expected):
    sd = _meta_encoder_sd(_load_keys(path))
    config, model = _load_on_meta(sd)
    assert config == expected
    assert not model.training
    # The loaded module has exactly the file's keys and shapes.
    ours = model.state_dict()
    assert set(ours) == set(sd)
    assert all(tuple(ours[k].shape) == tuple(sd[k].shape) for k in sd)


def test_sketch_input_layer_loads_strict():
    """pSp sketch-to-face: the FFHQ layout with the 1-channel input layer swapped in."""
    sd = _meta_encoder_sd(_load_keys(LAYOUTS / "psp_ffhq_1024_GradualStyleEncoder.json"))
    sketch = _meta_encoder_sd(_load_keys(LAYOUTS / "psp_sketch_input_layer.json"))
    assert set(sketch) <= set(sd) and sketch  # only the input layer differs
    sd.update(sketch)
    config, model = _load_on_meta(sd)
    assert config == dict(encoder_type="GradualStyleEncoder", num_layers=50, mode="ir_se", input_nc=1, n_styles=18)
    out = model(torch.empty(2, 1, 256, 256, device="meta"))
    assert out.shape == (2, 18, 512)


# ----------------------------------------------------------------------------- 2. shapes


@pytest.mark.parametrize("mode", ["ir", "ir_se"])
@pytest.mark.parametrize("cls,input_nc", [(GradualStyleEncoder, 3), (BackboneEncoder, 6)])
def test_output_shapes(cls, input_nc, mode):
    torch.manual_seed(0)
    model = cls(num_layers=50, mode=mode, input_nc=input_nc, n_styles=8).eval()
    with torch.no_grad():
        out = model(torch.rand(2, input_nc, 256, 256) * 2 - 1)
    assert out.shape == (2, 8, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # batch items are independent


@pytest.mark.parametrize(
    "num_layers,n_units,taps", [(50, 24, (6, 20, 23)), (100, 49, (15, 45, 48)), (152, 50, (10, 46, 49))]
)
def test_deeper_backbones_and_fpn_taps(num_layers, n_units, taps):
    with torch.device("meta"):
        model = GradualStyleEncoder(num_layers=num_layers, mode="ir_se", n_styles=18).eval()
    assert len(model.body) == n_units
    assert model.tap_indices == taps == stage_end_indices(num_layers)[1:]
    x = torch.empty(2, 3, 256, 256, device="meta")
    c1, c2, c3 = model.backbone_features(x)
    assert c1.shape == (2, 128, 64, 64)
    assert c2.shape == (2, 256, 32, 32)
    assert c3.shape == (2, 512, 16, 16)
    assert model(x).shape == (2, 18, 512)
    # The config round-trips through the state dict.
    config = infer_encoder_config(model.state_dict())
    assert config == dict(
        encoder_type="GradualStyleEncoder", num_layers=num_layers, mode="ir_se", input_nc=3, n_styles=18
    )


def test_input_checks():
    with torch.device("meta"):
        model = BackboneEncoder(num_layers=50, mode="ir", input_nc=6, n_styles=1).eval()
    with pytest.raises(AssertionError, match="input_nc=6"):
        model(torch.zeros(1, 3, 256, 256, device="meta"))
    with pytest.raises(AssertionError, match="256x256"):
        model(torch.zeros(1, 6, 128, 128, device="meta"))


def test_infer_config_errors():
    with pytest.raises(ValueError, match="prefix"):
        infer_encoder_config({"encoder.input_layer.0.weight": torch.empty(64, 3, 3, 3)})
    with pytest.raises(ValueError, match="input_layer"):
        infer_encoder_config({"conv1.weight": torch.empty(1)})
    with torch.device("meta"):
        sd = BackboneEncoder(num_layers=50, mode="ir", n_styles=2).state_dict()
    bad = {k: v for k, v in sd.items() if not k.startswith("body.23.")}
    with pytest.raises(ValueError, match="23 body units"):
        infer_encoder_config(bad)
    bad = {k: v for k, v in sd.items() if not k.startswith("styles.")}
    with pytest.raises(ValueError, match="style heads"):
        infer_encoder_config(bad)
    with pytest.raises(ValueError, match="encoder_type"):
        build_encoder({"encoder_type": "ResNetBackboneEncoder"})
    with pytest.raises(ValueError, match="num_layers"):
        build_encoder({"encoder_type": "BackboneEncoder", "num_layers": 34})


# ----------------------------------------------------------------------------- 3. one unit


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


@pytest.mark.parametrize("in_c,depth,stride", [(64, 64, 2), (64, 128, 2), (128, 128, 1)])
def test_bottleneck_ir_se_matches_explicit_math(in_c, depth, stride):
    torch.manual_seed(1)
    unit = _randomize(BottleneckIR(in_c, depth, stride, use_se=True), seed=2)
    x = torch.randn(2, in_c, 16, 16)

    r = unit.res_layer
    w1, a, w2 = r[1].weight, r[2].weight, r[3].weight
    fc1, fc2 = r[5].fc1.weight, r[5].fc2.weight
    assert fc1.shape == (depth // 16, depth, 1, 1)
    h = _bn(x, r[0])
    h = F.conv2d(h, w1, stride=1, padding=1)
    h = F.prelu(h, a)
    h = F.conv2d(h, w2, stride=stride, padding=1)
    h = _bn(h, r[4])
    s = h.mean(dim=(2, 3), keepdim=True)  # squeeze
    s = torch.sigmoid(F.conv2d(F.relu(F.conv2d(s, fc1)), fc2))
    h = h * s  # excite
    if in_c == depth:
        shortcut = x[:, :, ::stride, ::stride]  # MaxPool2d(1, stride) = subsampling
    else:
        sc = unit.shortcut_layer
        shortcut = _bn(F.conv2d(x, sc[0].weight, stride=stride), sc[1])
    expected = h + shortcut

    with torch.no_grad():
        out = unit(x)
    assert out.shape == (2, depth, 16 // stride, 16 // stride)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 4. ONNX


def test_onnx_export_backbone_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    model = _randomize(BackboneEncoder(num_layers=50, mode="ir", input_nc=6, n_styles=4), seed=4)
    path = tmp_path / "backbone.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model,
        (torch.randn(2, 6, 256, 256),),
        str(path),
        dynamo=True,
        input_names=["x"],
        output_names=["codes"],
        dynamic_shapes={"x": {0: batch}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str), f"batch dimension is not dynamic: {batch_dim!r}"
    for b in (1, 2):
        x = torch.rand(b, 6, 256, 256) * 2 - 1
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"x": x.numpy()})
        assert got.shape == (b, 4, 512)
        err = _rel_err(got, expected)
        print(f"onnxruntime vs torch, B={b}: rel err {err:.2e}")
        assert err < 1e-4


# ----------------------------------------------------------------------------- 5. reference vectors


def _reference_encoder(name: str):
    """(encoder with the synthesised weights, latent_avg, npz) for a reference-vector set."""
    import importlib.util

    layout_path, npz_path = VECTORS / f"{name}_layout.json", VECTORS / f"{name}_reference.npz"
    script = VECTORS / "make_checkpoint.py"
    if not (layout_path.is_file() and npz_path.is_file() and script.is_file()):
        pytest.skip(f"reference vectors for {name!r} not found under {VECTORS}")
    spec = importlib.util.spec_from_file_location("_make_checkpoint", script)
    make_checkpoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_checkpoint)
    layout = json.loads(layout_path.read_text())
    # Each key's weights are seeded from the key name, so synthesising a subset is exact.
    keys = {k: v for k, v in layout["keys"].items() if k.startswith("encoder.") or k == "latent_avg"}
    state = make_checkpoint.synthesise(keys, layout["seed"])
    sd = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    model = build_encoder(infer_encoder_config(sd))
    model.load_state_dict(sd, strict=True)
    return model, state["latent_avg"], np.load(npz_path)


def test_psp_reference_codes():
    """pSp: codes_0 = encoder(input) + latent_avg (the reference's start_from_latent_avg)."""
    model, latent_avg, ref = _reference_encoder("psp")
    with torch.no_grad():
        codes = model(torch.from_numpy(ref["input"])) + latent_avg
    assert _rel_err(codes.numpy(), ref["codes_0"]) < 1e-5


@pytest.mark.parametrize("name", ["restyle_psp", "restyle_fpn"])
def test_restyle_reference_codes(name):
    """ReStyle step 0: codes_0 = latent_avg + encoder(cat(input, avg_image)).

    (Later steps feed back generator images; the encoder math is the same, so one step keeps
    the test fast.)
    """
    model, latent_avg, ref = _reference_encoder(name)
    x = torch.cat([torch.from_numpy(ref["input"]), torch.from_numpy(ref["avg_image"])], dim=1)
    with torch.no_grad():
        codes = latent_avg.unsqueeze(0) + model(x)
    assert _rel_err(codes.numpy(), ref["codes_0"]) < 1e-5
