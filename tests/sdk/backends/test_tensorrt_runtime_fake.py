"""The TensorRT/CUDA backend against the GPU audit's findings (issue 25), without a GPU: the CUDA
error and driver requirement of a too-new cuda-python, the gpu extras' pinned pairs, engines from
another GPU model, TensorRT's log, the current device per host thread, and the mapping graph's
buffers. Through the stand-ins in ``tests/fakes`` (see test_tensorrt_fake.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fakes import fake_cuda, fake_tensorrt
from helpers import tiny_bundle
from helpers.tensorrt_bundles import add_engines, x_input


def test_an_old_driver_is_named_with_its_requirement(monkeypatch):
    """cuda-python 13 on a CUDA 12 driver: every call returns cudaErrorInsufficientDriver, which
    must not read as "no CUDA device is visible"."""
    from sdk import BackendError
    from sdk.backends import tensorrt as trt_backend
    from sdk.backends.cuda import CudaRuntime

    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    fake_tensorrt.install(monkeypatch, cudart)
    cudart.driver_version, cudart.runtime_version = 12040, 13000
    cudart.fail["cudaGetDeviceCount"] = fake_cuda.cudaError_t.cudaErrorInsufficientDriver
    reason = trt_backend.unavailable_reason()
    assert reason.startswith("cudaErrorInsufficientDriver") and "no CUDA device" not in reason
    assert "supports CUDA 12.4" in reason and "runtime is 13.0" in reason and "driver >= 580" in reason
    assert "gpu-cu12" in reason
    cudart.fail["cudaSetDevice"] = fake_cuda.cudaError_t.cudaErrorInsufficientDriver
    with pytest.raises(BackendError, match=r"cudaSetDevice\(0\) failed: cudaErrorInsufficientDriver: .*driver >= 580"):
        CudaRuntime(0)


def test_gpu_extras_pin_matching_tensorrt_and_cuda_python_pairs():
    import re
    from pathlib import Path

    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pairs = {"gpu-cu12": ("tensorrt-cu12", 10, 12), "gpu-cu13": ("tensorrt-cu13", 11, 13)}
    assert extras["gpu"] == extras["gpu-cu12"]
    for extra, (package, trt_major, cuda_major) in pairs.items():
        reqs = {re.split(r"[<>=!~]", r, maxsplit=1)[0].strip(): r for r in extras[extra]}
        assert set(reqs) == {package, "cuda-python"}, extra
        assert f">={trt_major}" in reqs[package] and f"<{trt_major + 1}" in reqs[package]
        assert f"<{cuda_major + 1}" in reqs["cuda-python"] and f">={cuda_major}" in reqs["cuda-python"]


def test_another_gpu_model_of_the_same_capability_is_refused_unless_allowed(
    fake_gpu, make_tiny_bundle, caplog, monkeypatch
):
    from sdk import StaleEngineError, Translator

    trt, cudart = fake_gpu
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    cudart.gpu_name = "NVIDIA A10"  # compute capability 8.6 too
    with pytest.raises(
        StaleEngineError,
        match=r"GPU Fake GPU \(host memory\) \(this GPU: NVIDIA A10, same compute "
        r"capability 8\.6.*GAN_ENCODER_RT_ALLOW_OTHER_GPU=1",
    ):
        Translator(bundle, backend="tensorrt")
    assert not [e for e in trt.log if e[0] == "deserialize_cuda_engine"]
    monkeypatch.setenv("GAN_ENCODER_RT_ALLOW_OTHER_GPU", "1")
    with caplog.at_level(logging.WARNING, logger="sdk.backends"):
        with Translator(bundle, backend="tensorrt") as t:
            t.infer(x_input(), iterations=1)
    assert "built on Fake GPU (host memory) and runs on NVIDIA A10" in caplog.text
    # TensorRT's own warning on deserialisation reaches Python logging (a plain trt.Logger prints it)
    assert "TensorRT: Using an engine plan file across different models of devices" in caplog.text


def test_tensorrt_errors_on_deserialisation_are_in_the_exception(fake_gpu, make_tiny_bundle):
    import hashlib

    from sdk import StaleEngineError, Translator

    bundle = make_tiny_bundle("iterative")
    manifest = add_engines(bundle)
    plan = bundle / manifest["engines"]["generator"]["file"]
    plan.write_bytes(b"NOTAPLAN" + plan.read_bytes()[8:])  # hashed as it is: only TensorRT can tell
    sha = hashlib.sha256(plan.read_bytes()).hexdigest()
    tiny_bundle.edit_manifest(bundle, lambda m: m["engines"]["generator"].__setitem__("sha256", sha))
    with pytest.raises(StaleEngineError, match=r"could not deserialize .*magicTagRead == kMAGIC_TAG"):
        Translator(bundle, backend="tensorrt", verify=False)


def test_device_1_is_used_from_every_thread_and_for_the_build(monkeypatch, make_tiny_bundle):
    """CUDA's current device is per host thread: a Translator on cuda:1 called from another
    thread, and an engine build for device 1, must not land on GPU 0."""
    import threading

    from sdk import Translator

    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart(devices=2))
    fake_tensorrt.install(monkeypatch, cudart)
    bundle = make_tiny_bundle("iterative")
    manifest = add_engines(bundle, device=1)
    assert {
        fake_tensorrt.read_plan((bundle / e["file"]).read_bytes())[0]["device"] for e in manifest["engines"].values()
    } == {1}
    cudart.current_device = 0
    x, results = x_input(), {}
    with Translator(bundle, backend="tensorrt", device=1) as t:
        held = set(cudart.device_mem)
        worker = threading.Thread(target=lambda: results.setdefault("other", t.infer(x, iterations=2)))
        worker.start()
        worker.join()
        assert "other" in results  # the worker raised otherwise (its engine calls ran on GPU 0)
        assert {cudart.ptr_device[p] for p in set(cudart.device_mem) - held} == {1}
        np.testing.assert_array_equal(results["other"].images, t.infer(x, iterations=2).images)


def add_mapping_graph(bundle):
    """A mapping graph (role sample -> style, ``w = z @ W``) added to a tiny bundle's manifest."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tiny_bundle.D
    w = np.random.default_rng(1).standard_normal((d, d)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "W"], ["w"])],
        "mapping",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["batch", d])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    model.ir_version = 8
    onnx.save(model, bundle / "mapping.onnx")
    sha = hashlib.sha256((bundle / "mapping.onnx").read_bytes()).hexdigest()
    tiny_bundle.edit_manifest(
        bundle,
        lambda m: m["graphs"].__setitem__(
            "mapping",
            {
                "file": "mapping.onnx",
                "sha256": sha,
                "precision": "fp32",
                "inputs": [{"name": "z", "role": "sample", "shape": ["batch", d], "dtype": "float32"}],
                "outputs": [{"name": "w", "role": "style", "shape": ["batch", d], "dtype": "float32"}],
            },
        ),
    )
    return w


def test_map_samples_reuses_its_buffers_per_batch(fake_gpu, make_tiny_bundle):
    """``mix(seed=...)`` maps a new sample per call: its device buffers must not pile up until close()."""
    from sdk import Translator

    _, cudart = fake_gpu
    bundle = make_tiny_bundle("iterative")
    w = add_mapping_graph(bundle)
    add_engines(bundle)
    with Translator(bundle, backend="tensorrt", verify=False) as t:
        z = np.random.default_rng(0).standard_normal((2, tiny_bundle.D)).astype(np.float32)
        np.testing.assert_allclose(t._loop.map_samples(z), z @ w, rtol=1e-5, atol=1e-5)
        held = len(cudart.device_mem)
        for seed in range(3):
            t._loop.map_samples(np.random.default_rng(seed).standard_normal((2, tiny_bundle.D)).astype(np.float32))
        assert len(cudart.device_mem) == held
        t._loop.map_samples(z[:1])  # a new batch size: one more pair of buffers
        assert len(cudart.device_mem) == held + 2
