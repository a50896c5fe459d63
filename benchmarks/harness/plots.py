"""PNG plots of a results JSON (matplotlib, headless): latency against N per back end, throughput
against the batch size, and PSNR against compute for the loop's video modes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from benchmarks.harness.backends import LABELS

log = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return None
    matplotlib.use("Agg")  # no display on the benchmark machines
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, count: int, title: str):
    fig, axes = plt.subplots(1, count, figsize=(4.6 * count, 3.8), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _sweep(run: dict, path: Path, field: str, title: str, y: str, ylabel: str, panel, **axis) -> Path | None:
    """One panel per model with ``model[field]`` (x -> stats), one series per back end: ``stats[y]``
    against x; ``panel(model)`` titles the panel, ``axis`` sets the rest of the axes."""
    plt = _pyplot()
    models = [m for m in run["models"].values() if m.get(field)]
    if plt is None or not models:
        return None
    fig, axes = _grid(plt, len(models), title)
    for ax, model in zip(axes, models):
        for key, per in model[field].items():
            xs = [int(x) for x in per]
            ax.plot(xs, [per[x][y] for x in per], marker="o", label=LABELS.get(key, key))
        ax.set(title=panel(model), ylabel=ylabel, **axis)
        ax.set(xticks=xs, xticklabels=[str(x) for x in xs])  # after a log scale, which would relabel them
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


def latency_vs_iterations(run: dict, path: Path) -> Path | None:
    return _sweep(
        run,
        path,
        "by_iterations",
        "Latency per frame against iterations N (batch 1, median)",
        "median_s",
        "seconds per frame",
        lambda m: m["model"],
        xlabel="iterations N",
    )


def throughput_vs_batch(run: dict, path: Path) -> Path | None:
    return _sweep(
        run,
        path,
        "by_batch",
        "Throughput against batch size",
        "fps",
        "frames per second",
        lambda m: f"{m['model']} (N = {m['batch_iterations']})",
        xlabel="batch",
        xscale="log",
    )


def psnr_vs_compute(quality: dict, path: Path) -> Path | None:
    """One panel per clip: mean PSNR against GFLOP per frame, one series per kind of mode."""
    plt = _pyplot()
    clips = quality.get("clips", {})
    if plt is None or not clips:
        return None
    fig, axes = _grid(
        plt, len(clips), f"PSNR against compute per frame ({quality['model']}, early exit and warm start)"
    )
    markers = "osD^v<>p*"
    for ax, (name, clip) in zip(axes, clips.items()):
        kinds = list(dict.fromkeys(r["kind"] for r in clip if r["kind"] != "bicubic"))  # cold, warm, exit, ...
        for kind, marker in zip(kinds, markers):
            points = sorted((r["gflop_per_frame"], r["psnr_mean"]) for r in clip if r["kind"] == kind)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=kind)
        for r in clip:
            if r["kind"] == "bicubic":
                ax.axhline(r["psnr_mean"], color="grey", linestyle=":", label="bicubic")
        ax.set(title=name, xlabel="GFLOP per frame (dense, from the graphs)", ylabel="mean PSNR, dB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(run: dict, folder: Path) -> dict[str, Path]:
    """Every plot the run has data for, into ``folder``; name -> file."""
    run = json.loads(json.dumps(run))  # keys as in the JSON file
    made = {
        "latency_vs_iterations": latency_vs_iterations(run, folder / "latency_vs_iterations.png"),
        "throughput_vs_batch": throughput_vs_batch(run, folder / "throughput_vs_batch.png"),
    }
    if run.get("quality"):
        made["psnr_vs_compute"] = psnr_vs_compute(run["quality"], folder / "psnr_vs_compute.png")
    return {k: v for k, v in made.items() if v is not None}
