"""Serve a bundle's ``Translator`` under NVIDIA Triton Inference Server, through PyTriton.

    python -m serving.pytriton_server --bundle engines/demo                       # 127.0.0.1:8000/8001/8002
    python -m serving.pytriton_server --bundle engines/demo --instances 2 --max-batch 8 --host 0.0.0.0
    python -m serving.pytriton_server --bundle engines/demo --no-dynamic-batching

Triton gives the HTTP and gRPC endpoints (KServe v2 protocol), dynamic batching, model
instances, Prometheus metrics (``:8002/metrics``) and health endpoints for Kubernetes probes
(``/v2/health/live``, ``/v2/health/ready``). Each model instance owns one ``Translator`` (its
own sessions and buffers; a Translator serialises its calls, so instances are what run in
parallel). With dynamic batching, Triton stacks concurrent requests into one execution of up to
``--max-batch`` rows (at most the bundle's ``batch.max``); rows that ask for different iteration
counts or task options are still answered each as asked (:mod:`serving.batching`).

The model's inputs and outputs are listed in :mod:`serving.batching`; ``serving/client.py`` is a
client. SIGINT and SIGTERM (what Kubernetes sends) stop the server after in-flight requests
and exit 0. When tritonserver, a model instance's Python stub or PyTriton's handler dies, the
launcher logs one line naming what died and exits 1, so a supervisor that restarts on failure
restarts it (:mod:`serving.watchdog`). A request the model refuses (an ``sdk.InputError``) is
answered with the SDK's one-line message as HTTP 400 / gRPC INVALID_ARGUMENT
(:mod:`serving.proxy_model`). Deployment (proxy, probes, supervisor): ``docs/serving_deployment.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from sdk import SdkError, Translator
from sdk.errors import InputError

from .batching import TensorInfo, model_inputs, model_outputs, translate_requests
from .environment import prepare_environment
from .watchdog import Watchdog, python_stubs

log = logging.getLogger("serving.pytriton_server")  # the same name under python -m, for log searches

DEFAULT_MODEL_NAME = "translator"
START_ATTEMPTS = 3
EXIT_DIED = 1  # the server or its model died: a supervisor should restart it
EXIT_BAD_SETUP = 2  # bad options or bundle, or Triton cannot run here: restarting will not help


class ServerDied(SdkError):
    """tritonserver, a model instance's stub or PyTriton's handler died, or the model did not
    start in Triton."""


class ClientInputError(Exception):
    """A request the model refuses because of its inputs; ``serving/proxy_model.py`` answers it
    with this one-line message as HTTP 400 / gRPC INVALID_ARGUMENT (matched by the class name,
    ``proxy_model.CLIENT_ERROR``: that file runs in Triton's stub and cannot import this one)."""


@dataclass
class ServeOptions:
    """How to serve. ``max_batch`` defaults to the bundle's ``batch.max``; ``threads`` (ONNX
    Runtime intra-op threads per instance) to the CPU count divided among the instances."""

    bundle: Path
    model_name: str = DEFAULT_MODEL_NAME
    instances: int = 1
    max_batch: int | None = None
    dynamic_batching: bool = True
    max_queue_delay_us: int = 2000
    backend: str = "auto"
    threads: int | None = None
    host: str = "127.0.0.1"
    http_host: str | None = None  # HTTP's own address (default: host), e.g. loopback behind a proxy
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout_s: int = 10
    verify: bool = True
    log_file: Path | None = None  # tritonserver's own log (default: this process's stdout/stderr)

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.model_name):
            raise InputError(f"model name {self.model_name!r} may only hold letters, digits, '.', '_' and '-'")
        if self.instances < 1:
            raise InputError(f"instances must be at least 1; got {self.instances}")
        if self.max_queue_delay_us < 0:
            raise InputError(f"max_queue_delay_us must be >= 0; got {self.max_queue_delay_us}")
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise InputError(f"HTTP, gRPC and metrics ports must be three different ports in 1..65535; got {ports}")


class TranslationServer:
    """PyTriton serving one bundle. ``start()`` returns once the model is ready; use as a
    context manager, or ``serve_forever()`` from a command line.

    Raises :class:`serving.environment.ServingUnavailable` where Triton cannot run, and the
    SDK's errors for a bad bundle or options."""

    def __init__(self, options: ServeOptions):
        options.check()
        prepare_environment()
        self.options = options
        threads = options.threads or max(1, (os.cpu_count() or 1) // options.instances)
        self.translators: list[Translator] = []
        try:
            for i in range(options.instances):
                # the first instance checks every file's SHA-256; the others open the same, verified files
                self.translators.append(
                    Translator(
                        options.bundle, backend=options.backend, threads=threads, verify=options.verify and i == 0
                    )
                )
            self.max_batch = self._max_batch()
        except BaseException:
            self._close_translators()
            raise
        self._triton = None
        log.info(
            "%s: %d instance(s) on %s, %d thread(s) each, max batch %d, dynamic batching %s",
            options.bundle,
            options.instances,
            self.translators[0].backend.name,
            threads,
            self.max_batch,
            "on" if options.dynamic_batching else "off",
        )

    def _max_batch(self) -> int:
        m = self.translators[0].manifest
        wanted = m.batch_max if self.options.max_batch is None else self.options.max_batch
        if not m.batch_min <= wanted <= m.batch_max:
            raise InputError(
                f"--max-batch {wanted} is outside the bundle's batch range {m.batch_min}..{m.batch_max} "
                f"(its graphs and engines take no more); rebuild the bundle with a larger --max-batch"
            )
        return wanted

    # ------------------------------------------------------------------ endpoints
    @property
    def http_url(self) -> str:
        return f"{self.options.http_host or self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.options.metrics_port}/metrics"

    # ------------------------------------------------------------------ lifetime
    def _bind(self):
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        o = self.options
        config = TritonConfig(
            http_address=o.http_host or o.host,
            http_port=o.http_port,
            grpc_address=o.host,
            grpc_port=o.grpc_port,
            metrics_address=o.host,
            metrics_port=o.metrics_port,
            exit_timeout_secs=o.exit_timeout_s,
            log_verbose=0,
            log_file=o.log_file,
        )
        triton = Triton(config=config)
        batcher = DynamicBatcher(max_queue_delay_microseconds=o.max_queue_delay_us) if o.dynamic_batching else None
        reference = self.translators[0]
        triton.bind(
            model_name=o.model_name,
            infer_func=[self._infer_fn(t) for t in self.translators],
            inputs=[_tensor(Tensor, t) for t in model_inputs(reference)],
            outputs=[_tensor(Tensor, t) for t in model_outputs(reference)],
            config=ModelConfig(batching=True, max_batch_size=self.max_batch, batcher=batcher),
            strict=True,
        )
        _answer_errors_briefly(triton)
        handler_log = logging.getLogger(PYTRITON_HANDLER_LOG)
        if not any(isinstance(f, QuietClientErrors) for f in handler_log.filters):
            handler_log.addFilter(QuietClientErrors())
        return triton

    def _infer_fn(self, translator: Translator):
        max_batch = self.max_batch

        def infer(requests):
            # PyTriton hands a list of requests (the batcher's grouping) and wants one dict per request back
            try:
                return translate_requests(translator, [r.data for r in requests], max_batch)
            except InputError as e:  # the client's fault: one line, no traceback, HTTP 400
                message = " ".join(str(e).split())
                log.info("refused a request: %s", message)
                raise ClientInputError(message) from None

        return infer

    def start(self) -> TranslationServer:
        """Launch tritonserver and wait until the model is ready (a few seconds)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            self._triton = self._bind()
            try:
                self._triton.run()
                break
            except Exception as e:
                died = self._tritonserver_ended()
                self._stop_triton()
                if died is not None:  # PyTriton then waits out its own timeouts before it raises
                    self._close_translators()
                    raise ServerDied(f"model {self.options.model_name!r} did not start: {died}") from None
                # PyTriton's model start-up has short fixed timeouts (its instances get one second to
                # exchange a handshake); on an overloaded host they can expire although nothing is wrong
                # with the model. Retry those; anything else is a real error.
                if attempt == START_ATTEMPTS or not _transient(e):
                    self._close_translators()
                    log.debug("Triton's start failed", exc_info=True)
                    raise ServerDied(f"model {self.options.model_name!r} did not start: {_last_line(e)}") from e
                log.warning(
                    "Triton's model start timed out or its handshake failed (busy host?): %s; retrying (%d of %d)",
                    _last_line(e),
                    attempt + 1,
                    START_ATTEMPTS,
                )
        log.info(
            "serving model %r: HTTP %s, gRPC %s, metrics %s",
            self.options.model_name,
            self.http_url,
            self.grpc_url,
            self.metrics_url,
        )
        return self

    def serve_forever(self, poll_s: float = 1.0) -> None:
        """Serve until SIGINT or SIGTERM, then stop after the requests in flight.

        Raises :class:`ServerDied`, naming what died, when tritonserver, a model instance's
        stub or PyTriton's handler dies first."""
        try:
            self.start()
            watchdog = self.watchdog()
            while (reason := watchdog.check()) is None:
                time.sleep(poll_s)
        except KeyboardInterrupt:
            log.info("stopping (finishing in-flight requests, at most %d s)", self.options.exit_timeout_s)
            return
        finally:
            self.stop()
        raise ServerDied(f"model {self.options.model_name!r} can no longer answer: {reason}")

    def watchdog(self) -> Watchdog:
        """A :class:`Watchdog` over the running server (call after :meth:`start`)."""
        triton, running = self._triton, _tritonserver_command(self._triton)
        if running is None:  # PyTriton's internals moved: its own check still covers tritonserver
            log.warning("cannot find tritonserver's process in this PyTriton; watching through is_alive() only")
            return Watchdog(None, lambda: None, [], triton.is_alive)
        stubs = python_stubs(running.pid)
        if len(stubs) != self.options.instances:
            log.warning(
                "found %d Python backend stub(s) for %d instance(s); watching those", len(stubs), self.options.instances
            )
        return Watchdog(running.pid, _exit_code(running), stubs, triton.is_alive)

    def _tritonserver_ended(self) -> str | None:
        """Why the tritonserver process ended, None while it runs (or where it cannot be found)."""
        running = _tritonserver_command(self._triton)
        return None if running is None else Watchdog(running.pid, _exit_code(running), [], lambda: True).check()

    def stop(self) -> None:
        self._stop_triton()
        self._close_translators()

    def _stop_triton(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None

    def _close_translators(self) -> None:
        for t in self.translators:
            t.close()

    def __enter__(self) -> TranslationServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _last_line(error: Exception) -> str:
    """The last line of an error's message (PyTriton's messages carry the server's tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _transient(error: Exception) -> bool:
    """A start-up failure worth retrying: one of PyTriton's or Triton's timeouts, or a model
    instance whose handshake with this process was refused (seen on a busy host when a server
    starts right after another one stopped)."""
    text = str(error).lower()
    return isinstance(error, TimeoutError) or "timeout" in text or "connection refused" in text


PYTRITON_HANDLER_LOG = "pytriton.proxy.inference"


class QuietClientErrors(logging.Filter):
    """Drops PyTriton's WARNING with a traceback for each request the model refused: that is
    the client's error, logged as one INFO line by the inference function instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f".{ClientInputError.__name__}: " not in record.getMessage()


def _tritonserver_command(triton):
    """PyTriton's handle (an ``sh.RunningCommand``) on the tritonserver process, or None."""
    return getattr(getattr(triton, "_triton_server", None), "_tritonserver_running_cmd", None)


def _exit_code(running):
    return lambda: getattr(getattr(running, "process", None), "exit_code", None)


def _answer_errors_briefly(triton) -> None:
    """Ship ``serving/proxy_model.py`` as each bound model's ``model.py``, PyTriton's proxy
    beside it as ``pytriton_model.py``. PyTriton sends these files to tritonserver when it
    loads the model (``Model.get_proxy_model_files``)."""
    ours = (Path(__file__).parent / "proxy_model.py").read_bytes()
    for model in getattr(getattr(triton, "_model_manager", None), "models", ()):
        original = model.get_proxy_model_files

        def files(original=original, version=model.model_version):
            found = dict(original())
            proxy = found.pop(f"file:{version}/model.py", None)
            if proxy is None:
                log.warning("PyTriton ships no model.py here; client errors keep PyTriton's traceback and HTTP 500")
                return found
            found[f"file:{version}/pytriton_model.py"] = proxy
            found[f"file:{version}/model.py"] = ours
            return found

        model.get_proxy_model_files = files


def _tensor(tensor_cls, info: TensorInfo):
    return tensor_cls(name=info.name, dtype=info.dtype, shape=info.dims, optional=info.optional)


# --------------------------------------------------------------------------- command line


def parse_args(argv=None) -> ServeOptions:
    p = argparse.ArgumentParser(
        prog="python -m serving.pytriton_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", type=Path, default=Path("engines/demo"), help="bundle folder (default: engines/demo)")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="Triton model name (default: %(default)s)")
    p.add_argument("--instances", type=int, default=1, help="model instances, one Translator each (default: 1)")
    p.add_argument("--max-batch", type=int, help="Triton max_batch_size (default: the bundle's batch.max)")
    p.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        help="execute every request on its own (Triton's default scheduler)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="how long the dynamic batcher may hold a request to fill a batch (default: 2000 us)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="Translator backend: auto, tensorrt, onnxruntime, onnxruntime-cuda (default: auto)",
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per instance (default: CPUs / instances)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback; 0.0.0.0 for all)")
    p.add_argument(
        "--http-host",
        help="address for HTTP alone (default: --host); 127.0.0.1 keeps HTTP for a "
        "local proxy and probes while gRPC listens on --host",
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--exit-timeout", type=int, default=10, help="seconds to finish in-flight requests on shutdown")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the bundle's SHA-256 checks")
    p.add_argument("--log-file", type=Path, help="write tritonserver's log to this file instead of the console")
    p.add_argument("-v", "--verbose", action="store_true", help="PyTriton's and the SDK's debug logs")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not a.verbose:
        logging.getLogger("pytriton").setLevel(logging.WARNING)
    return ServeOptions(
        bundle=a.bundle,
        model_name=a.model_name,
        instances=a.instances,
        max_batch=a.max_batch,
        dynamic_batching=a.dynamic_batching,
        max_queue_delay_us=a.max_queue_delay_us,
        backend=a.backend,
        threads=a.threads,
        host=a.host,
        http_host=a.http_host,
        http_port=a.http_port,
        grpc_port=a.grpc_port,
        metrics_port=a.metrics_port,
        exit_timeout_s=a.exit_timeout,
        verify=a.verify,
        log_file=a.log_file,
    )


def main(argv=None) -> int:
    options = parse_args(argv)

    def on_sigterm(signum, frame):  # Kubernetes stops pods with SIGTERM: shut down as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        TranslationServer(options).serve_forever()
    except ServerDied as e:
        log.error("%s; exiting with %d so a supervisor restarts the server", e, EXIT_DIED)
        return EXIT_DIED
    except SdkError as e:  # ServingUnavailable too
        log.error("%s", e)
        return EXIT_BAD_SETUP
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
