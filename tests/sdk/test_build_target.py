"""A build never deletes what it did not write (sdk/build_target.py): ``--out`` may name nothing,
an empty folder or an earlier bundle; a user's folder or file is refused and left as it was."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_bundle as tb
from sdk import BundleError, Translator
from sdk.build_target import check_build_target, remove_bundle
from sdk.bundle import MANIFEST, BundleWriter

REPO = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def user_folder(tmp_path: Path) -> Path:
    u = tmp_path / "u"
    (u / "sub").mkdir(parents=True)
    (u / "precious.txt").write_text("precious\n")
    (u / "sub" / "notes.md").write_text("mine\n")
    return u


def test_the_cli_refuses_a_users_folder_and_keeps_it(tmp_path):
    """The report's steps: ``mkdir -p u/sub; echo precious > u/precious.txt; build_engines --out u``."""
    u = user_folder(tmp_path)
    before = snapshot(u)
    r = subprocess.run(
        [sys.executable, str(REPO / "export" / "build_engines.py"), "--out", str(u), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and f"--out {u} is a folder that is not a bundle" in errors[0]
    assert "never deletes other files" in errors[0] and "Traceback" not in r.stderr
    assert snapshot(u) == before and "loading" not in r.stderr  # refused before any work


def test_the_cli_refuses_a_file(tmp_path):
    from export.build_engines import main

    f = tmp_path / "somefile.txt"
    f.write_text("keep me\n")
    assert main(["--out", str(f), "--quiet"]) == 2
    assert f.read_text() == "keep me\n"


@pytest.mark.parametrize("kind", ["file", "folder", "nested", "parent_is_file", "symlink"])
def test_the_writer_refuses_what_is_not_a_bundle(tmp_path, kind):
    target = tmp_path / "t"
    if kind == "file":
        target.write_text("data")
        want = "is a file, not a folder"
    elif kind == "folder":
        target = user_folder(tmp_path)
        want = "holds 'precious.txt' and no bundle manifest"
    elif kind == "nested":
        (target / "deep").mkdir(parents=True)
        want = "holds 'deep' and no bundle manifest"
    elif kind == "parent_is_file":
        (tmp_path / "p").write_text("data")
        target = tmp_path / "p" / "bundle"
        want = "is a file, not a folder; choose a path inside a folder"
    else:
        (tmp_path / "real").mkdir()
        target.symlink_to(tmp_path / "real")
        want = "is a symbolic link"
    before = snapshot(tmp_path)
    with pytest.raises(BundleError, match=want):
        BundleWriter(target)
    assert snapshot(tmp_path) == before  # not even a temporary folder


def test_an_empty_folder_and_a_bundle_are_replaced(tiny_graphs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    tb.write_bundle(empty, tiny_graphs)
    first = (empty / MANIFEST).read_bytes()
    tb.write_bundle(empty, tiny_graphs, "single")  # a bundle of ours: replaced whole
    assert (empty / MANIFEST).read_bytes() != first
    assert sorted(os.listdir(empty)) == sorted([MANIFEST, "constants.npz", "encoder_first.onnx", "generator.onnx"])
    assert sorted(os.listdir(tmp_path)) == ["empty"]


@pytest.mark.parametrize("extra", ["notes.txt", "sub"])
def test_a_bundle_holding_a_users_file_is_refused(make_tiny_bundle, extra):
    path = make_tiny_bundle()
    (path / extra).mkdir() if extra == "sub" else (path / extra).write_text("mine")
    before = snapshot(path)
    with pytest.raises(BundleError, match=f"it holds '{extra}', which its manifest does not list"):
        check_build_target(path)
    with pytest.raises(BundleError, match="a build replaces only a bundle it wrote"):
        tb.write_bundle(path, None)  # refused before the graphs are even looked at
    assert snapshot(path) == before


def test_a_file_added_during_the_build_is_kept(tiny_graphs, make_tiny_bundle):
    """The check runs again at commit: a file put into the old bundle mid-build stops the swap."""
    path = make_tiny_bundle()

    def add_a_users_file(manifest: dict) -> None:  # runs inside the writer, before commit
        (path / "added-meanwhile.txt").write_text("mine")

    with pytest.raises(BundleError, match="added-meanwhile.txt"):
        tb.write_bundle(path, tiny_graphs, edit=add_a_users_file)
    assert (path / "added-meanwhile.txt").read_text() == "mine"
    assert sorted(p.name for p in path.parent.iterdir()) == ["bundle"]  # the temporary folder is gone


def test_removing_an_old_bundle_deletes_only_its_own_files(make_tiny_bundle, caplog):
    path = make_tiny_bundle()
    (path / "mine.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="sdk.build_target"):
        remove_bundle(path)
    assert os.listdir(path) == ["mine.txt"] and "kept" in caplog.text
    (path / "mine.txt").unlink()
    make_tiny_bundle()
    remove_bundle(path)
    assert not path.exists()


def test_a_checkpoint_kept_in_the_bundle_folder_is_not_the_bundles(make_tiny_bundle):
    """``build.source.file`` names the checkpoint a bundle came from; a file of that name is the user's."""
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: m.setdefault("build", {}).update(source={"file": "restyle.pt"}))
    (path / "restyle.pt").write_bytes(b"weights")
    with pytest.raises(BundleError, match="'restyle.pt', which its manifest does not list"):
        check_build_target(path)


def test_opening_a_folder_that_is_not_a_bundle_never_suggests_building_into_it(make_tiny_bundle, tmp_path):
    make_tiny_bundle(name="engines/demo")
    engines = tmp_path / "engines"
    with pytest.raises(BundleError) as e:
        Translator(engines)
    msg = str(e.value)
    assert f"{engines} holds no manifest.json, so it is not a bundle" in msg and str(engines / "demo") in msg
    assert f"--out {engines} " not in msg + " "
    user = user_folder(tmp_path)
    with pytest.raises(BundleError) as e:
        Translator(user)
    assert f"--out {user / 'NAME'}" in str(e.value) and f"--out {user} " not in str(e.value) + " "
