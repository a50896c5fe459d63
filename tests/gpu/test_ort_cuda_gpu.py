"""ONNX Runtime's CUDA execution provider on a real GPU: the same bundle, loop and buffers as on
the CPU. Skipped (with the reason) without onnxruntime-gpu, cuda-python or a GPU — as on this
project's machines, where it has not run yet. Control flow without a GPU: tests/sdk/backends/test_ort_cuda_fake.py.
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("onnxruntime has no CUDA provider (pip install onnxruntime-gpu)", allow_module_level=True)
pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install '.[gpu-cu12]')")

from sdk.backends.cuda import device_count  # noqa: E402

if device_count() == 0:
    pytest.skip("no CUDA device is visible", allow_module_level=True)

from helpers import tiny_bundle  # noqa: E402

TOL = dict(rtol=1e-4, atol=1e-4)  # cuDNN's convolution algorithms differ from the CPU's


@pytest.mark.parametrize("variant", ["iterative", "two_stage"])
def test_ort_cuda_equals_ort_cpu(tiny_bundles, variant):
    from sdk import Translator

    x = np.random.default_rng(3).uniform(-1, 1, (2, tiny_bundle.C_X, tiny_bundle.S, tiny_bundle.S)).astype(np.float32)
    with (
        Translator(tiny_bundles[variant], backend="onnxruntime", threads=1) as cpu,
        Translator(tiny_bundles[variant], backend="onnxruntime-cuda") as gpu,
    ):
        assert gpu.backend.providers[0][0] == "CUDAExecutionProvider"
        a, b = cpu.infer(x, iterations=2, return_steps=True), gpu.infer(x, iterations=2, return_steps=True)
    for s, t in zip(a.steps, b.steps):
        np.testing.assert_allclose(t.latents, s.latents, **TOL)
        np.testing.assert_allclose(t.image, s.image, **TOL)


def test_ort_cuda_device_io_round_trip(tiny_bundles):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here: device I/O needs a CUDA tensor producer")
    from sdk import Translator

    x = np.random.default_rng(4).uniform(-1, 1, (1, tiny_bundle.C_X, tiny_bundle.S, tiny_bundle.S)).astype(np.float32)
    with Translator(tiny_bundles["iterative"], backend="onnxruntime-cuda") as t:
        want = t.infer(x, iterations=2)
        got = t.infer(torch.from_numpy(x).cuda(), iterations=2, output="device")
    np.testing.assert_allclose(torch.as_tensor(got.images, device="cuda").cpu().numpy(), want.images, **TOL)
