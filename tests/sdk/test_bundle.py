"""Bundles (sdk/bundle.py): writing, opening, validation, path safety, atomic replacement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import sdk
from helpers import tiny_bundle as tb
from sdk import BundleError, Translator
from sdk.bundle import MANIFEST, Bundle, BundleWriter, Manifest, iter_stage_graphs, sha256_file


def _open_error(path: Path) -> str:
    with pytest.raises(BundleError) as err:
        Bundle(path)
    return str(err.value)


def _tree(path: Path) -> dict:
    """{relative path: bytes} of every file under ``path``."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _set(manifest: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        manifest = manifest[k]
    manifest[keys[-1]] = value


def _delete(manifest: dict, keys: tuple) -> None:
    for k in keys[:-1]:
        manifest = manifest[k]
    del manifest[keys[-1]]


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("variant", list(tb.VARIANTS))
def test_round_trip(make_tiny_bundle, tiny_graphs, variant):
    path = make_tiny_bundle(variant)
    bundle = Bundle(path)
    m = bundle.manifest
    keys, repeat_last, default_n, family = tb.VARIANTS[variant]
    assert (m.family, m.task, m.name) == (family, "inversion", "bundle")
    assert (m.input_channels, m.input_size, m.input_range) == (tb.C_X, tb.S, (-1.0, 1.0))
    assert (m.output_size, m.latent_count, m.latent_dim) == (tb.R, tb.M, tb.D)
    assert (m.batch_min, m.batch_max) == (1, tb.MAX_BATCH)
    assert set(m.graphs) == set(keys) | {"generator"}
    assert [s.graph for s in m.schedule.stages] == keys
    assert m.schedule.repeat_last is repeat_last and m.schedule.default_iterations == default_n
    assert m.schedule.max_iterations == (None if repeat_last else len(keys))
    assert [g.key for g in iter_stage_graphs(m)] == list(dict.fromkeys(keys))
    enc = m.graphs[keys[-1]]
    assert enc.input("condition").shape == ("batch", tb.C_X, tb.S, tb.S)
    assert enc.output.role == "latents" and enc.output.name == "z_next"
    assert m.graphs["generator"].output.shape == ("batch", 3, tb.R, tb.R)
    for g in m.graphs.values():  # the recorded hashes are the files' hashes
        assert sha256_file(bundle.graph_path(g.key)) == g.sha256
    consts = bundle.constants()
    assert consts["latent_avg"].shape == (tb.M, tb.D) and consts["latent_avg"].dtype == np.float32
    assert consts["average_image"].shape == (3, tb.R, tb.R) and consts["average_image"].dtype == np.float32
    np.testing.assert_array_equal(consts["latent_avg"], tiny_graphs.latent_avg)
    np.testing.assert_array_equal(consts["average_image"], tiny_graphs.average_image)
    # only the bundle's own files, and no temp folders beside it
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [MANIFEST, "constants.npz", "generator.onnx"] + [f"{k}.onnx" for k in dict.fromkeys(keys)]
    )
    assert [p.name for p in path.parent.iterdir()] == ["bundle"]


def test_writer_add_returns_sha(tmp_path):
    with BundleWriter(tmp_path / "b") as w:
        w.path("a.bin").write_bytes(b"hello")
        assert w.add("a.bin") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert not (tmp_path / "b").exists()  # never committed: nothing at the target
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_paths_outside(tmp_path):
    with BundleWriter(tmp_path / "b") as w:
        with pytest.raises(BundleError, match="leaves the bundle folder"):
            w.path("../evil.onnx")
        with pytest.raises(BundleError, match="absolute"):
            w.path(str(tmp_path / "evil.onnx"))


# --------------------------------------------------------------------------- invalid bundles


def test_missing_folder(tmp_path):
    assert "build_engines" in _open_error(tmp_path / "nope")


def test_missing_manifest(make_tiny_bundle):
    path = make_tiny_bundle()
    (path / MANIFEST).unlink()
    msg = _open_error(path)
    assert "holds no manifest.json, so it is not a bundle" in msg and "build_engines" in msg
    assert f"--out {path} " not in msg + " "  # a build refuses a folder that is not a bundle


@pytest.mark.parametrize("text", ["{", "", "not json", '{"schema_version": 1,}', b"\xff\xfe{}"])
def test_invalid_json(make_tiny_bundle, text):
    path = make_tiny_bundle()
    (path / MANIFEST).write_bytes(text if isinstance(text, bytes) else text.encode())
    assert "not valid JSON" in _open_error(path)


@pytest.mark.parametrize("version", [2, 0, "1", 1.5, None, True])
def test_unknown_schema_version(make_tiny_bundle, version):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, ("schema_version",), version))
    msg = _open_error(path)
    assert f"schema_version is {version!r}" in msg and "build_engines" in msg


def test_manifest_not_an_object(make_tiny_bundle):
    path = make_tiny_bundle()
    (path / MANIFEST).write_text("[1, 2]")
    assert "manifest is list; expected dict" in _open_error(path)


MISSING = [
    (("family",), "'family'"),
    (("task",), "'task'"),
    (("task", "name"), "'name'"),
    (("input",), "'input'"),
    (("input", "channels"), "'channels'"),
    (("input", "size"), "'size'"),
    (("input", "range"), "'range'"),
    (("output",), "'output'"),
    (("output", "size"), "'size'"),
    (("latent", "count"), "'count'"),
    (("latent", "dim"), "'dim'"),
    (("batch",), "'batch'"),
    (("batch", "max"), "'max'"),
    (("graphs",), "'graphs'"),
    (("graphs", "generator"), "no 'generator' graph"),
    (("graphs", "encoder", "file"), "graphs.encoder lacks the required field 'file'"),
    (("graphs", "encoder", "sha256"), "graphs.encoder lacks the required field 'sha256'"),
    (("graphs", "encoder", "inputs"), "graphs.encoder lacks the required field 'inputs'"),
    (("graphs", "encoder", "outputs"), "graphs.encoder lacks the required field 'outputs'"),
    (("graphs", "encoder", "inputs", 0, "role"), "graphs.encoder.inputs[0] lacks the required field 'role'"),
    (("graphs", "generator", "outputs", 0, "shape"), "graphs.generator.outputs[0] lacks the required field 'shape'"),
    (("schedule",), "'schedule'"),
    (("schedule", "stages"), "'stages'"),
    (("schedule", "stages", 0, "feedback"), "schedule.stages[0] lacks the required field 'feedback'"),
    (("schedule", "repeat_last"), "'repeat_last'"),
    (("schedule", "default_iterations"), "'default_iterations'"),
    (("constants",), "'constants'"),
    (("constants", "sha256"), "'sha256'"),
]


@pytest.mark.parametrize("keys,needle", MISSING, ids=[".".join(map(str, k)) for k, _ in MISSING])
def test_missing_required_field(make_tiny_bundle, keys, needle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _delete(m, keys))
    msg = _open_error(path)
    assert needle in msg
    assert "manifest.json" in msg  # the message says which file is wrong


WRONG_TYPES = [
    (("graphs",), ["encoder.onnx"], "manifest.graphs is list; expected dict"),
    (("family",), 3, "manifest.family is int; expected str"),
    (("input", "channels"), True, "input.channels is bool; expected int"),
    (("input", "size"), 256.0, "input.size is float; expected int"),
    (("batch", "max"), "4", "batch.max is str; expected int"),
    (("input", "range"), "[-1, 1]", "input.range is str; expected list"),
    (("input", "range"), [-1.0], "input.range is [-1.0]"),
    (("input", "range"), ["a", "b"], "input.range is ['a', 'b']"),
    (("input", "range"), [None, 1.0], "input.range"),
    (("input", "range"), [1.0, -1.0], "lo < hi"),
    (("task", "options"), [4], "task.options is list; expected dict"),
    (("schedule", "repeat_last"), "yes", "schedule.repeat_last is str; expected bool"),
    (("schedule", "default_iterations"), 2.0, "schedule.default_iterations is float; expected int"),
    (("schedule", "stages"), [], "schedule.stages is empty"),
    (("schedule", "stages", 0), "encoder", "schedule.stages[0] is str; expected dict"),
    (("graphs", "encoder", "inputs", 0, "role"), "mask", "graphs.encoder.inputs[0].role is 'mask'"),
    (("graphs", "encoder", "inputs", 0, "dtype"), "int8", "graphs.encoder.inputs[0].dtype is 'int8'"),
    (("graphs", "encoder", "inputs", 0, "shape"), "batch", "graphs.encoder.inputs[0].shape is str"),
    (("graphs", "encoder", "inputs", 0, "shape", 1), 0, "graphs.encoder.inputs[0].shape has 0"),
    (("graphs", "encoder", "inputs", 1, "role"), "condition", "binds a role twice"),
    (("graphs", "generator", "outputs"), [], "has 0 outputs; expected exactly one"),
    (
        ("graphs", "generator", "outputs", 0, "role"),
        "latents",
        "graphs.generator must map role 'latents' to role 'image'",
    ),
]


@pytest.mark.parametrize(
    "keys,value,needle", WRONG_TYPES, ids=[".".join(map(str, k)) + f"={v!r}" for k, v, _ in WRONG_TYPES]
)
def test_wrong_field_types(make_tiny_bundle, keys, value, needle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, keys, value))
    assert needle in _open_error(path)


INCONSISTENT = [  # manifest fields that disagree with each other
    (
        ("input", "size"),
        128,
        "graphs.encoder.inputs[0].shape is ['batch', 3, 256, 256]; its role 'condition' needs [batch, 3, 128, 128]",
    ),
    (("input", "channels"), 4, "needs [batch, 4, 256, 256]"),
    (("output", "size"), 32, "needs [batch, 3, 32, 32]"),
    (("latent", "count"), 18, "needs [batch, 18, 8]"),
    (("graphs", "generator", "inputs", 0, "shape"), [1, tb.M, tb.D], "graphs.generator.inputs[0].shape is [1, 4, 8]"),
    (("graphs", "encoder", "inputs", 0, "shape", 2), "h", "graphs.encoder.inputs[0].shape is ['batch', 3, 'h', 256]"),
    (("batch", "min"), 0, "batch range 0..4 is empty"),
    (("batch", "max"), 0, "batch range 1..0 is empty"),
    (("schedule", "default_iterations"), 0, "schedule.default_iterations=0 is outside"),
]


@pytest.mark.parametrize(
    "keys,value,needle", INCONSISTENT, ids=[".".join(map(str, k)) + f"={v!r}" for k, v, _ in INCONSISTENT]
)
def test_inconsistent_fields(make_tiny_bundle, keys, value, needle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, keys, value))
    assert needle in _open_error(path)


def test_static_batch_dim_allowed_for_fixed_batch(make_tiny_bundle):
    """An int batch dim is fine when the bundle's batch range is exactly that size."""
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: tb.fix_batch(m, 2))
    assert Bundle(path).manifest.graphs["encoder"].input("condition").concrete_shape(2) == (2, 3, 256, 256)


def test_single_pass_default_iterations_limit(make_tiny_bundle):
    path = make_tiny_bundle("single")
    tb.edit_manifest(path, lambda m: _set(m, ("schedule", "default_iterations"), 2))
    assert "schedule.default_iterations=2 is outside 1..1" in _open_error(path)


def test_stage_names_unknown_graph(make_tiny_bundle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, ("schedule", "stages", 0, "graph"), "encoder_v2"))
    assert "schedule.stages[0] names graph 'encoder_v2', which manifest.graphs lacks" in _open_error(path)


def test_stage_on_generator_graph(make_tiny_bundle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, ("schedule", "stages", 0, "graph"), "generator"))
    assert "graphs.generator must take role 'condition' and output role 'latents'" in _open_error(path)


def test_feedback_flag_true_without_image_input(make_tiny_bundle):
    path = make_tiny_bundle("single")
    tb.edit_manifest(path, lambda m: _set(m, ("schedule", "stages", 0, "feedback"), True))
    assert "schedule.stages[0].feedback=True but graphs.encoder_first lacks an 'image' input" in _open_error(path)


def test_feedback_flag_false_with_image_input(make_tiny_bundle):
    path = make_tiny_bundle("two_stage")
    tb.edit_manifest(path, lambda m: _set(m, ("schedule", "stages", 1, "feedback"), False))
    assert "schedule.stages[1].feedback=False but graphs.encoder has an 'image' input" in _open_error(path)


def test_residual_stage_without_latents_input(make_tiny_bundle):
    path = make_tiny_bundle("single")
    tb.edit_manifest(path, lambda m: m["graphs"]["encoder_first"]["inputs"].pop())  # drop z
    assert "schedule.stages[0] is residual but graphs.encoder_first takes no latents" in _open_error(path)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["encoder.onnx", "generator.onnx", "constants.npz"])
def test_file_missing(make_tiny_bundle, name):
    path = make_tiny_bundle()
    (path / name).unlink()
    msg = _open_error(path)
    assert f"{name} is missing" in msg and "build_engines" in msg


@pytest.mark.parametrize("name", ["encoder.onnx", "generator.onnx", "constants.npz"])
def test_one_byte_changed(make_tiny_bundle, name):
    path = make_tiny_bundle()
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    msg = _open_error(path)
    assert name in msg and "does not match its SHA-256" in msg
    Bundle(path, verify=False)  # opening without verification skips the hashes


def test_parent_path_refused_even_if_file_exists(make_tiny_bundle):
    path = make_tiny_bundle()
    (path.parent / "x.onnx").write_bytes((path / "encoder.onnx").read_bytes())  # same bytes, same hash
    tb.edit_manifest(path, lambda m: _set(m, ("graphs", "encoder", "file"), "../x.onnx"))
    msg = _open_error(path)
    assert "'../x.onnx'" in msg and "leaves the bundle folder" in msg


def test_absolute_path_refused(make_tiny_bundle):
    path = make_tiny_bundle()
    outside = path.parent / "x.onnx"
    outside.write_bytes((path / "encoder.onnx").read_bytes())
    tb.edit_manifest(path, lambda m: _set(m, ("graphs", "encoder", "file"), str(outside)))
    msg = _open_error(path)
    assert str(outside) in msg and "absolute" in msg


def test_empty_path_refused(make_tiny_bundle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, ("constants", "file"), ""))
    assert "absolute or empty" in _open_error(path)


@pytest.mark.parametrize("name", ["encoder.onnx", "constants.npz"])
def test_symlink_leaving_bundle_refused(make_tiny_bundle, name):
    path = make_tiny_bundle()
    outside = path.parent / f"outside-{name}"
    os.replace(path / name, outside)  # same bytes: only the location is wrong
    os.symlink(outside, path / name)
    msg = _open_error(path)
    assert name in msg and "leaves the bundle folder" in msg


def test_symlink_inside_bundle_allowed(make_tiny_bundle):
    path = make_tiny_bundle()
    (path / "graphs").mkdir()
    os.replace(path / "encoder.onnx", path / "graphs" / "encoder.onnx")
    os.symlink("graphs/encoder.onnx", path / "encoder.onnx")
    assert Bundle(path).graph_path("encoder") == (path / "graphs" / "encoder.onnx").resolve()


def test_corrupt_onnx_with_matching_hash(make_tiny_bundle):
    path = make_tiny_bundle()
    (path / "encoder.onnx").write_bytes(b"\x08\x07 this is not a protobuf \xff\xff" * 50)
    tb.edit_manifest(path, lambda m: _set(m, ("graphs", "encoder", "sha256"), sha256_file(path / "encoder.onnx")))
    Bundle(path)  # the hash matches: the bundle opens
    with pytest.raises(BundleError) as err:
        Translator(path, backend="onnxruntime", threads=1)
    msg = str(err.value)
    assert "encoder.onnx" in msg and "could not load" in msg and "build_engines" in msg


def test_graph_swapped_for_another_with_matching_hash(make_tiny_bundle):
    """The generator file where the encoder should be: names disagree with the manifest."""
    path = make_tiny_bundle()
    (path / "encoder.onnx").write_bytes((path / "generator.onnx").read_bytes())
    tb.edit_manifest(path, lambda m: _set(m, ("graphs", "encoder", "sha256"), sha256_file(path / "encoder.onnx")))
    with pytest.raises(BundleError, match="different builds"):
        Translator(path, backend="onnxruntime", threads=1)


def test_corrupt_constants_with_matching_hash(make_tiny_bundle):
    path = make_tiny_bundle()
    (path / "constants.npz").write_bytes(b"PK\x03\x04 garbage")
    tb.edit_manifest(path, lambda m: _set(m, ("constants", "sha256"), sha256_file(path / "constants.npz")))
    bundle = Bundle(path)
    with pytest.raises(BundleError, match="constants.npz is not a readable .npz"):
        bundle.constants()
    with pytest.raises(BundleError, match="not a readable .npz"):
        Translator(path, backend="onnxruntime", threads=1)


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"latent_avg": np.zeros((tb.M + 1, tb.D), np.float32)}, "latent_avg should have shape (4, 8), found (5, 8)"),
        (
            {"latent_avg": np.zeros((tb.M, tb.D), np.float32)},
            "average_image should have shape (3, 16, 16), found nothing",
        ),
    ],
)
def test_constants_of_wrong_shape(make_tiny_bundle, arrays, needle):
    path = make_tiny_bundle()
    np.savez(path / "constants.npz", **arrays)
    tb.edit_manifest(path, lambda m: _set(m, ("constants", "sha256"), sha256_file(path / "constants.npz")))
    with pytest.raises(BundleError) as err:
        Bundle(path).constants()
    assert needle in str(err.value)


def test_pickled_constants_not_loaded(make_tiny_bundle):
    path = make_tiny_bundle()
    np.savez(
        path / "constants.npz",
        latent_avg=np.array([{"evil": 1}], dtype=object),
        average_image=np.zeros((3, tb.R, tb.R), np.float32),
    )
    tb.edit_manifest(path, lambda m: _set(m, ("constants", "sha256"), sha256_file(path / "constants.npz")))
    with pytest.raises(BundleError, match="not a readable .npz"):
        Bundle(path).constants()


# --------------------------------------------------------------------------- atomic writes


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_failed_write_leaves_previous_bundle(make_tiny_bundle, exc):
    path = make_tiny_bundle("iterative")
    before = _tree(path)
    with pytest.raises(exc):
        with BundleWriter(path) as w:
            w.path("encoder.onnx").write_bytes(b"half-written")
            w.add("encoder.onnx")
            raise exc()
    assert _tree(path) == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp folder left
    Bundle(path)


def test_commit_of_invalid_manifest_leaves_previous_bundle(make_tiny_bundle, tiny_graphs):
    path = make_tiny_bundle("iterative")
    before = _tree(path)
    with pytest.raises(BundleError, match="schedule.stages is empty"):
        tb.write_bundle(path, tiny_graphs, "single", edit=lambda m: _set(m, ("schedule", "stages"), []))
    assert _tree(path) == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_commit_replaces_existing_bundle(make_tiny_bundle, tiny_graphs):
    path = make_tiny_bundle("iterative")  # its encoder.onnx is the old build's: gone with it
    tb.write_bundle(path, tiny_graphs, "single")  # a user's file in it is refused instead: test_build_target.py
    assert Bundle(path).manifest.family == "psp"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [MANIFEST, "constants.npz", "encoder_first.onnx", "generator.onnx"]
    )
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no ".bundle.old" left


def test_writer_restores_interrupted_swap(make_tiny_bundle, tmp_path):
    """A crash between commit's two renames leaves only ``.NAME.old``: the next writer restores it."""
    path = make_tiny_bundle("iterative")
    before = _tree(path)
    os.replace(path, tmp_path / f".{path.name}.old")
    w = BundleWriter(path)
    try:
        assert _tree(path) == before
    finally:
        w.__exit__(None, None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_writer_creates_parent(tiny_graphs, tmp_path):
    path = tb.write_bundle(tmp_path / "a" / "b" / "bundle", tiny_graphs, "single")
    assert Bundle(path).manifest.schedule.max_iterations == 1


def test_manifest_parse_is_pure(tiny_bundles):
    """Parsing the same manifest twice gives equal results (the writer re-parses before commit)."""
    raw = json.loads((tiny_bundles["two_stage"] / MANIFEST).read_text())
    a, b = Manifest.parse(raw), Manifest.parse(json.loads(json.dumps(raw)))
    assert a.schedule == b.schedule and a.graphs == b.graphs
    assert issubclass(BundleError, sdk.SdkError)
