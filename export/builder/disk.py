"""Telling a full disk (or quota) from the other ways a build's write can fail, so the build
ends with one line naming the file and the space to free instead of a library's traceback."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# ONNX Runtime and protobuf report a failed write without its errno ("Failed to write external
# initializers", "Protobuf serialization failed"); with less than this left on the disk, a write
# that failed is taken for a full disk
LOW_FREE_BYTES = 64 << 20


class DiskFullError(RuntimeError):
    """The disk (or the user's quota) filled while the build was writing."""


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _newest_file(folder: Path) -> Path:
    """The file last written in ``folder`` (the one a write without a file name was filling),
    else ``folder``."""
    try:
        files = [(entry.stat().st_mtime_ns, Path(entry.path)) for entry in os.scandir(folder) if entry.is_file()]
    except OSError:
        return folder
    return max(files)[1] if files else folder


def disk_full_error(e: BaseException, folder: Path, need_bytes: int | None = None) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``e`` when it comes from a full disk, else None: an OSError
    with ENOSPC/EDQUOT anywhere in its chain, or a failure of a library outside this project
    (ONNX Runtime, protobuf, torch) while ``folder``'s disk has under LOW_FREE_BYTES left."""
    if not isinstance(e, Exception) or isinstance(e, DiskFullError):
        return None
    full = next((link for link in _chain(e) if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS), None)
    if full is not None:
        path = full.filename
    else:
        if type(e).__module__.split(".")[0] in ("export", "sdk"):  # our own errors say what happened
            return None
        free = _free_bytes(folder)
        if free is None or free >= LOW_FREE_BYTES:
            return None
        named = re.search(r"""file:? ["']([^"']+)["']""", str(e))
        path = named.group(1) if named else None
    where = Path(path) if path else _newest_file(folder)
    if not where.is_absolute():
        where = folder / where
    space = f"{max(0.1, math.ceil(need_bytes / 1e8) / 10):.1f} GB" if need_bytes else "space"
    return DiskFullError(f"no space left on device while writing {where}: free {space} or choose --out on another disk")


@contextlib.contextmanager
def disk_full_as_error(folder: Path, need_bytes: int | None = None) -> Iterator[None]:
    """Raise :class:`DiskFullError` (from the original) for a write that failed on a full disk
    inside the block; put it inside the BundleWriter's block so the check sees the disk before
    the writer removes its temporary folder."""
    try:
        yield
    except Exception as e:
        full = disk_full_error(e, folder, need_bytes)
        if full is None:
            raise
        raise full from e
