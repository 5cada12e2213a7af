"""The Live page's panel grid: every metric the run logs that no role chart draws, one small panel each.

Why its own module: a run of a Hugging Face or Lightning loop logs dozens to hundreds of names of its own
(per-layer norms, eval metrics, histograms); the role charts show the vital signs, the grid the rest. What
is here is pure: which panels exist for a list of names and a filter, so that the page only draws the
visible ones (at most `CAP`, each from the query layer's downsampled series) and says how many more there
are. A histogram logged as quantiles (`<name>/p<q>`, logbook.record.histograms) is ONE panel: the median
with its p25-p75 and p5-p95 bands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from midflight.logbook.record.histograms import split_quantile_name

CAP = 24  # panels drawn at once; the rest wait for a narrower filter
BANDS = ((5, 95), (25, 75))  # a histogram family's bands, outer first


@dataclass(frozen=True)
class Panel:
    title: str  # the metric's name, or the histogram family's
    names: tuple[str, ...]  # one metric, or a family's quantile metrics
    quantiles: dict = field(default_factory=dict)  # q -> metric name, for a histogram family

    @property
    def is_histogram(self) -> bool:
        return bool(self.quantiles)


def panels(names, drawn=(), query: str = "") -> list[Panel]:
    """Every panel for a run's metric `names` that the role charts (`drawn`) do not already show, matching
    `query` (case-insensitive; every space-separated word must occur in the name), sorted by title. A family
    of quantile names with a median (p50) is one panel; its stray quantiles never get panels of their own."""
    skip = set(drawn)
    families: dict[str, dict[int, str]] = {}
    single = []
    for n in names:
        if n in skip:
            continue
        split = split_quantile_name(n)
        if split is not None:
            families.setdefault(split[0], {})[split[1]] = n
        else:
            single.append(n)
    out = [Panel(n, (n,)) for n in single]
    for base, qs in families.items():
        if 50 in qs:
            out.append(Panel(base, tuple(qs[q] for q in sorted(qs)), dict(sorted(qs.items()))))
        else:  # no median to draw bands around: plain panels
            out += [Panel(n, (n,)) for n in qs.values()]
    words = [w for w in query.lower().split() if w]
    out = [p for p in out if all(w in p.title.lower() for w in words)]
    return sorted(out, key=lambda p: p.title.lower())


def visible(found: list[Panel], cap: int = CAP) -> tuple[list[Panel], int]:
    """(the panels to draw, how many more the filter left out)."""
    return found[:cap], max(0, len(found) - cap)
