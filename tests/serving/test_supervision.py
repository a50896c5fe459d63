"""The launcher's death detection and exit codes, and the one-line client errors, without a
Triton server: the watchdog watches real (stand-in) processes, the proxy model runs against
the fake ``triton_python_backend_utils`` (tests/fakes/fake_triton_python.py). The same paths under a
real tritonserver are tested in tests/serving/test_pytriton_server.py."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from fakes import fake_triton_python as fake
from sdk import InputError
from serving import pytriton_server as ps
from serving import watchdog as wd

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="the watchdog reads Linux's /proc")

PROXY = Path(ps.__file__).parent / "proxy_model.py"


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        started.append(sleeper())
        return started[-1]

    yield start
    for p in started:
        p.kill()
        p.wait()


def test_watchdog_names_a_dead_server_with_its_signal(processes):
    server = processes()
    dog = wd.Watchdog(server.pid, lambda: server.returncode, [], lambda: True)
    assert dog.check() is None
    server.send_signal(signal.SIGSEGV)
    server.wait()
    assert dog.check() == f"tritonserver (pid {server.pid}) ended with signal 11 (SIGSEGV); its log says why"


def test_watchdog_notices_a_stub_that_died_while_the_server_lives(processes):
    server, stub = processes(), processes()
    dog = wd.Watchdog(server.pid, lambda: None, [stub.pid], lambda: True)
    assert dog.check() is None
    stub.kill()  # not reaped: a zombie, as tritonserver leaves a dead stub
    wait_until(lambda: wd.process_state(stub.pid) == "Z")
    assert dog.check().startswith(f"a model instance's Python backend stub (pid {stub.pid}) died")


def test_watchdog_asks_pytriton_too(processes):
    server = processes()
    assert (
        wd.Watchdog(server.pid, lambda: None, [], lambda: False)
        .check()
        .startswith("tritonserver or PyTriton's model handler stopped")
    )


def test_children_are_found_by_executable_name(processes):
    name = Path(sys.executable).name
    before = set(wd.children(os.getpid(), name))  # e.g. multiprocessing's resource tracker, started by earlier tests
    child = processes()
    assert set(wd.children(os.getpid(), name)) - before == {child.pid}
    assert wd.children(os.getpid(), wd.STUB_NAME) == []


def test_exit_descriptions():
    assert wd.exit_description(-9) == "signal 9 (SIGKILL)"
    assert wd.exit_description(3) == "exit code 3"
    assert wd.exit_description(None) == "an unknown status"


# --------------------------------------------------------------------------- serve_forever and main


class FakeDog:
    def __init__(self, answers):
        self.answers = list(answers)

    def check(self):
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def bare_server(tmp_path, dog: FakeDog) -> ps.TranslationServer:
    """A TranslationServer whose start, watchdog and stop touch no Triton."""
    server = object.__new__(ps.TranslationServer)
    server.options = ps.ServeOptions(bundle=tmp_path)
    server.stopped = False
    server.start = lambda: server
    server.watchdog = lambda: dog
    server.stop = lambda: setattr(server, "stopped", True)
    return server


def test_serve_forever_raises_naming_what_died_and_stops(tmp_path):
    server = bare_server(tmp_path, FakeDog([None, None, "tritonserver (pid 7) ended with signal 11 (SIGSEGV)"]))
    with pytest.raises(ps.ServerDied, match=r"model 'translator' can no longer answer: tritonserver \(pid 7\)"):
        server.serve_forever(poll_s=0)
    assert server.stopped


def test_serve_forever_returns_on_ctrl_c_or_sigterm(tmp_path):
    server = bare_server(tmp_path, FakeDog([None, KeyboardInterrupt()]))
    assert server.serve_forever(poll_s=0) is None
    assert server.stopped


def test_sigterm_while_the_model_loads_is_a_clean_stop(tmp_path):
    server = bare_server(tmp_path, FakeDog([]))

    def interrupted():
        raise KeyboardInterrupt

    server.start = interrupted
    assert server.serve_forever(poll_s=0) is None
    assert server.stopped


@pytest.mark.parametrize(
    "outcome, code",
    [(None, 0), (ps.ServerDied("model 'translator' can no longer answer: x"), 1), (InputError("bad bundle"), 2)],
)
def test_main_exit_codes(monkeypatch, caplog, tmp_path, outcome, code):
    class Launcher:
        def __init__(self, options):
            pass

        def serve_forever(self):
            if outcome is not None:
                raise outcome

    monkeypatch.setattr(ps, "TranslationServer", Launcher)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with caplog.at_level(logging.ERROR, logger=ps.log.name):
            assert ps.main(["--bundle", str(tmp_path)]) == code
    finally:
        signal.signal(signal.SIGTERM, previous)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == (0 if outcome is None else 1)
    if code == 1:
        assert "can no longer answer: x; exiting with 1 so a supervisor restarts the server" in errors[0]


# --------------------------------------------------------------------------- one-line errors


def pytriton_error_text(error: Exception) -> str:
    """What PyTriton's proxy raises for an exception of the inference function: the function's
    formatted traceback (sent from the launcher), wrapped in the proxy's own."""
    try:
        raise error
    except Exception as e:
        payload = "".join(traceback.format_exception(None, e, e.__traceback__))
    try:
        raise fake.TritonModelException(payload)
    except Exception:
        return f"Model execute error: {traceback.format_exc()}"


@pytest.fixture
def proxy_model(tmp_path, monkeypatch):
    """``serving/proxy_model.py`` imported as Triton's backend imports it (``<version>.model``),
    over a stand-in for PyTriton's proxy whose ``execute`` raises what ``raises`` holds."""
    pb = fake.install()
    package = tmp_path / "v1"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(PROXY.read_text())
    (package / "pytriton_model.py").write_text(
        "import triton_python_backend_utils as pb_utils\n"
        "class TritonPythonModel:\n"
        "    raises = None\n"
        "    def execute(self, requests):\n"
        "        if self.raises is None:\n"
        "            return ['ok'] * len(requests)\n"
        "        raise pb_utils.TritonModelException(self.raises)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("v1.model")
    yield module.TritonPythonModel(), pb
    for name in ("v1", "v1.model", "v1.pytriton_model"):
        sys.modules.pop(name, None)


def requests(n: int, shape=(1, 4, 4, 3)) -> list:
    import numpy as np

    return [fake.Request(image=np.zeros(shape, np.uint8)) for _ in range(n)]


def test_client_errors_become_one_line_invalid_arg(proxy_model):
    model, pb = proxy_model
    assert model.execute(requests(2)) == ["ok", "ok"]
    message = "request 0 of this batch: super-resolution factor must be one of (1, 2, 4); got 3"
    model.raises = pytriton_error_text(ps.ClientInputError(message))
    answers = model.execute(requests(2))
    assert len(answers) == 2
    for answer in answers:
        assert answer.error().message() == message
        assert answer.error().code() == pb.TritonError.INVALID_ARG


def test_server_faults_stay_internal_with_their_last_line(proxy_model):
    model, pb = proxy_model
    model.raises = pytriton_error_text(RuntimeError("CUDA out of memory"))
    (answer,) = model.execute(requests(1))
    assert answer.error().code() == pb.TritonError.INTERNAL
    assert answer.error().message() == "internal error in the model: RuntimeError: CUDA out of memory"


def test_a_request_with_an_empty_input_is_refused_alone(proxy_model):
    model, pb = proxy_model
    first, empty, last = model.execute(requests(1) + requests(1, shape=(1, 0, 5, 3)) + requests(1))
    assert first == last == "ok"
    assert empty.error().code() == pb.TritonError.INVALID_ARG
    assert empty.error().message() == (
        "input 'image' is empty (shape [1, 0, 5, 3]); send at least one element per dimension"
    )


def test_the_proxy_matches_the_launchers_class_name():
    assert f'CLIENT_ERROR = "{ps.ClientInputError.__name__}"' in PROXY.read_text()


def test_pytritons_traceback_for_a_refused_request_is_dropped_from_the_log():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(ps.PYTRITON_HANDLER_LOG, logging.WARNING, __file__, 1, message, None, None)

    quiet = ps.QuietClientErrors()
    refused = "Exception while performing inference on requests=01: " + pytriton_error_text(
        ps.ClientInputError("request 0 of this batch: factor must be one of (1, 2); got 3")
    )
    assert not quiet.filter(record(refused))
    assert quiet.filter(
        record(
            "Exception while performing inference on requests=02: "
            + pytriton_error_text(RuntimeError("CUDA out of memory"))
        )
    )


def test_start_up_failures_worth_a_retry():
    assert ps._transient(TimeoutError("Triton Inference Server is not ready after timeout."))
    assert ps._transient(
        RuntimeError(
            "[400] load failed for model 'translator': ... Model initialize error: ...\n"
            "ConnectionRefusedError: [Errno 111] Connection refused"
        )
    )
    assert not ps._transient(RuntimeError("[400] load failed for model 'translator': ... ModuleNotFoundError"))
