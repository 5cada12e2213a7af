"""Results worked out from a run's logs, kept in the store next to the rows they came from.

Why: incident detection and the energy integral read every step and every device sample of a run;
at 992 GPUs that is seconds of work per call, and `summary`, the dashboard and the exporters ask
again and again for a run whose logs have not changed. A kept result is stored with the run's (or
one segment's) ingest watermark: the files ingested and how far each was read (`ingest_files`). A
result whose watermark still matches is returned as is; anything newer in the logs (a flush, a new
segment) changes the watermark and the result is worked out again. A finished segment's watermark
never moves, so its figures are computed once. KEPT_VERSION goes up whenever a detector or an
integral changes what it returns, so no stale figure outlives the code that made it.

Values are kept as text (Python's json with NaN and Infinity, not the JSON column type, which
refuses them), and a store that cannot be written (another process's transaction, a read-only file)
only loses the saving, never the answer.
"""

from __future__ import annotations

import json

import duckdb

from midflight.logbook.store import schema
from midflight.logbook.store.database import Store

KEPT_VERSION = 1


def watermark(store: Store, run: str, segment: str | None = None) -> str:
    """How much of the run's rank logs (or one segment's) the store holds: files, bytes, lines, malformed."""
    prefix = "segments/" if segment is None else f"segments/{segment}/"
    row = (
        store.cursor()
        .execute(
            """SELECT count(*), coalesce(sum(byte_offset), 0), coalesce(sum(lines), 0), coalesce(sum(malformed), 0)
               FROM ingest_files WHERE run_id = ? AND starts_with(rel_path, ?)""",
            [run, prefix],
        )
        .fetchone()
    )
    return _mark(row)


def segment_watermarks(store: Store, run: str) -> dict[str, str]:
    """watermark(store, run, segment) of every segment of the run, in one query."""
    rows = (
        store.cursor()
        .execute(
            """SELECT split_part(rel_path, '/', 2) AS seg, count(*), coalesce(sum(byte_offset), 0),
                      coalesce(sum(lines), 0), coalesce(sum(malformed), 0)
               FROM ingest_files WHERE run_id = ? AND starts_with(rel_path, 'segments/') GROUP BY seg""",
            [run],
        )
        .fetchall()
    )
    return {seg: _mark(rest) for seg, *rest in rows}


def _mark(counts) -> str:
    return f"{KEPT_VERSION}.{schema.SCHEMA_VERSION}:" + ".".join(str(int(x)) for x in counts)


def get(store: Store, run: str, what: str, mark: str):
    """The value kept for (run, what) at this watermark, or None."""
    row = (
        store.cursor()
        .execute("SELECT value FROM kept_results WHERE run_id = ? AND what = ? AND watermark = ?", [run, what, mark])
        .fetchone()
    )
    return None if row is None else json.loads(row[0])


def get_any(store: Store, run: str, what: str) -> tuple[str, object] | None:
    """(watermark, value) kept for (run, what) at whatever watermark, or None: for results that can be
    carried forward from an older state (an energy integral over new samples only)."""
    row = (
        store.cursor()
        .execute("SELECT watermark, value FROM kept_results WHERE run_id = ? AND what = ?", [run, what])
        .fetchone()
    )
    return None if row is None else (row[0], json.loads(row[1]))


def put(store: Store, run: str, what: str, mark: str, value) -> None:
    """Keep a value (anything json.dumps takes, NaN included) for (run, what) at this watermark."""
    text = json.dumps(value)
    try:
        store.cursor().execute("INSERT OR REPLACE INTO kept_results VALUES (?, ?, ?, ?)", [run, what, mark, text])
    except duckdb.Error:  # a concurrent writer or a read-only store: the result is simply not kept
        return


def cached(store: Store, run: str, what: str, mark: str, compute, *, dump=lambda v: v, load=lambda v: v):
    """compute() once per watermark: the kept value when the mark matches, else compute and keep it."""
    hit = get(store, run, what, mark)
    if hit is not None:
        return load(hit)
    value = compute()
    put(store, run, what, mark, dump(value))
    return value
