"""The CPU peers of the benchmark harness (benchmarks/harness/peers.py, peers_run.py) at tiny size:
every peer that can run here runs the loop, agrees with the FP32 graphs, and lands in the table;
those that cannot say why. No wall-clock time is asserted."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import peers, peers_run
from benchmarks.harness.suite import Model
from helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.slow(minutes=1.5)  # a tiny bundle build on 2 shared cores
PEERS = tuple(p for p in peers.PEERS if not p.startswith("torch_compile"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peers")
    torch.save(tiny_checkpoint(), tmp / "tiny.pt")
    model = Model("tiny", tmp / "tiny.pt", tmp / "bundle", "tiny OME checkpoint")
    # torch.compile is left out: Inductor takes about two minutes on the tiny modules here
    settings = peers_run.PeerSettings(
        threads=1, iterations=2, rounds=1, batches=(1, 2), peers=PEERS, progress=False, matmul_n=128
    )
    return peers_run.measure([model], settings, "smoke")


def test_every_peer_runs_or_says_why(run):
    tiny = run["models"]["tiny"]
    assert set(tiny["batches"]["1"]["backends"]) | set(tiny["skipped"]) == set(PEERS)
    for name in ("pytorch_eager", "onnxruntime_portable", "sdk_onnxruntime", "sdk_auto"):
        assert name in tiny["batches"]["2"]["backends"], tiny["skipped"].get(name)
    for name, why in tiny["skipped"].items():
        assert why.startswith(name) and len(why) > len(name) + 5


def test_peers_agree_with_the_fp32_graphs(run):
    for batch, row in run["models"]["tiny"]["batches"].items():
        for name, acc in row["accuracy"].items():
            fp32 = "bf16" not in run["models"]["tiny"]["precision"][name]
            if "psnr_per_step" in acc:
                assert len(acc["psnr_per_step"]) == 2
                assert not fp32 or min(acc["psnr_per_step"]) > 60, (batch, name, acc)
            else:  # torch peers: the last step against eager (eager: against the graphs)
                assert not fp32 or acc["psnr_last_step"] > 60, (batch, name, acc)


def test_rates_peaks_and_table(run):
    tiny = run["models"]["tiny"]
    assert tiny["peaks_before_gflops"]["fp32"] > 0 and tiny["peaks_after_gflops"]["bf16"] > 0
    assert tiny["dense_flops_per_frame"] > 0 and run["machine"]["cores"] >= 1
    row = tiny["batches"]["2"]
    assert row["best_peer"] not in peers.OURS and row["best_ours"] in peers.OURS
    for r in row["backends"].values():
        assert r["median_s"] > 0 and 0 < r["fraction_fp32_peak"] and r["speedup_vs_eager"] > 0
    assert row["backends"]["pytorch_eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    text = peers_run.render(run)
    assert "| sdk_auto |" in text and "Batch 2" in text and "matmul peaks FP32" in text
    assert ("n/a" in text) != run["machine"]["bf16_hardware"]  # no share of an emulated BF16 peak


def test_torch_compile_bf16_needs_bf16_hardware():
    with pytest.raises(peers.BackendUnavailable, match="no AVX512-BF16/AMX"):
        peers.make_peer("torch_compile_bf16", None, None, 1, bf16_hardware=False)


def test_docs_section_between_markers():
    doc = f"# CPU\n\nrule\n\n{peers_run.DOCS_BEGIN}\nold\n{peers_run.DOCS_END}\n\nafter\n"
    new = peers_run.replace_docs_section(doc, "| table |\n")
    assert new == f"# CPU\n\nrule\n\n{peers_run.DOCS_BEGIN}\n| table |\n{peers_run.DOCS_END}\n\nafter\n"
    assert peers_run.replace_docs_section(new, "| table |") == new
    with pytest.raises(ValueError, match="no peers markers"):
        peers_run.replace_docs_section("# none\n", "x")
