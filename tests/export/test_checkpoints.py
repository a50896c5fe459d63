"""Checkpoint loading: every public layout loads with strict matching, formats are detected
from the file, mismatches name the keys and the cause, and pickled code never runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from export.checkpoints.loading import read_file
from export.checkpoints.registry import detect_format, from_dict, load_checkpoint
from export.checkpoints.types import CheckpointError

ENCODER_LAYOUTS = {
    "psp_ffhq_1024_GradualStyleEncoder.json": ("psp", "GradualStyleEncoder", 3, 18),
    "restyle_psp_ffhq_1024_BackboneEncoder.json": ("restyle_psp", "BackboneEncoder", 6, 18),
    "restyle_psp_ffhq_1024_GradualStyleEncoder.json": ("restyle_fpn", "GradualStyleEncoder", 6, 18),
}
OPTS = {
    "psp": {
        "encoder_type": "GradualStyleEncoder",
        "input_nc": 3,
        "output_size": 1024,
        "start_from_latent_avg": True,
        "learn_in_w": False,
    },
    "restyle_psp": {"encoder_type": "BackboneEncoder", "input_nc": 6, "output_size": 1024, "n_iters_per_batch": 5},
    "restyle_fpn": {"encoder_type": "GradualStyleEncoder", "input_nc": 6, "output_size": 1024, "n_iters_per_batch": 5},
}


def meta_state(keys: dict) -> dict:
    return {
        k: torch.empty(
            v["shape"] if isinstance(v, dict) else v,
            device="meta",
            dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32,
        )
        for k, v in keys.items()
    }


def layout_keys(layouts_dir: Path, name: str) -> dict:
    return json.loads((layouts_dir / name).read_text())["keys"]


@pytest.mark.parametrize("name", sorted(ENCODER_LAYOUTS))
def test_public_layouts_load_strictly(layouts_dir, name):
    fmt, encoder_type, input_nc, n_styles = ENCODER_LAYOUTS[name]
    state = meta_state(layout_keys(layouts_dir, name))
    ckpt = {"state_dict": state, "opts": OPTS[fmt], "latent_avg": torch.empty(18, 512, device="meta")}
    assert detect_format(ckpt) == fmt
    with torch.device("meta"):
        loaded = from_dict(ckpt)
    assert loaded.format == fmt
    assert loaded.encoder_config["encoder_type"] == encoder_type
    assert loaded.encoder_config["input_nc"] == input_nc
    assert loaded.encoder_config["n_styles"] == n_styles == loaded.generator.n_latent
    assert loaded.generator.size == 1024
    assert loaded.repeat_last == (fmt != "psp")
    assert [st.feedback for st in loaded.stages] == [fmt != "psp"]
    own = {f"encoder.{k}" for k in loaded.stages[0].encoder.state_dict()} | {
        f"decoder.{k}" for k in loaded.generator.state_dict()
    }
    assert own == set(state)


def test_sketch_input_layer_loads(layouts_dir):
    keys = layout_keys(layouts_dir, "psp_ffhq_1024_GradualStyleEncoder.json")
    keys.update(layout_keys(layouts_dir, "psp_sketch_input_layer.json"))
    ckpt = {
        "state_dict": meta_state(keys),
        "opts": {**OPTS["psp"], "input_nc": 1, "label_nc": 0},
        "latent_avg": torch.empty(18, 512, device="meta"),
    }
    with torch.device("meta"):
        loaded = from_dict(ckpt)
    assert loaded.encoder_config["input_nc"] == 1


def test_rosinality_generator_layout(layouts_dir):
    keys = layout_keys(layouts_dir, "rosinality_stylegan2_ffhq_1024.json")
    enc = {
        k: v
        for k, v in layout_keys(layouts_dir, "restyle_psp_ffhq_1024_GradualStyleEncoder.json").items()
        if k.startswith("encoder.")
    }
    generator_file = {"g_ema": meta_state(keys), "latent_avg": torch.empty(512, device="meta")}
    assert detect_format(generator_file) == "rosinality"
    ckpt = {"state_dict": meta_state(enc), "opts": OPTS["restyle_fpn"]}
    with torch.device("meta"):
        loaded = from_dict(ckpt, generator_file=generator_file)
    assert loaded.generator.size == 1024 and loaded.generator.channel_multiplier == 2
    assert tuple(loaded.latent_avg.shape) == (18, 512)  # the rosinality [512] mean, repeated
    with pytest.raises(CheckpointError, match="--generator"):
        from_dict(generator_file)


def test_e2style_layout_loads_as_two_stages(layouts_dir):
    keys = layout_keys(layouts_dir, "e2style_ffhq_1024_stage2.json")
    ckpt = {
        "state_dict": meta_state(keys),
        "opts": {"input_nc": 3, "stage": 2, "training_stage": 2},
        "latent_avg": torch.empty(18, 512, device="meta"),
    }
    assert detect_format(ckpt) == "e2style"
    with torch.device("meta"):
        loaded = from_dict(ckpt)
    assert [(st.config["input_nc"], st.feedback, st.residual) for st in loaded.stages] == [
        (3, False, True),
        (6, True, True),
    ]
    assert all(st.config["encoder_type"] == "E2StyleEncoder" for st in loaded.stages)
    assert not loaded.repeat_last and loaded.default_iterations == 2
    own = {f"encoder_firststage.{k}" for k in loaded.stages[0].encoder.state_dict()}
    own |= {f"encoder_refinestage_list.0.{k}" for k in loaded.stages[1].encoder.state_dict()}
    own |= {f"decoder.{k}" for k in loaded.generator.state_dict()}
    assert own == set(keys)


def test_mismatch_names_keys_and_cause(layouts_dir):
    keys = layout_keys(layouts_dir, "psp_ffhq_1024_GradualStyleEncoder.json")
    state = meta_state(keys)
    del state["encoder.styles.17.linear.bias"]
    state["encoder.styles.17.extra"] = torch.empty(3, device="meta")
    with torch.device("meta"), pytest.raises(CheckpointError) as err:
        from_dict({"state_dict": state, "opts": OPTS["psp"], "latent_avg": torch.empty(18, 512, device="meta")})
    msg = str(err.value)
    assert "missing keys: styles.17.linear.bias" in msg
    assert "unexpected keys: styles.17.extra" in msg
    assert "likely cause" in msg and "styles" in msg
    assert "(encoder.*)" in msg


def test_wrong_input_channels_are_reported(layouts_dir):
    keys = layout_keys(layouts_dir, "psp_ffhq_1024_GradualStyleEncoder.json")
    with torch.device("meta"), pytest.raises(CheckpointError, match="input_nc = 6"):
        from_dict({"state_dict": meta_state(keys), "opts": {**OPTS["psp"], "input_nc": 6}}, format="psp")


def test_format_override_must_match_the_weights(layouts_dir):
    keys = layout_keys(layouts_dir, "restyle_psp_ffhq_1024_BackboneEncoder.json")
    with torch.device("meta"), pytest.raises(CheckpointError, match="BackboneEncoder"):
        from_dict({"state_dict": meta_state(keys), "opts": OPTS["restyle_psp"]}, format="restyle_fpn")


class Payload:
    """Pickling this runs ``os.system`` at load time — unless the loader refuses it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "opts": Payload(marker), "latent_avg": torch.zeros(512)}, path)
    with pytest.raises(CheckpointError, match="allow-list"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_file(bad)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        detect_format({"weights": 1})
