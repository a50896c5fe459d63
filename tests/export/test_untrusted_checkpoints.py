"""Untrusted checkpoints (issue 5, area 3), beyond tests/export/test_checkpoints.py's pickle payload:
every container format torch.load reads, a payload hidden inside an allow-listed type, the
``--generator`` file, the command line, and PyTorch's opt-out environment variable. The payload
would create a marker file; the marker never appears.
"""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from export import build_engines
from export.checkpoints.loading import SAFE_GLOBALS, read_file
from export.checkpoints.registry import load_checkpoint
from export.checkpoints.types import CheckpointError


class Payload:
    """Unpickling this runs ``touch marker`` — unless the loader refuses it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save(kind: str, obj, path):
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle with a .pt name
        with open(path, "wb") as f:
            pickle.dump(obj, f)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("where", ["opts", "state_dict", "namespace"])
def test_payload_refused_in_every_container(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    bad = Payload(marker)
    ckpt = {"state_dict": {"encoder.w": torch.zeros(2)}, "opts": {"input_nc": 3}}
    if where == "opts":
        ckpt["opts"] = bad
    elif where == "state_dict":
        ckpt["state_dict"]["encoder.evil"] = [torch.zeros(1), {"x": bad}]
    else:  # inside argparse.Namespace, the one allow-listed class
        ckpt["opts"] = argparse.Namespace(input_nc=3, hook=bad)
    path = tmp_path / "evil.pt"
    _save(kind, ckpt, path)
    with pytest.raises(CheckpointError) as err:
        read_file(path)
    assert str(path) in str(err.value) and ("allow-list" in str(err.value) or "not a readable" in str(err.value))
    assert not marker.exists()


def test_allow_list_is_explicit_and_small():
    assert SAFE_GLOBALS == [argparse.Namespace]


def test_opt_out_environment_variable_does_not_disable_the_check(tmp_path, monkeypatch):
    """PyTorch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only where weights_only is not passed."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "opts": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="allow-list"):
        read_file(path)
    assert not marker.exists()


def test_payload_in_generator_file(tmp_path):
    marker = tmp_path / "pwned"
    encoder = tmp_path / "encoder.pt"
    torch.save({"state_dict": {}, "opts": {}}, encoder)  # harmless on its own
    generator = tmp_path / "g.pt"
    torch.save({"g_ema": {"w": torch.zeros(1)}, "latent_avg": Payload(marker)}, generator)
    with pytest.raises(CheckpointError, match="allow-list") as err:
        load_checkpoint(encoder, generator_path=generator)
    assert "g.pt" in str(err.value)
    assert not marker.exists()


def test_command_line_refuses_and_writes_nothing(tmp_path, caplog):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "opts": Payload(marker), "latent_avg": torch.zeros(512)}, path)
    out = tmp_path / "engines" / "evil"
    assert build_engines.main(["--checkpoint", str(path), "--out", str(out), "--quiet"]) == 2
    assert "allow-list" in caplog.text and "nothing in it was run" in caplog.text
    assert not marker.exists()
    assert not out.exists() and not any(out.parent.glob(".evil.tmp-*"))
