"""The table and the plot of samples/measure_modes.py's report (its ``results.json`` layout)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# plot styles per mode kind: (marker, colour)
STYLES = {
    "cold": ("o", "tab:blue"),
    "warm": ("s", "tab:orange"),
    "warm+refresh": ("P", "tab:purple"),
    "exit": ("^", "tab:green"),
    "warm+exit": ("D", "tab:red"),
    "bicubic": ("", "gray"),
}
PER_FRAME = {"bicubic": "gray", "cold N=5": "tab:blue", "warm N=1": "tab:orange", "warm N=2": "tab:brown"}


def write_table(report: dict, path: Path) -> str:
    """A markdown table per clip: mode, iterations per frame, PSNR (mean, worst), loop time."""
    lines = [
        f"Bundle `{report['bundle']}`, x{report['factor']} ({report['input_size']} px in, "
        f"{report['output_size']} px out); PSNR on uint8 at the output size, peak 255.",
        "",
    ]
    for name, clip in report["clips"].items():
        lines += [
            f"**{name}** ({clip['frames']} frames, {clip['shots']} shot{'s' * (clip['shots'] > 1)})",
            "",
            "| mode | iterations / frame | PSNR mean (dB) | PSNR worst frame (dB) | loop ms / frame |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for s in clip["summary"]:
            iters = "–" if s["kind"] == "bicubic" else f"{s['iterations_mean']:.2f}"
            ms = "–" if s["kind"] == "bicubic" else f"{s['ms_mean']:.1f}"
            lines.append(f"| {s['mode']} | {iters} | {s['psnr_mean']:.2f} | {s['psnr_min']:.2f} | {ms} |")
        lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def plot_modes(report: dict, path: Path) -> Path | None:
    """Per clip: mean PSNR against mean iterations per frame (the cold modes as a line, bicubic
    as a level), and the per-frame PSNR of bicubic, cold N = 5 and warm N = 1, 2. Returns
    ``None`` (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install -e '.[demo]')")
        return None
    clips = report["clips"]
    fig, axes = plt.subplots(len(clips), 2, figsize=(11, 3.6 * len(clips)), squeeze=False)
    for row, (name, clip) in zip(axes, clips.items()):
        _tradeoff(row[0], name, clip["summary"])
        _per_frame(row[1], name, clip["per_frame"])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _tradeoff(ax, name: str, summary: list) -> None:
    for kind, (marker, colour) in STYLES.items():
        rows = [s for s in summary if s["kind"] == kind]
        if kind == "bicubic":
            for s in rows:
                ax.axhline(s["psnr_mean"], color=colour, linestyle=":", label="bicubic")
            continue
        if not rows:
            continue
        xs, ys = [s["iterations_mean"] for s in rows], [s["psnr_mean"] for s in rows]
        ax.plot(xs, ys, marker=marker, color=colour, linestyle="-" if kind == "cold" else "none", label=kind)
        for s in rows:
            ax.annotate(
                s["mode"].split(" ", 1)[-1],
                (s["iterations_mean"], s["psnr_mean"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("iterations per frame (mean)")
    ax.set_ylabel("PSNR (dB, mean over frames)")
    ax.set_title(f"{name}: quality against work")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _per_frame(ax, name: str, per_frame: list) -> None:
    """Bicubic, cold N = 5 and the warm N = 1, 2 modes with and without refresh."""
    for r in per_frame:
        base = r["mode"].split(" /")[0]
        if base not in PER_FRAME:
            continue
        style = "--" if " /" in r["mode"] else "-"
        ax.plot(range(len(r["psnr"])), r["psnr"], style, linewidth=1, color=PER_FRAME[base], label=r["mode"])
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{name}: per frame")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
