"""HRInversion tool (export/tools/hrinversion.py): VGG16 layout, loss, optimisation on CPU.

Random VGG weights and small generators: the loss must fall and the PSNR rise; the CLI writes
latents that ``Translator.synthesise`` accepts (shape checked against the generator).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.models.progan import MultiCodeProGAN, ProGANGenerator
from export.models.stylegan2 import Generator
from export.tools import hrinversion as hr


def small_progan() -> MultiCodeProGAN:
    torch.manual_seed(0)
    return MultiCodeProGAN(ProGANGenerator([16, 16, 16, 8], z_dim=16), n_codes=4, split=4).eval()  # 32 px


def test_vgg16_taps_and_weights_file(tmp_path):
    vgg = hr.VGG16Features()
    assert [type(vgg.features[i]).__name__ for i in hr.FEATURE_LAYERS] == ["Conv2d"] * 5  # pre-ReLU taps
    assert vgg.features[30 - 2].out_channels == 512 and len(vgg.features) == 29
    full = {f"features.{k}": v for k, v in vgg.features.state_dict().items()}
    torch.save({**full, "classifier.0.weight": torch.zeros(1)}, tmp_path / "vgg.pth")  # torchvision keys
    loaded = hr.load_vgg16(tmp_path / "vgg.pth")
    torch.testing.assert_close(loaded.features[28].weight, vgg.features[28].weight)
    del full["features.28.bias"]
    torch.save(full, tmp_path / "bad.pth")
    with pytest.raises(hr.HRInversionError, match="features.28.bias"):
        hr.load_vgg16(tmp_path / "bad.pth")
    with pytest.raises(hr.HRInversionError, match="not downloaded"):
        hr.load_vgg16(tmp_path / "missing.pth")


def test_loss_is_the_weighted_conv_feature_distance():
    vgg = hr.VGG16Features(width_divisor=16).eval()
    loss = hr.VGGConvLoss(vgg)
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1

    def norm(x):
        return ((x + 1) / 2 - torch.tensor(hr.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(hr.IMAGENET_STD).view(
            1, 3, 1, 1
        )

    expected = sum(((lam * (fa - fb)) ** 2).sum() for lam, fa, fb in zip(hr.LAYER_WEIGHTS, vgg(norm(a)), vgg(norm(b))))
    torch.testing.assert_close(loss(a, loss.features(b)), expected)
    assert loss(a, loss.features(a)).item() == 0.0


def test_inversion_lowers_the_loss_and_raises_psnr():
    g = small_progan()
    with torch.no_grad():
        target = g(torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(7)))
    loss = hr.VGGConvLoss(hr.VGG16Features(width_divisor=8).eval().requires_grad_(False))
    res = hr.invert(g, target, loss, torch.zeros(1, 4, 16), steps=40, mse_weight=0.1, progress=False)
    first, last = res.history[0], res.history[-1]
    assert last["perceptual"] < 0.5 * first["perceptual"], (first, last)
    assert last["psnr"] > first["psnr"] + 3.0, (first, last)
    assert res.latents.shape == (1, 4, 16) and res.latents.dtype == np.float32


def test_noise_optimisation_restores_the_generator():
    torch.manual_seed(1)
    g = Generator(16, style_dim=8, n_mlp=1, channel_multiplier=1).eval()
    with torch.no_grad():
        for m in g.modules():
            if type(m).__name__ == "NoiseInjection":
                m.weight.fill_(0.5)
    before = {k: v.clone() for k, v in g.noises.named_buffers()}
    with torch.no_grad():
        target = g(g.sample_latents(1, seed=3))
    loss = hr.VGGConvLoss(hr.VGG16Features(width_divisor=16).eval().requires_grad_(False))
    start = g.mean_latent(100).repeat(g.n_latent, 1)[None]
    res = hr.invert(g, target, loss, start, steps=3, optimize_noise=True, progress=False)
    assert set(res.noises) == set(before) and any(not np.allclose(res.noises[k], before[k]) for k in before)
    for k, v in g.noises.named_buffers():
        torch.testing.assert_close(v, before[k])
        assert not v.requires_grad
    with pytest.raises(hr.HRInversionError, match="start latents"):
        hr.invert(g, target, loss, start[:, :2], steps=1, progress=False)
    with pytest.raises(hr.HRInversionError, match="target must be"):
        hr.invert(g, target[:, :, :4, :4], loss, start, steps=1, progress=False)


def test_cli_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        hr.main(["--help"])
    assert exit_.value.code == 0 and "VGG16" in capsys.readouterr().out
    assert (
        hr.main(
            [
                "--checkpoint",
                str(tmp_path / "none.pt"),
                "--vgg16",
                "v.pth",
                "--image",
                "x.png",
                "--out",
                str(tmp_path / "w.npy"),
                "--quiet",
            ]
        )
        == 1
    )
