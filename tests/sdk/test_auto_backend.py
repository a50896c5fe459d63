"""``backend="auto"`` on a CPU (sdk/backends/openvino.py ``auto_cpu``), the CPU detection
monkeypatched: an AMX/AVX512-BF16 host with OpenVINO gets OpenVINO at the gated precision; an
AVX2 host, a host without OpenVINO, ``precision="fp32"`` or a refused gate get ONNX Runtime on
the bundle's CPU graphs, with no error."""

from __future__ import annotations

import sys

import pytest

from helpers import tiny_bundle as tb
from sdk import BackendError, Bundle, Translator
from sdk import precision_gate as gate
from sdk.backends import create_backend
from sdk.backends import openvino as ovb


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch, tmp_path):
    """No CUDA provider (CI GPU hosts included), and a private precision cache."""
    backend = create_backend("onnxruntime")
    monkeypatch.setattr(type(backend), "cuda_available", staticmethod(lambda: False))
    monkeypatch.setenv(gate.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def amx_host(monkeypatch):
    """OpenVINO reports BF16; the gate's verdict is the test's (``verdict[0]``)."""
    verdict = ["bf16"]
    monkeypatch.setattr(ovb, "available", lambda: True)
    monkeypatch.setattr(ovb, "reduced_precisions", lambda: ["bf16"])
    monkeypatch.setattr(ovb, "machine_id", lambda: "test AMX host")
    monkeypatch.setattr(gate, "decide", lambda bundle, machine, cands, make: gate.Decision(verdict[0]))
    return verdict


@pytest.fixture
def avx2_host(monkeypatch):
    monkeypatch.setattr(ovb, "reduced_precisions", lambda: [])

    def no_gate(*args, **kwargs):
        raise AssertionError("no gate without a reduced precision")

    monkeypatch.setattr(gate, "decide", no_gate)


@pytest.fixture
def bundle(tiny_bundles):
    return Bundle(tiny_bundles["iterative"])


def test_amx_host_with_openvino_gets_openvino_bf16(amx_host, bundle):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    backend = create_backend("auto", bundle=bundle, threads=1)
    assert backend.name == "openvino" and backend.precision == "bf16"


def test_amx_host_gate_refusing_gets_onnxruntime(amx_host, bundle):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    amx_host[0] = "fp32"
    assert create_backend("auto", bundle=bundle, threads=1).name == "onnxruntime"


def test_amx_host_fp32_forced_gets_onnxruntime(amx_host, bundle):
    assert create_backend("auto", bundle=bundle, threads=1, precision="fp32").name == "onnxruntime"


def test_avx2_host_gets_onnxruntime(avx2_host, bundle):
    assert create_backend("auto", bundle=bundle, threads=1).name == "onnxruntime"


def test_avx2_host_asking_for_bf16_is_told_why_not(avx2_host, bundle):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    with pytest.raises(BackendError, match="needs a CPU with AMX or AVX512-BF16"):
        create_backend("auto", bundle=bundle, precision="bf16")


def test_without_openvino_auto_is_onnxruntime_with_no_error(monkeypatch, tiny_bundles):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    assert not ovb.available()
    with Translator(tiny_bundles["iterative"], threads=1) as t:
        assert t.backend.name == "onnxruntime"
        t.infer(tb.random_input(1), iterations=1)


def test_amx_host_translator_runs_on_openvino(amx_host, tiny_bundles):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    with Translator(tiny_bundles["iterative"], threads=1) as t:
        assert t.backend.name == "openvino"


def test_reduced_precisions_by_cpu_kind(monkeypatch):
    kinds = {
        "sapphire rapids": ({"FP32", "BF16", "FP16"}, {"amx_bf16", "avx512_fp16"}, ["bf16"]),
        "granite rapids": ({"FP32", "BF16", "FP16"}, {"amx_bf16", "amx_fp16"}, ["bf16", "fp16"]),
        "zen 3": ({"FP32", "INT8"}, {"avx2", "fma"}, []),
    }
    monkeypatch.setattr(ovb, "available", lambda: True)
    for caps, flags, expected in kinds.values():
        monkeypatch.setattr(ovb, "capabilities", lambda caps=caps: frozenset(caps))
        monkeypatch.setattr(ovb, "_flags", lambda flags=flags: frozenset(flags))
        assert ovb.reduced_precisions() == expected
    monkeypatch.setattr(ovb, "available", lambda: False)
    assert ovb.reduced_precisions() == []  # an AMX host without OpenVINO


@pytest.mark.parametrize("name", ["onnxruntime", "tensorrt", "onnxruntime-cuda"])
def test_reduced_precision_elsewhere_is_refused(name):
    with pytest.raises(BackendError, match="bf16 and fp16 run on backend 'openvino'"):
        create_backend(name, precision="bf16")


def test_options_elsewhere_are_refused():
    with pytest.raises(BackendError, match="takes none"):
        create_backend("onnxruntime", options={"hint": "LATENCY"})
