"""Bundle file digests: whole files and pieces (sdk/digests.py), and bundles whose large files
are checked piece by piece in parallel."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from sdk import BundleError, Translator
from sdk import bundle as bundle_module
from sdk.bundle import Bundle, BundleWriter
from sdk.digests import Expected, file_digests, sha256_file, verify_files

HINT = "rebuild it"


def _write(path, size: int, seed: int = 0) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 3000, 3001])
def test_pieces_are_the_digests_of_the_slices(tmp_path, size):
    data = _write(tmp_path / "f", size)
    whole, pieces = file_digests(tmp_path / "f", chunk_bytes=1000)
    assert whole == hashlib.sha256(data).hexdigest() == sha256_file(tmp_path / "f")
    assert pieces == [hashlib.sha256(data[i : i + 1000]).hexdigest() for i in range(0, size, 1000)]


def test_pieces_across_read_blocks(tmp_path):
    """Pieces that end inside a read block (the block is 1 MiB)."""
    data = _write(tmp_path / "f", (1 << 20) * 3 + 17)
    _, pieces = file_digests(tmp_path / "f", chunk_bytes=700_001)
    assert pieces == [hashlib.sha256(data[i : i + 700_001]).hexdigest() for i in range(0, len(data), 700_001)]


def _expected(tmp_path, sizes, chunk):
    files = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}"
        _write(path, size, seed=i)
        whole, pieces = file_digests(path, chunk)
        files.append(Expected(path, whole, tuple(pieces) if len(pieces) > 1 else ()))
    return files


def test_verify_passes_intact_files_and_names_the_damaged_piece(tmp_path):
    files = _expected(tmp_path, [10_000, 3_500, 10], chunk=1000)
    verify_files(files, 1000, HINT)
    raw = bytearray(files[0].path.read_bytes())
    raw[4321] ^= 0x10
    files[0].path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"f0 does not match its SHA-256 .*piece at offset 4000.*rebuild it"):
        verify_files(files, 1000, HINT)


@pytest.mark.parametrize("change", ["truncate", "extend", "whole"])
def test_verify_refuses_resized_or_changed_files(tmp_path, change):
    files = _expected(tmp_path, [2_500, 300], chunk=1000)
    target = files[0 if change != "whole" else 1].path
    raw = target.read_bytes()
    target.write_bytes({"truncate": raw[:-1], "extend": raw + b"\0", "whole": raw[:-1] + bytes([raw[-1] ^ 1])}[change])
    with pytest.raises(BundleError, match=f"{target.name} does not match its SHA-256"):
        verify_files(files, 1000, HINT)


def test_verify_reports_missing_files(tmp_path):
    files = _expected(tmp_path, [100], chunk=1000)
    files[0].path.unlink()
    with pytest.raises(BundleError, match="cannot be read"):
        verify_files(files, 1000, HINT)


@pytest.fixture
def small_pieces(monkeypatch):
    """Bundles written with 4 KiB pieces, so the tiny graphs are split."""
    monkeypatch.setattr(bundle_module, "CHUNK_BYTES", 4096)


def test_writer_records_pieces_and_bundles_check_them(tmp_path, small_pieces):
    graphs = tb.export_graphs(tmp_path / "graphs")
    path = tb.write_bundle(tmp_path / "bundle", graphs)
    manifest = json.loads((path / "manifest.json").read_text())
    chunks = manifest["chunks"]
    assert chunks["bytes"] == 4096 and "generator.onnx" in chunks["sha256"]
    generator = path / "generator.onnx"
    assert len(chunks["sha256"]["generator.onnx"]) == -(-generator.stat().st_size // 4096)
    with Translator(path, backend="onnxruntime", threads=1) as t:
        assert t.infer(tb.random_input(1)).images.shape == (1, 3, tb.R, tb.R)
    raw = bytearray(generator.read_bytes())
    raw[5000] ^= 0x01
    generator.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="generator.onnx does not match its SHA-256 .*offset 4096"):
        Bundle(path)
    with pytest.raises(BundleError, match="generator.onnx does not match its SHA-256"):
        Translator(path, backend="onnxruntime")


@pytest.mark.parametrize(
    "chunks, message",
    [
        ({"bytes": 0, "sha256": {}}, "positive piece size"),
        ({"bytes": 4096, "sha256": {"generator.onnx": []}}, "non-empty list"),
        ({"bytes": 4096, "sha256": {"generator.onnx": "abc"}}, "non-empty list"),
        ({"sha256": {}}, "lacks the required field 'bytes'"),
    ],
)
def test_malformed_chunks_refused(make_tiny_bundle, chunks, message):
    path = make_tiny_bundle("iterative")
    tb.edit_manifest(path, lambda m: m.__setitem__("chunks", chunks))
    with pytest.raises(BundleError, match=message):
        Bundle(path, verify=False)


def test_bundle_verify_checks_each_file_once(make_tiny_bundle, monkeypatch):
    path = make_tiny_bundle("iterative")
    seen = []
    real = bundle_module.verify_files
    monkeypatch.setattr(
        bundle_module, "verify_files", lambda files, *a: (seen.extend(f.path.name for f in files), real(files, *a))[1]
    )
    b = Bundle(path, verify=False)
    b.verify(["generator.onnx"])
    b.verify(["generator.onnx", "encoder.onnx"])
    b.verify()
    assert sorted(seen) == sorted(set(seen)) and "generator.onnx" in seen and "encoder.onnx" in seen
    with pytest.raises(BundleError, match="lists no file 'nope.onnx'"):
        b.verify(["nope.onnx"])


def test_writer_commit_leaves_small_bundles_without_pieces(tmp_path):
    with BundleWriter(tmp_path / "b") as w:
        w.path("x.bin").write_bytes(b"abc")
        assert w.add("x.bin") == hashlib.sha256(b"abc").hexdigest()
        assert w.chunks == {}


def test_older_bundles_gain_piece_digests(make_tiny_bundle, small_pieces):
    path = make_tiny_bundle("iterative")
    before = tb.read_manifest(path)
    before.pop("chunks")
    tb.write_manifest(path, before)  # as built before piece digests
    b = Bundle(path, verify=False)
    assert b.add_piece_digests() is True
    after = Bundle(path, verify=False)
    assert after.manifest.chunk_sha256 == b.manifest.chunk_sha256 and "generator.onnx" in after.manifest.chunk_sha256
    assert after.add_piece_digests() is False  # once
    after.verify()
    assert not list(path.glob(".*"))  # no temporary manifest left behind


def test_piece_digests_are_not_added_to_damaged_bundles(make_tiny_bundle, small_pieces):
    path = make_tiny_bundle("iterative")
    tb.edit_manifest(path, lambda m: m.pop("chunks"))
    generator = path / "generator.onnx"
    generator.write_bytes(generator.read_bytes()[:-1])
    manifest = (path / "manifest.json").read_text()
    with pytest.raises(BundleError, match="generator.onnx does not match"):
        Bundle(path, verify=False).add_piece_digests()
    assert (path / "manifest.json").read_text() == manifest
