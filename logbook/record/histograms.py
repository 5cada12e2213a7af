"""Histograms as quantiles: how a distribution (weights, activations, per-token losses) is stored and drawn.

A histogram logged at a step is kept as a fixed set of quantiles, each an ordinary metric named
`<name>/p<q>` (`grad/p50`), so that it costs a handful of points per step, takes the same tiles and
spike-preserving downsampling as any scalar, and is drawn as bands (p5-p95, p25-p75) around the median.
The dashboard's panel grid finds such families with `split_quantile_name`.

`Histogram(values)` is what a training loop logs: `run.log({"w": Histogram(layer.weight)}, step=s)`
records `w/p0 ... w/p100` and `w/count` (the finite values), plus `w/nonfinite` when some were NaN or
infinite (they are dropped from the quantiles, and counted). The quantiles are computed when the
Histogram is built, at the call site: the user chose to log a distribution, and keeping a reference to a
tensor that training goes on changing would record the wrong values. The cost is a sort of the values:
O(n log n) on the tensor's own device for a torch tensor (and one small device->host copy of the 7
quantiles: this syncs the GPU, once per Histogram), `numpy.percentile` for an array, `sorted` for a list.
Log histograms every few hundred steps, not every step.

Duck-typed: this module imports neither numpy nor torch (the record layer is stdlib + orjson). A tensor is
recognised by its type's module and handled with its own methods; an array through the numpy module that
created it.
"""

from __future__ import annotations

import math
import numbers
import sys

QUANTILES = (0, 5, 25, 50, 75, 95, 100)
COUNT = "count"  # <name>/count: how many finite values the quantiles were computed from
NONFINITE = "nonfinite"  # <name>/nonfinite: how many NaN/Inf values were dropped (recorded only when > 0)
_REAL_KINDS = ("b", "i", "u", "f")  # numpy dtype kinds that hold real numbers


def quantile_name(name: str, q: int) -> str:
    return f"{name}/p{q}"


def split_quantile_name(metric: str) -> tuple[str, int] | None:
    """('grad', 50) for 'grad/p50' when 50 is one of QUANTILES, else None."""
    base, sep, tail = metric.rpartition("/p")
    if not sep or not base or not tail.isdigit() or int(tail) not in QUANTILES or tail != str(int(tail)):
        return None
    return base, int(tail)


def _module(v) -> str:
    return type(v).__module__.partition(".")[0]


def _interpolate(ordered, n: int) -> list[float]:
    """The QUANTILES of `n` sorted values, by linear interpolation between neighbours (numpy's default)."""
    out = []
    for q in QUANTILES:
        pos = q / 100 * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        out.append(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    return out


class Histogram:
    """A distribution to log: `run.log({"w": Histogram(values)}, step=s)`. Stored as quantiles (see module doc).

    `values`: a list, tuple or range of real numbers, a numpy array or a torch tensor of any shape and a real
    or bool dtype. W&B's `np_histogram=(counts, bin_edges)` is accepted too; its quantiles are then
    interpolated within the bins (an estimate). `num_bins` is accepted and ignored (quantiles have no bins).
    TypeError / ValueError (one line) for anything else.
    """

    __slots__ = ("quantiles", "count", "nonfinite")

    def __init__(self, values=None, *, np_histogram=None, num_bins=None):
        del num_bins  # W&B's argument: quantiles need no bins
        if values is None and np_histogram is None:
            raise TypeError("Histogram(): give the values (a list, numpy array or tensor)")
        if values is not None and np_histogram is not None:
            raise TypeError("Histogram(): give the values or np_histogram=(counts, bin_edges), not both")
        self.nonfinite = 0
        if np_histogram is not None:
            self.quantiles, self.count = _from_bins(np_histogram)
            return
        mod = _module(values)
        if mod == "torch":
            qs, n = self._torch(values)
        elif mod == "numpy":
            qs, n = self._numpy(values)
        elif isinstance(values, (list, tuple, range)):
            qs, n = self._sequence(values)
        else:
            raise TypeError(
                f"Histogram() takes a list, tuple, numpy array or torch tensor of numbers, not "
                f"{type(values).__name__} ({values!r:.60})"
            )
        self.quantiles, self.count = qs, n

    def _sequence(self, values) -> tuple[list, int]:
        """(quantiles, finite count) of a list; each method below returns the same."""
        ordered = []
        for i, v in enumerate(values):
            if isinstance(v, (str, bytes)) or not isinstance(v, numbers.Real):
                raise TypeError(f"Histogram(): element {i} is {type(v).__name__} ({v!r:.60}), not a real number")
            f = float(v)
            if math.isfinite(f):
                ordered.append(f)
            else:
                self.nonfinite += 1
        ordered.sort()
        return (_interpolate(ordered, len(ordered)) if ordered else []), len(ordered)

    def _numpy(self, values) -> tuple[list, int]:
        np = sys.modules["numpy"]
        a = np.asarray(values)
        if a.dtype.kind not in _REAL_KINDS:
            raise TypeError(f"Histogram(): a numpy array of {a.dtype} does not hold real numbers")
        a = a.astype(np.float64, copy=False).reshape(-1)
        finite = np.isfinite(a)
        kept = a[finite]
        self.nonfinite = int(a.size - kept.size)
        if not kept.size:
            return [], 0
        return [float(x) for x in np.percentile(kept, QUANTILES)], int(kept.size)

    def _torch(self, values) -> tuple[list, int]:
        torch = sys.modules["torch"]
        dtype = values.dtype
        if dtype.is_complex:
            raise TypeError(f"Histogram(): a tensor of {dtype} does not hold real numbers")
        x = values.detach().reshape(-1)
        if not dtype.is_floating_point:  # bool and integer tensors: as float64 (exact up to 2**53)
            x = x.to(torch.float64)
        kept = x[x.isfinite()]  # one sync: the number of finite values decides the result's size
        n = kept.numel()
        self.nonfinite = int(x.numel() - n)
        if not n:
            return [], 0
        ordered = kept.sort().values
        pos = [q / 100 * (n - 1) for q in QUANTILES]
        lo = [math.floor(p) for p in pos]
        hi = [min(i + 1, n - 1) for i in lo]
        picked = ordered[torch.tensor(lo + hi, device=ordered.device)].to("cpu", torch.float64).tolist()
        k = len(QUANTILES)
        return [picked[i] + (picked[k + i] - picked[i]) * (p - lo[i]) for i, p in enumerate(pos)], n

    def metrics(self, name: str) -> dict:
        """{name/p0: ..., name/p100: ..., name/count: n} (+ name/nonfinite when > 0): what run.log records."""
        out = {quantile_name(name, q): v for q, v in zip(QUANTILES, self.quantiles)}
        out[f"{name}/{COUNT}"] = self.count
        if self.nonfinite:
            out[f"{name}/{NONFINITE}"] = self.nonfinite
        return out

    def __repr__(self) -> str:
        qs = ", ".join(f"p{q}={v:.4g}" for q, v in zip(QUANTILES, self.quantiles))
        return f"Histogram(count={self.count}, nonfinite={self.nonfinite}{', ' if qs else ''}{qs})"


def _from_bins(np_histogram) -> tuple[list, int]:
    """Quantiles of (counts, bin_edges), interpolated linearly within each bin: W&B's np_histogram form."""
    try:
        counts, edges = np_histogram
        counts = [float(c) for c in counts]
        edges = [float(e) for e in edges]
    except (TypeError, ValueError):
        raise TypeError("Histogram(np_histogram=...) takes (counts, bin_edges), as numpy.histogram returns") from None
    if len(edges) != len(counts) + 1 or any(not math.isfinite(x) for x in counts + edges) or min(counts, default=0) < 0:
        raise ValueError("Histogram(np_histogram=...): need n finite counts >= 0 and n + 1 finite bin edges")
    total = sum(counts)
    if not total:
        return [], 0
    out = []
    for q in QUANTILES:
        target, seen = q / 100 * total, 0.0
        for i, c in enumerate(counts):
            if c and seen + c >= target:
                frac = 0.0 if q == 0 else (target - seen) / c
                out.append(edges[i] + (edges[i + 1] - edges[i]) * frac)
                break
            seen += c
    return out, int(round(total))
