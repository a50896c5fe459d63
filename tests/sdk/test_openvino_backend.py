"""The OpenVINO backend (sdk/backends/openvino.py) on the tiny bundles.

Fidelity: every step of the loop in FP32 against ONNX Runtime on the same graphs and against
the numpy twin of the toy model, within 1e-3 of the reference's magnitude (the bar of the
reference vectors) and 1e-4 absolute. Plumbing: one compile per graph and batch, the loop's
buffers wrapped (not copied) by the bound tensors, options reaching the compiled models, and
the portable graph digest-checked.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from helpers import tiny_bundle as tb

pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install '.[openvino]')")

from sdk import BackendError, Bundle, BundleError, RefinementLoop, Translator  # noqa: E402
from sdk.backends import create_backend  # noqa: E402
from sdk.backends import openvino as ovb  # noqa: E402

BAR = 1e-3  # max abs error / max abs reference, as the reference vectors
TWIN = 1e-4  # absolute, numpy float64 twin vs the float32 graphs (as test_loop)


def relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def ov_translators(tiny_bundles):
    ts = {v: Translator(p, backend="openvino", threads=1, precision="fp32") for v, p in tiny_bundles.items()}
    yield ts
    for t in ts.values():
        t.close()


@pytest.mark.parametrize(
    "variant,n,batch", [("iterative", 5, 1), ("iterative", 3, 3), ("single", 1, 2), ("two_stage", 2, 1)]
)
def test_fp32_matches_onnxruntime_and_twin(ov_translators, translators, tiny_graphs, variant, n, batch):
    x = tb.random_input(batch, seed=n + batch)
    got = ov_translators[variant].infer(x, iterations=n, return_steps=True)
    ref = translators[variant].infer(x, iterations=n, return_steps=True)
    twin = tiny_graphs.model.steps(tb.VARIANTS[variant][0], x, n)
    assert got.iterations == n and len(got.steps) == n
    for t, (g, r, (zt, yt)) in enumerate(zip(got.steps, ref.steps, twin)):
        assert relative(g.latents, r.latents) <= BAR and relative(g.image, r.image) <= BAR, f"step {t + 1} vs ORT"
        np.testing.assert_allclose(g.latents, zt, rtol=0, atol=TWIN, err_msg=f"latents of step {t + 1} (twin)")
        np.testing.assert_allclose(g.image, yt, rtol=0, atol=TWIN, err_msg=f"image of step {t + 1} (twin)")
    np.testing.assert_array_equal(got.images, got.steps[-1].image)


def test_buffers_are_shared_not_copied(ov_translators):
    t = ov_translators["iterative"]
    x = tb.random_input(2, seed=7)
    first = t.infer(x, iterations=2)
    arena = t._loop._arenas[2]
    request = arena.generator[1]  # step 2 writes slot 1
    gen = t.manifest.graphs["generator"]
    assert np.shares_memory(request.get_tensor(gen.input("latents").name).data, arena.z[1])
    assert np.shares_memory(request.get_tensor(gen.output.name).data, arena.y[1])
    np.testing.assert_array_equal(arena.y[1], first.images)  # the engine wrote the loop's buffer
    assert not np.shares_memory(first.images, arena.y[1])  # the caller gets a copy
    again = t.infer(x, iterations=2)
    assert t._loop._arenas[2] is arena and arena.generator[1] is request  # bound once, reused
    np.testing.assert_array_equal(again.images, first.images)


def test_compiled_once_per_graph_and_batch(tiny_bundles, monkeypatch):
    compiles = []
    real = ovb.core().compile_model
    monkeypatch.setattr(ovb.core(), "compile_model", lambda *a, **k: compiles.append(1) or real(*a, **k), raising=False)
    with Translator(tiny_bundles["iterative"], backend="openvino", threads=1, precision="fp32") as t:
        for batch in (1, 2, 1, 2, 1):
            t.infer(tb.random_input(batch), iterations=3)
        runners = t._loop.runners
        assert {k: sorted(r._compiled) for k, r in runners.items()} == {"encoder": [1, 2], "generator": [1, 2]}
    assert len(compiles) == 4  # two graphs x two batch sizes


def test_options_reach_the_compiled_model(tiny_bundles):
    opts = {"hint": "THROUGHPUT", "pinning": False}
    with Translator(tiny_bundles["single"], backend="openvino", threads=2, precision="fp32", backend_options=opts) as t:
        t.infer(tb.random_input(1), iterations=1)
        compiled = t._loop.runners["generator"].compiled(1)
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2
        assert str(compiled.get_property("PERFORMANCE_HINT")).upper().endswith("THROUGHPUT")
        assert compiled.get_property("ENABLE_CPU_PINNING") is False


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"backend_options": {"streams": 2}}, "unknown OpenVINO option"),
        ({"backend_options": {"hint": "FAST"}}, "performance hint"),
        ({"backend_options": {"pinning": "yes"}}, "pinning"),
        ({"precision": "int8"}, "precision"),
    ],
)
def test_bad_options_are_backend_errors(tiny_bundles, kwargs, match):
    with pytest.raises(BackendError, match=match):
        Translator(tiny_bundles["single"], backend="openvino", **kwargs)


def test_reduced_precision_on_a_cpu_without_it_is_refused(tiny_bundles, monkeypatch):
    monkeypatch.setattr(ovb, "reduced_precisions", lambda: [])
    with pytest.raises(BackendError, match="needs a CPU with AMX or AVX512-BF16"):
        Translator(tiny_bundles["single"], backend="openvino", precision="bf16")
    with Translator(tiny_bundles["single"], backend="openvino") as t:  # auto: FP32, no error
        assert t.backend.precision == "fp32"


def test_reads_only_the_portable_graph_and_verifies_it(make_tiny_bundle):
    path = make_tiny_bundle("single")
    backend = create_backend("openvino", bundle=None, precision="fp32")
    spec = Bundle(path).manifest.graphs["generator"]
    assert backend.files(spec) == [spec.file]
    graph = path / spec.file
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256|digest|changed|corrupt"):
        Translator(path, backend="openvino", precision="fp32")


def test_missing_openvino_names_the_extra(tiny_bundles, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendError, match=r"gan-encoder-rt\[openvino\]"):
        Translator(tiny_bundles["single"], backend="openvino")


def test_islands_mark_small_ops_and_outputs():
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 1], np.float32, name="x")
    big = ops.matmul(x, ops.constant(np.ones((1, 1 << 17), np.float32)), False, False)  # 131072 values
    small = ops.reduce_sum(big, ops.constant(np.array([1])), True)
    out = ops.multiply(big, small)
    model = ov.Model([out], [x])
    assert ovb.mark_fp32_islands(model) == 2  # the reduction (small) and the output's producer
    marked = {n.get_type_name() for n in model.get_ordered_ops() if ovb.FP32_MARK in n.get_rt_info()}
    assert marked == {"ReduceSum", "Multiply"}


def test_islands_variant_compiles_and_runs(tiny_bundles):
    backend = ovb.OpenVinoBackend(ovb.OpenVinoOptions(threads=1, precision="bf16-islands"))
    loop = RefinementLoop(backend, Bundle(tiny_bundles["iterative"]))
    res = loop.run(tb.random_input(1), iterations=2)
    assert np.all(np.isfinite(res.images))
    loop.close()
