"""Notice when the served model can no longer answer, and say why in one line.

PyTriton's own ``Triton.is_alive()`` watches the ``tritonserver`` process and the inference
handlers in this process, but not the model instances' *Python backend stubs* (the processes
tritonserver starts, one per instance, that carry requests to this process). A stub that
dies (killed, out of memory, a crash) stays a zombie child of tritonserver; the model still
reports ready, and every request to that instance fails with "Stub process is not healthy".
So the stubs are watched here too, through ``/proc`` (Triton runs on Linux only).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
PROC = Path("/proc")


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``Z`` ...), None when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]  # the name in parentheses may hold spaces


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def children(parent: int, name: str) -> list[int]:
    """The pids of ``parent``'s live children whose executable is called ``name``."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            exe = os.path.basename((entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace"))
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent and exe == name:
            found.append(int(entry.name))
    return sorted(found)


def python_stubs(server_pid: int) -> list[int]:
    """The Triton Python backend stubs tritonserver (``server_pid``) runs, one per model instance."""
    return children(server_pid, STUB_NAME)


def exit_description(code: int | None) -> str:
    """``"exit code 1"``, ``"signal 11 (SIGSEGV)"`` (negative codes are signals, as ``subprocess`` reports them)."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Watchdog:
    """``check()`` returns None while the server, every stub and PyTriton's handlers live, else
    one line naming what died.

    ``server_pid`` is tritonserver's process, ``exit_code`` a callable giving its exit status
    once it is gone (None when unknown), ``stubs`` the stub pids found once the model was
    ready, ``handlers_alive`` PyTriton's own liveness check."""

    def __init__(
        self,
        server_pid: int | None,
        exit_code: Callable[[], int | None],
        stubs: Iterable[int],
        handlers_alive: Callable[[], bool],
    ):
        self.server_pid, self._exit_code, self.stubs = server_pid, exit_code, list(stubs)
        self._handlers_alive = handlers_alive

    def check(self) -> str | None:
        if self.server_pid is not None and not alive(self.server_pid):
            return (
                f"tritonserver (pid {self.server_pid}) ended with {exit_description(self._exit_code())}; "
                f"its log says why"
            )
        for pid in self.stubs:
            if not alive(pid):
                return f"a model instance's Python backend stub (pid {pid}) died; requests to that instance would fail"
        if not self._handlers_alive():
            return "tritonserver or PyTriton's model handler stopped; see the log above"
        return None
