"""The embedded demo model (a 64 px OME super-resolution model): its checkpoint, the
photographs it is trained on, and its training (``python -m export.demo.train``)."""

from pathlib import Path

# the embedded default model (trained by export/demo/train.py); a path only, so the command line
# names it without importing torch
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo_ome_sr.pt"


def train_main(argv: list[str] | None = None) -> int:
    """The ``gan-train-demo`` console script: :func:`export.demo.train.main`, or one line naming
    the extras to install where torch (or the photographs' packages) is missing."""
    from sdk.extras import exit_for_missing_extra

    try:
        from export.demo.train import main
    except ModuleNotFoundError as e:
        exit_for_missing_extra(e, "export,demo", "__main__")
    return main(argv)
