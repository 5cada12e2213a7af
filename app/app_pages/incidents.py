"""Incidents: what the divergence detector found, each with its context; one click to annotate it or intervene."""

from dataclasses import replace

import pandas as pd
import streamlit as st

from midflight.app import axis, context, data, forms
from midflight.logbook.analysis import incidents as triage
from midflight.logbook.present import figures, markers

CONTEXT_STEPS = 60  # steps shown either side of an incident

ctx = context.context()
context.require_run(ctx)
st.title(f"Incidents · {context.plain(ctx.run)}")
incs, busy = data.incidents(ctx.src, ctx.run, wait=1.0)
if incs is None:
    context.until_ready(
        lambda: data.incidents(ctx.src, ctx.run, wait=0)[0] is not None,
        "Scanning the run for incidents… (this page fills in when the scan finishes)",
    )
if busy:
    st.caption("A newer scan is running; these are the incidents of the previous one.")
forms.alert_history(ctx, "incidents:alerts")
forms.autopilot_approvals(ctx, "incidents:autopilot")
show_sup = st.toggle("Include incidents inside abandoned branches", key="incidents:sup")
incs = [i for i in incs if show_sup or not i.superseded]
if not incs:
    st.success("No incidents detected.")
    st.stop()
anns = data.annotations(ctx.src, ctx.k, ctx.run)
open_ids = {id(i) for i in triage.open_incidents(incs, anns)}
st.dataframe(
    pd.DataFrame(
        {
            "kind": [i.kind for i in incs],
            "steps": [f"{i.start_step}–{i.end_step}" for i in incs],
            "peak": [i.peak_value for i in incs],
            "classification": [i.classification for i in incs],
            "severity": [i.severity for i in incs],
            "open": [id(i) in open_ids for i in incs],
            "superseded": [i.superseded for i in incs],
        }
    ),
    hide_index=True,
    key="incidents:table",
)
for n, inc in enumerate(incs):
    title = f"{inc.kind} · steps {inc.start_step}–{inc.end_step} · {inc.classification} · {inc.severity}"
    with st.expander(title, expanded=n == 0):
        metric = inc.metric or "loss"
        lo, hi = inc.start_step - CONTEXT_STEPS, inc.end_step + CONTEXT_STEPS
        df = data.series(ctx.src, ctx.k, ctx.run, metric, x="step", which="all", x_range=(lo, hi))
        lines = []
        for seg, g in df.groupby("segment_id", sort=False):
            faded = seg != inc.segment_id
            lines.append(
                figures.Line(
                    f"{metric} {seg}", g["x"].to_numpy(), g["value"].to_numpy(), g["step"].to_numpy(), faded=faded
                )
            )
        marks = markers.within(axis.markers(replace(ctx, axis="step")), lo, hi)
        fig = figures.metric_figure(
            f"{metric} around the incident", lines, marks, height=260, log_y=metric in ("grad_norm", "loss_scale")
        )
        fig.add_vrect(x0=inc.start_step - 0.5, x1=inc.end_step + 0.5, fillcolor="#d62728", opacity=0.12, line_width=0)
        st.plotly_chart(fig, key=f"incidents:chart:{n}", config={"displaylogo": False})
        c1, c2 = st.columns(2)
        c1.markdown("**context (just before it started)**")
        c1.dataframe(pd.DataFrame([inc.context]), hide_index=True, key=f"incidents:ctx:{n}")
        c2.markdown("**detail**")
        c2.json(
            {
                "peak_step": inc.peak_step,
                "peak": inc.peak_value,
                "baseline": inc.baseline,
                "detected_at": inc.detected_step,
                "segment": inc.segment_id,
                **inc.detail,
            }
        )
        if inc.suggested_action:
            st.text("suggested: " + inc.suggested_action)
        b1, b2, _ = st.columns([1, 1, 4])
        if b1.button("Annotate", key=f"incidents:ann:{n}"):
            st.session_state["incidents:open"] = ("annotate", n)
        if b2.button(
            "Intervene",
            key=f"incidents:iv:{n}",
            disabled=not ctx.live,
            help=None if ctx.live else f"the run is {ctx.status}",
        ):
            st.session_state["incidents:open"] = ("intervene", n)
        action = st.session_state.get("incidents:open")
        if action == ("annotate", n):
            forms.annotation_form(
                ctx,
                f"incidents:{n}",
                step=inc.start_step,
                step_end=inc.end_step if inc.end_step > inc.start_step else None,
                kind=triage.annotation_kind(inc.kind),
                text=f"{inc.kind} ({inc.classification}): ",
            )
        elif action == ("intervene", n):
            forms.intervention_form(ctx, f"incidents:iv:{n}")
