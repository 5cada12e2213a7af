"""Live: the run's vital signs, refreshed in place every second while it runs (a fragment, no page reload).

Zoom is a server-side range (box-select, then "Zoom to this range") that re-queries at
full resolution and survives refreshes. The charts update in place (app.live_chart), so a
refresh never blanks them. Clicking a
point opens the annotation form and pauses the refresh until it is saved or cancelled.
"""

import os

import numpy as np
import pandas as pd
import streamlit as st

from midflight.app import axis, bands, context, data, forms, selection, zoom
from midflight.logbook.analysis import incidents as triage
from midflight.logbook.analysis.progress import ETA_WINDOW
from midflight.logbook.present import figures, text

REFRESH_S = float(os.environ.get("MIDFLIGHT_REFRESH_S", "1.0"))
BAND_BUCKETS = 300  # step (or time) buckets of a distribution band: ~one per two pixel columns of a grid chart
WORST = 3  # the worst ranks drawn, named, over the band
TELEMETRY = [  # (title, names tried in order, unit)
    ("utilisation", ("util_pct",), "%"),
    ("power", ("power_w", "power_est_w"), "W"),
    ("temperature", ("temp_c",), "°C"),
    ("memory", ("mem_used_gib",), "GiB"),
]

ctx = context.context()
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
    tps = data.last_value(ctx.src, ctx.k, ctx.run, "tokens_per_s")
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


def training_charts(ctx: context.Ctx, marks: list, segs: pd.DataFrame) -> None:
    zr = zoom.zoom(ctx)
    names = set(data.metric_names(ctx.src, ctx.k, ctx.run))
    specs = []
    which = "ppl" if st.session_state.get("live:ppl") and "ppl" in names else "loss"
    specs.append((which, [axis.line(ctx, which)], {"log_y": which == "ppl"}))
    clip = axis.line(ctx, "clip", colour="#888", mode="lines", label="clip threshold")
    specs.append(("grad norm (grey: the clip threshold)", [axis.line(ctx, "grad_norm"), clip], {"log_y": True}))
    specs.append(("learning rate", [axis.line(ctx, "lr")], {}))
    ov = data.events(ctx.src, ctx.k, ctx.run, ("overflow",))
    pts = []
    if not ov.empty:
        to_x = axis.step_mapper(ctx)
        scale = data.series(ctx.src, ctx.k, ctx.run, "loss_scale", x="step").sort_values("step")
        ys = np.interp(ov["step"].to_numpy(float), scale["step"], scale["value"]) if not scale.empty else ov["step"] * 0
        xs = to_x(ov["step"].to_numpy())
        keep = np.ones(len(xs), bool) if zr is None else (xs >= zr[0]) & (xs <= zr[1])
        pts = [figures.Points("overflow", xs[keep], ys[keep], ov["step"].to_numpy()[keep])]
    specs.append(("loss scale (overflows ○)", [axis.line(ctx, "loss_scale")], {"log_y": True, "points": pts}))
    specs.append(("tokens/s", [axis.line(ctx, "tokens_per_s")], {}))
    ranks = int(segs["ranks"].max()) if not segs.empty else 1
    if ranks <= data.FEW:
        per_rank = [axis.line(ctx, "step_time_s", rank=r, label=f"rank {r}", mode="lines") for r in range(ranks)]
        specs.append(("step time per rank (s)", per_rank, {}))
    else:
        specs.append(rank_band(ctx, zr, "step_time_s", "step time"))
        if "compute_s" in names:  # synchronous ranks all wait for the slowest: their own work tells them apart
            specs.append(rank_band(ctx, zr, "compute_s", "compute before collectives"))
    cols = st.columns(2)
    for i, (title, lines, kw) in enumerate(specs):
        lines = [ln for ln in lines if ln is not None]
        if not lines and title.split()[0] not in names:
            continue
        fig = figures.metric_figure(title, lines, marks, axis=ctx.axis, x_range=zr, **kw)
        with cols[i % 2]:
            selection.chart(ctx, fig, key=f"live:chart:{i}")


def rank_band(ctx: context.Ctx, zr, name: str, what: str) -> tuple:
    """Many ranks: the distribution of a per-rank metric across ranks per step bucket (median, p5-p95,
    min-max) and the worst ranks' own lines, named, from one aggregate query (logbook.store.ranks) instead
    of one line per rank."""
    view = data.metric_view(ctx.src, ctx.k, ctx.run, name, BAND_BUCKETS, x_range=zr if ctx.axis == "step" else None)
    title = f"{what} across {len(view.rows):,} ranks (s): median, p5–p95, min–max, worst ranks"
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
    training_charts(ctx, marks, segs)
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
