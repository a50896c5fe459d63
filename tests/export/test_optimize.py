"""The export-time rewrites (export/fast_forms/optimize.py) compute what the public-format modules compute,
and the CPU-optimised graphs (export/ort_cpu/cpu_graphs.py, sdk/backends/onnxruntime/cpu.py) are used where they
fit and refused where they do not."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from export.fast_forms.optimize import (
    FastGenerator,
    MergedStyleHeads,
    optimize_encoder,
    optimize_generator,
    optimize_graph,
)
from export.fast_forms.phase_upsample import PhaseFirUpsample
from export.models.encoders import GradualStyleBlock, build_encoder
from export.models.stylegan2 import Generator, Upsample
from export.onnx.graphs import EncoderStep, GeneratorGraph
from export.onnx.parity import check_parity
from export.onnx.tracing import export_onnx
from export.ort_cpu.cpu_graphs import add_cpu_graphs
from helpers import tiny_bundle as tb
from helpers.generators import noisy
from sdk import BundleError, Translator
from sdk.backends.onnxruntime import cpu as ort_cpu
from sdk.bundle import Bundle

BOUND = 1e-5  # relative: the rewrites only reorder float additions


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("spatial,k", [(16, 3), (4, 5), (2, 1)])
def test_merged_heads_equal_the_heads(spatial, k):
    torch.manual_seed(spatial + k)
    heads = [GradualStyleBlock(32, 24, spatial).eval() for _ in range(k)]
    x = torch.randn(3, 32, spatial, spatial)
    with torch.no_grad():
        want = torch.stack([h(x) for h in heads], dim=1)
        got = MergedStyleHeads(heads)(x)
    assert got.shape == (3, k, 24) and rel(got, want) < BOUND


def test_merged_heads_refuse_mixed_sizes():
    with pytest.raises(ValueError, match="one size"):
        MergedStyleHeads([GradualStyleBlock(8, 8, 4), GradualStyleBlock(8, 8, 8)])


@pytest.mark.parametrize("encoder_type", ["GradualStyleEncoder", "BackboneEncoder"])
def test_fast_encoder_equals_the_encoder(encoder_type):
    torch.manual_seed(1)
    enc = build_encoder(
        {"encoder_type": encoder_type, "num_layers": 50, "mode": "ir_se", "input_nc": 6, "n_styles": 10}
    )
    fast, rewrites = optimize_encoder(enc)
    assert rewrites == ["merged_style_heads"]
    x = torch.randn(1, 6, 256, 256)
    with torch.no_grad():
        want = enc(x)
        assert rel(fast(x), want) < BOUND
        # the CPU form: the 3 fine heads' first conv (512 -> 1536 on the 64 px map) as stride-2 Winograd
        cpu, cpu_rewrites = optimize_encoder(enc, cpu=True)
        strided = encoder_type == "GradualStyleEncoder"
        assert cpu_rewrites == ["merged_style_heads"] + (["winograd_strided_heads"] if strided else [])
        assert [g.first is not None for g in cpu.groups] == ([False, False, True] if strided else [False])
        assert rel(cpu(x), want) < 1e-4
    # the checkpoint module is untouched: its state dict keeps the public layout
    assert all(k.startswith(("input_layer.", "body.", "styles.", "latlayer")) for k in enc.state_dict())


@pytest.mark.parametrize(
    "size,fp16_safe,channels", [(16, False, None), (32, True, None), (32, False, {4: 32, 8: 24, 16: 16, 32: 8})]
)
def test_fast_generator_equals_the_generator(size, fp16_safe, channels):
    torch.manual_seed(size)
    g = noisy(Generator(size, style_dim=32, n_mlp=2, channels=channels)).set_fp16_safe(fp16_safe)
    fast, rewrites = optimize_generator(g)
    assert isinstance(fast, FastGenerator) and "fused_style_affines" in rewrites
    z = torch.randn(2, g.n_latent, 32)
    with torch.no_grad():
        assert rel(fast(z), g(z)) < BOUND


@pytest.mark.parametrize("size", [8, 32])
def test_phase_up_convolutions_equal_the_transposed_ones(size):
    """The CPU graphs' generator: every up-conv as four convolutions and an interleave."""
    torch.manual_seed(size)
    g = noisy(Generator(size, style_dim=32, n_mlp=2))
    fast, rewrites = optimize_generator(g, cpu=True)
    assert {"phase_upsample_convs", "phase_skip_upsample", "styles_in_weights"} <= set(rewrites)
    z = torch.randn(2, g.n_latent, 32)
    with torch.no_grad():
        assert rel(fast(z), g(z)) < BOUND


def test_cpu_generator_folds_styles_into_weights_where_maps_are_large():
    """The CPU form's ToRGB convs as matmuls with modulated weights, and the Winograd conv on the
    128 px map with its style and demodulation on the transformed weights."""
    torch.manual_seed(5)
    g = noisy(Generator(128, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 128}))
    fast, rewrites = optimize_generator(g, cpu=True)
    assert "winograd_convs" in rewrites
    assert [c.fold_styles for c in fast.convs].count(True) == 1  # the 128 px 3x3 conv
    assert all(c.pointwise == (c.weight.shape[-1] == 1) for c in fast.convs) and fast.convs[1].pointwise
    z = torch.randn(2, g.n_latent, 32)
    with torch.no_grad():
        assert rel(fast(z), g(z)) < 1e-4  # Winograd: ~1e-5 per layer


@pytest.mark.parametrize("kernel", [[1, 3, 3, 1], [1, 2, 1], [1, 1], [1, 3, 3, 1, 2]])
def test_phase_skip_upsampling_equals_upfirdn(kernel):
    up = Upsample(kernel)
    phases = PhaseFirUpsample(up)
    x = torch.randn(2, 3, 9, 7)
    assert phases(x).shape == (2, 3, 18, 14) and rel(phases(x), up(x)) < 1e-6


def test_phase_skip_upsampling_refuses_other_shapes():
    with pytest.raises(ValueError, match="2x upsampling"):
        PhaseFirUpsample(Upsample([1, 3, 3, 1], factor=4))


def test_fused_and_foreign_modules_are_left_alone():
    g = Generator(8, style_dim=16, n_mlp=1).eval().set_fused(True)
    assert optimize_generator(g) == (g, [])
    other = torch.nn.Linear(3, 3)
    assert optimize_encoder(other) == (other, []) and optimize_graph(other) == (other, [])


def test_exported_rewrite_matches_the_original_module(tmp_path):
    """What the build does: export the rewritten graph, check it against the original module."""
    torch.manual_seed(0)
    g = noisy(Generator(16, style_dim=32, n_mlp=2))
    original = GeneratorGraph(g).eval()
    exported, rewrites = optimize_graph(original)
    assert rewrites and exported is not original
    inputs = {"z": torch.randn(2, g.n_latent, 32)}
    export_onnx(exported, inputs, "image", tmp_path / "g.onnx", max_batch=4)
    report = check_parity(original, tmp_path / "g.onnx", inputs, "generator", 1e-5)
    assert report.ok, str(report)


def test_encoder_step_keeps_its_wiring():
    torch.manual_seed(2)
    enc = build_encoder(
        {"encoder_type": "BackboneEncoder", "num_layers": 50, "mode": "ir", "input_nc": 6, "n_styles": 4}
    )
    step = EncoderStep(enc, feedback=True, residual=True, input_size=256, output_size=64, n_latent=4).eval()
    fast, _ = optimize_graph(step)
    assert fast.input_names == step.input_names == ["x", "y", "z"]
    x, y, z = torch.randn(1, 3, 256, 256), torch.randn(1, 3, 64, 64), torch.randn(1, 4, 512)
    with torch.no_grad():
        assert rel(fast(x, y, z), step(x, y, z)) < BOUND


# --------------------------------------------------------------------------- CPU-optimised graphs


class _StandIn(torch.nn.Module):
    """Takes the graph's named inputs, returns the first; no FLOPs."""

    def forward(self, **inputs):
        return next(iter(inputs.values()))


def _with_cpu_graphs(path):
    """The build's CPU-graph step on a tiny bundle (toy graphs: no CPU-specific form, so the
    modules are never exported and a stand-in does)."""
    manifest = tb.read_manifest(path)
    graphs = []
    for key, g in manifest["graphs"].items():
        shapes = {t["name"]: [2 if isinstance(d, str) else d for d in t["shape"]] for t in g["inputs"]}
        rng = np.random.default_rng(0)
        graphs.append(
            (
                key,
                _StandIn(),
                {n: torch.from_numpy(rng.uniform(-1, 1, s).astype(np.float32)) for n, s in shapes.items()},
            )
        )

    def add(name: str) -> str:
        from sdk.bundle import sha256_file

        return sha256_file(path / name)

    add_cpu_graphs(path, manifest, graphs, add, tolerance=1e-5, max_batch=tb.MAX_BATCH)
    tb.write_manifest(path, manifest)
    return manifest


def test_cpu_graphs_open_and_agree(make_tiny_bundle, caplog):
    portable = make_tiny_bundle("iterative", name="portable")
    path = make_tiny_bundle("iterative", name="optimised")
    manifest = _with_cpu_graphs(path)
    entry = manifest["graphs"]["generator"]["onnxruntime_cpu"]
    assert entry["cpu"] == ort_cpu.cpu_tag() and (path / entry["data"]).is_file()
    x = tb.random_input(2, seed=3)
    with caplog.at_level(logging.DEBUG, logger="sdk.backends.onnxruntime.cpu"):
        with (
            Translator(portable, backend="onnxruntime", threads=1) as a,
            Translator(path, backend="onnxruntime", threads=1) as b,
        ):
            np.testing.assert_allclose(b.infer(x).images, a.infer(x).images, rtol=0, atol=1e-5)
    assert "generator.cpu.onnx" in caplog.text and "encoder.cpu.onnx" in caplog.text


def another_cpu_tag() -> str:
    """A CPU tag that is not this host's, whatever the host (AMD AVX2, Intel AVX-512, Arm)."""
    return next(t for t in ("x86_64-avx512", "x86_64-avx2", "aarch64") if t != ort_cpu.cpu_tag())


def _as_if_built_on(path, tag: str) -> None:
    tb.edit_manifest(path, lambda m: [g["onnxruntime_cpu"].__setitem__("cpu", tag) for g in m["graphs"].values()])


def test_cpu_graphs_of_another_machine_fall_back(make_tiny_bundle, caplog):
    path = make_tiny_bundle("iterative")
    _with_cpu_graphs(path)
    other = another_cpu_tag()
    _as_if_built_on(path, other)
    with caplog.at_level(logging.INFO, logger="sdk.backends.onnxruntime.cpu"):
        with Translator(path, backend="onnxruntime", threads=1) as t:
            assert t.infer(tb.random_input(1)).images.shape == (1, 3, tb.R, tb.R)
    assert f"optimised for a {other} CPU, this one is {ort_cpu.cpu_tag()}" in caplog.text


@pytest.mark.parametrize(
    "machine, flags, tag",
    [
        ("x86_64", "fpu sse2 avx avx2 fma avx512f avx512bw amx_bf16 avx512_fp16", "x86_64-avx512"),  # Intel Xeon
        ("x86_64", "fpu sse2 avx f16c fma avx2 bmi2 sha_ni vaes", "x86_64-avx2"),  # AMD EPYC (Zen 3)
        ("x86_64", "fpu sse2 sse4_2 avx", "x86_64-sse"),
        ("AMD64", "fpu sse2 avx2 fma", "x86_64-avx2"),
        ("aarch64", "fp asimd sve", "aarch64"),
    ],
)
def test_cpu_tag_of_each_kind_of_host(monkeypatch, tmp_path, machine, flags, tag):
    """Both x86 branches (and the others) on any host: the tag read from a /proc/cpuinfo of that CPU."""
    key = "Features" if machine == "aarch64" else "flags"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\n{key}\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(ort_cpu, "CPUINFO", str(cpuinfo))
    monkeypatch.setattr(ort_cpu.platform, "machine", lambda: machine)
    assert ort_cpu.cpu_tag() == tag
    monkeypatch.setattr(ort_cpu, "CPUINFO", str(tmp_path / "absent"))  # not Linux: the architecture alone
    assert ort_cpu.cpu_tag() == machine.lower()


@pytest.mark.parametrize("here", ["x86_64-avx2", "x86_64-avx512"])  # what an AMD and an Intel host detect
def test_cpu_graph_choice_follows_the_recorded_tag(make_tiny_bundle, monkeypatch, here):
    """The optimised graphs where the recorded tag is this CPU's, the portable ones where it is not,
    with the host's detection replaced, so both branches run on every host."""
    import onnxruntime

    path = make_tiny_bundle("iterative")
    _with_cpu_graphs(path)
    monkeypatch.setattr(ort_cpu, "cpu_tag", lambda: here)
    for built_on in ("x86_64-avx2", "x86_64-avx512"):
        _as_if_built_on(path, built_on)
        spec = Bundle(path).manifest.graphs["generator"]
        optimised = [spec.onnxruntime_cpu["file"], spec.onnxruntime_cpu["data"]]
        assert ort_cpu.graph_files(spec, onnxruntime) == (optimised if built_on == here else [spec.file])


def test_cpu_graphs_whose_weights_all_stay_inline(make_tiny_bundle, monkeypatch):
    """A graph with no initializer large enough for the data file still gets the (empty) file its
    manifest entry names, and opens optimised."""
    import export.ort_cpu.cpu_graphs

    monkeypatch.setattr(export.ort_cpu.cpu_graphs, "MIN_EXTERNAL_BYTES", 1 << 40)
    path = make_tiny_bundle("iterative")
    entry = _with_cpu_graphs(path)["graphs"]["generator"]["onnxruntime_cpu"]
    assert (path / entry["data"]).stat().st_size == 0
    with Translator(path, backend="onnxruntime", threads=1) as t:
        assert t.infer(tb.random_input(1)).images.shape == (1, 3, tb.R, tb.R)


def test_cpu_graph_weights_are_verified(make_tiny_bundle):
    path = make_tiny_bundle("iterative")
    manifest = _with_cpu_graphs(path)
    data = path / manifest["graphs"]["encoder"]["onnxruntime_cpu"]["data"]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        Translator(path, backend="onnxruntime")


def test_translator_verifies_the_files_its_backend_reads(make_tiny_bundle):
    """The CPU backend opens the optimised graphs: a damaged portable graph does not stop it
    (the full check still finds it), a damaged optimised graph does."""
    path = make_tiny_bundle("iterative")
    manifest = _with_cpu_graphs(path)
    portable = path / manifest["graphs"]["generator"]["file"]
    portable.write_bytes(portable.read_bytes()[:-1] + b"\0")
    with Translator(path, backend="onnxruntime", threads=1) as t:
        assert t.infer(tb.random_input(1)).images.shape == (1, 3, tb.R, tb.R)
        with pytest.raises(BundleError, match=f"{portable.name} does not match its SHA-256"):
            t.bundle.verify()
    with pytest.raises(BundleError, match=f"{portable.name} does not match its SHA-256"):
        Bundle(path)
    _as_if_built_on(path, another_cpu_tag())  # another machine: the portable graphs
    with pytest.raises(BundleError, match=f"{portable.name} does not match its SHA-256"):
        Translator(path, backend="onnxruntime")


def test_malformed_cpu_entry_refused(make_tiny_bundle):
    path = make_tiny_bundle("iterative")
    tb.edit_manifest(path, lambda m: m["graphs"]["generator"].__setitem__("onnxruntime_cpu", {"file": 3}))
    with pytest.raises(BundleError, match="onnxruntime_cpu must be an object"):
        Translator(path, backend="onnxruntime")


def test_cpu_session_options():
    """No memory pattern on the CPU: it reserves the planned peak of every intermediate up front
    (about 220 MB more per reference-scale session, the benchmarks measured, at no speed gain);
    no spinning threads between runs (the loop alternates sessions on the same cores)."""
    from sdk.backends.onnxruntime import OrtBackend

    opts = OrtBackend("cpu", threads=2).session_options()
    assert opts.enable_mem_pattern is False and opts.intra_op_num_threads == 2
    # ... and its threads stop spinning when a Run() returns (the next session needs the cores)
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
