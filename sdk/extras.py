"""What a command line says when an optional extra is missing: one line naming it, exit 2.

The runtime needs numpy and ONNX Runtime only; the scripts beside it (build, samples, serving,
benchmarks) need an extra each (``pip install -e ".[export]"`` and so on, pyproject.toml).
A script guards its top-level imports of those packages so that ``--help`` and every other
invocation end in one line instead of a traceback::

    try:
        import cv2
    except ModuleNotFoundError as e:
        exit_for_missing_extra(e, "samples", __name__)

Imported as a module (by a test, another script), the error propagates unchanged.
"""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_MISSING_EXTRA = 2  # as argparse's usage errors: the command cannot run as installed


def missing_extra_line(error: ModuleNotFoundError, extras: str) -> str:
    """``error``'s missing module and the ``pip install`` that brings it (``extras`` is one
    extra or several separated by commas, as pip writes them)."""
    return f'{error.name or error} is not installed; pip install -e ".[{extras}]"'


def exit_for_missing_extra(error: ModuleNotFoundError, extras: str, module_name: str) -> NoReturn:
    """In a script's ``__main__`` (``module_name == "__main__"``): print the one line to stderr
    and exit 2. Anywhere else: re-raise ``error``."""
    if module_name != "__main__":
        raise error
    print(missing_extra_line(error, extras), file=sys.stderr)
    raise SystemExit(EXIT_MISSING_EXTRA)
