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


# Steps everywhere (records, the store's BIGINT columns, control lines, imports) are integers in
# [0, 2**63): one rule, checked where a value enters. A step outside it is refused there with a
# reason, never stored as a wrapped or clamped number and never allowed to break a whole chunk.
STEP_LIMIT = 2**63


def step(v) -> int:
    """`v` as a training step, an int in [0, 2**63); ValueError (with the reason) for anything else.

    Accepted: an int (not a bool), a float or numpy number with an integral value, and text that
    spells such a number ("150", "1.5e3"). Refused: negative, 2**63 or more, a fraction, NaN, an
    infinity, a bool, None and other types."""
    if type(v) is int:
        n = v
    else:
        if v is None or isinstance(v, bool):
            raise ValueError(f"step {v!r} is not an integer")
        try:
            n = int(v) if isinstance(v, int) or hasattr(v, "__index__") else None
        except (TypeError, ValueError):
            n = None
        if n is None:
            try:
                f = float(v.strip() if isinstance(v, str) else v)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"step {str(v)[:40]!r} is not a number") from None
            if not math.isfinite(f) or not f.is_integer():
                raise ValueError(f"step {str(v)[:40]!r} is not a whole number")
            if not 0 <= f < STEP_LIMIT:
                raise ValueError(f"step {str(v)[:40]} is outside [0, 2**63)")
            if isinstance(v, str) and v.strip().lstrip("+").isdigit():
                n = int(v.strip())  # exact: a float would round 20-digit text
            else:
                n = int(f)
    if not 0 <= n < STEP_LIMIT:
        raise ValueError(f"step {str(n)[:40]} is outside [0, 2**63)")
    return n


def optional_step(v) -> int | None:
    """None stays None (a record with no step); anything else follows `step`."""
    return None if v is None else step(v)


def json_ready(obj, path: str = "") -> tuple[object, list[list[str]]]:
    """`obj` with every NaN and +-Inf float replaced by None, and where each was: [[path, token], ...].

    Strict JSON has no NaN or Infinity, yet a NaN loss or an infinite grad norm is a finding, not a
    gap. So they follow the event logs' own convention: the value becomes null, and a `nonfinite`
    list beside it says which path held "NaN", "Infinity" or "-Infinity" (paths like
    `wasted[0].start_time`). Dicts and lists are copied; other values are returned as they are."""
    found: list[list[str]] = []

    def walk(v, where: str):
        if isinstance(v, float) and not math.isfinite(v):
            found.append([where, "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")])
            return None
        if isinstance(v, dict):
            return {k: walk(x, f"{where}.{k}" if where else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if type(v).__module__ == "numpy" and hasattr(v, "item"):  # numpy scalars: as Python numbers
            return walk(v.item(), where)
        return v

    return walk(obj, path), found
