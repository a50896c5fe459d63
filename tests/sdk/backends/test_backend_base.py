"""The backend base classes' defaults: a backend that implements only the required methods runs
the loop, and the optional abilities (files, capture, device I/O, close) behave as documented."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from sdk import InputError, Translator
from sdk.backends.base import Backend, Runner
from sdk.backends.onnxruntime import OrtBackend
from sdk.bundle import Bundle
from sdk.loop import RefinementLoop


class HostRunner(Runner):
    """An ONNX Runtime session over numpy buffers: the required methods only."""

    def __init__(self, spec, path):
        import onnxruntime

        self.spec = spec
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.runs = 0

    def bind(self, inputs, outputs):
        return dict(inputs), dict(outputs)

    def run(self, binding) -> None:
        inputs, outputs = binding
        results = self.session.run(list(outputs), {k: v for k, v in inputs.items()})
        for buf, value in zip(outputs.values(), results):
            buf[...] = value
        self.runs += 1


class HostBackend(Backend):
    name = "host"

    def __init__(self):
        self.runners: list[HostRunner] = []

    def load(self, spec, path):
        self.runners.append(HostRunner(spec, path))
        return self.runners[-1]

    def empty(self, shape, dtype):
        return np.zeros(shape, dtype)

    def upload(self, dst, array):
        dst[...] = array

    def download(self, src):
        return src.copy()


def test_a_backend_must_implement_the_required_methods():
    class Partial(Backend):
        def load(self, spec, path):
            raise AssertionError

    with pytest.raises(TypeError, match="abstract"):
        Partial()  # type: ignore[abstract]  # the point: empty, upload and download are missing


def test_the_defaults_of_the_optional_abilities(tiny_bundles):
    be = HostBackend()
    spec = Bundle(tiny_bundles["iterative"]).manifest.graphs["generator"]
    assert be.files(spec) == [name for name, _ in spec.files()] == [spec.file]
    assert (be.can_capture, be.device_io, be.consumer_stream) == (False, False, 0)
    ran = []
    assert be.capture(lambda: ran.append(1)) is None and ran == [1]  # run once, eagerly
    for call in (lambda: be.put_device(None, None), lambda: be.fetch_device(None)):
        with pytest.raises(InputError, match="runs on the CPU.*GPU backend"):
            call()
    be.synchronize()
    be.close()


def test_the_loop_runs_on_a_backend_with_only_the_required_methods(tiny_bundles, caplog):
    path = tiny_bundles["iterative"]
    x = tb.random_input(2, seed=5)
    with caplog.at_level(logging.WARNING, logger="sdk.loop"):
        loop = RefinementLoop(HostBackend(), Bundle(path, verify=False), cuda_graphs=True)
    assert not loop.cuda_graphs and "cannot record CUDA graphs" in caplog.text
    got = loop.run(x, iterations=3)
    with Translator(path, backend="onnxruntime", threads=1) as t:
        want = t.infer(x, iterations=3)
    np.testing.assert_allclose(got.images, want.images, atol=1e-5)
    np.testing.assert_allclose(got.latents, want.latents, atol=1e-5)
    with pytest.raises(InputError, match="need a GPU backend"):
        loop.run(x, iterations=1, output="device")


def test_closing_the_loop_closes_its_runners(tiny_bundles):
    class Counting(HostRunner):
        closed = 0

        def close(self) -> None:
            Counting.closed += 1

    class Backend2(HostBackend):
        def load(self, spec, path):
            self.runners.append(Counting(spec, path))
            return self.runners[-1]

    be = Backend2()
    loop = RefinementLoop(be, Bundle(tiny_bundles["two_stage"], verify=False))
    loop.close()
    assert Counting.closed == len(be.runners) == 3  # two stage graphs and the generator
    with pytest.raises(InputError, match="closed"):
        loop.run(tb.random_input(1))


def test_the_onnxruntime_cpu_backend_keeps_the_host_defaults(tiny_bundles):
    be = OrtBackend("cpu", threads=1)
    assert (be.device_io, be.consumer_stream, be.can_capture, be.gpu_io) == (False, 0, False, None)
    with pytest.raises(InputError, match="backend onnxruntime runs on the CPU"):
        be.put_device(None, None)
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        runners = list(t._loop.runners.values())
    assert runners and all(r.session is None for r in runners)  # close() dropped the sessions
