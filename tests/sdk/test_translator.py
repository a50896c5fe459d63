"""The public API (sdk/translator.py): images in and out, infer's input checks, lifetime."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sdk
from helpers import tiny_bundle as tb
from sdk import BackendError, BundleError, InputError, Translator
from sdk.imaging import to_uint8_image
from sdk.tasks import preprocess


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


_x = tb.random_input


@pytest.fixture(scope="module")
def translator(tiny_bundles):
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        yield t


@pytest.fixture(scope="module")
def sr_bundle(tiny_graphs, tmp_path_factory):
    return tb.write_bundle(
        tmp_path_factory.mktemp("sr") / "sr", tiny_graphs, "iterative", task="super_resolution", factor=8
    )


# --------------------------------------------------------------------------- images


def test_properties(translator):
    assert translator.input_shape == (3, 256, 256)
    assert translator.output_size == tb.R
    assert translator.manifest.family == "restyle_psp"
    assert translator.backend.name == "onnxruntime"


@pytest.mark.parametrize("shape", [(256, 256), (300, 200), (64, 64)])
def test_call_on_uint8_image(translator, shape):
    image = _image(*shape, seed=sum(shape))
    out = translator(image)
    assert out.shape == (tb.R, tb.R, 3) and out.dtype == np.uint8
    x = preprocess(image, translator.manifest)
    np.testing.assert_array_equal(out, to_uint8_image(translator.infer(x[None]).images[0]))
    assert out.std() > 5  # a real image, not a constant


def test_call_with_iterations(translator):
    image = _image(256, 256, 1)
    x = translator.preprocess(image)[None]
    for n in (1, 4):
        np.testing.assert_array_equal(
            translator(image, iterations=n), to_uint8_image(translator.infer(x, iterations=n).images[0])
        )
    assert not np.array_equal(translator(image, iterations=1), translator(image, iterations=4))


def test_call_accepts_pil_gray_and_float(translator):
    rgb = _image(128, 96, 2)
    expected = translator(rgb)
    np.testing.assert_array_equal(translator(Image.fromarray(rgb)), expected)
    np.testing.assert_array_equal(translator(rgb.astype(np.float32) / 255.0), expected)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(translator(gray), translator(np.repeat(gray[:, :, None], 3, axis=2)))


def test_super_resolution_task_options(sr_bundle):
    image = _image(256, 256, 3)
    with Translator(sr_bundle, backend="onnxruntime", threads=1) as t:
        assert t.manifest.task == "super_resolution" and t.manifest.task_options == {"factor": 8}
        default = t(image)
        np.testing.assert_array_equal(default, t(image, factor=8))
        x4 = t.preprocess(image, factor=4)
        np.testing.assert_array_equal(t(image, factor=4), to_uint8_image(t.infer(x4[None]).images[0]))
        assert not np.array_equal(x4, t.preprocess(image))
        with pytest.raises(InputError, match="factor must be one of"):
            t(image, factor=3)
        with pytest.raises(InputError, match="takes no option"):
            t(image, scale=2)


def test_call_rejects_bad_images(translator):
    with pytest.raises(InputError, match="HxWx3"):
        translator(np.zeros((4, 4, 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        translator(np.full((8, 8, 3), 2.0, np.float32))


# --------------------------------------------------------------------------- infer checks


@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 256),
        (1, 1, 3, 256, 256),
        (256, 256),
        (1, 4, 256, 256),
        (1, 6, 256, 256),
        (1, 3, 128, 128),
        (1, 3, 256, 255),
        (3, 256, 255),
    ],
)
def test_infer_wrong_shape(translator, shape):
    with pytest.raises(InputError) as err:
        translator.infer(np.zeros(shape, np.float32))
    assert "[B, 3, 256, 256]" in str(err.value) and str(list(shape))[1:] in str(err.value)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.int32, np.bool_])
def test_infer_int_dtype(translator, dtype):
    with pytest.raises(InputError, match=f"expected float32 input in \\[-1.0, 1.0\\]; got dtype {np.dtype(dtype)}"):
        translator.infer(np.zeros((1, 3, 256, 256), dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_infer_nan_inf(translator, bad):
    x = _x(2, 0)
    x[1, 2, 100, 7] = bad
    with pytest.raises(InputError, match="NaN or Inf"):
        translator.infer(x)


def test_infer_not_an_array(translator):
    with pytest.raises(InputError, match="numpy array; got list"):
        translator.infer(_x(1, 0).tolist())


def test_infer_empty_batch(translator):
    with pytest.raises(InputError, match="empty"):
        translator.infer(np.zeros((0, 3, 256, 256), np.float32))


def test_infer_chw_is_batch_one(translator):
    x = _x(1, 5)
    a = translator.infer(x[0])
    b = translator.infer(x)
    assert a.images.shape == (1, 3, tb.R, tb.R) and a.latents.shape == (1, tb.M, tb.D)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.latents, b.latents)


def test_infer_other_float_dtypes(translator):
    x = _x(1, 6)
    ref = translator.infer(x)
    np.testing.assert_array_equal(translator.infer(x.astype(np.float64)).images, ref.images)
    half = x.astype(np.float16)
    np.testing.assert_array_equal(translator.infer(half).images, translator.infer(half.astype(np.float32)).images)


def test_infer_non_contiguous_and_read_only(translator):
    base = _x(2, 7)
    ref = translator.infer(base)
    flipped = np.ascontiguousarray(base[:, :, ::-1])[:, :, ::-1]  # a negative-stride view of equal values
    assert not flipped.flags.c_contiguous
    np.testing.assert_array_equal(translator.infer(flipped).images, ref.images)
    nhwc = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NCHW view of NHWC memory
    assert not nhwc.flags.c_contiguous
    np.testing.assert_array_equal(translator.infer(nhwc).images, ref.images)
    strided = np.repeat(base, 2, axis=0)[::2]  # every other row of a bigger batch
    np.testing.assert_array_equal(translator.infer(strided).images, ref.images)
    ro = base.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(translator.infer(ro).images, ref.images)
    assert not ro.flags.writeable
    np.testing.assert_array_equal(ro, base)  # the caller's array is not modified


def test_infer_does_not_keep_references(translator):
    """Mutating a returned result or the input after the call changes nothing later."""
    x = _x(1, 8)
    r1 = translator.infer(x, iterations=2, return_steps=True)
    expected = r1.images.copy()
    r1.images[:] = 0
    r1.steps[0].latents[:] = 0
    x[:] = 0
    np.testing.assert_array_equal(translator.infer(_x(1, 8), iterations=2).images, expected)


def test_result_type(translator):
    res = translator.infer(_x(1, 9), iterations=3, return_steps=True)
    assert isinstance(res, sdk.TranslationResult)
    assert res.iterations == 3 and len(res.steps) == 3
    assert all(s.latents.shape == (1, tb.M, tb.D) and s.image.shape == (1, 3, tb.R, tb.R) for s in res.steps)


# --------------------------------------------------------------------------- lifetime


def test_close_then_infer(tiny_bundles):
    t = Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1)
    t.infer(_x(1, 0))
    t.close()
    with pytest.raises(InputError, match="closed"):
        t.infer(_x(1, 0))
    with pytest.raises(InputError, match="closed"):
        t(_image(32, 32, 0))
    t.close()  # idempotent


def test_context_manager_closes(tiny_bundles):
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        assert t.infer(_x(1, 0)).images.shape == (1, 3, tb.R, tb.R)
    with pytest.raises(InputError, match="closed"):
        t.infer(_x(1, 0))


def test_context_manager_closes_on_error(tiny_bundles):
    with pytest.raises(RuntimeError):
        with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
            raise RuntimeError
    with pytest.raises(InputError, match="closed"):
        t.infer(_x(1, 0))


# --------------------------------------------------------------------------- opening


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(BundleError) as err:
        Translator(tmp_path / "engines" / "nope")
    msg = str(err.value)
    assert "build_engines" in msg and str(tmp_path / "engines" / "nope") in msg


def test_unknown_backend(tiny_bundles):
    with pytest.raises(BackendError, match="unknown backend 'tensorflow'"):
        Translator(tiny_bundles["iterative"], backend="tensorflow")


def test_auto_backend_runs(tiny_bundles, translator):
    """``auto`` picks CUDA where onnxruntime has it, else CPU; results match the CPU backend."""
    x = _x(1, 11)
    with Translator(tiny_bundles["iterative"], threads=1) as t:
        got = t.infer(x).images
    np.testing.assert_allclose(got, translator.infer(x).images, rtol=0, atol=1e-4)


def test_verify_false_skips_hashes(make_tiny_bundle):
    path = make_tiny_bundle("single")
    tb.edit_manifest(path, lambda m: m["constants"].__setitem__("sha256", "0" * 64))
    with pytest.raises(BundleError, match="SHA-256"):
        Translator(path, backend="onnxruntime")
    with Translator(path, backend="onnxruntime", threads=1, verify=False) as t:
        assert t.infer(_x(1, 0)).iterations == 1
