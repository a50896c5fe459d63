"""Input validation at the ``Translator`` boundary (issue 5, area 1): the cases that
tests/sdk/test_translator.py, test_loop.py and test_preprocess.py do not already cover.

Every refusal is an ``sdk.InputError`` whose message names what was expected and what came.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_bundle as tb
from sdk import InputError, SdkError, Translator
from sdk.bundle import MAX_ITERATIONS
from sdk.imaging import MAX_IMAGE_SIDE, to_uint8_image

_x = tb.random_input


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _refused(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        fn(*args, **kwargs)
    return str(err.value)


@pytest.fixture(scope="module")
def t(tiny_bundles):
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as tr:
        yield tr


@pytest.fixture(scope="module")
def sr(tiny_graphs, tmp_path_factory):
    path = tb.write_bundle(
        tmp_path_factory.mktemp("sr") / "sr", tiny_graphs, "iterative", task="super_resolution", factor=4
    )
    with Translator(path, backend="onnxruntime", threads=1) as tr:
        yield tr


@pytest.fixture(scope="module")
def seg(tiny_graphs, tmp_path_factory):
    """label_nc = the encoder's 3 input channels: labels 0..2."""
    path = tb.write_bundle(tmp_path_factory.mktemp("seg") / "seg", tiny_graphs, "iterative", task="segmentation")
    with Translator(path, backend="onnxruntime", threads=1) as tr:
        yield tr


# --------------------------------------------------------------------------- infer: arrays


def test_chw_shape_error_reports_the_users_shape(t):
    msg = _refused(t.infer, np.zeros((3, 256, 255), np.float32))
    assert "[3, 256, 255]" in msg and "[1, 3, 256, 255]" not in msg
    assert "[B, 3, 256, 256] or [3, 256, 256]" in msg


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 3, 256, 256)])
def test_infer_rank(t, shape):
    msg = _refused(t.infer, np.zeros(shape, np.float32))
    assert f"got {list(shape)}" in msg and "NCHW" in msg


def test_float64_beyond_float32_range_is_refused(t):
    x = _x().astype(np.float64)
    x[0, 0, 0, 0] = 1e300  # finite in float64, Inf once cast to the graphs' float32
    assert "NaN or Inf" in _refused(t.infer, x)


@pytest.mark.parametrize("lo,hi", [(0.0, 255.0), (-300.0, 0.0), (-1.0, 3.5)])
def test_values_far_outside_the_model_range(t, lo, hi):
    x = np.linspace(lo, hi, tb.C_X * tb.S * tb.S, dtype=np.float32).reshape(1, tb.C_X, tb.S, tb.S)
    msg = _refused(t.infer, x)
    assert f"x has values in [{lo:.4g}, {hi:.4g}]" in msg and "input range [-1, 1]" in msg


def test_values_slightly_outside_the_range_are_accepted(t):
    """Resampling overshoot (a bit beyond [-1, 1]) is the caller's business, not an error."""
    x = np.clip(_x() * 1.5, -3.0, 3.0)
    assert t.infer(x, iterations=1).images.shape == (1, 3, tb.R, tb.R)


@pytest.mark.parametrize("dtype", [np.complex64, object, "U3", "datetime64[s]"])
def test_non_real_dtypes(t, dtype):
    x = np.zeros((1, tb.C_X, tb.S, tb.S), dtype=dtype)
    msg = _refused(t.infer, x)
    assert "expected float32 input" in msg and str(np.dtype(dtype)) in msg


def test_float16_nan_refused(t):
    x = _x().astype(np.float16)
    x[0, 1, 2, 3] = np.nan
    assert "NaN" in _refused(t.infer, x)


@pytest.mark.parametrize("shape", [(0, 3, 256, 256), (3, 0, 256, 256)])
def test_empty_arrays(t, shape):
    msg = _refused(t.infer, np.zeros(shape, np.float32))
    assert str(list(shape)) in msg


# --------------------------------------------------------------------------- iterations


@pytest.mark.parametrize("bad", [MAX_ITERATIONS + 1, 10**9, np.int64(-3), np.True_, None.__class__])
def test_iterations_out_of_range(t, bad):
    msg = _refused(t.infer, _x(), iterations=bad)
    assert f"iterations must be an int in 1..{MAX_ITERATIONS}" in msg and "restyle_psp" in msg


def test_iterations_through_call(t):
    msg = _refused(t, _image(32, 32), iterations=2.0)
    assert "iterations must be an int" in msg and "got 2.0" in msg


def test_max_iterations_runs(t):
    assert t.infer(_x(), iterations=np.int32(12)).iterations == 12


# --------------------------------------------------------------------------- images


def test_image_far_larger_than_the_input_works(t):
    image = _image(1500, 2000, seed=1)
    out = t(image)
    assert out.shape == (tb.R, tb.R, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, to_uint8_image(t.infer(t.preprocess(image)[None]).images[0]))


def test_thin_and_tiny_images_work(t):
    assert t(_image(1, 3000)).shape == (tb.R, tb.R, 3)
    assert t(_image(1, 1)).shape == (tb.R, tb.R, 3)


@pytest.mark.parametrize("shape", [(MAX_IMAGE_SIDE + 1, 16, 3), (16, 100_000, 3), (100_000, 100_000)])
def test_huge_image_refused_before_any_copy(t, shape):
    huge = np.broadcast_to(np.uint8(7), shape)  # no memory behind it: refused before it is copied
    msg = _refused(t, huge)
    assert f"{shape[0]}x{shape[1]} px" in msg and f"at most {MAX_IMAGE_SIDE} px" in msg


def test_huge_pil_image_refused_before_decoding(t):
    msg = _refused(t, Image.new("L", (MAX_IMAGE_SIDE + 1, 2)))
    assert f"2x{MAX_IMAGE_SIDE + 1} px" in msg


def test_rgba_and_read_only_non_contiguous_images(t):
    rgb = _image(64, 48, seed=2)
    expected = t(rgb)
    rgba = np.concatenate([rgb, np.full((64, 48, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(t(rgba), expected)
    np.testing.assert_array_equal(t(Image.fromarray(rgba, "RGBA")), expected)
    view = np.ascontiguousarray(rgb[:, ::-1])[:, ::-1]  # negative strides
    view.flags.writeable = False
    np.testing.assert_array_equal(t(view), expected)


@pytest.mark.parametrize(
    "image,needle",
    [
        (np.zeros((8, 8, 3), np.int16), "unsupported image dtype int16"),
        (np.zeros((8, 8, 3), np.complex64), "unsupported image dtype complex64"),
        (np.zeros((8, 8, 2), np.uint8), "got shape (8, 8, 2)"),
        (np.zeros((8, 0, 3), np.uint8), "empty"),
        (None, "non-numeric"),
        ("no-such-photo.png", "cannot read the image file 'no-such-photo.png': No such file"),
    ],
)
def test_bad_images_through_call(t, image, needle):
    assert needle in _refused(t, image)


# --------------------------------------------------------------------------- task options


@pytest.mark.parametrize("factor", [8.0, 4.5, "8", True])
def test_super_resolution_factor_must_be_an_int(sr, factor):
    msg = _refused(sr, _image(64, 64), factor=factor)
    assert "factor must be an int in (1, 2, 4, 8, 16, 32)" in msg and repr(factor) in msg


def test_super_resolution_numpy_int_factor(sr):
    image = _image(64, 64, seed=3)
    np.testing.assert_array_equal(sr(image, factor=np.int64(8)), sr(image, factor=8))


@pytest.mark.parametrize(
    "labels,needle",
    [
        (np.array([[0, 1], [2, 3]], np.uint8), "found [3] at 1 pixels"),
        (np.array([[0, -1], [2, 1]], np.int8), "found [-1]"),
        (np.array([[0, 1], [1, 2**40]], np.int64), f"found [{2**40}]"),
        (np.array([[True, False]]), "must be integers 0..2; got dtype bool"),
        (np.array([[0.0, 1.0]]), "got dtype float64"),
        (np.zeros((2, 2, 3), np.uint8), "HxW map of integer labels; got shape (2, 2, 3)"),
        (np.zeros((0, 5), np.uint8), "got shape (0, 5)"),
    ],
)
def test_segmentation_labels(seg, labels, needle):
    assert needle in _refused(seg, labels)


def test_segmentation_huge_label_map(seg):
    msg = _refused(seg, np.broadcast_to(np.uint8(1), (MAX_IMAGE_SIDE * 2, 4)))
    assert "label map" in msg and f"at most {MAX_IMAGE_SIDE} px" in msg


def test_segmentation_valid_labels_run(seg):
    labels = np.random.default_rng(0).integers(0, 3, (300, 200)).astype(np.uint8)
    assert seg(labels).shape == (tb.R, tb.R, 3)
    assert seg(labels[:, :, None]).shape == (tb.R, tb.R, 3)  # HxWx1 is HxW


# --------------------------------------------------------------------------- synthesise and mix


@pytest.mark.parametrize("shape", [(tb.M, tb.D + 1), (tb.D,), (1, 1, tb.M, tb.D)])
def test_synthesise_shape_reports_the_users_shape(t, shape):
    msg = _refused(t.synthesise, np.zeros(shape, np.float32))
    assert f"got {list(shape)}" in msg and f"[B, {tb.M}, {tb.D}] or [{tb.M}, {tb.D}]" in msg


@pytest.mark.parametrize(
    "latents,needle",
    [
        ([["a"] * tb.D] * tb.M, "latents must be a float array; got dtype <U1"),
        ([[0.0] * tb.D, [0.0]], "latents must be a float array; got list"),
        (np.full((tb.M, tb.D), 1e300), "NaN or Inf"),
        (np.full((1, tb.M, tb.D), np.nan, np.float32), "NaN or Inf"),
        (np.full((1, tb.M, tb.D), 3.4e38, np.float32), "refuses magnitudes beyond 10000"),  # finite, yet overflows
        (np.zeros((0, tb.M, tb.D), np.float32), "batch size 0 is outside"),
        (np.zeros((tb.MAX_BATCH + 1, tb.M, tb.D), np.float32), f"batch size {tb.MAX_BATCH + 1} is outside"),
    ],
)
def test_synthesise_bad_latents(t, latents, needle):
    assert needle in _refused(t.synthesise, latents)


def test_synthesise_accepts_lists_and_ints(t):
    z = np.zeros((tb.M, tb.D), np.int64)
    np.testing.assert_array_equal(t.synthesise(z.tolist()), t.synthesise(z.astype(np.float32)))


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"latent_mask": 5}, "latent_mask must list layer indices (ints) in 0..3; got 5"),
        ({"latent_mask": ["a"]}, "got ['a']"),
        ({"latent_mask": [1.5]}, "got [1.5]"),
        ({"latent_mask": [tb.M]}, "in 0..3"),
        ({"latent_mask": []}, "got []"),
        ({"latent_mask": None}, "got None"),  # the default (layers 8..) is empty for a 4-layer model
        ({"alpha": "half"}, "alpha must be a number in [0, 1]; got 'half'"),
        ({"alpha": float("nan")}, "got nan"),
        ({"alpha": 1.5}, "got 1.5"),
        ({"seed": -1}, "seed must be a non-negative int or None; got -1"),
        ({"seed": "abc"}, "got 'abc'"),
        ({"inject_latents": "w"}, "inject_latents must be a float array; got dtype <U1"),
        ({"inject_latents": np.zeros((1, 2, tb.D))}, f"[1, {tb.M}, {tb.D}] or [1, {tb.D}]; got [1, 2, {tb.D}]"),
        ({"inject_latents": np.full((1, tb.D), np.inf)}, "must be finite"),
        ({"inject_latents": np.full((1, tb.D), -2e4)}, "inject_latents have values up to 2e+04"),
    ],
)
def test_mix_bad_arguments(t, kwargs, needle):
    kwargs = {"latent_mask": [1, 2], "inject_latents": np.zeros((1, tb.D), np.float32), **kwargs}
    assert needle in _refused(t.mix, _x(), **kwargs)


def test_mix_without_mapping_graph(t):
    """The tiny bundle has no mapping graph: a random code cannot be drawn."""
    msg = _refused(t.mix, _x(), latent_mask=[1])
    assert "no mapping graph" in msg and "inject_latents" in msg


# --------------------------------------------------------------------------- closed


def test_every_method_of_a_closed_translator(tiny_bundles):
    tr = Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1)
    tr.close()
    calls = [
        lambda: tr.infer(_x()),
        lambda: tr(_image(8, 8)),
        lambda: tr.preprocess(_image(8, 8)),
        lambda: tr.synthesise(np.zeros((tb.M, tb.D), np.float32)),
        lambda: tr.mix(_x(), latent_mask=[1], inject_latents=np.zeros((1, tb.D), np.float32)),
    ]
    for call in calls:
        assert "closed" in _refused(call)
    assert issubclass(InputError, SdkError)
