"""Argument checks shared by the public API (loop, translator, tasks, imaging).

Every check runs on the argument as given (its type, its ``.shape``) before anything is
converted or copied: an ``np.broadcast_to`` view of a million frames has a huge shape and no
memory behind it, and must be refused as such, not by a ``MemoryError`` while copying it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import InputError


def is_int(value) -> bool:
    """A Python or numpy integer, but not a bool (``True`` is an ``int`` to Python)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """A real int or float (Python or numpy), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not is_bool(value)


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` for a message: shortened, and never raising (a caller's object may)."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not replace the error being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_float(value) -> float | None:
    """A real number (not a bool) as a finite float, or None (NaN, Inf, an int beyond float's
    range, not a number): ``float(10**400)`` raises OverflowError, which a caller must not see."""
    if not is_number(value):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def check_bool(value, what: str) -> bool:
    """``value`` as a bool, or :class:`InputError` (``"no"`` or ``0`` are not bools: a truthy
    string would silently mean yes)."""
    if not is_bool(value):
        raise InputError(f"{what} must be True or False; got {shown(value)} ({type(value).__name__})")
    return bool(value)


def check_int(value, what: str, lo: int, hi: int, hint: str = "") -> int:
    """``value`` as an int in ``lo..hi``, or :class:`InputError` naming the range."""
    if not is_int(value) or not lo <= value <= hi:
        raise InputError(f"{what} must be an int in {lo}..{hi}; got {shown(value)} ({type(value).__name__}){hint}")
    return int(value)


def refuse_masked(value, what: str) -> None:
    """Masked arrays are refused: every computation here would silently ignore the mask."""
    if isinstance(value, np.ma.MaskedArray):
        raise InputError(
            f"{what} is a masked array, whose mask the SDK would ignore; pass "
            f"{what}.filled(v) (v: the value to use where masked) or a plain array"
        )


def plain_array(value, what: str, kind: str = "numeric") -> np.ndarray:
    """``value`` as an ndarray without copying one (lists are built): masked arrays (whose
    mask the SDK would silently ignore), ragged nested lists and object arrays are refused."""
    refuse_masked(value, what)
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged nested lists; an object whose __array__ or __len__ fails (its cause is chained)
        raise InputError(
            f"{what} must be a {kind} array; got {type(value).__name__} that numpy cannot make a "
            f"regular array of (ragged nested lists?): {_first_line(e)}"
        ) from e
    if arr.dtype == object:
        raise InputError(
            f"{what} must be a {kind} array; got a non-numeric array (Python objects) of shape "
            f"{list(arr.shape)} from {type(value).__name__}: ragged lists or mixed types?"
        )
    return arr


def match_shape(shape: Sequence[int], forms: Sequence[tuple], what: str) -> int:
    """The batch size of ``shape`` if it matches one of ``forms`` (tuples of ints, ``None``
    first for a batch dimension), else :class:`InputError` listing the forms."""
    shape = tuple(int(d) for d in shape)
    for form in forms:
        if len(form) == len(shape) and all(f is None or f == d for f, d in zip(form, shape)):
            return shape[0] if form and form[0] is None else 1
    expected = " or ".join("[" + ", ".join("B" if d is None else str(d) for d in f) + "]" for f in forms)
    raise InputError(f"{what} must be {expected}; got {list(shape)}")


def _first_line(e: BaseException, limit: int = 120) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:limit]
