"""The embedded demo model (a 64 px OME super-resolution model): its checkpoint, the
photographs it is trained on, and its training (``python -m export.demo.train``)."""

from pathlib import Path

# the embedded default model (trained by export/demo/train.py); a path only, so the command line
# names it without importing torch
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo_ome_sr.pt"
