"""Markdown logbooks with dated entries (chronicles) as annotations of a run.

Large runs publish what happened in prose: BLOOM's `chronicles.md`, OPT-175B's updates,
GLM-130B's training notes. Each dated entry becomes one annotation, so the story sits on
the curves it explains; imported after a metrics log into the same run directory, the two
make one run.

- **Entries.** A Markdown heading, a bold line, a bullet or a plain line that carries a
  date starts an entry (a heading may have the date anywhere in it: `## Experiment 12.xx
  Lineage - November 11, 2021`; other lines must start with it). The entry runs until the
  next dated line, or an undated heading at the same or a higher level. Nothing inside a
  fenced code block starts an entry (shell comments are not headings).
- **Dates, as people write them.** `2022-05-07`, `2022.05.07 20:14`, `2022-03-21_13:34:34`,
  `2022-04-XX` (day unknown: the 1st, said so), `11/12/2021`, `Nov 12, 2021`, `12 November
  2021`, `Dec 6th`, `11/29` (the year from the entry before, or the document's first full
  date; a month far before the previous entry's rolls into the next year), with an optional
  time (`14:05`, `11:42am`) and zone (`PT`, `UTC`, ...; else `--tz`, else UTC). The
  annotation's `t` is the entry's date.
- **Steps.** `restart from 4000 step`, `restarting from global_step23200`, `step 13,459`,
  `iteration 31214`, `@ 13251 updates`, `from 25800 step` (not `from 48 to 24 nodes`).
  Each passes `logbook.values.step`; a step that does not is a counted bad line and the
  annotation keeps its date without a step (markers skip it; it is still listed).
- **Kinds.** From the heading, else the body: hardware (node, GPU, ECC, NCCL, crash, hang,
  file system), lr, clip, optimizer (loss scale, Adam), data, code (bug, fix, upgrade,
  config), else note. An entry that names a restart, resume or rollback says so first
  (`restart: ...`, `rollback: ...`) with the step it resumed from: that is its restart
  reason. A chronicle entry is not a launch, so it never creates a segment (an extra
  segment would become the lineage's head); when the run already has a segment that
  resumed at that step (a log imported before), the annotation and the report name it.
- **Idempotent.** Annotation ids are derived from the entry, so re-importing adds nothing
  and an annotation a user deleted stays deleted.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from midflight.logbook.importers.items import ImportReport
from midflight.logbook.importers.reading import ZONES, Clock, lines
from midflight.logbook.record import layout, records, segments
from midflight.logbook.values import step as valid_step

AUTHOR = "import"
MAX_TEXT = 4000
MONTHS = {
    m: i
    for i, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        1,
    )
    for m in names
}
_MON = r"(?P<mon>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_ORD = r"(?:st|nd|rd|th)?"
_TIME = (
    r"(?:(?:[ T_]|,?\s+(?:at\s+)?)(?P<h>\d{1,2}):(?P<mi>\d\d)(?::(?P<s>\d\d))?\s*(?P<ampm>[ap]\.?m\.?)?)?"
    r"(?:\s*(?P<tz>" + "|".join(ZONES) + r")\b)?"
)
DATES = [
    re.compile(r"(?P<y>\d{4})[-./](?P<m>\d{1,2})[-./](?P<d>\d{1,2}|XX|xx|\?\?)(?!\d)" + _TIME, re.I),
    re.compile(r"(?<![\d/])(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4}|\d\d)(?![\d/])" + _TIME, re.I),
    re.compile(r"\b" + _MON + r"\s+(?P<d>\d{1,2})" + _ORD + r"(?:,?\s+(?P<y>\d{4}))?\b" + _TIME, re.I),
    re.compile(r"\b(?P<d>\d{1,2})" + _ORD + r"\s+(?:of\s+)?" + _MON + r"(?:,?\s+(?P<y>\d{4}))?\b" + _TIME, re.I),
    re.compile(r"(?<![\d/.])(?P<m>\d{1,2})/(?P<d>\d{1,2})(?![\d/])" + _TIME, re.I),
]
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*)$")  # the title is stripped in Python: no backtracking
_BOLD = re.compile(r"^\s*\*\*(.+?)\*\*:?\s*(.*)$")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_NUM = r"(\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_STEP_WORD = r"(?:global[_ ]step|steps?|iterations?|iters?|updates?)"
STEPS = [  # in order; the first is a restart's own step ("restart from 4000 step", "rolled back to 13,251")
    re.compile(
        r"\b(?:re-?start\w*|resum\w*|roll\w*\s*back|rewind\w*|re-?load\w*|load\w*|revert\w*)"
        r"(?:\s+(?:training|the\s+run|the\s+job|it|run|job))?\s+(?:from|to|at)\s+"
        r"(?:the\s+)?(?:last\s+)?(?:checkpoint\s+)?(?:(?:at|of)\s+)?(?:"
        + _STEP_WORD
        + r"\s*[#:=]?\s*)?"
        + _NUM
        + r"\b",
        re.I,
    ),
    re.compile(r"(?:\bfrom|\bat|@)\s*" + _NUM + r"\s*" + _STEP_WORD + r"\b", re.I),
    re.compile(r"\b" + _STEP_WORD + r"\s*[#:=]?\s*" + _NUM + r"\b", re.I),
    re.compile(r"\bglobal_step\s*" + _NUM, re.I),
]
RESTART = re.compile(r"\b(re-?start\w*|re-?launch\w*|resum\w*|roll\w*\s*back|rewind\w*|revert\w*)", re.I)
# a restart done, not talked about ("restarting training", "rolled back to"; not "40+ restarts")
RESTART_DONE = re.compile(
    r"\b(?:re-?start(?:ed|ing)?|resum(?:e|ed|ing)|re-?launch(?:ed|ing)?|roll(?:ed|ing)?\s*back)\s+"
    r"(?:training|from|the|it|to|at)\b",
    re.I,
)
ROLLBACK = re.compile(r"\b(roll\w*\s*back|rewind\w*|revert\w*|earlier checkpoint|previous checkpoint)", re.I)
KINDS = [  # annotation kind, words: the first kind whose words the heading (else the body, without code) has
    ("hardware", r"nodes?|gpus?|ecc|nccl|nvlink|hardware|crash\w*|cuda error|hang(?:s|ing)?|hung|infiniband|ib"
     r"|machines?|lustre|file ?system|lost connection|loses connection|breaks? down|broke down|cpu error|disks?"
     r"|network|outage|maintenance"),
    ("lr", r"learning rate|lr|warm-?up"),
    ("optimizer", r"adam|optimi[sz]er|loss.scale|beta2|weight decay|fp16|bf16"),
    ("data", r"data\w*|corpus|shuffl\w*|tokeni[sz]er|bpe"),
    ("code", r"bugs?|fix\w*|upgrade\w*|config\w*|megatron|deepspeed|code|kernels?"),
    ("clip", r"clip\w*"),
]  # fmt: skip
_KIND_RES = [(k, re.compile(r"\b(?:" + p + r")\b", re.I)) for k, p in KINDS]
MATCH_WINDOW = 100  # a segment whose first logged step is at most this far after an entry's step resumed there


@dataclass
class Entry:
    line: int
    level: int  # 1-6: a heading; 7: a bold, bullet or plain line
    title: str
    date_text: str
    t: float | None
    approx_day: bool
    body: list = field(default_factory=list)


def import_chronicle(paths, run_dir: Path, *, report: ImportReport, clock: Clock, progress: bool = False) -> None:
    """Append one annotation per dated entry of each Markdown file to `run_dir` (see the module docstring)."""
    run_dir = Path(run_dir)
    (run_dir / layout.SEGMENTS).mkdir(parents=True, exist_ok=True)  # a run directory, even with no log yet
    known = _resumes(run_dir)
    path = run_dir / layout.ANNOTATIONS
    seen = {str(r.get("id")) for r in records.iter_records(path) if r.get("k") == "annotation"}
    for src in paths:
        src = Path(src)
        report.sources += 1
        text = [line for _, line in lines(src, progress=progress)]
        report.lines += len(text)
        for entry in _entries(src.name, text, report, clock):
            rec = _annotation(src.name, entry, report, known)
            if rec["id"] in seen:
                continue
            records.append_line(path, rec)
            seen.add(rec["id"])
            report.annotations += 1


# -- reading
def _entries(source: str, text: list[str], report: ImportReport, clock: Clock) -> list[Entry]:
    context_year = _first_year(text)
    prev: datetime | None = None
    out: list[Entry] = []
    cur: Entry | None = None
    fenced = False
    for i, raw in enumerate(text, 1):
        if _FENCE.match(raw):
            fenced = not fenced
            if cur is not None:
                cur.body.append(raw)
            else:
                report.other_lines += 1
            continue
        start = None if fenced else _start(raw)
        if start is not None:
            level, title, m = start
            try:
                when, approx = _date(m, context_year, prev, clock)
            except ValueError as exc:
                report.bad(source, i, str(exc), raw)
                when, approx = None, False
            if when is not None:
                prev, context_year = when, when.year
            cur = Entry(i, level, title, m.group(0).strip(), _unix(when), approx)
            out.append(cur)
            continue
        heading = None if fenced else _HEADING.match(raw)
        if heading and cur is not None and cur.level <= 6 and len(heading.group(1)) <= cur.level:
            cur = None  # an undated section at the entry's level or above: not part of it
        if cur is not None:
            cur.body.append(raw)
        else:
            report.other_lines += 1
    return out


def _start(raw: str):
    """(level, title, date match) if `raw` starts a dated entry."""
    h = _HEADING.match(raw)
    if h:
        title = h.group(2).rstrip().rstrip("#").rstrip()
        m = _find_date(title, anywhere=True)
        return (len(h.group(1)), title, m) if m else None
    b = _BOLD.match(raw)
    if b:
        inner, rest = b.group(1), b.group(2)
        m = _find_date(inner, anywhere=True) or _find_date(rest, anywhere=False)
        return (7, f"{inner} {rest}".strip(), m) if m else None
    bullet = _BULLET.match(raw)
    body = bullet.group(1) if bullet else raw
    m = _find_date(body.lstrip("*_ "), anywhere=False)
    return (7, body.strip(), m) if m else None


def _find_date(text: str, *, anywhere: bool):
    best = None
    for rx in DATES:
        m = rx.search(text)
        if m is None or (not anywhere and text[: m.start()].strip(" *_:-([")) or not _plausible(m):
            continue
        if best is None or m.start() < best.start():
            best = m
    return best


def _plausible(m: re.Match) -> bool:
    """A month 1-12 and a day 1-31 (or XX): `50/50` or `3/4 of the nodes` is not a date."""
    g = m.groupdict()
    month = MONTHS[g["mon"].lower()] if g.get("mon") else int(g["m"])
    return 1 <= month <= 12 and (not g["d"].isdigit() or 1 <= int(g["d"]) <= 31)


def _first_year(text: list[str]) -> int | None:
    for raw in text:
        for rx in DATES[:4]:
            m = rx.search(raw)
            if m and m.group("y") and len(m.group("y")) == 4:
                return int(m.group("y"))
    return None


def _date(m: re.Match, context_year: int | None, prev: datetime | None, clock: Clock) -> tuple[datetime, bool]:
    g = m.groupdict()
    month = MONTHS[g["mon"].lower()] if g.get("mon") else int(g["m"])
    day_text = g["d"]
    approx = not day_text.isdigit()
    day = 1 if approx else int(day_text)
    year_text = g.get("y")
    if year_text:
        year = int(year_text) + (2000 if len(year_text) == 2 else 0)
        rolled = False
    elif context_year is not None:
        year, rolled = context_year, True
    else:
        raise ValueError(f"no year for {m.group(0).strip()!r}: neither the entry nor the document before it gives one")
    hour, minute, second = int(g["h"] or 0), int(g["mi"] or 0), int(g["s"] or 0)
    if g["ampm"]:
        pm = g["ampm"].lower().startswith("p")
        if not 1 <= hour <= 12:
            raise ValueError(f"unreadable time in {m.group(0).strip()!r}")
        hour = hour % 12 + (12 if pm else 0)
    zone = ZoneInfo(ZONES[g["tz"].upper()]) if g["tz"] else clock.zone
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=zone)
        if rolled and prev is not None and when < prev.replace(tzinfo=when.tzinfo) - timedelta(days=60):
            when = when.replace(year=year + 1)  # "Jan 3" after "Dec 28": the next year
    except ValueError as exc:
        raise ValueError(f"not a date: {m.group(0).strip()!r} ({exc})") from None
    return when, approx


def _unix(when: datetime | None) -> float | None:
    if when is None:
        return None
    t = when.timestamp()
    return t if math.isfinite(t) else None


# -- what an entry says
def _kind(title: str, body: str) -> str:
    for text in (title, body):
        for kind, rx in _KIND_RES:
            if rx.search(text):
                return kind
    return "note"


def _prose(body: list[str]) -> str:
    """The body without its fenced code (log lines say "learning rate" in every line)."""
    out, fenced = [], False
    for raw in body:
        if _FENCE.match(raw):
            fenced = not fenced
        elif not fenced:
            out.append(raw)
    return "\n".join(out)


def _step(text: str, source: str, line: int, report: ImportReport) -> tuple[int | None, bool]:
    """(the step the entry names, whether it is the step a restart resumed from), or (None, False)."""
    for i, rx in enumerate(STEPS):
        m = rx.search(text)
        if m:
            raw = m.group(1).replace(",", "")
            try:
                return valid_step(raw), i == 0
            except ValueError as exc:
                report.bad(source, line, f"step not used: {exc}", m.group(0))
                return None, False
    return None, False


def _resumes(run_dir: Path) -> list[tuple[int, int, str]]:
    """(resume step or None, first logged step or None, segment id) of the run's segments so far."""
    out = []
    for h in segments.existing_headers(run_dir):
        imp = h.get("import") if isinstance(h.get("import"), dict) else {}
        first = imp.get("first_step")
        resume = h.get("resume_step")
        out.append(
            (
                resume if isinstance(resume, int) else None,
                first if isinstance(first, int) else None,
                h["segment"],
            )
        )
    return out


def _matching_segment(step: int, known) -> str | None:
    for resume, _first, seg in known:
        if resume == step:
            return seg
    for resume, first, seg in known:
        if resume is None and first is not None and step <= first <= step + MATCH_WINDOW:
            return seg
    return None


def _annotation(source: str, e: Entry, report: ImportReport, known) -> dict:
    body = "\n".join(e.body).strip()
    everything = f"{e.title}\n{body}"
    step, resumed = _step(everything, source, e.line, report)
    named = resumed or RESTART.search(e.title) or ROLLBACK.search(e.title) or RESTART_DONE.search(body)
    tag = None if not named else "rollback" if ROLLBACK.search(everything) else "restart"
    facts = [f"{source}:{e.line}", f"dated {e.date_text}" + (" (day not given)" if e.approx_day else "")]
    if tag and step is not None:
        facts.append(f"resumed from step {step:,}" if resumed else f"at step {step:,}")
        seg = _matching_segment(step, known)
        if seg:
            facts.append(f"segment {seg}")
            report.notes.append(f"{source}:{e.line}: the {tag} at step {step:,} is segment {seg}")
    head = f"{tag}: {e.title}" if tag else e.title
    text = f"{head}\n{body}" if body else head
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    text += f"\n(chronicle {'; '.join(facts)})"
    ident = hashlib.sha1(f"{source}\n{e.title}\n{body}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return {
        "k": "annotation",
        "op": "create",
        "id": f"md-{ident}",
        "t": e.t,
        "step": step,
        "step_end": None,
        "kind": _kind(e.title, _prose(e.body)),
        "text": text,
        "author": AUTHOR,
    }


def looks_like(sample: list[str]) -> int:
    """How many sample lines start a dated entry."""
    fenced, hits = False, 0
    for raw in sample:
        if _FENCE.match(raw):
            fenced = not fenced
        elif not fenced and _start(raw) is not None:
            hits += 1
    return hits
