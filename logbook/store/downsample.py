"""Spike-preserving downsampling (M4): first, last, min and max of every bucket, plus its first NaN.

Two ways to the same answer:
- `m4()` aggregates any (x, value, step, segment_id) query into buckets; cost grows with the rows.
- `m4_from_tiles()` reads the per-256-step summaries that ingest keeps in `metric_tiles`, plus the
  raw rows of the partial tiles at the edges of each range, and runs `m4()` over those candidates.
  Buckets are whole tiles, so the result is exactly M4 of the raw points, at ~1/50 of the rows.
Every returned point is a real point: no spike and no NaN is sampled away at any zoom.
"""

from __future__ import annotations

import math

import pandas as pd

from midflight.logbook.store import lineage, schema

TILE_SHIFT = schema.TILE_SHIFT
TILE = 1 << TILE_SHIFT


def m4(cur, sql: str, params: list, origin: float, width: float, nbuckets: int) -> pd.DataFrame:
    """M4 of the rows of `sql` (columns x, value, step, segment_id) over buckets [origin + i*width, ...)."""
    # One struct-valued arg_min/arg_max per M4 role (first, last, min, max, first NaN): 5 aggregate
    # states per bucket. NaN is kept out of min/max so that it cannot hide the real extremes.
    agg = cur.execute(
        f"""
        WITH s AS ({sql}),
        b AS (SELECT {{'x': x, 'value': value, 'step': step, 'segment_id': segment_id}} AS p, x, value,
                     least(CAST(floor((x - ?) / ?) AS BIGINT), ?) AS bucket FROM s),
        g AS (SELECT arg_min(p, x) AS r0, arg_max(p, x) AS r1,
                     arg_min(p, value) FILTER (NOT isnan(value)) AS r2,
                     arg_max(p, value) FILTER (NOT isnan(value)) AS r3,
                     arg_min(p, x) FILTER (isnan(value)) AS r4
              FROM b GROUP BY bucket)
        SELECT r0.x, r0.value, r0.step, r0.segment_id, r1.x, r1.value, r1.step, r1.segment_id,
               r2.x, r2.value, r2.step, r2.segment_id, r3.x, r3.value, r3.step, r3.segment_id,
               r4.x, r4.value, r4.step, r4.segment_id
        FROM g""",
        params + [origin, width, nbuckets - 1],
    ).fetchnumpy()
    cols = list(agg.values())
    parts = [
        pd.DataFrame({"x": cols[i], "value": cols[i + 1], "step": cols[i + 2], "segment_id": cols[i + 3]})
        for i in range(0, 20, 4)
    ]
    out = pd.concat(parts, ignore_index=True)
    out = out[~pd.isna(out["x"])]
    out = out.drop_duplicates(subset=["x", "step", "segment_id", "value"]).astype({"step": "int64"})
    return out.sort_values(["x", "step"], kind="stable").reset_index(drop=True)


def step_spans(ranges: list[lineage.Range] | None, x_range) -> list[tuple]:
    """Inclusive (segment_id or None, first_step, last_step) spans to read; None ranges = every segment."""
    lo, hi = lineage.NEG_INF + 1, lineage.POS_INF
    if x_range is not None:
        lo, hi = max(lo, math.ceil(x_range[0])), min(hi, math.floor(x_range[1]))
    if ranges is None:
        return [(None, lo, hi)] if lo <= hi else []
    spans = []
    for r in ranges:
        a, b = max(r.lo + 1, lo), min(r.hi, hi)
        if a <= b:
            spans.append((r.segment_id, a, b))
    return spans


def tile_split(spans: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Step spans as (whole tiles to read from metric_tiles, raw step spans at their ragged edges)."""
    tiles, raw = [], []
    for seg, a, b in spans:
        ta, tb = -((-a) >> TILE_SHIFT), ((b + 1) >> TILE_SHIFT) - 1  # whole tiles inside [a, b]
        if ta > tb:
            raw.append((seg, a, b))
            continue
        tiles.append((seg, ta, tb))
        if a < ta * TILE:
            raw.append((seg, a, ta * TILE - 1))
        if b >= (tb + 1) * TILE:
            raw.append((seg, (tb + 1) * TILE, b))
    return tiles, raw


def where(table: str, col: str, run: str, name: str, rank: int | None, spans: list[tuple]) -> tuple[str, list]:
    """The WHERE clause (and its parameters) of one series' rows or tiles within step or tile spans."""
    return _where(table, col, run, name, rank, spans)


def m4_from_tiles(cur, run: str, name: str, rank: int | None, spans: list[tuple], buckets: int):
    """Downsample a step-axis series from tile summaries; None when the raw path is as good (few points)."""
    tiles, raw = tile_split(spans)
    t_where, t_params = _where("metric_tiles", "tile", run, name, rank, tiles)
    r_where, r_params = _where("metrics", "step", run, name, rank, raw)
    n_t, lo_t, hi_t = cur.execute(
        f"SELECT sum(n), min(p_first.step), max(p_last.step) FROM metric_tiles WHERE {t_where}", t_params
    ).fetchone()
    n_r, lo_r, hi_r = cur.execute(
        f"SELECT count(*), min(step), max(step) FROM metrics WHERE {r_where}", r_params
    ).fetchone()
    n = int(n_t or 0) + int(n_r or 0)
    ends = [v for v in (lo_t, hi_t, lo_r, hi_r) if v is not None]
    if n <= 4 * buckets or not ends or max(ends) - min(ends) + 1 < buckets * TILE:
        return None
    origin = (min(ends) >> TILE_SHIFT) << TILE_SHIFT
    width = math.ceil((max(ends) - origin + 1) / buckets / TILE) * TILE  # buckets are whole tiles
    sql = (
        f"SELECT p.step AS x, p.value AS value, p.step AS step, segment_id FROM ("
        f"SELECT segment_id, unnest([p_first, p_last, p_min, p_max, p_nan]) AS p FROM metric_tiles "
        f"WHERE {t_where}) WHERE p IS NOT NULL "
        f"UNION ALL SELECT step AS x, value, step, segment_id FROM metrics WHERE {r_where}"
    )
    return m4(cur, sql, t_params + r_params, origin, width, math.ceil((max(ends) - origin + 1) / width))


def _where(table: str, col: str, run: str, name: str, rank: int | None, spans: list[tuple]) -> tuple[str, list]:
    parts, params = [], [run, name]
    for seg, a, b in spans:
        parts.append(f"({col} BETWEEN ? AND ?)" if seg is None else f"(segment_id = ? AND {col} BETWEEN ? AND ?)")
        params += [a, b] if seg is None else [seg, a, b]
    sql = "run_id = ? AND name = ? AND " + ("(" + " OR ".join(parts) + ")" if parts else "FALSE")
    if rank is not None:
        sql += " AND rank = ?"
        params.append(rank)
    return sql, params
