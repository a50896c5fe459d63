"""Where a build may write: nothing, an empty folder, or a bundle a build wrote; never anything else.

A build replaces its target folder as a whole (:class:`sdk.bundle.BundleWriter`). Before it does,
the target must be one of:

* a path where nothing exists (its parent folders are created);
* an empty folder;
* a bundle: a folder whose ``manifest.json`` is a bundle manifest (a JSON object with an integer
  ``schema_version`` and a ``graphs`` object) and whose every entry is a file that manifest names
  (a ``file`` or ``data`` of its graphs, engines or constants)
  (or the manifest itself, or the temporary copy :meth:`sdk.bundle.Bundle.add_piece_digests`
  writes). Any other entry (a user's file, a sub-folder) means the folder holds more than a build
  wrote, and the build refuses it.

The old bundle is removed the same way: only the files its manifest names, then the folder if it
is empty. If something else appeared in it meanwhile, it is kept and the log says where.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BundleError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRANSIENT = (f".{MANIFEST}.tmp",)  # written beside the manifest and renamed over it
# where a manifest names its files (``build.source.file`` names the checkpoint, which is not the bundle's)
FILE_SECTIONS, FILE_KEYS = ("graphs", "engines", "constants"), ("file", "data")


def check_build_target(target: Path) -> None:
    """Raise :class:`BundleError` unless a build may replace ``target`` (see the module docstring)."""
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        _check_parent(target)
        return
    except OSError as e:
        raise BundleError(f"--out {target} cannot be examined ({e.strerror}); choose another folder") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(
            f"--out {target} is a symbolic link; a build replaces the folder it names, so give the "
            f"real folder ({os.path.realpath(target)}) or a new path"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError(
            f"--out {target} is a file, not a folder; a build writes a bundle folder: choose a path "
            f"that does not exist yet, e.g. --out {_suggest(target)}"
        )
    foreign = next(foreign_entries(target), None)
    if foreign is not None:
        raise BundleError(
            f"--out {target} is a folder that is not a bundle ({foreign}); a build replaces only a "
            f"bundle it wrote and never deletes other files: choose a new folder, e.g. "
            f"--out {_suggest(target)}"
        )


def foreign_entries(folder: Path) -> Iterator[str]:
    """Why ``folder`` is more than a bundle: one reason per entry that no bundle manifest there
    names (nothing for an empty folder or a pure bundle)."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as e:
        yield f"it cannot be listed: {e.strerror}"
        return
    if not entries:
        return
    named = bundle_files(folder)
    if named is None:
        yield f"it holds {entries[0]!r} and no bundle manifest"
        return
    for name in entries:
        if name in named or name in TRANSIENT:
            if not os.path.isfile(folder / name) or os.path.islink(folder / name):
                yield f"{name!r} is not a plain file"
            continue
        yield f"it holds {name!r}, which its manifest does not list"


def bundle_files(folder: Path) -> set[str] | None:
    """The entry names of ``folder`` that its bundle manifest names (the manifest included); None
    where ``folder/manifest.json`` is missing or is not a bundle manifest."""
    path = folder / MANIFEST
    if os.path.islink(path) or not path.is_file():
        return None
    # The JSON is read here, not through sdk.manifest.Manifest: this folder is about to be replaced
    # or removed, its manifest may be an older schema or damaged, and only the file names it
    # claims matter; a strict parse would refuse exactly the bundles a rebuild must clean up
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not (isinstance(raw, dict) and type(raw.get("schema_version")) is int and isinstance(raw.get("graphs"), dict)):
        return None
    named = {v for section in FILE_SECTIONS for v in _file_names(raw.get(section))}
    return {MANIFEST} | {n for n in named if "/" not in n and "\\" not in n and n not in ("", ".", "..")}


def remove_bundle(folder: Path) -> None:
    """Delete the files of the bundle at ``folder`` that its manifest names, then the folder if
    nothing else is left in it (else keep it, with a warning)."""
    named = bundle_files(folder) or set()
    for name in sorted((named | set(TRANSIENT)) - {MANIFEST}) + [MANIFEST]:  # the manifest last
        entry = folder / name
        if os.path.isfile(entry) and not os.path.islink(entry):
            try:
                os.unlink(entry)
            except FileNotFoundError:
                pass
    try:
        os.rmdir(folder)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning(
            "kept %s: besides the replaced bundle it holds files no build wrote (%s)",
            folder,
            ", ".join(sorted(os.listdir(folder))[:5]),
        )


def _file_names(value: Any) -> Iterator[str]:
    """The values of every ``file`` and ``data`` key under ``value`` (a manifest section)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in FILE_KEYS and isinstance(v, str):
                yield v
            else:
                yield from _file_names(v)
    elif isinstance(value, list):
        for v in value:
            yield from _file_names(v)


def _check_parent(target: Path) -> None:
    """The nearest existing ancestor of a target that does not exist must be a folder."""
    for parent in target.parents:
        if os.path.lexists(parent):
            if not os.path.isdir(parent):
                raise BundleError(f"--out {target}: {parent} is a file, not a folder; choose a path inside a folder")
            return


def _suggest(target: Path) -> Path:
    base = target if target.is_dir() and not target.is_symlink() else target.parent
    name = target.stem if not target.is_dir() else "bundle"
    return base / (name or "bundle")


def not_a_bundle(path: Path) -> str:
    """Why the folder ``path`` (which exists but has no manifest) is not a bundle, and what to pass
    instead: the bundles inside it where it holds some (``engines/`` holds every built bundle)."""
    try:
        inside = sorted(e.name for e in os.scandir(path) if e.is_dir() and (Path(e.path) / MANIFEST).is_file())
    except OSError:
        inside = []
    if inside:
        shown = ", ".join(str(path / n) for n in inside[:5])
        return (
            f"{path} holds no {MANIFEST}, so it is not a bundle; it holds the bundle folder(s) {shown}: "
            f"pass one of those"
        )
    return (
        f"{path} holds no {MANIFEST}, so it is not a bundle (a bundle is the folder export/build_engines.py "
        f"writes, e.g. engines/demo); pass a bundle folder, or build one into a new folder: "
        f"python export/build_engines.py --checkpoint CKPT --out {path / 'NAME'}"
    )
