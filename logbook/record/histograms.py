"""Histograms as quantiles: how a distribution (weights, activations, per-token losses) is stored and drawn.

A histogram logged at a step is kept as a fixed set of quantiles, each an ordinary metric named
`<name>/p<q>` (`grad/p50`), so that it costs a handful of points per step, takes the same tiles and
spike-preserving downsampling as any scalar, and is drawn as bands (p5-p95, p25-p75) around the median.
The dashboard's panel grid finds such families with `split_quantile_name`.
"""

from __future__ import annotations

QUANTILES = (0, 5, 25, 50, 75, 95, 100)


def quantile_name(name: str, q: int) -> str:
    return f"{name}/p{q}"


def split_quantile_name(metric: str) -> tuple[str, int] | None:
    """('grad', 50) for 'grad/p50' when 50 is one of QUANTILES, else None."""
    base, sep, tail = metric.rpartition("/p")
    if not sep or not base or not tail.isdigit() or int(tail) not in QUANTILES or tail != str(int(tail)):
        return None
    return base, int(tail)
