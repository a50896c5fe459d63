"""The bundle: a folder holding ``manifest.json``, the ONNX graphs, engines and constants.

This module reads and writes the folder: SHA-256 of every file, paths that may not leave the
folder, atomic writes. The manifest's schema (roles, stage schedule) is :mod:`sdk.manifest`;
its names are re-exported here. ``engines/README.md`` describes the format for users.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .build_target import check_build_target, not_a_bundle, remove_bundle
from .digests import CHUNK_BYTES, REPLACE_ATOMICALLY, Expected, changed_since, file_digests, sha256_file, verify_files  # noqa: F401
from .errors import BundleError

# the schema lives in sdk/manifest.py; re-exported here, where readers and writers look for it
from .manifest import (  # noqa: F401
    MAX_ITERATIONS,
    ROLES,
    SCHEMA_VERSION,
    GraphSpec,
    Manifest,
    Schedule,
    Stage,
    TensorSpec,
    iter_stage_graphs,
)
from .npz import read_arrays
from .permissions import bundle_folder, check_private, drop_others_write

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REBUILD_HINT = "rebuild it with: python export/build_engines.py --checkpoint CKPT --out {path}"


# --------------------------------------------------------------------------- files


def resolve_inside(root: Path, name: str) -> Path:
    """``root / name``, refusing absolute paths, ``..`` and symlinks that leave ``root``."""
    if not name or os.path.isabs(name) or Path(name).drive:
        raise BundleError(
            f"manifest path {name!r} is absolute or empty; bundle paths must be relative file names inside {root}"
        )
    try:
        root_real = root.resolve()
        path = (root / name).resolve()
    except (ValueError, OSError, RuntimeError) as e:  # NUL bytes, names too long, symlink loops
        raise BundleError(
            f"manifest path {name!r} cannot be resolved inside {root} ({e}); {REBUILD_HINT.format(path=root)}"
        ) from None
    if root_real != path and root_real not in path.parents:
        raise BundleError(f"manifest path {name!r} leaves the bundle folder {root}; refusing to read it")
    return path


class Bundle:
    """A validated bundle folder. Opening checks the manifest, every file's presence and, with
    ``verify=True``, every file's SHA-256, so a corrupt or tampered bundle fails here, not mid-run.
    ``verify=False`` leaves the digests to :meth:`verify`, which :class:`sdk.Translator` calls for
    the files its backend loads (a CPU backend reads the optimised graphs, not the portable ones)."""

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = bundle_folder(path, MANIFEST)
        manifest_path = self.path / MANIFEST
        hint = REBUILD_HINT.format(path=self.path)
        if self.path.exists() and not self.path.is_dir():
            raise BundleError(
                f"bundle path {self.path} is a file, not a bundle folder; pass the folder "
                f"export/build_engines.py wrote (e.g. engines/demo)"
            )
        if not self.path.is_dir():
            raise BundleError(
                f"bundle folder {self.path} does not exist; build one with: "
                f"python export/build_engines.py (demo) or --checkpoint CKPT --out {self.path}"
            )
        if not manifest_path.is_file():
            raise BundleError(not_a_bundle(self.path))
        unreadable = f"if this is a bundle, remove the folder and rebuild it: {hint}"
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise BundleError(f"{manifest_path} is not valid JSON ({type(e).__name__}: {e}); {unreadable}") from None
        except ValueError as e:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
            raise BundleError(
                f"{manifest_path} holds a number too long to read ({str(e).split(';')[0]}); {unreadable}"
            ) from None
        except OSError as e:
            raise BundleError(f"{manifest_path} cannot be read ({e}); {unreadable}") from None
        try:
            self.manifest = Manifest.parse(raw)
        except BundleError as e:
            raise BundleError(f"{manifest_path}: {e}") from None
        files = [f for g in self.manifest.graphs.values() for f in g.files()]
        files.append((self.manifest.constants_file, self.manifest.constants_sha256))
        self._expected: dict[str, tuple[Path, str]] = {}
        self._verified: set[str] = set()
        self._identity: dict[str, tuple] = {}  # each verified file as hashed (sdk.digests.identity)
        for name, digest in files:
            path = resolve_inside(self.path, name)
            try:
                if not path.is_file():
                    raise BundleError(f"bundle file {path} is missing; {hint}")
            except OSError as e:  # unreadable: permissions, I/O errors
                raise BundleError(f"bundle file {path} cannot be read ({e}); {hint}") from None
            self._expected[name] = (path, digest)
        if verify:
            self.verify()

    def verify(self, names: Iterable[str] | None = None) -> None:
        """Check the SHA-256 of the bundle files ``names`` (default: all of them), each file once
        per Bundle; raises :class:`BundleError` naming the first that differs. First the files, the
        manifest, the bundle folder and the folders above it must be writable by no one but this
        user and root (:func:`sdk.permissions.check_private`): a digest of files that others may
        rewrite before they are loaded would vouch for nothing."""
        names = list(self._expected) if names is None else list(dict.fromkeys(names))
        unknown = [n for n in names if n not in self._expected]
        if unknown:
            raise BundleError(f"{self.path}: the manifest lists no file {unknown[0]!r}")
        todo = [n for n in names if n not in self._verified]
        if not todo:
            return
        m = self.manifest
        check_private(self.path, [resolve_inside(self.path, MANIFEST)] + [self._expected[n][0] for n in todo])
        hashed = verify_files(
            [Expected(*self._expected[n], tuple(m.chunk_sha256.get(n, ()))) for n in todo],
            m.chunk_bytes,
            REBUILD_HINT.format(path=self.path),
        )
        self._identity.update((n, hashed[self._expected[n][0]]) for n in todo)
        self._verified.update(todo)

    def check_unchanged(self) -> None:
        """Raise :class:`BundleError` if a verified file was replaced or written to since its
        digest was checked (call it once the backend has loaded the files): what the backend
        loaded may then not be what was checked."""
        for name, before in self._identity.items():
            path = self._expected[name][0]
            why = changed_since(path, before)
            if why:
                raise BundleError(
                    f"bundle file {path} changed after its SHA-256 was checked, while the bundle was "
                    f"being opened ({why}); {REPLACE_ATOMICALLY}; then open it again"
                )

    def add_piece_digests(self) -> bool:
        """For a bundle built before piece digests existed: check every file whole, record the
        digests of its ``CHUNK_BYTES`` pieces in the manifest (replaced atomically), so later opens
        check them in parallel. Returns whether the manifest changed."""
        if self.manifest.chunk_sha256 or not any(p.stat().st_size > CHUNK_BYTES for p, _ in self._expected.values()):
            return False
        pieces = {}
        for name, (path, digest) in self._expected.items():
            whole, chunks = file_digests(path, CHUNK_BYTES)
            if whole != digest:
                raise BundleError(
                    f"bundle file {path} does not match its SHA-256 in the manifest (corrupt or "
                    f"modified); {REBUILD_HINT.format(path=self.path)}"
                )
            if len(chunks) > 1:
                pieces[name] = chunks
        raw = _with_pieces(self.manifest.document(), pieces)
        self.manifest = Manifest.parse(raw)
        tmp = self.path / f".{MANIFEST}.tmp"
        _write_json(tmp, raw)
        drop_others_write(tmp)
        os.replace(tmp, self.path / MANIFEST)
        self._verified.update(self._expected)
        return True

    def file(self, name: str) -> Path:
        return resolve_inside(self.path, name)

    def graph_path(self, key: str) -> Path:
        return self.file(self.manifest.graphs[key].file)

    def constants(self) -> dict[str, np.ndarray]:
        """``latent_avg`` [M, D] and ``average_image`` [3, R, R], float32 and finite (only these two members
        are read, their headers checked before decompressing; no pickles loaded)."""
        m = self.manifest
        expected = {"latent_avg": (m.latent_count, m.latent_dim), "average_image": (3, m.output_size, m.output_size)}
        # once verified, the bytes read here are hashed again: they are the ones the arrays come from
        digest = m.constants_sha256 if m.constants_file in self._verified else None
        return read_arrays(self.file(m.constants_file), expected, REBUILD_HINT.format(path=self.path), digest)


# --------------------------------------------------------------------------- writing


class BundleWriter:
    """Writes a bundle into a temporary sibling folder and swaps it into place on commit.

    Use as a context manager: an exception (or Ctrl-C) inside the block removes the
    temporary folder and leaves any previous bundle at ``target`` untouched. The manifest is
    written last, so a folder without one is never a bundle. ``target`` must be nothing, an empty
    folder or a bundle (:mod:`sdk.build_target`): anything else is refused, never deleted.

    Crash safety (SIGKILL, power loss): the temporary folder ``.NAME.tmp-XXXX`` is paired with a
    lock file ``.NAME.tmp-XXXX.lock`` that this writer holds (``flock``) while it lives. A later
    writer for the same target removes the temporary folders whose lock nobody holds (left by a
    killed build) and leaves those of builds still running alone. On Linux the commit swaps the
    new folder with the old one in one ``renameat2(RENAME_EXCHANGE)``, so ``target`` is never
    missing; elsewhere it takes two renames, and a crash between them (the old bundle left as
    ``.NAME.old``) is repaired by the next writer.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        check_build_target(self.target)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BundleError(
                f"cannot create the folder {self.target.parent} for the bundle ({e.strerror}); "
                f"choose --out in a folder you can write"
            ) from None
        self._recover_interrupted_swap()
        self._remove_stale_temporaries()
        self._lock_fd: int | None
        self._lock_fd, self.tmp = _locked_temporary(self.target)
        self.files: dict[str, str] = {}
        self.chunks: dict[str, list[str]] = {}  # the pieces' digests of files over CHUNK_BYTES

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._lock_fd is None:
            return
        try:
            if exc_type is not None or os.path.lexists(self.tmp):
                _remove(self.tmp)
        finally:  # the lock file goes last: while it is held, nobody else removes the folder
            _unlink(_lock_path(self.tmp))
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, name: str) -> Path:
        """Where to write the bundle file ``name`` (a plain file name) before committing."""
        return resolve_inside(self.tmp, name)

    def add(self, name: str) -> str:
        """Record a written file; returns its SHA-256 for the manifest (the digests of its pieces,
        for files over ``CHUNK_BYTES``, go into the manifest's ``chunks`` on commit)."""
        digest, pieces = file_digests(self.path(name), CHUNK_BYTES)
        self.files[name] = digest
        if len(pieces) > 1:
            self.chunks[name] = pieces
        return digest

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        if self.chunks:
            manifest = _with_pieces(manifest, self.chunks)
        Manifest.parse(json.loads(json.dumps(manifest)))  # never commit what the reader rejects
        for name in self.files:  # the data reaches the disk before the manifest that vouches for it
            _fsync(self.path(name))
        _write_json(self.tmp / MANIFEST, manifest)
        # writable by no one else, whatever the umask: what Bundle.verify requires (sdk/permissions.py)
        drop_others_write(*(self.path(name) for name in self.files), self.tmp / MANIFEST, self.tmp)
        _fsync(self.tmp)
        check_build_target(self.target)  # again: the folder may have changed during the build
        if not os.path.lexists(self.target):
            os.replace(self.tmp, self.target)
        elif _exchange(self.tmp, self.target):  # atomic: the old bundle is now at self.tmp
            remove_bundle(self.tmp)
        else:
            old = self.target.parent / f".{self.target.name}.old"
            remove_bundle(old)
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            remove_bundle(old)
        _fsync(self.target.parent)
        log.info("bundle written to %s", self.target)
        return self.target

    def _recover_interrupted_swap(self) -> None:
        # A crash between the two renames of commit() leaves the previous bundle as ".NAME.old".
        old = self.target.parent / f".{self.target.name}.old"
        if old.exists() and not os.path.lexists(self.target):
            os.replace(old, self.target)
            log.warning("restored %s from an interrupted build", self.target)

    def _remove_stale_temporaries(self) -> None:
        """Remove ``.NAME.tmp-*`` folders (and lock files) of writers that died, never those of
        writers still running: a live writer holds its lock file's ``flock``."""
        if fcntl is None:
            return
        prefix = f".{self.target.name}.tmp-"
        for entry in self.target.parent.iterdir():
            if not entry.name.startswith(prefix) or entry.name.endswith(".lock"):
                continue
            lock = _lock_path(entry)
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:  # a writer creates its lock before its folder: none is alive
                fd = None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a build in progress (fd is open: only flock raises here)
                if fd is not None:
                    os.close(fd)
                continue
            log.warning("removing %s, left by an interrupted build", entry)
            _remove(entry)
            _unlink(lock)
            if fd is not None:
                os.close(fd)
        for lock in self.target.parent.glob(f"{prefix}*.lock"):  # locks whose folder is already gone
            if not os.path.lexists(lock.with_name(lock.name[: -len(".lock")])):
                try:
                    fd = os.open(lock, os.O_RDWR)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        _unlink(lock)
                    finally:
                        os.close(fd)
                except OSError:
                    pass


fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no stale-folder cleanup
    fcntl = None


def _with_pieces(manifest: Mapping[str, Any], pieces: Mapping[str, list[str]]) -> dict:
    """``manifest`` with the digests of its files' ``CHUNK_BYTES`` pieces (``chunks``)."""
    return {**manifest, "chunks": {"bytes": CHUNK_BYTES, "sha256": dict(pieces)}}


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Write ``obj`` as JSON and make it durable before returning."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())


def _lock_path(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".lock")


def _locked_temporary(target: Path) -> tuple[int, Path]:
    """Create and lock ``.NAME.tmp-XXXX.lock``, then create the folder ``.NAME.tmp-XXXX``."""
    while True:
        fd, lock = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=".lock", dir=target.parent)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # another writer's cleanup may have taken the lock file before we locked it
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        tmp = Path(lock[: -len(".lock")])
        try:
            os.mkdir(tmp, 0o755)
            return fd, tmp
        except FileExistsError:  # a folder of that name left by an older writer: try another name
            _unlink(Path(lock))
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):  # not on this filesystem/kernel
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE) failed: {os.strerror(err)}")


def _remove(path: Path) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        _unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk (best effort: some filesystems refuse folder fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
