"""Property-based tests of the checkpoint loaders (issue 22): checkpoint dictionaries of random
structure (nested dicts, lists, None, numbers, strings, tensors of random dtypes and shapes, key
sets drawn from the real layouts' keys, and the tiny checkpoint of tests/export/test_checkpoint_validation.py
with entries replaced) load or raise CheckpointError, never another exception; so do saved
files with bytes flipped. Run time is bounded by ``max_examples``.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from export.checkpoints.registry import FORMATS, from_dict, load_checkpoint
from export.checkpoints.types import CheckpointError
from helpers.checkpoints import tiny_checkpoint
from helpers.shared_data import DATA

SETTINGS = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _layout_keys() -> list[str]:
    keys = set(tiny_checkpoint()["state_dict"])
    for path in sorted(DATA.glob("*/*layout*.json")) + sorted(DATA.glob("checkpoint_layouts/*.json")):
        layout = json.loads(path.read_text()).get("keys", {})
        keys.update(sorted(layout)[::25])  # a sample of each layout's names, every prefix kept
    return sorted(keys)


LAYOUT_KEYS = _layout_keys()
TOP_KEYS = [
    "state_dict",
    "opts",
    "latent_avg",
    "format",
    "format_version",
    "g_ema",
    "module.FromRGB.from_rgb.weight",
    "decode_block.0.conv_1.weight",
    "lod",
]
OPT_KEYS = [
    "input_size",
    "n_iters_per_batch",
    "input_nc",
    "label_nc",
    "encoder_type",
    "dataset_type",
    "split",
    "training_stage",
    "start_from_latent_avg",
    "output_size",
    "learn_in_w",
]
DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
    torch.complex64,
]
SPECIAL = [0.0, 1.0, -1.0, float("nan"), float("inf"), 1e30]


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(0, 5), max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    t = torch.zeros(shape, dtype=dtype)
    if t.numel() and (dtype.is_floating_point or dtype.is_complex):
        t.view(-1)[0] = draw(st.sampled_from(SPECIAL))
    return t


LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.sampled_from([2**63, -1, 0, 64, 256])
    | st.sampled_from([40, 5001]).map(lambda digits: 10**digits)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(list(FORMATS) + ["GradualStyleEncoder"])
    | tensors()
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(LAYOUT_KEYS) | st.text(max_size=6) | st.integers(), children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def state_dicts(draw):
    """The tiny checkpoint's real state with entries dropped, replaced and added, or any value."""
    if draw(st.booleans()):
        return draw(VALUES)
    state = tiny_checkpoint()["state_dict"]
    for key in draw(st.lists(st.sampled_from(sorted(state)), max_size=3, unique=True)):
        del state[key]
    for key in draw(st.lists(st.sampled_from(LAYOUT_KEYS), max_size=3)):
        state[key] = draw(VALUES)
    if draw(st.booleans()):  # one real key, another dtype or shape
        key = draw(st.sampled_from(sorted(state)))
        state[key] = draw(tensors())
    return state


@st.composite
def checkpoints(draw):
    ckpt = draw(st.sampled_from(["ome_stylegan2", "ome_stylegan2", "psp", None]))
    ckpt = {} if ckpt is None else tiny_checkpoint(ckpt)
    for key in draw(st.lists(st.sampled_from(TOP_KEYS) | st.integers(0, 2), max_size=2, unique=True)):
        ckpt[key] = draw(state_dicts() if key in ("state_dict", "g_ema") else VALUES)
    if draw(st.booleans()):
        opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), dict) else {}
        opts.update(draw(st.dictionaries(st.sampled_from(OPT_KEYS), LEAVES, max_size=3)))
        ckpt["opts"] = opts
    return ckpt


def _load_or_refuse(ckpt, fmt=None, generator=None) -> None:
    try:
        loaded = from_dict(ckpt, fmt, generator_file=generator)
    except CheckpointError as e:
        assert str(e) and "\n" not in str(e)
        event("refused")
        return
    event("loaded")
    _assert_usable(loaded)


def _assert_usable(loaded) -> None:
    """What loads is usable: finite float32 weights and an [M, D] latent_avg."""
    m, d = loaded.latent_avg.shape
    assert loaded.latent_avg.dtype == torch.float32 and bool(torch.isfinite(loaded.latent_avg).all())
    assert m == loaded.stages[0].config["n_styles"]
    for module in [loaded.generator, *(stage.encoder for stage in loaded.stages)]:
        assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in module.parameters())


@settings(max_examples=50, **SETTINGS)
@given(
    ckpt=checkpoints() | VALUES,
    fmt=st.sampled_from([None] * len(FORMATS) + list(FORMATS)),
    generator=st.sampled_from([None] * 3)
    | st.dictionaries(st.sampled_from(["g_ema", "latent_avg"]), state_dicts(), max_size=2),
)
def test_random_checkpoint_dicts_load_or_raise_checkpoint_error(ckpt, fmt, generator):
    _load_or_refuse(ckpt, fmt, generator)


@st.composite
def mutated_tiny(draw):
    """The tiny checkpoint with one to three of its entries (weights, opts fields, latent_avg)
    dropped or replaced: most examples get past the layout checks into the modules."""
    ckpt = tiny_checkpoint()
    state, opts = ckpt["state_dict"], ckpt["opts"]
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["weight", "weight", "weight", "opts", "latent_avg", "drop"]))
        if target == "weight":
            key = draw(st.sampled_from(sorted(state)))
            options, current = tensors() | VALUES, state[key]
            if isinstance(current, torch.Tensor):  # the real weight, flattened, or in float16
                options = options | st.sampled_from([current.double().reshape(-1), current.half()])
            state[key] = draw(options)
        elif target == "opts":
            opts[draw(st.sampled_from(OPT_KEYS))] = draw(LEAVES)
        elif target == "latent_avg":
            ckpt["latent_avg"] = draw(tensors() | VALUES)
        elif state:
            del state[draw(st.sampled_from(sorted(state)))]
    return ckpt


@settings(max_examples=60, **SETTINGS)
@given(ckpt=mutated_tiny())
def test_mutated_real_checkpoints_load_or_raise_checkpoint_error(ckpt):
    _load_or_refuse(ckpt)


_SAVED = {}


def _saved_tiny(zip_format: bool) -> bytes:
    if zip_format not in _SAVED:
        buffer = io.BytesIO()
        torch.save(tiny_checkpoint(), buffer, _use_new_zipfile_serialization=zip_format)
        _SAVED[zip_format] = buffer.getvalue()
    return _SAVED[zip_format]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@settings(max_examples=40, **SETTINGS)
@given(
    zip_format=st.booleans(),
    truncate=st.none() | st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3),
)
def test_damaged_checkpoint_files_load_or_raise_checkpoint_error(tmp_path_factory, zip_format, flips, truncate):
    """Zip checkpoints (torch.save's default; their CRCs are checked) and legacy ones (no checksum:
    the unpickler fails anywhere, or damaged weights reach the value checks)."""
    data = bytearray(_saved_tiny(zip_format))
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    if truncate is not None:
        data = data[: int(truncate * len(data))]
    path = tmp_path_factory.mktemp("flipped") / "ckpt.pt"
    path.write_bytes(bytes(data))
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as e:
        assert str(path) in str(e) or "checkpoint" in str(e)
        event("refused: damaged" if "damaged" in str(e) else "refused: other")
        return
    event("loaded")
    _assert_usable(loaded)
