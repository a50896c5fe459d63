"""The stock Triton model repository (serving/model_repository.py): its configs parsed with
Triton's own ``model_config.proto`` (tritonclient ships it), and its BLS ``model.py`` run over the
repository's ONNX models through a fake ``triton_python_backend_utils`` (tests/fakes/fake_triton_python.py),
compared with the local ``Translator``. No Triton server or GPU is needed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason='tritonclient[grpc] is not installed (pip install -e ".[serve]")')

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from fakes import fake_triton_python as fake  # noqa: E402
from helpers import tiny_bundle as tb  # noqa: E402
from sdk import BundleError, InputError, Translator  # noqa: E402
from serving.model_repository import RepositoryOptions, main, write_repository  # noqa: E402

RAW_ATOL = 1e-5  # float32: the same ONNX graphs, run stacked vs one by one


def parse_config(path) -> mc.ModelConfig:
    # text_format.Parse refuses unknown fields and wrong types: the file is what Triton will read
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_onnx_repository_structure(tiny_bundles, tmp_path):
    repo = write_repository(RepositoryOptions(bundle=tiny_bundles["two_stage"], out=tmp_path / "repo"))
    m = Translator(tiny_bundles["two_stage"], backend="onnxruntime").manifest
    configs = {p.parent.name: parse_config(p) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"translator", "translator_encoder_first", "translator_encoder", "translator_generator"}
    for name, config in configs.items():
        assert config.name == name and config.max_batch_size == m.batch_max
    for key in ("encoder_first", "encoder", "generator"):
        config, graph = configs[f"translator_{key}"], m.graphs[key]
        assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "model.onnx"
        assert (repo / config.name / "1" / "model.onnx").is_file()
        assert [(i.name, list(i.dims)) for i in config.input] == [(t.name, list(t.shape[1:])) for t in graph.inputs]
        assert [o.name for o in config.output] == [graph.output.name]
        assert all(i.data_type == mc.TYPE_FP32 for i in config.input)
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    bls = configs["translator"]
    assert bls.backend == "python" and bls.HasField("dynamic_batching")
    assert [(i.name, list(i.dims), i.optional) for i in bls.input] == [
        ("condition", [tb.C_X, tb.S, tb.S], False),
        ("iterations", [1], True),
    ]
    assert {o.name: (mc.DataType.Name(o.data_type), list(o.dims)) for o in bls.output} == {
        "output": ("TYPE_UINT8", [tb.R, tb.R, 3]),
        "output_raw": ("TYPE_FP32", [3, tb.R, tb.R]),
        "latents": ("TYPE_FP32", [tb.M, tb.D]),
    }
    assert {p.name for p in (repo / "translator" / "1").iterdir()} == {"model.py", "loop.json", "constants.npz"}
    assert "onnxruntime" in (repo / "README.md").read_text()


@pytest.mark.parametrize("variant", ["iterative", "two_stage"])
def test_bls_model_matches_translator(tiny_bundles, tmp_path, variant):
    repo = write_repository(RepositoryOptions(bundle=tiny_bundles[variant], out=tmp_path / "repo"))
    model, server = fake.load_bls_model(repo)
    x = tb.random_input(5, seed=3)
    max_iterations = 2 if variant == "two_stage" else 4
    rows_iterations = [1, max_iterations, 1]
    requests = [
        fake.Request(condition=x[:3], iterations=np.array(rows_iterations, np.int32)[:, None]),
        fake.Request(condition=x[3:5]),  # the bundle's default iterations
        fake.Request(condition=x[:1], iterations=np.array([[0]], np.int32)),
    ]  # out of range
    responses = model.execute(requests)
    assert len(responses) == 3
    assert responses[2].has_error() and "iterations must be in 1.." in responses[2].error().message()
    with Translator(tiny_bundles[variant], backend="onnxruntime") as local:
        expected = [local.infer(x[i : i + 1], iterations=n) for i, n in enumerate(rows_iterations)]
        expected += [local.infer(x[i : i + 1]) for i in (3, 4)]
    got = []
    for response in responses[:2]:
        assert not response.has_error()
        outputs = {t.name(): t.as_numpy() for t in response.output_tensors()}
        got += [{k: v[i] for k, v in outputs.items()} for i in range(len(outputs["latents"]))]
    assert len(got) == len(expected) == 5
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g["output_raw"], e.images[0], atol=RAW_ATOL, rtol=0)
        np.testing.assert_allclose(g["latents"], e.latents[0], atol=RAW_ATOL, rtol=0)
        uint8 = np.round((np.clip(e.images[0], -1, 1) + 1) / 2 * 255).transpose(1, 2, 0)
        assert np.abs(g["output"].astype(int) - uint8).max() <= 1
    assert set(server.calls) <= {f"translator_{k}" for k in ("encoder", "encoder_first", "generator")}


def _add_fake_engines(bundle, profile_max: int) -> dict:
    """Manifest ``engines`` entries with plan files (bytes a real build would write)."""
    digests = {}
    for key in ("encoder", "generator"):
        data = f"plan for {key}".encode()
        (bundle / f"{key}.plan").write_bytes(data)
        digests[key] = hashlib.sha256(data).hexdigest()

    def edit(m):
        m["engines"] = {
            k: {
                "file": f"{k}.plan",
                "sha256": d,
                "tensorrt": "10.8.0",
                "compute_capability": "8.9",
                "gpu": "NVIDIA L4",
                "profile": {"min": 1, "opt": 1, "max": profile_max},
            }
            for k, d in digests.items()
        }

    tb.edit_manifest(bundle, edit)
    return digests


def test_tensorrt_repository_from_engines(make_tiny_bundle, tmp_path):
    bundle = make_tiny_bundle("iterative")
    _add_fake_engines(bundle, profile_max=2)
    repo = write_repository(RepositoryOptions(bundle=bundle, out=tmp_path / "repo", instances=2))
    for key in ("encoder", "generator"):
        config = parse_config(repo / f"translator_{key}" / "config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert config.max_batch_size == 2  # the engines' profile, below the bundle's batch.max of 4
        assert config.instance_group[0].count == 2
        assert (repo / config.name / "1" / "model.plan").read_bytes() == f"plan for {key}".encode()
    assert parse_config(repo / "translator" / "config.pbtxt").max_batch_size == 2
    readme = (repo / "README.md").read_text()
    assert "TensorRT 10.8.0" in readme and "8.9" in readme
    with pytest.raises(InputError, match="outside"):
        write_repository(RepositoryOptions(bundle=bundle, out=tmp_path / "r2", max_batch=3))


def test_refusals(make_tiny_bundle, tiny_bundles, tmp_path):
    with pytest.raises(BundleError, match="no TensorRT engine"):
        write_repository(RepositoryOptions(bundle=tiny_bundles["single"], out=tmp_path / "r", format="tensorrt"))
    bundle = make_tiny_bundle("iterative")
    _add_fake_engines(bundle, profile_max=4)
    for fmt in ("auto", "tensorrt"):  # Triton would refuse the plans on KIND_CPU instances
        with pytest.raises(InputError, match="TensorRT engines run only on GPU instances; use --kind gpu"):
            write_repository(RepositoryOptions(bundle=bundle, out=tmp_path / "r", format=fmt, kind="cpu"))
    assert not (tmp_path / "r").exists()
    (bundle / "encoder.plan").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="SHA-256"):
        write_repository(RepositoryOptions(bundle=bundle, out=tmp_path / "r"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="--force"):
        write_repository(RepositoryOptions(bundle=tiny_bundles["single"], out=tmp_path / "exists"))


def test_command_line(tiny_bundles, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "tensorrt_plan" in capsys.readouterr().out
    assert main(["--bundle", str(tiny_bundles["single"]), "--out", str(tmp_path / "r"), "--link", "--kind", "cpu"]) == 0
    config = parse_config(tmp_path / "r" / "translator_encoder_first" / "config.pbtxt")
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert main(["--bundle", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
