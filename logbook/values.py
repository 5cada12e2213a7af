"""One meaning of "no value" for every layer: None, NaN and pandas' NA are all missing.

Store rows arrive as Python values, numpy scalars or pandas' NA depending on the column; the
summary, the exporters and the pages all turn them into JSON-safe numbers or text. These helpers
do that once. Standard library only, so every layer may import this module.
"""

from __future__ import annotations

import math


def missing(v) -> bool:
    """True for None, NaN and pandas' NA (anything that does not convert to a non-NaN float is not
    missing unless it is one of those: text is a value)."""
    if v is None:
        return True
    try:
        return math.isnan(v)
    except TypeError:
        return type(v).__name__ in ("NAType", "NaTType")  # pandas' NA and NaT, without importing pandas


def number(v) -> int | float | None:
    """A JSON-safe number: an int when integral, else a float; None when missing or not a number.
    Infinities are kept (the JSON writer refuses them, which is the caller's to decide)."""
    if v is None or isinstance(v, bool):
        return None if v is None else int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if math.isnan(f):
        return None
    return int(f) if f.is_integer() and abs(f) < 2**63 else f


def finite(v) -> float | None:
    """A finite float, or None (missing, infinite or not a number)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def whole(v) -> int | None:
    """An int, or None (missing, infinite or not a number)."""
    f = finite(v)
    return None if f is None else int(f)


def text(v) -> str | None:
    """The value if it is text, else None (a missing note or reason)."""
    return v if isinstance(v, str) else None


def first(*values):
    """The first value that is not missing, else None."""
    return next((v for v in values if not missing(v)), None)
