"""Lineage & logbook: the restart tree, the curves as OPT's Figure 1 drew them, one timeline, and wasted compute."""

import functools
import json

import pandas as pd
import streamlit as st

from midflight.app import axis, context, data, forms, selection, zoom
from midflight.logbook import exporters
from midflight.logbook.analysis import energy
from midflight.logbook.present import figures, tree
from midflight.logbook.report import timeline

EXPORTS = (  # format, button label
    ("markdown", "Markdown (zip)"),
    ("html", "HTML"),
    ("parquet", "Parquet (zip)"),
    ("csv", "CSV (zip)"),
)


ctx = context.context()
context.require_run(ctx)
st.title(f"Lineage & logbook · {context.plain(ctx.run)}")
segs = data.segments(ctx.src, ctx.k, ctx.run, data.tick())
if segs.empty:
    st.info("This run has no segments yet.")
    st.stop()

st.plotly_chart(figures.lineage_tree_figure(tree.lanes(segs)), key="lineage:tree", config={"displaylogo": False})
table = pd.DataFrame(
    {
        "segment": segs["segment_id"],
        "parent": segs["parent_id"],
        "resumed from step": segs["resume_step"],
        "steps": [f"{a}–{b}" if pd.notna(a) else "" for a, b in zip(segs["start_step"], segs["end_step"])],
        "why it started": segs["reason"],
        "how it ended": segs["end_reason"],
        "error": segs["error"],
        "changed": [", ".join(json.loads(d or "{}")) if isinstance(d, str) else "" for d in segs["config_diff"]],
        "effective": segs["effective"],
    }
)
st.dataframe(table, hide_index=True, key="lineage:segments")

# --- the curves: effective solid, superseded faded
names = data.metric_names(ctx.src, ctx.k, ctx.run)
if names:
    loss = data.roles(ctx.src, ctx.k, ctx.run).get("loss")  # the run's own name for its loss (logbook.roles)
    default = names.index(loss.metric) if loss and loss.metric in names else 0
    metric = st.selectbox("metric", names, index=default, key="lineage:metric")
    marks = axis.markers(ctx)
    lines = [axis.line(ctx, metric, label=f"{metric} (effective)", colour="#1f77b4", buckets=data.WIDE_BUCKETS)]
    sup = data.series(
        ctx.src,
        ctx.k,
        ctx.run,
        metric,
        x=ctx.axis,
        which="superseded",
        x_range=zoom.zoom(ctx),
        buckets=data.WIDE_BUCKETS,
    )
    for seg, g in sup.groupby("segment_id", sort=False):
        g = g.sort_values("x")
        lines.append(
            figures.Line(
                f"{seg} (superseded)", g["x"].to_numpy(), g["value"].to_numpy(), g["step"].to_numpy(), faded=True
            )
        )
    selection.box_mode_toggle()
    zoom.zoom_bar(ctx, "lineage")
    forms.selection_panel(ctx, "lineage")
    fig = figures.metric_figure(
        f"{metric}: effective history solid, abandoned branches faded",
        [ln for ln in lines if ln is not None],
        marks,
        axis=ctx.axis,
        height=380,
        log_y=metric in ("grad_norm", "loss_scale", "ppl"),
        x_range=zoom.zoom(ctx),
    )
    selection.chart(ctx, fig, key="lineage:curves")

# --- wasted compute of abandoned branches
st.subheader("Abandoned branches: what they cost")
waste = data.wasted(ctx.src, ctx.k, ctx.run)
if waste:
    w = pd.DataFrame(waste)
    w["energy_kwh"] = w["energy_j"] / energy.J_PER_KWH
    cols = [
        "segment_id",
        "discarded_by",
        "first_step",
        "last_step",
        "steps",
        "tokens",
        "wall_s",
        "device_hours",
        "energy_kwh",
        "energy_basis",
    ]
    st.dataframe(w[cols], hide_index=True, key="lineage:waste")
else:
    st.caption("No abandoned branches: every logged step is on the effective history.")

# --- the goodput ledger: where the wall-clock time went, launch by launch
st.subheader("Goodput: where the time went")
ledger = data.goodput(ctx.src, ctx.k, ctx.run, data.tick())
if ledger.get("wall_s"):
    st.plotly_chart(figures.goodput_figure(ledger), key="lineage:goodput", config={"displaylogo": False})
    if ledger["estimated"]:
        st.warning("An estimate: " + "; ".join(ledger["assumptions"]), icon="⚠️")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "category": k,
                    "hours": c["s"] / 3600.0,
                    "share": c["s"] / ledger["wall_s"],
                    "device-hours": c["device_hours"],
                    "how": "estimated" if c["estimated"] else "measured",
                    "method": c["method"],
                }
                for k, c in ledger["categories"].items()
            ]
        ),
        hide_index=True,
        key="lineage:goodput_table",
    )
    st.caption("Each second counts once, in the first category that claims it: " + " > ".join(ledger["precedence"]))
else:
    st.caption("No wall-clock times recorded yet: no goodput ledger.")

# --- one timeline: events, interventions, annotations
st.subheader("Timeline")
tl = data.timeline(ctx.src, ctx.k, ctx.run)
c1, c2, c3 = st.columns([2, 2, 3])
types = c1.multiselect("types", sorted(tl["type"].unique()), default=sorted(tl["type"].unique()), key="lineage:types")
kinds = c2.multiselect("kinds", sorted(tl["what"].astype(str).unique()), key="lineage:kinds")
needle = c3.text_input("search", key="lineage:search")
view = timeline.search(tl, types=types, kinds=kinds, needle=needle)
view = view.assign(time=lambda d: pd.to_datetime(d["time"], unit="s"))
st.dataframe(view, hide_index=True, key="lineage:timeline")

# --- annotations: edit, delete, audit
st.subheader("Annotations")
forms.annotation_editor(ctx, "lineage")
with st.expander("Audit trail (every create, edit and delete)"):
    st.dataframe(data.annotation_history(ctx.src, ctx.k, ctx.run), hide_index=True, key="lineage:audit")

# --- export: every format is generated only when its button is clicked (data=callable, on a worker thread)
st.subheader("Export this logbook")
st.caption(
    "Markdown: the written logbook with its charts as PNG files. HTML: one page with interactive charts that "
    "works offline. Parquet and CSV: every metric, event, telemetry sample, segment, annotation, intervention and "
    "incident. A file is generated when you click (a few seconds); CO2eq uses the world-average grid and PUE 1."
)
for col, (fmt, label) in zip(st.columns(len(EXPORTS)), EXPORTS):
    file_name, mime = exporters.download_name(ctx.run, fmt)
    col.download_button(
        label,
        data=functools.partial(data.export_file, ctx.src, ctx.k, ctx.run, fmt),
        file_name=file_name,
        mime=mime,
        on_click="ignore",
        key=f"lineage:export:{fmt}",
    )
