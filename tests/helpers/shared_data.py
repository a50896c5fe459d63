"""Where the reference data lives.

The team's shared folder (``../shared`` beside the checkout) is preferred, so new vectors
dropped there are picked up; the copies under ``tests/data`` keep CI self-contained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def shared_path(sub: str) -> Path:
    """``../shared/<sub>`` when present, else the vendored ``tests/data/<sub>``."""
    for base in (REPO.parent / "shared", DATA):
        if (base / sub).is_dir():
            return base / sub
    pytest.skip(f"neither ../shared/{sub} nor tests/data/{sub} exists")
