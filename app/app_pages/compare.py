"""Compare: one metric of several runs overlaid, aligned by step, tokens or wall time since each run's start."""

import streamlit as st

from midflight.app import context, data
from midflight.logbook.present import figures

ctx = context.context()
st.title("Compare runs")
runs = list(data.runs(ctx.src, ctx.k)["run_id"])
if not runs:
    st.info("No runs yet.")
    st.stop()
c1, c2, c3 = st.columns([3, 2, 2])
chosen = c1.multiselect("runs", runs, default=runs[: min(len(runs), 4)], key="compare:runs")
names = sorted(set().union(*(data.metric_names(ctx.src, ctx.k, r) for r in chosen))) if chosen else []
if not names:
    st.info("Choose runs that logged metrics.")
    st.stop()
# the first chosen run's loss, by whatever name it logs it (logbook.roles)
loss = next((r["loss"].metric for r in (data.roles(ctx.src, ctx.k, run) for run in chosen) if "loss" in r), None)
metric = c2.selectbox("metric", names, index=names.index(loss) if loss in names else 0, key="compare:metric")
align = c3.radio(
    "align by",
    ["step", "tokens", "time"],
    format_func={"step": "step", "tokens": "tokens", "time": "time since start"}.get,
    horizontal=True,
    key="compare:align",
)
log_y = st.toggle("log y", value=metric in ("grad_norm", "loss_scale", "ppl"), key="compare:log")
lines, skipped = [], []
for run in chosen:
    df = data.series(ctx.src, ctx.k, run, metric, x=align, buckets=data.WIDE_BUCKETS)
    if df.empty:
        skipped.append(run)
        continue
    x = df["x"].to_numpy(float)
    if align == "time":
        x = (x - x.min()) / 3600.0  # hours since the run's first logged step
    lines.append(figures.Line(run, x, df["value"].to_numpy(), df["step"].to_numpy(), mode="lines"))
title = f"{metric} by {'hours since start' if align == 'time' else align} (effective histories)"
fig = figures.metric_figure(title, lines, axis="step", log_y=log_y, height=460)
fig.update_layout(showlegend=True, xaxis={"title": "hours since start" if align == "time" else align})
st.plotly_chart(fig, key="compare:chart", config={"displaylogo": False})
if skipped:
    st.caption(f"No {metric} on the {align} axis for: " + ", ".join(skipped))
