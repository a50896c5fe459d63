"""TensorRT on a real GPU. Skipped (with the reason) where TensorRT, cuda-python or a GPU is
missing — as on the CI and development machines of this project, where none of these tests has
run yet. The control flow of the same code is covered without a GPU by test_tensorrt_fake.py.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "tensorrt",
    reason="TensorRT is not installed (pip install '.[gpu-cu12]', see README 'GPU'); "
    "GPU tests run only where TensorRT and a GPU exist",
)
pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install '.[gpu-cu12]')")

from sdk.backends.cuda import device_count  # noqa: E402

if device_count() == 0:
    pytest.skip("no CUDA device is visible", allow_module_level=True)

from export.precision.accuracy import psnr  # noqa: E402
from helpers import tiny_bundle  # noqa: E402
from helpers.fp16_bundles import S  # noqa: E402
from helpers.tensorrt_bundles import with_engines  # noqa: E402


def test_tensorrt_fp16_loop_vs_onnxruntime_fp32(fp_bundles, tmp_path):
    from sdk import Translator

    manifest = with_engines(fp_bundles["fp16"], tmp_path / "fp16_trt")
    assert all(e["comparison"]["passed"] for e in manifest["engines"].values())
    x = np.random.default_rng(7).uniform(-1, 1, (3, 3, S, S)).astype(np.float32)
    with (
        Translator(fp_bundles["fp32"], backend="onnxruntime") as ref_t,
        Translator(tmp_path / "fp16_trt", backend="tensorrt") as t,
    ):
        ref, got = ref_t.infer(x, return_steps=True), t.infer(x, return_steps=True)
    for step, (a, b) in enumerate(zip(ref.steps, got.steps)):
        assert np.all(np.isfinite(b.image)), step
        assert psnr(a.image, b.image) >= 40.0, (step, psnr(a.image, b.image))


def test_tensorrt_fp32_engines_match_onnxruntime(tiny_bundles, tmp_path):
    from sdk import Translator

    manifest = with_engines(tiny_bundles["two_stage"], tmp_path / "trt")
    # TF32 cleared (TensorRT's default would round Conv/MatMul operands on Ampere+): compared at 1e-3
    assert all(
        e["tf32"] is False and e["comparison"]["tolerance"] == "fp32" and e["comparison"]["passed"]
        for e in manifest["engines"].values()
    )
    x = np.random.default_rng(0).uniform(-1, 1, (2, tiny_bundle.C_X, tiny_bundle.S, tiny_bundle.S)).astype(np.float32)
    with Translator(tmp_path / "trt", backend="onnxruntime") as a, Translator(tmp_path / "trt", backend="auto") as b:
        assert b.backend.name == "tensorrt"
        ref, got = a.infer(x, return_steps=True), b.infer(x, return_steps=True)
    for s, t in zip(ref.steps, got.steps):
        np.testing.assert_allclose(t.image, s.image, rtol=1e-3, atol=1e-3)


def test_tf32_engines_pass_at_their_own_tolerance(tiny_bundles, tmp_path):
    manifest = with_engines(tiny_bundles["two_stage"], tmp_path / "trt", tf32=True)
    assert all(
        e["tf32"] is True and e["comparison"]["tolerance"] == "tf32" and e["comparison"]["passed"]
        for e in manifest["engines"].values()
    )


def test_loop_enqueues_no_host_copies(tiny_bundles, tmp_path):
    """Capture the engine calls of a 4-step loop into a CUDA graph on the backend's stream and
    inspect the captured nodes with the CUDA API: no memcpy node touches host memory."""
    from cuda.bindings import runtime as cudart

    from sdk import Translator
    from sdk.backends.cuda import check

    with_engines(tiny_bundles["iterative"], tmp_path / "trt")
    x = np.zeros((1, tiny_bundle.C_X, tiny_bundle.S, tiny_bundle.S), np.float32)
    with Translator(tmp_path / "trt", backend="tensorrt") as t:
        t.infer(x, iterations=1)  # allocate and bind
        loop, cuda = t._loop, t.backend.cuda
        arena = loop._arenas[1]
        check(
            cudart,
            cudart.cudaStreamBeginCapture(cuda.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
            "cudaStreamBeginCapture",
        )
        for step in range(4):
            source = "init" if step == 0 else (step - 1) % 2
            loop.runners["encoder"].run(arena.encoder[("encoder", source)])
            loop.runners["generator"].run(arena.generator[step % 2])
        graph = check(cudart, cudart.cudaStreamEndCapture(cuda.stream), "cudaStreamEndCapture")
        nodes, count = check(cudart, cudart.cudaGraphGetNodes(graph, 0), "cudaGraphGetNodes")
        nodes, count = check(cudart, cudart.cudaGraphGetNodes(graph, count), "cudaGraphGetNodes")
        host_copies = []
        for node in nodes[:count]:
            kind = check(cudart, cudart.cudaGraphNodeGetType(node), "cudaGraphNodeGetType")
            if kind == cudart.cudaGraphNodeType.cudaGraphNodeTypeMemcpy:
                params = check(cudart, cudart.cudaGraphMemcpyNodeGetParams(node), "cudaGraphMemcpyNodeGetParams")
                if params.kind != cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice:
                    host_copies.append(params.kind)
        cudart.cudaGraphDestroy(graph)
    assert count > 0 and host_copies == []
