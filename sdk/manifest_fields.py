"""Typed reads of the manifest's JSON fields, each failure a :class:`BundleError` naming the field.

``where`` is the field's path in the document (``graphs.generator.inputs[0]``), so a message says
which field of which section is wrong. Integers are bounded by the caller: a JSON integer may have
thousands of digits, which Python reads but refuses to print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import BundleError


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a message, shortened; never raising (Python refuses to print ints of
    more than 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} holding an integer too long to print"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expect(value: Any, kind: type, where: str) -> None:
    """:class:`BundleError` unless ``value`` is a ``kind`` (a bool is not an int here)."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{where} is {type(value).__name__}; expected {kind.__name__}")


def required(raw: Mapping, key: str, kind: type, where: str) -> Any:
    """``raw[key]``, which must be present and a ``kind``."""
    if key not in raw:
        raise BundleError(f"{where} lacks the required field {key!r}")
    expect(raw[key], kind, f"{where}.{key}")
    return raw[key]


def optional(raw: Mapping, key: str, kind: type, where: str, default: Any) -> Any:
    """``raw[key]`` if present and not null (then a ``kind``), else ``default``."""
    return required(raw, key, kind, where) if raw.get(key) is not None else default


def bounded_int(raw: Mapping, key: str, where: str, lo: int, hi: int) -> int:
    """``raw[key]``, an int in ``lo..hi``."""
    value = required(raw, key, int, where)
    if not lo <= value <= hi:
        raise BundleError(f"{where}.{key} is {shown(value)}; expected an int in {lo}..{hi}")
    return value


def finite_number(v: Any) -> bool:
    """A JSON number (not a bool) that is finite as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int beyond float's range
        return False


def value_range(raw: Mapping, where: str) -> tuple[float, float]:
    """``raw["range"]``: ``[lo, hi]``, two finite numbers with lo < hi."""
    rng = required(raw, "range", list, where)
    if len(rng) != 2 or not all(finite_number(v) for v in rng) or not float(rng[0]) < float(rng[1]):
        raise BundleError(f"{where}.range is {shown(rng)}; expected [lo, hi], two finite numbers with lo < hi")
    return float(rng[0]), float(rng[1])
