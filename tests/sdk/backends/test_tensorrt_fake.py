"""Control flow of the TensorRT engine build and the TensorRT/CUDA backend, without a GPU.

Through the stand-ins in ``tests/fakes`` (host memory posing as device memory; "engines" that
run the ONNX graph with ONNX Runtime on the CPU). These tests check what the code asks of
TensorRT and CUDA — binding order, shapes per profile, ping-pong buffers, one stream, no copies
inside the loop, stale-engine detection, error messages — never GPU numerics or speed
(``tests/gpu/`` does that where a GPU exists).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fakes import fake_cuda, fake_tensorrt
from helpers import tiny_bundle
from helpers.tensorrt_bundles import add_engines, x_input

# --------------------------------------------------------------------------- engine build


def test_build_writes_engines_and_manifest_facts(fake_gpu, make_tiny_bundle):
    trt, _ = fake_gpu
    bundle = make_tiny_bundle("two_stage")
    manifest = add_engines(bundle)
    assert set(manifest["engines"]) == {"encoder_first", "encoder", "generator"}
    entry = manifest["engines"]["generator"]
    assert entry["tensorrt"] == trt.__version__ and entry["compute_capability"] == "8.6"
    assert entry["gpu"] == "Fake GPU (host memory)" and entry["typing"] == "strong"
    assert entry["profile"] == {"min": 1, "opt": 1, "max": tiny_bundle.MAX_BATCH}
    header, _ = fake_tensorrt.read_plan((bundle / entry["file"]).read_bytes())
    assert header["flags"] == 1 << 5  # STRONGLY_TYPED
    assert header["builder_flags"] == []  # no precision flags on a strongly typed network
    r = tiny_bundle.R
    assert header["profile"]["z"] == [
        [1, tiny_bundle.M, tiny_bundle.D],
        [1, tiny_bundle.M, tiny_bundle.D],
        [tiny_bundle.MAX_BATCH, tiny_bundle.M, tiny_bundle.D],
    ]
    enc = fake_tensorrt.read_plan((bundle / manifest["engines"]["encoder"]["file"]).read_bytes())[0]
    assert enc["profile"]["y"][2] == [tiny_bundle.MAX_BATCH, 3, r, r]


def test_timing_cache_is_persisted_and_reused(fake_gpu, make_tiny_bundle):
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    cache = bundle.parent / "timing.cache"
    assert cache.read_bytes() == b"FAKECACHE:2"  # two graphs built, the second reused the first's cache
    add_engines(bundle)
    assert cache.read_bytes() == b"FAKECACHE:4"


def test_weak_typing_fallback_sets_fp16_flag_for_fp16_graphs(monkeypatch, make_tiny_bundle):
    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    fake_tensorrt.install(monkeypatch, cudart, version="8.6.1", strongly_typed=False)
    from export.tensorrt.engines import EngineOptions, build_engine

    bundle = make_tiny_bundle("iterative")
    graph = tiny_bundle.read_manifest(bundle)["graphs"]["generator"]
    plan, facts = build_engine(bundle / graph["file"], graph, EngineOptions(compare=False), precision="fp16")
    header, _ = fake_tensorrt.read_plan(plan)
    assert header["flags"] == 0 and header["builder_flags"] == ["FP16"] and facts["typing"] == "weak+FP16 flag"


def test_tensorrt_11_has_no_weak_typing(monkeypatch, make_tiny_bundle):
    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    fake_tensorrt.install(monkeypatch, cudart, version="11.0.0", fp16_flag=False)
    from export.tensorrt.engines import EngineBuildError, EngineOptions, build_engine

    bundle = make_tiny_bundle("iterative")
    graph = tiny_bundle.read_manifest(bundle)["graphs"]["generator"]
    with pytest.raises(EngineBuildError, match="BuilderFlag.FP16 was removed"):
        build_engine(bundle / graph["file"], graph, EngineOptions(strongly_typed=False, compare=False), "fp16")
    plan, facts = build_engine(bundle / graph["file"], graph, EngineOptions(compare=False), "fp16")
    assert facts["typing"] == "strong"


def test_tensorrt_without_either_flag_is_strongly_typed(monkeypatch, make_tiny_bundle):
    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    fake_tensorrt.install(monkeypatch, cudart, version="11.2.0", strongly_typed=False, fp16_flag=False)
    from export.tensorrt.engines import EngineOptions, build_engine

    bundle = make_tiny_bundle("iterative")
    graph = tiny_bundle.read_manifest(bundle)["graphs"]["generator"]
    plan, facts = build_engine(bundle / graph["file"], graph, EngineOptions(compare=False), "fp16")
    header, _ = fake_tensorrt.read_plan(plan)
    assert facts["typing"] == "strong" and header["flags"] == 0 and header["builder_flags"] == []


def test_bad_batch_profile_is_refused(fake_gpu, make_tiny_bundle):
    from export.tensorrt.engines import EngineBuildError

    with pytest.raises(EngineBuildError, match="1 <= min <= opt <= max"):
        add_engines(make_tiny_bundle("iterative"), max_batch=2, opt_batch=4)


# --------------------------------------------------------------------------- runtime


def test_loop_on_fake_tensorrt_matches_onnxruntime(fake_gpu, make_tiny_bundle):
    from sdk import Translator

    trt, cudart = fake_gpu
    bundle = make_tiny_bundle("two_stage")
    add_engines(bundle)
    x = x_input()
    with Translator(bundle, backend="onnxruntime", threads=1) as ort_t:
        ref = ort_t.infer(x, return_steps=True)
    with Translator(bundle, backend="tensorrt") as t:
        assert t.backend.name == "tensorrt"
        got = t.infer(x, return_steps=True)
    for a, b in zip(ref.steps, got.steps):
        np.testing.assert_allclose(b.latents, a.latents, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b.image, a.image, rtol=1e-6, atol=1e-7)
    assert not cudart.device_mem and not cudart.host_mem and not cudart.streams  # close() released everything


def test_bindings_are_set_once_and_buffers_ping_pong(fake_gpu, make_tiny_bundle):
    from sdk import Translator

    trt, cudart = fake_gpu
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    with Translator(bundle, backend="tensorrt") as t:
        t.infer(x_input(), iterations=1)  # allocate and bind batch 2
        binds = [e for e in trt.log if e[0] == "set_tensor_address"]
        contexts = [e for e in trt.log if e[0] == "create_execution_context"]
        assert len(contexts) == 4 + 2  # encoder: from the cold and warm start states and each slot; generator: per slot
        assert {e[2] for e in contexts} == {"USER_MANAGED"}
        trt.log.clear()
        cudart.calls.clear()
        t.infer(x_input(seed=1), iterations=4)
        assert not [e for e in trt.log if e[0] in ("set_tensor_address", "create_execution_context")]
        runs = [e for e in trt.log if e[0] == "execute_async_v3"]
        arena = t._loop._arenas[2]
        stream = t.backend.cuda.handle
    # alternating encoder, generator; all on the backend's single stream
    assert [r[1].startswith("z_next") for r in runs] == [True, False] * 4
    assert {r[3] for r in runs} == {stream}
    z = [b.ptr for b in arena.z]
    y = [b.ptr for b in arena.y]
    for step in range(4):
        enc, gen = runs[2 * step][2], runs[2 * step + 1][2]
        src = (arena.z0.ptr, arena.y0.ptr) if step == 0 else (z[(step - 1) % 2], y[(step - 1) % 2])
        assert (enc["z"], enc["y"], enc["x"]) == (*src, arena.x.ptr)
        assert enc["z_next"] == z[step % 2] == gen["z"]
        assert gen["image"] == y[step % 2]
    assert len(binds) == 4 * 4 + 2 * 2  # x,y,z,z_next per encoder context; z,image per generator context


def test_no_host_copies_between_engine_calls(fake_gpu, make_tiny_bundle):
    from sdk import Translator

    trt, cudart = fake_gpu
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    with Translator(bundle, backend="tensorrt") as t:
        t.infer(x_input(), iterations=1)
        cudart.calls.clear()
        trt.log.clear()
        t.infer(x_input(seed=2), iterations=3)
    names = cudart.names()
    copies = [c for c in cudart.calls if c[0] == "cudaMemcpyAsync"]
    kinds = [c[1][3] for c in copies]
    # one upload of x before the loop, downloads of the last image and latents after it
    assert (
        kinds
        == [fake_cuda.cudaMemcpyKind.cudaMemcpyHostToDevice] + [fake_cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost] * 2
    )
    assert names.count("cudaMalloc") == 0  # buffers were allocated once, by the first call
    assert sum(e[0] == "execute_async_v3" for e in trt.log) == 6


def test_batch_outside_engine_profile(fake_gpu, make_tiny_bundle):
    from sdk import InputError, Translator

    bundle = make_tiny_bundle("iterative")
    add_engines(bundle, max_batch=2)  # the ONNX graphs allow 4, the engines 2
    with Translator(bundle, backend="tensorrt") as t:
        with pytest.raises(InputError, match=r"outside the engine's optimisation profile .*rebuild with --max-batch"):
            t.infer(x_input(batch=3))


# --------------------------------------------------------------------------- stale engines


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("tensorrt", "10.3.0.26", r"built for TensorRT 10\.3\.0\.26 \(this machine has 10\.8\.0\.34\)"),
        ("compute_capability", "9.0", r"compute capability 9\.0.*this GPU: 8\.6"),
    ],
)
def test_stale_engines_detected_before_deserialisation(fake_gpu, make_tiny_bundle, caplog, field, value, message):
    from sdk import StaleEngineError, Translator

    trt, _ = fake_gpu
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    tiny_bundle.edit_manifest(bundle, lambda m: [e.__setitem__(field, value) for e in m["engines"].values()])
    trt.log.clear()
    with pytest.raises(StaleEngineError, match=message) as err:
        Translator(bundle, backend="tensorrt")
    assert "build_engines.py" in str(err.value) and str(bundle) in str(err.value)
    assert not [e for e in trt.log if e[0] == "deserialize_cuda_engine"]
    with caplog.at_level(logging.WARNING, logger="sdk.backends"):
        with Translator(bundle, backend="auto", threads=1) as t:  # falls back to ONNX Runtime
            assert t.backend.name == "onnxruntime"
            t.infer(x_input())
    assert "falling back to ONNX Runtime" in caplog.text and "built for" in caplog.text


def test_engine_build_number_does_not_make_it_stale(fake_gpu, make_tiny_bundle):
    from sdk import Translator

    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    tiny_bundle.edit_manifest(bundle, lambda m: [e.__setitem__("tensorrt", "10.8.0.99") for e in m["engines"].values()])
    with Translator(bundle, backend="auto") as t:
        assert t.backend.name == "tensorrt"


def test_tampered_engine_is_refused(fake_gpu, make_tiny_bundle):
    from sdk import BundleError, Translator

    trt, _ = fake_gpu
    bundle = make_tiny_bundle("iterative")
    manifest = add_engines(bundle)
    plan = bundle / manifest["engines"]["generator"]["file"]
    plan.write_bytes(plan.read_bytes() + b"x")
    trt.log.clear()
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        Translator(bundle, backend="tensorrt")
    assert len([e for e in trt.log if e[0] == "deserialize_cuda_engine"]) <= 1  # only the untouched encoder


def test_auto_without_gpu_or_tensorrt_uses_onnxruntime(monkeypatch, make_tiny_bundle, caplog):
    from sdk import Translator

    cudart = fake_cuda.install(monkeypatch, fake_cuda.FakeCudart())
    fake_tensorrt.install(monkeypatch, cudart)
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    cudart.devices = 0
    with caplog.at_level(logging.WARNING, logger="sdk.backends"):
        with Translator(bundle, threads=1) as t:
            assert t.backend.name == "onnxruntime"
    assert "no CUDA device" in caplog.text
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import tensorrt -> ImportError
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdk.backends"):
        with Translator(bundle, threads=1) as t:
            assert t.backend.name == "onnxruntime"
    assert "TensorRT is not installed" in caplog.text


def test_tensorrt_backend_needs_engines(fake_gpu, make_tiny_bundle):
    from sdk import BundleError, Translator

    with pytest.raises(BundleError, match="has no TensorRT engines"):
        Translator(make_tiny_bundle("iterative"), backend="tensorrt")


def test_cuda_errors_name_the_call(fake_gpu, make_tiny_bundle):
    from sdk import BackendError, Translator

    _, cudart = fake_gpu
    bundle = make_tiny_bundle("iterative")
    add_engines(bundle)
    with Translator(bundle, backend="tensorrt") as t:
        cudart.fail["cudaMalloc"] = fake_cuda.cudaError_t.cudaErrorMemoryAllocation
        with pytest.raises(BackendError, match=r"CUDA cudaMalloc\(\d+\) failed: cudaErrorMemoryAllocation"):
            t.infer(x_input())
