"""The HTML logbook's charts as Plotly figures: zoomable, with a hover label on every marker.

The figures are the dashboard's own (`logbook.present.figures`), so an exported chart reads exactly
like the page it came from: the effective curve solid, abandoned branches faded, each marker a dashed
vertical line plus a hoverable symbol at the top, the restart tree in the same lanes and colours.
"""

from __future__ import annotations

import plotly.graph_objects as go

from midflight.logbook.exporters.content import Chart, Logbook
from midflight.logbook.present import figures
from midflight.logbook.present.markers import Marker

TEMPLATE = "plotly_white"  # a printed page: no grey plot background


def chart_figure(chart: Chart, markers: list[Marker]) -> go.Figure:
    lines = [
        figures.Line(
            "abandoned branches" if c.faded else c.label,
            c.step,
            c.value,
            c.step,
            faded=c.faded,
            colour="#8c564b" if c.faded else "#1f77b4",
            mode="lines",
        )
        for c in chart.curves
    ]
    fig = figures.metric_figure(chart.title, lines, markers, log_y=chart.log_y, height=340, template=TEMPLATE)
    fig.update_layout(xaxis={"title": {"text": "step"}}, margin={"l": 55, "r": 10, "t": 36, "b": 40})
    return fig


def figures_of(book: Logbook) -> list[tuple[str, go.Figure]]:
    """(name, figure) for every chart of the logbook, the restart tree last."""
    out = [(c.metric, chart_figure(c, book.markers)) for c in book.charts]
    if book.lanes:
        out.append(("restart_tree", figures.lineage_tree_figure(book.lanes, template=TEMPLATE)))
    if book.goodput.get("wall_s"):
        out.append(("goodput", figures.goodput_figure(book.goodput)))
    return out
