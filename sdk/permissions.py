"""Who may change a bundle: the check that makes its SHA-256 digests mean something.

A bundle's files are hashed when it opens, and then ONNX Runtime (or TensorRT) opens them again
by path; the CPU graphs' weights are memory-mapped and read as the graphs run. Loading exactly
the hashed bytes would cost a copy of every weight (GBs at reference scale) and the shared,
clean pages of the mapping, so the SDK instead refuses bundles that anyone but the current user
or root could change between the check and the use, as OpenSSH's ``StrictModes`` does for
``authorized_keys``:

* every bundle file, and the bundle folder, is owned by the effective user or root and is not
  writable by its group or by others;
* so is every folder from the bundle folder up to ``/``, except that a folder with the sticky
  bit (``/tmp``) may be writable by all: there, only an entry's owner may rename or delete it.

Permission bits only change at their owner's (or root's) hand, so a chain that passes cannot be
changed by anyone else afterwards. POSIX ACLs that grant write access show in the group bits
(the ACL mask) and are refused too. On Windows there is no such check (documented).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import BundleError

log = logging.getLogger(__name__)

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
SKIP = "Translator(..., verify=False) skips the integrity check altogether"


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _problem(st: os.stat_result, euid: int, sticky_ok: bool) -> tuple[str, str] | None:
    """(who else could change a file or folder with status ``st``, the remedy's verb), or None."""
    if st.st_uid not in (euid, 0):
        you = "root, whom you run as" if euid == 0 else f"you ({_owner(euid)}) or root"
        return f"is owned by {_owner(st.st_uid)}, not by {you}", "chown"
    mode = stat.S_IMODE(st.st_mode)
    if mode & _OTHERS_WRITE and not (sticky_ok and mode & stat.S_ISVTX):
        who = (
            "its group and everyone"
            if mode & _OTHERS_WRITE == _OTHERS_WRITE
            else "its group"
            if mode & stat.S_IWGRP
            else "everyone"
        )
        return f"is writable by {who} (mode {mode:04o})", "chmod"
    return None


def _stat(path: Path, hint: str) -> os.stat_result:
    try:
        return os.stat(path)
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} cannot be checked ({e}); {hint}") from None


def _folders(folder: Path) -> list[tuple[Path, bool]]:
    """The folders whose owners can change ``folder``'s contents: itself, then its ancestors on
    both the path as given and the path with symlinks resolved (a symlink's own folder counts)."""
    seen, out = set(), []
    real = folder.resolve()
    lexical = Path(os.path.abspath(folder))
    for path, sticky_ok in [(real, False)] + [(p, True) for p in [*real.parents, *lexical.parents]]:
        if path not in seen:
            seen.add(path)
            out.append((path, sticky_ok))
    return out


def _shown(path: str) -> str:
    return repr(path) if len(path) <= 200 else f"{path[:80]!r}... ({len(path)} characters)"


def bundle_folder(path: Any, manifest: str) -> Path:
    """``path`` as a :class:`Path`, or :class:`BundleError` where it cannot name a folder this
    process may look into (a missing folder or manifest is for :class:`Bundle` to explain)."""
    usage = "pass the bundle folder export/build_engines.py wrote, e.g. Translator('engines/demo')"
    if not isinstance(path, (str, os.PathLike)):
        raise BundleError(
            f"the bundle path must be a str or os.PathLike naming a folder; got {type(path).__name__}. {usage}"
        )
    try:
        text = os.fspath(path)
        if not isinstance(text, str):
            raise TypeError(f"it is {type(text).__name__}")
    except TypeError as e:
        raise BundleError(f"the bundle path must be a text path ({e}); {usage}") from None
    if not text.strip():
        raise BundleError(f"the bundle path is empty; {usage}")
    folder = Path(text)
    for probe in (folder, folder / manifest):
        try:
            os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            break
        except ValueError:  # an embedded NUL byte
            raise BundleError(f"bundle path {_shown(text)} contains a NUL byte; {usage}") from None
        except PermissionError:
            raise BundleError(
                f"bundle folder {_shown(text)} cannot be searched ({_shown(str(probe))} is not accessible: "
                f"permission denied); give yourself read and search permission on it and the "
                f"folders above (chmod u+rx), or run as its owner"
            ) from None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise BundleError(
                    f"bundle path {_shown(text)} is too long for this system ({e.strerror}); {usage}"
                ) from None
            raise BundleError(f"bundle path {_shown(text)} cannot be opened ({e.strerror or e}); {usage}") from None
    return folder


def drop_others_write(*paths: Path) -> None:
    """Clear the group and other write bits of ``paths`` (a build's files and folder), so a bundle
    written under a permissive umask (002, common with per-user groups) passes :func:`check_private`."""
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # recorded, then removed by a later build step (fp16 replaces graphs)
            continue
        if st.st_mode & _OTHERS_WRITE and not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~_OTHERS_WRITE)


def check_private(folder: Path, files: Iterable[Path]) -> None:
    """Raise :class:`BundleError` unless ``folder`` (with its ancestors) and ``files`` (resolved
    paths inside it) can be changed by no one but the effective user and root."""
    getuid = getattr(os, "geteuid", None)
    if getuid is None:  # Windows: no POSIX owners or modes to check
        log.debug("%s: no permission check on this platform", folder)
        return
    euid = getuid()
    real = folder.resolve()
    checks = _folders(folder)
    for f in files:  # each file, and the sub-folders of the bundle that hold it
        checks.append((f, False))
        checks.extend((p, False) for p in f.parents if p.is_relative_to(real) and p != real)
    done = set()
    for path, sticky_ok in checks:
        if path in done:
            continue
        done.add(path)
        st = _stat(path, "give yourself read and search permission on the bundle and the folders above it")
        found = _problem(st, euid, sticky_ok)
        if found is None:
            continue
        problem, verb = found
        inside = path == real or path.is_relative_to(real)
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
        where = "the bundle folder" if path == real else f"bundle {kind}" if inside else f"the {kind} above the bundle"
        if verb == "chmod":
            fix = (
                f"chmod -R go-w {folder}"
                if inside
                else f"chmod go-w {path}, or move the bundle into a folder only you and root can write to"
            )
        else:
            fix = f"copy the bundle into a folder of yours (cp -r {folder} DEST) or chown it to you"
        raise BundleError(
            f"{where} {path} {problem}: someone else could replace the bundle's files after their "
            f"SHA-256 is checked, so it is refused. Fix: {fix} ({SKIP})"
        )
