"""Sealed segments as immutable, Hive-partitioned Parquet: read a finished launch once, never parse it again.

A segment is *sealed* when every one of its rank logs has a close record and has been ingested to its
last byte. Its rows can no longer change (the logs are append-only and every writer has said its last
word), so ingest writes them out once, per store table, as Parquet inside the run directory:

    RUN/.midflight/parquet/v1/table=<table>/segment=<segment_id>/part-0.parquet
    RUN/.midflight/parquet/v1/_sealed/<segment_id>.json      the manifest, written last

Then every other reader (a second dashboard, a CLI call, a folder's store, a Dask or Spark job over a
fleet of runs) takes those rows from the Parquet instead of parsing the JSON logs again. Why here and
why this way (docs/architecture.md, "Sealed segments as Parquet", is the stable interface):

- **Sealing is a step at the end of ingest**, not a command a user must remember: the process that has
  just ingested a segment's last byte holds its rows, so writing them costs one streaming, sorted read
  of the store. Every ingest path (CLI, dashboard follower, a private reader) does it, once per segment.
- **Published atomically.** Each file is written to a dot-named temporary file, fsynced, then
  `os.replace`d into place; the manifest comes last. Readers that glob `*.parquet` never see half a
  file (in-place writes failed ~20 % of concurrent reads; docs/engineering notes).
- **Readers load the Parquet into their store** (one bulk read per table and segment, no JSON parsing,
  no tile computation) rather than querying views over many small files, which costs 50-90 ms per query
  over a thousand files. The logs stay the source of truth: a segment's Parquet is used only while its
  manifest lists exactly the rank files on disk, at the sizes they have now; otherwise its logs are
  ingested as before, and the next seal rewrites it.
- The manifest is untrusted input like any file in the run: a malformed one, or Parquet that DuckDB
  cannot read or whose row counts disagree with it, is reported and the logs are read instead.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from midflight.logbook.record import layout
from midflight.logbook.store.schema import TELEMETRY_BLOCK_SECONDS

FORMAT = 1  # bump (and the directory, v<FORMAT>) on any change that is not a pure addition
MANIFEST_DIR = "_sealed"  # '_' prefix: Spark, Dask and pyarrow skip it when they read a table's directory
ROW_GROUP_ROWS = 1 << 20

_POINT = pa.struct([("step", pa.int64()), ("value", pa.float64())])
_TEL_POINT = pa.struct([("t", pa.float64()), ("step", pa.int64()), ("value", pa.float64())])
_KEY = [("run_id", pa.string()), ("segment_id", pa.string())]

# store table -> (its Parquet schema: the stable interface, sort order inside the file). The partition key is
# `table`, not `kind`: `events` has a column `kind`, and an engine's Hive partition column would shadow it.
TABLES: dict[str, tuple[pa.Schema, str]] = {
    "metrics": (
        pa.schema(
            _KEY
            + [
                ("rank", pa.int32()),
                ("step", pa.int64()),
                ("name", pa.string()),
                ("value", pa.float64()),
                ("wall_time", pa.float64()),
            ]
        ),
        "name, rank, step, wall_time",
    ),
    "metric_tiles": (
        pa.schema(
            _KEY
            + [("rank", pa.int32()), ("name", pa.string()), ("tile", pa.int64()), ("n", pa.int64())]
            + [(p, _POINT) for p in ("p_first", "p_last", "p_min", "p_max", "p_nan")]
        ),
        "name, rank, tile",
    ),
    "telemetry": (
        pa.schema(
            _KEY
            + [
                ("rank", pa.int32()),
                ("device", pa.string()),
                ("step", pa.int64()),
                ("wall_time", pa.float64()),
                ("name", pa.string()),
                ("value", pa.float64()),
            ]
        ),
        "name, rank, device, wall_time, step",
    ),
    "telemetry_tiles": (
        pa.schema(
            _KEY
            + [
                ("rank", pa.int32()),
                ("device", pa.string()),
                ("name", pa.string()),
                ("width", pa.int32()),
                ("tile", pa.int64()),
                ("n", pa.int64()),
            ]
            + [(p, _TEL_POINT) for p in ("p_first", "p_last", "p_min", "p_max", "p_nan")]
        ),
        "name, width, rank, device, tile",
    ),
    "events": (
        pa.schema(
            _KEY
            + [
                ("rank", pa.int32()),
                ("step", pa.int64()),
                ("wall_time", pa.float64()),
                ("kind", pa.string()),
                ("fields", pa.string()),  # JSON text
            ]
        ),
        "kind, rank, step, wall_time, fields",
    ),
    "segments": (
        pa.schema(
            _KEY
            + [
                ("parent_id", pa.string()),
                ("resume_step", pa.int64()),
                ("reason", pa.string()),
                ("start_time", pa.float64()),
                ("world_size", pa.int32()),
                ("host", pa.string()),
                ("config", pa.string()),  # JSON text
                ("config_diff", pa.string()),  # JSON text
                ("has_header", pa.bool_()),
                ("meta", pa.string()),  # JSON text; absent from parts sealed before schema 8 (read as NULL)
            ]
        ),
        "segment_id",
    ),
    "rank_logs": (
        pa.schema(
            _KEY
            + [
                ("rank", pa.int32()),
                ("host", pa.string()),
                ("pid", pa.int32()),
                ("local_rank", pa.int32()),
                ("world_size", pa.int32()),
                ("open_time", pa.float64()),
                ("close_time", pa.float64()),
                ("end_reason", pa.string()),
                ("exit_code", pa.int32()),
                ("error", pa.string()),
                ("first_step", pa.int64()),
                ("last_step", pa.int64()),
                ("last_write", pa.float64()),
                ("dropped_records", pa.int64()),
                ("write_errors", pa.int64()),
            ]
        ),
        "rank",
    ),
}
_JSON_COLUMNS = {"fields", "config", "config_diff", "meta"}  # JSON in the store, text in the Parquet


def root(run_dir) -> Path:
    """RUN/.midflight/parquet/v<FORMAT>: the root of a run's sealed Parquet."""
    return Path(run_dir) / layout.STORE_DIR / "parquet" / f"v{FORMAT}"


def part_path(run_dir, table: str, segment_id: str) -> Path:
    if table not in TABLES or not layout.is_valid_segment_id(segment_id):
        raise ValueError(f"no sealed part for table {table!r} of segment {segment_id!r}")
    return root(run_dir) / f"table={table}" / f"segment={segment_id}" / "part-0.parquet"


def manifest_path(run_dir, segment_id: str) -> Path:
    if not layout.is_valid_segment_id(segment_id):
        raise ValueError(f"invalid segment id {segment_id!r}")
    return root(run_dir) / MANIFEST_DIR / f"{segment_id}.json"


# ---------------------------------------------------------------------------------------------- seal


def sealed_segments(cur, run_id: str) -> list[str]:
    """Segments of `run_id` whose every rank log is closed and ingested to its end, in the store's view."""
    rows = cur.execute(
        """
        WITH files AS (
            SELECT split_part(rel_path, '/', 2) AS segment_id, count(*) AS n,
                   bool_and(size IS NOT NULL AND byte_offset = size) AS done
            FROM ingest_files WHERE run_id = ? AND rel_path LIKE 'segments/%/rank-%.jsonl' GROUP BY 1),
        ranks AS (
            SELECT segment_id, count(*) AS n, bool_and(close_time IS NOT NULL) AS closed
            FROM rank_logs WHERE run_id = ? GROUP BY 1)
        SELECT segment_id FROM files JOIN ranks USING (segment_id)
        WHERE done AND closed AND files.n = ranks.n ORDER BY segment_id
        """,
        [run_id, run_id],
    ).fetchall()
    return [r[0] for r in rows if layout.is_valid_segment_id(r[0])]


def _file_rows(cur, run_id: str, segment_id: str) -> list[tuple]:
    return cur.execute(
        "SELECT rel_path, byte_offset, lines, malformed, examples FROM ingest_files "
        "WHERE run_id = ? AND starts_with(rel_path, ?) AND ends_with(rel_path, '.jsonl') ORDER BY rel_path",
        [run_id, f"{layout.SEGMENTS}/{segment_id}/"],  # not LIKE: a segment id may hold '_', a LIKE wildcard
    ).fetchall()


def seal(cur, run_id: str, run_dir, known: dict, touched: set | None = None) -> tuple[list[str], list[str]]:
    """Write the Parquet of every newly sealed segment of one run. Returns (sealed now, problems).

    `known` maps (run dir, segment) to the file sizes its manifest was last confirmed (or its writing
    last failed) for, so a follower that ingests every few seconds reads each manifest, and reports a
    read-only run directory, once, not on every pass. `touched`: the segments whose logs this ingest
    pass read. Only they can have become sealed since the last pass, so a follower's pass looks at
    them alone (none: no query at all); the first pass of a store over a run (`known` has no
    (run dir, None) entry yet) looks at every segment, which seals what an earlier process left."""
    run_dir = Path(run_dir)
    done, problems = [], []
    run_key = (str(run_dir.resolve()), None)
    if run_key in known and touched is not None:
        if not touched:
            return done, problems
        candidates = [sid for sid in sealed_segments(cur, run_id) if sid in touched]
    else:
        candidates = sealed_segments(cur, run_id)
    known[run_key] = True
    for segment_id in candidates:
        files = _file_rows(cur, run_id, segment_id)
        sizes = {rel: size for rel, size, *_ in files}
        key = (str(run_dir.resolve()), segment_id)
        if known.get(key) == sizes:
            continue
        manifest = read_manifest(run_dir, segment_id)
        if manifest is not None and {f["path"]: f["size"] for f in manifest["files"]} == sizes:
            known[key] = sizes
            continue
        try:  # a file that grew after this ingest began: the next pass ingests the rest, then seals
            if any((run_dir / rel).stat().st_size != size for rel, size in sizes.items()):
                continue
        except OSError:
            continue
        try:
            _write_segment(cur, run_id, run_dir, segment_id, files)
        except (OSError, duckdb.Error, pa.ArrowException) as exc:
            problems.append(f"{run_id}: could not write the sealed Parquet of segment {segment_id}: {exc}")
            known[key] = sizes  # said once per process; readers read the logs meanwhile
            continue
        known[key] = sizes
        done.append(segment_id)
    return done, problems


def _write_segment(cur, run_id: str, run_dir: Path, segment_id: str, files: list[tuple]) -> None:
    parts = {}
    for table, (schema, order) in TABLES.items():
        cols = ", ".join(f"{c}::VARCHAR AS {c}" if c in _JSON_COLUMNS else c for c in schema.names)
        sql = f"SELECT {cols} FROM {table} WHERE run_id = ? AND segment_id = ? ORDER BY {order}"
        reader = cur.sql(sql, params=[run_id, segment_id]).to_arrow_reader(ROW_GROUP_ROWS)
        meta = {"midflight.format": str(FORMAT), "midflight.table": table, "midflight.segment_id": segment_id}
        path = part_path(run_dir, table, segment_id)
        rows = _publish(path, schema.with_metadata(meta), reader)
        parts[table] = {"path": path.relative_to(root(run_dir)).as_posix(), "rows": rows}
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "segment_id": segment_id,
        "sealed_time": time.time(),
        "files": [
            {"path": rel, "size": size, "lines": lines, "malformed": malformed, "examples": json.loads(ex or "[]")}
            for rel, size, lines, malformed, ex in files
        ],
        "parts": parts,
    }
    _atomic_write(manifest_path(run_dir, segment_id), lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _publish(path: Path, schema: pa.Schema, reader) -> int:
    """Stream `reader`'s batches into Parquet at `path`, atomically. Returns the row count."""
    rows = 0

    def write(f):
        nonlocal rows
        with pq.ParquetWriter(f, schema, compression="zstd", write_statistics=True) as writer:
            pending, n = [], 0
            for batch in reader:
                pending.append(batch.cast(schema))
                n += batch.num_rows
                if n >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
                    rows, pending, n = rows + n, [], 0
            if pending or rows == 0:
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
                rows += n

    _atomic_write(path, write)
    return rows


def _atomic_write(path: Path, write) -> None:
    """Write through `write(file)` to a dot-named temporary file beside `path`, fsync, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- read


def read_manifest(run_dir, segment_id: str) -> dict | None:
    """The manifest of a sealed segment, checked field by field, or None if absent or not usable."""
    try:
        data = json.loads(manifest_path(run_dir, segment_id).read_bytes())
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("segment_id") != segment_id:
            return None
        files = data["files"]
        if not isinstance(files, list) or not files:
            return None
        prefix = f"{layout.SEGMENTS}/{segment_id}/"
        out = []
        for f in files:
            path, size, lines, malformed = f["path"], f["size"], f["lines"], f["malformed"]
            examples = f.get("examples") or []
            if not (isinstance(path, str) and path.startswith(prefix)) or layout.rank_of(Path(path)) is None:
                return None
            if "/" in path[len(prefix) :]:
                return None
            if not all(type(v) is int and 0 <= v < 2**63 for v in (size, lines, malformed)):
                return None
            if not isinstance(examples, list):
                return None
            # shown to people as text (ingest problems): at most five, each [line, why, snippet], bounded
            examples = [
                [e[0], e[1][:200], e[2][:120]]
                for e in examples[:5]
                if isinstance(e, list)
                and len(e) == 3
                and type(e[0]) is int
                and isinstance(e[1], str)
                and isinstance(e[2], str)
            ]
            out.append({"path": path, "size": size, "lines": lines, "malformed": malformed, "examples": examples})
        parts = data["parts"]
        rows = {t: parts[t]["rows"] for t in TABLES}
        if not all(type(v) is int and 0 <= v < 2**63 for v in rows.values()):
            return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return {"files": out, "rows": rows}


def load(cur, run_id: str, run_dir, logs: list[Path], problems: list[str]) -> list[str]:
    """Load every sealed segment of one run whose logs this store has not read yet from its Parquet.

    Used only when the manifest lists exactly the segment's rank files on disk at their current sizes,
    and the store holds nothing of the segment yet (a store that began on the logs goes on with them).
    Each segment loads in one transaction with its `ingest_files` rows, so the JSON ingest that follows
    skips its files (exactly once, as for a chunk). Returns the segments loaded."""
    run_dir = Path(run_dir)
    # Segments the store holds any log of go on with their logs: one query, so a follower's pass costs
    # neither a stat nor a manifest read per rank file of the segments it already has.
    seen = {
        row[0]
        for row in cur.execute(
            "SELECT DISTINCT split_part(rel_path, '/', 2) FROM ingest_files WHERE run_id = ? "
            "AND starts_with(rel_path, ?) AND ends_with(rel_path, '.jsonl')",
            [run_id, f"{layout.SEGMENTS}/"],
        ).fetchall()
    }
    by_segment: dict[str, dict[str, os.stat_result]] = {}
    for path in logs:
        if layout.rank_of(path) is not None and path.parent.name not in seen:
            try:
                by_segment.setdefault(path.parent.name, {})[path.relative_to(run_dir).as_posix()] = path.stat()
            except OSError:
                continue
    loaded = []
    for segment_id, stats in sorted(by_segment.items()):
        manifest = read_manifest(run_dir, segment_id)
        if manifest is None:
            continue
        if {f["path"]: f["size"] for f in manifest["files"]} != {rel: st.st_size for rel, st in stats.items()}:
            continue  # the segment's logs changed since it was sealed: read them
        cur.execute("BEGIN TRANSACTION")
        try:
            _load_segment(cur, run_id, run_dir, segment_id, manifest, stats)
            cur.execute("COMMIT")
        except (duckdb.Error, ValueError) as exc:
            cur.execute("ROLLBACK")
            problems.append(
                f"{run_id}: the sealed Parquet of segment {segment_id} is not usable ({str(exc)[:200]}); "
                "its logs are read instead"
            )
            continue
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        loaded.append(segment_id)
    return loaded


def _load_telemetry(cur, run_id: str, segment_id: str, path: Path) -> int:
    """A sealed segment's narrow telemetry rows into `telemetry_blocks` (schema.py). Returns the points loaded.

    The points of one device at one time and step are a tick, its names (in order) its name set; the ticks of
    one device and name set in one aligned span of schema.TELEMETRY_BLOCK_SECONDS are one block, in time
    order, its values name-major."""
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _mf_sealed_tel AS "
        "WITH pts AS (SELECT rank, device, step, wall_time, name, value, "
        "  row_number() OVER tick AS pos, list(name) OVER (tick ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED "
        "  FOLLOWING) AS names FROM read_parquet(?, hive_partitioning = false) WHERE segment_id = ? "
        "  WINDOW tick AS (PARTITION BY rank, device, step, wall_time ORDER BY name, value)) "
        "SELECT rank, device, names, min(wall_time) FILTER (WHERE isfinite(wall_time)) AS t_lo, "
        "  max(wall_time) FILTER (WHERE isfinite(wall_time)) AS t_hi, "
        "  list(wall_time ORDER BY wall_time, step) FILTER (WHERE pos = 1) AS wall_times, "
        "  list(step ORDER BY wall_time, step) FILTER (WHERE pos = 1) AS steps, "
        "  list(value ORDER BY pos, wall_time, step) AS vals "
        "FROM pts GROUP BY rank, device, names, "
        "  CASE WHEN isfinite(wall_time) THEN floor(wall_time / ?) END",
        [str(path), segment_id, TELEMETRY_BLOCK_SECONDS],
    )
    try:
        cur.execute(
            "INSERT INTO telemetry_names SELECT (SELECT coalesce(max(names_id), 0) FROM telemetry_names) "
            "+ row_number() OVER (ORDER BY names), names "
            "FROM (SELECT DISTINCT t.names FROM _mf_sealed_tel t ANTI JOIN telemetry_names n ON t.names = n.names)"
        )
        cur.execute(
            "INSERT INTO telemetry_blocks SELECT ?, ?, t.rank, t.device, n.names_id, t.t_lo, t.t_hi, t.wall_times, "
            "t.steps, t.vals "
            "FROM _mf_sealed_tel t JOIN telemetry_names n ON t.names = n.names",
            [run_id, segment_id],
        )
        (got,) = cur.execute("SELECT coalesce(sum(len(vals)), 0) FROM _mf_sealed_tel").fetchone()
    finally:
        cur.execute("DROP TABLE IF EXISTS _mf_sealed_tel")
    return int(got)


def _load_segment(cur, run_id, run_dir, segment_id, manifest, stats) -> None:
    for table, (schema, _) in TABLES.items():
        path = part_path(run_dir, table, segment_id)
        cols = [c for c in schema.names if c not in ("run_id", "segment_id")]
        verb = "INSERT OR REPLACE" if table in ("segments", "rank_logs") else "INSERT"
        # run_id is the directory's name now (a run may have been moved or copied under another name)
        if table == "telemetry":  # narrow rows in the Parquet, wide samples in the store (schema.py)
            got = _load_telemetry(cur, run_id, segment_id, path)
        else:
            picked = cols
            if table == "segments":  # a column added since (a pure addition, FORMAT unchanged) reads as NULL
                present = set(pq.read_schema(path).names)
                picked = [c if c in present else f"NULL AS {c}" for c in cols]
            (got,) = cur.execute(
                f"{verb} INTO {table} (run_id, segment_id, {', '.join(cols)}) "
                f"SELECT ?, ?, {', '.join(picked)} FROM read_parquet(?, hive_partitioning = false) "
                "WHERE segment_id = ?",
                [run_id, segment_id, str(path), segment_id],
            ).fetchone()
        if got != manifest["rows"][table]:  # a part replaced or cut since the manifest was written
            raise ValueError(f"{table} holds {got} rows of this segment, its manifest says {manifest['rows'][table]}")
    files = manifest["files"]
    table = pa.table(
        {
            "rel_path": [f["path"] for f in files],
            "rank": pa.array([layout.rank_of(Path(f["path"])) for f in files], pa.int32()),
            "size": pa.array([f["size"] for f in files], pa.int64()),
            "lines": pa.array([f["lines"] for f in files], pa.int64()),
            "malformed": pa.array([f["malformed"] for f in files], pa.int64()),
            "mtime": pa.array([stats[f["path"]].st_mtime for f in files], pa.float64()),
            "examples": [json.dumps(f["examples"]) for f in files],
        }
    )
    cur.register("_mf_sealed_files", table)  # one statement for a thousand ranks, not two each
    try:
        cur.execute(
            "INSERT OR REPLACE INTO ingest_files SELECT ?, rel_path, size, lines, malformed, size, mtime, examples "
            "FROM _mf_sealed_files",
            [run_id],
        )
        # what an ingest of the log would have recorded as its last write (the heartbeat)
        cur.execute(
            "UPDATE rank_logs SET last_write = f.mtime FROM _mf_sealed_files f "
            "WHERE rank_logs.run_id = ? AND rank_logs.segment_id = ? AND rank_logs.rank = f.rank",
            [run_id, segment_id],
        )
    finally:
        cur.unregister("_mf_sealed_files")


# ---------------------------------------------------------------------------------------------- fleet


def part_files(run_dirs, table: str = "metrics") -> list[Path]:
    """The `table` Parquet files of every sealed segment (one with a usable manifest) of `run_dirs`."""
    out = []
    for run_dir in run_dirs:
        base = root(run_dir) / MANIFEST_DIR
        for manifest in sorted(base.glob("*.json")) if base.is_dir() else ():
            segment_id = manifest.stem
            if read_manifest(run_dir, segment_id) is not None and part_path(run_dir, table, segment_id).is_file():
                out.append(part_path(run_dir, table, segment_id))
    return out


# One question about a fleet, asked the same way of the sealed Parquet and of a store: per run and
# segment, how many loss points, their mean and max, and the 95th percentile of step_time_s over every
# (rank, step) (the tail a straggler makes). quantile_cont interpolates linearly, as pandas does.
_FLEET_STATS = """
SELECT run_id, segment_id,
       count(*) FILTER (name = 'loss') AS loss_points,
       avg(value) FILTER (name = 'loss') AS loss_mean,
       max(value) FILTER (name = 'loss') AS loss_max,
       quantile_cont(value, 0.95) FILTER (name = 'step_time_s') AS step_time_p95
FROM {source}
WHERE name IN ('loss', 'step_time_s') AND NOT isnan(value)
GROUP BY run_id, segment_id
ORDER BY run_id, segment_id
"""


def fleet_stats(*, store=None, files: list | None = None):
    """The fleet question (above) over a store's `metrics`, or over sealed `metrics` Parquet files."""
    if (store is None) == (files is None):
        raise ValueError("give a store or a list of Parquet files")
    if files is not None and not files:
        raise ValueError("no sealed Parquet to read: no segment of these runs is sealed yet")
    if store is not None:
        cur = store.cursor()
        try:
            return cur.execute(_FLEET_STATS.format(source="metrics")).df()
        finally:
            cur.close()
    con = duckdb.connect(":memory:")
    try:
        return con.execute(
            _FLEET_STATS.format(source="read_parquet(?, hive_partitioning = false)"), [[str(f) for f in files]]
        ).df()
    finally:
        con.close()
