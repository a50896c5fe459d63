"""export.tools.compare_bundles: two bundles compared for what they compute and declare."""

from __future__ import annotations

import shutil

import numpy as np
import onnx

from export.tools.compare_bundles import compare_bundles, compare_manifests, main
from helpers import tiny_bundle


def _copy(bundle, tmp_path, name="copy"):
    return shutil.copytree(bundle, tmp_path / name)


def test_a_bundle_matches_its_copy_with_another_name_and_time(make_tiny_bundle, tmp_path, capsys):
    a = make_tiny_bundle()
    b = _copy(a, tmp_path)
    manifest = tiny_bundle.read_manifest(b)
    manifest["name"], manifest.setdefault("build", {})["created"] = "other", "2030-01-01T00:00:00+00:00"
    tiny_bundle.write_manifest(b, manifest)
    assert compare_bundles(a, b) == []
    assert main([str(a), str(b)]) == 0 and "match" in capsys.readouterr().out


def test_node_metadata_does_not_count_but_a_changed_node_does(make_tiny_bundle, tmp_path):
    a = make_tiny_bundle()
    b = _copy(a, tmp_path)
    file = b / tiny_bundle.read_manifest(b)["graphs"]["generator"]["file"]
    model = onnx.load(str(file))
    entry = model.graph.node[0].metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.stack_trace", 'File "/home/someone/export/x.py", line 1'
    onnx.save(model, str(file))
    assert compare_bundles(a, b) == []
    model.graph.node[0].op_type = "Identity" if model.graph.node[0].op_type != "Identity" else "Neg"
    onnx.save(model, str(file))
    assert compare_bundles(a, b) == [f"{file.name}: the graphs differ (node metadata aside)"]


def test_constants_and_manifest_fields_are_compared(make_tiny_bundle, tmp_path):
    a = make_tiny_bundle()
    b = _copy(a, tmp_path)
    constants = b / tiny_bundle.read_manifest(b)["constants"]["file"]
    with np.load(constants) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["latent_avg"] = arrays["latent_avg"] + 1
    np.savez(constants, **arrays)
    manifest = tiny_bundle.read_manifest(b)
    manifest["batch"]["max"] += 1
    tiny_bundle.write_manifest(b, manifest)
    problems = compare_bundles(a, b)
    assert f"{constants.name}: array latent_avg differs" in problems
    assert any(p.startswith("manifest batch.max: ") for p in problems)


def test_ignored_fields_take_wildcards():
    a = {"graphs": {"g": {"sha256": "1", "file": "g.onnx"}}, "name": "a"}
    b = {"graphs": {"g": {"sha256": "2", "file": "g.onnx"}}, "name": "b"}
    assert compare_manifests(a, b) == []
    assert compare_manifests(a, b, ignored=("name",)) == ['manifest graphs.g.sha256: "1" != "2"']


def test_a_missing_file_is_named(make_tiny_bundle, tmp_path):
    a = make_tiny_bundle()
    b = _copy(a, tmp_path)
    (b / "extra.bin").write_bytes(b"x")
    assert compare_bundles(a, b) == ["files differ: only in first [], only in second ['extra.bin']"]
