"""Serving under a real Triton server (PyTriton), on loopback: ``tritonclient`` requests over
HTTP and gRPC must get what the local ``Translator`` computes.

The bundle is a tiny one (tests/tiny_bundle.py: the same export path as engines/demo, built in
seconds). Tolerance: the server runs rows stacked by Triton's dynamic batcher, the reference one
by one; ONNX Runtime's float32 results then differ in the last bits at most, so raw images and
latents are compared with ``atol=1e-5`` and uint8 images to within one level (rounding).
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

import tiny_bundle as tb
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
    return tb.write_bundle(tmp_path_factory.mktemp("serving") / "sr", tiny_graphs, "iterative",
                           task="super_resolution", factor=4)


@pytest.fixture(scope="module")
def server(sr_bundle, tmp_path_factory):
    from serving.pytriton_server import ServeOptions, TranslationServer

    http, grpc, metrics = free_ports(3)
    options = ServeOptions(bundle=sr_bundle, instances=2, max_queue_delay_us=QUEUE_DELAY_US, backend="onnxruntime",
                           threads=1, http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_s=5,
                           log_file=tmp_path_factory.mktemp("triton") / "tritonserver.log")
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
        assert_matches(batch, local.infer(x[i:i + 1], iterations=3), row=i)
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
def test_bad_requests_get_the_reason(server, protocol):
    from serving.client import ServerError

    with client(server, protocol) as c:
        with pytest.raises(ServerError, match="iterations must be an int in 1.."):
            c.translate(face(3), iterations=0)
        with pytest.raises(ServerError, match="factor must be one of"):
            c.translate(face(3), factor=3)


def test_options_are_checked_before_launch(sr_bundle):
    from serving.pytriton_server import ServeOptions, TranslationServer, main

    with pytest.raises(InputError, match="outside the bundle's batch range 1..4"):
        TranslationServer(ServeOptions(bundle=sr_bundle, max_batch=16))
    with pytest.raises(InputError, match="three different ports"):
        TranslationServer(ServeOptions(bundle=sr_bundle, http_port=9000, grpc_port=9000))
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
