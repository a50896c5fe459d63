"""Every manifest field the SDK reads is checked when a bundle opens (issue 22, "Constants and
manifests"): numbers of thousands of digits, strings where numbers belong, out-of-range values
and bad task defaults are a BundleError naming the field, never a ValueError at first use."""

from __future__ import annotations

import json

import pytest

from helpers import tiny_bundle as tb
from sdk import BundleError, Translator
from sdk.bundle import MANIFEST, Bundle

BIG = "9" * 5001  # more digits than Python converts to or from text (4300)
PLACEHOLDER = "__replace_me__"


def _set(manifest: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        manifest = manifest.setdefault(k, {}) if isinstance(manifest, dict) else manifest[k]
    manifest[keys[-1]] = value


def _open_error(path) -> str:
    with pytest.raises(BundleError) as err:
        Bundle(path, verify=False)
    return str(err.value)


def _write_raw(path, keys: tuple, literal: str) -> None:
    """Put a JSON literal (which json.dumps could not write, e.g. a 5001-digit integer) at ``keys``."""
    tb.edit_manifest(path, lambda m: _set(m, keys, PLACEHOLDER))
    text = (path / MANIFEST).read_text()
    (path / MANIFEST).write_text(text.replace(json.dumps(PLACEHOLDER), literal))


INT_FIELDS = [  # every integer the runtime reads, with the words its message must hold
    ("schema_version",),
    ("input", "channels"),
    ("input", "size"),
    ("output", "size"),
    ("output", "channels"),
    ("latent", "count"),
    ("latent", "dim"),
    ("batch", "min"),
    ("batch", "max"),
    ("schedule", "default_iterations"),
    ("graphs", "encoder", "inputs", 0, "shape", 1),
    ("input", "range", 0),
    ("output", "range", 1),
]


def _where(keys: tuple) -> str:
    named = [k for k in keys if isinstance(k, str)]
    return named[-1]


@pytest.mark.parametrize("keys", INT_FIELDS, ids=[".".join(map(str, k)) for k in INT_FIELDS])
def test_integers_of_thousands_of_digits_are_refused_at_open(make_tiny_bundle, keys):
    """A 4000-digit integer parses (Python's limit is 4300 digits) and must be refused as out of
    range; a 5001-digit one cannot even be parsed: both are BundleErrors naming the problem."""
    path = make_tiny_bundle()
    _write_raw(path, keys, "9" * 4000)
    msg = _open_error(path)
    assert _where(keys) in msg and "manifest.json" in msg and len(msg) < 600
    _write_raw(path, keys, BIG)
    msg = _open_error(path)
    assert "number too long to read" in msg and "5001 digits" in msg and "manifest.json" in msg


def test_huge_factor_and_label_count(make_tiny_bundle):
    path = make_tiny_bundle(task="super_resolution")
    _write_raw(path, ("task", "options", "factor"), "9" * 4000)
    msg = _open_error(path)
    assert "task.options.factor is 999" in msg and len(msg) < 600
    seg = make_tiny_bundle(name="seg", task="segmentation")
    _write_raw(seg, ("task", "options", "label_nc"), "9" * 4000)
    assert "task.options.label_nc" in _open_error(seg)


STRING_FIELDS = [  # a string (or another type) where a number, bool or string belongs
    (("output", "range"), ["-1", "1"], "output.range"),
    (("output", "range"), "wide", "output.range is str; expected list"),
    (("output", "channels"), "3", "output.channels is str; expected int"),
    (("output", "channels"), 3.0, "output.channels is float; expected int"),
    (("output", "channels"), 1, "output.channels is 1; the generator makes RGB images"),
    (("name",), 7, "manifest.name is int; expected str"),
    (("graphs", "generator", "precision"), 16, "graphs.generator.precision is int; expected str"),
    (("chunks",), {"bytes": "64", "sha256": {}}, "chunks.bytes is str; expected int"),
    (("chunks",), {"bytes": 2**50, "sha256": {}}, "chunks.bytes is 1125899906842624; expected a positive piece"),
    (("constants", "arrays"), {"latent_avg": "4x8"}, "constants.arrays.latent_avg is '4x8'"),
    (
        ("engines",),
        {"generator": {"file": "g.plan", "sha256": "0", "tensorrt": "10", "compute_capability": "8.9", "gpu": 5}},
        "engines.generator.gpu is int; expected str",
    ),
    (
        ("engines",),
        {"nope": {"file": "g.plan", "sha256": "0", "tensorrt": "10", "compute_capability": "8.9"}},
        "engines.nope is an engine for no graph",
    ),
]


@pytest.mark.parametrize(
    "keys,value,needle", STRING_FIELDS, ids=[f"{'.'.join(k)}={v!r}"[:60] for k, v, _ in STRING_FIELDS]
)
def test_wrong_types_and_ranges_named_at_open(make_tiny_bundle, keys, value, needle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, keys, value))
    assert needle in _open_error(path)


def test_output_range_is_parsed_once(make_tiny_bundle):
    path = make_tiny_bundle()
    tb.edit_manifest(path, lambda m: _set(m, ("output", "range"), [0, 255]))
    assert Bundle(path, verify=False).manifest.output_range == (0.0, 255.0)


TASK_DEFAULTS = [  # bundle defaults that cannot work: refused at open, not blamed on a caller's argument
    ("super_resolution", {"factor": 3}, "task.options.factor is 3"),
    ("super_resolution", {"factor": "4"}, "task.options.factor is '4'"),
    ("super_resolution", {"factor": 4.0}, "task.options.factor is 4.0"),
    ("super_resolution", {"factor": True}, "task.options.factor is True"),
    ("segmentation", {"label_nc": "19"}, "task.options.label_nc is '19'"),
    ("segmentation", {"label_nc": 19}, "task.options.label_nc is 19; it must equal input.channels (3"),
    ("sketch", {}, "task 'sketch' feeds the encoder 1 channel(s), but input.channels is 3"),
]


@pytest.mark.parametrize("task,options,needle", TASK_DEFAULTS, ids=[f"{t}-{o}" for t, o, _ in TASK_DEFAULTS])
def test_bad_task_defaults_refused_at_open(make_tiny_bundle, task, options, needle):
    path = make_tiny_bundle(task=task if task != "sketch" else "inversion")
    tb.edit_manifest(path, lambda m: _set(m, ("task",), {"name": task, "options": options}))
    msg = _open_error(path)
    assert needle in msg and ("build_engines" in msg or "different checkpoints" in msg)


def test_super_resolution_factor_must_divide_the_input(make_tiny_bundle):
    """32 is a pSp factor, and divides 256: it opens; the message for 3 lists the ones that do."""
    path = make_tiny_bundle(task="super_resolution", factor=32)
    assert Bundle(path, verify=False).manifest.task_options["factor"] == 32
    tb.edit_manifest(path, lambda m: _set(m, ("task", "options", "factor"), 3))
    assert "(1, 2, 4, 8, 16, 32)" in _open_error(path)


def test_translator_open_names_the_field(make_tiny_bundle):
    """The same errors come out of Translator(...) (the API users call)."""
    path = make_tiny_bundle()
    _write_raw(path, ("output", "range"), f"[-1, {BIG}]")
    with pytest.raises(BundleError, match="number too long to read"):
        Translator(path, backend="onnxruntime", threads=1)
    path = make_tiny_bundle(name="other")
    tb.edit_manifest(path, lambda m: _set(m, ("output", "range"), [-1, "1"]))
    with pytest.raises(BundleError, match=r"output.range is \[-1, '1'\]; expected \[lo, hi\], two finite numbers"):
        Translator(path, backend="onnxruntime", threads=1)
