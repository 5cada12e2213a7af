"""Per-rank and per-device views that scale to thousands of ranks: one aggregate query, a bounded answer.

Why: one chart line per rank (or per GPU) stops being readable at a few dozen and stops being
drawable at a few hundred (the Live page took 51 s at 992 ranks). What an engineer needs at a glance
is where the fleet sits (the distribution across ranks per step) and who leaves it (the outliers),
and both fit in a matrix of at most `buckets` step (or time) buckets x ranks (or nodes / devices).

`fleet_view()` answers all of it from ONE SQL aggregate over the run:
- the cells of a rank x step heatmap (or node x step, device x time, node x time);
- per bucket, the distribution across rows: min, p5, median, p95, max, and the worst row by name;
- the top-k outliers: the rows furthest from the median in the bad direction, with their peak, the
  step they peaked at and since when (the start of that episode).

A cell is the EXTREME of the row's points in the bucket in the bad direction (`cell="max"` for step
time, power, temperature, utilisation and memory; `cell="min"` for SM clock, where a throttled GPU
runs slow): a bucket wider than one step keeps its worst point, so a straggler's cell survives any
downsampling (the heatmap never averages it away). The distribution is over those cells, so its
median is "a typical rank's worst point in the bucket" and its min/max are the true extremes.

Metrics read the per-rank M4 tiles (`metric_tiles`: p_min / p_max of every 256-step tile) when a
bucket spans at least one tile, plus raw rows only at ragged edges, so the cost grows with
ranks x tiles, not with raw points. Telemetry reads `telemetry_tiles` the same way, in wall-time tiles
(64 s or 4096 s, the widest no wider than a bucket): a month at 1 Hz is ~650 coarse tiles per device, not
2.6M samples; raw rows only at the ragged edges of a zoomed window, or when a bucket is under 64 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from midflight.logbook.store import downsample, schema
from midflight.logbook.store.database import Store

TILE = downsample.TILE
DEFAULT_BUCKETS = 200
TOP_K = 10
MIN_CELLS = ("clock",)  # a telemetry name containing one of these is bad when LOW (a throttled SM clock)


def default_cell(name: str) -> str:
    """Which extreme is the bad one for a series: "min" for clocks, "max" for everything else."""
    return "min" if any(k in name for k in MIN_CELLS) else "max"


@dataclass
class FleetView:
    """A bounded aggregate of one series over every rank (or node, or device). Rows x buckets."""

    name: str
    source: str  # "metric" (x = step) or "telemetry" (x = wall time)
    group: str  # "rank" | "node" (metrics); "device" | "node" (telemetry)
    cell: str  # "max" | "min": which extreme of a row's points in a bucket the cell keeps
    rows: pd.DataFrame  # per row, in display order: label, rank (or None), host
    x_lo: np.ndarray  # per bucket: first step (metric) or wall time (telemetry) it covers
    x_hi: np.ndarray  # per bucket: last step / wall time it covers
    step: np.ndarray  # per bucket: a step in it (metrics: its first; telemetry: the latest step logged, or NaN)
    cells: np.ndarray  # rows x buckets (NaN where a row has no point in the bucket)
    band: pd.DataFrame  # per bucket: x_lo, x_hi, step, min, p5, median, p95, max, worst, n
    outliers: pd.DataFrame  # top-k rows: label, rank, host, vs_median, peak, median, peak_step, since_step, until_step

    @property
    def empty(self) -> bool:
        return not self.cells.size


def _empty(name: str, source: str, group: str, cell: str) -> FleetView:
    cols = ["x_lo", "x_hi", "step", "min", "p5", "median", "p95", "max", "worst", "n"]
    out = ["label", "rank", "host", "vs_median", "peak", "median", "peak_step", "since_step", "until_step"]
    e = np.empty(0)
    rows = pd.DataFrame({"label": [], "rank": [], "host": []})
    return FleetView(
        name,
        source,
        group,
        cell,
        rows,
        e,
        e,
        e,
        np.empty((0, 0)),
        pd.DataFrame(columns=cols),
        pd.DataFrame(columns=out),
    )


def _check(buckets: int, cell: str | None, name: str, top: int) -> tuple[int, str]:
    if not isinstance(buckets, int) or isinstance(buckets, bool) or not 1 <= buckets <= 10_000:
        raise ValueError(f"buckets={buckets!r}: use an integer from 1 to 10,000")
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise ValueError(f"top={top!r}: use an integer >= 0")
    cell = cell or default_cell(name)
    if cell not in ("max", "min"):
        raise ValueError(f"cell={cell!r}: use 'max' or 'min'")
    return buckets, cell


# ----------------------------------------------------------------- metrics: rank (or node) x step
def metric_view(
    store: Store,
    run: str,
    name: str = "step_time_s",
    *,
    buckets: int = DEFAULT_BUCKETS,
    group: str = "rank",
    cell: str | None = None,
    x_range: tuple | None = None,
    top: int = TOP_K,
) -> FleetView:
    """A metric logged by every rank (step_time_s) as a rank x step (or node x step) aggregate.

    Steps follow the effective history (after rollbacks), as the charts do. x_range: (lo, hi) steps."""
    buckets, cell = _check(buckets, cell, name, top)
    if group not in ("rank", "node"):
        raise ValueError(f"group={group!r}: use 'rank' or 'node'")
    cur = store.cursor()
    from midflight.logbook.store import queries  # noqa: PLC0415 - queries imports nothing from here

    spans = downsample.step_spans(queries.effective_ranges(store, run), x_range)
    if not spans:
        return _empty(name, "metric", group, cell)
    # the extent, from the tiles that touch the spans (1/256 of the rows)
    touch = [(seg, a >> downsample.TILE_SHIFT, b >> downsample.TILE_SHIFT) for seg, a, b in spans]
    w, p = downsample.where("metric_tiles", "tile", run, name, None, touch)
    lo, hi = cur.execute(f"SELECT min(p_first.step), max(p_last.step) FROM metric_tiles WHERE {w}", p).fetchone()
    if lo is None:
        return _empty(name, "metric", group, cell)
    lo, hi = max(int(lo), min(a for _, a, _ in spans)), min(int(hi), max(b for _, _, b in spans))
    width = max(1, math.ceil((hi - lo + 1) / buckets))
    if width >= TILE:  # whole tiles per bucket: read tile extremes, raw rows only at the ragged edges
        width = math.ceil(width / TILE) * TILE
        origin = (lo // TILE) * TILE
        tiles, raw = downsample.tile_split(spans)
    else:
        origin, tiles, raw = lo, [], spans
    t_where, t_params = downsample.where("metric_tiles", "tile", run, name, None, tiles)
    r_where, r_params = downsample.where("metrics", "step", run, name, None, raw)
    nb = math.ceil((hi - origin + 1) / width)
    key = "c.rank" if group == "rank" else "coalesce(r.host, 'rank ' || c.rank::VARCHAR)"
    agg = "max(c.hi)" if cell == "max" else "min(c.lo)"
    sql = f"""
        WITH c AS (
            SELECT segment_id, rank, tile * {TILE} AS step, p_max.value AS hi, p_min.value AS lo
            FROM metric_tiles WHERE {t_where} AND p_max IS NOT NULL AND isfinite(p_max.value)
                AND isfinite(p_min.value)
            UNION ALL
            SELECT segment_id, rank, step, value AS hi, value AS lo
            FROM metrics WHERE {r_where} AND isfinite(value))
        SELECT {key} AS row_key, min(c.rank) AS rank, arg_max(r.host, c.step) AS host,
               least(CAST(floor((c.step - ?) / ?) AS BIGINT), ?) AS bucket, {agg} AS value
        FROM c LEFT JOIN rank_logs r ON r.run_id = ? AND r.segment_id = c.segment_id AND r.rank = c.rank
        GROUP BY ALL"""
    df = cur.execute(sql, t_params + r_params + [origin, width, nb - 1, run]).df()
    if df.empty:
        return _empty(name, "metric", group, cell)
    b = np.arange(nb)
    x_lo = (origin + b * width).astype("float64")
    x_hi = np.minimum(origin + (b + 1) * width - 1, hi).astype("float64")
    x_lo[0] = max(x_lo[0], lo)
    return _assemble(df, name, "metric", group, cell, x_lo, x_hi, x_lo.copy(), top)


# ----------------------------------------------------------------- telemetry: device (or node) x time
def telemetry_view(
    store: Store,
    run: str,
    name: str,
    *,
    buckets: int = DEFAULT_BUCKETS,
    group: str = "device",
    cell: str | None = None,
    x_range: tuple | None = None,
    top: int = TOP_K,
) -> FleetView:
    """Device telemetry (power_w, temp_c, util_pct, sm_clock_mhz, ...) as a device x time (or node x time)
    aggregate in equal wall-time buckets. x_range: (lo, hi) wall time in seconds."""
    buckets, cell = _check(buckets, cell, name, top)
    if group not in ("device", "node"):
        raise ValueError(f"group={group!r}: use 'device' or 'node'")
    cur = store.cursor()
    x0, x1 = (-math.inf, math.inf) if x_range is None else (float(x_range[0]), float(x_range[1]))
    coarse = schema.TELEMETRY_TILES[-1]
    lo, hi = cur.execute(  # the extent, from the coarsest tiles that touch the window (few rows)
        "SELECT min(greatest(p_first.t, ?)), max(least(p_last.t, ?)) FROM telemetry_tiles "
        "WHERE run_id = ? AND name = ? AND width = ? AND p_last.t >= ? AND p_first.t <= ?",
        [x0, x1, run, name, coarse, x0, x1],
    ).fetchone()
    if lo is None or lo > hi:
        return _empty(name, "telemetry", group, cell)
    lo, hi = float(lo), float(hi)
    width = (hi - lo) / buckets or 1.0
    fits = [w for w in schema.TELEMETRY_TILES if w <= width]
    host = "coalesce(r.host, 'rank ' || c.rank::VARCHAR)"
    key = f"{host} || '/' || c.device" if group == "device" else host
    agg = "max(c.hi)" if cell == "max" else "min(c.lo)"
    raw = "SELECT segment_id, rank, device, wall_time AS x, value AS hi, value AS lo, step FROM telemetry_spans"
    raw_cond = (  # block_t_lo/hi: only the telemetry blocks that overlap the window are unnested (schema.py)
        "run_id = ? AND name = ? AND isfinite(value) AND wall_time BETWEEN ? AND ? "
        "AND block_t_hi >= ? AND block_t_lo <= ?"
    )
    if fits:  # whole tiles per bucket: tile extremes inside the window, raw rows only in its ragged edges
        w = fits[-1]
        width = math.ceil(width / w) * w
        origin = math.floor(lo / w) * w
        t_lo, t_hi = math.ceil(lo / w), math.floor(hi / w) - 1  # tiles wholly inside [lo, hi]
        if x_range is None:  # the whole run: every tile is whole
            t_lo, t_hi = math.floor(lo / w), math.floor(hi / w)
        sources = f"""
            SELECT segment_id, rank, device, tile * {w} AS x, p_max.value AS hi, p_min.value AS lo,
                   p_last.step AS step
            FROM telemetry_tiles WHERE run_id = ? AND name = ? AND width = {w} AND tile BETWEEN ? AND ?
                AND p_max IS NOT NULL AND isfinite(p_max.value) AND isfinite(p_min.value)"""
        params = [run, name, t_lo, t_hi]
        if x_range is not None:
            sources += f" UNION ALL {raw} WHERE {raw_cond} AND NOT (wall_time >= ? AND wall_time < ?)"
            params += [run, name, lo, hi, lo, hi, t_lo * w, (t_hi + 1) * w]
    else:
        origin = lo
        sources = f"{raw} WHERE {raw_cond}"
        params = [run, name, lo, hi, lo, hi]
    nb = max(1, math.ceil((hi - origin) / width + 1e-12)) if fits else buckets
    sql = f"""
        WITH c AS ({sources})
        SELECT {key} AS row_key, CAST(NULL AS INTEGER) AS rank, any_value({host}) AS host,
               least(CAST(floor((c.x - ?) / ?) AS BIGINT), ?) AS bucket, {agg} AS value,
               max(c.step) AS step
        FROM c LEFT JOIN rank_logs r ON r.run_id = ? AND r.segment_id = c.segment_id AND r.rank = c.rank
        GROUP BY ALL"""
    df = cur.execute(sql, params + [origin, width, nb - 1, run]).df()
    if df.empty:
        return _empty(name, "telemetry", group, cell)
    b = np.arange(nb)
    x_lo, x_hi = origin + b * width, np.minimum(origin + (b + 1) * width, hi)
    x_lo[0] = max(x_lo[0], lo)
    steps = df.groupby("bucket")["step"].max().reindex(b).to_numpy("float64")
    return _assemble(df.drop(columns="step"), name, "telemetry", group, cell, x_lo, x_hi, steps, top)


# ----------------------------------------------------------------- the cells -> matrix, band, outliers
def _assemble(df, name, source, group, cell, x_lo, x_hi, steps, top) -> FleetView:
    nb = len(x_lo)
    labels = df.groupby("row_key", sort=False).agg(rank=("rank", "min"), host=("host", "last")).reset_index()
    if group == "rank":
        labels = labels.sort_values("rank", kind="stable").reset_index(drop=True)
        labels["label"] = ["rank " + str(int(r)) for r in labels["rank"]]
    else:
        labels = labels.sort_values("row_key", kind="stable").reset_index(drop=True)
        labels["label"] = labels["row_key"].astype(str)
        labels["rank"] = None
    index = {k: i for i, k in enumerate(labels["row_key"])}
    cells = np.full((len(labels), nb), np.nan)
    cells[df["row_key"].map(index).to_numpy(), df["bucket"].to_numpy("int64")] = df["value"].to_numpy("float64")

    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bucket (no point in it) stays NaN
            q = np.nanpercentile(cells, [5, 50, 95], axis=0) if cells.size else np.full((3, nb), np.nan)
            mn, mx = np.nanmin(cells, axis=0), np.nanmax(cells, axis=0)
    n = (~np.isnan(cells)).sum(axis=0)
    median = q[1]
    # how far each cell is from its bucket's median, in the bad direction (a fraction of the median)
    with np.errstate(all="ignore"):
        rel = cells / median - 1.0
    bad = rel if cell == "max" else -rel
    bad_f = np.where(np.isnan(bad), -np.inf, bad)
    worst_row = np.where(n > 0, bad_f.argmax(axis=0), -1)
    band = pd.DataFrame(
        {
            "x_lo": x_lo,
            "x_hi": x_hi,
            "step": steps,
            "min": mn,
            "p5": q[0],
            "median": median,
            "p95": q[2],
            "max": mx,
            "worst": [labels["label"].iat[i] if i >= 0 else None for i in worst_row],
            "n": n,
        }
    )
    band = band[n > 0].reset_index(drop=True)
    outliers = _outliers(labels, cells, bad_f, rel, median, steps, x_lo, top)
    rows = labels[["label", "rank", "host"]].copy()
    return FleetView(name, source, group, cell, rows, x_lo, x_hi, steps, cells, band, outliers)


def _outliers(labels, cells, bad, rel, median, steps, x_lo, top) -> pd.DataFrame:
    """The `top` rows whose worst bucket is furthest from the median, and the episode around that bucket.

    "since" is the first bucket of the unbroken run of buckets, around the peak, where the row stays at
    least half as far from the median as at its peak: when the row began to lag, not when it was worst."""
    cols = ["label", "rank", "host", "vs_median", "peak", "median", "peak_step", "since_step", "until_step"]
    if not cells.size or top == 0:
        return pd.DataFrame(columns=cols)
    peak_b = bad.argmax(axis=1)
    peak = bad[np.arange(len(bad)), peak_b]
    order = [i for i in np.argsort(-peak, kind="stable") if np.isfinite(peak[i])][:top]
    at = steps if np.isfinite(steps).any() else x_lo
    out = []
    for i in order:
        b = peak_b[i]
        half = peak[i] / 2
        s, e = b, b
        while s > 0 and bad[i, s - 1] >= half:
            s -= 1
        while e + 1 < bad.shape[1] and bad[i, e + 1] >= half:
            e += 1
        out.append(
            {
                "label": labels["label"].iat[i],
                "rank": None if pd.isna(labels["rank"].iat[i]) else int(labels["rank"].iat[i]),
                "host": labels["host"].iat[i],
                "vs_median": float(rel[i, b]),
                "peak": float(cells[i, b]),
                "median": float(median[b]),
                "peak_step": _step(at[b]),
                "since_step": _step(at[s]),
                "until_step": _step(at[e]),
            }
        )
    return pd.DataFrame(out, columns=cols)


def _step(v) -> int | None:
    return None if v is None or not np.isfinite(v) else int(v)


__all__ = ["FleetView", "metric_view", "telemetry_view", "default_cell"]
