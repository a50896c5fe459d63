"""What the Triton server PyTriton ships needs from this machine, checked and fixed before launch.

PyTriton (``nvidia-pytriton``) runs a real ``tritonserver`` binary; the Python models it
serves run in Triton's *Python backend stub*, a separate process that embeds the interpreter
through ``libpython3.X.so``. The stub is linked against the soname only, so the dynamic loader
takes the first ``libpython3.11.so.1.0`` it finds, usually the distribution's
(``/usr/lib/x86_64-linux-gnu``). With a pyenv, conda or hand-built interpreter that library is
a *different* patch release from the interpreter whose standard library the stub then imports,
and the stub dies at start-up inside ``multiprocessing`` (``'_thread.RLock' object has no
attribute '_recursion_count'`` on this machine: system 3.11.2 library, pyenv 3.11.7 stdlib).

:func:`prepare_environment` puts the running interpreter's own ``LIBDIR`` first on
``LD_LIBRARY_PATH`` in this process's environment; PyTriton copies ``os.environ`` when it
spawns ``tritonserver``, which passes it on to the stub. Users need not touch their shell.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import platform
import sys
import sysconfig
from pathlib import Path

from sdk.errors import SdkError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    'pip install -e ".[serve]" (nvidia-pytriton, tritonclient, Pillow; Linux x86_64 or aarch64, glibc >= 2.35)'
)


class ServingUnavailable(SdkError):
    """Triton cannot run on this machine (platform, missing package, no shared libpython)."""


def interpreter_library_dir() -> Path | None:
    """The folder holding this interpreter's own ``libpython3.X.so.1.0``, or None when the
    interpreter is statically linked (then the stub can only use a system library)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    return Path(libdir) if (Path(libdir) / soname).is_file() else None


def missing_serve_extra(*modules: str) -> str | None:
    """One line naming the ``serve`` extra when one of ``modules`` cannot be imported; None when
    all import. For command lines that should say what to install instead of a traceback."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            return f"{e.name or module} is not installed; {INSTALL_HINT}"
    return None


def unavailable_reason() -> str | None:
    """Why PyTriton's Triton server cannot start here, in one sentence; None when it can."""
    if platform.system() != "Linux":
        return f"Triton Inference Server runs on Linux only (this is {platform.system()})"
    for module, package in (
        ("pytriton", "nvidia-pytriton"),
        ("tritonclient.http", "tritonclient[http]"),
        ("tritonclient.grpc", "tritonclient[grpc]"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package is missing
            found = False
        if not found:
            return f"{package} is not installed; {INSTALL_HINT}"
    root = Path(importlib.util.find_spec("pytriton").origin).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        return f"nvidia-pytriton has no tritonserver binary at {root / 'bin'} (a source install?); {INSTALL_HINT}"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (root / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        return f"nvidia-pytriton ships no Python backend stub for Python {version}"
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        return (
            f"numpy {numpy.__version__} is installed; nvidia-pytriton 0.7 requires numpy<2 (Triton 2.51's Python "
            f'stub answers with empty tensors under numpy 2): pip install "numpy<2" (pip install -e ".[serve]" '
            f"resolves it)"
        )
    if interpreter_library_dir() is None and not _system_has_libpython(version):
        return (
            f"Python {version} here is statically linked and no libpython{version}.so is installed; Triton's "
            f"Python backend embeds the interpreter (rebuild Python with --enable-shared)"
        )
    return None


def _system_has_libpython(version: str) -> bool:
    import ctypes.util

    return ctypes.util.find_library(f"python{version}") is not None


def prepare_environment() -> None:
    """Check that Triton can start and make the stub load this interpreter's libpython.

    Raises :class:`ServingUnavailable` with the reason and the fix. Idempotent."""
    reason = unavailable_reason()
    if reason is not None:
        raise ServingUnavailable(reason)
    libdir = interpreter_library_dir()
    if libdir is None:  # static interpreter: the system library is all the stub can have
        log.warning(
            "this Python is statically linked; Triton's Python stub will use the system libpython, which "
            "must be the same patch release as %s",
            sys.version.split()[0],
        )
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if paths[:1] != [str(libdir)]:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(libdir)] + [p for p in paths if p != str(libdir)])
        log.debug("LD_LIBRARY_PATH starts with %s so Triton's Python stub loads this interpreter's libpython", libdir)
