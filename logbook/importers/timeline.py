"""A logbook timeline (a CSV of dated events) as a run's segments and annotations.

Made for the OPT-175B chronicles (sample_runs/opt175b-timeline/SOURCE.md) and any
table with the same columns: date, time_local, tz, run, step, step_kind,
event_type, action_or_note, source, confidence (aliases: time, event, note, ...).

- **Segments.** A `run` label like `11.0`, `12.08` or `12.45.2` is one launch. The
  number before the first dot is its lineage (OPT's 11.x and 12.x); within a lineage
  launches are ordered by their numbers, each resuming the one listed before it
  (gaps in the numbering are launches the timeline does not list), and the first
  is a root at step 0.
- **Lineage-wide rows** (`12.x`, `12.3x`, `12.00-12.10`) apply to a lineage, and
  `final` to the newest one: its `run_end` step is where that lineage's last listed
  launch ended. A `hardware` row over a label range (`12.00-12.10`) marks those
  launches as crashed.
- **Steps the timeline does not give are estimated, and say so.** A launch resumes
  from the step it states (`first_logged_update` N means checkpoint N - 1); else from
  the step its lineage had reached at its start time, interpolated between the rows
  that give both a time and a step, never past its parent's last step, rounded down
  to the checkpoint interval (250 updates, OPT's). A launch without a stated end ran
  until its successor resumed. Estimated values are listed in the header's
  `import.estimated` and marked with ≈ in the reason.
- **Annotations.** Every row becomes one, at its step (or the estimated step of its
  date), with its source and confidence in the text. Ids are derived from the row,
  so re-importing adds nothing, and an annotation a user deleted stays deleted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from midflight.logbook import values
from midflight.logbook.importers.items import ImportReport
from midflight.logbook.importers.reading import STREAM_ERRORS, ZONES, Clock, open_text
from midflight.logbook.importers.writer import write_if_changed
from midflight.logbook.record import layout, records

CHECKPOINT_EVERY = 250
AUTHOR = "timeline import"
ALIASES = {
    "date": ("date", "day"),
    "time": ("time_local", "time"),
    "tz": ("tz", "timezone", "time_zone"),
    "run": ("run", "segment", "launch"),
    "step": ("step", "update", "iteration"),
    "step_kind": ("step_kind",),
    "kind": ("event_type", "event", "type", "kind"),
    "note": ("action_or_note", "note", "notes", "text", "description"),
    "source": ("source",),
    "confidence": ("confidence",),
}
ANNOTATION_KINDS = {
    "hardware": "hardware",
    "lr_change": "lr",
    "clip_change": "clip",
    "config_change": "code",
    "software_change": "code",
    "restart_optimizer_change": "optimizer",
    "optimizer_change": "optimizer",
    "loss_scale": "optimizer",
    "data": "data",
}
START_KINDS = ("run_start", "restart", "restart_optimizer_change", "lr_change", "config_change", "software_change")

_LABEL = re.compile(r"^(\d+)(?:\.\d+)+$")
_RANGE = re.compile(r"^(\d+)\.(\d+)-(\d+)\.(\d+)$")
_FAMILY = re.compile(r"^(\d+)\.")
_DATE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)")
_TIME = re.compile(r"^(\d{1,2}):(\d\d)")
_STEP = re.compile(r"^\s*(~)?\s*([\d,_]+)\s*$")
_DURATION = re.compile(r"duration\s+([\d.]+)\s*(h|d)\b")


@dataclass
class Row:
    line: int
    raw: dict
    run: str
    kind: str
    note: str
    t: float | None
    date_exact: bool
    step: int | None
    step_approx: bool
    step_kind: str
    lineage: str | None = None
    est_step: int | None = None  # for annotations: the step of its date when it gives none


@dataclass
class Launch:
    label: str
    lineage: str
    rows: list = field(default_factory=list)
    parent: Launch | None = None
    start_time: float | None = None
    resume: int | None = None
    end_step: int | None = None
    end_time: float | None = None
    end_note: str = ""
    close: str | None = None
    error: str | None = None
    estimated: list = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return tuple(int(p) for p in self.label.split("."))


def import_timeline(
    paths, run_dir: Path, *, name: str | None, report: ImportReport, clock: Clock, world_size: int | None = None
) -> None:
    run_dir = Path(run_dir)
    rows: list[Row] = []
    for path in paths:
        report.sources += 1
        rows += _read(Path(path), report, clock)
    if not rows:
        raise ValueError("the timeline has no readable rows")
    launches = _launches(rows)
    for lineage in sorted({lc.lineage for lc in launches.values()}, key=int):
        _place(sorted((lc for lc in launches.values() if lc.lineage == lineage), key=lambda lc: lc.key), rows)
    _annotation_steps(rows, launches)
    (run_dir / layout.SEGMENTS).mkdir(parents=True, exist_ok=True)
    source = Path(paths[0])
    for lc in sorted(launches.values(), key=lambda lc: (int(lc.lineage), lc.key)):
        _write_launch(run_dir, lc, name or run_dir.name, source, report, world_size)
    _write_annotations(run_dir, rows, source, report)


# -- reading
def _read(path: Path, report: ImportReport, clock: Clock) -> list[Row]:
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except (csv.Error, *STREAM_ERRORS) as exc:
            raise ValueError(f"{path.name}: unreadable header ({type(exc).__name__}: {str(exc)[:120]})") from None
        if not header:
            raise ValueError(f"{path.name} is empty")
        cols = {c.strip().lower(): i for i, c in enumerate(header)}
        index = {key: next((cols[a] for a in names if a in cols), None) for key, names in ALIASES.items()}
        missing = [k for k in ("date", "run", "kind") if index[k] is None]
        if missing:
            raise ValueError(
                f"{path.name}: no {', '.join(missing)} column (expected columns such as "
                "date, time_local, tz, run, step, event_type, action_or_note)"
            )
        out = []
        line_no = 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # a field over the csv module's limit, a NUL byte: one bad row
                line_no += 1
                report.lines += 1
                report.bad(path.name, line_no, f"unreadable CSV row: {exc}", "")
                continue
            except STREAM_ERRORS as exc:  # a damaged gzip stream: the rows before it are kept
                report.bad(path.name, line_no + 1, f"unreadable from here on ({type(exc).__name__})", "")
                break
            line_no += 1
            report.lines += 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                report.bad(path.name, line_no, f"{len(cells)} cells, the header has {len(header)}", ",".join(cells))
                continue
            get = {k: (cells[i].strip() if i is not None else "") for k, i in index.items()}
            try:
                out.append(_row(line_no, get, clock))
            except ValueError as exc:
                report.bad(path.name, line_no, str(exc), ",".join(cells))
        return out


def _row(line_no: int, get: dict, clock: Clock) -> Row:
    m = _DATE.match(get["date"])
    t = None
    exact = bool(m) and len(get["date"]) == 10
    if m:
        hm = _TIME.match(get["time"])
        zone = ZONES.get(get["tz"].upper()) if get["tz"] else None
        tz = ZoneInfo(zone) if zone else clock.zone
        hour, minute = (int(hm.group(1)), int(hm.group(2))) if hm else (0, 0)
        t = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), hour, minute, tzinfo=tz).timestamp()
    elif get["date"] and "x" not in get["date"].lower():
        raise ValueError(f"unreadable date {get['date']!r} (expected YYYY-MM-DD)")
    step, approx = None, False
    if get["step"]:
        sm = _STEP.match(get["step"])
        if not sm:
            raise ValueError(f"unreadable step {get['step']!r}")
        step, approx = values.step(re.sub(r"[,_]", "", sm.group(2))), bool(sm.group(1))
    kind = get["kind"] or "note"
    return Row(line_no, get, get["run"], kind, get["note"], t, exact, step, approx, get["step_kind"])


# -- the lineage
def _launches(rows: list[Row]) -> dict[str, Launch]:
    launches: dict[str, Launch] = {}
    for r in rows:
        m = _LABEL.match(r.run)
        if m:
            r.lineage = m.group(1)
            launches.setdefault(r.run, Launch(r.run, r.lineage)).rows.append(r)
    if not launches:
        raise ValueError("no launch labels like 11.0 or 12.08 in the run column: nothing to build a lineage from")
    newest = max(launches.values(), key=lambda lc: min((r.t for r in lc.rows if r.t), default=0.0)).lineage
    for r in rows:
        if r.lineage is None:
            fam = _FAMILY.match(r.run)
            if fam and any(lc.lineage == fam.group(1) for lc in launches.values()):
                r.lineage = fam.group(1)
            elif r.run.lower() in ("final", "end"):
                r.lineage = newest
        rng = _RANGE.match(r.run)
        if rng and r.kind == "hardware":
            lo, hi = (int(rng.group(1)), int(rng.group(2))), (int(rng.group(3)), int(rng.group(4)))
            for lc in launches.values():
                if lo <= lc.key[:2] <= hi:
                    lc.close, lc.error = "crashed", r.note
    return launches


def _anchors(rows: list[Row], lineage: str, root_start: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(times, steps) of the rows of a lineage that give both, sorted by time, with its start at step 0."""
    pts = [(r.t, r.step) for r in rows if r.lineage == lineage and r.t is not None and r.step is not None]
    if root_start is not None:
        pts.append((root_start, 0))
    pts.sort()
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def _place(chain: list[Launch], rows: list[Row]) -> None:
    root = chain[0]
    root_start = min((r.t for r in root.rows if r.t is not None and r.kind != "run_end"), default=None)
    ts, steps = _anchors(rows, root.lineage, root_start)
    for r in rows:  # a row with a step but no usable date: place it in time from its step
        if r.lineage == root.lineage and r.t is None and r.step is not None and len(ts) >= 2:
            order = np.argsort(steps, kind="stable")
            r.t = float(np.interp(r.step, steps[order], ts[order]))
    for i, lc in enumerate(chain):
        lc.parent = chain[i - 1] if i else None
        ends = [r for r in lc.rows if r.kind == "run_end" and r.step is not None]
        if ends:
            lc.end_step, lc.end_time, lc.end_note = ends[-1].step, ends[-1].t, ends[-1].note
        lc.start_time = min((r.t for r in lc.rows if r.t is not None and r.kind != "run_end"), default=None)
        dur = next((_DURATION.search(r.note) for r in lc.rows if _DURATION.search(r.note)), None)
        if dur and lc.end_time is not None:
            start = lc.end_time - float(dur.group(1)) * (86400 if dur.group(2) == "d" else 3600)
            lc.start_time = start if lc.start_time is None else min(lc.start_time, start)
        if lc.start_time is None and lc.parent is not None:
            lc.start_time = lc.parent.start_time
            lc.estimated.append("start_time")
        if lc.parent is not None and lc.start_time is not None and lc.parent.start_time is not None:
            lc.start_time = max(lc.start_time, lc.parent.start_time)  # launches follow their parents
        if i == 0:
            continue
        stated = [r for r in lc.rows if r.step is not None and r.kind in ("restart", "restart_optimizer_change")]
        if stated:
            r = stated[0]
            lc.resume = r.step - 1 if r.step_kind == "first_logged_update" else r.step
            if r.step_approx or r.step_kind.startswith("approx"):
                lc.estimated.append("resume_step")
            continue
        guess = float(np.interp(lc.start_time, ts, steps)) if lc.start_time is not None and len(ts) else 0.0
        caps = [guess]
        if lc.parent.end_step is not None:
            caps.append(lc.parent.end_step)
        seen = [r.step for r in lc.rows if r.step is not None]
        if seen:
            caps.append(min(seen) - 1)
        lc.resume = max(0, int(min(caps)) // CHECKPOINT_EVERY * CHECKPOINT_EVERY)
        lc.estimated.append("resume_step")
    final = [r for r in rows if r.lineage == root.lineage and not _LABEL.match(r.run) and r.kind == "run_end"]
    for i, lc in enumerate(chain):
        if lc.end_step is not None:
            continue
        seen = [r.step for r in lc.rows if r.step is not None]
        if i + 1 < len(chain):
            lc.end_step = max([chain[i + 1].resume or 0, *seen])
            lc.estimated.append("end_step")
        elif final and final[-1].step is not None:
            lc.end_step, lc.end_time, lc.end_note = final[-1].step, final[-1].t, final[-1].note
            lc.close = "completed"
        elif seen:
            lc.end_step = max(seen)
    for lc in chain:  # launches the timeline does not end otherwise were ended (or abandoned) by the team
        if lc.close is None:
            lc.close = "stopped"


def _annotation_steps(rows: list[Row], launches: dict[str, Launch]) -> None:
    """The step each row is pinned to: its own, else where its lineage (or the newest) was at its date."""
    newest = max(launches.values(), key=lambda lc: lc.start_time or 0.0).lineage
    cache: dict[str, tuple] = {}
    for r in rows:
        if r.step is not None:
            continue
        lineage = r.lineage or newest
        if lineage not in cache:
            root = min((lc for lc in launches.values() if lc.lineage == lineage), key=lambda lc: lc.key)
            cache[lineage] = _anchors(rows, lineage, root.start_time)
        ts, steps = cache[lineage]
        launch = launches.get(r.run)
        if r.t is not None and len(ts):
            est = float(np.interp(r.t, ts, steps))
        else:
            est = float(launch.resume or 0) if launch else 0.0
        if launch is not None and launch.resume is not None:
            est = max(est, launch.resume)
        r.est_step = int(max(0.0, est))


# -- writing
def _write_launch(
    run_dir: Path, lc: Launch, name: str, source: Path, report: ImportReport, world_size: int | None
) -> None:
    notes = [r.note for r in lc.rows if r.kind in START_KINDS and r.note]
    reason = "; ".join(notes) or f"launch {lc.label}"
    if lc.parent is not None and lc.parent.end_note:
        reason += f" (after {lc.parent.label}: {lc.parent.end_note})"
    if "resume_step" in lc.estimated and lc.resume is not None:
        reason += f" [resume step ≈ {lc.resume:,}, estimated]"
    reason = reason[:600]
    header = {
        "v": records.FORMAT_VERSION,
        "segment": lc.label,
        "run": name,
        "parent": lc.parent.label if lc.parent else None,
        "resume_step": lc.resume,
        "reason": reason,
        "start_time": lc.start_time,
        "world_size": world_size,
        "host": None,
        "pid": None,
        "config": {},
        "config_diff": {},
        "import": {
            "source": str(source),
            "format": "timeline",
            "lines": [r.line for r in lc.rows],
            "last_step": lc.end_step,
            "estimated": lc.estimated,
        },
    }
    write_if_changed(layout.segment_dir(run_dir, lc.label) / layout.SEGMENT_HEADER, header)
    wanted = [
        {"k": records.OPEN, "v": records.FORMAT_VERSION, "run": name, "segment": lc.label, "rank": 0,
         "local_rank": 0, "world": None, "host": None, "pid": None, "t": lc.start_time}
    ]  # fmt: skip
    if lc.close is not None:
        wanted.append(
            {"k": records.CLOSE, "t": lc.end_time if lc.end_time is not None else lc.start_time,
             "reason": lc.close, "exit_code": None, "error": lc.error if lc.close == "crashed" else None,
             "last_step": lc.end_step}
        )  # fmt: skip
    _append_changed(layout.rank_file(run_dir, lc.label, 0), wanted, report)
    report.segments.append(
        {
            "segment": lc.label,
            "parent": lc.parent.label if lc.parent else None,
            "resume_step": lc.resume,
            "first_step": lc.resume if lc.resume is not None else 0,
            "last_step": lc.end_step,
            "reason": reason[:120],
            "source": str(source),
        }
    )


def _append_changed(path: Path, wanted: list[dict], report: ImportReport) -> None:
    """Append each open/close record whose latest copy in the log differs (a timeline is edited, a log only grows).

    Ingest applies the latest open and close records of a log, so a corrected timeline
    updates the launch without rewriting anything already read.
    """
    latest = {r["k"]: r for r in records.iter_records(path)}
    changed = [w for w in wanted if json.loads(records.encode(w)) != latest.get(w["k"])]
    for rec in changed:
        records.append_line(path, rec)
        report.new_bytes += len(records.encode(rec))
    if not changed:
        report.unchanged_files += 1


def _write_annotations(run_dir: Path, rows: list[Row], source: Path, report: ImportReport) -> None:
    path = run_dir / layout.ANNOTATIONS
    seen = {str(r.get("id")) for r in records.iter_records(path) if r.get("k") == "annotation"}
    for r in rows:
        ann_id = "tl-" + hashlib.sha1(repr(sorted(r.raw.items())).encode()).hexdigest()[:12]
        if ann_id in seen:
            continue
        step = r.step if r.step is not None else r.est_step
        when = " ".join(x for x in (r.raw["date"], r.raw["time"], r.raw["tz"]) if x)
        facts = [r.kind, when]
        if r.raw.get("source"):
            facts.append(f"source: {r.raw['source']}")
        if r.raw.get("confidence"):
            facts.append(f"confidence: {r.raw['confidence']}")
        if r.step is None:
            facts.append("step estimated from the date")
        elif r.step_approx:
            facts.append("approximate step")
        text = f"{r.run or 'run'}: {r.note or r.kind} ({'; '.join(facts)})"
        records.append_line(
            path,
            {
                "k": "annotation",
                "op": "create",
                "id": ann_id,
                "t": r.t if r.t is not None and math.isfinite(r.t) else None,
                "step": int(step or 0),
                "step_end": None,
                "kind": ANNOTATION_KINDS.get(r.kind, "note"),
                "text": text,
                "author": AUTHOR,
            },
        )
        seen.add(ann_id)
        report.annotations += 1
