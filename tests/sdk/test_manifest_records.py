"""The manifest's typed records: engines (EngineSpec), the input's face alignment, and the
informational sections, all parsed in sdk/manifest.py."""

from __future__ import annotations

import pytest

from helpers import tiny_bundle as tb
from sdk import BundleError
from sdk.manifest import UNKNOWN_GPU, EngineSpec, Manifest

ENGINE = {"file": "generator.plan", "sha256": "ab" * 32, "tensorrt": "10.3.0", "compute_capability": "8.9"}


@pytest.fixture
def raw(tiny_bundles) -> dict:
    return tb.read_manifest(tiny_bundles["iterative"])


def test_engines_become_records_with_defaults(raw):
    raw["engines"] = {
        "generator": dict(ENGINE),
        "encoder": {**ENGINE, "file": "encoder.plan", "gpu": "NVIDIA L4", "precision": "fp16", "profile": {"max": 4}},
    }
    engines = Manifest.parse(raw).engines
    assert engines["generator"] == EngineSpec("generator", "generator.plan", "ab" * 32, "10.3.0", "8.9")
    assert (engines["generator"].gpu, engines["generator"].precision, engines["generator"].batch_max) == (
        UNKNOWN_GPU,
        "fp32",
        None,
    )
    assert (engines["encoder"].gpu, engines["encoder"].precision, engines["encoder"].batch_max) == (
        "NVIDIA L4",
        "fp16",
        4,
    )


def test_a_bundle_without_engines_has_none(raw):
    assert Manifest.parse(raw).engines == {}


@pytest.mark.parametrize(
    "profile, needle",
    [
        ("big", "engines.generator.profile is str; expected dict"),
        ({"max": "8"}, "engines.generator.profile.max is str"),
    ],
)
def test_a_bad_engine_profile_names_the_field(raw, profile, needle):
    raw["engines"] = {"generator": {**ENGINE, "profile": profile}}
    with pytest.raises(BundleError, match=needle):
        Manifest.parse(raw)


@pytest.mark.parametrize("alignment, expected", [(None, None), ("ffhq", "ffhq")])
def test_the_input_alignment(raw, alignment, expected):
    if alignment is not None:
        raw["input"]["alignment"] = alignment
    assert Manifest.parse(raw).input_alignment == expected


def test_a_bad_input_alignment_names_the_field(raw):
    raw["input"]["alignment"] = 3
    with pytest.raises(BundleError, match="input.alignment is int; expected str"):
        Manifest.parse(raw)


def test_informational_sections_and_the_document(raw):
    raw["build"] = {"tools": {"onnx": "1.17"}}
    raw["parity"] = "not an object"
    m = Manifest.parse(raw)
    assert m.info("build") == {"tools": {"onnx": "1.17"}}
    assert m.info("parity") == {} and m.info("accuracy") == {}
    doc = m.document()
    assert doc == raw
    doc["build"]["tools"]["onnx"] = "changed"  # a deep copy: the parsed manifest is unchanged
    assert m.info("build")["tools"]["onnx"] == "1.17"
