"""Live: the run's vital signs, refreshed in place every second while it runs (a fragment, no page reload).

The role charts (loss, grad norm, LR, loss scale, throughput, step time) read whatever metric plays each
role in this run (logbook.roles, resolved once per run through app.data), so a Hugging Face, Lightning or
Megatron run gets them under its own names; every other metric follows in a searchable panel grid.

Zoom is a server-side range (box-select, then "Zoom to this range") that re-queries at
full resolution and survives refreshes. The charts update in place (app.live_chart), so a
refresh never blanks them. Clicking a
point opens the annotation form and pauses the refresh until it is saved or cancelled.
"""

import os

import numpy as np
import pandas as pd
import streamlit as st

from midflight.app import axis, bands, context, data, forms, grid, selection, zoom
from midflight.logbook.analysis import incidents as triage
from midflight.logbook.analysis.progress import ETA_WINDOW
from midflight.logbook.present import figures, text

REFRESH_S = float(os.environ.get("MIDFLIGHT_REFRESH_S", "1.0"))
BAND_BUCKETS = 300  # step (or time) buckets of a distribution band: ~one per two pixel columns of a grid chart
WORST = 3  # the worst ranks drawn, named, over the band
GRID_COLUMNS = 3  # the panel grid of the run's other metrics
GRID_PANEL_BUCKETS = 300  # M4 buckets per grid panel (~300 px wide)
TELEMETRY = [  # (title, names tried in order, unit)
    ("utilisation", ("util_pct",), "%"),
    ("power", ("power_w", "power_est_w"), "W"),
    ("temperature", ("temp_c",), "°C"),
    ("memory", ("mem_used_gib",), "GiB"),
]

ctx = context.context()
zoom.follow_link(ctx)  # ?step=N (an alert's link): open on that step
context.require_run(ctx)
st.title(f"Live · {context.plain(ctx.run)}")
c1, c2, c3 = st.columns([1, 1, 4])
paused = c1.toggle("Pause live", key="live:pause", help="Stop refreshing (a zoom is kept either way)")
with c2:
    selecting = selection.box_mode_toggle()
annotating = selection.selection(ctx) is not None
# the header's energy and incident count come from background analyses: never wait for them, refresh until in
pending = not data.analyses_ready(ctx.src, ctx.run)
every = REFRESH_S if (ctx.live and not paused and not annotating and not selecting) or pending else None
why = " · paused while you annotate" if annotating else " · paused while selecting ranges" if selecting else ""
c3.caption(f"status: {ctx.status}" + (f" · refreshing every {REFRESH_S:g} s" if every else why))


def header(ctx: context.Ctx) -> None:
    prog = data.progress(ctx.src, ctx.k, ctx.run)
    step, planned = prog["step"], prog["planned"]
    eta = prog["eta_s"] if ctx.live else None
    power, _ = data.energy_summary(ctx.src, ctx.run, wait=0)
    e_j = (power or {}).get("energy", {}).get("energy_j")
    incs, _ = data.incidents(ctx.src, ctx.run, wait=0)
    open_ = triage.open_incidents(incs, data.annotations(ctx.src, ctx.k, ctx.run))
    throughput = data.roles(ctx.src, ctx.k, ctx.run).get("throughput")  # whatever the run calls it
    tps = data.last_value(ctx.src, ctx.k, ctx.run, throughput.metric) if throughput else None
    ppl = data.last_value(ctx.src, ctx.k, ctx.run, "ppl")
    m = st.columns(6)
    m[0].metric("step" + (f" (of {planned:,})" if planned else ""), "—" if step is None else f"{step:,}")
    m[1].metric("ETA", text.duration(eta), help=f"at the median step time of the last {ETA_WINDOW} steps")
    m[2].metric("tokens/s", "—" if tps is None else f"{tps:,.0f}")
    m[3].metric("perplexity", "—" if ppl is None or not np.isfinite(ppl) else f"{ppl:,.2f}")
    est = (power or {}).get("energy", {}).get("estimated")
    shown = "…" if power is None else "no data" if e_j is None else text.energy(e_j)  # no data: no telemetry, no TDP
    m[4].metric("energy" + (" (est.)" if est else ""), shown, help=None if e_j is not None else text.NO_ENERGY)
    m[5].metric("open incidents", "…" if incs is None else len(open_), help="not yet covered by an annotation")


def skipped_lines(ctx: context.Ctx) -> None:
    """Lines ingest refused (a poisoned or torn record): said once, with examples, above the charts they left out.

    The rest of the run is stored and drawn as usual; this is where a reader learns that something
    was not, and why, without opening a terminal."""
    found = data.ingest_problems(ctx.src, ctx.k, ctx.run)
    if not found:
        return
    n = sum(p["malformed"] for p in found)
    label = f"{n:,} malformed line{'s' if n != 1 else ''} skipped in {len(found)} file{'s' if len(found) != 1 else ''}"
    with st.expander(f"⚠ {label}; everything else in the run is shown"):
        rows = [
            {"file": p["file"], "line": line_no, "why": why, "text": snippet}
            for p in found
            for line_no, why, snippet in p["examples"]
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="live:skipped")


def training_charts(ctx: context.Ctx, marks: list, segs: pd.DataFrame) -> set[str]:
    """The role charts (logbook.roles): loss, grad norm, LR, loss scale, throughput, step time, each read
    from the metric that plays the role in this run and titled with the run's own name where it differs
    ("loss (train/loss)"). Returns the metric names drawn, which the panel grid leaves out."""
    zr = zoom.zoom(ctx)
    names = set(data.metric_names(ctx.src, ctx.k, ctx.run))
    found = data.roles(ctx.src, ctx.k, ctx.run)
    drawn: set[str] = set()

    def role_line(role: str, **kw):
        r = found.get(role)
        if r is None:
            return None
        drawn.add(r.metric)
        return axis.line(ctx, r.metric, **kw)

    def titled(role: str, title: str) -> str:
        return found[role].title(title) if role in found else title

    specs = []  # (key, title, lines, kw, shown: does the run log what the chart draws)
    if st.session_state.get("live:ppl") and "ppl" in names:
        specs.append(("loss", "ppl", [axis.line(ctx, "ppl")], {"log_y": True}, True))
    else:
        ev = found.get("eval_loss")
        lines = [role_line("loss"), role_line("eval_loss", label=ev.title() if ev else None, mode="lines+markers")]
        specs.append(("loss", titled("loss", "loss"), lines, {}, "loss" in found or ev is not None))
    drawn.add("ppl")
    clip = axis.line(ctx, "clip", colour="#888", mode="lines", label="clip threshold") if "clip" in names else None
    drawn.add("clip")
    gtitle = titled("grad_norm", "grad norm") + (" · grey: the clip threshold" if clip is not None else "")
    specs.append(("grad_norm", gtitle, [role_line("grad_norm"), clip], {"log_y": True}, "grad_norm" in found))
    specs.append(("lr", titled("lr", "learning rate"), [role_line("lr")], {}, "lr" in found))
    ov = data.events(ctx.src, ctx.k, ctx.run, ("overflow",))
    pts = []
    scale_role = found.get("loss_scale")
    if not ov.empty:
        to_x = axis.step_mapper(ctx)
        scale = (
            data.series(ctx.src, ctx.k, ctx.run, scale_role.metric, x="step").sort_values("step")
            if scale_role
            else pd.DataFrame(columns=["step", "value"])
        )
        ys = np.interp(ov["step"].to_numpy(float), scale["step"], scale["value"]) if not scale.empty else ov["step"] * 0
        xs = to_x(ov["step"].to_numpy())
        keep = np.ones(len(xs), bool) if zr is None else (xs >= zr[0]) & (xs <= zr[1])
        pts = [figures.Points("overflow", xs[keep], ys[keep], ov["step"].to_numpy()[keep])]
    stitle = titled("loss_scale", "loss scale") + " (overflows ○)"
    scale_kw = {"log_y": True, "points": pts}
    specs.append(("loss_scale", stitle, [role_line("loss_scale")], scale_kw, scale_role is not None))
    specs.append(("throughput", titled("throughput", "tokens/s"), [role_line("throughput")], {}, "throughput" in found))
    step_time = found.get("step_time")
    if step_time is not None:
        drawn.add(step_time.metric)
        unit = step_time.unit or "s"
        named = "" if step_time.metric == step_time.canonical else f", {step_time.metric}"
        ranks = int(segs["ranks"].max()) if not segs.empty else 1
        if ranks <= data.FEW:
            per_rank = [axis.line(ctx, step_time.metric, rank=r, label=f"rank {r}", mode="lines") for r in range(ranks)]
            specs.append(("step_time", f"step time per rank ({unit}{named})", per_rank, {}, True))
        else:
            specs.append(("step_time", *rank_band(ctx, zr, step_time.metric, "step time", unit=f"{unit}{named}"), True))
            if "compute_s" in names:  # synchronous ranks all wait for the slowest: their own work tells them apart
                drawn.add("compute_s")
                specs.append(("compute", *rank_band(ctx, zr, "compute_s", "compute before collectives"), True))
    cols = st.columns(2)
    shown = 0
    for key, title, lines, kw, present in specs:
        if not present:
            continue
        lines = [ln for ln in lines if ln is not None]
        fig = figures.metric_figure(title, lines, marks, axis=ctx.axis, x_range=zr, **kw)
        with cols[shown % 2]:
            selection.chart(ctx, fig, key=f"live:chart:{key}")  # by role: a chart keeps its identity
        shown += 1
    return drawn


def other_metrics(ctx: context.Ctx, marks: list, drawn: set[str]) -> None:
    """A searchable grid of every metric the run logs that the role charts do not draw: one small panel per
    metric (rank 0, the query layer's spike-preserving downsampled series), a histogram family
    (`<name>/p<q>`) as one panel with p5-p95 and p25-p75 bands around its median. At most grid.CAP panels
    are drawn; a filter narrows them."""
    names = data.metric_names(ctx.src, ctx.k, ctx.run)
    everything = grid.panels(names, drawn)
    if not everything:
        return
    st.subheader(f"Other metrics ({len(everything):,})")
    query = st.text_input(
        "Filter metrics", key="live:grid:filter", placeholder="part of a name; several words must all match"
    )
    found = grid.panels(names, drawn, query) if query.strip() else everything
    shown, more = grid.visible(found)
    if not found:
        st.caption("No metric matches the filter.")
        return
    zr = zoom.zoom(ctx)
    cols = st.columns(GRID_COLUMNS)
    for i, panel in enumerate(shown):
        lines, band_list = panel_lines(ctx, panel)
        fig = figures.metric_figure(
            panel.title + (" (p50, p25–p75, p5–p95)" if panel.is_histogram else ""),
            lines,
            marks,
            axis=ctx.axis,
            x_range=zr,
            height=200,
            bands=band_list,
        )
        with cols[i % GRID_COLUMNS]:
            selection.chart(ctx, fig, key=f"live:grid:{panel.title}")
    if more:
        st.caption(f"{more:,} more: refine the filter")


def panel_lines(ctx: context.Ctx, panel: grid.Panel) -> tuple[list, list]:
    """One panel's lines (and bands, for a histogram family), downsampled by the query layer."""
    if not panel.is_histogram:
        line = axis.line(ctx, panel.names[0], buckets=GRID_PANEL_BUCKETS, mode="lines")
        return ([line] if line is not None else []), []
    q = panel.quantiles
    got = {p: axis.line(ctx, q[p], buckets=GRID_PANEL_BUCKETS, mode="lines") for p in q if p in (5, 25, 50, 75, 95)}
    band_list = []
    for lo, hi in grid.BANDS:
        a, b = got.get(lo), got.get(hi)
        if a is None or b is None:
            continue
        # each quantile is downsampled on its own: the band's edges are put on one x grid
        xs = np.union1d(a.x, b.x)
        band_list.append(
            figures.Band(
                f"p{lo}–p{hi}",
                xs,
                np.interp(xs, a.x, a.y),
                np.interp(xs, b.x, b.y),
                opacity=0.15 if (lo, hi) == (5, 95) else 0.3,
            )
        )
    median = got.get(50)
    if median is not None:
        median.name, median.colour = "p50", "#1f77b4"
    return ([median] if median is not None else []), band_list


def rank_band(ctx: context.Ctx, zr, name: str, what: str, unit: str = "s") -> tuple:
    """Many ranks: the distribution of a per-rank metric across ranks per step bucket (median, p5-p95,
    min-max) and the worst ranks' own lines, named, from one aggregate query (logbook.store.ranks) instead
    of one line per rank."""
    view = data.metric_view(ctx.src, ctx.k, ctx.run, name, BAND_BUCKETS, x_range=zr if ctx.axis == "step" else None)
    title = f"{what} across {len(view.rows):,} ranks ({unit}): median, p5–p95, min–max, worst ranks"
    if view.empty:
        return title, [], {}
    b = view.band
    x = axis.step_mapper(ctx)(b["x_lo"].to_numpy())
    lines = [figures.Line("median", x, b["median"].to_numpy(), b["x_lo"].to_numpy(), colour="#1f77b4", mode="lines")]
    for o in view.outliers.head(WORST).itertuples():
        if o.vs_median > 0 and o.rank is not None:
            lines.append(axis.line(ctx, name, rank=int(o.rank), label=f"rank {o.rank} ({o.host})", mode="lines"))
    return title, lines, {"bands": bands.distribution(x, b)}


def system_charts(ctx: context.Ctx, marks: list) -> None:
    names = set(data.telemetry_names(ctx.src, ctx.k, ctx.run))
    cols = st.columns(2)
    shown = 0
    zr = zoom.zoom(ctx)
    for title, candidates, unit in TELEMETRY:
        name = next((n for n in candidates if n in names), None)
        if name is None:
            continue
        view = data.telemetry_view(ctx.src, ctx.k, ctx.run, name, BAND_BUCKETS)
        lines, band_list, many = [], [], len(view.rows) > data.FEW
        if many:
            lines, band_list = bands.telemetry_band(view, axis.step_mapper(ctx), on_time=ctx.axis == "time")
        else:
            df = data.telemetry_series(ctx.src, ctx.k, ctx.run, name)
            for (host, dev), g in df.groupby(["host", "device"], dropna=False):
                g = figures.thin(g, "wall_time", "value")
                steps = g["step"].ffill().bfill().fillna(0).to_numpy()
                x = g["wall_time"].to_numpy() if ctx.axis == "time" else axis.step_mapper(ctx)(steps)
                lines.append(figures.Line(f"{host}/{dev}", x, g["value"].to_numpy(), steps, mode="lines"))
        est = " (estimated)" if name.endswith("_est_w") else ""
        label = f"{title} ({unit}){est}" + (f", {len(view.rows):,} devices" if many else "")
        fig = figures.metric_figure(label, lines, marks, axis=ctx.axis, x_range=zr, height=220, bands=band_list)
        with cols[shown % 2]:
            selection.chart(ctx, fig, key=f"live:sys:{name}")
        shown += 1
    if not shown:
        st.caption("No device telemetry in this run.")


@st.fragment(run_every=every)
def live_region():
    ctx = context.context()  # fresh: the data version moves on between refreshes
    segs = data.segments(ctx.src, ctx.k, ctx.run, data.tick())
    header(ctx)
    skipped_lines(ctx)
    zoom.zoom_bar(ctx, "live")
    forms.selection_panel(ctx, "live")
    marks = axis.markers(ctx)
    drawn = training_charts(ctx, marks, segs)
    other_metrics(ctx, marks, drawn)
    st.subheader("System")
    system_charts(ctx, marks)
    forms.intervention_status(ctx)
    # last, after every widget of this run: a rerun here restarts the run, and a click it carried would be lost
    if pending and not ctx.live and data.analyses_ready(ctx.src, ctx.run):
        st.rerun(scope="app")  # the analyses are in: redraw once with their markers, and stop the timer


st.toggle("Show perplexity instead of loss", key="live:ppl")
live_region()
with st.expander("Intervene in this run", expanded=ctx.live and st.session_state.get("live:iv:review") is not None):
    forms.intervention_form(ctx, "live:iv")
