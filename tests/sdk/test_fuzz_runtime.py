"""Property-based tests (issue 5): mutated manifests give ``BundleError`` or a working bundle,
never another exception; arbitrary arrays given to a ``Translator`` give an ``SdkError`` or a
valid result, never another exception. Run time is bounded by ``max_examples``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import tiny_bundle as tb
from helpers.pil_modes import PIL_MODES
from sdk import BundleError, SdkError, Translator
from sdk.bundle import MANIFEST, Bundle, Manifest

SETTINGS = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "batch",
            "latents",
            "image",
            "condition",
            "float16",
            "generator",
            "encoder",
            "../x",
            "/etc",
            "constants.npz",
            "encoder.onnx",
            "",
            ".",
            "fp16",
            "inversion",
            "super_resolution",
        ]
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def outcome(fn, *args, one_line: bool = False, **kwargs):
    """``fn(*args, **kwargs)``, or None where it raised an :class:`SdkError` with a message (on one
    line where ``one_line``); either way recorded as a hypothesis event. Any other exception fails."""
    try:
        result = fn(*args, **kwargs)
    except SdkError as e:
        assert str(e) and not (one_line and "\n" in str(e))
        event(type(e).__name__)
        return None
    event("ran")
    return result


def _paths(node, prefix=()):
    """Every path (tuple of keys and indices) into a JSON tree."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_manifests(draw, base: dict):
    m = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(m) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["drop", "replace", "replace"]))
        if action == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return m


@pytest.fixture(scope="module")
def base_manifest(tiny_bundles) -> dict:
    return json.loads((tiny_bundles["two_stage"] / MANIFEST).read_text())


@pytest.fixture(scope="module")
def scratch_bundle(tiny_bundles, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(tiny_bundles["two_stage"], path)
    return path


def test_mutated_manifests_parse_or_raise_bundle_error(base_manifest):
    @settings(max_examples=400, **SETTINGS)
    @given(mutated_manifests(base_manifest))
    def check(raw):
        try:
            Manifest.parse(raw)
            event("parsed")
        except BundleError as e:
            assert str(e)  # every refusal says something

    check()


def test_mutated_manifests_through_bundle_and_translator(base_manifest, scratch_bundle):
    """Written to disk (NaN, Inf and huge ints as JSON allows), opened, and when it opens, run."""
    x = np.zeros((1, tb.C_X, tb.S, tb.S), np.float32)

    @settings(max_examples=60, **SETTINGS)
    @given(mutated_manifests(base_manifest))
    def check(raw):
        (scratch_bundle / MANIFEST).write_text(json.dumps(raw))
        try:
            Bundle(scratch_bundle)
            event("bundle opened")
            with Translator(scratch_bundle, backend="onnxruntime", threads=1) as t:
                res = t.infer(x)
                assert res.images.shape[1:] == (3, tb.R, tb.R)
                event("ran")
        except SdkError as e:
            assert str(e)

    check()


# --------------------------------------------------------------------------- arrays

FLOATS = st.sampled_from([np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)])
DTYPES = hnp.scalar_dtypes() | FLOATS | FLOATS  # biased towards what a caller would pass
VALID_NCHW = st.tuples(st.integers(0, tb.MAX_BATCH + 2), st.just(tb.C_X), st.just(tb.S), st.just(tb.S))
SHAPES = (
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)
    | VALID_NCHW
    | VALID_NCHW
    | st.just((tb.C_X, tb.S, tb.S))
)


@pytest.fixture(scope="module")
def translator(tiny_bundles):
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        yield t


@st.composite
def arrays(draw, shapes, dtypes=DTYPES):
    dtype = draw(dtypes)
    shape = draw(shapes)
    if np.issubdtype(dtype, np.floating) and draw(st.booleans()):  # mostly plausible values
        width = min(dtype.itemsize * 8, 64)
        elements = st.floats(-1.5, 1.5, width=width) | st.sampled_from(
            [math.nan, math.inf, -math.inf, float(np.finfo(dtype).max), -float(np.finfo(dtype).max)]
        )
        return draw(hnp.arrays(dtype, shape, elements=elements, fill=st.floats(-1, 1, width=16)))
    return draw(hnp.arrays(dtype, shape))


@settings(max_examples=250, **SETTINGS)
@given(
    x=arrays(SHAPES),
    iterations=st.none() | st.integers(1, 6) | st.integers(1, 6) | st.integers(-2, 0) | st.floats(0, 3) | st.booleans(),
    layout=st.sampled_from(["c", "f", "reversed", "readonly"]),
)
def test_infer_with_arbitrary_arrays(translator, x, iterations, layout):
    if layout == "f":
        x = np.asfortranarray(x)
    elif layout == "reversed" and x.ndim:
        x = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    elif layout == "readonly":
        x.flags.writeable = False
    res = outcome(translator.infer, x, iterations=iterations)
    if res is None:
        return
    assert res.images.dtype == np.float32 and res.images.shape == (
        x.reshape(-1, tb.C_X, tb.S, tb.S).shape[0],
        3,
        tb.R,
        tb.R,
    )
    assert np.isfinite(res.images).all() and np.isfinite(res.latents).all()


IMAGE_SHAPES = (
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)
    | st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 3, 4]))
    | st.tuples(st.integers(1, 40), st.integers(1, 40))
)
IMAGE_DTYPES = hnp.scalar_dtypes() | FLOATS | st.just(np.dtype(np.uint8)) | st.just(np.dtype(np.uint8))


@settings(max_examples=200, **SETTINGS)
@given(image=arrays(IMAGE_SHAPES, IMAGE_DTYPES))
def test_call_with_arbitrary_images(translator, image):
    out = outcome(translator, image)
    if out is None:
        return
    assert out.shape == (tb.R, tb.R, 3) and out.dtype == np.uint8


@settings(max_examples=150, **SETTINGS)
@given(
    z=arrays(
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=tb.D + 1)
        | st.tuples(st.integers(0, 5), st.just(tb.M), st.just(tb.D))
    ),
    mask=st.none() | st.lists(st.integers(-2, tb.M + 1) | st.text(max_size=2) | st.floats(), max_size=5),
    alpha=st.none() | st.floats() | st.text(max_size=3),
)
def test_synthesise_and_mix_with_arbitrary_arguments(translator, z, mask, alpha):
    try:
        images = translator.synthesise(z)
        assert images.shape[1:] == (3, tb.R, tb.R) and np.isfinite(images).all()
    except SdkError as e:
        assert str(e)
    x = np.zeros((1, tb.C_X, tb.S, tb.S), np.float32)
    try:
        res = translator.mix(x, latent_mask=mask, alpha=alpha, inject_latents=z)
        assert res.latents.shape == (1, tb.M, tb.D)
    except SdkError as e:
        assert str(e)


# --------------------------------------------------------------------------- constructor and call arguments

ANY = (
    st.none()
    | st.booleans()
    | st.integers(-3, 10)
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=4)
    | st.lists(st.integers(0, 3), max_size=3)
    | st.sampled_from([np.int64(1), np.float32(2.0), np.True_, np.array([1, 2]), np.array("auto"), object()])
)
BACKEND_NAMES = st.sampled_from(
    ["auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "AUTO", "", "cpu"]
)


@st.composite
def some_odd(draw, valid: dict, odd: dict | None = None) -> dict:
    """Keyword arguments: valid values, but up to two of them anything at all (ANY, or ``odd[k]``)."""
    names = draw(st.sets(st.sampled_from(sorted(valid)), max_size=2))
    return {k: draw((odd or {}).get(k, ANY) if k in names else v) for k, v in valid.items()}


CONSTRUCTOR = some_odd(
    {
        "backend": st.sampled_from(["auto", "onnxruntime"]),
        "threads": st.none() | st.integers(1, 4),
        "verify": st.booleans(),
        "device": st.integers(0, 3),
        "cuda_graphs": st.booleans(),
    },
    {"backend": BACKEND_NAMES | ANY, "threads": ANY | st.integers(-2, 2**31)},
)


@settings(max_examples=50, **SETTINGS)
@given(kwargs=CONSTRUCTOR)
def test_translator_constructor_with_arbitrary_arguments(tiny_bundles, kwargs):
    """Every keyword of the constructor at random: a working Translator or an SdkError, never
    another exception (nor a hang: threads are bounded)."""
    t = outcome(Translator, tiny_bundles["single"], **kwargs, one_line=True)
    if t is None:
        return
    with t:
        event("opened")
        assert t.infer(np.zeros((1, tb.C_X, tb.S, tb.S), np.float32)).images.shape == (1, 3, tb.R, tb.R)


INFER = some_odd(
    {
        "iterations": st.none() | st.integers(1, 3),
        "return_steps": st.booleans(),
        "early_exit": st.none() | st.floats(0.001, 1.0),
        "output": st.just("host"),
        "init": st.none() | st.just("previous"),
    }
)


@settings(max_examples=60, **SETTINGS)
@given(kwargs=INFER)
def test_infer_with_arbitrary_scalar_arguments(translator, kwargs):
    x = np.zeros((1, tb.C_X, tb.S, tb.S), np.float32)
    if isinstance(kwargs["init"], str) and kwargs["init"] == "previous":
        kwargs["init"] = translator.infer(x, iterations=1)
    res = outcome(translator.infer, x, **kwargs, one_line=True)
    if res is None:
        return
    assert res.images.shape == (1, 3, tb.R, tb.R) and (res.steps is not None) == bool(kwargs["return_steps"])


@settings(max_examples=40, **SETTINGS)
@given(
    image=ANY
    | st.sampled_from(["", "no-such.png", "/", "a\0b", "x" * 5000])
    | st.recursive(st.integers(0, 255), lambda c: st.lists(c, min_size=1, max_size=3), max_leaves=12)
)
def test_call_with_arbitrary_objects(translator, image):
    """Not arrays: scalars, strings (paths), nested and ragged lists."""
    out = outcome(translator, image)
    if out is None:
        return
    assert out.shape == (tb.R, tb.R, 3)


@settings(max_examples=50, **SETTINGS)
@given(mode=st.sampled_from(PIL_MODES), w=st.integers(1, 12), h=st.integers(1, 12), data=st.data())
def test_call_with_pil_images_of_random_modes_and_bytes(translator, mode, w, h, data):
    """Any mode, any pixel bytes (NaN floats, negative ints included): RGB out or an SdkError."""
    from PIL import Image

    size = Image.new(mode, (1, 1)).tobytes().__len__() * w * h
    image = Image.frombytes(mode, (w, h), data.draw(st.binary(min_size=size, max_size=size)))
    out = outcome(translator, image)
    if out is None:
        return
    assert out.shape == (tb.R, tb.R, 3) and out.dtype == np.uint8
