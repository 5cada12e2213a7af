"""Read-side of the store: parameterised SQL only, one cursor per call, DataFrames out.

The dashboard, the CLI and the exporters read through these functions and
nothing else. Every function takes the store and plain arguments.
"""

from __future__ import annotations

import json
import math
import time

import pandas as pd

from midflight.logbook import roles
from midflight.logbook.store import downsample, lineage, schema
from midflight.logbook.store.database import Store
from midflight.logbook.values import missing

X_AXES = ("step", "tokens", "time")
TOKENS_METRIC = "tokens"  # cumulative tokens seen; the x-axis for x="tokens"
STALE_AFTER_S = 60.0  # a segment with no close record and no write for this long is "unknown", not "running"


def _df(cur, sql: str, params: list) -> pd.DataFrame:
    return cur.execute(sql, params).df()


# ----------------------------------------------------------------- runs and lineage
def run_ids(store: Store) -> list[str]:
    return [r[0] for r in store.cursor().execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]


def runs(store: Store) -> pd.DataFrame:
    """One row per run: run_id, path (the run directory it was ingested from), name (display name)."""
    return _df(store.cursor(), "SELECT run_id, path, name FROM runs ORDER BY run_id", [])


def lineage_segments(store: Store, run: str) -> list[lineage.Seg]:
    rows = (
        store.cursor()
        .execute(
            """SELECT s.segment_id, s.parent_id, s.resume_step, coalesce(s.start_time, min(r.open_time)),
                  min(r.first_step)
           FROM segments s LEFT JOIN rank_logs r USING (run_id, segment_id)
           WHERE s.run_id = ? GROUP BY s.segment_id, s.parent_id, s.resume_step, s.start_time""",
            [run],
        )
        .fetchall()
    )
    return [lineage.Seg(*row) for row in rows]


def effective_ranges(store: Store, run: str) -> list[lineage.Range]:
    return lineage.effective_ranges(lineage_segments(store, run))


def segments(store: Store, run: str, now: float | None = None) -> pd.DataFrame:
    """One row per segment, oldest first, with its step range, end reason and whether it is on the effective path."""
    df = _df(
        store.cursor(),
        """
        SELECT s.segment_id, s.parent_id, s.resume_step, s.reason, s.start_time, s.world_size, s.host,
               s.config, s.config_diff,
               min(r.first_step) AS start_step, max(r.last_step) AS end_step,
               max(r.close_time) AS end_time, max(r.last_write) AS last_write,
               count(r.rank) AS ranks, count(r.end_reason) AS closed_ranks,
               list(r.end_reason ORDER BY r.rank) FILTER (r.end_reason IS NOT NULL) AS reasons,
               any_value(r.end_reason) FILTER (r.rank = 0) AS rank0_reason,
               arg_min(r.exit_code, r.close_time) FILTER (r.end_reason = 'crashed') AS exit_code,
               arg_min(r.error, r.close_time) FILTER (r.end_reason = 'crashed') AS error,
               sum(coalesce(r.dropped_records, 0)) AS dropped_records
        FROM segments s LEFT JOIN rank_logs r USING (run_id, segment_id)
        WHERE s.run_id = ? GROUP BY ALL ORDER BY s.start_time NULLS FIRST, s.segment_id""",
        [run],
    )
    now = time.time() if now is None else now
    df["end_reason"] = [_end_reason(row, now) for row in df.itertuples()]
    on_path = {s.segment_id for s in lineage.effective_path(lineage_segments(store, run))}
    df["effective"] = df["segment_id"].isin(on_path)
    return df


def _end_reason(row, now: float) -> str:
    """completed | crashed | stopped | rewound | running | unknown (died without a close record)."""
    reasons = [] if missing(row.reasons) else list(row.reasons)
    if "crashed" in reasons:
        return "crashed"
    if not missing(row.rank0_reason):
        return row.rank0_reason
    if reasons and len(reasons) == row.ranks:
        return reasons[0]
    if not missing(row.last_write) and now - row.last_write < STALE_AFTER_S:
        return "running"
    return "unknown"


def run_status(store: Store, run: str) -> str:
    """running | finished | crashed | unknown, from the head segment."""
    segs = segments(store, run)
    if segs.empty:
        return "unknown"
    head = lineage.head(lineage_segments(store, run))
    reason = segs.loc[segs.segment_id == head.segment_id, "end_reason"].iloc[0]
    return {"completed": "finished", "stopped": "finished"}.get(reason, reason)


# ----------------------------------------------------------------- metric series
def metric_names(store: Store, run: str) -> list[str]:
    # metric_tiles holds every series at 1/256 of the rows of `metrics`
    sql = "SELECT DISTINCT name FROM metric_tiles WHERE run_id = ? ORDER BY name"
    rows = store.cursor().execute(sql, [run]).fetchall()
    return [r[0] for r in rows]


def declared_roles(store: Store, run: str) -> dict[str, str]:
    """{role: metric} the run's segment headers declare (midflight.init(..., roles=...)); a later segment's
    declaration of a role wins over an earlier one's."""
    rows = (
        store.cursor()
        .execute(
            "SELECT r.role, r.metric FROM segment_roles r JOIN segments s USING (run_id, segment_id) "
            "WHERE r.run_id = ? ORDER BY s.start_time NULLS FIRST, r.segment_id",
            [run],
        )
        .fetchall()
    )
    return {role: metric for role, metric in rows}


def metric_roles(store: Store, run: str, names: list[str] | None = None) -> dict[str, roles.Resolved]:
    """role -> the metric of this run that plays it (logbook.roles.resolve): the declared roles, then the
    best alias among the run's metric names. Two small queries per run (names, declarations), no series read;
    pass `names` when the caller already has them."""
    return roles.resolve(metric_names(store, run) if names is None else names, declared_roles(store, run))


def role_metric(store: Store, run: str, role: str) -> str | None:
    """The run's name for one role ("loss" -> "train/loss"), or None when no metric of the run plays it."""
    hit = metric_roles(store, run).get(role)
    return None if hit is None else hit.metric


def _range_filter(ranges: list[lineage.Range], which: str) -> tuple[str, list]:
    if which == "all":
        return "TRUE", []
    parts, params = [], []
    for r in ranges:
        parts.append("(m.segment_id = ? AND m.step > ? AND m.step <= ?)")
        params += [r.segment_id, r.lo, r.hi]
    cond = "(" + " OR ".join(parts) + ")" if parts else "FALSE"
    if which == "effective":
        return cond, params
    if which == "superseded":
        return f"NOT {cond}", params
    raise ValueError(f"which={which!r}: use 'effective', 'superseded' or 'all'")


def _series_sql(store: Store, run: str, name: str, x: str, rank: int | None, which: str, x_range) -> tuple[str, list]:
    if x not in X_AXES:
        raise ValueError(f"x={x!r}: use one of {', '.join(X_AXES)}")
    cond, params = _range_filter(effective_ranges(store, run), which)
    join, xexpr = "", {"step": "m.step", "time": "m.wall_time", "tokens": "t.value"}[x]
    jparams: list = []
    if x == "tokens":
        join = (
            "JOIN metrics t ON t.run_id = m.run_id AND t.segment_id = m.segment_id AND t.rank = m.rank "
            "AND t.step = m.step AND t.name = ?"
        )
        jparams = [TOKENS_METRIC]
    sql = (
        f"SELECT {xexpr} AS x, m.value AS value, m.step AS step, m.segment_id AS segment_id "
        f"FROM metrics m {join} WHERE m.run_id = ? AND m.name = ? AND {cond}"
    )
    params = jparams + [run, name] + params
    if rank is not None:
        sql += " AND m.rank = ?"
        params.append(rank)
    if x_range is not None:
        lo, hi = x_range
        sql += f" AND {xexpr} BETWEEN ? AND ?"
        params += [lo, hi]
    return sql, params


def series(
    store: Store,
    run: str,
    name: str,
    *,
    x: str = "step",
    rank: int | None = 0,
    which: str = "effective",
    x_range: tuple | None = None,
    buckets: int | None = None,
) -> pd.DataFrame:
    """A metric as columns x, value, step, segment_id, sorted by x.

    which: "effective" (the curve after rollbacks), "superseded" (what rollbacks
    discarded) or "all". x_range: (lo, hi) on the chosen axis, queried at full
    resolution. buckets: if set and the range holds more than 4 points per bucket,
    M4-downsample (first, last, min, max per bucket) so no spike and no NaN is lost.
    """
    cur = store.cursor()
    if buckets and x == "step" and which in ("effective", "all"):
        ranges = effective_ranges(store, run) if which == "effective" else None
        fast = downsample.m4_from_tiles(cur, run, name, rank, downsample.step_spans(ranges, x_range), int(buckets))
        if fast is not None:
            return fast
    sql, params = _series_sql(store, run, name, x, rank, which, x_range)
    if buckets:
        n, lo, hi = cur.execute(f"SELECT count(*), min(x), max(x) FROM ({sql})", params).fetchone()
        if n > 4 * buckets:
            return downsample.m4(cur, sql, params, lo, (float(hi - lo) or 1.0) / buckets, int(buckets))
    return _df(cur, sql + " ORDER BY x, step", params)


def step_table(
    store: Store,
    run: str,
    names: list[str],
    *,
    per_rank: tuple[str, list[int]] | None = None,
    which: str = "effective",
    after: int | None = None,
) -> pd.DataFrame:
    """Several metrics as ONE table, one row per (segment_id, step), a column per name (rank 0), in one query.

    per_rank: (name, ranks) adds a column "name/<rank>" per listed rank. A (segment, step, name) logged
    twice keeps its last value (log order). after: only the steps after this one. Why one query:
    detection reads a dozen series and, on a small fleet, every rank's step time; a query per series and
    a pandas merge each cost ~30 ms, which at 992 ranks was most of `summary`'s 3.5 minutes."""
    cond, params = _range_filter(effective_ranges(store, run), which)
    cols, cparams = [], []
    for i, n in enumerate(names):
        cols.append(f'arg_max_null(m.value, m.rowid) FILTER (WHERE m.name = ? AND m.rank = 0) AS "c{i}"')
        cparams.append(n)
    labels = list(names)
    wanted = list(names)
    if per_rank is not None:
        pname, ranks = per_rank
        for r in ranks:
            cols.append(f'arg_max_null(m.value, m.rowid) FILTER (WHERE m.name = ? AND m.rank = ?) AS "c{len(labels)}"')
            cparams += [pname, int(r)]
            labels.append(f"{pname}/{int(r)}")
        wanted.append(pname)
    if not cols:
        return pd.DataFrame(columns=["segment_id", "step"])
    if after is not None:
        cond, params = f"{cond} AND m.step > ?", [*params, int(after)]
    sql = (
        f"SELECT m.segment_id, m.step, {', '.join(cols)} FROM metrics m "
        f"WHERE m.run_id = ? AND m.name IN (SELECT unnest(?::VARCHAR[])) AND {cond} "
        "GROUP BY m.segment_id, m.step ORDER BY m.step, m.segment_id"
    )
    df = _df(store.cursor(), sql, cparams + [run, sorted(set(wanted))] + params)
    df = df.rename(columns={f"c{i}": label for i, label in enumerate(labels)})
    return df.astype({"step": "int64", **{c: "float64" for c in labels}})


def last_value(store: Store, run: str, name: str, *, rank: int | None = 0) -> float | None:
    """The metric's value at the last step of the effective history (None if it was never logged)."""
    sql, params = _series_sql(store, run, name, "step", rank, "effective", None)
    row = store.cursor().execute(sql + " ORDER BY step DESC LIMIT 1", params).fetchone()
    return None if row is None else row[1]


def effective_steps(store: Store, run: str) -> int:
    cond, params = _range_filter(effective_ranges(store, run), "effective")
    row = (
        store.cursor()
        .execute(f"SELECT count(DISTINCT m.step) FROM metrics m WHERE m.run_id = ? AND {cond}", [run] + params)
        .fetchone()
    )
    return int(row[0])


# ----------------------------------------------------------------- events, annotations, interventions
def events(store: Store, run: str, kinds: list[str] | None = None) -> pd.DataFrame:
    sql = "SELECT segment_id, rank, step, wall_time, kind, fields FROM events WHERE run_id = ?"
    params: list = [run]
    if kinds:
        sql += " AND kind IN (SELECT unnest(?::VARCHAR[]))"
        params.append(list(kinds))
    return _df(store.cursor(), sql + " ORDER BY wall_time, step", params)


# What people said about a run beside its numbers (record.runmeta): the header's tags/notes/group/job_type, and the
# events that change or add to them after init. Config changes after init are `config` events (Run.update_config).
NOTE_KINDS = ("summary", "tags", "notes", "config", "alert", "define_metric")


def run_notes(store: Store, run: str) -> pd.DataFrame:
    """Every header's meta and every note event of the run, oldest first, in one query.

    Columns: segment_id, rank (NULL for a header), step, wall_time, kind ('header' or one of NOTE_KINDS), fields
    (JSON text: the header's meta {"tags", "notes", "group", "job_type"}, or the event's fields). Headers sort
    before the events of the same time. Folding them into one answer (last value wins) is report.summary's.
    """
    return _df(
        store.cursor(),
        """
        SELECT segment_id, NULL::INTEGER AS rank, NULL::BIGINT AS step, start_time AS wall_time, 'header' AS kind,
               meta::VARCHAR AS fields, 0 AS ord
        FROM segments WHERE run_id = ? AND meta IS NOT NULL
        UNION ALL
        SELECT segment_id, rank, step, wall_time, kind, fields::VARCHAR, 1
        FROM events WHERE run_id = ? AND kind IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY wall_time NULLS FIRST, ord, rank, step""",
        [run, run, list(NOTE_KINDS)],
    ).drop(columns="ord")


def metric_aggregates(store: Store, run: str, names: list[str]) -> dict[str, dict]:
    """{name: {"min", "max", "mean" (of the finite values), "last" (the value at the last step)}} over the
    effective history, every rank, for the given metric names (W&B's define_metric(summary=...))."""
    if not names:
        return {}
    cond, params = _range_filter(effective_ranges(store, run), "effective")
    rows = (
        store.cursor()
        .execute(
            f"""SELECT m.name, min(m.value) FILTER (isfinite(m.value)), max(m.value) FILTER (isfinite(m.value)),
                       avg(m.value) FILTER (isfinite(m.value)), arg_max(m.value, (m.step, m.wall_time, m.rank))
                FROM metrics m WHERE m.run_id = ? AND m.name IN (SELECT unnest(?::VARCHAR[])) AND {cond}
                GROUP BY m.name""",
            [run, sorted(set(names))] + params,
        )
        .fetchall()
    )
    return {n: {"min": lo, "max": hi, "mean": mean, "last": last} for n, lo, hi, mean, last in rows}


def event_counts(store: Store, run: str) -> dict[str, int]:
    rows = (
        store.cursor()
        .execute("SELECT kind, count(*) FROM events WHERE run_id = ? GROUP BY kind ORDER BY kind", [run])
        .fetchall()
    )
    return {k: int(n) for k, n in rows}


def telemetry(
    store: Store,
    run: str,
    name: str,
    *,
    device: str | None = None,
    segments: list[str] | None = None,
    since: float | None = None,
) -> pd.DataFrame:
    """Device telemetry samples (GPU power, CPU utilisation, ...) as wall_time, step, device, host, value.
    segments: only these segments' samples; since: only samples after this wall time."""
    sql = """SELECT t.wall_time, t.step, t.device, r.host, t.rank, t.segment_id, t.value
             FROM telemetry t LEFT JOIN rank_logs r USING (run_id, segment_id, rank)
             WHERE t.run_id = ? AND t.name = ?"""
    params: list = [run, name]
    if device is not None:
        sql += " AND t.device = ?"
        params.append(device)
    if segments is not None:
        sql += " AND t.segment_id IN (SELECT unnest(?::VARCHAR[]))"
        params.append(list(segments))
    if since is not None:
        sql += " AND t.wall_time > ?"
        params.append(float(since))
    return _df(store.cursor(), sql + " ORDER BY t.wall_time", params)


COUNTER_RAW_LIMIT = 1_000_000  # above this many samples, a counter is read from its tiles (counter_samples)


def counter_samples(
    store: Store,
    run: str,
    name: str,
    *,
    segments: list[str] | None = None,
    since: float | None = None,
    raw_limit: int = COUNTER_RAW_LIMIT,
    coarse: bool = False,
) -> pd.DataFrame:
    """A monotone counter's samples (energy_j), columns as `telemetry()`: every sample while the run has at
    most `raw_limit` of them, else the first, lowest, highest and last sample of each device's finest tile
    (64 s). A counter only rises between resets, so those four points, in time order, hold every rise and
    every reset of the tile: the sum of rises is exact (unless a device resets twice within one tile), and
    only the split of a tile's energy between the steps inside it becomes linear. 992 GPUs for a month at
    1 Hz are 2.6 billion samples, and 160 million tile points. since: only the samples after this wall
    time (the next window of a kept integral). coarse: the widest tiles (4096 s) instead of the finest, for
    a chart whose buckets are wider than that anyway."""
    cur = store.cursor()
    only, oparams = "", []
    if segments is not None:
        only, oparams = " AND segment_id IN (SELECT unnest(?::VARCHAR[]))", [list(segments)]
    (n,) = cur.execute(
        f"SELECT coalesce(sum(n), 0) FROM telemetry_tiles WHERE run_id = ? AND name = ? AND width = ?{only}",
        [run, name, schema.TELEMETRY_TILES[-1], *oparams],
    ).fetchone()
    if n == 0:  # no such counter: do not unpack every telemetry block to find that out
        return pd.DataFrame(columns=["wall_time", "step", "device", "host", "rank", "segment_id", "value"])
    if n <= raw_limit:
        return telemetry(store, run, name, segments=segments, since=since)
    w = schema.TELEMETRY_TILES[-1 if coarse else 0]
    t0 = -math.inf if since is None else float(since)
    sql = f"""SELECT DISTINCT c.p.t AS wall_time, c.p.step AS step, c.device, r.host, c.rank, c.segment_id,
                     c.p.value AS value
              FROM (SELECT segment_id, rank, device, unnest([p_first, p_min, p_max, p_last]) AS p
                    FROM telemetry_tiles WHERE run_id = ? AND name = ? AND width = {w}{only}
                    AND tile >= floor(? / {w})) c
              LEFT JOIN rank_logs r ON r.run_id = ? AND r.segment_id = c.segment_id AND r.rank = c.rank
              WHERE c.p IS NOT NULL AND c.p.t > ? ORDER BY wall_time"""
    return _df(cur, sql, [run, name, *oparams, t0, run, t0])


def counter_totals(
    store: Store, run: str, name: str, segments: list[str], *, raw_limit: int = COUNTER_RAW_LIMIT
) -> pd.DataFrame:
    """Each series of a monotone counter summed in SQL, from the same samples `counter_samples` returns:
    columns segment_id, rank, device, host, total (the sum of rises, a fall counted as a restart from 0,
    non-finite samples skipped: analysis.energy.cumulative's arithmetic), last_t and last (the newest
    finite sample). Past COUNTER_RAW_LIMIT samples it reads the WIDEST tiles' first, lowest, highest and
    last points (4096 s): a total needs only every rise and reset, which those carry unless a counter
    resets twice within 68 minutes (a sampler restart starts a new segment). Why in the query layer:
    992 GPUs x 10,000 steps are 12M fine-tile points, which as a DataFrame took 3.5 GB and 10 s."""
    cur = store.cursor()
    (n,) = cur.execute(
        "SELECT coalesce(sum(n), 0) FROM telemetry_tiles WHERE run_id = ? AND name = ? AND width = ? "
        "AND segment_id IN (SELECT unnest(?::VARCHAR[]))",
        [run, name, schema.TELEMETRY_TILES[-1], list(segments)],
    ).fetchone()
    if n == 0:  # no such counter: do not unpack every telemetry block to find that out
        return pd.DataFrame(columns=["segment_id", "rank", "device", "host", "total", "last_t", "last"])
    if n <= raw_limit:
        src = """SELECT segment_id, rank, device, wall_time AS t, value AS v FROM telemetry
                 WHERE run_id = ? AND name = ? AND segment_id IN (SELECT unnest(?::VARCHAR[]))"""
    else:
        src = f"""SELECT segment_id, rank, device, p.t AS t, p.value AS v FROM (
                    SELECT segment_id, rank, device, unnest([p_first, p_min, p_max, p_last]) AS p FROM telemetry_tiles
                    WHERE run_id = ? AND name = ? AND width = {schema.TELEMETRY_TILES[-1]}
                      AND segment_id IN (SELECT unnest(?::VARCHAR[]))) WHERE p IS NOT NULL"""
    sql = f"""
        WITH d AS (SELECT DISTINCT segment_id, rank, device, t, v FROM ({src}) WHERE t IS NOT NULL AND isfinite(v)),
        r AS (SELECT *, coalesce(lag(v) OVER (PARTITION BY segment_id, rank, device ORDER BY t), 0) AS prev FROM d)
        SELECT r.segment_id, r.rank, r.device, any_value(l.host) AS host,
               sum(CASE WHEN v >= prev THEN v - prev ELSE greatest(v, 0) END) AS total,
               max(t) AS last_t, arg_max(v, t) AS last
        FROM r LEFT JOIN rank_logs l ON l.run_id = ? AND l.segment_id = r.segment_id AND l.rank = r.rank
        GROUP BY r.segment_id, r.rank, r.device ORDER BY r.segment_id, r.rank, r.device"""
    return _df(cur, sql, [run, name, list(segments), run])


SERIES_BUCKETS = 1000


def telemetry_series(
    store: Store, run: str, name: str, *, buckets: int = SERIES_BUCKETS, x_range: tuple | None = None
) -> pd.DataFrame:
    """`telemetry()` for a chart: every device's series M4-downsampled to about `buckets` wall-time buckets.

    Columns as `telemetry()`. A bucket keeps its first, last, lowest, highest sample and its first NaN, so
    no spike is lost. When a bucket spans at least one tile (schema.TELEMETRY_TILES: 64 s or 4096 s) the
    candidates come from `telemetry_tiles` (raw rows only at the ragged edges of x_range): a month at 1 Hz
    on 8 GPUs reads ~1,000 tiles per device instead of 2.6M rows. A short window returns its raw rows."""
    if not isinstance(buckets, int) or isinstance(buckets, bool) or not 1 <= buckets <= 100_000:
        raise ValueError(f"buckets={buckets!r}: use an integer from 1 to 100,000")
    cur = store.cursor()
    x0, x1 = (-math.inf, math.inf) if x_range is None else (float(x_range[0]), float(x_range[1]))
    lo, hi = cur.execute(
        "SELECT min(greatest(p_first.t, ?)), max(least(p_last.t, ?)) FROM telemetry_tiles "
        "WHERE run_id = ? AND name = ? AND width = ? AND p_last.t >= ? AND p_first.t <= ?",
        [x0, x1, run, name, schema.TELEMETRY_TILES[-1], x0, x1],
    ).fetchone()
    raw = """SELECT segment_id, rank, device, wall_time AS t, step, value FROM telemetry_spans
             WHERE run_id = ? AND name = ?"""
    fits = [] if lo is None else [w for w in schema.TELEMETRY_TILES if w <= (hi - lo) / buckets]
    if not fits:  # few samples per bucket (or only samples without a wall time): the raw rows
        sql, params = raw, [run, name]
        if x_range is not None:
            sql += " AND wall_time BETWEEN ? AND ? AND block_t_hi >= ? AND block_t_lo <= ?"
            params += [x0, x1, x0, x1]
    else:
        w = fits[-1]
        width = math.ceil((hi - lo) / buckets / w) * w
        origin = math.floor(lo / w) * w
        t_lo, t_hi = (
            (math.floor(lo / w), math.floor(hi / w))
            if x_range is None
            else (
                math.ceil(lo / w),
                math.floor(hi / w) - 1,
            )
        )
        cand = f"""SELECT segment_id, rank, device, p.t AS t, p.step AS step, p.value AS value FROM (
                     SELECT segment_id, rank, device, unnest([p_first, p_last, p_min, p_max, p_nan]) AS p
                     FROM telemetry_tiles WHERE run_id = ? AND name = ? AND width = {w} AND tile BETWEEN ? AND ?)
                   WHERE p IS NOT NULL"""
        params = [run, name, t_lo, t_hi]
        if x_range is not None:
            cand += (
                f" UNION ALL {raw} AND wall_time BETWEEN ? AND ? AND block_t_hi >= ? AND block_t_lo <= ?"
                " AND NOT (wall_time >= ? AND wall_time < ?)"
            )
            params += [run, name, lo, hi, lo, hi, t_lo * w, (t_hi + 1) * w]
        sql = f"""
            WITH b AS (SELECT segment_id, rank, device, t, value, {{'t': t, 'step': step, 'value': value}} AS p,
                              CAST(floor((t - ?) / ?) AS BIGINT) AS bucket FROM ({cand})),
            g AS (SELECT segment_id, rank, device, arg_min(p, t) AS r0, arg_max(p, t) AS r1,
                         arg_min(p, value) FILTER (NOT isnan(value)) AS r2,
                         arg_max(p, value) FILTER (NOT isnan(value)) AS r3,
                         arg_min(p, t) FILTER (isnan(value)) AS r4
                  FROM b GROUP BY segment_id, rank, device, bucket)
            SELECT DISTINCT segment_id, rank, device, r.t AS t, r.step AS step, r.value AS value
            FROM (SELECT segment_id, rank, device, unnest([r0, r1, r2, r3, r4]) AS r FROM g) WHERE r IS NOT NULL"""
        params = [float(origin), float(width)] + params
    full = f"""SELECT c.t AS wall_time, c.step, c.device, r.host, c.rank, c.segment_id, c.value FROM ({sql}) c
               LEFT JOIN rank_logs r ON r.run_id = ? AND r.segment_id = c.segment_id AND r.rank = c.rank
               ORDER BY c.t, c.device"""
    return _df(cur, full, params + [run])


def telemetry_names(store: Store, run: str) -> list[str]:
    # the widest tiles hold every series (kept in the same transaction as the samples) at a fraction of its rows
    sql = "SELECT DISTINCT name FROM telemetry_tiles WHERE run_id = ? AND width = ? ORDER BY name"
    rows = store.cursor().execute(sql, [run, schema.TELEMETRY_TILES[-1]])
    return [r[0] for r in rows.fetchall()]


def telemetry_changes(store: Store, run: str, names: list[str]) -> pd.DataFrame:
    """The samples of `names` around every change of value, per device: columns as `telemetry()` plus name,
    sorted by wall time. A stretch where a device's value holds (a throttle-reasons word of 0 for a month)
    costs nothing: the finest telemetry tiles say where a series is constant (min = max, no NaN, equal to
    both neighbours' edges), and only the raw samples of the other tiles, and of each series' first and
    last tile, are read. Every transition, and the last sample before it, is in the result, which is all
    that a detector keyed on transitions (throttling on/off, an ECC counter rising) needs."""
    if not names:
        return pd.DataFrame(columns=["wall_time", "step", "device", "host", "rank", "segment_id", "name", "value"])
    w = schema.TELEMETRY_TILES[0]
    sql = f"""
        WITH tl AS (
            SELECT segment_id, rank, device, name, tile, p_first, p_last, p_min, p_max, p_nan,
                   lag(p_last.value) OVER s AS prev_last, lead(p_first.value) OVER s AS next_first,
                   row_number() OVER s AS i, count(*) OVER (PARTITION BY segment_id, rank, device, name) AS k
            FROM telemetry_tiles WHERE run_id = ? AND width = {w} AND name IN (SELECT unnest(?::VARCHAR[]))
            WINDOW s AS (PARTITION BY segment_id, rank, device, name ORDER BY tile)),
        busy AS (
            SELECT segment_id, rank, device, name, tile FROM tl
            WHERE i = 1 OR i = k OR p_nan IS NOT NULL OR p_min IS NULL
               OR p_min.value IS DISTINCT FROM p_max.value
               OR p_first.value IS DISTINCT FROM prev_last OR p_last.value IS DISTINCT FROM next_first)
        SELECT t.wall_time, t.step, t.device, r.host, t.rank, t.segment_id, t.name, t.value
        FROM telemetry t
        JOIN busy b ON b.segment_id = t.segment_id AND b.rank = t.rank AND b.device = t.device AND b.name = t.name
                   AND b.tile = CAST(floor(t.wall_time / {w}) AS BIGINT)
        LEFT JOIN rank_logs r ON r.run_id = t.run_id AND r.segment_id = t.segment_id AND r.rank = t.rank
        WHERE t.run_id = ? AND t.name IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY t.wall_time, t.name"""
    return _df(store.cursor(), sql, [run, list(names), run, list(names)])


def annotations(store: Store, run: str) -> pd.DataFrame:
    return _df(store.cursor(), "SELECT * FROM annotations WHERE run_id = ? ORDER BY step, created_time", [run])


def annotation_history(store: Store, run: str) -> pd.DataFrame:
    """Every create, edit and delete, in order: the audit trail."""
    return _df(store.cursor(), "SELECT * FROM annotation_ops WHERE run_id = ? ORDER BY seq", [run])


def interventions(store: Store, run: str) -> pd.DataFrame:
    return _df(store.cursor(), "SELECT * FROM interventions WHERE run_id = ? ORDER BY requested_time", [run])


def ingest_problems(store: Store, run: str) -> list[dict]:
    rows = (
        store.cursor()
        .execute(
            "SELECT rel_path, malformed, examples FROM ingest_files "
            "WHERE run_id = ? AND malformed > 0 ORDER BY rel_path",
            [run],
        )
        .fetchall()
    )
    return [{"file": p, "malformed": int(n), "examples": json.loads(e or "[]")} for p, n, e in rows]


# ----------------------------------------------------------------- what energy and accounting read
def segment_times(store: Store, run: str) -> dict[str, tuple[float, float]]:
    """(start, end) wall time of each segment: header start (else first record) to close (else last record)."""
    rows = (
        store.cursor()
        .execute(
            """WITH r AS (SELECT segment_id, max(close_time) AS c FROM rank_logs WHERE run_id = ? GROUP BY segment_id),
                    m AS (SELECT segment_id, min(wall_time) AS lo, max(wall_time) AS hi FROM metrics
                          WHERE run_id = ? GROUP BY segment_id),
                    t AS (SELECT segment_id, min(p_first.t) AS lo, max(p_last.t) AS hi FROM telemetry_tiles
                          WHERE run_id = ? AND width = ? GROUP BY segment_id)
               SELECT s.segment_id, s.start_time, r.c, m.lo, m.hi, t.lo, t.hi
               FROM segments s LEFT JOIN r USING (segment_id) LEFT JOIN m USING (segment_id)
                    LEFT JOIN t USING (segment_id)
               WHERE s.run_id = ?""",
            [run, run, run, schema.TELEMETRY_TILES[-1], run],
        )
        .fetchall()
    )
    out = {}
    for seg, start, close, m0, m1, t0, t1 in rows:
        firsts = [x for x in (start, m0, t0) if x is not None]
        lasts = [x for x in (close, m1, t1) if x is not None]
        if firsts and lasts:
            s = start if start is not None else min(firsts)
            out[seg] = (float(s), float(max(lasts + [s])))
    return out


def rank_hosts(store: Store, run: str) -> dict[tuple[str, int], str | None]:
    """{(segment_id, rank): host} from each rank's open record."""
    rows = store.cursor().execute("SELECT segment_id, rank, host FROM rank_logs WHERE run_id = ?", [run]).fetchall()
    return {(seg, rank): host for seg, rank, host in rows}


def recent_steps(store: Store, run: str, n: int = 32) -> list[tuple[int, float]]:
    """(step, wall time) of rank 0's newest n steps, newest first: how fast a run was going lately (the
    stall check of logbook.oncall). Only steps count: a hung rank's telemetry thread may go on writing."""
    sql = """SELECT step, max(wall_time) FROM metrics
             WHERE run_id = ? AND rank = 0 AND step >= (SELECT max(step) FROM metrics WHERE run_id = ? AND rank = 0) - ?
             GROUP BY step ORDER BY step DESC LIMIT ?"""
    rows = store.cursor().execute(sql, [run, run, 64 * n, n]).fetchall()
    return [(int(s), float(t)) for s, t in rows if s is not None and t is not None]


def step_wall_times(store: Store, run: str) -> pd.DataFrame:
    """segment_id, step, wall_time: when each step was logged (rank 0's latest record of it)."""
    sql = """SELECT segment_id, step, max(wall_time) AS wall_time FROM metrics
             WHERE run_id = ? AND rank = 0 GROUP BY segment_id, step ORDER BY segment_id, step"""
    return _df(store.cursor(), sql, [run])


def gpu_counts(store: Store, run: str) -> dict[str, int]:
    """GPUs that reported telemetry, per segment (distinct host x device), from the widest tiles."""
    rows = (
        store.cursor()
        .execute(
            """SELECT t.segment_id, count(DISTINCT coalesce(r.host, 'rank' || t.rank::VARCHAR) || '/' || t.device)
               FROM telemetry_tiles t LEFT JOIN rank_logs r USING (run_id, segment_id, rank)
               WHERE t.run_id = ? AND t.width = ? AND t.device LIKE 'gpu%' GROUP BY t.segment_id""",
            [run, schema.TELEMETRY_TILES[-1]],
        )
        .fetchall()
    )
    return {seg: int(n) for seg, n in rows}


# ----------------------------------------------------------------- the goodput ledger's inputs
GOODPUT_EVENT_KINDS = ("checkpoint_saved", "restart", "overflow", "nonfinite_grad_skipped", "skipped_iterations")


def goodput_events(store: Store, run: str) -> pd.DataFrame:
    """segment_id, step, kind, n, seconds: one row per (segment, step, kind) of the events the goodput ledger
    reads, aggregated in SQL. n: steps whose update was skipped (an overflow the scaler skipped, a skipped
    non-finite gradient: 1; Megatron's skipped_iterations: its count; 0 for an overflow recorded as not
    skipped); seconds: a checkpoint's save time, a restart's load time (NULL where not recorded or not a number).
    The same event on several ranks counts once (max over ranks)."""
    sql = """SELECT segment_id, step, kind,
                    max(CASE WHEN kind = 'skipped_iterations'
                                  THEN greatest(coalesce(TRY_CAST(fields->>'count' AS BIGINT), 0), 0)
                             WHEN kind = 'overflow' AND fields->>'skipped' = 'false' THEN 0
                             WHEN kind IN ('overflow', 'nonfinite_grad_skipped') THEN 1 ELSE 0 END) AS n,
                    max(TRY_CAST(CASE WHEN kind = 'restart' THEN fields->>'load_seconds' ELSE fields->>'seconds' END
                                 AS DOUBLE)) AS seconds
             FROM events WHERE run_id = ? AND step IS NOT NULL AND kind IN (SELECT unnest(?::VARCHAR[]))
             GROUP BY segment_id, step, kind ORDER BY segment_id, step"""
    return _df(store.cursor(), sql, [run, list(GOODPUT_EVENT_KINDS)])


def straggler_excess(store: Store, run: str, name: str = "compute_s") -> pd.DataFrame:
    """segment_id, step, excess, ranks: at each step of the effective history that 2+ ranks logged `name`, the
    slowest rank's value minus the median rank's, computed in SQL (one row per step, never per rank)."""
    cond, params = _range_filter(effective_ranges(store, run), "effective")
    sql = f"""SELECT m.segment_id, m.step, max(m.value) - quantile_cont(m.value, 0.5) AS excess, count(*) AS ranks
              FROM metrics m WHERE m.run_id = ? AND m.name = ? AND isfinite(m.value) AND {cond}
              GROUP BY m.segment_id, m.step HAVING max(m.rank) > min(m.rank) ORDER BY m.segment_id, m.step"""
    return _df(store.cursor(), sql, [run, name, *params])
