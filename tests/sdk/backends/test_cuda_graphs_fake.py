"""CUDA-graph capture and replay of the loop (``cuda_graphs=True``), without a GPU.

Through ``tests/fakes``: the fake runtime records work enqueued on a capturing stream as graph
nodes and runs them on launch, and rejects synchronising calls during capture as CUDA does. These
tests check the control flow — what is captured, when, which graph a call replays, what stays
outside the graph, the fallbacks — not GPU speed or numerics (``tests/gpu/`` does that).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fakes import fake_cuda
from helpers import tiny_bundle as tb
from helpers.tensorrt_bundles import add_engines, x_input
from sdk import Translator

KERNEL = "cudaGraphNodeTypeKernel"


@pytest.fixture
def engines(fake_gpu, make_tiny_bundle):
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    return bundle


def calls_between(cudart, names=("cudaMemcpyAsync", "cudaGraphLaunch", "cudaStreamBeginCapture")):
    return [c[0] if c[0] != "cudaMemcpyAsync" else c[1][3].name for c in cudart.calls if c[0] in names]


def test_replay_equals_eager_and_enqueues_nothing_per_engine(fake_gpu, engines):
    trt, cudart = fake_gpu
    frames = [x_input(seed=s) for s in range(4)]
    with Translator(engines, backend="tensorrt") as eager:
        expected = [eager.infer(x, iterations=3) for x in frames]
    with Translator(engines, backend="tensorrt", cuda_graphs=True) as t:
        first = t.infer(frames[0], iterations=3)  # eager warm-up run + capture
        graph = t._loop._arenas[2].graphs[(3, "init")]
        assert graph is not None and graph.node_types() == [KERNEL] * 6  # 3 steps x (encoder, generator)
        trt.log.clear()
        cudart.calls.clear()
        got = [first] + [t.infer(x, iterations=3) for x in frames[1:]]
        assert not [e for e in trt.log if e[0] == "execute_async_v3"]  # nothing enqueued per engine call
        assert sum(e[0] == "kernel" for e in trt.log) == 6 * 3  # the graph's kernels ran
        # per frame: the upload, one launch, the two downloads; the copies are outside the graph
        assert (
            calls_between(cudart)
            == ["cudaMemcpyHostToDevice", "cudaGraphLaunch", "cudaMemcpyDeviceToHost", "cudaMemcpyDeviceToHost"] * 3
        )
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(b.images, a.images)
        np.testing.assert_array_equal(b.latents, a.latents)
    assert not cudart.graphs and not cudart.device_mem  # close() destroyed the graphs and buffers


def test_capture_runs_the_steps_eagerly_first(fake_gpu, engines):
    """TensorRT does one-time setup on a context's first enqueue, which must not be captured: the
    fake refuses it under capture, so capture only succeeds because the eager run came first."""
    trt, cudart = fake_gpu
    with Translator(engines, backend="tensorrt", cuda_graphs=True) as t:
        t.infer(x_input(), iterations=2)
        names = cudart.names()
    begin, end = names.index("cudaStreamBeginCapture"), names.index("cudaStreamEndCapture")
    assert "synchronous_call" in names[:begin]  # the contexts' first enqueues, before the capture
    assert "synchronous_call" not in names[begin:end] and "cudaStreamSynchronize" not in names[begin:end]
    assert names[begin - 1] == "cudaStreamSynchronize"  # the eager run finished before recording
    assert cudart.calls[begin][1][1] == fake_cuda.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal


def test_one_graph_per_batch_iterations_and_start(fake_gpu, engines):
    trt, cudart = fake_gpu
    x1, x2 = x_input(batch=1, seed=3), x_input(batch=2, seed=4)
    with Translator(engines, backend="tensorrt") as eager:
        prev = eager.infer(x2, iterations=2)
        want_warm = eager.infer(x2, iterations=2, init=prev)
        want_cold = eager.infer(x2, iterations=3)
    with Translator(engines, backend="tensorrt", cuda_graphs=True) as t:
        for _ in range(2):  # the second round replays what the first captured
            t.infer(x1, iterations=2)
            assert t.infer(x2, iterations=2).latents.shape[0] == 2
            cold = t.infer(x2, iterations=3)
            warm = t.infer(x2, iterations=2, init=prev)
        loop = t._loop
        assert set(loop._arenas[1].graphs) == {(2, "init")}
        assert set(loop._arenas[2].graphs) == {(2, "init"), (3, "init"), (2, "warm")}
        assert cudart.names().count("cudaStreamBeginCapture") == 4 and cudart.launches == 4
        trt.log.clear()
        t.infer(x2, iterations=2, init=prev)
        first = next(e for e in trt.log if e[0] == "kernel")
        arena = loop._arenas[2]
        assert (first[2]["z"], first[2]["y"]) == (arena.zw.ptr, arena.yw.ptr)  # the warm graph reads the init state
    np.testing.assert_array_equal(warm.latents, want_warm.latents)
    np.testing.assert_array_equal(cold.images, want_cold.images)


def test_uncapturable_engines_run_eagerly_with_one_warning(fake_gpu, engines, caplog):
    trt, cudart = fake_gpu
    trt.uncapturable = True
    x = x_input(seed=5)
    with Translator(engines, backend="tensorrt") as eager:
        want = eager.infer(x, iterations=2)
    with caplog.at_level(logging.WARNING, logger="sdk"):
        with Translator(engines, backend="tensorrt", cuda_graphs=True) as t:
            got = [t.infer(x, iterations=2) for _ in range(3)]
            assert t._loop._arenas[2].graphs == {(2, "init"): None}
            assert not cudart.capturing and cudart.launches == 0
            assert "cudaGetLastError" in cudart.names()  # the failed capture's error was cleared
    assert caplog.text.count("could not be captured into a CUDA graph") == 1
    for g in got:
        np.testing.assert_array_equal(g.images, want.images)
    assert not cudart.graphs


def test_capture_unavailable_keeps_the_result_and_runs_eagerly(fake_gpu, engines, caplog):
    trt, cudart = fake_gpu
    x = x_input(seed=8)
    with Translator(engines, backend="tensorrt") as eager:
        want = eager.infer(x, iterations=2)
    cudart.fail["cudaStreamBeginCapture"] = fake_cuda.cudaError_t.cudaErrorInvalidValue
    with caplog.at_level(logging.WARNING, logger="sdk"):
        with Translator(engines, backend="tensorrt", cuda_graphs=True) as t:
            got = [t.infer(x, iterations=2) for _ in range(2)]
    assert "stream capture is unavailable (cudaErrorInvalidValue)" in caplog.text
    for g in got:
        np.testing.assert_array_equal(g.latents, want.latents)


def test_reads_between_steps_are_never_captured(fake_gpu, engines):
    trt, cudart = fake_gpu
    x = x_input(seed=6)
    with Translator(engines, backend="tensorrt") as eager:
        want = eager.infer(x, iterations=4, return_steps=True)
    with Translator(engines, backend="tensorrt", cuda_graphs=True) as t:
        steps = t.infer(x, iterations=4, return_steps=True)
        settled = t.infer(x, iterations=4, early_exit=1e-9)
        assert "cudaStreamBeginCapture" not in cudart.names() and not t._loop._arenas[2].graphs
    for a, b in zip(want.steps, steps.steps):
        np.testing.assert_array_equal(b.latents, a.latents)
    assert settled.iterations == 4 and len(settled.latent_change) == 4


def test_a_host_copy_inside_captured_work_is_refused(fake_gpu, engines, caplog):
    """Why copies stay outside the graph: a download (device→host copy + stream sync) inside the
    captured work invalidates the capture, and capture() reports that instead of a graph."""
    trt, cudart = fake_gpu
    with Translator(engines, backend="tensorrt") as t:
        t.infer(x_input(), iterations=1)
        be, arena = t.backend, t._loop._arenas[2]
        with caplog.at_level(logging.WARNING, logger="sdk"):
            assert be.capture(lambda: be.download(arena.z[0])) is None
        assert "cudaErrorStreamCaptureUnsupported" in caplog.text
        assert not cudart.capturing and not cudart.graphs
        t.infer(x_input(), iterations=1)  # the stream works normally afterwards


def test_backends_without_graphs_warn_and_run_eagerly(tiny_bundles, caplog):
    x = tb.random_input(1, seed=7)
    with caplog.at_level(logging.WARNING, logger="sdk"):
        with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1, cuda_graphs=True) as t:
            got = t.infer(x, iterations=2)
    assert "cannot record CUDA graphs" in caplog.text
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        np.testing.assert_array_equal(got.images, t.infer(x, iterations=2).images)
