"""Serving under a real Triton server (PyTriton), on loopback: ``tritonclient`` requests over
HTTP and gRPC must get what the local ``Translator`` computes.

The bundle is a tiny one (tests/helpers/tiny_bundle.py: the same export path as engines/demo, built in
seconds). Tolerance: the server runs rows stacked by Triton's dynamic batcher, the reference one
by one; ONNX Runtime's float32 results then differ in the last bits at most, so raw images and
latents are compared with ``atol=1e-5`` and uint8 images to within one level (rounding).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from sdk import InputError, Translator
from serving.environment import unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"Triton cannot start here: {REASON}")

RAW_ATOL = 1e-5
QUEUE_DELAY_US = 250_000  # long enough that requests sent together are batched together


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def sr_bundle(tiny_graphs, tmp_path_factory):
    return tb.write_bundle(
        tmp_path_factory.mktemp("serving") / "sr", tiny_graphs, "iterative", task="super_resolution", factor=4
    )


@pytest.fixture(scope="module")
def server(sr_bundle, tmp_path_factory):
    from serving.pytriton_server import ServeOptions, TranslationServer

    http, grpc, metrics = free_ports(3)
    options = ServeOptions(
        bundle=sr_bundle,
        instances=2,
        max_queue_delay_us=QUEUE_DELAY_US,
        backend="onnxruntime",
        threads=1,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        exit_timeout_s=5,
        log_file=tmp_path_factory.mktemp("triton") / "tritonserver.log",
    )
    with TranslationServer(options) as s:
        yield s


@pytest.fixture(scope="module")
def local(sr_bundle):
    with Translator(sr_bundle, backend="onnxruntime") as t:
        yield t


def client(server, protocol: str):
    from serving.client import TranslationClient

    return TranslationClient(server.http_url if protocol == "http" else server.grpc_url, protocol)


def face(seed: int, size=(48, 40)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)


def assert_matches(served, expected, row: int = 0) -> None:
    np.testing.assert_allclose(served.raw[row], expected.images[0], atol=RAW_ATOL, rtol=0)
    if served.latents is not None:
        np.testing.assert_allclose(served.latents[row], expected.latents[0], atol=RAW_ATOL, rtol=0)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_responses_equal_local_translator(server, local, protocol):
    image, x = face(1), tb.random_input(2, seed=2)
    with client(server, protocol) as c:
        assert c.ready()
        res = c.translate(image, factor=8, iterations=2, latents=True)
        batch = c.infer(x, iterations=3)
        default = c.translate(image)
    assert res.output.shape == (1, tb.R, tb.R, 3) and res.output.dtype == np.uint8
    assert_matches(res, local.infer(local.preprocess(image, factor=8)[None], iterations=2))
    assert np.abs(res.output[0].astype(int) - local(image, factor=8, iterations=2)).max() <= 1
    for i in range(2):
        assert_matches(batch, local.infer(x[i : i + 1], iterations=3), row=i)
    assert batch.latents is None  # only asked for
    assert_matches(default, local.infer(local.preprocess(image)[None]))


def test_concurrent_mixed_requests_are_batched_and_each_answered_right(server, local):
    from serving.client import model_metrics

    jobs = [(face(10 + i), {"iterations": 1 + i % 3, "factor": (2, 4, 8, 16)[i % 4]}) for i in range(8)]
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        with client(server, ("http", "grpc")[i % 2]) as c:
            start.wait()
            results[i] = c.translate(jobs[i][0], latents=True, **jobs[i][1])

    before = model_metrics(server.metrics_url)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # Triton records a request's statistics after its response went out: poll until all are counted
    deadline = time.monotonic() + 20
    while True:
        after = model_metrics(server.metrics_url)
        done = after.get("nv_inference_request_success", 0) - before.get("nv_inference_request_success", 0)
        if done >= len(jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for (image, options), res in zip(jobs, results):
        assert res is not None, "a request got no answer"
        x = local.preprocess(image, factor=options["factor"])[None]
        expected = local.infer(x, iterations=options["iterations"])
        assert_matches(res, expected)
    requests = after["nv_inference_request_success"] - before.get("nv_inference_request_success", 0)
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0)
    assert requests == len(jobs)
    assert executions < requests, "Triton's dynamic batcher ran every request on its own"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_the_sdks_one_line_message_as_a_client_error(server, protocol):
    from serving.client import ServerError

    refused = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}[protocol]
    with client(server, protocol) as c:
        for options, reason in (
            ({"iterations": 0}, "iterations must be an int in 1.."),
            ({"factor": 3}, "factor must be one of"),
        ):
            with pytest.raises(ServerError, match=reason) as e:
                c.translate(face(3), **options)
            assert e.value.status == refused
            assert "\n" not in str(e.value) and "Traceback" not in str(e.value) and len(str(e.value)) < 300
        assert c.translate(face(3)).output.shape == (1, tb.R, tb.R, 3)  # and the server still answers


def post_json(server, body: bytes) -> tuple[int, dict]:
    import http.client
    import json

    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(
            "POST",
            f"/v2/models/{server.options.model_name}/infer",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_json_request_with_a_bad_image_gets_400_and_one_line(server):
    import json

    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 4, 4, 7], "data": [0] * (16 * 7)}]}
    status, answer = post_json(server, json.dumps(body).encode())
    assert status == 400
    assert answer == {
        "error": "request 0 of this batch: expected an image HxWx3 (RGB), HxWx4 (RGBA) or HxW (gray); "
        "got shape (4, 4, 7)"
    }
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 0, 4, 3], "data": []}]}
    assert post_json(server, json.dumps(body).encode()) == (
        400,
        {"error": "input 'image' is empty (shape [1, 0, 4, 3]); send at least one element per dimension"},
    )


def test_options_are_checked_before_launch(sr_bundle):
    from serving.pytriton_server import ServeOptions, TranslationServer, main

    with pytest.raises(InputError, match="outside the bundle's batch range 1..4"):
        TranslationServer(ServeOptions(bundle=sr_bundle, max_batch=16))
    with pytest.raises(InputError, match="three different ports"):
        TranslationServer(ServeOptions(bundle=sr_bundle, http_port=9000, grpc_port=9000))
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def nested_json_answer(port: int, depth: int, header_bytes: int, gzip: bool = False) -> tuple[int, bytes]:
    import gzip as gz
    import http.client

    body, headers = b"[" * depth + b"]" * depth, {"Inference-Header-Content-Length": str(header_bytes)}
    if gzip:  # Triton inflates the body itself: the header rule must hold for what it inflates
        body, headers = gz.compress(body), {**headers, "Content-Encoding": "gzip"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v2/models/translator/infer", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_launcher_exits_non_zero_when_tritonserver_dies(sr_bundle, tmp_path):
    """A crash of tritonserver (SIGKILL here; a stack overflow in its JSON parser in the field)
    must end the launcher with a non-zero status and one line naming it, so that a supervisor
    restarts it."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from serving.watchdog import children

    http, grpc, metrics = free_ports(3)
    log = tmp_path / "launcher.log"
    root = Path(__file__).resolve().parents[2]
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.pytriton_server",
                "--bundle",
                str(sr_bundle),
                "--backend",
                "onnxruntime",
                "--threads",
                "1",
                "--no-verify",
                "--http-port",
                str(http),
                "--grpc-port",
                str(grpc),
                "--metrics-port",
                str(metrics),
                "--exit-timeout",
                "3",
                "--log-file",
                str(tmp_path / "tritonserver.log"),
            ],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        from serving.client import TranslationClient

        deadline = time.monotonic() + 180
        while "serving model 'translator'" not in log.read_text():  # start() returned
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # docs/serving_deployment.md's proxy rule: a JSON part bounded by Inference-Header-Content-Length
        # (5 digits at most) cannot nest deep enough to overflow tritonserver's recursive JSON parser
        assert nested_json_answer(http, depth=200_000, header_bytes=99_999)[0] >= 400
        assert nested_json_answer(http, depth=200_000, header_bytes=99_999, gzip=True)[0] >= 400
        with TranslationClient(f"127.0.0.1:{http}") as c:
            assert c.ready()
        (server_pid,) = children(launcher.pid, "tritonserver")
        os.kill(server_pid, signal.SIGKILL)
        assert launcher.wait(timeout=60) == 1, log.read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    errors = [line for line in log.read_text().splitlines() if line.startswith("ERROR ")]
    assert errors == [
        f"ERROR serving.pytriton_server: model 'translator' can no longer answer: tritonserver "
        f"(pid {server_pid}) ended with signal 9 (SIGKILL); its log says why; exiting with 1 so a "
        f"supervisor restarts the server"
    ]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (apt-get install nginx)")
def test_the_documented_nginx_proxy_passes_good_requests_and_refuses_the_dangerous(server, tmp_path):
    """docs/serving_deployment.md's nginx configuration, as written, in front of the server."""
    import gzip
    import http.client
    import re
    import subprocess
    from pathlib import Path

    from serving.client import ServerError, TranslationClient

    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving_deployment.md").read_text()
    (port,) = free_ports(1)
    snippet = re.search(r"```nginx\n(.*?)```", doc, re.S).group(1)
    snippet = snippet.replace("127.0.0.1:8000", server.http_url).replace("listen 8080;", f"listen 127.0.0.1:{port};")
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body;\n"
        f"proxy_temp_path {tmp_path}/proxy;\n{snippet}}}\n"
    )
    nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"])

    def status(method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            return connection.getresponse().status
        finally:
            connection.close()

    try:
        with TranslationClient(f"127.0.0.1:{port}") as c:
            deadline = time.monotonic() + 20
            while not c.ready():
                assert nginx.poll() is None and time.monotonic() < deadline, (tmp_path / "error.log").read_text()
                time.sleep(0.1)
            assert c.translate(face(4)).output.shape == (1, tb.R, tb.R, 3)
            with pytest.raises(ServerError, match="factor must be one of") as e:
                c.translate(face(4), factor=3)
            assert e.value.status == "400"
        nested = b"[" * 200_000 + b"]" * 200_000
        infer = f"/v2/models/{server.options.model_name}/infer"
        assert status("POST", infer, nested) == 413  # no Inference-Header-Content-Length
        assert status("POST", infer, nested, {"Inference-Header-Content-Length": "400000"}) == 413
        assert (
            status(
                "POST",
                infer,
                gzip.compress(nested),
                {"Content-Encoding": "gzip", "Inference-Header-Content-Length": "99"},
            )
            == 415
        )
        assert status("POST", f"/v2/repository/models/{server.options.model_name}/unload") == 404
        with client(server, "http") as direct:
            assert direct.ready()
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
