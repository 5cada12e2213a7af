"""One timeline of a run: its events, interventions, annotations and segment starts, in one table.

What the OPT-175B team kept in a 148-page document, as rows a person can filter: when (wall time),
at which step, what type of entry, what happened, the detail and who (a rank, an author, a host).
"""

from __future__ import annotations

import json

import pandas as pd

from midflight.logbook.store import queries
from midflight.logbook.store.database import Store

COLUMNS = ["time", "step", "type", "what", "detail", "who"]


def _text(*parts) -> str:
    return " ".join(str(p) for p in parts if isinstance(p, str) and p).strip()


def _event_detail(kind: str, fields) -> str:
    """An event's fields as the timeline shows them: a text sample as `name: text`, an alert as `LEVEL title: text`
    (plain text, as logged), anything else as its JSON."""
    if kind not in ("text", "alert") or not isinstance(fields, str):
        return fields
    try:
        f = json.loads(fields)
    except ValueError:
        return fields
    if not isinstance(f, dict):
        return fields
    if kind == "text" and isinstance(f.get("text"), str):
        return f"{f.get('name')}: {f['text']}"
    if kind == "alert" and isinstance(f.get("title"), str):
        return f"{f.get('level')} {f['title']}: {f.get('text')}"
    return fields


def timeline(store: Store, run: str) -> pd.DataFrame:
    """Every entry of the run, oldest first: time, step, type (event | intervention | annotation | segment),
    what, detail, who."""
    rows = [
        {
            "time": r.wall_time,
            "step": r.step,
            "type": "event",
            "what": r.kind,
            "detail": _event_detail(r.kind, r.fields),
            "who": f"rank {r.rank}",
        }
        for r in queries.events(store, run).itertuples()
    ]
    rows += [
        {
            "time": r.requested_time,
            "step": r.applied_step,
            "type": "intervention",
            "what": f"{r.action} ({r.status})",
            "detail": _text(r.params, r.note, r.detail),
            "who": r.author,
        }
        for r in queries.interventions(store, run).itertuples()
    ]
    rows += [
        {
            "time": r.created_time,
            "step": r.step,
            "type": "annotation",
            "what": r.kind,
            "detail": r.text,
            "who": r.author,
        }
        for r in queries.annotations(store, run).itertuples()
    ]
    rows += [
        {
            "time": r.start_time,
            "step": r.resume_step,
            "type": "segment",
            "what": "start",
            "detail": r.reason,
            "who": r.host,
        }
        for r in queries.segments(store, run).itertuples()
    ]
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("time", kind="stable", ignore_index=True)


def search(tl: pd.DataFrame, *, types=None, kinds=None, needle: str = "") -> pd.DataFrame:
    """The entries of the given types and kinds (what) whose what, detail or who contains `needle`
    (case-insensitive, as plain text: never a pattern)."""
    view = tl if types is None else tl[tl["type"].isin(list(types))]
    if kinds:
        view = view[view["what"].astype(str).isin(list(kinds))]
    if needle:
        hay = view["what"].astype(str) + " " + view["detail"].astype(str) + " " + view["who"].astype(str)
        view = view[hay.str.contains(needle, case=False, regex=False)]
    return view
