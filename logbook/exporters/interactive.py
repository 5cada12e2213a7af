"""The HTML logbook's charts as Plotly figures: zoomable, with a hover label on every marker.

Built here, not borrowed from `app.charts`: the logbook never depends on the dashboard. The style
follows the dashboard's so the two read alike: the effective curve solid, abandoned branches faded,
each marker a dashed vertical line (a layout shape, which never steals the curve's hover) plus a
hoverable symbol at the top of the chart on a hidden 0-1 axis, so markers show at any zoom and
scale. Plotly renders a subset of HTML in hover text, names and titles, so every user string is
HTML-escaped here.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..palette import END_COLOURS, MARKER_COLOURS
from .content import Chart, Logbook, Marker, tree
from .text import esc, one_line

MARKER_SYMBOLS = {"restart": "diamond", "incident": "x", "annotation": "triangle-down", "intervention": "star"}


def _safe(text, limit: int = 300) -> str:
    return esc(one_line(text, limit))


def chart_figure(chart: Chart, markers: list[Marker]) -> go.Figure:
    fig = go.Figure()
    shown_faded = False
    for c in chart.curves:
        y = np.asarray(c.value, dtype="float64")
        fig.add_trace(
            go.Scatter(
                x=np.asarray(c.step),
                y=y,
                mode="lines",
                name="abandoned branches" if c.faded else _safe(c.label, 60),
                legendgroup="abandoned" if c.faded else None,
                showlegend=not (c.faded and shown_faded),
                opacity=0.6 if c.faded else 1.0,
                line={"width": 1 if c.faded else 1.5, "color": "#8c564b" if c.faded else "#1f77b4"},
                hovertemplate="step %{x}<br>%{y:.6g}<extra>" + _safe(c.label, 60) + "</extra>",
            )
        )
        shown_faded |= c.faded
    by_kind: dict[str, list[Marker]] = {}
    for m in markers:
        by_kind.setdefault(m.kind, []).append(m)
    shapes = []
    for kind, ms in by_kind.items():
        colour = MARKER_COLOURS.get(kind, "#444444")
        line = {"color": colour, "width": 1, "dash": "dash"}
        shapes += [
            {
                "type": "line",
                "x0": m.step,
                "x1": m.step,
                "y0": 0,
                "y1": 0.92,
                "yref": "paper",
                "line": line,
                "layer": "below",
            }
            for m in ms
        ]
        fig.add_trace(
            go.Scatter(
                x=[m.step for m in ms],
                y=np.full(len(ms), 0.96),
                yaxis="y2",
                mode="markers",
                name=kind + "s",
                marker={"symbol": MARKER_SYMBOLS.get(kind, "circle"), "size": 10, "color": colour},
                hovertext=[f"{kind} @ step {m.step}: {_safe(m.label)}" for m in ms],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    fig.update_layout(
        shapes=shapes,
        title={"text": _safe(chart.title, 80), "font": {"size": 14}},
        height=340,
        margin={"l": 55, "r": 10, "t": 36, "b": 40},
        legend={"orientation": "h", "y": -0.2},
        yaxis={"type": "log" if chart.log_y else "linear"},
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        xaxis={"title": {"text": "step"}},
        hovermode="closest",
        template="plotly_white",
    )
    return fig


def tree_figure(book: Logbook) -> go.Figure:
    lanes = tree(book)
    fig = go.Figure()
    for ln in lanes:
        colour = END_COLOURS.get(ln["end_reason"], "#7f7f7f")
        label = _safe(f"{ln['id']}: {ln['reason'] or 'fresh start'} → {ln['end_reason']}")
        fig.add_trace(
            go.Scatter(
                x=[ln["start"], ln["end"]],
                y=[ln["lane"], ln["lane"]],
                mode="lines+markers",
                line={"color": colour, "width": 9 if ln["effective"] else 4},
                opacity=1.0 if ln["effective"] else 0.45,
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
    for reason, colour in END_COLOURS.items():
        if any(ln["end_reason"] == reason for ln in lanes):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": colour, "width": 6}, name=reason))
    fig.update_layout(
        height=max(220, 80 + 40 * len(lanes)),
        margin={"l": 10, "r": 10, "t": 36, "b": 40},
        title={"text": "Restart tree (thick: the effective path)", "font": {"size": 14}},
        yaxis={
            "autorange": "reversed",
            "tickvals": list(range(len(lanes))),
            "ticktext": [_safe(ln["id"], 40) for ln in lanes],
        },
        xaxis={"title": {"text": "step"}},
        legend={"orientation": "h", "y": -0.25},
        template="plotly_white",
    )
    return fig


def figures(book: Logbook) -> list[tuple[str, go.Figure]]:
    """(name, figure) for every chart of the logbook, the restart tree last."""
    out = [(c.metric, chart_figure(c, book.markers)) for c in book.charts]
    if book.segments:
        out.append(("restart_tree", tree_figure(book)))
    return out
