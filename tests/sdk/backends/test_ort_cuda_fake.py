"""ONNX Runtime on a GPU (``backend="onnxruntime-cuda"`` / ``"onnxruntime-tensorrt"``, ``device=``).

On this machine onnxruntime is the CPU build: the error path runs for real. The provider lists
and the device arguments of every ``OrtValue`` are checked through ``fakes.fake_ort_cuda`` (the
real CPU onnxruntime with its CUDA surface recorded; its "cuda" memory is fake device memory):
what the SDK asks of ONNX Runtime, not what ORT's CUDA kernels compute (``tests/gpu/`` does that).
"""

from __future__ import annotations

import numpy as np
import pytest

from fakes import fake_cuda, fake_ort_cuda
from fakes.fake_arrays import FakeCudaTensor
from helpers import tiny_bundle as tb
from sdk import BackendError, Translator
from sdk.backends import create_backend
from sdk.backends.onnxruntime.providers import gpu_providers
from sdk.device_arrays import DeviceArray


def test_cpu_onnxruntime_names_the_gpu_package(tiny_bundles):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the error path cannot be seen here")
    for backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        with pytest.raises(BackendError, match=r"no CUDA execution provider .*pip install onnxruntime-gpu"):
            Translator(tiny_bundles["iterative"], backend=backend)


def test_provider_lists():
    cpu = ["CPUExecutionProvider"]
    both = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] + cpu
    assert gpu_providers(both, "cuda", 1, False) == [("CUDAExecutionProvider", {"device_id": 1})] + cpu
    trt, cuda, last = gpu_providers(both, "tensorrt", 1, True)
    assert trt[0] == "TensorrtExecutionProvider" and cuda == ("CUDAExecutionProvider", {"device_id": 1})
    assert trt[1]["device_id"] == 1 and trt[1]["trt_fp16_enable"] is True and trt[1]["trt_engine_cache_enable"]
    assert last == "CPUExecutionProvider"
    with pytest.raises(BackendError, match="no TensorRT execution provider.*onnxruntime-cuda"):
        gpu_providers(["CUDAExecutionProvider"] + cpu, "tensorrt", 0, False)
    with pytest.raises(BackendError, match="device must be a GPU index"):
        create_backend("onnxruntime-cuda", device=-1)


@pytest.fixture
def fake_ort(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart(devices=2))
    return fake_ort_cuda.install(monkeypatch, cudart), cudart


@pytest.mark.parametrize(
    "backend,first",
    [("onnxruntime-cuda", "CUDAExecutionProvider"), ("onnxruntime-tensorrt", "TensorrtExecutionProvider")],
)
def test_sessions_and_buffers_are_placed_on_the_chosen_gpu(fake_ort, tiny_bundles, backend, first):
    ort, _ = fake_ort
    x = tb.random_input(2, seed=1)
    with Translator(tiny_bundles["two_stage"], backend=backend, device=1) as t:
        got = t.infer(x, iterations=2)
    assert ort.sessions and all(p[0][0] == first and p[0][1]["device_id"] == 1 for p in ort.sessions)
    assert ort.values and set(ort.values) == {("cuda", 1)}  # every loop buffer on cuda:1
    with Translator(tiny_bundles["two_stage"], backend="onnxruntime", threads=1) as cpu:
        np.testing.assert_allclose(got.images, cpu.infer(x, iterations=2).images, rtol=1e-6, atol=1e-6)


def test_auto_prefers_onnxruntime_cuda_without_engines(fake_ort, tiny_bundles):
    with Translator(tiny_bundles["iterative"]) as t:
        assert (t.backend.name, t.backend.device) == ("onnxruntime", "cuda")


def test_device_arrays_through_onnxruntime_cuda(fake_ort, tiny_bundles):
    _, cudart = fake_ort
    x = tb.random_input(2, seed=2)
    with Translator(tiny_bundles["iterative"], backend="onnxruntime-cuda", device=1) as t:
        want = t.infer(x, iterations=2)
        cudart.calls.clear()
        got = t.infer(FakeCudaTensor(cudart, x, device=1), iterations=2, output="device")
        names = cudart.names()
        assert isinstance(got.images, DeviceArray) and got.images.device == 1
        kinds = [c[1][3].name for c in cudart.calls if c[0] == "cudaMemcpyAsync"]
        assert kinds == ["cudaMemcpyDeviceToDevice"] * 3
        # the input copy completes before ORT (on its own stream) reads it
        first_copy = names.index("cudaMemcpyAsync")
        assert [n for n in names[first_copy + 1 :] if n != "cudaSetDevice"][0] == "cudaStreamSynchronize"
    np.testing.assert_array_equal(got.images.numpy(), want.images)
    np.testing.assert_array_equal(got.latents.numpy(), want.latents)


@pytest.mark.parametrize("version", ["1.17.0", "1.23.0"])
def test_buffer_sizes_do_not_need_onnxruntime_1_23(monkeypatch, version):
    from sdk.backends.onnxruntime.tensors import ortvalue_nbytes

    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    ort = fake_ort_cuda.install(monkeypatch, cudart, version=version)
    for dtype, itemsize in ((np.float32, 4), (np.float16, 2)):
        value = ort.OrtValue.ortvalue_from_shape_and_type([2, 3, 5], dtype, "cuda", 0)
        assert ortvalue_nbytes(value) == 2 * 3 * 5 * itemsize
        assert hasattr(value, "tensor_size_in_bytes") == (version >= "1.23")
