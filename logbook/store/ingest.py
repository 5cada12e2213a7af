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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from midflight.logbook import roles
from midflight.logbook.record import layout, records, runmeta
from midflight.logbook.store import schema, sealed
from midflight.logbook.store.database import Store
from midflight.logbook.values import optional_step, step

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
        known = {  # one query per run, not one per file: a fleet run has a thousand rank files
            rel: row
            for rel, *row in cur.execute(
                "SELECT rel_path, byte_offset, size, mtime, lines, malformed, examples FROM ingest_files "
                "WHERE run_id = ?",
                [run_id],
            ).fetchall()
        }
        for path in logs:
            rel = path.relative_to(run_dir).as_posix()
            try:
                st = path.stat()
            except OSError:
                continue
            row = known.get(rel)
            if row and row[1] == st.st_size and row[2] == st.st_mtime:
                continue
            f = _File(run_id, path, rel, st, *(row[0], row[3], row[4], json.loads(row[5] or "[]")) if row else ())
            work.append(f)
    total = sum(max(f.st.st_size - f.offset, 0) for f in work)
    bar = _progress(total, progress)
    try:
        _ingest_files(cur, work, report, bar, chunk_bytes)
    finally:
        if bar is not None:
            bar.close()
    if seal:
        for run_id, run_dir in seen:
            touched = {f.path.parent.name for f in work if f.run_id == run_id and f.rank is not None}
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
    malformed, examples, row, declared = 0, [], None, {}
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
        try:  # declared roles: checked again here (a header is a file anyone can edit); bad ones are dropped, said
            declared = roles.validate(h.get("roles"))
        except (ValueError, TypeError) as exc:
            examples.append([1, f"segment header: declared roles ignored: {str(exc)[:200]}", ""])
        meta, refused = _header_meta(h)
        row.append(json.dumps(meta))
        if refused:  # the header is kept; what it says about the run that is not text of the allowed size is not
            examples.append([1, f"segment header: {refused[:200]}", ""])
        if examples:  # one header, one malformed line, however many of its fields were refused
            malformed = 1
            report.malformed += 1
            report.examples.append((run_id, rel, *examples[0]))
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        malformed, examples = 1, [[1, f"unreadable segment header: {str(exc)[:200]}", ""]]
        report.malformed += 1
        report.examples.append((run_id, rel, *examples[0]))
        row = None
    cur.execute("BEGIN TRANSACTION")
    try:
        if row is not None:
            cur.execute(
                "INSERT OR REPLACE INTO segments (run_id, segment_id, parent_id, resume_step, reason, start_time, "
                "world_size, host, config, config_diff, meta, has_header) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true)",
                row,
            )
            cur.execute("DELETE FROM segment_roles WHERE run_id = ? AND segment_id = ?", [run_id, row[1]])
            if declared:
                cur.executemany(
                    "INSERT INTO segment_roles VALUES (?, ?, ?, ?)",
                    [[run_id, row[1], role, metric] for role, metric in declared.items()],
                )
        cur.execute(
            "INSERT OR REPLACE INTO ingest_files VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
            [run_id, rel, st.st_size, malformed, st.st_size, st.st_mtime, json.dumps(examples)],
        )
        cur.execute("COMMIT")
    except duckdb.Error as exc:  # one header must not stop the rest of the folder from loading
        cur.execute("ROLLBACK")
        report.errors.append(f"{run_id}/{rel}: could not store the segment header: {str(exc)[:200]}")


def _header_meta(h: dict) -> tuple[dict, str]:
    """(tags, notes, group, job_type from a header, what was refused): a header is a file anyone can write, so
    each is checked as init checks it (record.runmeta); one that fails is left out and said why."""
    meta: dict = {"tags": [], "notes": None, "group": None, "job_type": None}
    refused = []
    checks = {
        "tags": lambda v: list(runmeta.check_tags("tags", v)),
        "notes": lambda v: None if v is None else runmeta.check_text("notes", v, runmeta.MAX_NOTES, what="notes"),
        "group": lambda v: runmeta.check_label("group", v, what="group"),
        "job_type": lambda v: runmeta.check_label("job_type", v, what="job_type"),
    }
    for key, check in checks.items():
        try:
            meta[key] = check(h.get(key))
        except (TypeError, ValueError) as exc:
            refused.append(f"{key} left out ({exc})")
    return meta, "; ".join(refused)


@dataclass(eq=False)
class _File:
    """One log file to read: where it is, and what the store has committed of it so far."""

    run_id: str
    path: Path
    rel: str
    st: object  # os.stat_result at the start of this ingest
    offset: int = 0  # committed: everything before it is in the store
    lines: int = 0
    malformed: int = 0
    examples: list = field(default_factory=list)
    done: bool = False  # nothing more to read in this ingest (its end, or an error)

    def __post_init__(self):
        self.rank = layout.rank_of(self.path)
        self.segment_id = self.path.parent.name if self.rank is not None else None


@dataclass(eq=False)
class _Chunk:
    """Whole lines of one file from its committed offset, parsed, waiting for their transaction."""

    file: _File
    lines: list
    new_offset: int
    batch: _Batch


def _parse(f: _File, lines: list, refused: dict | None = None, window: tuple | None = None) -> _Batch:
    batch = _Batch(f.run_id, f.segment_id, f.rank, f.lines, f.st.st_mtime, refused=refused)
    batch.window = window
    for line in lines:
        batch.add(line)
    batch.finish()
    return batch


def _ingest_files(cur, work: list, report: IngestReport, bar, chunk_bytes: int) -> None:
    """Read every file's new lines, committing many files' chunks (up to ~chunk_bytes in all) per transaction.

    A transaction holds at most one chunk per file, and each file's rows with its new offset, so a kill
    keeps every file's rows and offset together (exactly once), however many files share it. A fleet run
    has a thousand small rank files: one transaction each cost ~50 ms of DuckDB bookkeeping (a commit, a
    dozen small statements), most of the time of the whole ingest. If the store refuses the shared
    transaction, each chunk is tried again on its own, where a refused line is found by bisection."""
    queue = deque()
    for f in work:
        report.files += 1
        if f.st.st_size < f.offset:
            report.errors.append(f"{f.run_id}/{f.rel}: the file shrank since it was ingested; it is no longer read")
        else:
            queue.append(f)
    group: list[_Chunk] = []
    pending = 0
    while queue:
        f = queue.popleft()
        if any(c.file is f for c in group):  # its next chunk starts where the pending one ends: commit that first
            _commit(cur, group, report, bar)
            group, pending = [], 0
        if f.done:
            continue
        try:
            data, new_offset = records.read_complete(f.path, f.offset, chunk_bytes)
        except OSError as exc:
            report.errors.append(f"{f.run_id}/{f.rel}: cannot read: {exc}")
            continue
        lines = data.split(b"\n")[:-1]
        group.append(_Chunk(f, lines, new_offset, _parse(f, lines)))
        pending += new_offset - f.offset
        if new_offset != f.offset and new_offset < f.st.st_size:
            queue.appendleft(f)  # more of it: next, after this chunk is committed
        if pending >= chunk_bytes:
            _commit(cur, group, report, bar)
            group, pending = [], 0
    if group:
        _commit(cur, group, report, bar)


def _commit(cur, group: list, report: IngestReport, bar) -> None:
    """Store `group`'s chunks and their files' new offsets in one transaction (each on its own if refused)."""
    cur.execute("BEGIN TRANSACTION")
    try:
        _flush(cur, [c.batch for c in group])
        _record_files(cur, group)
        cur.execute("COMMIT")
    except (duckdb.Error, pa.ArrowException):
        cur.execute("ROLLBACK")
        for c in group:  # find whose chunk it is, and keep the others flowing
            _commit_one(cur, c, report, bar)
        return
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    for c in group:
        _committed(c, report, bar)


def _commit_one(cur, c: _Chunk, report: IngestReport, bar) -> None:
    f = c.file
    cur.execute("BEGIN TRANSACTION")
    try:
        try:
            _flush(cur, [c.batch])
        except _REFUSED:  # a value the checks let through, refused by the store
            cur.execute("ROLLBACK")
            c.batch = _parse(f, c.lines, refused=_refused_lines(cur, c))
            cur.execute("BEGIN TRANSACTION")
            _flush(cur, [c.batch])
        _record_files(cur, [c])
        cur.execute("COMMIT")
    except (duckdb.Error, pa.ArrowException) as exc:  # keep the other files flowing; retried next time
        cur.execute("ROLLBACK")
        report.errors.append(f"{f.run_id}/{f.rel}: could not store the chunk at byte {f.offset}: {exc}")
        f.done = True
        return
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    _committed(c, report, bar)


def _record_files(cur, group: list) -> None:
    """The files' new offsets, line counts and malformed examples (`ingest_files`), in the caller's transaction."""
    cols: dict[str, list] = {k: [] for k in ("run_id", "rel_path", "byte_offset", "lines", "malformed", "size")}
    cols.update(mtime=[], examples=[])
    for c in group:
        f, b = c.file, c.batch
        cols["run_id"].append(f.run_id)
        cols["rel_path"].append(f.rel)
        cols["byte_offset"].append(c.new_offset)
        cols["lines"].append(f.lines + b.lines)
        cols["malformed"].append(f.malformed + b.malformed)
        cols["size"].append(f.st.st_size if c.new_offset >= f.st.st_size else None)
        cols["mtime"].append(f.st.st_mtime)
        cols["examples"].append(json.dumps((f.examples + [list(e) for e in b.examples])[:MAX_EXAMPLES]))
    types = {"byte_offset": pa.int64(), "lines": pa.int64(), "malformed": pa.int64(), "size": pa.int64()}
    table = pa.table({k: pa.array(v, types.get(k)) for k, v in cols.items()})
    _insert(cur, "_mf_files", table, [], "INSERT OR REPLACE INTO ingest_files SELECT * FROM _mf_files")


def _committed(c: _Chunk, report: IngestReport, bar) -> None:
    f, b = c.file, c.batch
    n = c.new_offset - f.offset
    f.examples = (f.examples + [list(e) for e in b.examples])[:MAX_EXAMPLES]
    f.offset, f.lines, f.malformed = c.new_offset, f.lines + b.lines, f.malformed + b.malformed
    report.bytes += n
    report.records += b.lines - b.malformed
    report.metric_points += b.points
    report.telemetry_points += b.t_points
    report.malformed += b.malformed
    report.examples.extend((f.run_id, f.rel, *e) for e in b.examples)
    if bar is not None:
        bar.update(n)
    if n == 0 or c.new_offset >= f.st.st_size:
        f.done = True


# What the store (or Arrow, building its columns) raises for a value it cannot hold: a data problem of
# some line, unlike an I/O or lock error, which is no line's fault and is retried whole next time.
_REFUSED = (duckdb.DataError, duckdb.IntegrityError, pa.ArrowInvalid)


def _refusal(cur, batch: _Batch) -> str | None:
    """Why the store refuses `batch` (tried in a transaction that is rolled back), or None if it takes it."""
    cur.execute("BEGIN TRANSACTION")
    try:
        _flush(cur, [batch])
    except _REFUSED as exc:
        return f"the store refused it: {str(exc).splitlines()[0][:160]}"
    finally:
        cur.execute("ROLLBACK")
    return None


def _refused_lines(cur, c: _Chunk) -> dict[int, str]:
    """{index in chunk: why} of the lines the store refuses, found by bisection.

    Every line is checked before it reaches DuckDB, so this runs only if a check is missing. Then
    the chunk is not retried (and refused) forever with all its good lines: the refused lines are
    found in O(bad lines x log lines) trial inserts, each rolled back, and counted as malformed,
    and the rest are stored in one transaction with the offset as always (exactly once holds)."""
    refused: dict[int, str] = {}

    def trial(lo: int, hi: int) -> None:
        why = _refusal(cur, _parse(c.file, c.lines, window=(lo, hi)))
        if why is None:
            return
        if hi - lo == 1:
            refused[lo] = why
            return
        mid = (lo + hi) // 2
        trial(lo, mid)
        trial(mid, hi)

    trial(0, len(c.lines))
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
        self.m_pending: dict[tuple, list] = {}  # names -> [(line no, line, record)]: checked together in finish
        self.step_lo = self.step_hi = None  # the metrics steps' range (set by finish)
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
            kind = rec["k"]
            if kind == records.METRICS and self.rank is not None and "nonfinite" not in rec:
                # The common record: set aside, checked with every other record of its names at once (finish)
                names, rows = rec["names"], rec["rows"]
                if type(names) is list and type(rows) is list and rows:
                    key = tuple(names)  # unhashable names -> TypeError -> malformed
                    pending = self.m_pending.get(key)
                    if pending is None:
                        if key not in self.m_ids and (not key or not all(isinstance(n, str) for n in key)):
                            raise ValueError("metrics block has no names, or a name that is not text")
                        pending = self.m_pending[key] = []
                    pending.append((self.line_no, line, rec))
                    return
            handler = _HANDLERS.get((kind, self.rank is not None))
            if handler is None:
                raise ValueError(f"unexpected record kind {kind!r} in this file")
            handler(self, rec)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            self._reject(line, str(exc)[:200] or type(exc).__name__)

    def finish(self) -> None:
        """Check and take the metrics records set aside by `add`: per name set, all rows in one array.

        Every row of every record must be [step, wall_time, one number per name] with a step by the rule;
        if any is not, the name set's records are taken one by one (`_metrics`), which rejects exactly
        the lines at fault, with their reasons. The same checks as `_metrics`, once per chunk, not per line."""
        for key, pending in self.m_pending.items():
            try:
                rows = [row for _, _, rec in pending for row in rec["rows"]]
                arr = np.asarray(rows, dtype=np.float64)
                ok = arr.ndim == 2 and arr.shape[1] == len(key) + 2
                if ok:
                    col = arr[:, 0]
                    ok = bool(((col >= 0) & (col < _EXACT_IN_FLOAT) & (col == np.floor(col))).all())
            except (ValueError, TypeError, OverflowError):
                ok = False
            if ok:
                if key not in self.m_ids:
                    self.m_ids[key] = np.array([self.names.setdefault(n, len(self.names)) for n in key], np.int32)
                self.m_blocks.setdefault(key, []).append(arr)
                self.m_steps.setdefault(key, []).append(arr[:, 0].astype(np.int64))
                self.points += arr.shape[0] * len(key)
                continue
            for line_no, line, rec in pending:  # one at a time: find the lines at fault
                try:
                    self._metrics(rec)
                except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
                    self._reject(line, str(exc)[:200] or type(exc).__name__, line_no)
        self.m_pending = {}
        self.examples.sort()
        if self.points:
            lo = [int(s.min()) for steps in self.m_steps.values() for s in steps if len(s)]
            hi = [int(s.max()) for steps in self.m_steps.values() for s in steps if len(s)]
            self.step_lo, self.step_hi = (min(lo), max(hi)) if lo else (None, None)

    def _reject(self, line: bytes, why: str, line_no: int | None = None) -> None:
        """Count a malformed line; keep the MAX_EXAMPLES earliest as examples (lines set aside come late)."""
        self.malformed += 1
        example = (self.line_no if line_no is None else line_no, why, line[:120].decode("utf-8", "replace"))
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)
        else:
            last = max(range(MAX_EXAMPLES), key=lambda i: self.examples[i][0])
            if example[0] < self.examples[last][0]:
                self.examples[last] = example

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

    def _telemetry_samples(self) -> list:
        """This chunk's telemetry as `telemetry_blocks` rows: one per device, name set and aligned span of
        schema.TELEMETRY_BLOCK_SECONDS, its ticks in time order. [(names, device id, wall times [n], steps [n],
        has step [n], values [K * n] name-major, present or None, first and last finite wall time)].
        A device with no value at all (a silent GPU) has no row; an absent value of a present device is NULL."""
        out = []
        for (devices, names), blocks in self.t_blocks.items():
            walls = np.concatenate([b[0] for b in blocks])
            arr = np.concatenate([b[1] for b in blocks])
            present = None
            if any(b[2] is not None for b in blocks):
                present = np.concatenate([np.ones(b[1][:, 2:].shape, bool) if b[2] is None else b[2] for b in blocks])
            if len(walls) > 1 and not (walls[1:] >= walls[:-1]).all():
                order = np.argsort(walls, kind="stable")  # time order: what compresses (a NaN time sorts last)
                walls, arr = walls[order], arr[order]
                present = present[order] if present is not None else None
            k = len(names)
            steps = arr[:, 1]
            has_step = ~np.isnan(steps)
            steps = np.where(has_step, steps, 0).astype(np.int64)
            finite = np.isfinite(walls)
            span = np.where(finite, np.floor(walls / schema.TELEMETRY_BLOCK_SECONDS), np.inf)
            cuts = np.r_[0, np.flatnonzero(span[1:] != span[:-1]) + 1, len(walls)]
            for a, z in zip(cuts[:-1], cuts[1:]):  # one block per aligned span (schema.TELEMETRY_BLOCK_SECONDS)
                w = walls[a:z][finite[a:z]]
                t_lo, t_hi = (float(w[0]), float(w[-1])) if len(w) else (None, None)
                for d, device in enumerate(devices):
                    vals = arr[a:z, 2 + d * k : 2 + (d + 1) * k]
                    pres = None
                    if present is not None:
                        pres = present[a:z, d * k : (d + 1) * k]
                        if not pres.any():
                            continue
                        pres = None if pres.all() else pres.T.reshape(-1)
                    dev = self.devices.setdefault(device, len(self.devices))
                    out.append(
                        (names, dev, walls[a:z], steps[a:z], has_step[a:z], vals.T.reshape(-1), pres, t_lo, t_hi)
                    )
        return out

    def _telemetry_tiles(self) -> list:
        """The M4 summary of this chunk's telemetry per device, name and tile of each width, computed here.

        One pass of numpy reductions over each block's [ticks, devices x names] array (reduceat over the
        ticks of a tile, every column at once), not an aggregate over one row per point: the same rows the
        SQL aggregate gave (n, and the first, last, lowest and highest non-NaN and first NaN sample), at a
        tenth of its cost. Ties (two samples at one time or with one value) go to the earliest sample.
        Returns [(width, tile, device ids, name ids, n, {part: (t, step, has step, value, valid)})]."""
        out = []
        for (devices, names), blocks in self.t_blocks.items():
            walls = np.concatenate([b[0] for b in blocks])
            arr = np.concatenate([b[1] for b in blocks])
            pres = None
            if any(b[2] is not None for b in blocks):
                pres = np.concatenate([np.ones(b[1][:, 2:].shape, bool) if b[2] is None else b[2] for b in blocks])
            keep = np.isfinite(walls)  # a sample without a wall time has no tile (it stays in the raw rows)
            order = np.argsort(np.where(keep, walls, np.inf), kind="stable")[: int(keep.sum())]
            if not len(order):
                continue
            walls, arr = walls[order], arr[order]
            pres = pres[order] if pres is not None else np.ones((len(order), arr.shape[1] - 2), bool)
            steps = arr[:, 1]
            has_step = ~np.isnan(steps)
            steps = np.where(has_step, steps, 0).astype(np.int64)
            vals = arr[:, 2:]
            k = len(names)
            dev_ids = np.array([self.devices.setdefault(d, len(self.devices)) for d in devices], dtype=np.int32)
            name_ids = np.array([self.names.setdefault(nm, len(self.names)) for nm in names], dtype=np.int32)
            col_dev, col_name = np.repeat(dev_ids, k), np.tile(name_ids, len(devices))
            rows = len(walls)
            idx = np.arange(rows)[:, None]
            v = np.where(pres, vals, np.nan)  # an absent sample is no candidate for anything
            isnan = pres & np.isnan(vals)
            for width in schema.TELEMETRY_TILES:
                tile = np.floor(walls / width).astype(np.int64)
                starts = np.flatnonzero(np.r_[True, tile[1:] != tile[:-1]])
                seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, rows]))
                n = np.add.reduceat(pres, starts, axis=0)
                first = np.minimum.reduceat(np.where(pres, idx, rows), starts, axis=0)
                last = np.maximum.reduceat(np.where(pres, idx, -1), starts, axis=0)
                with np.errstate(invalid="ignore"):
                    vmin = np.fmin.reduceat(v, starts, axis=0)  # NaN where a tile has no non-NaN value
                    vmax = np.fmax.reduceat(v, starts, axis=0)
                    imin = np.minimum.reduceat(np.where(v == vmin[seg], idx, rows), starts, axis=0)
                    imax = np.minimum.reduceat(np.where(v == vmax[seg], idx, rows), starts, axis=0)
                inan = np.minimum.reduceat(np.where(isnan, idx, rows), starts, axis=0)
                ti, j = np.nonzero(n)
                parts = {}
                for part, pick in (
                    ("p_first", first),
                    ("p_last", last),
                    ("p_min", imin),
                    ("p_max", imax),
                    ("p_nan", inan),
                ):
                    i = pick[ti, j]
                    valid = (i >= 0) & (i < rows)
                    i = np.where(valid, i, 0)
                    parts[part] = (walls[i], steps[i], has_step[i], vals[i, j], valid)
                out.append((width, tile[starts][ti], col_dev[j], col_name[j], n[ti, j].astype(np.int64), parts))
        return out

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


def _flush(cur, batches: list) -> None:
    """Insert the rows of `batches` (chunks of one or many files) in one go: a few statements in all."""
    ranked = [b for b in batches if b.rank is not None]
    if ranked:
        _flush_rank_logs(cur, ranked)
    runs: dict[str, int] = {}
    segs: dict[str, int] = {}
    m_parts, t_parts, e_parts, tile_parts = [], [], [], []
    names: dict[str, int] = {}
    devices: dict[str, int] = {}
    for b in ranked:
        r, s = runs.setdefault(b.run_id, len(runs)), segs.setdefault(b.segment_id, len(segs))
        if b.points:
            steps, ids, values, walls = b._metric_columns()
            remap = np.array([names.setdefault(n, len(names)) for n in b.names], dtype=np.int32)
            m_parts.append((r, s, b.rank, steps, remap[ids], values, walls))
        if b.t_points:
            samples = b._telemetry_samples()
            dremap = np.array([devices.setdefault(d, len(devices)) for d in b.devices], dtype=np.int32)
            for nms, dev, wall, step, has_step, value, present, t_lo, t_hi in samples:
                t_parts.append((r, s, b.rank, dremap[dev], nms, wall, step, has_step, value, present, t_lo, t_hi))
            for width, tile, tdev, tname, n, parts in b._telemetry_tiles():
                remap = np.array([names.setdefault(x, len(names)) for x in b.names], dtype=np.int32)
                dremap = np.array([devices.setdefault(d, len(devices)) for d in b.devices], dtype=np.int32)
                tile_parts.append((r, s, b.rank, width, tile, dremap[tdev], remap[tname], n, parts))
        if b.events:
            e_parts.append((r, s, b.rank, b.events))
    run_list, seg_list, name_list = list(runs), list(segs), list(names)

    def keys(parts, n_of) -> dict:
        n = [n_of(p) for p in parts]
        return {
            "run_id": pa.DictionaryArray.from_arrays(np.repeat([p[0] for p in parts], n).astype(np.int32), run_list),
            "segment_id": pa.DictionaryArray.from_arrays(
                np.repeat([p[1] for p in parts], n).astype(np.int32), seg_list
            ),
            "rank": np.repeat(np.array([p[2] for p in parts], dtype=np.int32), n),
        }

    if m_parts:
        cols = keys(m_parts, lambda p: len(p[3]))
        cols.update(
            step=np.concatenate([p[3] for p in m_parts]),
            name=pa.DictionaryArray.from_arrays(np.concatenate([p[4] for p in m_parts]), name_list),
            value=np.concatenate([p[5] for p in m_parts]),
            wall_time=np.concatenate([p[6] for p in m_parts]),
        )
        _insert(cur, "_mf_metrics", pa.table(cols), [], _METRICS_SQL, _TILES_SQL)
    if t_parts:
        names_ids = _names_ids(cur, {p[4] for p in t_parts})
        cols = keys(t_parts, lambda p: 1)
        ticks = np.r_[np.int32(0), np.cumsum([len(p[5]) for p in t_parts], dtype=np.int32)]
        points = np.r_[np.int32(0), np.cumsum([len(p[8]) for p in t_parts], dtype=np.int32)]
        present = None
        if any(p[9] is not None for p in t_parts):
            present = np.concatenate([np.ones(len(p[8]), bool) if p[9] is None else p[9] for p in t_parts])
        has_step = np.concatenate([p[7] for p in t_parts])
        cols.update(
            device=pa.DictionaryArray.from_arrays(np.array([p[3] for p in t_parts], np.int32), list(devices)),
            names_id=pa.array([names_ids[p[4]] for p in t_parts], pa.int32()),
            t_lo=pa.array([p[10] for p in t_parts], pa.float64()),
            t_hi=pa.array([p[11] for p in t_parts], pa.float64()),
            wall_times=pa.ListArray.from_arrays(pa.array(ticks), pa.array(np.concatenate([p[5] for p in t_parts]))),
            steps=pa.ListArray.from_arrays(
                pa.array(ticks), pa.array(np.concatenate([p[6] for p in t_parts]), pa.int64(), mask=~has_step)
            ),
            vals=pa.ListArray.from_arrays(
                pa.array(points),
                pa.array(
                    np.concatenate([p[8] for p in t_parts]), pa.float64(), mask=None if present is None else ~present
                ),
            ),
        )
        _insert(cur, "_mf_tel", pa.table(cols), [], _TELEMETRY_SQL)
    if tile_parts:
        cols = keys(tile_parts, lambda p: len(p[4]))
        cols.update(
            device=pa.DictionaryArray.from_arrays(np.concatenate([p[5] for p in tile_parts]), list(devices)),
            name=pa.DictionaryArray.from_arrays(np.concatenate([p[6] for p in tile_parts]), name_list),
            width=np.concatenate([np.full(len(p[4]), p[3], np.int32) for p in tile_parts]),
            tile=np.concatenate([p[4] for p in tile_parts]),
            n=np.concatenate([p[7] for p in tile_parts]),
        )
        for part in ("p_first", "p_last", "p_min", "p_max", "p_nan"):
            t, st, has, v, valid = (np.concatenate(c) for c in zip(*(p[8][part] for p in tile_parts)))
            cols[part] = pa.StructArray.from_arrays(
                [pa.array(t), pa.array(st, pa.int64(), mask=~has), pa.array(v)],
                names=["t", "step", "value"],
                mask=pa.array(~valid),
            )
        key = [np.concatenate([np.full(len(p[4]), p[i]) for p in tile_parts]) for i in (0, 1, 2)]
        key += [
            cols["width"],
            cols["tile"],
            np.concatenate([p[5] for p in tile_parts]),
            np.concatenate([p[6] for p in tile_parts]),
        ]
        order = np.lexsort(key)
        unique = not (len(order) > 1 and np.logical_and.reduce([np.diff(k[order]) == 0 for k in key]).any())
        # unique keys (the rule: a chunk holds one file, and a device's name appears in one name set of it):
        # merge only the tiles an earlier chunk began, and insert the rest as they are
        _insert(cur, "_mf_ttiles", pa.table(cols), [], *(_TEL_TILES_FAST if unique else [_TEL_TILES_SQL]))
    if e_parts:
        cols = keys(e_parts, lambda p: len(p[3]))
        ev = [e for p in e_parts for e in p[3]]
        cols.update(
            step=pa.array([e[0] for e in ev], pa.int64()),
            wall_time=pa.array([e[1] for e in ev], pa.float64()),
            kind=pa.array([e[2] for e in ev], pa.string()),
            fields=pa.array([e[3] for e in ev], pa.string()),
        )
        _insert(cur, "_mf_events", pa.table(cols), [], _EVENTS_SQL)
    for b in batches:
        for op in b.annotation_ops:
            cur.execute("INSERT INTO annotation_ops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [b.run_id, *op])
        for op in b.intervention_ops:
            cur.execute("INSERT INTO intervention_ops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [b.run_id, *op])


def _flush_rank_logs(cur, ranked: list) -> None:
    """segments and rank_logs for the rank files of `ranked`: a handful of set-wise statements.

    The same outcome as applying each file's records in order: a segment's start time, world size and
    host come from the first `open` that has them (a header's win), a rank's open and close fields from
    its last `open` and `close`, and its step range grows to cover its metrics and its close's last step."""
    key_cols = {
        "run_id": [b.run_id for b in ranked],
        "segment_id": [b.segment_id for b in ranked],
        "rank": pa.array([b.rank for b in ranked], pa.int32()),
    }
    lo, hi = [], []
    for b in ranked:
        lo.append(b.step_lo)
        last = b.close[-1] if b.close is not None else None
        hi.append(b.step_hi if last is None else last if b.step_hi is None else max(b.step_hi, last))
    table = pa.table(
        {**key_cols, "mtime": pa.array([b.mtime for b in ranked], pa.float64()),
         "lo": pa.array(lo, pa.int64()), "hi": pa.array(hi, pa.int64())}
    )  # fmt: skip
    _insert(cur, "_mf_keys", table, [], *_RANK_LOG_SQL)
    opens = [(i, b, o) for i, b in enumerate(ranked) for o in b.opens]
    if opens:
        o = list(zip(*[(i, *op) for i, _, op in opens]))
        table = pa.table(
            {
                "ord": pa.array(range(len(opens)), pa.int64()),
                "run_id": [b.run_id for _, b, _ in opens],
                "segment_id": [b.segment_id for _, b, _ in opens],
                "rank": pa.array([b.rank for _, b, _ in opens], pa.int32()),
                "t": pa.array(o[1], pa.float64()),
                "world": pa.array(o[2], pa.int32()),
                "host": pa.array(o[3], pa.string()),
                "pid": pa.array(o[4], pa.int32()),
                "local_rank": pa.array(o[5], pa.int32()),
            }
        )
        _insert(cur, "_mf_opens", table, [], *_OPEN_SQL)
    closes = [b for b in ranked if b.close is not None]
    if closes:
        c = list(zip(*[b.close for b in closes]))
        table = pa.table(
            {
                "run_id": [b.run_id for b in closes],
                "segment_id": [b.segment_id for b in closes],
                "rank": pa.array([b.rank for b in closes], pa.int32()),
                "t": pa.array(c[0], pa.float64()),
                "reason": pa.array(c[1], pa.string()),
                "exit_code": pa.array(c[2], pa.int32()),
                "error": pa.array(c[3], pa.string()),
                "dropped_records": pa.array(c[4], pa.int64()),
                "write_errors": pa.array(c[5], pa.int64()),
            }
        )
        _insert(cur, "_mf_closes", table, [], _CLOSE_SQL)


_KEY_MATCH = "r.run_id = k.run_id AND r.segment_id = k.segment_id AND r.rank = k.rank"
_RANK_LOG_SQL = [
    "INSERT OR IGNORE INTO segments (run_id, segment_id, config, config_diff, has_header) "
    "SELECT DISTINCT run_id, segment_id, '{}', '{}', false FROM _mf_keys",
    "INSERT OR IGNORE INTO rank_logs (run_id, segment_id, rank) SELECT run_id, segment_id, rank FROM _mf_keys",
    # lo NULL: only the last step is known (a close record's), so first_step stays as it is
    "UPDATE rank_logs r SET last_write = k.mtime, first_step = least(coalesce(r.first_step, k.lo), k.lo), "
    f"last_step = greatest(coalesce(r.last_step, k.hi), k.hi) FROM _mf_keys k WHERE {_KEY_MATCH}",
]
_OPEN_SQL = [
    "UPDATE segments r SET start_time = coalesce(r.start_time, k.t), world_size = coalesce(r.world_size, k.world), "
    "host = coalesce(r.host, k.host) FROM (SELECT run_id, segment_id, "
    "arg_min(t, ord) FILTER (t IS NOT NULL) AS t, arg_min(world, ord) FILTER (world IS NOT NULL) AS world, "
    "arg_min(host, ord) FILTER (host IS NOT NULL) AS host FROM _mf_opens GROUP BY run_id, segment_id) k "
    "WHERE r.run_id = k.run_id AND r.segment_id = k.segment_id",
    "UPDATE rank_logs r SET host = k.host, pid = k.pid, local_rank = k.local_rank, world_size = k.world, "
    "open_time = k.t FROM (SELECT * FROM _mf_opens QUALIFY row_number() OVER "
    f"(PARTITION BY run_id, segment_id, rank ORDER BY ord DESC) = 1) k WHERE {_KEY_MATCH}",
]
_CLOSE_SQL = (
    "UPDATE rank_logs r SET close_time = k.t, end_reason = k.reason, exit_code = k.exit_code, error = k.error, "
    f"dropped_records = k.dropped_records, write_errors = k.write_errors FROM _mf_closes k WHERE {_KEY_MATCH}"
)
_METRICS_SQL = (
    "INSERT INTO metrics SELECT run_id::VARCHAR, segment_id::VARCHAR, rank, step, name::VARCHAR, value, wall_time "
    "FROM _mf_metrics"
)
_TELEMETRY_SQL = (
    "INSERT INTO telemetry_blocks SELECT run_id::VARCHAR, segment_id::VARCHAR, rank, device::VARCHAR, names_id, "
    "t_lo, t_hi, wall_times, steps, vals FROM _mf_tel"
)


def _names_ids(cur, name_sets: set) -> dict:
    """{names tuple: names_id} in `telemetry_names`, adding the sets it lacks (in the caller's transaction)."""
    known = {tuple(names): i for i, names in cur.execute("SELECT names_id, names FROM telemetry_names").fetchall()}
    new = [names for names in name_sets if names not in known]
    if new:
        first = max(known.values(), default=0) + 1
        rows = [(first + i, list(names)) for i, names in enumerate(new)]
        cur.executemany("INSERT INTO telemetry_names VALUES (?, ?)", rows)
        known.update((names, first + i) for i, names in enumerate(new))
    return known


_EVENTS_SQL = (
    "INSERT INTO events SELECT run_id::VARCHAR, segment_id::VARCHAR, rank, step, wall_time, kind, fields::JSON "
    "FROM _mf_events"
)


# Fold this chunk's points into the per-tile M4 summaries, merging with tiles that earlier chunks began.
_TILES_SQL = f"""
INSERT OR REPLACE INTO metric_tiles
WITH pts AS (SELECT run_id::VARCHAR AS run_id, segment_id::VARCHAR AS segment_id, rank, name::VARCHAR AS name,
                    step >> {schema.TILE_SHIFT} AS tile, step, value, {{'step': step, 'value': value}} AS p
             FROM _mf_metrics),
new AS (SELECT run_id, segment_id, rank, name, tile, count(*) AS n,
               arg_min(p, step) AS p_first, arg_max(p, step) AS p_last,
               arg_min(p, value) FILTER (NOT isnan(value)) AS p_min,
               arg_max(p, value) FILTER (NOT isnan(value)) AS p_max,
               arg_min(p, step) FILTER (isnan(value)) AS p_nan
        FROM pts GROUP BY run_id, segment_id, rank, name, tile),
merged AS (SELECT * FROM new
         UNION ALL BY NAME
         SELECT t.* FROM metric_tiles t SEMI JOIN new USING (run_id, segment_id, rank, name, tile))
SELECT run_id, segment_id, rank, name, tile, sum(n),
       arg_min(p_first, p_first.step), arg_max(p_last, p_last.step),
       arg_min(p_min, p_min.value), arg_max(p_max, p_max.value), arg_min(p_nan, p_nan.step)
FROM merged GROUP BY run_id, segment_id, rank, name, tile
"""

# The same for telemetry: the chunk's tiles (computed in numpy, _Batch._telemetry_tiles) merged with tiles that
# earlier chunks began. A point without a wall time (an old record's null) has no tile; it stays in the raw rows.
_TEL_TILES_SQL = """
INSERT OR REPLACE INTO telemetry_tiles
WITH new AS (SELECT run_id::VARCHAR AS run_id, segment_id::VARCHAR AS segment_id, rank, device::VARCHAR AS device,
                    name::VARCHAR AS name, width, tile, n, p_first, p_last, p_min, p_max, p_nan FROM _mf_ttiles),
merged AS (SELECT * FROM new
         UNION ALL BY NAME
         SELECT t.* FROM telemetry_tiles t SEMI JOIN new USING (run_id, segment_id, rank, device, name, width, tile))
SELECT run_id, segment_id, rank, device, name, width, tile, sum(n),
       arg_min(p_first, p_first.t), arg_max(p_last, p_last.t),
       arg_min(p_min, p_min.value), arg_max(p_max, p_max.value), arg_min(p_nan, p_nan.t)
FROM merged GROUP BY run_id, segment_id, rank, device, name, width, tile
"""

_TEL_KEY = "run_id, segment_id, rank, device, name, width, tile"
_TEL_TILES_FAST = [
    "CREATE OR REPLACE TEMP TABLE _mf_tt AS SELECT run_id::VARCHAR AS run_id, segment_id::VARCHAR AS segment_id, "
    "rank, device::VARCHAR AS device, name::VARCHAR AS name, width, tile, n, p_first, p_last, p_min, p_max, p_nan "
    "FROM _mf_ttiles",
    _TEL_TILES_SQL.replace("FROM _mf_ttiles)", f"FROM _mf_tt SEMI JOIN telemetry_tiles USING ({_TEL_KEY}))"),
    f"INSERT INTO telemetry_tiles SELECT * FROM _mf_tt ANTI JOIN telemetry_tiles USING ({_TEL_KEY})",
    "DROP TABLE _mf_tt",
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
    from midflight.logbook.store.database import open_store

    runs = layout.discover_runs(path)
    store = open_store(store_path or layout.default_store_path(path))
    return store, ingest(store, runs, progress=progress, seal=True)
