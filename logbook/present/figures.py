"""Plotly figures for the dashboard and the HTML logbook: pure functions from arrays and frames to a go.Figure.

Every chart of a run draws the run's markers (annotations, incidents, restarts, interventions) as
vertical lines plus a hoverable symbol in a strip at the top, whatever the data's scale or the zoom.
Marker and trace labels are user text, so they are HTML-escaped here (`text.safe`): Plotly renders a
subset of HTML in hover labels, and an annotation must show as the characters typed, never as markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from midflight.logbook.present.markers import Marker
from midflight.logbook.present.palette import END_COLOURS, GOODPUT_COLOURS, MARKER_COLOURS, MARKER_SYMBOLS
from midflight.logbook.present.text import safe

MARKER_STYLE = {kind: (MARKER_COLOURS[kind], symbol) for kind, symbol in MARKER_SYMBOLS.items()}
X_TITLES = {"step": "step", "tokens": "tokens", "time": "wall time (UTC)"}


@dataclass
class Line:
    """One trace: x on the chart's axis, y, and the step of every point (for selections on any axis)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    step: np.ndarray
    faded: bool = False  # an abandoned branch: thin and pale, one legend entry for all of them
    colour: str | None = None
    mode: str = "lines+markers"


@dataclass
class Band:
    """A shaded range between two curves (p5-p95, min-max of a distribution across ranks); not clickable."""

    name: str
    x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    colour: str = "#1f77b4"
    opacity: float = 0.18


@dataclass
class Points:
    """Event points drawn on the data (overflows on the loss-scale chart)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    step: np.ndarray
    symbol: str = "circle-open"
    colour: str = "#d62728"
    hover: list[str] = field(default_factory=list)


def to_axis(x, axis: str):
    """Values on the x axis as Plotly should see them: wall times become UTC datetimes."""
    if axis == "time":
        return pd.to_datetime(np.asarray(x, dtype="float64"), unit="s").to_numpy()
    return np.asarray(x)


def from_axis(value, axis: str) -> float:
    """A value Plotly sent back (a number, or a date string on the time axis) on the query's scale."""
    if axis == "time" and isinstance(value, str):
        return pd.Timestamp(value).timestamp()
    return float(value)


def metric_figure(
    title: str,
    lines: list[Line],
    markers: list[Marker] = (),
    *,
    axis: str = "step",
    log_y: bool = False,
    height: int = 240,
    points: list[Points] = (),
    hlines: list[tuple[float, str]] = (),
    x_range: tuple | None = None,
    template: str | None = None,
    bands: list[Band] = (),
) -> go.Figure:
    """A line chart with the run's markers; customdata holds each point's step. Faded lines (abandoned
    branches) share one legend entry, however many there are. Bands are drawn first, under the lines."""
    fig = go.Figure()
    for b in bands:
        _add_band(fig, b, axis)
    faded_shown = False
    for ln in lines:
        fig.add_trace(
            go.Scatter(
                x=to_axis(ln.x, axis),
                y=np.asarray(ln.y, dtype="float64"),
                customdata=np.asarray(ln.step),
                mode=ln.mode,
                name=safe(ln.name, 60),
                legendgroup="faded" if ln.faded else None,
                showlegend=False if ln.faded and faded_shown else None,
                opacity=0.3 if ln.faded else 1.0,
                line={"width": 1 if ln.faded else 1.6, "color": ln.colour},
                # markers make points clickable (a lines-only trace gives no selection), but drawing thousands
                # of SVG markers tripled the browser's render time; maxdisplayed keeps them clickable, undrawn
                marker={"size": 3, "color": ln.colour, "maxdisplayed": 1},
                hovertemplate="step %{customdata}<br>%{y:.6g}<extra>" + safe(ln.name, 60) + "</extra>",
            )
        )
        faded_shown |= ln.faded
    for p in points:
        fig.add_trace(
            go.Scatter(
                x=to_axis(p.x, axis),
                y=np.asarray(p.y, dtype="float64"),
                customdata=np.asarray(p.step),
                mode="markers",
                name=p.name,
                marker={"symbol": p.symbol, "size": 9, "color": p.colour, "line": {"width": 2}},
                hovertext=p.hover or None,
                hovertemplate="step %{customdata}<br>%{hovertext}<extra>" + p.name + "</extra>",
            )
        )
    for y, label in hlines:
        fig.add_hline(y=y, line={"dash": "dot", "width": 1, "color": "#888"}, annotation_text=safe(label, 40))
    _draw_markers(fig, markers, axis)
    fig.update_layout(
        title={"text": safe(title, 80), "font": {"size": 14}},
        height=height,
        margin={"l": 50, "r": 10, "t": 32, "b": 30},
        showlegend=len(lines) + len(points) > 1,
        legend={"orientation": "h", "y": -0.25},
        yaxis={"type": "log" if log_y else "linear"},
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        xaxis={"title": None},
        hovermode="closest",
        template=template,
    )
    if not log_y:
        flat = constant_range([ln.y for ln in lines] + [b.lo for b in bands] + [b.hi for b in bands])
        if flat is not None:
            fig.update_yaxes(range=flat, tickformat=".6~g")
    if x_range is not None:
        fig.update_xaxes(range=list(to_axis(np.asarray(x_range, dtype="float64"), axis)))
    return fig


def constant_range(ys: list) -> list[float] | None:
    """A y range that shows a constant series' value, or None when the data vary.

    Plotly autoscales a flat line to value ± 1, so a constant LR of 6e-05 sat on a -1..1 axis whose
    ticks (-1, -0.5, 0, ...) never show it. Here: value ± 10 % (± 1 at 0), so the line sits mid-chart
    and the ticks around it read as the value (6e-05 between 5.5e-05 and 6.5e-05)."""
    vals = [np.asarray(y, dtype="float64") for y in ys if y is not None and len(y)]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if v.size]
    if not vals:
        return None
    lo, hi = min(float(v.min()) for v in vals), max(float(v.max()) for v in vals)
    if hi - lo > 1e-9 * max(abs(lo), abs(hi), 1e-300):
        return None
    pad = abs(lo) * 0.1 if lo else 1.0
    return [lo - pad, hi + pad]


def _add_band(fig: go.Figure, b: Band, axis: str) -> None:
    x = to_axis(b.x, axis)
    edge = {"width": 0, "color": b.colour}
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.asarray(b.lo, dtype="float64"),
            mode="lines",
            line=edge,
            hoverinfo="skip",
            showlegend=False,
            legendgroup=b.name,
        )  # fmt: skip
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.asarray(b.hi, dtype="float64"),
            mode="lines",
            line=edge,
            fill="tonexty",
            fillcolor=_rgba(b.colour, b.opacity),
            name=safe(b.name, 60),
            legendgroup=b.name,
            hoverinfo="skip",
        )  # fmt: skip
    )


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, bl = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{bl},{alpha})"


def heatmap_figure(
    title: str,
    z: np.ndarray,
    rows: list[str],
    x: np.ndarray,
    *,
    axis: str = "step",
    unit: str = "",
    reverse: bool = False,
    height: int | None = None,
    template: str | None = None,
) -> go.Figure:
    """Rows (ranks, nodes or devices) x buckets (steps or time) as a Plotly Heatmap; x holds each bucket's start.

    The colour scale runs from the fleet's typical value to its worst, so one slow rank among a thousand
    shows as the one bright stripe; `reverse` for series where low is bad (an SM clock)."""
    z = np.asarray(z, dtype="float64")
    labels = [safe(r, 40) for r in rows]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=to_axis(x, axis),
            y=labels,
            colorscale="Viridis",
            reversescale=reverse,
            colorbar={"title": {"text": safe(unit, 20)}, "thickness": 12},
            hovertemplate="%{y}<br>"
            + X_TITLES.get(axis, "x")
            + " %{x}<br>%{z:.4g} "
            + safe(unit, 20)
            + "<extra></extra>",
            hoverongaps=False,
        )
    )
    fig.update_layout(
        title={"text": safe(title, 80), "font": {"size": 14}},
        height=height or int(min(900, max(260, 90 + 2.2 * len(rows)))),
        margin={"l": 90, "r": 10, "t": 32, "b": 30},
        yaxis={"autorange": "reversed", "type": "category", "nticks": 24},
        xaxis={"title": {"text": X_TITLES.get(axis, "x")}},
        template=template,
    )
    return fig


def _draw_markers(fig: go.Figure, markers: list[Marker], axis: str) -> None:
    """Per kind, a dashed vertical line per marker and one trace of hoverable symbols at the top.

    The lines are layout shapes, set in one assignment: shapes never take the hover, while a trace of
    vertical lines did (a click within 20 px of any line hit it, and dense incidents left no point of
    the curve clickable); and one assignment validates once, where add_shape per marker was O(n²)."""
    by_kind: dict[str, list[Marker]] = {}
    for m in markers:
        by_kind.setdefault(m.kind, []).append(m)
    shapes = []
    for kind, ms in by_kind.items():
        colour, symbol = MARKER_STYLE.get(kind, ("#444", "circle"))
        xs = to_axis(np.asarray([m.step if m.x is None else m.x for m in ms], dtype="float64"), axis)
        line = {"color": colour, "width": 1, "dash": "dash"}
        shapes += [
            {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 0.92, "yref": "paper", "line": line, "layer": "below"}
            for x in xs
        ]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=np.full(len(ms), 0.96),
                yaxis="y2",
                customdata=np.asarray([m.step for m in ms]),
                mode="markers",
                name=kind + "s",
                marker={"symbol": symbol, "size": 11, "color": colour},
                hovertext=[f"{kind} @ step {m.step}: {safe(m.label)}" for m in ms],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    if shapes:
        fig.update_layout(shapes=shapes)


def lineage_tree_figure(lanes: list[dict], height: int | None = None, template: str | None = None) -> go.Figure:
    """The restart tree from `tree.lanes()`: one lane per segment (oldest at the top) from its start step to
    its last step, coloured by how it ended, thick on the effective path, with a dotted connector from the
    parent's lane at the step it resumed from."""
    fig = go.Figure()
    if not lanes:
        return fig
    for ln in lanes:
        colour = END_COLOURS.get(ln["end_reason"], "#7f7f7f")
        label = safe(f"{ln['id']}: {ln['reason'] or 'fresh start'} → {ln['end_reason']}", 200)
        fig.add_trace(
            go.Scatter(
                x=[ln["start"], ln["end"]],
                y=[ln["lane"], ln["lane"]],
                mode="lines+markers",
                line={"color": colour, "width": 9 if ln["effective"] else 4},
                opacity=1.0 if ln["effective"] else 0.45,
                marker={"size": 8},
                name=safe(ln["id"], 40),
                customdata=[ln["start"], ln["end"]],
                hovertext=[label, label],
                hovertemplate="%{hovertext}<br>step %{x}<extra></extra>",
                showlegend=False,
            )
        )
        if ln["parent_lane"] is not None:
            fig.add_trace(
                go.Scatter(
                    x=[ln["start"], ln["start"]],
                    y=[ln["parent_lane"], ln["lane"]],
                    mode="lines",
                    line={"color": "#999999", "width": 1, "dash": "dot"},
                    hoverinfo="skip",
                    showlegend=False,
                )
            )
    ended = {ln["end_reason"] for ln in lanes}
    for reason, colour in END_COLOURS.items():  # a legend of end reasons
        if reason in ended:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": colour, "width": 6}, name=reason))
    fig.update_layout(
        height=height or max(220, 60 + 34 * len(lanes)),
        margin={"l": 10, "r": 10, "t": 32, "b": 36},
        title={"text": "Restart tree (thick: the effective path)", "font": {"size": 14}},
        yaxis={
            "autorange": "reversed",
            "tickvals": [ln["lane"] for ln in lanes],
            "ticktext": [safe(ln["id"], 40) for ln in lanes],
        },
        xaxis={"title": {"text": "step"}},
        legend={"orientation": "h", "y": -0.2},
        template=template,
    )
    return fig


def bar_figure(title: str, labels: list[str], values: list[float], *, unit: str, colours=None) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=[safe(s, 40) for s in labels],
            y=values,
            marker_color=colours,
            text=[f"{v:.3g}" for v in values],
            textposition="outside",
        )
    )
    fig.update_layout(
        title={"text": title, "font": {"size": 14}},
        height=280,
        margin={"l": 50, "r": 10, "t": 32, "b": 40},
        yaxis={"title": unit},
    )
    return fig


def goodput_figure(ledger: dict, *, unit: str = "h", height: int | None = None) -> go.Figure:
    """The goodput ledger as stacked horizontal bars: one per launch (segment), then the run's total, each split
    into the ledger's categories (hours of wall-clock time). Segment ids are user text: escaped."""
    rows = ledger.get("segments") or []
    labels = [safe(r["segment_id"], 40) + ("" if r["on_path"] else " (abandoned)") for r in rows] + ["run total"]
    est = " (estimate)" if ledger.get("estimated") else ""
    fig = go.Figure()
    for cat, colour in GOODPUT_COLOURS.items():
        hours = [r["parts"][cat]["s"] / 3600.0 for r in rows] + [ledger["categories"][cat]["s"] / 3600.0]
        if not any(hours):
            continue
        fig.add_trace(
            go.Bar(
                name=cat,
                y=labels,
                x=hours,
                orientation="h",
                marker_color=colour,
                hovertemplate=f"%{{y}}: {cat} %{{x:.3g}} {unit}<extra></extra>",
            )
        )
    ratio = ledger.get("effective_ratio")
    title = "Goodput: where the wall-clock time went" + est
    if ratio is not None:
        title += f"; effective training time {100 * ratio:.1f}%"
    fig.update_layout(
        barmode="stack",
        title={"text": title, "font": {"size": 14}},
        height=height or max(220, 26 * len(labels) + 110),
        margin={"l": 10, "r": 10, "t": 40, "b": 40},
        xaxis={"title": f"wall-clock ({unit})"},
        yaxis={"autorange": "reversed", "automargin": True},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def thin(df: pd.DataFrame, x: str, y: str, n: int = 1000) -> pd.DataFrame:
    """At most ~4n rows of a telemetry frame: the first, last, lowest and highest row of n equal-width
    x bins, so a device's spike or dip is never thinned away (M4, as the query layer does for metrics)."""
    if len(df) <= 4 * n:
        return df
    xs = df[x].to_numpy(float)
    span = (xs.max() - xs.min()) or 1.0
    b = np.minimum(((xs - xs.min()) / span * n).astype(int), n - 1)
    g = pd.Series(df[y].to_numpy(float), index=df.index).groupby(b)
    idx = pd.Index(g.idxmin().dropna()).union(g.idxmax().dropna())
    first = df.index.to_series().groupby(b)
    idx = idx.union(first.first()).union(first.last())
    return df.loc[idx.sort_values()]
