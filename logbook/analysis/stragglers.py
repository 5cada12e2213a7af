"""Stragglers and hardware trouble ACROSS ranks: who leaves the fleet, and why, from per-bucket aggregates.

Why: in synchronous training every rank waits for the slowest one, so end-to-end step time is the
same on every rank and a per-rank step-time test finds nothing (the fleet benchmark's straggler, 1
rank of 992 at +15 %, went unseen). What tells the ranks apart is each rank's own work before it
blocks on its peers (`compute_s`, logged by the trainer next to `step_time_s`) and its GPU's
telemetry (SM clock, temperature, power). This module compares every rank with the fleet at the
same moment, so no per-rank baseline (warm-up, a slow start) is needed:

- per step bucket, robust statistics across ranks: the median and the MAD (scaled to a standard
  deviation, floored at a small fraction of the median so a very quiet fleet does not turn noise
  into alarms); a rank is slow in a bucket when it is both `z` robust deviations and `min_rel` above
  the median;
- the cell of a rank in a bucket is the MINIMUM of its compute time over the bucket (the caller asks
  the store for it): a rank is flagged only when it was slow at every step of the bucket, so one noisy
  step never alarms, and persistence over `persist` consecutive buckets is required on top;
- node grouping: when at least `node_frac` of a host's ranks (and at least 2) are slow in the same
  bucket, that is ONE `slow_node` incident (a host-level cause: network, CPU, power), not k stragglers;
- `throttled_gpu`: a device whose SM clock stays (its bucket MAXIMUM) well below the fleet's, with its
  temperature and power named in the detail; it explains its rank's slowness, so a straggler
  incident on that rank is folded into it;
- `device_silent`: a device with no sample in `persist` consecutive buckets in which (nearly) every
  other device reported; the caller sizes buckets to at least two sampling periods, so a late
  sample never looks like silence.

Inputs are plain arrays (the report layer reads them from logbook.store.ranks); outputs are
`divergence.Incident`s, so they show wherever the other incidents do.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from midflight.logbook.analysis.incident import Incident

MAD_SCALE = 1.4826  # MAD -> standard deviation for normal noise


@dataclass
class FleetConfig:
    z: float = 6.0  # robust deviations from the fleet median
    min_rel: float = 0.03  # and at least this far (3 % slower) from it
    mad_floor: float = 0.003  # the spread is at least this fraction of the median
    persist: int = 2  # consecutive buckets
    node_frac: float = 0.5  # this share of a host's ranks slow together = a slow node
    clock_drop: float = 0.10  # SM clock this far below the fleet median = throttled
    hot_c: float = 8.0  # degrees above the fleet median that make a throttle "thermal"
    present_frac: float = 0.9  # a bucket where this share of devices reported expects every device


@dataclass
class Grid:
    """One series as rows x buckets: cells, and per row a label, rank (or None) and host; per bucket the
    first and last step it covers (telemetry: x_lo = x_hi = the latest step logged in the bucket)."""

    cells: np.ndarray
    labels: list
    ranks: list
    hosts: list
    x_lo: np.ndarray
    x_hi: np.ndarray

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        return cls(
            np.asarray(d["cells"], dtype="float64"),
            list(d["labels"]),
            list(d["ranks"]),
            list(d["hosts"]),
            np.asarray(d["x_lo"], dtype="float64"),
            np.asarray(d["x_hi"], dtype="float64"),
        )


def robust_z(cells: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per bucket (column): (cells - median) / max(MAD * 1.4826, floor * |median|), and the relative
    deviation cells / median - 1. NaN where a row has no point or a bucket has fewer than 3 rows."""
    with np.errstate(all="ignore"):
        n = np.sum(np.isfinite(cells), axis=0)
        med = np.nanmedian(np.where(n >= 3, cells, np.nan), axis=0) if cells.size else np.empty(0)
        mad = np.nanmedian(np.abs(cells - med), axis=0) * MAD_SCALE
        spread = np.maximum(mad, floor * np.abs(med))
        return (cells - med) / spread, cells / med - 1


def _runs(flags: np.ndarray, persist: int):
    """(first, last, detected_at) bucket indexes of each run of >= persist consecutive True flags."""
    out, start = [], None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start >= persist:
                out.append((start, i - 1, start + persist - 1))
            start = None
    return out


def _step(v, default: int = 0) -> int:
    return int(v) if v is not None and math.isfinite(v) else default


def _incident(kind, g: Grid, b0, b1, bd, peak_value, peak_b, baseline, detail, action, severity="medium"):
    lo = g.x_lo if np.isfinite(g.x_lo).any() else g.x_hi
    first = _step(lo[b0], _step(np.nanmin(lo)) if np.isfinite(lo).any() else 0)
    last = _step(g.x_hi[b1], first)
    inc = Incident(
        kind,
        first,
        max(first, last),
        float(peak_value),
        _step(g.x_hi[peak_b], first),
        severity,
        "transient" if b1 < g.cells.shape[1] - 1 else "recovering",
        detail=detail,
    )
    inc.baseline, inc.detected_step, inc.suggested_action = float(baseline), _step(g.x_hi[bd], last), action
    return inc


def slow_ranks(compute: Grid, cfg: FleetConfig | None = None, metric: str = "compute_s") -> list[Incident]:
    """`straggler` and `slow_node` incidents from a rank x bucket grid of per-rank compute time."""
    cfg = cfg or FleetConfig()
    cells = compute.cells
    if cells.ndim != 2 or cells.shape[0] < 3 or not cells.shape[1]:
        return []
    z, rel = robust_z(cells, cfg.mad_floor)
    with np.errstate(invalid="ignore"):
        slow = (z >= cfg.z) & (rel >= cfg.min_rel)
    med = np.nanmedian(cells, axis=0)
    hosts = np.asarray([h if h is not None else f"rank {r}" for h, r in zip(compute.hosts, compute.ranks)], object)
    out: list[Incident] = []
    node_slow = np.zeros_like(slow)
    for host in dict.fromkeys(hosts):
        rows = np.flatnonzero(hosts == host)
        if len(rows) < 2:
            continue
        need = max(2, math.ceil(cfg.node_frac * len(rows)))
        together = slow[rows].sum(axis=0) >= need
        for b0, b1, bd in _runs(together, cfg.persist):
            seg = slice(b0, b1 + 1)
            worst = rel[rows, seg]
            detail = {
                "host": host,
                "ranks": [int(compute.ranks[r]) for r in rows if slow[r, seg].any()],
                "metric": metric,
                "vs_median": round(float(np.nanmedian(worst[worst >= cfg.min_rel])), 4),
            }
            peak = int(np.nanargmax(np.nanmax(cells[rows, seg], axis=0))) + b0
            out.append(
                _incident(
                    "slow_node",
                    compute,
                    b0,
                    b1,
                    bd,
                    np.nanmax(cells[rows, seg]),
                    peak,
                    med[peak],
                    detail,
                    "a whole node is slow: check its network links, CPU frequency and power",
                )
            )
        node_slow[rows] |= together  # a slow node's ranks are not stragglers in those buckets
    for r in range(cells.shape[0]):
        for b0, b1, bd in _runs(slow[r] & ~node_slow[r], cfg.persist):
            seg = cells[r, b0 : b1 + 1]
            peak = int(np.nanargmax(seg)) + b0
            detail = {
                "rank": int(compute.ranks[r]) if compute.ranks[r] is not None else None,
                "host": hosts[r],
                "metric": metric,
                "vs_median": round(float(np.nanmedian(rel[r, b0 : b1 + 1])), 4),
            }
            inc = _incident(
                "straggler",
                compute,
                b0,
                b1,
                bd,
                cells[r, peak],
                peak,
                med[peak],
                detail,
                "one rank is slow while its peers wait: check its GPU, host and data loader",
            )
            inc.metric = metric
            out.append(inc)
    return out


def throttled(
    clock: Grid, temp: Grid | None = None, power: Grid | None = None, cfg: FleetConfig | None = None
) -> list[Incident]:
    """`throttled_gpu` incidents: a device whose SM clock (its bucket MAXIMUM: low all bucket long) stays
    `clock_drop` and `z` robust deviations below the fleet's; temperature and power go in the detail."""
    cfg = cfg or FleetConfig()
    cells = clock.cells
    if cells.ndim != 2 or cells.shape[0] < 3 or not cells.shape[1]:
        return []
    z, rel = robust_z(cells, cfg.mad_floor)
    with np.errstate(invalid="ignore"):
        low = (z <= -cfg.z) & (rel <= -cfg.clock_drop)
    med = np.nanmedian(cells, axis=0)
    others = {}
    for name, g in (("temp_c", temp), ("power_w", power)):
        if g is not None and g.cells.shape[1] == cells.shape[1]:
            idx = {lab: i for i, lab in enumerate(g.labels)}
            others[name] = (g, idx, np.nanmedian(g.cells, axis=0))
    out = []
    for r in range(cells.shape[0]):
        for b0, b1, bd in _runs(low[r], cfg.persist):
            seg = slice(b0, b1 + 1)
            label = clock.labels[r]
            host, _, device = str(label).rpartition("/")
            detail = {
                "host": host or clock.hosts[r],
                "device": device,
                "rank": clock.ranks[r],
                "sm_clock_vs_median": round(float(np.nanmedian(rel[r, seg])), 4),
            }
            for name, (g, idx, gmed) in others.items():
                i = idx.get(label)
                if i is not None:
                    detail[f"{name}_vs_median"] = round(float(np.nanmedian(g.cells[i, seg] - gmed[seg])), 2)
            why = "hot" if detail.get("temp_c_vs_median", 0.0) >= cfg.hot_c else "power or clock capped"
            detail["cause"] = why
            peak = int(np.nanargmin(cells[r, seg])) + b0
            out.append(
                _incident(
                    "throttled_gpu",
                    clock,
                    b0,
                    b1,
                    bd,
                    cells[r, peak],
                    peak,
                    med[peak],
                    detail,
                    "this GPU runs at a throttled clock: check its cooling and power cap",
                )
            )
    return out


def silent(presence: Grid, cfg: FleetConfig | None = None) -> list[Incident]:
    """`device_silent` incidents: no sample in `persist` consecutive buckets where at least `present_frac`
    of the devices reported. presence.cells: any per-device series (NaN = no sample in the bucket)."""
    cfg = cfg or FleetConfig()
    cells = presence.cells
    if cells.ndim != 2 or cells.shape[0] < 2 or not cells.shape[1]:
        return []
    have = np.isfinite(cells)
    expected = have.mean(axis=0) >= cfg.present_frac
    out = []
    for r in range(cells.shape[0]):
        seen = np.flatnonzero(have[r])
        if not len(seen):
            continue
        missing = expected & ~have[r]
        missing[: seen[0]] = False  # a device that has not started yet is not silent
        for b0, b1, bd in _runs(missing, cfg.persist):
            host, _, device = str(presence.labels[r]).rpartition("/")
            last = seen[seen < b0]
            detail = {
                "host": host or presence.hosts[r],
                "device": device,
                "rank": presence.ranks[r],
                "buckets": int(b1 - b0 + 1),
                "last_seen_step": _step(presence.x_hi[last[-1]]) if len(last) else None,
            }
            out.append(
                _incident(
                    "device_silent",
                    presence,
                    b0,
                    b1,
                    bd,
                    float(b1 - b0 + 1),
                    b1,
                    0.0,
                    detail,
                    "this device stopped reporting: check the node (hung GPU, lost host)",
                    "high",
                )
            )
    return out


_DIGITS = re.compile(r"(\d+)$")


def device_rank(label: str, rank_hosts: dict) -> int | None:
    """The rank a device label "host/gpuK" runs: the K-th rank (by rank number) of that host."""
    host, _, device = str(label).rpartition("/")
    m = _DIGITS.search(device)
    ranks = rank_hosts.get(host)
    return ranks[int(m.group(1))] if m and ranks and int(m.group(1)) < len(ranks) else None


def fleet_incidents(inputs: dict, cfg: FleetConfig | None = None) -> list[Incident]:
    """Every across-rank incident from the report's fleet inputs: {"compute": grid, "sm_clock": grid,
    "temp": grid, "power": grid, "presence": grid} (each a Grid.from_dict dict; any may be missing),
    "compute_metric" (the metric of the compute grid: compute_s, or step_time_s for a run without it), and
    "ranks": {"ranks", "hosts"} where there is no compute grid to map devices to ranks from.
    A throttled GPU explains its rank's slowness: that rank's overlapping straggler incident is folded
    into the throttled_gpu incident (detail "rank_slower")."""
    cfg = cfg or FleetConfig()
    grids = {k: Grid.from_dict(v) for k, v in inputs.items() if v is not None and k not in ("ranks", "compute_metric")}
    out: list[Incident] = []
    compute = grids.get("compute")
    known = inputs.get("ranks") or ({"ranks": compute.ranks, "hosts": compute.hosts} if compute else None)
    rank_hosts: dict = {}
    for r, h in sorted(zip(known["ranks"], known["hosts"]), key=lambda x: x[0]) if known else ():
        rank_hosts.setdefault(h, []).append(r)
    if compute is not None:
        out += slow_ranks(compute, cfg, metric=inputs.get("compute_metric", "compute_s"))
    for g in (grids.get("sm_clock"), grids.get("presence")):
        if g is not None:
            g.ranks = [device_rank(lab, rank_hosts) for lab in g.labels]
    hw = []
    if grids.get("sm_clock") is not None:
        hw += throttled(grids["sm_clock"], grids.get("temp"), grids.get("power"), cfg)
    if grids.get("presence") is not None:
        hw += silent(grids["presence"], cfg)
    for inc in hw:
        if inc.kind != "throttled_gpu" or inc.detail.get("rank") is None:
            continue
        for s in [s for s in out if s.kind == "straggler" and s.detail.get("rank") == inc.detail["rank"]]:
            if s.start_step <= inc.end_step and inc.start_step <= s.end_step:
                inc.detail["rank_slower"] = s.detail["vs_median"]
                out.remove(s)
    return sorted(out + hw, key=lambda i: (i.start_step, i.kind))
