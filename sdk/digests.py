"""SHA-256 of bundle files, checked on every core.

Opening a bundle checks the files it loads against the manifest's digests, so a corrupt or
tampered bundle fails when it is opened, not mid-run. A reference-scale bundle's weights sit in a
few large files, and one SHA-256 runs on one core: hashed whole, the largest file alone would take
much of the cold-start budget while the other cores idle (figures:
``docs/measurements/runtime.md``). The build therefore also records the digest of every ``CHUNK_BYTES`` piece of each file larger than that
(manifest ``chunks``), and opening checks the pieces in parallel, largest work first. The
whole-file digests stay in the manifest for ``sha256sum`` and for bundles built before pieces
existed.

Each file's :func:`identity` (inode, size, times) is taken before it is hashed and compared after,
and again once the backend has loaded it (``Bundle.check_unchanged``): a file replaced or written
while a bundle opens is refused. Who may write the files at all is :mod:`sdk.permissions`.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError

CHUNK_BYTES = 64 << 20
_BLOCK = 1 << 20  # read size: large enough that hashlib releases the GIL for most of the time


def _blocks(f, length: int | None):
    """Successive ``memoryview`` blocks of the open binary file ``f`` from its position, at most
    ``length`` bytes in all (None: to the end). The views share one buffer: hash each before the next."""
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    left = math.inf if length is None else length
    while left > 0:
        n = f.readinto(view[: int(min(_BLOCK, left))])
        if not n:
            return
        left -= n
        yield view[:n]


def sha256_file(path: Path) -> str:
    """The SHA-256 of a whole file (hex)."""
    return _digest_range(path, 0, None)


def file_digests(path: Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[str, list[str]]:
    """In one read: the SHA-256 of the whole file and of each ``chunk_bytes`` piece (the last
    one shorter), both hex."""
    whole, piece, filled, pieces = hashlib.sha256(), hashlib.sha256(), 0, []
    with open(path, "rb", buffering=0) as f:
        for block in _blocks(f, None):
            whole.update(block)
            while len(block):
                take = min(len(block), chunk_bytes - filled)
                piece.update(block[:take])
                filled, block = filled + take, block[take:]
                if filled == chunk_bytes:
                    pieces.append(piece.hexdigest())
                    piece, filled = hashlib.sha256(), 0
    if filled:
        pieces.append(piece.hexdigest())
    return whole.hexdigest(), pieces


@dataclass(frozen=True)
class Expected:
    """A file and what the manifest says of it: its SHA-256 and, where recorded, those of its
    ``chunk_bytes`` pieces (which then decide, in parallel)."""

    path: Path
    sha256: str
    chunks: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Task:
    index: int  # into the list of Expected
    offset: int
    length: int | None  # None: the whole file
    size: int  # bytes to hash, for scheduling
    digest: str


def _digest_range(path: Path, offset: int, length: int | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        for block in _blocks(f, length):
            h.update(block)
    return h.hexdigest()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): the change time also moves when a copy keeps the
# modification time (cp -p, rsync -a --inplace)
Identity = tuple
REPLACE_ATOMICALLY = (
    "replace a bundle only as the build does, by writing a new folder and renaming it into "
    "place, never by copying files over an open one (cp, rsync --inplace)"
)


def identity(path: Path) -> Identity:
    """What changes when ``path`` is replaced (a new inode) or written in place (size, times)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def changed_since(path: Path, before: Identity) -> str | None:
    """Why ``path`` is no longer the file of identity ``before`` (None: it is the same)."""
    try:
        now = identity(path)
    except OSError as err:
        return f"it cannot be read any more ({err})"
    if now[:2] != before[:2]:
        return "it was replaced by another file"
    if now != before:
        return "it was written to: its size or its modification or change time moved"
    return None


def verify_files(files: list[Expected], chunk_bytes: int, hint: str) -> dict[Path, Identity]:
    """Check every file against its digests; raise :class:`BundleError` naming the first that
    differs, cannot be read, or changes while it is hashed (``hint`` says how to fix it).
    Returns each file's :func:`identity` as hashed, for :func:`changed_since` after its use."""
    tasks: list[_Task] = []
    before: dict[Path, Identity] = {}
    for i, e in enumerate(files):
        try:
            before[e.path] = identity(e.path)
        except OSError as err:  # missing, permissions
            raise BundleError(f"bundle file {e.path} cannot be read ({err}); {hint}") from None
        size = before[e.path][2]
        if not e.chunks:
            tasks.append(_Task(i, 0, None, size, e.sha256))
            continue
        if math.ceil(size / chunk_bytes) != len(e.chunks):
            raise BundleError(
                f"bundle file {e.path} does not match its SHA-256 in the manifest (it has {size} "
                f"bytes, the manifest's {len(e.chunks)} pieces of {chunk_bytes} do not cover that; "
                f"truncated or modified); {hint}"
            )
        for k, digest in enumerate(e.chunks):
            piece = min(chunk_bytes, size - k * chunk_bytes)
            tasks.append(_Task(i, k * chunk_bytes, piece, piece, digest))
    tasks.sort(key=lambda t: -t.size)  # the longest first, so no core is left with one big file at the end

    def check(task: _Task) -> str | OSError:
        try:
            return _digest_range(files[task.index].path, task.offset, task.length)
        except OSError as err:  # I/O errors mid-read
            return err

    with ThreadPoolExecutor(max_workers=max(1, min(len(tasks), _cores()))) as pool:
        results = list(pool.map(check, tasks))
    failed = sorted(
        (t.index, t.offset, got) for t, got in zip(tasks, results) if isinstance(got, OSError) or got != t.digest
    )
    for e in files:  # a digest that matched bytes of a file that then changed vouches for nothing
        why = changed_since(e.path, before[e.path])
        if why:
            raise BundleError(
                f"bundle file {e.path} changed while its SHA-256 was checked ({why}); "
                f"{REPLACE_ATOMICALLY}; then open it again"
            )
    if not failed:
        return before
    index, offset, got = failed[0]
    path = files[index].path
    if isinstance(got, OSError):
        raise BundleError(f"bundle file {path} cannot be read ({got}); {hint}")
    where = f" (the {chunk_bytes}-byte piece at offset {offset})" if files[index].chunks else ""
    raise BundleError(
        f"bundle file {path} does not match its SHA-256 in the manifest{where} (corrupt or modified); {hint}"
    )
