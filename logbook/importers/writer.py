"""Writes parsed items as midflight segments: the one way an importer writes.

An imported run is an ordinary run directory: segment headers and rank logs in
the trainer's own record format, so ingest, queries, detection, lineage, the
dashboard and the exporters work on it unchanged (data flows one way: logs in,
DuckDB derived).

Segments. Each source file starts a new launch, and inside a file a launch ends
where its steps go back (a restart from an earlier checkpoint, or job logs
concatenated) or where the log says it loaded a checkpoint. A new segment's parent
is the latest segment that began at or before the step it resumed from, the rule
the trainer uses (logbook.record.segments.infer_parent).

Idempotent, crash-safe, and incremental. Output is a pure function of the source:
segment ids come from the source's path, and every step is its own record. A
re-import compares what it would write with what is on disk and writes nothing
when they match; when the source has grown (a job still running), the old output
is a prefix of the new and only the difference is appended, which ingest then reads
exactly once. An import killed half-way leaves a prefix too, so re-running it
completes it. A source that changed in place is refused (or rewritten with
`replace=True`), because the store cannot take back rows it already ingested.

All or nothing. Every step, resume step and event step goes through `logbook.values.step`
(integers in [0, 2**63)); an item outside it is a counted malformed line, never written.
An import that fails part-way (a parser's error, a full disk) is rolled back by `abort`:
files it created are removed and files it appended to are cut back to their old length,
so a failed import never leaves a half-written run that would show as "running".
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from midflight.logbook import values
from midflight.logbook.importers.items import Config, End, Event, ImportReport, Resume, Step
from midflight.logbook.record import layout, records, segments

NEG_INF = float("-inf")


class ImportConflict(ValueError):
    """The source changed in place since it was imported (not just grew)."""


def source_key(path: Path) -> str:
    """A segment-id prefix for a source: its file name (made path-safe) and a hash of where it lives."""
    path = Path(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("._-")[:40] or "log"
    digest = hashlib.sha1(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return f"{stem}-{digest}"


class _Out:
    """A file written so that the same content changes nothing and a longer one only appends."""

    def __init__(self, path: Path, report: ImportReport, what: str):
        self.path, self.report, self.what = path, report, what
        self.old = open(path, "rb") if path.exists() else None  # noqa: SIM115 - closed in close()
        self.size0 = path.stat().st_size if self.old is not None else None  # what `abort` restores
        self.f = None
        self.state = "unchanged" if self.old is not None else "new"

    def write(self, data: bytes) -> None:
        if self.f is None and self.old is not None:
            old = self.old.read(len(data))
            if old == data:
                return
            if not (data.startswith(old) and not self.old.read(1)):
                self._conflict()
            self.old.close()
            self.old = None
            data = data[len(old) :]
            self.state = "appended"
        if self.f is None:
            self.f = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self.f.write(data)
        if self.state == "appended":
            self.report.appended_bytes += len(data)
        else:
            self.report.new_bytes += len(data)

    def _conflict(self):
        raise ImportConflict(
            f"{self.what} was imported before from a different version of this source (it did not just grow). "
            "Import it into a new --run-dir, or pass --replace and then delete the store folder (.midflight) "
            "so it is rebuilt"
        )

    def close(self) -> None:
        if self.old is not None:
            longer = bool(self.old.read(1))
            self.old.close()
            self.old = None
            if longer:
                self._conflict()
            self.report.unchanged_files += 1
        if self.f is not None:
            self.f.close()
            self.f = None

    def abort(self) -> None:
        """Undo this import's writes: remove a file it created, cut an appended one back to its old length."""
        for f in (self.old, self.f):
            if f is not None:
                f.close()
        self.old = self.f = None
        if self.size0 is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists() and self.path.stat().st_size > self.size0:
            os.truncate(self.path, self.size0)


@dataclass
class _Seg:
    id: str
    source: Path
    reason: str
    first_line: int
    out: _Out
    parent: str | None = None
    placed: bool = False  # parent decided
    resume_step: int | None = None
    start_time: float | None = None
    first_step: int | None = None
    last_step: int | None = None
    last_line: int = 0
    end: End | None = None
    config: dict = field(default_factory=dict)


class RunWriter:
    """Writes one run directory from one or more sources, in order."""

    def __init__(
        self,
        run_dir: Path,
        sources: list[Path],
        *,
        fmt: str,
        name: str | None,
        report: ImportReport,
        replace: bool = False,
        tz: str = "UTC",
        config: dict | None = None,
        world_size: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.fmt, self.report, self.tz, self.world_size = fmt, report, tz, world_size
        self.name = name or self.run_dir.name
        self.base_config = config if config is not None else {}  # the parsers' run_config: read at finish
        self.keys = {Path(s): source_key(s) for s in sources}
        # what `abort` removes again: folders this import created, and every file it wrote or changed
        self.created_dirs = [d for d in (self.run_dir, self.run_dir / layout.SEGMENTS) if not d.exists()]
        self.outs: list[_Out] = []
        self.headers: dict[Path, bytes | None] = {}  # header path -> its bytes before this import
        (self.run_dir / layout.SEGMENTS).mkdir(parents=True, exist_ok=True)
        if replace:
            self._remove_previous()
        # segments of other sources already in the run: candidates for parents, in start order
        self.known: list[tuple[float, str]] = []
        ours = tuple(f"{k}-" for k in self.keys.values())
        for h in segments.existing_headers(self.run_dir):
            if not h["segment"].startswith(ours):
                self.known.append((_start_of(h), h["segment"]))
        self.segs: list[_Seg] = []

    def _remove_previous(self) -> None:
        root = self.run_dir / layout.SEGMENTS
        for key in self.keys.values():
            for d in root.glob(f"{key}-*"):
                if d.is_dir():
                    shutil.rmtree(d)
                    self.report.notes.append(
                        f"replaced {d.name}: delete the store folder (.midflight) so it is rebuilt without the old rows"
                    )

    # -- items
    def add_source(self, path: Path, items) -> None:
        path = Path(path)
        key = self.keys[path]
        self.report.sources += 1
        cur: _Seg | None = None
        pending: dict = {}
        count = 0

        def start(reason: str, line: int) -> _Seg:
            nonlocal cur, count
            if cur is not None:
                self._seal(cur)
            seg_id = f"{key}-{count:03d}"
            count += 1
            out = _Out(layout.rank_file(self.run_dir, seg_id, 0), self.report, f"{path.name} (segment {seg_id})")
            if not out.path.parent.exists():
                self.created_dirs.append(out.path.parent)
            out.path.parent.mkdir(parents=True, exist_ok=True)
            self.outs.append(out)
            cur = _Seg(seg_id, path, reason, line, out, config=dict(pending))
            pending.clear()
            self.segs.append(cur)
            return cur

        for item in items:
            if not self._valid(item, path):
                continue
            if isinstance(item, Step):
                if cur is None:
                    start(self._first_reason(path), item.line)
                elif cur.last_step is not None and item.step < cur.last_step:
                    start(
                        f"steps went back from {cur.last_step} to {item.step} at line {item.line} of {path.name}: "
                        "resumed from an earlier checkpoint",
                        item.line,
                    )
                self._step(cur, item)
            elif isinstance(item, Event):
                if cur is None:
                    start(self._first_reason(path), item.line)
                self._event(cur, item)
            elif isinstance(item, Resume):
                if cur is None or cur.first_step is not None or cur.resume_step is not None:
                    start(f"line {item.line} of {path.name}: {item.note}", item.line)
                else:
                    cur.reason = f"line {item.line} of {path.name}: {item.note}"
                cur.resume_step = item.step
                if item.t is not None and cur.start_time is None:
                    cur.start_time = item.t
                self._place(cur)
            elif isinstance(item, Config):
                if cur is not None and cur.first_step is None:
                    cur.config.update(item.values)
                else:
                    pending.update(item.values)
            elif isinstance(item, End) and cur is not None:
                cur.end = item
        if cur is not None:
            cur.config.update(pending)
            self._seal(cur)

    def _valid(self, item, path: Path) -> bool:
        """Steps in [0, 2**63) and finite times only: anything else is a counted malformed line (the parsers
        check their own steps; this is the one rule, applied to every parser's items)."""
        step = getattr(item, "step", None)
        try:
            if isinstance(item, Step):
                values.step(step)
            elif isinstance(item, (Event, Resume)):
                values.optional_step(step)
        except ValueError as exc:
            self.report.bad(path.name, getattr(item, "line", 0), str(exc), "")
            return False
        if getattr(item, "t", None) is not None:
            item.t = values.finite(item.t)
        return True

    def _first_reason(self, path: Path) -> str:
        if self.segs or self.known:
            return f"new log file {path.name} (a new job)"
        return f"start of {path.name}"

    def _place(self, seg: _Seg) -> None:
        """Decide the parent once the segment's start is known (its resume step or its first step)."""
        if seg.placed:
            return
        anchor = seg.resume_step if seg.resume_step is not None else (seg.first_step or 0) - 1
        seg.parent = None
        for begin, seg_id in self.known:
            if begin <= anchor:
                seg.parent = seg_id
        seg.placed = True
        self.known.append((anchor, seg.id))

    def _step(self, seg: _Seg, item: Step) -> None:
        if seg.first_step is None:
            seg.first_step = item.step
            self._place(seg)
        seg.last_step = item.step
        seg.last_line = item.line
        if seg.start_time is None and item.t is not None:
            seg.start_time = item.t
        seg.out.write(_metrics_line(item.step, item.t, item.values))
        self.report.steps += 1

    def _event(self, seg: _Seg, item: Event) -> None:
        fields = dict(item.fields)
        step = item.step
        if step is None and seg.last_step is not None:
            step, fields["step_is"] = seg.last_step, "the last step logged before this line"
        fields["line"] = item.line
        if seg.start_time is None and item.t is not None:
            seg.start_time = item.t
        seg.last_line = max(seg.last_line, item.line)
        rec = {"k": records.EVENT, "kind": item.kind, "step": step, "t": item.t, "fields": fields}
        seg.out.write(records.encode(rec))
        self.report.events += 1

    # -- output
    def _seal(self, seg: _Seg) -> None:
        """A segment no more items go to: its close record if the log said it ended, and its file closed."""
        if not seg.placed:  # only events: it follows the segment before it
            seg.parent = self.known[-1][1] if self.known else None
            seg.placed = True
            self.known.append((NEG_INF, seg.id))
        if seg.end is not None:
            close = {"k": records.CLOSE, "t": seg.end.t, "reason": seg.end.reason, "exit_code": 0, "error": None}
            seg.out.write(records.encode({**close, "last_step": seg.last_step}))
        seg.out.close()

    def finish(self) -> None:
        """Write every segment's header; give each log the source's mtime."""
        by_id = {}
        for seg in self.segs:
            seg.config = {**self.base_config, **seg.config}
            parent_config = by_id.get(seg.parent, {}) if seg.parent else None
            header = {
                "v": records.FORMAT_VERSION,
                "segment": seg.id,
                "run": self.name,
                "parent": seg.parent,
                "resume_step": seg.resume_step,
                "reason": seg.reason,
                "start_time": seg.start_time,
                "world_size": self.world_size,
                "host": None,
                "pid": None,
                "config": seg.config,
                "config_diff": segments.config_diff(parent_config, seg.config) if seg.parent else {},
                "import": {
                    "source": str(seg.source),
                    "format": self.fmt,
                    "lines": [seg.first_line, seg.last_line],
                    "first_step": seg.first_step,
                    "last_step": seg.last_step,
                    "time_zone": self.tz,
                },
            }
            by_id[seg.id] = seg.config
            header_path = layout.segment_dir(self.run_dir, seg.id) / layout.SEGMENT_HEADER
            if header_path not in self.headers:
                self.headers[header_path] = header_path.read_bytes() if header_path.exists() else None
            write_if_changed(header_path, header)
            try:
                mtime = seg.source.stat().st_mtime
                os.utime(seg.out.path, (mtime, mtime))  # a log still being written shows as a live run
            except OSError as exc:
                self.report.notes.append(f"could not set the time of {seg.out.path}: {exc}")
            self.report.segments.append(
                {
                    "segment": seg.id,
                    "parent": seg.parent,
                    "resume_step": seg.resume_step,
                    "first_step": seg.first_step,
                    "last_step": seg.last_step,
                    "reason": seg.reason,
                    "source": str(seg.source),
                }
            )

    def abort(self) -> None:
        """Roll back everything this import wrote (see the module docstring); the run is as it was before."""
        for out in self.outs:
            out.abort()
        for path, old in self.headers.items():
            if old is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(old)
        for d in reversed(self.created_dirs):
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)


def _start_of(header: dict) -> float:
    if header.get("resume_step") is not None:
        return header["resume_step"]
    first = (header.get("import") or {}).get("first_step")
    if first is not None and header.get("parent"):
        return first - 1
    return NEG_INF


def _metrics_line(step: int, t: float | None, values: dict[str, float]) -> bytes:
    row: list = [step, t if t is not None and math.isfinite(t) else None]
    nonfinite = []
    for j, v in enumerate(values.values()):
        if math.isfinite(v):
            row.append(v)
        else:
            row.append(None)
            nonfinite.append([0, j, records.nonfinite_token(v)])
    rec = {"k": records.METRICS, "names": list(values), "rows": [row]}
    if nonfinite:
        rec["nonfinite"] = nonfinite
    return records.encode_block(rec)


def write_if_changed(path: Path, obj: dict) -> None:
    """Write a small JSON document atomically, unless the file already holds exactly it."""
    try:
        if path.read_bytes() == records.json_document(obj):
            return
    except OSError:
        path.parent.mkdir(parents=True, exist_ok=True)
    records.write_json_atomic(path, obj)
