"""One run's logbook as one plain structure, gathered from the store, so every format says the same.

The facts come from `report.summary.summarize` (segments, incidents, interventions, energy, CO2eq,
wasted compute, ingest problems) and `store.queries` (annotations, curves); the markers and the restart
tree's lanes from `logbook.present`, as the dashboard draws them; nothing here analyses anything.
The writers (Markdown, HTML) only format a `Logbook`. A run may have no metrics (only
segment headers and annotations) or no energy data: every field then says so with None or an
empty list, and the writers show "—".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from midflight.logbook.analysis import accounting
from midflight.logbook.present import tree
from midflight.logbook.present.markers import Marker, run_markers
from midflight.logbook.report.summary import summarize
from midflight.logbook.store import queries
from midflight.logbook.store.database import Store
from midflight.logbook.values import finite, text, whole

CHART_BUCKETS = 1000  # M4 buckets per curve: ~one per pixel column of a chart; no spike is ever dropped
CHARTS = (  # role, title, log y; drawn when a metric of the run plays the role (its own name kept in the title)
    ("loss", "Loss", False),
    ("grad_norm", "Gradient norm (before clipping)", True),
    ("lr", "Learning rate", False),
    ("loss_scale", "Loss scale (fp16)", True),
)


@dataclass
class Curve:
    """One line of a chart: the steps and values of one history (effective, or one abandoned branch)."""

    label: str
    step: np.ndarray
    value: np.ndarray
    faded: bool = False  # an abandoned (superseded) branch


@dataclass
class Chart:
    metric: str  # the role it draws ("loss"): its id in file names and figure keys, whatever the run calls it
    title: str
    curves: list[Curve]
    log_y: bool = False


@dataclass
class Logbook:
    run: str  # the run id (its folder name)
    name: str  # display name from the newest segment header
    generated_time: float
    header: dict  # status, last_step, effective_steps, last_loss, tokens, start/end time, elapsed_s, segment_s
    segments: list[dict]  # summary segments, oldest first, plus start/end time, host, world size
    incidents: list[dict]
    interventions: list[dict]
    annotations: list[dict]  # id, step, step_end, kind, text, author, created_time, updated_time
    energy: dict | None
    co2eq_kg: float | None
    co2: dict
    projection: dict | None
    references: dict
    wasted: list[dict]
    wasted_totals: dict
    ingest_problems: list[dict]
    metrics: list[str]
    events: dict[str, int]
    charts: list[Chart] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    lanes: list[dict] = field(default_factory=list)  # the restart tree (present.tree.lanes)
    goodput: dict = field(default_factory=dict)  # the goodput ledger (report.goodput via the summary)


def gather(
    store: Store,
    run: str,
    *,
    region: str | None = None,
    intensity_g_per_kwh: float | None = None,
    pue: float | None = None,
    buckets: int = CHART_BUCKETS,
    progress: Callable[[str], None] | None = None,
) -> Logbook:
    """Everything a logbook shows for `run`. Raises ValueError if the store has no such run."""
    say = progress or (lambda msg: None)
    if run not in queries.run_ids(store):
        known = ", ".join(queries.run_ids(store)) or "none"
        raise ValueError(f"no run named {run!r} in the store (runs: {known})")
    say(f"{run}: summarising (incidents, energy, wasted compute)")
    s = summarize(store, run, region=region, intensity_g_per_kwh=intensity_g_per_kwh, pue=pue)
    names = queries.runs(store).set_index("run_id")["name"]
    seg_frame = queries.segments(store, run)
    seg_rows = {r.segment_id: r for r in seg_frame.itertuples()}
    segments = []
    for seg in s["segments"]:
        row = seg_rows.get(seg["id"])
        segments.append(
            seg
            | {
                "host": text(getattr(row, "host", None)),
                "world_size": whole(getattr(row, "world_size", None)),
                "start_time": finite(seg["start_time"]),
                "end_time": finite(seg["end_time"])
                if seg["end_time"] is not None
                else finite(getattr(row, "last_write", None)),
            }
        )
    starts = [x["start_time"] for x in segments if x["start_time"] is not None]
    ends = [x["end_time"] for x in segments if x["end_time"] is not None]
    spans = [
        x["end_time"] - x["start_time"] for x in segments if x["start_time"] is not None and x["end_time"] is not None
    ]
    header = {
        "status": s["status"],
        "last_step": s["last_step"],
        "effective_steps": s["effective_steps"],
        "last_loss": s["last_loss"],
        "tokens": finite(queries.last_value(store, run, queries.TOKENS_METRIC)),
        "start_time": min(starts) if starts else None,
        "end_time": max(ends) if ends else None,
        "elapsed_s": (max(ends) - min(starts)) if starts and ends else None,
        "segment_s": sum(spans) if spans else None,
        "segments": len(segments),
        "restarts": max(0, len(segments) - 1),
    }
    ann_frame = queries.annotations(store, run)
    annotations = [
        {
            "id": r.annotation_id,
            "step": whole(r.step),
            "step_end": whole(r.step_end),
            "kind": text(r.kind) or "note",
            "text": text(r.text) or "",
            "author": text(r.author),
            "created_time": finite(r.created_time),
            "updated_time": finite(r.updated_time),
        }
        for r in ann_frame.itertuples()
    ]
    book = Logbook(
        run=run,
        name=str(names.get(run) or run),
        generated_time=time.time(),
        header=header,
        segments=segments,
        incidents=s["incidents"],
        interventions=s["interventions"],
        annotations=annotations,
        energy=s["energy"],
        co2eq_kg=s["co2eq_kg"],
        co2=s["co2"],
        projection=s["projection"],
        references=s["references"],
        wasted=s["wasted"],
        wasted_totals=accounting.totals(s["wasted"]) if s["wasted"] else {},
        ingest_problems=s["ingest_problems"],
        metrics=s["metrics"],
        events=s["events"],
        goodput=s.get("goodput") or {},
    )
    book.markers = run_markers(seg_frame, s["incidents"], ann_frame, queries.interventions(store, run))
    book.lanes = tree.lanes(seg_frame)
    say(f"{run}: reading curves ({buckets} buckets each)")
    book.charts = charts(store, run, s["metrics"], buckets)
    return book


def charts(store: Store, run: str, names: list[str], buckets: int) -> list[Chart]:
    """The key curves, M4-downsampled: the effective history, and for the loss each abandoned branch faded."""
    out = []
    found = queries.metric_roles(store, run, names)  # train/loss, learning_rate, lm loss, ... (logbook.roles)
    for role, title, log_y in CHARTS:
        if role not in found:
            continue
        metric, title = found[role].metric, found[role].title(title)
        eff = queries.series(store, run, metric, buckets=buckets)
        curves = [Curve(metric, eff["step"].to_numpy(), eff["value"].to_numpy(dtype="float64"))]
        if role == "loss":
            sup = queries.series(store, run, metric, which="superseded", buckets=buckets)
            for seg, g in sup.groupby("segment_id", sort=False):
                g = g.sort_values("step")
                curves.append(
                    Curve(f"{seg} (abandoned)", g["step"].to_numpy(), g["value"].to_numpy(dtype="float64"), True)
                )
        out.append(Chart(role, title, curves, log_y))
    return out
