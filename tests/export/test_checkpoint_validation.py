"""Checkpoint values (issue 22, section 3, "Checkpoints"): every value read from a checkpoint is
checked with a CheckpointError that names the key and what was expected; the ``--checkpoint``
path's kind, a damaged zip, weights that hold NaN/Inf, and a disk that fills during the build
each get their own one-line message (exit code 2 from the command line), never a traceback.

The checkpoints are tiny (an OME encoder of width 4 over an 8 px StyleGAN2 of 4 channels:
49k weights), so a load takes a fraction of a second and the build tests stop at the first write.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
import threading
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from export import build_engines
from export.builder import bundle, disk
from export.checkpoints.loading import load_strict, read_file
from export.checkpoints.registry import from_dict, load_checkpoint
from export.checkpoints.types import CheckpointError
from export.checkpoints.values import check_file
from export.onnx import parity
from export.ort_cpu import cpu_graphs
from helpers.checkpoints import tiny_checkpoint


def _error(ckpt, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        from_dict(ckpt, **kw)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_tiny_checkpoint_loads():
    loaded = from_dict(tiny_checkpoint())
    assert loaded.input_size == 64 and tuple(loaded.latent_avg.shape) == (4, 8)


# --------------------------------------------------------------------------- the state dict


@pytest.mark.parametrize("fmt", ["ome_stylegan2", "psp"])
@pytest.mark.parametrize("value", [[1, 2], None, torch.zeros(3), "weights", 7])
def test_a_state_dict_that_is_not_a_dict(fmt, value):
    ckpt = tiny_checkpoint(fmt)
    ckpt["state_dict"] = value
    message = _error(ckpt)
    assert "state_dict" in message and "expected a dict" in message


@pytest.mark.parametrize("value", [3, 1.5, "w", None, [torch.zeros(2)], {"a": torch.zeros(2)}])
@pytest.mark.parametrize("key", ["encoder.conv1.weight", "decoder.style.1.weight", "unused.extra"])
def test_an_entry_that_is_not_a_tensor_is_named(key, value):
    ckpt = tiny_checkpoint()
    ckpt["state_dict"][key] = value
    message = _error(ckpt)
    assert repr(key) in message and "expected a tensor" in message


def test_a_key_that_is_not_a_string():
    ckpt = tiny_checkpoint()
    ckpt["state_dict"][3] = torch.zeros(1)
    assert "weight names are strings" in _error(ckpt)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_integer_bool_and_complex_weights_are_refused(dtype):
    ckpt = tiny_checkpoint()
    key = "encoder.conv1.weight"
    ckpt["state_dict"][key] = ckpt["state_dict"][key].to(dtype)
    message = _error(ckpt)
    assert repr(key) in message and str(dtype) in message and "expected floating-point" in message


def test_batchnorm_counters_stay_integers():
    ckpt = tiny_checkpoint()
    key = next(k for k in ckpt["state_dict"] if k.endswith("num_batches_tracked"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key].to(torch.int32)
    from_dict(ckpt)  # an int32 counter is widened, not refused


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_weights_are_converted_to_float32(dtype, caplog):
    ckpt = tiny_checkpoint()
    state = ckpt["state_dict"]
    for k, v in state.items():
        if v.is_floating_point():
            state[k] = v.to(dtype)
    ckpt["latent_avg"] = ckpt["latent_avg"].to(dtype)
    with caplog.at_level(logging.INFO):
        loaded = from_dict(ckpt)
    assert f"{str(dtype).replace('torch.', '')} tensor(s) to float32" in caplog.text
    assert {p.dtype for p in loaded.stages[0].encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in loaded.generator.parameters()} == {torch.float32}
    assert loaded.latent_avg.dtype == torch.float32


def test_meta_weights_are_refused_outside_a_layout_check(tmp_path):
    ckpt = tiny_checkpoint()
    key = "decoder.conv1.conv.weight"
    ckpt["state_dict"][key] = torch.empty(ckpt["state_dict"][key].shape, device="meta")
    torch.save(ckpt, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="meta device") as err:
        load_checkpoint(tmp_path / "meta.pt")
    assert repr(key) in str(err.value)


def test_sparse_weights_are_refused():
    ckpt = tiny_checkpoint()
    ckpt["state_dict"]["encoder.conv1.weight"] = ckpt["state_dict"]["encoder.conv1.weight"].to_sparse()
    assert "dense" in _error(ckpt)


@pytest.mark.parametrize(
    "bad, text",
    [(float("nan"), "NaN/Inf (1 NaN"), (float("inf"), "NaN/Inf (0 NaN, 1 Inf"), (1e300, "beyond float32's range")],
)
def test_non_finite_weights_are_refused_at_load_naming_the_first_key(bad, text):
    ckpt = tiny_checkpoint()
    state = ckpt["state_dict"]
    first, later = "encoder.fpn.lateral5.weight", "decoder.to_rgb1.bias"
    state[first] = state[first].double()
    state[first].view(-1)[0] = bad
    state[later] = torch.full_like(state[later], float("nan"))
    message = _error(ckpt)
    assert repr(first) in message and text in message and later not in message


# --------------------------------------------------------------------------- latent_avg and opts


@pytest.mark.parametrize(
    "value, text",
    [
        (torch.zeros(3), "has shape (3,)"),
        (torch.zeros(2, 2, 8), "has shape (2, 2, 8)"),  # 32 values: [4, 8] reshaped
        (torch.zeros(5, 8), "has shape (5, 8)"),
        ([0.0] * 8, "is a list"),
        ("avg", "is a str"),
        (0.5, "is a float"),
        (torch.zeros(8, dtype=torch.int32), "torch.int32"),
        (torch.full((8,), float("nan")), "NaN/Inf"),
    ],
)
def test_latent_avg_of_the_wrong_shape_or_type(value, text):
    ckpt = tiny_checkpoint()
    ckpt["latent_avg"] = value
    message = _error(ckpt)
    assert "latent_avg" in message and text in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("input_size", "big"),
        ("input_size", 96),
        pytest.param("input_size", 10**5000, id="input_size-5001-digits"),
        ("n_iters_per_batch", "5"),
        ("n_iters_per_batch", 0),
        ("n_iters_per_batch", True),
        ("label_nc", 2.5),
        ("input_nc", -1),
        ("encoder_type", 3),
        ("dataset_type", ["sr"]),
        ("split", "8"),
        ("start_from_latent_avg", torch.zeros(9, 9)),  # printed on one line
        ("dataset_type", [torch.zeros(9, 9)] * 2),
    ],
)
def test_option_fields_are_checked(key, value):
    ckpt = tiny_checkpoint()
    ckpt["opts"][key] = value
    message = _error(ckpt)
    assert f"opts.{key} = " in message and "expected" in message


@pytest.mark.parametrize("opts", [[1, 2], "opts", 5, torch.zeros(2)])
def test_opts_that_are_not_a_dict(opts):
    for fmt in ("ome_stylegan2", "psp"):
        ckpt = tiny_checkpoint(fmt)
        ckpt["opts"] = opts
        assert "'opts' is a" in _error(ckpt, format="ome_stylegan2")


def test_load_strict_checks_dtype_device_and_type_on_one_line():
    module = torch.nn.Linear(2, 2)
    for state, text in [
        (
            {"weight": torch.zeros(2, 2, dtype=torch.float64), "bias": torch.zeros(2)},
            "dtype of weight: checkpoint torch.float64, model torch.float32",
        ),
        (
            {"weight": torch.empty(2, 2, device="meta"), "bias": torch.zeros(2)},
            "device of weight: checkpoint meta, model cpu",
        ),
        ({"weight": 3, "bias": torch.zeros(2)}, "entries that are not tensors: weight"),
    ]:
        with pytest.raises(CheckpointError) as err:
            load_strict(module, state, "f.pt")
        assert text in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- the file


def _read_in_thread(path: Path) -> BaseException | None:
    """read_file in a thread that must come back: opening a FIFO for reading would block."""
    result = []

    def run():
        try:
            read_file(path)
            result.append(None)
        except BaseException as e:  # handed to the test
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert result, f"read_file({path}) blocked"
    return result[0]


def test_each_kind_of_path_gets_its_own_message(tmp_path):
    torch.save(tiny_checkpoint(), tmp_path / "good.pt")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    short = Path(tempfile.mkdtemp(prefix="ck"))  # a socket path must stay under 108 bytes
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(short / "s"))
        cases = {
            tmp_path / "missing.pt": "does not exist",
            tmp_path / "folder": "is a directory",
            tmp_path / "fifo": "is a FIFO",
            short / "s": "is a socket",
            Path("/dev/null"): "character device",
            tmp_path / "missing" / "x.pt": "does not exist",
            tmp_path / "nul\0.pt": "cannot be opened",
            tmp_path / ("x" * 300): "cannot be opened (File name too long)",
        }
        for path, text in cases.items():
            err = _read_in_thread(path)
            assert isinstance(err, CheckpointError) and text in str(err) and str(path)[:250] in str(err), (path, err)
    finally:
        sock.close()
        (short / "s").unlink()
        short.rmdir()
    assert _read_in_thread(tmp_path / "good.pt") is None


def test_the_generator_file_is_checked_the_same_way(tmp_path):
    torch.save(tiny_checkpoint(), tmp_path / "good.pt")
    with pytest.raises(CheckpointError, match="--generator file .* is a directory"):
        load_checkpoint(tmp_path / "good.pt", generator_path=tmp_path)
    torch.save({"g_ema": [1, 2]}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="--generator file is not a rosinality file with 'g_ema'"):
        load_checkpoint(tmp_path / "good.pt", generator_path=tmp_path / "g.pt")
    g_ema = {k[len("decoder.") :]: v for k, v in tiny_checkpoint()["state_dict"].items() if k.startswith("decoder.")}
    g_ema["style.1.weight"] = g_ema["style.1.weight"].int()
    torch.save({"g_ema": g_ema}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="--generator \\(g_ema\\): 'style.1.weight' is a torch.int32 tensor"):
        load_checkpoint(tmp_path / "good.pt", generator_path=tmp_path / "g.pt")


def test_an_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.pt"
    torch.save(tiny_checkpoint(), path)
    # the tests may run as root, for whom chmod 000 changes nothing: ask os.access as a user would
    monkeypatch.setattr("export.checkpoints.values.os.access", lambda p, mode: False)
    with pytest.raises(CheckpointError, match="not readable \\(permission denied\\)"):
        read_file(path)


def _flip_a_byte(path: Path, member_suffix: str) -> str:
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix) and i.file_size > 64)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    return info.filename


@pytest.mark.parametrize("member", ["data/0", "data.pkl"])
def test_a_zip_checkpoint_with_a_bad_crc_names_the_member(tmp_path, member):
    path = tmp_path / "flipped.pt"
    torch.save(tiny_checkpoint(), path)
    check_file(path)  # intact
    name = _flip_a_byte(path, member)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "damaged" in str(err.value) and name in str(err.value) and "CRC" in str(err.value)


# --------------------------------------------------------------------------- weights that overflow


def test_finite_weights_that_overflow_name_the_checkpoint_not_a_parity_break(tmp_path, caplog):
    ckpt = tiny_checkpoint()
    ckpt["latent_avg"] = torch.full((8,), 3e38)  # finite, but the generator's image of it is not
    torch.save(ckpt, tmp_path / "overflow.pt")
    out = tmp_path / "bundle"
    assert build_engines.main(["--checkpoint", str(tmp_path / "overflow.pt"), "--out", str(out), "--quiet"]) == 2
    assert "image of latent_avg holds NaN/Inf" in caplog.text and "parity" not in caplog.text
    assert not out.exists()


def test_parity_check_names_the_graph_whose_pytorch_output_overflows(tmp_path):
    class Overflow(torch.nn.Module):
        def forward(self, x):
            return x * 1e30 * 1e30

    x = {"x": torch.ones(2, 3)}
    # raised before ONNX Runtime opens the graph: no graph needs to exist
    with pytest.raises(CheckpointError, match="generator: PyTorch's own output holds NaN/Inf"):
        parity.check_parity(Overflow(), tmp_path / "g.onnx", x, "generator", 1e-4)
    with pytest.raises(CheckpointError, match="encoder_0: its example input 'x' holds NaN/Inf"):
        parity.check_parity(Overflow(), tmp_path / "g.onnx", {"x": torch.full((2, 3), float("inf"))}, "encoder_0", 1e-4)


# --------------------------------------------------------------------------- the command line


def _main_error(args: list, caplog) -> str:
    with caplog.at_level(logging.ERROR):
        assert build_engines.main([*args, "--quiet"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def test_checkpoint_errors_are_one_line_and_exit_code_2(tmp_path, caplog):
    ckpt = tiny_checkpoint()
    del ckpt["state_dict"]["encoder.heads.3.linear.weight"]  # a key mismatch: several parts, one line
    ckpt["state_dict"]["encoder.heads.3.extra"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "mismatch.pt")
    message = _main_error(["--checkpoint", str(tmp_path / "mismatch.pt"), "--out", str(tmp_path / "b")], caplog)
    assert "missing keys: heads.3.linear.weight" in message and "likely cause" in message
    caplog.clear()
    (tmp_path / "folder.pt").mkdir()
    assert "is a directory" in _main_error(["--checkpoint", str(tmp_path / "folder.pt")], caplog)


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    torch.save(tiny_checkpoint(), tmp_path / "tiny.pt")
    return tmp_path / "tiny.pt"


def _nothing_half_written(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.mark.parametrize("named", [True, False])  # file.write's OSError names no file: the newest one is named
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_during_the_onnx_export(tiny_file, tmp_path, monkeypatch, caplog, code, named):
    def full(module, inputs, output_name, path, max_batch):
        path.write_bytes(b"half a graph")
        raise OSError(code, os.strerror(code), *([str(path)] if named else []))

    monkeypatch.setattr(bundle, "export_onnx", full)
    out = tmp_path / "bundle"
    message = _main_error(["--checkpoint", str(tiny_file), "--out", str(out)], caplog)
    assert message.startswith("no space left on device while writing ") and "encoder_0.onnx" in message
    assert message.endswith(" GB or choose --out on another disk")
    _nothing_half_written(out)


def test_a_full_disk_in_the_bundle_writer(tiny_file, tmp_path, monkeypatch, caplog):
    def full(self, manifest):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp / "manifest.json"))

    monkeypatch.setattr(bundle, "export_onnx", lambda *a: None)  # the graphs are not the point here
    monkeypatch.setattr(
        bundle,
        "check_parity",
        lambda module, path, inputs, graph, tol: parity.Parity(graph, 2, 0.0, 1.0, 0.0, tol),
    )
    monkeypatch.setattr(bundle.BundleWriter, "add", lambda self, name: "0" * 64)
    monkeypatch.setattr(cpu_graphs, "add_cpu_graphs", lambda *a: None)
    monkeypatch.setattr(bundle.BundleWriter, "commit", full)
    out = tmp_path / "bundle"
    assert "manifest.json" in _main_error(["--checkpoint", str(tiny_file), "--out", str(out)], caplog)
    _nothing_half_written(out)


def test_a_full_disk_before_the_bundle_writer_starts(tiny_file, tmp_path, monkeypatch, caplog):
    def full(target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(bundle, "BundleWriter", full)
    out = tmp_path / "bundle"
    assert "while writing " + str(out) in _main_error(["--checkpoint", str(tiny_file), "--out", str(out)], caplog)


def _ort_write_to_a_full_disk(folder: Path) -> None:
    """ONNX Runtime saving an optimised graph whose weights file is /dev/full (every write:
    ENOSPC), as export/ort_cpu/cpu_graphs.py saves ``<key>.cpu.onnx.data``: ORT raises its own ``Fail``
    and names the file, without the errno."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.ort_cpu.cpu_graphs import _session

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), folder / "m.onnx")
    os.symlink("/dev/full", folder / "generator.cpu.onnx.data")
    _session(folder / "m.onnx", optimise_into=folder / "generator.cpu.onnx")


@pytest.mark.parametrize("free_gb, full", [(0.01, True), (50, False)])
def test_onnx_runtime_failing_on_a_full_disk(tiny_file, tmp_path, monkeypatch, caplog, free_gb, full):
    monkeypatch.setattr(
        bundle, "export_onnx", lambda module, inputs, name, path, mb: _ort_write_to_a_full_disk(path.parent)
    )
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage(10**12, 10**12, int(free_gb * 1e9)))
    out = tmp_path / "bundle"
    args = ["--checkpoint", str(tiny_file), "--out", str(out)]
    if full:
        message = _main_error(args, caplog)
        assert "no space left on device while writing " in message and "generator.cpu.onnx.data" in message
    else:  # the same failure with room on the disk is not blamed on the disk
        with pytest.raises(Exception, match="Failed to write external initializers") as err:
            build_engines.main([*args, "--quiet"])
        assert type(err.value).__module__.startswith("onnxruntime")
    _nothing_half_written(out)
