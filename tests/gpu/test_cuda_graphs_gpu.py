"""CUDA-graph replay and GPU-resident inputs/outputs on a real GPU with TensorRT. Skipped (with
the reason) where TensorRT, cuda-python or a GPU is missing — as on this project's CI and
development machines, where these tests have not run yet. The control flow of the same code is
covered without a GPU by test_cuda_graphs_fake.py and test_device_io.py.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "tensorrt",
    reason="TensorRT is not installed (pip install '.[gpu-cu12]', see docs/gpu.md); "
    "GPU tests run only where TensorRT and a GPU exist",
)
pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install '.[gpu-cu12]')")

from sdk.backends.cuda import device_count  # noqa: E402

if device_count() == 0:
    pytest.skip("no CUDA device is visible", allow_module_level=True)

from helpers import tiny_bundle  # noqa: E402
from helpers.tensorrt_bundles import with_engines  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-6)  # the same kernels in the same order; only launch differs


@pytest.fixture(scope="module")
def trt_bundle(tiny_bundles, tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu_graphs") / "trt"
    with_engines(tiny_bundles["iterative"], path)
    return path


def frames(batch=2, count=4):
    rng = np.random.default_rng(11)
    return [
        rng.uniform(-1, 1, (batch, tiny_bundle.C_X, tiny_bundle.S, tiny_bundle.S)).astype(np.float32)
        for _ in range(count)
    ]


def test_graph_replay_equals_eager_execution(trt_bundle):
    from sdk import Translator

    xs = frames()
    with (
        Translator(trt_bundle, backend="tensorrt") as eager,
        Translator(trt_bundle, backend="tensorrt", cuda_graphs=True) as graphs,
    ):
        for n in (1, 3, 5):
            for x in xs:  # the first call of each N captures, the others replay
                a, b = eager.infer(x, iterations=n), graphs.infer(x, iterations=n)
                np.testing.assert_allclose(b.images, a.images, **TOL)
                np.testing.assert_allclose(b.latents, a.latents, **TOL)
        prev_a = prev_b = None
        for x in xs:  # warm start: the warm-start graph
            prev_a, prev_b = eager.infer(x, iterations=2, init=prev_a), graphs.infer(x, iterations=2, init=prev_b)
            np.testing.assert_allclose(prev_b.latents, prev_a.latents, **TOL)
        assert all(g is not None for g in graphs._loop._arenas[2].graphs.values()), "some loop was not captured"


def test_captured_loop_has_no_host_copies_or_host_nodes(trt_bundle):
    """The SDK's own graph of a 4-step loop, inspected with the CUDA API: kernels (and possibly
    device-to-device copies or memsets TensorRT enqueues), but no memcpy touching the host and no
    host-function node."""
    from cuda.bindings import runtime as cudart

    from sdk import Translator
    from sdk.backends.cuda import check

    with Translator(trt_bundle, backend="tensorrt", cuda_graphs=True) as t:
        t.infer(frames(batch=1, count=1)[0], iterations=4)
        graph = t._loop._arenas[1].graphs[(4, "init")]
        assert graph is not None
        _, count = check(cudart, cudart.cudaGraphGetNodes(graph.graph, 0), "cudaGraphGetNodes")
        nodes, count = check(cudart, cudart.cudaGraphGetNodes(graph.graph, count), "cudaGraphGetNodes")
        types = cudart.cudaGraphNodeType
        host = []
        for node in list(nodes)[:count]:
            kind = check(cudart, cudart.cudaGraphNodeGetType(node), "cudaGraphNodeGetType")
            if kind == types.cudaGraphNodeTypeHost:
                host.append("host node")
            elif kind == types.cudaGraphNodeTypeMemcpy:
                params = check(cudart, cudart.cudaGraphMemcpyNodeGetParams(node), "cudaGraphMemcpyNodeGetParams")
                if params.kind != cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice:
                    host.append(params.kind)
        assert "cudaGraphNodeTypeKernel" in graph.node_types()
    assert count >= 8 and host == []


def test_torch_cuda_tensors_in_and_out_without_host_copies(trt_bundle, monkeypatch):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here (a CPU build): device I/O needs a CUDA tensor producer")
    from sdk import Translator

    x = frames(count=1)[0]
    with Translator(trt_bundle, backend="tensorrt", cuda_graphs=True) as t:
        want = t.infer(x, iterations=3)
        # the backend's only host-copy paths are upload/download: forbid them for the device call
        for name in ("upload", "download"):
            monkeypatch.setattr(t.backend, name, lambda *a, n=name: pytest.fail(f"host copy ({n}) in a device call"))
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):  # produced on a side stream, which PyTorch's CAI names: the SDK waits for it
            xt = torch.from_numpy(x).to("cuda", non_blocking=True) * 1.0
            got = t.infer(xt, iterations=3, output="device")
        via_cai = torch.as_tensor(got.images, device="cuda")
        via_dlpack = torch.from_dlpack(got.latents)
        prev = t.infer(xt, iterations=3, init=got, output="device")  # warm start from GPU results
        monkeypatch.undo()
    np.testing.assert_allclose(via_cai.cpu().numpy(), want.images, **TOL)
    np.testing.assert_allclose(via_dlpack.cpu().numpy(), want.latents, **TOL)
    assert prev.latents.shape == want.latents.shape
