"""The run's data as tables other tools read: Parquet (typed, compressed) or CSV (anything opens it).

One file per table in the output directory: metrics, events, telemetry, segments, annotations,
interventions, incidents. The big three (metrics, events, telemetry) are streamed by DuckDB itself
with `COPY (SELECT ... WHERE run_id = ?) TO '<file>'`: no row passes through Python, so a run of
millions of points exports in seconds with bounded memory. The run id is always a bound
parameter. COPY cannot bind its file name, so the path is one this module built (the resolved
output directory plus a fixed file name) written as a SQL string literal with its quotes doubled.
The small tables come from `logbook.queries` and `report.incidents` and are written with
pyarrow.

`metrics.effective` says whether a row is on the effective history (the curve after rollbacks,
as `queries.series(which="effective")` returns it), from `queries.effective_ranges`.
CSV keeps NaN and ±Inf as `nan`, `inf` and `-inf` (an empty field is a missing value), which
pandas, DuckDB and Arrow read back as the same floats.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from midflight.logbook.report import incidents as incident_report
from midflight.logbook.store import queries
from midflight.logbook.store.database import Store

TABLES = ("metrics", "events", "telemetry", "segments", "annotations", "interventions", "incidents")
FORMATS = ("parquet", "csv")


def _literal(path: Path) -> str:
    """A file path as a SQL string literal (COPY takes no parameter for its target)."""
    return "'" + str(path).replace("'", "''") + "'"


def _copy_options(fmt: str) -> str:
    return "(FORMAT parquet, COMPRESSION zstd)" if fmt == "parquet" else "(FORMAT csv, HEADER true)"


def effective_condition(store: Store, run: str) -> tuple[str, list]:
    """SQL true for a metrics row (segment_id, step) on the effective history, and its parameters."""
    parts, params = [], []
    for r in queries.effective_ranges(store, run):
        parts.append("(segment_id = ? AND step > ? AND step <= ?)")
        params += [r.segment_id, r.lo, r.hi]
    return ("(" + " OR ".join(parts) + ")" if parts else "FALSE"), params


def _selects(store: Store, run: str) -> dict[str, tuple[str, list]]:
    cond, cparams = effective_condition(store, run)
    return {
        "metrics": (
            f"SELECT run_id, segment_id, rank, step, name, value, wall_time, {cond} AS effective "
            "FROM metrics WHERE run_id = ? ORDER BY segment_id, name, rank, step",
            cparams + [run],
        ),
        "events": (
            "SELECT run_id, segment_id, rank, step, wall_time, kind, fields FROM events WHERE run_id = ? "
            "ORDER BY wall_time, segment_id, rank, step",
            [run],
        ),
        "telemetry": (
            "SELECT run_id, segment_id, rank, device, step, wall_time, name, value FROM telemetry "
            "WHERE run_id = ? ORDER BY segment_id, rank, device, name, wall_time",
            [run],
        ),
    }


def _frames(store: Store, run: str) -> dict[str, pd.DataFrame]:
    segs = queries.segments(store, run)
    segs = segs.drop(columns=["reasons", "rank0_reason", "closed_ranks"]).assign(run_id=run)
    segs = segs[["run_id"] + [c for c in segs.columns if c != "run_id"]]
    incidents = []
    for inc in incident_report.incidents(store, run):
        row = inc.to_dict()
        row["context"] = json.dumps(row["context"], allow_nan=False, default=str)
        row["detail"] = json.dumps(row["detail"], allow_nan=False, default=str)
        for key in ("peak_value", "baseline"):
            if isinstance(row[key], str):  # to_dict spells ±inf as text; the column is a float
                row[key] = float(row[key])
        incidents.append({"run_id": run} | row)
    inc_cols = [
        "run_id",
        "kind",
        "start_step",
        "end_step",
        "peak_value",
        "peak_step",
        "severity",
        "classification",
        "metric",
        "baseline",
        "segment_id",
        "superseded",
        "detected_step",
        "suggested_action",
        "context",
        "detail",
    ]
    return {
        "segments": segs,
        "annotations": queries.annotations(store, run),
        "interventions": queries.interventions(store, run),
        "incidents": pd.DataFrame(incidents, columns=inc_cols),
    }


INT_COLUMNS = (
    "resume_step",
    "start_step",
    "end_step",
    "exit_code",
    "world_size",
    "dropped_records",
    "ranks",
    "step",
    "step_end",
    "applied_step",
)


def _arrow(df: pd.DataFrame) -> pa.Table:
    # DuckDB's .df() turns an integer column with NULLs into floats; give it back its integer type
    df = df.astype({c: "Int64" for c in INT_COLUMNS if c in df.columns})
    table = pa.Table.from_pandas(df, preserve_index=False)
    return table.replace_schema_metadata(None)  # no pandas metadata: the files are for any reader


def write(
    store: Store, run: str, fmt: str, out_dir: Path, *, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Write every table of `run` into `out_dir` as <table>.parquet or <table>.csv; returns the paths."""
    if fmt not in FORMATS:
        raise ValueError(f"table format {fmt!r}: use one of {', '.join(FORMATS)}")
    say = progress or (lambda msg: None)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{str(out_dir)!r} is a file; for {fmt}, -o names a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    cur = store.cursor()
    for name, (select, params) in _selects(store, run).items():
        n = cur.execute(f"SELECT count(*) FROM {name} WHERE run_id = ?", [run]).fetchone()[0]
        say(f"{run}: writing {name}.{fmt} ({n:,} rows)")
        path = out_dir / f"{name}.{fmt}"
        cur.execute(f"COPY ({select}) TO {_literal(path)} {_copy_options(fmt)}", params)
        written.append(path)
    for name, df in _frames(store, run).items():
        say(f"{run}: writing {name}.{fmt} ({len(df):,} rows)")
        path = out_dir / f"{name}.{fmt}"
        table = _arrow(df)
        if fmt == "parquet":
            pq.write_table(table, path, compression="zstd")
        else:
            pa_csv.write_csv(table, path)
        written.append(path)
    return written
