"""Pre-processing (sdk/imaging.py, sdk/tasks.py) against PIL and torch re-implementations of
what pSp's training/inference transforms do (torchvision is not needed: its ``Resize`` on a
PIL image is ``Image.resize(..., BILINEAR)``, ``ToTensor`` is ``/255`` to CHW and
``ToPILImage`` on a float tensor is ``mul(255).byte()``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import tiny_bundle as tb
from sdk import InputError
from sdk.bundle import Manifest
from sdk.imaging import as_rgb_uint8, bicubic_downsample, bicubic_kernel, resize_bilinear, to_uint8_image
from sdk.tasks import SR_FACTORS, preprocess

LEVEL = 2.0 / 255.0  # one uint8 level in the model's [-1, 1] range
OBSERVED: dict = {}  # filled by the tests; printed at the end of the module (pytest -s)


# --------------------------------------------------------------------------- references


class BicubicDownSample(torch.nn.Module):
    """pSp's ``datasets/augmentations.BicubicDownSample`` (from PULSE), CPU, NCHW, RGB."""

    @staticmethod
    def bicubic_kernel(x, a=-0.50):
        abs_x = torch.abs(x)
        if abs_x <= 1.0:
            return (a + 2.0) * torch.pow(abs_x, 3.0) - (a + 3.0) * torch.pow(abs_x, 2.0) + 1
        elif 1.0 < abs_x < 2.0:
            return a * torch.pow(abs_x, 3) - 5.0 * a * torch.pow(abs_x, 2.0) + 8.0 * a * abs_x - 4.0 * a
        return torch.tensor(0.0)

    def __init__(self, factor=4, padding="reflect"):
        super().__init__()
        self.factor = factor
        size = factor * 4
        k = torch.tensor(
            [self.bicubic_kernel((i - torch.floor(torch.tensor(size / 2)) + 0.5) / factor) for i in range(size)],
            dtype=torch.float32,
        )
        k = k / torch.sum(k)
        self.k1 = torch.cat([torch.reshape(k, (1, 1, size, 1))] * 3, dim=0)
        self.k2 = torch.cat([torch.reshape(k, (1, 1, 1, size))] * 3, dim=0)
        self.padding = padding

    def forward(self, x):
        filter_height = filter_width = self.factor * 4
        stride = self.factor
        pad_along_height = max(filter_height - stride, 0)
        pad_along_width = max(filter_width - stride, 0)
        pad_top = pad_along_height // 2
        pad_bottom = pad_along_height - pad_top
        pad_left = pad_along_width // 2
        pad_right = pad_along_width - pad_left
        x = F.pad(x, (0, 0, pad_top, pad_bottom), self.padding)
        x = F.conv2d(input=x, weight=self.k1, stride=(stride, 1), groups=3)
        x = F.pad(x, (pad_left, pad_right, 0, 0), self.padding)
        x = F.conv2d(input=x, weight=self.k2, stride=(1, stride), groups=3)
        return x


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_pil_image(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.mul(255).byte().permute(1, 2, 0).numpy(), "RGB")


def normalize(t: torch.Tensor) -> torch.Tensor:
    return (t - 0.5) / 0.5


def psp_super_resolution(image: np.ndarray, factor: int) -> np.ndarray:
    """pSp's SuperResTransforms inference pipeline with a fixed factor:
    Resize((256, 256)) → BilinearResize([factor]) → Resize((256, 256)) → ToTensor → Normalize."""
    img = Image.fromarray(image, "RGB").resize((256, 256), Image.BILINEAR)
    lr = BicubicDownSample(factor)(to_tensor(img)[None])[0].clamp(0, 1)
    img = to_pil_image(lr).resize((256, 256), Image.BILINEAR)
    return normalize(to_tensor(img)).numpy()


def psp_inversion(image: np.ndarray) -> np.ndarray:
    """Resize((256, 256)) → ToTensor → Normalize."""
    return normalize(to_tensor(Image.fromarray(image, "RGB").resize((256, 256), Image.BILINEAR))).numpy()


def test_bicubic_reference_matches_pulse_kernel_formula():
    """Sanity of the reference itself: factor 1 taps of a = -0.5 bicubic at ±0.5, ±1.5."""
    ref = BicubicDownSample(1).k1[0, 0, :, 0].numpy()
    raw = np.array([-0.0625, 0.5625, 0.5625, -0.0625])
    np.testing.assert_allclose(ref, raw / raw.sum(), atol=1e-7)


def _photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with both smooth structure and pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack(
        [np.sin(2 * math.pi * (3 * xx + c)) * np.cos(2 * math.pi * (2 * yy - c)) for c in (0, 0.3, 0.6)], -1
    )
    img = 127.5 + 90 * base + rng.normal(0, 20, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def report_observed():
    yield
    if OBSERVED:
        print("\nobserved pre-processing differences:")
        for k, v in OBSERVED.items():
            print(f"  {k}: " + ", ".join(f"{n}={x:.3g}" for n, x in v.items()))


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    "src,dst",
    [
        ((512, 512), (256, 256)),
        ((300, 300), (256, 256)),
        ((64, 64), (256, 256)),
        ((300, 420), (256, 256)),
        ((256, 256), (100, 200)),
    ],
)
def test_resize_bilinear_matches_pil_float(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    img = (rng.random(src) * 255).astype(np.float32)
    ours = resize_bilinear(img, dst)
    pil = np.asarray(Image.fromarray(img, "F").resize((dst[1], dst[0]), Image.BILINEAR))
    assert ours.shape == pil.shape == dst and ours.dtype == np.float32
    err = float(np.abs(ours - pil).max())
    OBSERVED[f"resize_bilinear {src}->{dst} vs PIL 'F' (0..255)"] = {"max": err}
    assert err < 1e-3


def test_resize_bilinear_batched_and_identity():
    rng = np.random.default_rng(1)
    img = rng.random((2, 3, 40, 30)).astype(np.float32)
    out = resize_bilinear(img, (20, 60))
    assert out.shape == (2, 3, 20, 60)
    np.testing.assert_allclose(out[1, 2], resize_bilinear(img[1, 2], (20, 60)), atol=1e-6)
    same = resize_bilinear(img, (40, 30))
    np.testing.assert_array_equal(same, img)
    assert same is not img
    # constant images stay constant (weights are normalised, edges included)
    np.testing.assert_allclose(resize_bilinear(np.full((37, 53), 0.7, np.float32), (256, 256)), 0.7, atol=1e-6)


@pytest.mark.parametrize("factor", SR_FACTORS)
def test_bicubic_downsample_matches_psp(factor):
    rng = np.random.default_rng(factor)
    img = rng.random((3, 256, 256)).astype(np.float32)
    ours = bicubic_downsample(img, factor)
    ref = BicubicDownSample(factor)(torch.from_numpy(img)[None])[0].numpy()
    assert ours.shape == ref.shape == (3, 256 // factor, 256 // factor)
    np.testing.assert_allclose(bicubic_kernel(factor), BicubicDownSample(factor).k1[0, 0, :, 0].numpy(), atol=1e-7)
    err = float(np.abs(ours - ref).max())
    OBSERVED[f"bicubic_downsample x{factor} vs torch"] = {"max": err}
    assert err < 1e-5


# --------------------------------------------------------------------------- tasks


def _manifest(task: str, factor: int = 4) -> Manifest:
    """A valid manifest for the toy model with the given task (parsed, never written)."""
    m = {
        "schema_version": 1,
        "family": "psp",
        "task": {"name": task, "options": {"factor": factor}},
        "input": {"channels": 3, "size": 256, "range": [-1.0, 1.0]},
        "output": {"channels": 3, "size": tb.R},
        "latent": {"count": tb.M, "dim": tb.D},
        "batch": {"min": 1, "max": 1},
        "graphs": {
            "enc": {
                "file": "e.onnx",
                "sha256": "0",
                "inputs": [{"name": "x", "role": "condition", "shape": ["batch", 3, 256, 256], "dtype": "float32"}],
                "outputs": [{"name": "z", "role": "latents", "shape": ["batch", tb.M, tb.D], "dtype": "float32"}],
            },
            "generator": {
                "file": "g.onnx",
                "sha256": "0",
                "inputs": [{"name": "z", "role": "latents", "shape": ["batch", tb.M, tb.D], "dtype": "float32"}],
                "outputs": [{"name": "y", "role": "image", "shape": ["batch", 3, tb.R, tb.R], "dtype": "float32"}],
            },
        },
        "constants": {"file": "c.npz", "sha256": "0"},
        "schedule": {
            "stages": [{"graph": "enc", "feedback": False, "residual": False}],
            "repeat_last": False,
            "default_iterations": 1,
        },
    }
    return Manifest.parse(m)


@pytest.mark.parametrize("factor", SR_FACTORS)
def test_super_resolution_matches_psp_pipeline(factor):
    image = _photo_like(300, 280, seed=factor)
    ours = preprocess(image, _manifest("super_resolution"), factor=factor)
    ref = psp_super_resolution(image, factor)
    assert ours.shape == ref.shape == (3, 256, 256) and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    OBSERVED[f"super_resolution x{factor} vs pSp (PIL+torch)"] = {
        "mean": float(diff.mean()),
        "mean_levels": float(diff.mean() / LEVEL),
        "max": float(diff.max()),
        "max_levels": float(diff.max() / LEVEL),
        "frac_differing": float((diff > 1e-6).mean()),
    }
    assert diff.mean() < LEVEL
    assert diff.max() <= 2 * LEVEL + 1e-6
    # the outputs are on the uint8 grid of the model range, like pSp's
    levels = (ours + 1) / LEVEL
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


def test_super_resolution_default_factor_from_manifest():
    image = _photo_like(256, 256, seed=3)
    got = preprocess(image, _manifest("super_resolution", factor=8))
    np.testing.assert_array_equal(got, preprocess(image, _manifest("super_resolution", factor=4), factor=8))
    assert not np.array_equal(got, preprocess(image, _manifest("super_resolution", factor=8), factor=4))


@pytest.mark.parametrize("factor", [3, 0, 64])
def test_super_resolution_bad_factor(factor):
    with pytest.raises(InputError, match="factor must be one of"):
        preprocess(_photo_like(256, 256, 0), _manifest("super_resolution"), factor=factor)


def test_unknown_task_option():
    with pytest.raises(InputError, match=r"takes no option\(s\) \['factor'\]"):
        preprocess(_photo_like(256, 256, 0), _manifest("inversion"), factor=4)


def test_unknown_task():
    with pytest.raises(InputError, match="no pre-processing for task 'colorization'"):
        preprocess(_photo_like(256, 256, 0), _manifest("colorization"))


@pytest.mark.parametrize("size", [(256, 256), (512, 384), (100, 180)])
def test_inversion_matches_pil(size):
    image = _photo_like(*size, seed=sum(size))
    ours = preprocess(image, _manifest("inversion"))
    ref = psp_inversion(image)
    assert ours.shape == (3, 256, 256) and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    OBSERVED[f"inversion {size} vs PIL"] = {
        "mean_levels": float(diff.mean() / LEVEL),
        "max_levels": float(diff.max() / LEVEL),
        "frac_differing": float((diff > 1e-6).mean()),
    }
    assert diff.mean() < LEVEL / 4
    assert diff.max() <= LEVEL + 1e-6
    if size == (256, 256):
        np.testing.assert_allclose(ours, image.transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)


# --------------------------------------------------------------------------- as_rgb_uint8


def test_rgb_uint8_passthrough():
    img = _photo_like(5, 7, 0)
    out = as_rgb_uint8(img)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, img)


def test_gray_hw_and_hw1():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for arr in (gray, gray[:, :, None]):
        out = as_rgb_uint8(arr)
        assert out.shape == (3, 4, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_drops_alpha():
    rgba = np.dstack([_photo_like(4, 4, 1), np.zeros((4, 4), np.uint8)])
    np.testing.assert_array_equal(as_rgb_uint8(rgba), rgba[:, :, :3])


def test_float_01_scaled_and_rounded():
    f = np.array([[[0.0, 0.5, 1.0], [0.2, 0.002, 0.998]]], dtype=np.float32)
    np.testing.assert_array_equal(as_rgb_uint8(f), [[[0, 128, 255], [51, 1, 254]]])
    assert as_rgb_uint8(f.astype(np.float64)).dtype == np.uint8


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_pil_input(mode):
    rgb = _photo_like(6, 9, 2)
    img = Image.fromarray(rgb, "RGB").convert(mode)
    out = as_rgb_uint8(img)
    assert out.shape == (6, 9, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA"])
def test_pil_other_modes_converted_to_rgb(mode):
    """Palette, CMYK and gray+alpha images: the PIL RGB conversion, not raw indices or ink (16-bit
    images are scaled, not clipped as PIL's conversion does: tests/sdk/test_translator_arguments.py)."""
    img = Image.fromarray(_photo_like(6, 9, 3), "RGB").convert(mode)
    out = as_rgb_uint8(img)
    assert out.shape == (6, 9, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


def test_non_contiguous_input():
    img = _photo_like(8, 8, 4)
    out = as_rgb_uint8(img[:, ::-1])
    np.testing.assert_array_equal(out, img[:, ::-1])
    assert out.flags.c_contiguous


@pytest.mark.parametrize(
    "arr,needle",
    [
        (np.full((2, 2, 3), 1.5, np.float32), "must be in [0, 1]"),
        (np.full((2, 2, 3), -0.1, np.float32), "must be in [0, 1]"),
        (np.array([[[0.1, np.nan, 0.2]]], np.float32), "NaN"),
        (np.array([[[0.1, np.inf, 0.2]]], np.float32), "NaN or Inf"),
        (np.zeros((2, 2, 2, 3), np.uint8), "got shape (2, 2, 2, 3)"),
        (np.zeros((4,), np.uint8), "got shape (4,)"),
        (np.zeros((2, 2, 2), np.uint8), "got shape (2, 2, 2)"),
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((0,), np.uint8), "empty"),
        (np.zeros((2, 2, 3), np.int64), "unsupported image dtype int64"),
        (np.array([["a"]], dtype=object), "non-numeric"),
    ],
)
def test_as_rgb_uint8_errors(arr, needle):
    with pytest.raises(InputError) as err:
        as_rgb_uint8(arr)
    assert needle in str(err.value)


def test_to_uint8_image():
    chw = np.array([-2.0, -1.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 1, 5).repeat(3, 0)
    out = to_uint8_image(chw)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 128, 255, 255])
