"""Ingest event logs into the store, exactly once.

Each log file is append-only. The store keeps, per file, the byte offset up to
which it has been ingested, and advances it in the same transaction that inserts
that chunk's rows. A crash anywhere therefore either keeps a whole chunk (rows and
offset) or none of it, and the next ingest resumes at the committed offset:
re-running never duplicates or loses a row. A partial last line (a record being
written, or a torn tail from a killed writer) is left for later.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from logbook.record import layout, records
from logbook.store import schema, sealed
from logbook.store.database import Store
from logbook.values import optional_step, step

CHUNK_BYTES = 32 << 20
MAX_EXAMPLES = 5
PROGRESS_MIN_BYTES = 8 << 20  # smaller ingests finish before a bar is worth drawing


@dataclass
class IngestReport:
    files: int = 0
    bytes: int = 0
    records: int = 0
    metric_points: int = 0
    telemetry_points: int = 0
    malformed: int = 0
    examples: list = field(default_factory=list)  # (run, file, line_no, message, snippet)
    errors: list = field(default_factory=list)  # file-level problems: "run/file: what went wrong"
    from_parquet: list = field(default_factory=list)  # (run, segment) read from sealed Parquet, not the logs
    sealed: list = field(default_factory=list)  # (run, segment) whose Parquet this ingest wrote

    def describe(self) -> str:
        text = (
            f"ingested {self.records:,} records ({self.metric_points:,} metric points, "
            f"{self.bytes / 1e6:.1f} MB) from {self.files} files"
        )
        if self.malformed:
            text += f"; skipped {self.malformed:,} malformed lines, e.g.:"
            for run, rel, line_no, msg, snippet in self.examples[:MAX_EXAMPLES]:
                text += f"\n  {run}/{rel}:{line_no}: {msg}: {snippet}"
        if self.from_parquet:
            text += f"; {len(self.from_parquet)} sealed segments read from their Parquet"
        if self.sealed:
            text += f"; sealed {len(self.sealed)} segments as Parquet"
        for error in self.errors:
            text += f"\nwarning: {error}"
        return text


def ingest(
    store: Store, run_dirs, *, progress: bool = False, chunk_bytes: int = CHUNK_BYTES, seal: bool = False
) -> IngestReport:
    """Bring the store up to date with every complete record in `run_dirs`.

    Sealed segments whose Parquet matches their logs are loaded from it (logbook/store/sealed.py);
    with `seal`, every segment this ingest finds sealed and not yet written out is written as Parquet
    into its run directory. The front doors (`open_run`: the CLI; `Follower`: the dashboard and
    `ingest --follow`) seal; a library caller building a scratch store leaves the run directory alone."""
    report = IngestReport()
    cur = store.cursor()
    work, seen = [], []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        run_id = run_dir.name
        seen.append((run_id, run_dir))
        headers, logs = layout.run_files(run_dir)
        _upsert_run(cur, run_id, run_dir, headers)
        for header in headers:
            _ingest_header(cur, run_id, run_dir, header, report)
        for segment_id in sealed.load(cur, run_id, run_dir, logs, report.errors):
            report.from_parquet.append((run_id, segment_id))
        for path in logs:
            rel = path.relative_to(run_dir).as_posix()
            try:
                st = path.stat()
            except OSError:
                continue
            row = cur.execute(
                "SELECT byte_offset, size, mtime FROM ingest_files WHERE run_id = ? AND rel_path = ?", [run_id, rel]
            ).fetchone()
            offset = row[0] if row else 0
            if row and row[1] == st.st_size and row[2] == st.st_mtime:
                continue
            work.append((run_id, run_dir, path, rel, offset, st))
    total = sum(max(st.st_size - off, 0) for *_, off, st in work)
    bar = _progress(total, progress)
    try:
        for run_id, _, path, rel, offset, st in work:
            report.files += 1
            _ingest_file(cur, run_id, path, rel, offset, st, report, bar, chunk_bytes)
    finally:
        if bar is not None:
            bar.close()
    if seal:
        for run_id, run_dir in seen:
            touched = {
                path.parent.name for rid, _, path, *_ in work if rid == run_id and layout.rank_of(path) is not None
            }
            done, problems = sealed.seal(cur, run_id, run_dir, store.sealed_manifests, touched)
            report.sealed.extend((run_id, s) for s in done)
            report.errors.extend(problems)
    return report


def _progress(total: int, enabled: bool):
    if not enabled or total < PROGRESS_MIN_BYTES:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="ingest", file=sys.stderr)


def _upsert_run(cur, run_id: str, run_dir: Path, headers: list[Path]) -> None:
    name = None
    if headers:
        try:
            name = json.loads(headers[-1].read_bytes()).get("run")
        except (OSError, ValueError, AttributeError):
            pass
    cur.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", [run_id, str(run_dir.resolve()), name])


def _ingest_header(cur, run_id: str, run_dir: Path, path: Path, report: IngestReport) -> None:
    rel = path.relative_to(run_dir).as_posix()
    st = path.stat()
    row = cur.execute(
        "SELECT size, mtime FROM ingest_files WHERE run_id = ? AND rel_path = ?", [run_id, rel]
    ).fetchone()
    if row and row[0] == st.st_size and row[1] == st.st_mtime:
        return
    malformed, examples, row = 0, [], None
    try:
        h = json.loads(path.read_bytes())
        if not isinstance(h, dict):
            raise ValueError("segment header is not a JSON object")
        row = [
            run_id,
            path.parent.name,
            _str(h.get("parent")),
            optional_step(h.get("resume_step")),
            _str(h.get("reason")),
            _float(h.get("start_time")),
            _int32(h.get("world_size")),
            _str(h.get("host")),
            json.dumps(h.get("config")),
            json.dumps(h.get("config_diff") or {}),
        ]
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        malformed, examples = 1, [[1, f"unreadable segment header: {str(exc)[:200]}", ""]]
        report.malformed += 1
        report.examples.append((run_id, rel, *examples[0]))
        row = None
    cur.execute("BEGIN TRANSACTION")
    try:
        if row is not None:
            cur.execute("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true)", row)
        cur.execute(
            "INSERT OR REPLACE INTO ingest_files VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
            [run_id, rel, st.st_size, malformed, st.st_size, st.st_mtime, json.dumps(examples)],
        )
        cur.execute("COMMIT")
    except duckdb.Error as exc:  # one header must not stop the rest of the folder from loading
        cur.execute("ROLLBACK")
        report.errors.append(f"{run_id}/{rel}: could not store the segment header: {str(exc)[:200]}")


def _ingest_file(cur, run_id, path, rel, offset, st, report, bar, chunk_bytes) -> None:
    row = cur.execute(
        "SELECT lines, malformed, examples FROM ingest_files WHERE run_id = ? AND rel_path = ?", [run_id, rel]
    ).fetchone()
    lines, malformed, examples = (row[0], row[1], json.loads(row[2] or "[]")) if row else (0, 0, [])
    if st.st_size < offset:
        report.errors.append(f"{run_id}/{rel}: the file shrank since it was ingested; it is no longer read")
        return
    rank = layout.rank_of(path)
    segment_id = path.parent.name if rank is not None else None
    while True:
        try:
            data, new_offset = records.read_complete(path, offset, chunk_bytes)
        except OSError as exc:
            report.errors.append(f"{run_id}/{rel}: cannot read: {exc}")
            return
        chunk = data.split(b"\n")[:-1]

        def new_batch(refused=None, lines=lines):  # lines: this chunk's first line number
            return _Batch(run_id, segment_id, rank, lines, st.st_mtime, refused=refused)

        batch = new_batch()
        for line in chunk:
            batch.add(line)
        cur.execute("BEGIN TRANSACTION")
        try:
            try:
                batch.flush(cur)
            except _REFUSED:  # a value the checks let through, refused by the store
                cur.execute("ROLLBACK")
                batch = new_batch(_refused_lines(cur, chunk, new_batch))
                for line in chunk:
                    batch.add(line)
                cur.execute("BEGIN TRANSACTION")
                batch.flush(cur)
            examples = (examples + batch.examples)[:MAX_EXAMPLES]
            lines += batch.lines
            malformed += batch.malformed
            cur.execute(
                "INSERT OR REPLACE INTO ingest_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    rel,
                    new_offset,
                    lines,
                    malformed,
                    st.st_size if new_offset >= st.st_size else None,
                    st.st_mtime,
                    json.dumps(examples),
                ],
            )
            cur.execute("COMMIT")
        except (duckdb.Error, pa.ArrowException) as exc:  # keep the other files flowing; retried next time
            cur.execute("ROLLBACK")
            report.errors.append(f"{run_id}/{rel}: could not store the chunk at byte {offset}: {exc}")
            return
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        report.bytes += new_offset - offset
        report.records += batch.lines - batch.malformed
        report.metric_points += batch.points
        report.telemetry_points += batch.t_points
        report.malformed += batch.malformed
        report.examples.extend((run_id, rel, *e) for e in batch.examples)
        if bar is not None:
            bar.update(new_offset - offset)
        if new_offset == offset or new_offset >= st.st_size:
            return
        offset = new_offset


# What the store (or Arrow, building its columns) raises for a value it cannot hold: a data problem of
# some line, unlike an I/O or lock error, which is no line's fault and is retried whole next time.
_REFUSED = (duckdb.DataError, duckdb.IntegrityError, pa.ArrowInvalid)


def _refusal(cur, batch: _Batch) -> str | None:
    """Why the store refuses `batch` (tried in a transaction that is rolled back), or None if it takes it."""
    cur.execute("BEGIN TRANSACTION")
    try:
        batch.flush(cur)
    except _REFUSED as exc:
        return f"the store refused it: {str(exc).splitlines()[0][:160]}"
    finally:
        cur.execute("ROLLBACK")
    return None


def _refused_lines(cur, chunk: list, new_batch) -> dict[int, str]:
    """{index in chunk: why} of the lines the store refuses, found by bisection.

    Every line is checked before it reaches DuckDB, so this runs only if a check is missing. Then
    the chunk is not retried (and refused) forever with all its good lines: the refused lines are
    found in O(bad lines x log lines) trial inserts, each rolled back, and counted as malformed,
    and the rest are stored in one transaction with the offset as always (exactly once holds)."""
    refused: dict[int, str] = {}

    def trial(lo: int, hi: int) -> None:
        batch = new_batch()
        batch.window = (lo, hi)
        for line in chunk:
            batch.add(line)
        why = _refusal(cur, batch)
        if why is None:
            return
        if hi - lo == 1:
            refused[lo] = why
            return
        mid = (lo + hi) // 2
        trial(lo, mid)
        trial(mid, hi)

    trial(0, len(chunk))
    return refused


class _Batch:
    """Rows parsed from one chunk of one file, inserted in one go (Arrow -> DuckDB)."""

    def __init__(
        self,
        run_id: str,
        segment_id: str | None,
        rank: int | None,
        first_line: int,
        mtime: float,
        refused: dict | None = None,
    ):
        self.run_id, self.segment_id, self.rank, self.mtime = run_id, segment_id, rank, mtime
        self.refused = refused or {}  # index in the chunk -> why the store refused that line
        self.window = None  # (lo, hi): only lines lo..hi-1 of the chunk count (a bisection trial)
        self.first_line = first_line
        self.line_no = first_line
        self.lines = self.malformed = self.points = 0
        self.examples: list = []
        self.names: dict[str, int] = {}
        self.m_blocks: dict[tuple, list] = {}  # names -> [rows array per record]; widened once, in flush
        self.m_steps: dict[tuple, list] = {}  # names -> [exact int64 steps per record] (floats round above 2**53)
        self.m_ids: dict[tuple, np.ndarray] = {}  # names -> their name ids, checked once per chunk
        self.t_blocks: dict[tuple, list] = {}  # (devices, names) -> [(wall times, rows, present or None)]
        self.devices: dict[str, int] = {}
        self.t_points = 0
        self.events: list = []
        self.opens: list = []
        self.close: dict | None = None
        self.annotation_ops: list = []
        self.intervention_ops: list = []

    def add(self, line: bytes) -> None:
        index = self.line_no - self.first_line
        self.lines += 1
        self.line_no += 1
        if self.window is not None and not self.window[0] <= index < self.window[1]:
            return
        if index in self.refused:
            self._reject(line, self.refused[index])
            return
        try:
            rec = records.decode(line)
            handler = _HANDLERS.get((rec["k"], self.rank is not None))
            if handler is None:
                raise ValueError(f"unexpected record kind {rec['k']!r} in this file")
            handler(self, rec)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            self._reject(line, str(exc)[:200] or type(exc).__name__)

    def _reject(self, line: bytes, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((self.line_no, why, line[:120].decode("utf-8", "replace")))

    # -- rank-log records
    def _metrics(self, rec: dict) -> None:
        names = rec["names"]
        key = tuple(names) if isinstance(names, list) else None  # unhashable names -> TypeError -> malformed
        if key not in self.m_ids and (not key or not all(isinstance(n, str) for n in key)):
            raise ValueError("metrics block has no names, or a name that is not text")
        arr = _block_array(rec, len(key))
        steps = _exact_steps(rec["rows"], arr[:, 0])
        if key not in self.m_ids:
            self.m_ids[key] = np.array([self.names.setdefault(n, len(self.names)) for n in key], dtype=np.int32)
        self.m_blocks.setdefault(key, []).append(arr)
        self.m_steps.setdefault(key, []).append(steps)
        self.points += arr.shape[0] * len(key)

    def _metric_columns(self) -> tuple:
        """(steps, name ids, values, wall times) of all metrics records, widened to one row per point."""
        steps, ids, values, walls = [], [], [], []
        for key, arrs in self.m_blocks.items():
            arr = np.concatenate(arrs) if len(arrs) > 1 else arrs[0]
            k, n = len(key), arr.shape[0]
            steps.append(np.repeat(np.concatenate(self.m_steps[key]), k))
            walls.append(np.repeat(arr[:, 1], k))
            ids.append(np.tile(self.m_ids[key], n))
            values.append(arr[:, 2:].reshape(-1))
        return np.concatenate(steps), np.concatenate(ids), np.concatenate(values), np.concatenate(walls)

    def _telemetry(self, rec: dict) -> None:
        """A telemetry block, per device (format <= 2) or a node block (format 3), as flat numpy columns.

        Both shapes go the same vectorised way (no Python object per point). A step must be a whole number
        in [0, 2**63) or null, else the line is malformed (logbook.values' rule, checked on the column).
        Unlike metrics steps, these are read through float64 only: exact below 2**53, and a step within
        1,024 of 2**63 counts as out of range. A telemetry step is a sampler's view of the training step,
        which no run comes near; metrics blocks, which are the history, take the exact path."""
        names = rec["names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError("telemetry block has no names, or a name that is not text")
        k = len(names)
        if "devices" in rec:  # node block: rows of [dt_ms, step, v(dev0, name0), ..., v(devD, nameK)]
            devices = rec["devices"]
            if not isinstance(devices, list) or not devices or not all(isinstance(d, str) and d for d in devices):
                raise ValueError("telemetry block has no devices, or a device that is not text")
            t0 = rec["t0"]
            if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not np.isfinite(t0):
                raise ValueError("telemetry block's t0 is not a finite number")
            arr, present = _block_array(rec, k * len(devices), with_present=True)
            present = None if present.all() else present
            if np.isnan(arr[:, 0]).any():
                raise ValueError("telemetry block has a row without a time")
            walls = float(t0) + arr[:, 0] / 1000.0
        else:  # one device: rows of [wall_time, step, v...]; a null value is stored as NaN, as it always was
            devices = [str(rec["device"])]
            arr, present = _block_array(rec, k), None
            walls = arr[:, 0]
        s = arr[:, 1]
        s = s[~np.isnan(s)]
        if not ((s >= 0) & (s < _STEP_LIMIT) & (s == np.floor(s))).all():
            raise ValueError("telemetry block has a step that is not a whole number in [0, 2**63)")
        key = (tuple(devices), tuple(names))  # widened once per key in flush, as metrics blocks are
        self.t_blocks.setdefault(key, []).append((walls, arr, present))
        self.t_points += arr.shape[0] * len(devices) * k if present is None else int(present.sum())

    def _telemetry_columns(self) -> tuple:
        """(device ids, name ids, steps, has step, wall times, values) of all telemetry blocks, one per point."""
        parts = []
        for (devices, names), blocks in self.t_blocks.items():
            walls = np.concatenate([b[0] for b in blocks])
            arr = np.concatenate([b[1] for b in blocks])
            n, k, width = arr.shape[0], len(names), len(devices) * len(names)
            steps = arr[:, 1]
            has_step = ~np.isnan(steps)
            dev_ids = np.array([self.devices.setdefault(d, len(self.devices)) for d in devices], dtype=np.int32)
            name_ids = np.array([self.names.setdefault(nm, len(self.names)) for nm in names], dtype=np.int32)
            cols = (
                np.tile(np.repeat(dev_ids, k), n),
                np.tile(np.tile(name_ids, len(devices)), n),
                np.repeat(np.where(has_step, steps, 0).astype(np.int64), width),
                np.repeat(has_step, width),
                np.repeat(walls, width),
                arr[:, 2:].reshape(-1),
            )
            if any(b[2] is not None for b in blocks):
                keep = np.concatenate([np.ones(b[1][:, 2:].shape, bool) if b[2] is None else b[2] for b in blocks])
                keep = keep.reshape(-1)
                cols = tuple(c[keep] for c in cols)
            parts.append(cols)
        return tuple(np.concatenate(c) for c in zip(*parts))

    def _event(self, rec: dict) -> None:
        kind = rec["kind"]
        if not isinstance(kind, str):
            raise ValueError("event kind is not text")
        step = optional_step(rec.get("step"))
        self.events.append((step, _float(rec.get("t")), kind, json.dumps(rec.get("fields") or {})))

    def _open(self, rec: dict) -> None:
        # (start time, world, host, pid, local rank): converted here, where a bad value rejects only this line
        world = _int32(rec.get("world"))
        self.opens.append(
            (_float(rec.get("t")), world, _str(rec.get("host")), _int32(rec.get("pid")), _int32(rec.get("local_rank")))
        )

    def _close(self, rec: dict) -> None:
        self.close = (
            _float(rec.get("t")),
            _str(rec.get("reason")),
            _int32(rec.get("exit_code")),
            _str(rec.get("error")),
            _int64(rec.get("dropped_records")),
            _int64(rec.get("write_errors")),
            optional_step(rec.get("last_step")),
        )

    # -- run-level records
    def _annotation(self, rec: dict) -> None:
        op = rec["op"]
        if op not in ("create", "edit", "delete"):
            raise ValueError(f"unknown annotation op {op!r}")
        self.annotation_ops.append(
            (
                records.record_id(rec, self.line_no),
                self.line_no,
                op,
                _float(rec.get("t")),
                optional_step(rec.get("step")),
                optional_step(rec.get("step_end")),
                _str(rec.get("kind")),
                _str(rec.get("text")),
                _str(rec.get("author")),
            )
        )

    def _intervention(self, rec: dict) -> None:
        op = rec["op"]
        if op not in ("request", "applied", "rejected"):
            raise ValueError(f"unknown intervention op {op!r}")
        self.intervention_ops.append(
            (
                records.record_id(rec, self.line_no),
                self.line_no,
                op,
                _float(rec.get("t")),
                _str(rec.get("action")),
                json.dumps(rec.get("params") or {}),
                optional_step(rec.get("step")),
                _str(rec.get("detail")),
                _str(rec.get("author")),
                _str(rec.get("note")),
            )
        )

    def flush(self, cur) -> None:
        key = [self.run_id, self.segment_id, self.rank]
        if self.rank is not None:
            cur.execute(
                "INSERT OR IGNORE INTO segments (run_id, segment_id, config, config_diff, has_header) "
                "VALUES (?, ?, '{}', '{}', false)",
                key[:2],
            )
            cur.execute("INSERT OR IGNORE INTO rank_logs (run_id, segment_id, rank) VALUES (?, ?, ?)", key)
            cur.execute(
                "UPDATE rank_logs SET last_write = ? WHERE run_id = ? AND segment_id = ? AND rank = ?",
                [self.mtime] + key,
            )
        for t, world, host, pid, local_rank in self.opens:
            cur.execute(
                "UPDATE segments SET start_time = coalesce(start_time, ?), world_size = coalesce(world_size, ?),"
                " host = coalesce(host, ?) WHERE run_id = ? AND segment_id = ?",
                [t, world, host] + key[:2],
            )
            cur.execute(
                "UPDATE rank_logs SET host = ?, pid = ?, local_rank = ?, world_size = ?, open_time = ? "
                "WHERE run_id = ? AND segment_id = ? AND rank = ?",
                [host, pid, local_rank, world, t] + key,
            )
        if self.points:
            steps, ids, values, walls = self._metric_columns()
            table = pa.table(
                {
                    "step": steps,
                    "name": pa.DictionaryArray.from_arrays(ids, list(self.names)),
                    "value": values,
                    "wall_time": walls,
                }
            )
            _insert(
                cur,
                "_mf_metrics",
                table,
                key,
                "INSERT INTO metrics SELECT ?, ?, ?, step, name::VARCHAR, value, wall_time FROM _mf_metrics",
                _TILES_SQL,
            )
            self._touch_rank(cur, key, int(steps.min()), int(steps.max()))
        if self.t_points:
            dev, nm, step, has_step, wall, value = self._telemetry_columns()
            table = pa.table(
                {
                    "device": pa.DictionaryArray.from_arrays(dev, list(self.devices)),
                    "step": pa.array(step, pa.int64(), mask=~has_step),
                    "wall_time": wall,
                    "name": pa.DictionaryArray.from_arrays(nm, list(self.names)),
                    "value": value,
                }
            )
            _insert(
                cur,
                "_mf_tel",
                table,
                key,
                "INSERT INTO telemetry SELECT ?, ?, ?, device::VARCHAR, step, wall_time, name::VARCHAR, value "
                "FROM _mf_tel",
                *_TEL_TILES_SQL,
            )
        if self.events:
            cols = list(zip(*self.events))
            table = pa.table(
                {
                    "step": pa.array(cols[0], pa.int64()),
                    "wall_time": pa.array(cols[1], pa.float64()),
                    "kind": cols[2],
                    "fields": cols[3],
                }
            )
            _insert(
                cur,
                "_mf_events",
                table,
                key,
                "INSERT INTO events SELECT ?, ?, ?, step, wall_time, kind, fields::JSON FROM _mf_events",
            )
        if self.close is not None:
            *closed, last = self.close
            cur.execute(
                "UPDATE rank_logs SET close_time = ?, end_reason = ?, exit_code = ?, error = ?, "
                "dropped_records = ?, write_errors = ? WHERE run_id = ? AND segment_id = ? AND rank = ?",
                closed + key,
            )
            if last is not None:  # a rank that logged no metrics (an imported timeline) still has an extent
                self._touch_rank(cur, key, None, last)
        for op in self.annotation_ops:
            cur.execute("INSERT INTO annotation_ops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [self.run_id, *op])
        for op in self.intervention_ops:
            cur.execute("INSERT INTO intervention_ops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [self.run_id, *op])

    @staticmethod
    def _touch_rank(cur, key, lo: int, hi: int) -> None:
        cur.execute(
            "UPDATE rank_logs SET first_step = least(coalesce(first_step, ?), ?), "
            "last_step = greatest(coalesce(last_step, ?), ?) WHERE run_id = ? AND segment_id = ? AND rank = ?",
            [lo, lo, hi, hi] + key,  # lo None: only the last step is known
        )


# Fold this chunk's points into the per-tile M4 summaries, merging with tiles that earlier chunks began.
_TILES_SQL = f"""
INSERT OR REPLACE INTO metric_tiles
WITH pts AS (SELECT name::VARCHAR AS name, step >> {schema.TILE_SHIFT} AS tile, step, value,
                    {{'step': step, 'value': value}} AS p FROM _mf_metrics),
new AS (SELECT ?::VARCHAR AS run_id, ?::VARCHAR AS segment_id, ?::INTEGER AS rank, name, tile, count(*) AS n,
               arg_min(p, step) AS p_first, arg_max(p, step) AS p_last,
               arg_min(p, value) FILTER (NOT isnan(value)) AS p_min,
               arg_max(p, value) FILTER (NOT isnan(value)) AS p_max,
               arg_min(p, step) FILTER (isnan(value)) AS p_nan
        FROM pts GROUP BY name, tile),
merged AS (SELECT * FROM new
         UNION ALL BY NAME
         SELECT t.* FROM metric_tiles t SEMI JOIN new USING (run_id, segment_id, rank, name, tile))
SELECT run_id, segment_id, rank, name, tile, sum(n),
       arg_min(p_first, p_first.step), arg_max(p_last, p_last.step),
       arg_min(p_min, p_min.value), arg_max(p_max, p_max.value), arg_min(p_nan, p_nan.step)
FROM merged GROUP BY run_id, segment_id, rank, name, tile
"""

# The same for telemetry, in wall-time tiles of each width in schema.TELEMETRY_TILES (seconds). A point
# without a wall time (an old record's null) has no tile; it stays in the raw rows.
_TEL_TILES_SQL = [
    f"""
INSERT OR REPLACE INTO telemetry_tiles
WITH pts AS (SELECT device::VARCHAR AS device, name::VARCHAR AS name,
                    CAST(floor(wall_time / {w}) AS BIGINT) AS tile, wall_time, value,
                    {{'t': wall_time, 'step': step, 'value': value}} AS p
             FROM _mf_tel WHERE isfinite(wall_time)),
new AS (SELECT ?::VARCHAR AS run_id, ?::VARCHAR AS segment_id, ?::INTEGER AS rank, device, name,
               {w}::INTEGER AS width, tile, count(*) AS n,
               arg_min(p, wall_time) AS p_first, arg_max(p, wall_time) AS p_last,
               arg_min(p, value) FILTER (NOT isnan(value)) AS p_min,
               arg_max(p, value) FILTER (NOT isnan(value)) AS p_max,
               arg_min(p, wall_time) FILTER (isnan(value)) AS p_nan
        FROM pts GROUP BY device, name, tile),
merged AS (SELECT * FROM new
         UNION ALL BY NAME
         SELECT t.* FROM telemetry_tiles t SEMI JOIN new USING (run_id, segment_id, rank, device, name, width, tile))
SELECT run_id, segment_id, rank, device, name, width, tile, sum(n),
       arg_min(p_first, p_first.t), arg_max(p_last, p_last.t),
       arg_min(p_min, p_min.value), arg_max(p_max, p_max.value), arg_min(p_nan, p_nan.t)
FROM merged GROUP BY run_id, segment_id, rank, device, name, width, tile
"""
    for w in schema.TELEMETRY_TILES
]

_HANDLERS = {
    (records.METRICS, True): _Batch._metrics,
    (records.TELEMETRY, True): _Batch._telemetry,
    (records.EVENT, True): _Batch._event,
    (records.OPEN, True): _Batch._open,
    (records.CLOSE, True): _Batch._close,
    ("annotation", False): _Batch._annotation,
    ("intervention", False): _Batch._intervention,
}


def _insert(cur, view: str, table: pa.Table, params: list, *statements: str) -> None:
    """Run `statements` (each taking `params`) with `table` visible to SQL as `view`."""
    cur.register(view, table)
    try:
        for sql in statements:
            cur.execute(sql, params)
    finally:
        cur.unregister(view)


_NONFINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


_EXACT_IN_FLOAT = 2.0**53


def _exact_steps(rows: list, column: np.ndarray) -> np.ndarray:
    """A block's steps as int64, exactly, by the one step rule (logbook.values.step).

    The fast path reads them from the block's float64 array, which is exact below 2**53. A block
    with a step at or above that (or one that fails the rule) is read again from the JSON values
    themselves, so 2**63 - 1 is stored as itself and a bad step names its reason."""
    if ((column >= 0) & (column < _EXACT_IN_FLOAT) & (column == np.floor(column))).all():
        return column.astype(np.int64)
    return np.array([step(row[0]) for row in rows], dtype=np.int64)


def _block_array(rec: dict, k: int, with_present: bool = False):
    """The rows of a metrics/telemetry block as float64 [n, 2 + k], with its listed NaN/Inf put back.

    with_present: also return which of the k values exist ([n, k] bool): a null that `nonfinite` does
    not list is an absent sample in a node telemetry block."""
    arr = np.asarray(rec["rows"], dtype=np.float64)  # null -> NaN
    if arr.ndim != 2 or arr.shape[1] != k + 2:
        raise ValueError("block rows do not match its names")
    present = ~np.isnan(arr[:, 2:]) if with_present else None
    for i, j, token in rec.get("nonfinite") or ():
        if not (0 <= i < arr.shape[0] and 0 <= j < k) or token not in _NONFINITE:
            raise ValueError(f"bad nonfinite entry {[i, j, token]!r}")
        arr[i, 2 + j] = _NONFINITE[token]
        if present is not None:
            present[i, j] = True
    return (arr, present) if with_present else arr


def _str(v):
    return None if v is None else str(v)


_STEP_LIMIT = float(2**63)


def _bounded_int(v, bits: int):
    """An int for a BIGINT/INTEGER column, None when missing; ValueError (a malformed line) when out of range."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, float) and not np.isfinite(v):
        return None
    n = int(v)
    if not -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
        raise ValueError(f"{str(n)[:40]} does not fit a {bits}-bit integer")
    return n


def _int32(v):
    return _bounded_int(v, 32)


def _int64(v):
    return _bounded_int(v, 64)


def _float(v):
    return None if v is None else float(v)


def open_run(path, store_path=None, *, progress: bool = False):
    """Open the store for a run (or a folder of runs) and bring it up to date. Returns (store, report)."""
    from logbook.store.database import open_store

    runs = layout.discover_runs(path)
    store = open_store(store_path or layout.default_store_path(path))
    return store, ingest(store, runs, progress=progress, seal=True)
