"""The reduced-precision accuracy gate (sdk/precision_gate.py) and its cache.

The candidates here are deliberate conversions of the FP32 loop on ONNX Runtime: every graph
output rounded to a few mantissa bits after each engine call (``RoundedOutputs``). Two bits
(a relative error of 1/8) must be refused, BF16's seven bits accepted; the gate compares every
step, and its decision is cached per machine and bundle outside the bundle folder.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sdk import Bundle
from sdk import precision_gate as gate
from sdk.backends import create_backend
from sdk.backends.base import Backend, Runner


def round_mantissa(a: np.ndarray, bits: int) -> np.ndarray:
    """float32 ``a`` rounded to nearest (ties to even) with ``bits`` explicit mantissa bits."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    drop = np.uint32(23 - bits)
    bias = (np.uint32(1) << (drop - np.uint32(1))) - np.uint32(1) + ((u >> drop) & np.uint32(1))
    return ((u + bias) & ~((np.uint32(1) << drop) - np.uint32(1))).view(np.float32)


class _Rounding(Runner):
    def __init__(self, inner: Runner, backend: RoundedOutputs):
        self.spec, self.inner, self.backend = inner.spec, inner, backend

    def bind(self, inputs, outputs):
        return self.inner.bind(inputs, outputs), list(outputs.values())

    def run(self, binding) -> None:
        inner, outputs = binding
        self.inner.run(inner)
        for buf in outputs:
            self.backend.inner.upload(buf, self.backend.convert(self.backend.inner.download(buf)))


class RoundedOutputs(Backend):
    """ONNX Runtime with every graph output passed through ``convert`` after each run."""

    name = "rounded"

    def __init__(self, convert):
        self.inner, self.convert = create_backend("onnxruntime", threads=1), convert

    def files(self, spec):
        return self.inner.files(spec)

    def load(self, spec, path):
        return _Rounding(self.inner.load(spec, path), self)

    def empty(self, shape, dtype):
        return self.inner.empty(shape, dtype)

    def upload(self, dst, array):
        self.inner.upload(dst, array)

    def download(self, src):
        return self.inner.download(src)


def candidates(**conversions):
    """make_backend for :func:`gate.decide`: "fp32" is plain ONNX Runtime; others are conversions."""
    made = []

    def make(precision: str) -> Backend:
        made.append(precision)
        if precision == "fp32":
            return create_backend("onnxruntime", threads=1)
        return RoundedOutputs(conversions[precision])

    return make, made


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(gate.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def bundle(tiny_bundles):
    return Bundle(tiny_bundles["iterative"])


def test_gate_refuses_an_unsafe_conversion(bundle):
    make, _ = candidates(coarse=lambda a: round_mantissa(a, 2))
    decision = gate.decide(bundle, "machine", ["coarse"], make)
    assert decision.precision == "fp32" and not decision.cached
    (result,) = decision.results
    assert not result.accepted and result.finite
    assert len(result.psnr) == bundle.manifest.schedule.default_iterations  # every step compared
    assert min(result.psnr) < gate.PSNR_FLOOR, result


def test_gate_accepts_a_safe_one_after_refusing_the_faster(bundle):
    make, made = candidates(coarse=lambda a: round_mantissa(a, 2), bf16=lambda a: round_mantissa(a, 7))
    decision = gate.decide(bundle, "machine", ["coarse", "bf16"], make)
    assert decision.precision == "bf16"
    assert [r.accepted for r in decision.results] == [False, True]
    assert min(decision.results[1].psnr) >= gate.PSNR_FLOOR
    assert made == ["fp32", "coarse", "bf16"]


def test_gate_refuses_nan(bundle):
    def poison(a):
        a = a.copy()
        a.flat[0] = np.nan
        return a

    make, _ = candidates(nan=poison)
    decision = gate.decide(bundle, "machine", ["nan"], make)
    assert decision.precision == "fp32" and decision.results[0].finite is False


def test_every_step_counts_not_only_the_last():
    ref = [(np.zeros((1, 2)), np.linspace(-1, 1, 64).reshape(1, 1, 8, 8)) for _ in range(3)]
    bad_first = [(z, y + (0.2 if t == 0 else 0.0)) for t, (z, y) in enumerate(ref)]
    result = gate.compare("bf16", ref, bad_first)
    assert result.psnr[-1] == float("inf") and result.psnr[0] < gate.PSNR_FLOOR and not result.accepted


def test_decision_is_cached_per_machine_and_bundle_outside_it(bundle, tiny_bundles, cache):
    before = sorted(p.name for p in bundle.path.iterdir())
    make, made = candidates(bf16=lambda a: round_mantissa(a, 7))
    first = gate.decide(bundle, "machine", ["bf16"], make)
    second = gate.decide(bundle, "machine", ["bf16"], make)
    assert first.precision == second.precision == "bf16"
    assert second.cached and made == ["fp32", "bf16"]  # the second open ran nothing
    assert second.results[0].psnr == pytest.approx(first.results[0].psnr)
    assert len(list((cache / "precision").glob("*.json"))) == 1
    assert sorted(p.name for p in bundle.path.iterdir()) == before  # nothing written into the bundle
    gate.decide(bundle, "another machine", ["bf16"], make)
    gate.decide(Bundle(tiny_bundles["two_stage"]), "machine", ["bf16"], make)
    assert len(made) == 6 and len(list((cache / "precision").glob("*.json"))) == 3


def test_unreadable_cache_runs_the_gate_again(bundle, cache, caplog):
    make, made = candidates(bf16=lambda a: round_mantissa(a, 7))
    gate.decide(bundle, "machine", ["bf16"], make)
    (record,) = (cache / "precision").glob("*.json")
    record.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="sdk.precision_gate"):
        again = gate.decide(bundle, "machine", ["bf16"], make)
    assert again.precision == "bf16" and not again.cached and "unreadable" in caplog.text
    assert len(made) == 4


def test_unwritable_cache_is_a_warning(bundle, cache, monkeypatch, caplog):
    cache.write_text("a file where the folder should be", encoding="utf-8")
    make, _ = candidates(bf16=lambda a: round_mantissa(a, 7))
    with caplog.at_level(logging.WARNING, logger="sdk.precision_gate"):
        decision = gate.decide(bundle, "machine", ["bf16"], make)
    assert decision.precision == "bf16" and "could not cache" in caplog.text


def test_cache_folder_default(monkeypatch, tmp_path):
    monkeypatch.delenv(gate.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert gate.cache_dir() == tmp_path / "gan-encoder-rt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert gate.cache_dir().parts[-2:] == (".cache", "gan-encoder-rt")


def test_psnr_and_gate_input(bundle):
    a = np.linspace(-1, 1, 100, dtype=np.float32)
    assert gate.psnr(a, a) == float("inf")
    assert gate.psnr(a, np.full_like(a, np.nan)) == float("-inf")
    assert gate.psnr(a, a + 0.02) == pytest.approx(20 * np.log10(2 / 0.02))
    m = bundle.manifest
    x = gate.gate_input(m)
    lo, hi = m.input_range
    assert x.shape == (1, m.input_channels, m.input_size, m.input_size) and x.dtype == np.float32
    assert lo <= x.min() < x.max() <= hi
    np.testing.assert_array_equal(x, gate.gate_input(m))  # fixed


def test_openvino_auto_precision_is_gated_and_cached(bundle, monkeypatch):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from sdk.backends import openvino as ovb

    monkeypatch.setattr(ovb, "reduced_precisions", lambda: ["bf16"])  # as on an AMX host
    backend = ovb.open_backend(bundle, "auto", ovb.OpenVinoOptions(threads=1))
    # on a CPU without BF16 kernels OpenVINO runs the hint in FP32 (PSNR inf); with them, the
    # tiny graphs pass either plainly or with every op an FP32 island
    assert backend.precision in ("bf16", "bf16-islands")

    def no_gate(*args, **kwargs):
        raise AssertionError("the gate ran although its decision is cached")

    monkeypatch.setattr(gate, "loop_steps", no_gate)
    assert ovb.open_backend(bundle, "auto", ovb.OpenVinoOptions(threads=1)).precision == backend.precision
    assert ovb.open_backend(bundle, "fp32", ovb.OpenVinoOptions(threads=1)).precision == "fp32"
