"""Arguments at the ``Translator`` boundary (issue 22, section 3): every constructor and call
argument is type- and range-checked before any work, arrays by their ``.shape`` before any copy,
masked and ragged arrays are refused, images come in any PIL mode or as a file path, and the
translate sample turns every refusal into one line and exit code 2.

Each test names one defect class; every refusal is an ``SdkError`` subclass whose message names
the argument and what it should be.
"""

from __future__ import annotations

import io
import itertools
import logging
import tracemalloc

import numpy as np
import pytest
from PIL import Image

import sdk.translator as translator_module
from helpers import tiny_bundle as tb
from helpers.pil_modes import PIL_MODES
from sdk import BackendError, InputError, Translator
from sdk.arguments import MAX_DEVICE, max_threads
from sdk.device_arrays import device_view
from sdk.imaging import as_rgb_uint8


def _refused(fn, *args, error=InputError, **kwargs) -> str:
    with pytest.raises(error) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)  # one line
    return str(err.value)


def _x(batch: int = 1) -> np.ndarray:
    return tb.random_input(batch)


def _image(h: int = 40, w: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def t(translators):
    return translators["iterative"]


@pytest.fixture(scope="module")
def seg(tiny_graphs, tmp_path_factory):
    """A segmentation bundle: labels 0..2 (label_nc = the 3 input channels)."""
    path = tb.write_bundle(tmp_path_factory.mktemp("seg") / "seg", tiny_graphs, "iterative", task="segmentation")
    with Translator(path, backend="onnxruntime", threads=1) as tr:
        yield tr


@pytest.fixture
def nothing_opened(monkeypatch):
    """Fail the test if the constructor gets as far as opening the bundle or a backend."""

    def boom(*args, **kwargs):
        raise AssertionError("the constructor did work before refusing its arguments")

    monkeypatch.setattr(translator_module, "Bundle", boom)
    monkeypatch.setattr(translator_module, "create_backend", boom)


# --------------------------------------------------------------------------- constructor


@pytest.mark.parametrize("threads", ["2", 1.5, -1, 0, True, np.float64(2.0), 10**5, 2**64, [2]])
def test_threads_outside_one_to_the_bound_are_refused_before_any_work(tiny_bundles, nothing_opened, threads):
    msg = _refused(Translator, tiny_bundles["iterative"], backend="onnxruntime", threads=threads)
    assert f"threads must be an int in 1..{max_threads()}" in msg and "None lets the runtime choose" in msg


def test_threads_bound_is_four_per_core_at_most_1024(monkeypatch):
    monkeypatch.setattr(translator_module.os, "cpu_count", lambda: 2)
    assert max_threads() == 8
    monkeypatch.setattr(translator_module.os, "cpu_count", lambda: 4096)
    assert max_threads() == 1024
    monkeypatch.setattr(translator_module.os, "cpu_count", lambda: None)
    assert max_threads() == 4


def test_numpy_int_threads_open(tiny_bundles):
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=np.int64(2)) as tr:
        assert tr.infer(_x(), iterations=1).images.shape == (1, 3, tb.R, tb.R)


@pytest.mark.parametrize(
    "kwargs,error,needle",
    [
        ({"backend": 3}, BackendError, "unknown backend 3; expected one of"),
        ({"backend": None}, BackendError, "unknown backend None"),
        ({"backend": ["onnxruntime"]}, BackendError, "unknown backend ['onnxruntime']"),
        ({"backend": np.array(["auto", "auto"])}, BackendError, "unknown backend array("),
        ({"verify": "no"}, InputError, "verify must be True or False; got 'no' (str)"),
        ({"verify": 0}, InputError, "verify must be True or False; got 0 (int)"),
        ({"cuda_graphs": "yes"}, InputError, "cuda_graphs must be True or False; got 'yes'"),
        ({"device": "0"}, InputError, f"device (a GPU index) must be an int in 0..{MAX_DEVICE}; got '0'"),
        ({"device": 1.0}, InputError, "got 1.0 (float)"),
        ({"device": -1}, InputError, "got -1 (int)"),
        ({"device": 10**30}, InputError, f"in 0..{MAX_DEVICE}"),
        ({"device": False}, InputError, "got False (bool)"),
    ],
)
def test_constructor_options_are_type_checked_before_any_work(tiny_bundles, nothing_opened, kwargs, error, needle):
    assert needle in _refused(Translator, tiny_bundles["iterative"], error=error, **kwargs)


def test_numpy_bools_are_bools(tiny_bundles):
    with Translator(
        tiny_bundles["iterative"], backend="onnxruntime", threads=1, verify=np.True_, cuda_graphs=np.False_
    ) as tr:
        assert tr.infer(_x(), iterations=1, return_steps=np.False_).steps is None


# --------------------------------------------------------------------------- scalar call arguments


@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None, [True]])
def test_return_steps_must_be_a_bool(t, value):
    assert f"return_steps must be True or False; got {value!r}" in _refused(t.infer, _x(), return_steps=value)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"output": np.array(["host"])}, "output must be 'host' (numpy arrays) or 'device'"),
        ({"early_exit": np.array([0.1])}, "early_exit must be a positive number"),
        ({"iterations": "3"}, "iterations must be an int in 1.."),
        ({"early_exit": 10**400}, "early_exit must be a positive number"),  # float() of it overflows
    ],
)
def test_array_valued_and_odd_scalars_are_refused(t, kwargs, needle):
    assert needle in _refused(t.infer, _x(), **kwargs)


def test_scalar_arguments_are_checked_before_the_input_is_converted(t, monkeypatch):
    """A bad scalar is reported even with an input too large to convert (no copy was made first)."""
    huge = np.broadcast_to(np.float64(0.0), (10**6, tb.C_X, tb.S, tb.S))
    assert "return_steps" in _refused(t.infer, huge, return_steps="no")

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("pre-processing ran before the iterations were checked")

    monkeypatch.setattr(translator_module, "preprocess", no_preprocessing)
    assert "iterations must be an int" in _refused(t, _image(), iterations=0)


def test_mix_checks_every_argument_before_running_the_loop(t, monkeypatch):
    def no_loop(*args, **kwargs):
        raise AssertionError("the loop ran before mix() checked its arguments")

    monkeypatch.setattr(t, "infer", no_loop)
    good = {"latent_mask": [1], "inject_latents": np.zeros((1, tb.D), np.float32)}
    assert "inject_latents must be [1, 4, 8] or [1, 8]" in _refused(
        t.mix, _x(), **{**good, "inject_latents": np.zeros((2, tb.D), np.float32)}
    )
    assert "iterations must be an int" in _refused(t.mix, _x(), iterations=-1, **good)
    assert "seed must be a non-negative int" in _refused(t.mix, _x(), seed=1.5, **good)
    assert "alpha must be a number in [0, 1]" in _refused(t.mix, _x(), alpha=10**400, **good)
    assert "no mapping graph" in _refused(t.mix, _x(), latent_mask=[1])
    assert "latent_mask must list layer indices" in _refused(
        t.mix, _x(), latent_mask=itertools.count(), inject_latents=good["inject_latents"]
    )


# --------------------------------------------------------------------------- shapes before copies


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    except InputError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


@pytest.mark.parametrize("call", ["infer", "synthesise", "init", "inject_latents"])
def test_broadcast_batches_are_refused_by_shape_without_a_copy(t, call):
    """A million-frame broadcast view has no memory; converting it would take 732 GiB (or 1.2 GB of
    latents). It is refused by its batch size, and the refusal allocates almost nothing."""
    z = np.broadcast_to(np.float64(0.0), (10**7, tb.M, tb.D))
    calls = {
        "infer": lambda: t.infer(np.broadcast_to(np.float64(0.0), (10**6, tb.C_X, tb.S, tb.S))),
        "synthesise": lambda: t.synthesise(z),
        "init": lambda: t.infer(_x(), init=(z, np.zeros((1, 3, tb.R, tb.R), np.float32))),
        "inject_latents": lambda: t.mix(_x(), latent_mask=[1], inject_latents=z[:, 0]),
    }
    msg = _refused(calls[call])
    assert (
        "batch size 1000000" in msg
        or "batch size 10000000" in msg
        or "got init latents of shape [10000000" in msg
        or "got [10000000, 8]" in msg
    )
    assert _peak_mib(calls[call]) < 16


@pytest.mark.parametrize("call", ["infer", "synthesise", "init", "inject_latents", "image", "labels"])
def test_masked_arrays_are_refused(t, seg, call):
    """The mask would be silently ignored: refused, with the fix (``.filled``)."""

    def masked(a):
        return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))

    z = np.zeros((1, tb.M, tb.D), np.float32)
    prev = t.infer(_x(), iterations=1)
    calls = {
        "infer": lambda: t.infer(masked(_x())),
        "synthesise": lambda: t.synthesise(masked(z)),
        "init": lambda: t.infer(_x(), init=(masked(prev.latents), prev.images)),
        "inject_latents": lambda: t.mix(_x(), latent_mask=[1], inject_latents=masked(z[:, 0])),
        "image": lambda: t(masked(_image())),
        "labels": lambda: seg(masked(np.zeros((8, 8), np.int64))),
    }
    msg = _refused(calls[call])
    assert "masked array" in msg and ".filled(" in msg


@pytest.mark.parametrize(
    "call,value,needle",
    [
        (
            "image",
            [[1, 2, 3], [1, 2]],
            "image must be a numeric array; got list that numpy cannot make a regular array",
        ),
        ("image", [[[0, 0, 0]], [[0, 0]]], "ragged nested lists?"),
        ("image", np.array([np.zeros((2, 2)), None], dtype=object), "non-numeric array (Python objects)"),
        ("image", b"\x89PNG", "encoded file bytes?"),
        ("synthesise", [[0.0] * tb.D, [0.0]], "latents must be a float array; got list"),
        ("synthesise", np.array([None] * tb.D, dtype=object), "non-numeric"),
        ("image", "broken", "got _BrokenArray that numpy cannot make a regular array of"),
        ("synthesise", "broken", "latents must be a float array; got _BrokenArray"),
    ],
)
def test_ragged_and_object_arrays_are_refused(t, call, value, needle):
    """Also an object whose ``__array__`` raises (:class:`_BrokenArray`): its error is the cause."""
    fn = t if call == "image" else t.synthesise
    assert needle in _refused(fn, _BrokenArray() if isinstance(value, str) and value == "broken" else value)


class _BrokenArray:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("the caller's own bug")


def test_malformed_cuda_array_interface_is_an_input_error():
    class Fake:
        __cuda_array_interface__ = {"shape": ("a",), "typestr": "<f4", "data": (0, False)}

    class Broken:
        __cuda_array_interface__ = 7

    for value in (Fake(), Broken()):
        assert "__cuda_array_interface__" in _refused(device_view, value, 0)


# --------------------------------------------------------------------------- images


def _gray(h: int = 12, w: int = 10) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w), dtype=np.uint8)


@pytest.mark.parametrize("mode", PIL_MODES)
def test_pil_images_of_every_mode_become_rgb(mode):
    """Each mode gives HxWx3 uint8; gray modes their gray values (16-bit ones scaled to 8 bits),
    the others Pillow's own RGB conversion."""
    gray, rgb = _gray(), np.dstack([_gray(), _gray()[::-1], _gray()[:, ::-1]])
    if mode in ("I", "I;16", "I;16B"):
        sixteen = gray.astype(np.uint16) * 257  # 16-bit gray: 255 -> 65535
        image = Image.fromarray(sixteen)  # mode I;16
        if mode == "I":
            image = image.convert("I")
        elif mode == "I;16B":
            image = Image.frombytes("I;16B", image.size, sixteen.astype(">u2").tobytes())
        assert image.mode == mode
        expected = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode in ("L", "LA", "La", "F"):
        image = Image.fromarray(gray).convert("LA" if mode == "La" else mode)
        image = image.convert("La") if mode == "La" else image
        expected = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "1":
        image = Image.fromarray(gray).convert("1")
        expected = np.asarray(image.convert("RGB"))
    else:
        image = Image.fromarray(rgb).convert(mode)
        expected = np.asarray(image.convert("RGB")) if mode not in ("RGBA", "RGBa", "RGBX") else rgb
    out = as_rgb_uint8(image)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_sixteen_bit_png_is_scaled_not_washed_white(tmp_path):
    """A 16-bit gray ramp PNG: PIL's own convert("RGB") clips it to white; the SDK scales it."""
    ramp = np.linspace(0, 65535, 64 * 32).astype(np.uint16).reshape(32, 64)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert np.asarray(Image.open(path).convert("RGB")).mean() > 250  # what scaling prevents
    out = as_rgb_uint8(path)
    np.testing.assert_array_equal(out[:, :, 0], np.round(ramp / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(as_rgb_uint8(ramp), out)  # a uint16 array is 16-bit too


@pytest.mark.parametrize(
    "values,needle",
    [
        (np.full((4, 4), 70000, np.int32), "16-bit values 0..65535 are accepted"),
        (np.full((4, 4), 300.0, np.float32), "a PIL mode F image must be in [0, 255]"),
        (np.full((4, 4), np.nan, np.float32), "NaN or Inf"),
    ],
)
def test_pil_values_out_of_range_are_refused(values, needle):
    assert needle in _refused(as_rgb_uint8, Image.fromarray(values))


def test_a_path_is_read_with_pillow(t, tmp_path):
    rgb = _image(30, 20, seed=5)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    expected = t(rgb)
    np.testing.assert_array_equal(t(str(path)), expected)
    np.testing.assert_array_equal(t(path), expected)
    np.testing.assert_array_equal(t.preprocess(path), t.preprocess(rgb))


def _truncated_png(path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_image(64, 64)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "cannot read the image file '{path}': No such file"),
        ("folder", "cannot read the image file '{path}'"),
        ("text", "cannot read the image file '{path}'"),
        ("truncated", "cannot decode the image file '{path}' (mode RGB)"),
        ("nul", "cannot read the image file"),
        ("huge", "at most 8192 px a side"),
    ],
)
def test_unreadable_image_files_name_the_file(t, tmp_path, case, needle):
    path = tmp_path / "img.png"
    if case == "folder":
        path.mkdir()
    elif case == "text":
        path.write_text("not an image")
    elif case == "truncated":
        _truncated_png(path)
    elif case == "huge":
        Image.new("L", (9000, 1)).save(path)
    arg = "a\0b.png" if case == "nul" else str(path)
    assert needle.format(path=path) in _refused(t, arg)


def test_a_lazily_opened_truncated_pil_image(t, tmp_path):
    path = tmp_path / "cut.png"
    _truncated_png(path)
    with Image.open(path) as image:  # Pillow decodes on first use
        msg = _refused(t, image)
    assert f"cannot decode the PIL image of '{path}'" in msg and "truncated" in msg


def test_label_map_from_a_palette_png(seg, tmp_path):
    """A segmentation label map saved as a palette PNG: its indices are the labels."""
    labels = np.random.default_rng(0).integers(0, 3, (tb.S, tb.S), dtype=np.uint8)
    png = Image.fromarray(labels, "P")
    png.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] * 85 + [0, 0, 0])
    png.save(tmp_path / "labels.png")
    np.testing.assert_array_equal(seg.preprocess(tmp_path / "labels.png"), seg.preprocess(labels.astype(np.int64)))
    assert "label map must be a numeric array" in _refused(seg, [[0, 1], [0]])


# --------------------------------------------------------------------------- the CLI


def test_translate_sample_one_line_and_exit_2(tiny_bundles, tmp_path, caplog):
    from samples import translate

    _truncated_png(tmp_path / "cut.png")
    bundle = str(tiny_bundles["iterative"])
    cases = [
        (["--input", str(tmp_path / "cut.png")], "cannot decode the image file"),
        (["--input", str(tmp_path / "none.png")], "no such file or folder"),
        (["--backend", "bogus"], "unknown backend 'bogus'"),
        (["--output", str(tmp_path / "cut.png" / "out.png")], "cannot write"),  # under a file
        (["--output", str(tmp_path / "out.unknown")], "unknown file extension"),
    ]
    for args, needle in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            rc = translate.main(["--bundle", bundle, "--output", str(tmp_path / "out.png"), *args])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert rc == 2 and len(errors) == 1 and "\n" not in errors[0] and needle in errors[0], (args, errors)
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser, before any work
        translate.main(["--bundle", bundle, "--iterations", "0"])
    assert exit_.value.code == 2
    ok = ["--bundle", bundle, "--backend", "onnxruntime", "--no-compare", "--output", str(tmp_path / "ok.png")]
    assert translate.main(ok) == 0
    assert Image.open(tmp_path / "ok.png").size[1] == tb.R  # the result (beside its input): the model's size
