"""The logbook as a format-neutral document: headings, paragraphs, lists, tables, code and charts.

Markdown and HTML must say the same thing, so the words are written once, here, and each writer
only renders blocks. Text is a list of pieces: `U` marks text that came from the data (run names,
reasons, notes, annotation text, errors: anything a person or a log could have typed), which each
writer escapes for its format; a plain `str` is this module's own wording; `B` is our own bold.

In the spirit of OPT-175B's chronicles (facebookresearch/metaseq, projects/OPT/chronicles), the
story comes first: a summary, the charts, then one dated entry per segment (how it started, what
changed, what went wrong, what was done about it); reference tables follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from midflight.logbook.analysis import energy as energy_model
from midflight.logbook.exporters.content import Logbook
from midflight.logbook.present.text import NO_ENERGY, duration, energy, mass, num, when


class U(str):
    """Text from the data (user or log): always escaped by the writers."""


class B(str):
    """This module's own text, shown bold."""


Pieces = list  # of str | U | B


@dataclass
class Heading:
    level: int
    text: Pieces


@dataclass
class Para:
    text: Pieces
    italic: bool = False


@dataclass
class Bullets:
    items: list[Pieces]


@dataclass
class Table:
    headers: list[str]
    rows: list[list]  # cells: U, str (ours), a number, or None


@dataclass
class Code:
    text: str  # shown verbatim (a traceback)


@dataclass
class Chart:
    name: str  # a chart of the logbook: a metric name or "restart_tree"
    alt: str


def u(v) -> U | None:
    return None if v is None else U(str(v))


def _steps(a, b) -> str:
    if a is None and b is None:
        return "—"
    return f"{num(a)}–{num(b)}" if b is not None and b != a else num(a)


def _changes(diff: dict) -> str:
    return "; ".join(f"{k}: {v[0]} → {v[1]}" for k, v in diff.items()) if diff else ""


def _last_line(error: str | None) -> str | None:
    lines = [ln for ln in (error or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else None


def _params(p: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in (p or {}).items())


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def owner_segment(book: Logbook, step) -> str | None:
    """The segment a note at `step` belongs to: the effective segment that owns the step, else the newest
    segment whose logged steps include it."""
    if step is None:
        return None
    hits = []
    for seg in book.segments:
        lo = seg["resume_step"] + 1 if seg["resume_step"] is not None else seg["start_step"]
        if lo is not None and seg["end_step"] is not None and lo <= step <= seg["end_step"]:
            hits.append(seg)
    best = [s for s in hits if s["effective"]] or hits
    return best[-1]["id"] if best else None


def segment_at_time(book: Logbook, t) -> str | None:
    """The newest segment that had started by wall time t."""
    if t is None:
        return None
    started = [s for s in book.segments if s["start_time"] is not None and s["start_time"] <= t]
    return started[-1]["id"] if started else None


def build(book: Logbook) -> list:
    """Every block of the logbook, in reading order."""
    h = book.header
    doc: list = [Heading(1, ["Logbook: ", U(book.name)])]
    doc.append(
        Para(
            [
                f"Exported by midflight on {when(book.generated_time)} from run ",
                U(book.run),
                ". Steps are the trainer's; times are UTC.",
            ],
            italic=True,
        )
    )
    doc += [Heading(2, ["Summary"]), Para(summary(book))]
    doc.append(
        Table(
            ["", ""],
            [
                ["status", u(h["status"])],
                ["last step", h["last_step"]],
                ["effective steps", h["effective_steps"]],
                ["tokens (effective)", h["tokens"]],
                ["last loss", h["last_loss"]],
                ["started", when(h["start_time"])],
                ["last record", when(h["end_time"])],
                ["wall time", duration(h["elapsed_s"])],
                ["time in segments", duration(h["segment_s"])],
                ["segments (restarts)", f"{h['segments']} ({h['restarts']})"],
                ["metrics", u(", ".join(book.metrics)) if book.metrics else "none"],
            ],
        )
    )
    doc.append(Heading(2, ["Charts"]))
    doc += [Chart(c.metric, c.title) for c in book.charts]
    if book.segments:
        doc.append(Chart("restart_tree", "Restart tree"))
    if not book.charts:
        doc.append(Para(["This run logged no metrics, so there are no curves to draw."]))
    if book.markers and book.charts:
        doc.append(
            Para(
                [
                    "Dashed lines: restarts (orange), incidents (red), annotations (blue), "
                    "applied interventions (purple)."
                ]
            )
        )
    doc.append(Heading(2, ["Chronicle"]))
    doc += chronicle(book)
    doc += segments(book) + incidents(book) + interventions(book) + annotations(book)
    doc += energy_section(book) + wasted(book) + goodput(book) + events(book) + ingest_problems(book)
    return doc


def summary(book: Logbook) -> Pieces:
    h = book.header
    on_path = [i for i in book.incidents if not i["superseded"]]
    applied = sum(1 for i in book.interventions if i["status"] == "applied")
    out: Pieces = ["Run ", U(book.name), " is ", B(h["status"])]
    out.append(f" at step {num(h['last_step'])}" if h["last_step"] is not None else " with no steps logged")
    out.append(f" ({num(h['effective_steps'])} steps on the effective history")
    out.append(f", last loss {num(h['last_loss'])}). " if h["last_loss"] is not None else "). ")
    out.append(f"It ran as {_plural(h['segments'], 'segment')} ({_plural(h['restarts'], 'restart')})")
    clock = (book.energy or {}).get("wall_time")
    guess = f" ({clock})" if clock else ""
    out.append(f" over {duration(h['elapsed_s'])} of wall time{guess}. " if h["elapsed_s"] is not None else ". ")
    out.append(
        f"{_plural(len(on_path), 'incident')} on the effective history, {len(book.incidents) - len(on_path)} on "
        f"abandoned branches; {_plural(len(book.interventions), 'intervention')} ({applied} applied); "
        f"{_plural(len(book.annotations), 'annotation')}."
    )
    e = book.energy
    if e and e.get("energy_j"):
        label = "estimated" if e["estimated"] else "metered"
        label += f"; wall times {e['wall_time']}" if e.get("wall_time") else ""
        out += [f" Energy: {energy(e['energy_j'])} ({label}; basis: ", U(e["basis"]), ")"]
        out.append(f", about {mass(book.co2eq_kg)} CO2eq." if book.co2eq_kg is not None else ".")
    if book.wasted:
        t = book.wasted_totals
        out.append(
            f" {_plural(len(book.wasted), 'abandoned branch', 'abandoned branches')} wasted {num(t.get('steps'))} "
            f"steps and {duration(t.get('wall_s'))}."
        )
    return out


def chronicle(book: Logbook) -> list:
    """One dated entry per segment, oldest first: how it started, what changed, what happened, how it ended."""
    if not book.segments:
        return [Para(["No segments."])]
    notes: dict[str | None, list[dict]] = {}
    for a in book.annotations:
        notes.setdefault(owner_segment(book, a["step"]), []).append(a)
    ivs: dict[str | None, list[dict]] = {}
    for i in book.interventions:
        ivs.setdefault(segment_at_time(book, i["requested_time"]), []).append(i)
    waste = {b["segment_id"]: b for b in book.wasted}
    out: list = []
    for n, s in enumerate(book.segments, 1):
        out.append(Heading(3, [f"{n}. ", U(s["id"]), f" — {when(s['start_time'])}"]))
        items: list[Pieces] = []
        if s["parent"] or s["resume_step"] is not None:
            start = [f"Resumed from the checkpoint of step {num(s['resume_step'])}"]
            start += [" of ", U(s["parent"])] if s["parent"] else []
        else:
            start = ["Started fresh"]
        start += [" on ", U(s["host"])] if s["host"] else []
        start += [f" with {_plural(s['ranks'], 'rank')}"] if s["ranks"] else []
        items.append(start + ["."])
        if s["reason"]:
            items.append(["Why: ", U(s["reason"])])
        if s["config_diff"]:
            items.append(["Changed: ", U(_changes(s["config_diff"]))])
        span = (
            f"Ran steps {_steps(s['start_step'], s['end_step'])}" if s["start_step"] is not None else "Logged no steps"
        )
        ended: Pieces = [f"{span}; ended ", U(s["end_reason"])]
        err = _last_line(s["error"])
        if err:
            ended += [": ", U(err)]
        elif s["exit_code"]:
            ended.append(f" (exit code {s['exit_code']})")
        items.append(ended + [f" at {when(s['end_time'])}."])
        for i in book.incidents:
            if i["segment_id"] == s["id"]:
                inc: Pieces = ["Incident: ", U(i["kind"]), f" at steps {_steps(i['start_step'], i['end_step'])}, "]
                inc += [U(i["severity"]), ", ", U(i["classification"])]
                inc.append(f"; peak {num(i['peak_value'])} at step {num(i['peak_step'])}.")
                if i.get("suggested_action"):
                    inc += [" Suggested: ", U(i["suggested_action"])]
                items.append(inc)
        for a in notes.get(s["id"], []):
            who = [" (", U(a["author"]), ")"] if a["author"] else []
            items.append(
                [f"Note at step {_steps(a['step'], a['step_end'])} [", U(a["kind"]), "]", *who, ": ", U(a["text"])]
            )
        for i in ivs.get(s["id"], []):
            iv: Pieces = ["Intervention ", U(f"{i['kind']}({_params(i['params'])})"), " by ", U(i["author"] or "?")]
            iv += [" (", U(i["note"]), ")"] if i["note"] else []
            iv += [": ", U(i["status"])]
            iv.append(f" at step {num(i['applied_step'])}" if i["applied_step"] is not None else "")
            iv += [": ", U(i["detail"])] if i["detail"] else []
            items.append(iv + ["."])
        if s["id"] in waste:
            b = waste[s["id"]]
            items.append(
                [
                    f"Steps {num(b['first_step'])}–{num(b['last_step'])} were later abandoned "
                    f"({duration(b['wall_s'])}, {energy(b['energy_j'])} wasted)."
                ]
            )
        out.append(Bullets(items))
    loose = notes.get(None, [])
    if loose:
        out.append(Heading(3, ["Notes outside any segment's steps"]))
        out.append(
            Bullets([[f"Step {_steps(a['step'], a['step_end'])} [", U(a["kind"]), "]: ", U(a["text"])] for a in loose])
        )
    return out


def segments(book: Logbook) -> list:
    out: list = [Heading(2, ["Segments"])]
    if not book.segments:
        return out + [Para(["No segments."])]
    rows = []
    for s in book.segments:
        ended = s["end_reason"] + (f" (exit code {s['exit_code']})" if s["exit_code"] else "")
        rows.append(
            [
                U(s["id"]),
                u(s["parent"]),
                s["resume_step"],
                _steps(s["start_step"], s["end_step"]),
                when(s["start_time"]),
                u(s["reason"]),
                U(ended),
                u(_last_line(s["error"])),
                u(_changes(s["config_diff"]) or None),
                "yes" if s["effective"] else "no",
            ]
        )
    out.append(
        Table(
            [
                "segment",
                "parent",
                "resumed from",
                "steps",
                "started",
                "why it started",
                "how it ended",
                "error",
                "config changes",
                "effective",
            ],
            rows,
        )
    )
    for s in book.segments:
        if s["error"]:
            out += [Para(["Error that ended ", U(s["id"]), ":"]), Code(s["error"])]
    return out


def incidents(book: Logbook) -> list:
    out: list = [Heading(2, ["Incidents"])]
    if not book.incidents:
        why = "No incidents detected." if book.metrics else "No metrics, so no incidents could be detected."
        return out + [Para([why])]
    rows = [
        [
            U(i["kind"]),
            _steps(i["start_step"], i["end_step"]),
            u(i["segment_id"]),
            U(i["severity"]),
            U(i["classification"]),
            f"{num(i['peak_value'])} at step {num(i['peak_step'])}",
            i["baseline"],
            U(", ".join(f"{k} {num(v)}" for k, v in (i["context"] or {}).items())),
            u(i["suggested_action"]),
            "abandoned branch" if i["superseded"] else "effective",
        ]
        for i in book.incidents
    ]
    return out + [
        Table(
            [
                "kind",
                "steps",
                "segment",
                "severity",
                "classification",
                "peak",
                "baseline",
                "context",
                "suggested action",
                "history",
            ],
            rows,
        )
    ]


def interventions(book: Logbook) -> list:
    out: list = [Heading(2, ["Interventions"])]
    if not book.interventions:
        return out + [Para(["No interventions were requested."])]
    rows = [
        [
            U(i["id"]),
            U(i["kind"]),
            U(_params(i["params"])),
            U(i["status"]),
            i["applied_step"],
            when(i["requested_time"]),
            u(i["author"]),
            u(i["note"]),
            u(i["detail"]),
        ]
        for i in book.interventions
    ]
    headers = ["id", "action", "parameters", "status", "applied at step", "requested", "by", "note", "outcome"]
    return out + [Table(headers, rows)]


def annotations(book: Logbook) -> list:
    out: list = [Heading(2, ["Annotations"])]
    if not book.annotations:
        return out + [Para(["No annotations."])]
    rows = [
        [_steps(a["step"], a["step_end"]), U(a["kind"]), u(a["author"]), when(a["created_time"]), U(a["text"])]
        for a in book.annotations
    ]
    return out + [Table(["steps", "kind", "author", "written", "text"], rows)]


def energy_section(book: Logbook) -> list:
    out: list = [Heading(2, ["Energy and CO2eq"])]
    e, co2 = book.energy, book.co2
    nothing = e and e["metered_j"] is None and e["estimated_j"] is None and not e["nameplate_j"]
    if not e or e.get("energy_j") is None or nothing:
        return out + [Para([NO_ENERGY[0].upper() + NO_ENERGY[1:]])]
    label = "estimated" if e["estimated"] else "metered"
    label += f"; wall times {e['wall_time']}" if e.get("wall_time") else ""
    rows = [
        ["energy (best figure per segment)", f"{energy(e['energy_j'])} ({label}; basis: {e['basis']})"],
        ["metered (NVML / RAPL)", energy(e["metered_j"])],
        ["estimated (TDP × utilisation)", energy(e["estimated_j"])],
        ["nameplate (TDP × wall time)", energy(e["nameplate_j"])],
        ["TDP from", u(e.get("nameplate_source")) if e.get("nameplate_source") else None],
        ["wasted on abandoned branches", energy(e["wasted_j"])],
        ["per token", f"{num(e['j_per_token'])} J" if e["j_per_token"] is not None else None],
        ["CO2eq", mass(book.co2eq_kg)],
        ["grid intensity", f"{num(co2['intensity_g_per_kwh'])} g/kWh" if co2["intensity_g_per_kwh"] else None],
        ["intensity source", u(co2["source"])],
        ["PUE", U(f"{num(co2['pue'])} ({co2['pue_source']})")],
    ]
    out += [Table(["", ""], rows), Para(["Method: ", U(e["method"]), "."])]
    if e.get("segments"):
        out.append(
            Table(
                ["segment", "energy", "basis", "metered", "estimated", "nameplate"],
                [
                    [
                        U(s["segment_id"]),
                        energy(s["energy_j"]),
                        U(s["basis"]),
                        energy(s["metered_j"]),
                        energy(s["estimated_j"]),
                        energy(s["nameplate_j"]),
                    ]
                    for s in e["segments"]
                ],
            )
        )
    p = book.projection
    if p:
        kg = f", {mass(p['co2eq_kg'])} CO2eq" if p["co2eq_kg"] is not None else ""
        out.append(
            Para(
                [
                    f"Projected to the planned {num(p['planned_steps'])} steps: "
                    f"{energy(p['projected_kwh'] * energy_model.J_PER_KWH)}{kg} (at {num(p['j_per_token'])} J/token"
                    f"{', estimated' if p['estimated'] else ''}). ",
                    u(p.get("assumptions") or ""),
                ]
            )
        )
    names = {k: v.get("name", k) for k, v in energy_model.REFERENCES.items()}
    refs = "; ".join(f"{names.get(k, k)}: {num(r['co2eq_t'])} t CO2eq" for k, r in book.references.items())
    if refs:
        out.append(Para([f"For scale: {refs} (each the authors' estimate; the summary's JSON has the method)."]))
    return out


def wasted(book: Logbook) -> list:
    out: list = [Heading(2, ["Wasted compute"])]
    if not book.wasted:
        return out + [Para(["None: every logged step is on the effective history."])]
    out.append(
        Para(
            [
                "Work a restart or rollback threw away: an abandoned branch, or the steps a segment ran past the "
                "checkpoint its successor resumed from."
            ]
        )
    )
    rows = [
        [
            U(b["segment_id"]),
            u(b["discarded_by"]),
            f"{num(b['first_step'])}–{num(b['last_step'])} ({num(b['steps'])})",
            b["tokens"],
            duration(b["wall_s"]),
            f"{num(b['device_hours'])} {b['device_kind']}-hours",
            energy(b["energy_j"]),
            U(b["energy_basis"]),
        ]
        for b in book.wasted
    ]
    headers = ["segment", "discarded by", "steps", "tokens", "wall time", "device-hours", "energy", "basis"]
    return out + [Table(headers, rows)]


GOODPUT_LABELS = {
    "productive": "productive steps (effective path)",
    "wasted": "thrown away by rollbacks and crashes",
    "downtime": "restart downtime",
    "checkpoint": "checkpoint save and load",
    "skipped": "skipped and overflow-skipped steps",
    "stall": "stalls",
    "straggler": "straggler loss",
    "unattributed": "unattributed",
}


def goodput(book: Logbook) -> list:
    """The goodput ledger: where the wall-clock time and device-hours went, each figure with its method."""
    out: list = [Heading(2, ["Goodput"])]
    g = book.goodput
    if not g or not g.get("wall_s"):
        return out + [Para(["No wall-clock times recorded: no goodput ledger."])]
    ratio = g["effective_ratio"]
    out.append(
        Para(
            [B("An estimate. ")] * bool(g["estimated"])
            + [
                f"Effective training time: {100 * ratio:.1f}% of {duration(g['wall_s'])} of wall-clock time "
                f"({num(g['device_hours'])} device-hours). Each second counts once, in the first category that "
                f"claims it: {' > '.join(g['precedence'])}.",
            ]
        )
    )
    rows = [
        [
            GOODPUT_LABELS.get(k, k),
            duration(c["s"]),
            f"{100 * c['s'] / g['wall_s']:.1f}%",
            num(c["device_hours"]),
            "estimated" if c["estimated"] else "measured",
            U(c["method"]),
        ]
        for k, c in g["categories"].items()
    ]
    out.append(Table(["category", "wall time", "share", "device-hours", "how", "method"], rows))
    if len(g.get("segments") or []) > 0:
        out.append(Chart("goodput", "Goodput per segment"))
    if g.get("assumptions"):
        out += [Para(["Assumptions:"]), Bullets([[U(a)] for a in g["assumptions"]])]
    return out


def events(book: Logbook) -> list:
    out: list = [Heading(2, ["Events"])]
    if not book.events:
        return out + [Para(["No events."])]
    return out + [Table(["kind", "count"], [[U(k), n] for k, n in book.events.items()])]


def ingest_problems(book: Logbook) -> list:
    out: list = [Heading(2, ["Ingest problems"])]
    if not book.ingest_problems:
        return out + [Para(["None: every line of every log was read."])]
    items = []
    for p in book.ingest_problems:
        items.append([U(p["file"]), f": {num(p['malformed'])} malformed lines skipped"])
        for line_no, msg, snippet in p["examples"][:5]:
            items.append([f"line {num(line_no)} of ", U(p["file"]), ": ", U(msg), ": ", U(str(snippet)[:120])])
    return out + [Bullets(items)]
