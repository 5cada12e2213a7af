"""The typed markers drawn on every chart of a run: restarts, incidents, annotations, applied interventions and
the autopilot's actions (an intervention authored `autopilot:<policy>`, a type of its own).

One builder for the dashboard and the exported logbooks, from what the store and the detector give
(`queries.segments`, incidents, `queries.annotations`, `queries.interventions`), so a chart on a
page and a chart in an export mark the same steps with the same words. Labels are plain text: each
renderer escapes them for its medium (Plotly hover HTML, Markdown, matplotlib).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pandas as pd

from midflight.logbook.values import first, missing

KINDS = ("restart", "incident", "annotation", "intervention", "autopilot")
AUTOPILOT = "autopilot:"  # the author prefix of the interventions the autopilot issues (oncall.autopilot)


@dataclass(frozen=True)
class Marker:
    """A vertical line at `step` (drawn at `x` on a chart whose axis is not the step; None: at the step)."""

    kind: str  # one of KINDS
    step: int
    label: str  # plain text
    x: float | None = None

    def at(self, x: float) -> Marker:
        return replace(self, x=float(x))


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _params(params) -> str:
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return params
    if not isinstance(params, dict) or not params:
        return ""
    return "(" + ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in params.items()) + ")"


def run_markers(
    segments: pd.DataFrame,
    incidents,
    annotations: pd.DataFrame,
    interventions: pd.DataFrame,
) -> list[Marker]:
    """Every marker of a run, by step: each segment after the first at the step it resumed from (else its
    first step), each incident on the effective history at its start, each annotation at its step, each
    applied intervention at the step it was applied. `incidents` are Incident objects or their dicts (None
    while detection has not run yet: no incident markers)."""
    out: list[Marker] = []
    for s in segments.iloc[1:].itertuples() if len(segments) else ():
        at = first(s.resume_step, s.start_step)
        if at is not None:
            out.append(
                Marker("restart", int(at), f"{s.segment_id}: {s.reason if isinstance(s.reason, str) else 'restart'}")
            )
    for inc in incidents or ():
        if not _get(inc, "superseded"):
            kind, cls, sev = _get(inc, "kind"), _get(inc, "classification"), _get(inc, "severity")
            out.append(Marker("incident", int(_get(inc, "start_step")), f"{kind}: {cls}, {sev}"))
    for a in annotations.itertuples() if len(annotations) else ():
        if not missing(a.step):
            who = f" ({a.author})" if isinstance(a.author, str) else ""
            out.append(Marker("annotation", int(a.step), f"[{a.kind}] {a.text}{who}"))
    for iv in interventions.itertuples() if len(interventions) else ():
        if iv.status == "applied" and not missing(iv.applied_step):
            note = f": {iv.note}" if isinstance(iv.note, str) and iv.note else ""
            author = getattr(iv, "author", None)
            kind = "autopilot" if isinstance(author, str) and author.startswith(AUTOPILOT) else "intervention"
            label = f"{iv.action} {_params(iv.params)}".strip() + note
            out.append(Marker(kind, int(iv.applied_step), f"[{author}] {label}" if kind == "autopilot" else label))
    return sorted(out, key=lambda m: (m.step, m.kind))


def within(markers: list[Marker], lo: float, hi: float) -> list[Marker]:
    """The markers whose step lies in [lo, hi]."""
    return [m for m in markers if lo <= m.step <= hi]
