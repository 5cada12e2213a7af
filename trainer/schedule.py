"""OPT's LR schedule: linear warm-up to the peak, then linear decay to a fraction of it."""

from __future__ import annotations


def lr_at(step: int, *, peak: float, warmup: int, decay: int, min_ratio: float, multiplier: float = 1.0) -> float:
    """The LR for optimizer step `step` (1-based). After `warmup + decay` steps it stays at `min_ratio * peak`."""
    if warmup > 0 and step <= warmup:
        frac = step / warmup
    else:
        done = min(1.0, (step - warmup) / decay) if decay > 0 else 1.0
        frac = 1.0 - (1.0 - min_ratio) * done
    return peak * frac * multiplier
