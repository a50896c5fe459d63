"""Argument checks shared by the public API (loop, translator, tasks)."""
from __future__ import annotations

import numpy as np


def is_int(value) -> bool:
    """A Python or numpy integer, but not a bool (``True`` is an ``int`` to Python)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
