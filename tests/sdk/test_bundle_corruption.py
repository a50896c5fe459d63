"""Corrupt and mismatched bundles (issue 5, area 2): the cases tests/sdk/test_bundle.py and
tests/sdk/backends/test_tensorrt_fake.py do not already cover. Each is a typed ``sdk`` error naming the file
and the fix, never another exception.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from helpers.tensorrt_bundles import add_engines
from sdk import BackendError, BundleError, StaleEngineError, Translator
from sdk.bundle import MANIFEST, Bundle


def _open_translator_error(path, exc=BundleError, backend="onnxruntime") -> str:
    with pytest.raises(exc) as err:
        Translator(path, backend=backend, threads=1)
    return str(err.value)


# --------------------------------------------------------------------------- truncated files


@pytest.mark.parametrize("name,keep", [("encoder.onnx", 0.5), ("generator.onnx", 0.9), ("generator.onnx", 0.0)])
def test_truncated_onnx_with_matching_hash(make_tiny_bundle, name, keep):
    path = make_tiny_bundle()
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: int(len(data) * keep)])
    tb.rehash(path, name, ("graphs", name[:-5]))
    msg = _open_translator_error(path)
    assert name in msg and "could not load" in msg and "build_engines" in msg


def test_truncated_onnx_without_rehash_fails_at_open(make_tiny_bundle):
    path = make_tiny_bundle()
    data = (path / "encoder.onnx").read_bytes()
    (path / "encoder.onnx").write_bytes(data[: len(data) // 3])
    msg = _open_translator_error(path)
    assert "encoder.onnx" in msg and "does not match its SHA-256" in msg and "build_engines" in msg


@pytest.mark.parametrize("keep", [0.5, 0.95, 0.0])
def test_truncated_constants_with_matching_hash(make_tiny_bundle, keep):
    path = make_tiny_bundle()
    data = (path / "constants.npz").read_bytes()
    (path / "constants.npz").write_bytes(data[: int(len(data) * keep)])
    tb.rehash(path, "constants.npz", ("constants",))
    msg = _open_translator_error(path)
    assert "constants.npz is not a readable .npz" in msg and "build_engines" in msg


def test_constants_of_wrong_dtype(make_tiny_bundle):
    path = make_tiny_bundle()
    np.savez(
        path / "constants.npz",
        latent_avg=np.array([["a"] * tb.D] * tb.M),
        average_image=np.zeros((3, tb.R, tb.R), np.float32),
    )
    tb.rehash(path, "constants.npz", ("constants",))
    assert "constants.npz is not a readable .npz" in _open_translator_error(path)


# --------------------------------------------------------------------------- graph vs manifest


def _resize_condition(m, size):
    m["input"]["size"] = size
    for key in ("encoder",):
        m["graphs"][key]["inputs"][0]["shape"] = ["batch", tb.C_X, size, size]


def _widen_latents(m, dim):
    m["latent"]["dim"] = dim
    for g in m["graphs"].values():
        for t in g["inputs"] + g["outputs"]:
            if t["role"] == "latents":
                t["shape"][2] = dim


def _graph_dtype(m, dtype):
    m["graphs"]["generator"]["outputs"][0]["dtype"] = dtype


@pytest.mark.parametrize(
    "edit,needle",
    [
        (
            lambda m: _resize_condition(m, 128),
            "'x' is ['batch', 3, 256, 256] in the graph but ['batch', 3, 128, 128] in the manifest",
        ),
        (
            lambda m: _widen_latents(m, tb.D * 2),
            f"['batch', {tb.M}, {tb.D}] in the graph but ['batch', {tb.M}, {tb.D * 2}] in the manifest",
        ),
        (lambda m: _graph_dtype(m, "float16"), "'image' is float32 in the graph but float16 in the manifest"),
    ],
)
def test_session_shapes_and_types_checked_against_manifest(make_tiny_bundle, edit, needle):
    """A manifest consistent with itself but not with its graphs (names agree, shapes do not)."""
    path = make_tiny_bundle()
    tb.edit_manifest(path, edit)
    Bundle(path)  # the manifest alone is fine
    msg = _open_translator_error(path)
    assert needle in msg and "different builds" in msg and "build_engines" in msg


def test_fixed_batch_manifest_over_dynamic_graph_runs(make_tiny_bundle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: tb.fix_batch(m, 2))
    with Translator(path, backend="onnxruntime", threads=1) as t:
        x = np.zeros((2, tb.C_X, tb.S, tb.S), np.float32)
        assert t.infer(x).images.shape == (2, 3, tb.R, tb.R)


def test_runtime_failure_is_a_backend_error(make_tiny_bundle):
    import onnxruntime as ort

    path = make_tiny_bundle()
    x = np.zeros((1, tb.C_X, tb.S, tb.S), np.float32)
    with Translator(path, backend="onnxruntime", threads=1) as t:
        t.infer(x)  # bind the buffers

        class Failing:
            def run_with_iobinding(self, binding):
                raise ort.capi.onnxruntime_pybind11_state.Fail("simulated kernel failure")

        t._loop.runners["generator"].session = Failing()
        with pytest.raises(BackendError) as err:
            t.infer(x)
    assert "'generator'" in str(err.value) and "simulated kernel failure" in str(err.value)


# --------------------------------------------------------------------------- paths and JSON


@pytest.mark.parametrize(
    "name,needle",
    [
        ("enc\x00oder.onnx", "cannot be resolved"),
        ("x" * 5000 + ".onnx", "cannot be"),  # resolved or read: File name too long
        ("loop.onnx", "cannot be resolved"),  # a symlink to itself
        (".", "is missing"),  # the bundle folder itself is not a file
    ],
)
def test_odd_manifest_paths(make_tiny_bundle, name, needle):
    path = make_tiny_bundle()
    os.symlink("loop.onnx", path / "loop.onnx")
    tb.edit_manifest(path, lambda m: m["graphs"]["encoder"].__setitem__("file", name))
    with pytest.raises(BundleError) as err:
        Bundle(path)
    assert needle in str(err.value) and "build_engines" in str(err.value)


def test_deeply_nested_manifest(make_tiny_bundle):
    path = make_tiny_bundle()
    (path / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle(path)


@pytest.mark.parametrize("value", [[10**400, 1], [-1, 10**400], [True, 1], [float("nan"), 1.0]])
def test_range_with_unrepresentable_numbers(make_tiny_bundle, value):
    path = make_tiny_bundle()
    text = (
        (path / MANIFEST)
        .read_text()
        .replace(
            '"range": [\n      -1.0,\n      1.0\n    ]',
            '"range": ' + repr(value).replace("True", "true").replace("nan", "NaN"),
        )
    )
    assert text != (path / MANIFEST).read_text()
    (path / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match=r"input.range is .*two finite numbers"):
        Bundle(path)


def test_bool_in_shape_refused(make_tiny_bundle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: m["graphs"]["generator"]["outputs"][0]["shape"].__setitem__(1, True))
    with pytest.raises(BundleError, match=r"graphs.generator.outputs\[0\].shape has True"):
        Bundle(path)


# --------------------------------------------------------------------------- engines (fake TensorRT)


def test_undeserialisable_engine(fake_gpu, make_tiny_bundle, caplog):
    """Right version and GPU on paper, but the plan does not deserialise (another build, corrupted):
    ``tensorrt`` says so with the rebuild command, ``auto`` falls back to ONNX Runtime."""
    path = make_tiny_bundle()
    manifest = add_engines(path)
    plan = manifest["engines"]["generator"]["file"]
    (path / plan).write_bytes(b"a plan serialised by another TensorRT build" * 10)
    tb.rehash(path, plan, ("engines", "generator"))
    msg = _open_translator_error(path, StaleEngineError, backend="tensorrt")
    assert plan in msg and "could not deserialize" in msg and "build_engines" in msg
    _, cudart = fake_gpu
    with caplog.at_level(logging.WARNING, logger="sdk.translator"):
        with Translator(path, threads=1) as t:
            assert t.backend.name == "onnxruntime"
            assert t.infer(np.zeros((1, tb.C_X, tb.S, tb.S), np.float32)).images.shape == (1, 3, tb.R, tb.R)
    assert "falling back to ONNX Runtime" in caplog.text and plan in caplog.text
    assert not cudart.device_mem and not cudart.host_mem and not cudart.streams  # the failed backend was closed


@pytest.mark.parametrize(
    "file,needle",
    [("../generator.plan", "leaves the bundle folder"), ("/etc/passwd", "absolute"), ("missing.plan", "is missing")],
)
def test_engine_paths(fake_gpu, make_tiny_bundle, file, needle):
    path = make_tiny_bundle()
    add_engines(path)
    tb.edit_manifest(path, lambda m: m["engines"]["generator"].__setitem__("file", file))
    msg = _open_translator_error(path, BundleError, backend="tensorrt")
    assert needle in msg and file.lstrip("./") in msg


@pytest.mark.parametrize(
    "engines,needle",
    [
        (["generator.plan"], "manifest engines is list; expected an object"),
        ({"generator": "generator.plan"}, "engines.generator is str; expected an object"),
        ({"generator": {"file": 3}}, "engines.generator lacks the string field(s) ['file', 'sha256'"),
    ],
)
def test_malformed_engines_section(fake_gpu, make_tiny_bundle, engines, needle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: m.__setitem__("engines", engines))
    assert needle in _open_translator_error(path, BundleError, backend="tensorrt")


def test_close_releases_device_memory(fake_gpu, make_tiny_bundle):
    _, cudart = fake_gpu
    path = make_tiny_bundle()
    add_engines(path)
    t = Translator(path, backend="tensorrt")
    t.infer(np.zeros((2, tb.C_X, tb.S, tb.S), np.float32))
    assert cudart.device_mem and cudart.streams
    t.close()
    assert not cudart.device_mem and not cudart.host_mem and not cudart.streams
    t.close()  # idempotent
