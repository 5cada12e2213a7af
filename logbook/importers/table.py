"""CSV tables: W&B history exports and generic wide or long tables.

Many runs survive only as a table: W&B's history export (`run.history().to_csv()`),
or a CSV someone wrote from their own loop. The kind is told from the header:

- **wide**: a step column and one column per metric (W&B history is one: `_step`,
  `_runtime`, `_timestamp` and sparse metric columns). The step column is the first
  present of STEP_COLUMNS, so an explicit global step (`trainer/global_step`) is
  preferred over W&B's `_step`, which counts log calls, not training steps; the
  choice is noted in the report. `_step`, `_runtime` and `_wandb*` are never metrics,
  nor is an unnamed column (the index `run.history().to_csv()` writes first).
  Consecutive rows with the same step and different metrics (W&B's train and eval
  rows at one global step) merge into one step.
- **long**: a step column, a metric-name column (metric/name/key/tag) and `value`.

Cells: an empty cell is a missing value; `NaN`, `inf`, `-inf` are real non-finite
values and are kept. Non-numeric cells (text, W&B media) are skipped and their
columns named in a note. A time column (TIME_COLUMNS) holding Unix time (seconds; ms,
µs or ns told by magnitude) or an ISO datetime (read in the import's --tz unless it
carries an offset) becomes the wall time; numbers below 1e9 (before 2001-09-09) are
elapsed seconds, not a clock: a wide table keeps them as a metric under the column's
name. Values are taken as logged: a CSV does not say the loss's unit, so nothing is
converted.

A row whose step is not a non-negative integer, or with the wrong number of cells,
is counted as malformed with its line number (the header is line 1), never fatal.
Rows are yielded in file order; steps that go back start a new segment (the writer's
rule), so a wide table's rollbacks become restarts.

Long tables and restarts. A long table may be sorted by step or grouped by metric
(all `loss` rows, then all `lr` rows); in the second, the step column going back at
each new metric is not a restart. The rule: each metric's own series decides. A
metric's rows belong to segment k, where k counts how often *that metric's* step went
back; a metric seen for the first time belongs to the current (highest) segment when
the step column did not go back at that row (a table sorted by step), else to the
first segment (a new metric group). So a metric group that is itself monotone never
makes a restart, and a rollback inside each group (loss 0..99, 60..99, then lr
0..99, 60..99) still gives exactly two segments. Limit: in a table grouped by metric,
a metric that never goes back cannot tell which launch logged it and is placed in
the first segment. Grouping needs the whole table, so a long table's rows go through
a temporary SQLite file (stdlib) and are read back ordered by (segment, step, line):
memory stays bounded at any size, at the cost of writing the rows to a temp file once.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import sqlite3
import tempfile
from datetime import datetime

from midflight.logbook import values
from midflight.logbook.importers import names, reading
from midflight.logbook.importers.items import Context, Step

STEP_COLUMNS = (
    "trainer/global_step",
    "train/global_step",
    "global_step",
    "step",
    "iteration",
    "iter",
    "num_updates",
    "update",
    "_step",
)
TIME_COLUMNS = ("_timestamp", "timestamp", "wall_time", "walltime", "time")
NAME_COLUMNS = ("metric", "name", "key", "tag")
VALUE_COLUMN = "value"
DELIMITERS = (",", "\t", ";")
CLOCK_MIN = 1e9  # Unix seconds below this (2001-09-09) are elapsed time, not a wall clock
UNIT = "as logged (CSV import does not convert)"
BATCH = 10_000  # long-table rows per SQLite insert


def parse_path(path, ctx: Context):
    """Items from one CSV file (plain or gzip), streamed (see the module docstring)."""
    with reading.open_text(path) as f:
        try:
            first = f.readline()
        except reading.STREAM_ERRORS as exc:
            raise ValueError(f"{ctx.source}: unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
        if not first.strip():
            raise ValueError(f"{ctx.source}: no header line: a CSV table starts with its column names")
        delimiter = sniff_delimiter(first)
        reader = csv.reader(itertools.chain([first], f), delimiter=delimiter)
        try:
            header = next(reader)
        except csv.Error as exc:
            raise ValueError(f"{ctx.source}: unreadable header line: {exc}") from None
        if header:
            header[0] = header[0].lstrip("\ufeff")
        cols = _Columns(header, ctx, delimiter)
        rows = _rows(reader, len(header), delimiter, ctx)
        yield from (_long(rows, cols, ctx) if cols.long else _wide(rows, cols, ctx))
    cols.finish()


def sniff_delimiter(line: str) -> str:
    """The delimiter that splits the header into the most cells (comma on a tie)."""
    return max(DELIMITERS, key=lambda d: _cells(line, d))


def _cells(line: str, delimiter: str) -> int:
    try:
        return len(next(csv.reader([line], delimiter=delimiter)))
    except csv.Error:  # a cell over the csv module's 128 KiB limit: count the delimiters instead
        return line.count(delimiter) + 1


def _rows(reader, width: int, delimiter: str, ctx: Context):
    """(line_no, cells) of the data rows with the header's width; other rows are counted."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            ctx.report.lines += 1
            ctx.report.bad(ctx.source, reader.line_num, f"unreadable CSV row: {exc}", "")
            continue
        except reading.STREAM_ERRORS as exc:  # a damaged gzip stream: the rows before it are kept
            ctx.report.bad(ctx.source, reader.line_num + 1, f"unreadable from here on ({type(exc).__name__})", "")
            return
        ctx.report.lines += 1
        if not any(c.strip() for c in row):
            ctx.report.other_lines += 1  # a blank line
            continue
        if len(row) != width:
            ctx.report.bad(
                ctx.source, reader.line_num, f"{len(row)} cells where the header has {width}", delimiter.join(row)
            )
            continue
        yield reader.line_num, row


class _Columns:
    """What each column of a table is, from its header."""

    def __init__(self, header: list[str], ctx: Context, delimiter: str):
        self.ctx, self.delimiter = ctx, delimiter
        self.header = [h.strip() for h in header]
        keys = [names.key(h) for h in self.header]
        self.wandb = bool({"_step", "_runtime", "_timestamp"} & set(keys))
        self.step = _first(keys, STEP_COLUMNS)
        if self.step is None:
            raise ValueError(
                f"{ctx.source}: no step column: expected one of {', '.join(STEP_COLUMNS)} "
                f"(the header has {', '.join(map(repr, self.header[:12]))})"
            )
        self.time = _first(keys, TIME_COLUMNS)
        self.name = _first(keys, NAME_COLUMNS)
        self.value = _first(keys, (VALUE_COLUMN,))
        self.long = self.name is not None and self.value is not None
        self.text_cells: dict[str, int] = {}  # metric -> non-numeric cells skipped
        self.elapsed = 0  # time cells read as elapsed seconds
        self.has_loss = False
        self.unnamed: list[int] = []  # unnamed columns, not read
        used = {self.step, self.time}
        self.metrics: list[tuple[int, str]] = []  # (column, metric name) of a wide table
        if not self.long:
            sources = []
            for i, (h, k) in enumerate(zip(self.header, keys)):
                if i in used or k in ("_step", "_runtime") or k.startswith("_wandb"):
                    continue
                if not k or k.startswith("unnamed:"):
                    self.unnamed.append(i + 1)  # pandas' index (`df.to_csv()` writes it unnamed)
                    continue
                sources.append((i, h))
            unique = _unique([h for _, h in sources])
            mapped = names.Namer().assign(unique)
            self.metrics = [(i, mapped[u]) for (i, _), u in zip(sources, unique)]
            if not self.metrics:
                raise ValueError(f"{ctx.source}: no metric columns besides the step column {self.header[self.step]!r}")
            self._saw([m for _, m in self.metrics])
        self.time_name = self.header[self.time] if self.time is not None else None
        kind = "W&B history" if self.wandb else ("long" if self.long else "wide")
        why = ""
        if "_step" in keys and keys[self.step] != "_step":
            why = " (an explicit global step, preferred over W&B's _step)"
        time = f"; wall time from {self.time_name!r}" if self.time is not None else "; no time column"
        if self.long:
            ignored = [h for i, h in enumerate(self.header) if i not in (self.step, self.time, self.name, self.value)]
            time += f"; ignored columns {', '.join(map(repr, ignored))}" if ignored else ""
        ctx.report.notes.append(f"{ctx.source}: {kind} table, step column {self.header[self.step]!r}{why}{time}")

    def _saw(self, metric_names) -> None:
        if any(names.key(m).endswith("loss") for m in metric_names) and not self.has_loss:
            self.has_loss = True
            self.ctx.run_config.setdefault("units", {})["loss"] = UNIT

    def number(self, cell: str, metric: str) -> float | None:
        """The cell's value; None if it is empty or not a number (counted)."""
        s = cell.strip()
        if not s:
            return None
        try:
            return float(s)
        except ValueError:
            self.text_cells[metric] = self.text_cells.get(metric, 0) + 1
            return None

    def wall_time(self, row: list[str]) -> tuple[float | None, float | None]:
        """(Unix time, elapsed seconds) from the row's time cell; either may be None."""
        if self.time is None:
            return None, None
        s = row[self.time].strip()
        if not s:
            return None, None
        try:
            v = float(s)
        except ValueError:
            return _datetime(s, self.ctx.clock), None
        if not math.isfinite(v):
            return None, None
        if abs(v) < CLOCK_MIN:
            self.elapsed += 1
            return None, v
        for limit, scale in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):  # ns, µs, ms
            if v >= limit:
                return v / scale, None
        return v, None

    def finish(self) -> None:
        notes = self.ctx.report.notes
        if self.text_cells:
            cols = ", ".join(f"{k!r} ({n:,})" for k, n in sorted(self.text_cells.items()))
            notes.append(f"{self.ctx.source}: skipped non-numeric cells in {cols}")
        if self.unnamed:
            notes.append(f"{self.ctx.source}: ignored unnamed column(s) {self.unnamed} (a pandas index, not a metric)")
        if self.elapsed:
            kept = "ignored (a long table's time is only its wall clock)" if self.long else "kept as a metric"
            notes.append(
                f"{self.ctx.source}: {self.elapsed:,} {self.time_name!r} cells are below {CLOCK_MIN:.0e} "
                f"(before 2001): read as elapsed seconds, not wall time, and {kept}"
            )


def _first(keys: list[str], wanted) -> int | None:
    for w in wanted:
        if w in keys:
            return keys.index(w)
    return None


def _unique(headers: list[str]) -> list[str]:
    """Header names made unique (a repeated name gets ` (2)`, ...), so no column overwrites another."""
    seen: dict[str, int] = {}
    out = []
    for h in headers:
        n = seen.get(h, 0) + 1
        seen[h] = n
        out.append(h if n == 1 else f"{h} ({n})")
    return out


def _datetime(s: str, clock) -> float | None:
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return clock.find(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=clock.zone)
    return dt.timestamp()


def _step(cell: str) -> int:
    s = cell.strip()
    if not s:
        raise ValueError("empty step cell")
    return values.step(s)  # the one rule: an integer in [0, 2**63)


def _wide(rows, cols: _Columns, ctx: Context):
    pending: Step | None = None
    for line_no, row in rows:
        try:
            step = _step(row[cols.step])
        except ValueError as exc:
            ctx.report.bad(ctx.source, line_no, str(exc), cols.delimiter.join(row))
            continue
        t, elapsed = cols.wall_time(row)
        values = {}
        for i, metric in cols.metrics:
            v = cols.number(row[i], metric)
            if v is not None:
                values[metric] = v
        if elapsed is not None:
            values[cols.time_name] = elapsed
        if not values:
            ctx.report.other_lines += 1  # a row with no numbers (W&B media, a text-only log call)
            continue
        if pending is not None and pending.step == step and not (pending.values.keys() & values.keys()):
            pending.values.update(values)
            if pending.t is None:
                pending.t = t
            continue
        if pending is not None:
            yield pending
        pending = Step(step, values, t, line_no)
    if pending is not None:
        yield pending


def _long(rows, cols: _Columns, ctx: Context):
    with tempfile.TemporaryDirectory(prefix="midflight-csv-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "rows.sqlite"))
        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("CREATE TABLE r (seg INTEGER, step INTEGER, line INTEGER, name TEXT, v REAL, t REAL)")
            raw_names = _load_long(rows, cols, ctx, db)
            mapped = names.Namer().assign(raw_names)
            cols._saw(mapped.values())
            ordered = db.execute("SELECT seg, step, line, name, v, t FROM r ORDER BY seg, step, line")
            yield from _merge_long(ordered, mapped)
        finally:
            db.close()


def _load_long(rows, cols: _Columns, ctx: Context, db) -> list[str]:
    """Insert the rows with their segment (see the module docstring); the metric names, first seen first."""
    last: dict[str, tuple[int, int]] = {}  # metric -> (segment, last step)
    top = 0  # the highest segment so far
    prev = None  # the previous row's step
    batch = []
    for line_no, row in rows:
        try:
            step = _step(row[cols.step])
            name = row[cols.name].strip()
            if not name:
                raise ValueError("empty metric name")
        except ValueError as exc:
            ctx.report.bad(ctx.source, line_no, str(exc), cols.delimiter.join(row))
            continue
        v = cols.number(row[cols.value], name)
        t, _ = cols.wall_time(row)
        if v is None:
            ctx.report.other_lines += 1  # an empty (missing) or non-numeric value
            continue
        seen = last.get(name)
        if seen is None:
            seg = top if prev is None or step >= prev else 0
        else:
            seg = seen[0] + 1 if step < seen[1] else seen[0]
        last[name] = (seg, step)
        top = max(top, seg)
        prev = step
        batch.append((seg, step, line_no, name, v, t))
        if len(batch) >= BATCH:
            db.executemany("INSERT INTO r VALUES (?, ?, ?, ?, ?, ?)", batch)
            batch.clear()
    if batch:
        db.executemany("INSERT INTO r VALUES (?, ?, ?, ?, ?, ?)", batch)
    return list(last)


def _merge_long(cursor, mapped: dict[str, str]):
    """One Step per (segment, step); a metric repeated at one step starts another Step (no value is lost)."""
    pending: Step | None = None
    key = None
    for seg, step, line, name, v, t in cursor:
        metric = mapped[name]
        value = math.nan if v is None else v  # SQLite stores NaN as NULL; a missing value was never inserted
        if pending is None or (seg, step) != key or metric in pending.values:
            if pending is not None:
                yield pending
            pending, key = Step(step, {}, t, line), (seg, step)
        pending.values[metric] = value
        if pending.t is None:
            pending.t = t
    if pending is not None:
        yield pending
