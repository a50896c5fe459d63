"""Carried chains of the demo's training (export/demo/chains.py, ``train.py --carry``): the loop
states really continue across batches, on the same or a neighbouring frame; chains end and
restart from ``z_0``; a short run on tiny sizes is deterministic and fine-tunes from a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.checkpoints.types import CheckpointError
from export.demo import train as train_module
from export.demo.chains import CarriedChains, warm_chain_psnr
from export.demo.data import CropSampler
from export.demo.finetune import load_demo_weights
from export.demo.train import DemoConfig, DemoModel, save_checkpoint

pytestmark = pytest.mark.slow(minutes=1)  # three tiny training runs on 2 shared cores

TINY = {
    "style_dim": 16,
    "channels": {4: 16, 8: 16, 16: 16, 32: 8, 64: 8},
    "encoder_width": 8,
    "fpn_dim": 16,
    "batch": 4,
    "steps": 2,
}


def photos(seed: int = 0, n: int = 2) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, size=(96, 120, 3), dtype=np.uint8), 1.0) for _ in range(n)]


def sampler(seed: int = 0) -> CropSampler:
    return CropSampler(photos(), 64, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def model() -> DemoModel:
    torch.manual_seed(0)
    return DemoModel(DemoConfig(**TINY)).eval()


def chains(**kw) -> CarriedChains:
    args = {"slots": 3, "rng": np.random.default_rng(5), "factors": {4: 1.0}, "mean_length": 1e9, "max_chain": 100}
    return CarriedChains(sampler(), **(args | kw))


def test_states_continue_across_batches_on_a_neighbouring_view(model):
    c = chains(shift=2, still=0.0)
    hr, x, z, y = c.frames(model)
    z_start, y_start = model.start(3)
    assert torch.equal(z, z_start) and torch.equal(y, y_start)  # new tracks start from z_0
    assert hr.shape == x.shape == (3, 3, 64, 64) and hr.min() >= -1 and hr.max() <= 1
    before = [(t.level, t.top, t.left) for t in c.tracks]
    with torch.no_grad():
        z1, y1 = model.step(x, z, y)
    c.keep(z1, y1)
    _, _, z2, y2 = c.frames(model)
    assert torch.equal(z2, z1) and torch.equal(y2, y1)  # the next batch continues the trained step
    after = [(t.level, t.top, t.left) for t in c.tracks]
    for (lv0, t0, l0), (lv1, t1, l1) in zip(before, after):
        assert lv0 == lv1 and abs(t1 - t0) <= 2 and abs(l1 - l0) <= 2
    assert c.lengths() == [1, 1, 1]


def test_still_frames_repeat_the_view(model):
    c = chains(still=1.0)
    hr, x, z, y = c.frames(model)
    c.keep(z + 1, y)
    hr2, x2, z2, _ = c.frames(model)
    assert torch.equal(hr2, hr) and torch.equal(x2, x) and torch.equal(z2, z + 1)


def test_a_chain_ends_at_max_chain_and_restarts_from_z0(model):
    c = chains(max_chain=2)
    z0, _ = model.start(3)
    for _ in range(2):
        _, _, z, y = c.frames(model)
        c.keep(z + 1, y)
    assert c.lengths() == [2, 2, 2]
    _, _, z, _ = c.frames(model)
    assert torch.equal(z, z0) and c.lengths() == [0, 0, 0]


def test_held_out_warm_chain_is_scored(model):
    scores = warm_chain_psnr(model, sampler(7), crops=2, frames=4, iterations=2)
    assert set(scores) == {"warm", "cold"} and all(np.isfinite(v) for v in scores.values())
    assert not model.training


def run_tiny(monkeypatch, tmp_path, name: str, init_from=None, **cfg) -> dict:
    monkeypatch.setattr(train_module, "load_photographs", lambda names: photos(len(names)))
    monkeypatch.setattr(train_module, "warm_chain_psnr", lambda *a, **k: {"warm": 0.0, "cold": 0.0})
    out = tmp_path / name
    train_module.train(DemoConfig(**(TINY | {"carry": 0.5} | cfg)), out, threads=1, progress=False, init_from=init_from)
    return torch.load(out, weights_only=True)


def test_a_tiny_run_is_deterministic_and_fine_tunes_from_its_checkpoint(monkeypatch, tmp_path):
    a = run_tiny(monkeypatch, tmp_path, "a.pt")
    b = run_tiny(monkeypatch, tmp_path, "b.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["opts"]["train_config"]["carry"] == 0.5
    tuned = DemoModel(DemoConfig(**TINY))
    load_demo_weights(tuned, tmp_path / "a.pt")
    assert torch.equal(tuned.latent_avg, a["latent_avg"])
    # at learning rate 0 a fine-tune writes back exactly the weights it started from (batch-norm
    # statistics still move); ignoring init_from would write the seed's untrained weights instead
    c = run_tiny(monkeypatch, tmp_path, "c.pt", init_from=tmp_path / "a.pt", lr=0.0)
    weights = [k for k in a["state_dict"] if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(c["state_dict"][k], a["state_dict"][k]) for k in weights)


def test_init_from_names_a_wrong_file(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="not an ome_stylegan2"):
        load_demo_weights(DemoModel(DemoConfig(**TINY)), bad)
    other = DemoModel(DemoConfig(**(TINY | {"style_dim": 8})))
    save_checkpoint(other, DemoConfig(**(TINY | {"style_dim": 8})), tmp_path / "other.pt", [])
    with pytest.raises(CheckpointError, match="does not match the demo architecture"):
        load_demo_weights(DemoModel(DemoConfig(**TINY)), tmp_path / "other.pt")
