"""The Markdown logbook's charts as PNG files, drawn with matplotlib's Agg canvas.

A written logbook must read anywhere (a repository, a wiki, a printed page), so its charts are
plain images. matplotlib is imported here only, on first use: the rest of `logbook` (and any
training process) never pays for it. Figures are built on `Figure` + `FigureCanvasAgg` directly,
not pyplot, so nothing global is touched and threads (the dashboard's download callables) are safe.
User text is kept off the images except segment ids (safe path components) and the curve names;
matplotlib's mathtext `$` is escaped in every label.
"""

from __future__ import annotations

import io

import numpy as np

from midflight.logbook.exporters.content import Chart, Logbook
from midflight.logbook.present.markers import Marker
from midflight.logbook.present.palette import END_COLOURS, GOODPUT_COLOURS, MARKER_COLOURS

DPI = 110
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _label(text) -> str:
    return str(text).replace("$", r"\$")


def _new(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def chart_png(chart: Chart, markers: list[Marker]) -> bytes:
    """One metric over steps: the effective curve solid, abandoned branches faded, a dashed vertical
    line per marker (coloured by kind), and a legend of what is drawn."""
    fig = _new(9.0, 3.4)
    ax = fig.add_subplot()
    faded_label = "abandoned branches"
    for c in chart.curves:
        y = np.asarray(c.value, dtype="float64")
        if chart.log_y:
            y = np.where(y > 0, y, np.nan)  # a log axis cannot show 0 or a negative value
        ax.plot(
            np.asarray(c.step, dtype="float64"),
            y,
            lw=0.8 if c.faded else 1.2,
            alpha=0.6 if c.faded else 1.0,
            color="#8c564b" if c.faded else "#1f77b4",
            label=(faded_label if c.faded else _label(c.label)),
        )
        if c.faded:
            faded_label = None  # one legend entry for all abandoned branches
        bad = ~np.isfinite(np.asarray(c.value, dtype="float64"))
        if bad.any() and not c.faded:  # NaN / Inf would leave a silent gap: mark where they are
            ax.plot(
                np.asarray(c.step)[bad],
                np.full(bad.sum(), 0.98),
                "x",
                color="#d62728",
                ms=6,
                transform=ax.get_xaxis_transform(),
                label="NaN / Inf",
            )
    seen = set()
    for m in markers:
        colour = MARKER_COLOURS.get(m.kind, "#444444")
        label = f"{m.kind}s" if m.kind not in seen else None
        seen.add(m.kind)
        ax.axvline(m.step, color=colour, lw=0.8, ls="--", alpha=0.8, label=label)
    if chart.log_y and any(np.any(np.asarray(c.value, dtype="float64") > 0) for c in chart.curves):
        ax.set_yscale("log")  # only with a value it can show: a log axis of nothing cannot place its ticks
    ax.set_title(_label(chart.title), fontsize=11)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.25)
    fig.legend(fontsize=7, loc="outside lower center", ncols=6, frameon=False)
    return _png(fig)


def tree_png(book: Logbook) -> bytes:
    """The restart tree: one lane per segment from the step it started at to its last step, coloured by
    how it ended, thick on the effective path, with a dotted connector from the parent's lane."""
    lanes = book.lanes
    fig = _new(9.0, max(1.8, 0.9 + (0.45 if len(lanes) <= 12 else 0.28) * len(lanes)))  # 49 lanes: ~15 in
    ax = fig.add_subplot()
    for ln in lanes:
        colour = END_COLOURS.get(ln["end_reason"], "#7f7f7f")
        ax.plot(
            [ln["start"], ln["end"]],
            [ln["lane"], ln["lane"]],
            color=colour,
            marker="o",
            ms=4,
            lw=6 if ln["effective"] else 2.5,
            alpha=1.0 if ln["effective"] else 0.5,
            solid_capstyle="butt",
        )
        if ln["parent_lane"] is not None:
            ax.plot([ln["start"], ln["start"]], [ln["parent_lane"], ln["lane"]], color="#999999", lw=1, ls=":")
    for reason, colour in END_COLOURS.items():
        if any(ln["end_reason"] == reason for ln in lanes):
            ax.plot([], [], color=colour, lw=5, label=reason)
    ax.set_yticks(range(len(lanes)), [_label(ln["id"]) for ln in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlabel("step")
    ax.set_title("Restart tree (thick: the effective path)", fontsize=11)
    ax.grid(axis="x", alpha=0.25)
    if lanes:
        fig.legend(fontsize=7, loc="outside lower center", ncols=6, frameon=False)
    return _png(fig)


def goodput_png(book: Logbook) -> bytes:
    """The goodput ledger as the dashboard draws it: a stacked bar per segment plus the run total, in hours."""
    g = book.goodput
    rows = g.get("segments") or []
    labels = [_label(r["segment_id"]) for r in rows] + ["run total"]
    fig = _new(9.0, max(1.8, 0.9 + (0.4 if len(labels) <= 12 else 0.26) * len(labels)))
    ax = fig.add_subplot()
    left = np.zeros(len(labels))
    for cat, colour in GOODPUT_COLOURS.items():
        hours = np.array([r["parts"][cat]["s"] / 3600.0 for r in rows] + [g["categories"][cat]["s"] / 3600.0])
        if not hours.any():
            continue
        ax.barh(range(len(labels)), hours, left=left, color=colour, label=cat)
        left += hours
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("wall-clock (h)")
    est = " (estimate)" if g.get("estimated") else ""
    ax.set_title(f"Goodput: where the wall-clock time went{est}", fontsize=11)
    ax.grid(axis="x", alpha=0.25)
    fig.legend(fontsize=7, loc="outside lower center", ncols=8, frameon=False)
    return _png(fig)
