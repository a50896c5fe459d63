"""What a bundle's digests guarantee (issue 22, "The check and the use read different bytes",
"Constants and manifests", bundle paths): files others could rewrite between the SHA-256 check
and their use are refused (sdk/permissions.py), files replaced or written while a bundle opens
are detected, the constants are parsed from the very bytes hashed, reading only the members
used, and bundle paths that cannot name a folder are a BundleError."""

from __future__ import annotations

import builtins
import io
import os
import shutil
import stat
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from sdk import BundleError, Translator, digests
from sdk.backends.onnxruntime import OrtBackend
from sdk.bundle import Bundle

ROOT = os.geteuid() == 0


def _open_error(path, **kw) -> str:
    with pytest.raises(BundleError) as err:
        Translator(path, backend="onnxruntime", threads=1, **kw)
    return str(err.value)


# --------------------------------------------------------------------------- who may write the bundle


@pytest.mark.parametrize(
    "target,bits,needle",
    [
        (".", stat.S_IWGRP, "the bundle folder {p} is writable by its group (mode 0775)"),
        (".", stat.S_IWOTH, "the bundle folder {p} is writable by everyone (mode 0757)"),
        ("encoder.onnx", stat.S_IWGRP, "bundle file {p}/encoder.onnx is writable by its group (mode 0664)"),
        (
            "manifest.json",
            stat.S_IWGRP | stat.S_IWOTH,
            "bundle file {p}/manifest.json is writable by its group and everyone (mode 0666)",
        ),
        ("constants.npz", stat.S_IWOTH, "bundle file {p}/constants.npz is writable by everyone"),
    ],
)
def test_bundle_others_can_write_is_refused(make_tiny_bundle, target, bits, needle):
    path = make_tiny_bundle()
    item = path / target
    os.chmod(item, stat.S_IMODE(item.stat().st_mode) | bits)
    msg = _open_error(path)
    assert needle.format(p=path) in msg and f"chmod -R go-w {path}" in msg and "verify=False" in msg
    with pytest.raises(BundleError, match="writable by"):
        Bundle(path)  # verify=True: the same guarantee
    os.chmod(item, stat.S_IMODE(item.stat().st_mode) & ~bits)
    Translator(path, backend="onnxruntime", threads=1).close()


def test_verify_false_is_the_explicit_way_out(make_tiny_bundle):
    """Skipping the digests skips the permission check with them (nothing to protect)."""
    path = make_tiny_bundle()
    os.chmod(path, 0o777)
    with Translator(path, backend="onnxruntime", threads=1, verify=False) as t:
        assert t.infer(tb.random_input()).images.shape == (1, 3, tb.R, tb.R)
    Bundle(path, verify=False)


def test_writable_folder_above_is_refused_unless_sticky(make_tiny_bundle):
    """A folder above the bundle that others may write lets them rename the bundle away and put
    their own in its place; with the sticky bit (/tmp) they may not rename what is not theirs."""
    path = make_tiny_bundle()
    parent = path.parent
    mode = stat.S_IMODE(parent.stat().st_mode)
    try:
        os.chmod(parent, 0o777)
        msg = _open_error(path)
        assert f"the folder above the bundle {parent} is writable by its group and everyone" in msg
        assert f"chmod go-w {parent}, or move the bundle" in msg
        os.chmod(parent, 0o1777)
        Translator(path, backend="onnxruntime", threads=1).close()
    finally:
        os.chmod(parent, mode)


def test_symlinked_bundle_checks_the_folder_of_the_link(make_tiny_bundle, tmp_path):
    """engines/demo -> elsewhere: whoever can write the folder holding the link can retarget it."""
    path = make_tiny_bundle()
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(path, links / "demo")
    Translator(links / "demo", backend="onnxruntime", threads=1).close()
    os.chmod(links, 0o777)
    assert f"the folder above the bundle {links} is writable" in _open_error(links / "demo")


def test_file_of_another_user_is_refused(make_tiny_bundle, monkeypatch):
    """As root: give a file to another uid. Otherwise: pretend to run as another (non-root) uid,
    so this user's files are someone else's."""
    path = make_tiny_bundle()
    if ROOT:
        os.chown(path / "generator.onnx", 4242, 4242)
        msg = _open_error(path)
        assert f"bundle file {path}/generator.onnx is owned by uid 4242" in msg
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
        msg = _open_error(path)
        assert "is owned by" in msg and f"not by you (uid {os.getuid() + 1}) or root" in msg
    assert "chown it to you" in msg and "cp -r" in msg


def test_bundle_written_under_a_permissive_umask_opens(tiny_graphs, tmp_path):
    """umask 002 (per-user groups) makes files group-writable: the build clears those bits, so a
    freshly built bundle always passes its own check."""
    old = os.umask(0o002)
    try:
        path = tb.write_bundle(tmp_path / "shared", tiny_graphs)
    finally:
        os.umask(old)
    assert not any(p.stat().st_mode & 0o022 for p in [path, *path.iterdir()])
    Translator(path, backend="onnxruntime", threads=1).close()


# --------------------------------------------------------------------------- files that change while opening


def _replace_with_copy(file: Path) -> None:
    """Swap ``file`` for a copy of itself (same bytes, new inode), as a rename into place does."""
    shutil.copyfile(file, file.with_name(file.name + ".new"))
    os.replace(file.with_name(file.name + ".new"), file)


def test_file_replaced_between_check_and_load_is_detected(make_tiny_bundle, monkeypatch):
    """The attack of the probe, by the bundle's own user: a file swapped after hashing and before
    ONNX Runtime opens it. Even with the same bytes, a new file is refused: nothing vouched for it."""
    path = make_tiny_bundle()
    real_load = OrtBackend.load

    def load(self, spec, graph_path):
        if spec.key == "generator":
            _replace_with_copy(graph_path)
        return real_load(self, spec, graph_path)

    monkeypatch.setattr(OrtBackend, "load", load)
    msg = _open_error(path)
    assert f"bundle file {path}/generator.onnx changed after its SHA-256 was checked" in msg
    assert "replaced by another file" in msg and "renaming it into place" in msg


def test_file_written_in_place_during_open_is_detected(make_tiny_bundle, monkeypatch):
    """cp new/* engines/demo/ or rsync --inplace over an opening bundle: same inode, new data."""
    path = make_tiny_bundle()
    real_load = OrtBackend.load

    def load(self, spec, graph_path):
        if spec.key == "generator":
            data = graph_path.read_bytes()
            time.sleep(0.02)  # file times come from the kernel's coarse clock (a few ms per tick)
            with open(graph_path, "r+b") as f:
                f.write(data)  # the same bytes, written again: the file's times move
        return real_load(self, spec, graph_path)

    monkeypatch.setattr(OrtBackend, "load", load)
    msg = _open_error(path)
    assert "generator.onnx changed after its SHA-256 was checked" in msg and "was written to" in msg


def test_file_replaced_while_it_is_hashed_is_detected(make_tiny_bundle, monkeypatch):
    path = make_tiny_bundle()
    real = digests._digest_range

    def digest(file, offset, length):
        out = real(file, offset, length)
        if file.name == "encoder.onnx":
            _replace_with_copy(file)
        return out

    monkeypatch.setattr(digests, "_digest_range", digest)
    msg = _open_error(path)
    assert "encoder.onnx changed while its SHA-256 was checked (it was replaced by another file)" in msg


def test_constants_are_parsed_from_the_bytes_hashed(make_tiny_bundle):
    """Constants swapped after the bundle's check are refused when read, not used."""
    path = make_tiny_bundle()
    bundle = Bundle(path)
    np.savez(
        path / "constants.npz",
        latent_avg=np.ones((tb.M, tb.D), np.float32),
        average_image=np.zeros((3, tb.R, tb.R), np.float32),
    )
    with pytest.raises(
        BundleError, match="constants.npz does not match its SHA-256 .*modified after the bundle was checked"
    ):
        bundle.constants()
    assert Bundle(path, verify=False).constants()["latent_avg"].min() == 1.0  # unchecked: read as it is


def test_tensorrt_plan_is_read_once(make_tiny_bundle, monkeypatch):
    """The plan TensorRT deserialises is the buffer that was hashed: one open of the file."""
    from export.tensorrt.engines import EngineOptions, build_bundle_engines
    from fakes import fake_cuda, fake_tensorrt

    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    fake_tensorrt.install(monkeypatch, cudart)
    path = make_tiny_bundle()
    manifest = tb.read_manifest(path)
    build_bundle_engines(
        path, manifest, EngineOptions(max_batch=tb.MAX_BATCH, compare=False, timing_cache=path.parent / "timing.cache")
    )
    tb.write_manifest(path, manifest)
    opened = []
    real_open = io.open

    def counting_open(file, *a, **k):
        if str(file).endswith(".plan"):
            opened.append(Path(file).name)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    with Translator(path, backend="tensorrt") as t:
        assert t.backend.name == "tensorrt"
    assert opened and len(opened) == len(set(opened)), opened


# --------------------------------------------------------------------------- constants


def _write_constants(path: Path, **arrays) -> None:
    base = {"latent_avg": np.zeros((tb.M, tb.D), np.float32), "average_image": np.zeros((3, tb.R, tb.R), np.float32)}
    np.savez_compressed(path / "constants.npz", **{**base, **arrays})
    tb.rehash(path, "constants.npz")


def test_members_the_manifest_does_not_name_are_never_decompressed(make_tiny_bundle):
    """A 256 MB all-zero member (about 250 KB on disk) costs no memory: only the two arrays the
    runtime uses are opened, and only after their headers are checked."""
    path = make_tiny_bundle()
    _write_constants(path, junk=np.zeros(64 << 20, np.float32))
    assert (path / "constants.npz").stat().st_size < 2 << 20
    bundle = Bundle(path)
    tracemalloc.start()
    try:
        arrays = bundle.constants()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert set(arrays) == {"latent_avg", "average_image"} and peak < 8 << 20, peak


def test_array_header_checked_before_decompressing(make_tiny_bundle):
    """A latent_avg whose header claims a huge shape is refused from its header."""
    path = make_tiny_bundle()
    _write_constants(path, latent_avg=np.zeros((64 << 20, tb.D), np.float32)[:, :1].copy())
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=r"latent_avg should have shape \(4, 8\), found \(67108864, 1\)"):
            Bundle(path).constants()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_oversized_constants_file_refused_before_reading(make_tiny_bundle):
    path = make_tiny_bundle()
    np.savez(
        path / "constants.npz",
        latent_avg=np.zeros((tb.M, tb.D), np.float32),
        average_image=np.zeros((3, tb.R, tb.R), np.float32),
        junk=np.zeros(1 << 19, np.float32),
    )
    tb.rehash(path, "constants.npz")
    msg = _open_error(path)
    assert "constants.npz is" in msg and "bytes, more than the" in msg and "its arrays can take" in msg


@pytest.mark.parametrize(
    "name,value,dtype",
    [
        ("latent_avg", np.nan, np.float32),
        ("average_image", np.inf, np.float32),
        ("average_image", -np.inf, np.float16),
        ("latent_avg", 1e300, np.float64),
    ],
)
def test_non_finite_constants_refused(make_tiny_bundle, name, value, dtype):
    path = make_tiny_bundle()
    shape = (tb.M, tb.D) if name == "latent_avg" else (3, tb.R, tb.R)
    bad = np.zeros(shape, dtype)
    bad.flat[3] = value
    _write_constants(path, **{name: bad})
    msg = _open_error(path)
    assert f"constants.npz: {name} holds 1 NaN or Inf values" in msg and "every output would be NaN" in msg


@pytest.mark.parametrize(
    "array,needle",
    [
        (np.zeros((tb.M, tb.D), np.int32), "latent_avg has dtype int32; expected a float array"),
        (np.array([[{"evil": 1}] * tb.D] * tb.M, dtype=object), "latent_avg has dtype object; expected a float array"),
    ],
)
def test_constants_of_other_dtypes_refused_from_the_header(make_tiny_bundle, array, needle):
    path = make_tiny_bundle()
    np.savez(path / "constants.npz", latent_avg=array, average_image=np.zeros((3, tb.R, tb.R), np.float32))
    tb.rehash(path, "constants.npz")
    msg = _open_error(path)
    assert "constants.npz is not a readable .npz" in msg and needle in msg


def test_float64_and_fortran_constants_read_as_float32(make_tiny_bundle, tiny_graphs):
    path = make_tiny_bundle()
    _write_constants(path, latent_avg=np.asfortranarray(tiny_graphs.latent_avg.astype(np.float64)))
    arrays = Bundle(path).constants()
    assert arrays["latent_avg"].dtype == np.float32 and arrays["latent_avg"].flags.c_contiguous
    np.testing.assert_array_equal(arrays["latent_avg"], tiny_graphs.latent_avg)


# --------------------------------------------------------------------------- bundle paths


@pytest.mark.parametrize(
    "value,needle",
    [
        (None, "the bundle path must be a str or os.PathLike naming a folder; got NoneType"),
        (3, "the bundle path must be a str or os.PathLike naming a folder; got int"),
        (b"engines/demo", "got bytes"),
        ("", "the bundle path is empty"),
        ("  ", "the bundle path is empty"),
        ("a" * 5000, "... (5000 characters) is too long for this system"),
        ("engines/de\x00mo", "contains a NUL byte"),
    ],
)
def test_paths_that_name_no_folder(value, needle):
    msg = _open_error(value)
    assert needle in msg and "engines/demo" in msg and len(msg) < 400


def test_path_like_returning_bytes():
    class BytesPath:
        def __fspath__(self):
            return b"engines/demo"

    assert "the bundle path must be a text path (it is bytes)" in _open_error(BytesPath())


@pytest.mark.skipif(ROOT, reason="root bypasses permission bits (see the simulated test below)")
@pytest.mark.parametrize("mode", [0o000, 0o600])
def test_folder_without_search_permission(make_tiny_bundle, mode):
    path = make_tiny_bundle()
    os.chmod(path, mode)
    try:
        msg = _open_error(path)
    finally:
        os.chmod(path, 0o755)
    assert f"bundle folder '{path}' cannot be searched" in msg and "chmod u+rx" in msg


@pytest.mark.parametrize("denied", ["folder", "manifest"])
def test_folder_without_search_permission_simulated(make_tiny_bundle, monkeypatch, denied):
    """Whoever runs the tests (root too): the stat a folder without x permission refuses."""
    path = make_tiny_bundle()
    target = str(path if denied == "folder" else path / "manifest.json")
    real_stat = os.stat

    def stat_(p, *a, **k):
        if os.fspath(p) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_stat(p, *a, **k)

    monkeypatch.setattr(os, "stat", stat_)
    msg = _open_error(path)
    assert f"bundle folder '{path}' cannot be searched" in msg and "permission denied" in msg
