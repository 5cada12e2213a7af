"""Charts that select: a click (a step) or a box (a step range) becomes the pending selection, which the
annotation form (app.forms) then offers to annotate or zoom to."""

from __future__ import annotations

import functools

import streamlit as st

from midflight.app import live_chart
from midflight.app.axis import x_to_step
from midflight.app.context import Ctx, context_for
from midflight.logbook.present.figures import from_axis


def box_mode_toggle() -> bool:
    """Charts answer clicks (a point) by default; this switches them to box selection (a range).

    Plotly reports no clicks while its drag mode is "select", so the two cannot be on at once: hence a
    server-side switch, which the server knows about (the Live page pauses its refresh while it is on, so a
    drag is not cut short).
    """
    return st.toggle(
        "Select ranges",
        key="box_mode",
        help="Drag across any chart to select a step range: annotate it, or zoom every chart to it",
    )


def chart(ctx: Ctx, fig, key: str) -> None:
    """Render a figure that updates in place (app.live_chart); a click or a box selection becomes the
    pending selection (step or step range).

    The chart keeps its identity while its data change, so a live refresh redraws the plot already on
    screen instead of mounting a new one (Streamlit's own st.plotly_chart remounts on every new figure).
    The selection is read in the on_change callback, which runs before the rerun the click causes.
    """
    if st.session_state.get("box_mode"):
        fig.update_layout(dragmode="select", selectdirection="h")
    live_chart.plotly_chart(
        fig,
        key=key,
        on_change=functools.partial(_selected, ctx.run, ctx.axis, key),
        config={"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d"]},
    )
    if st.session_state.pop("_new_selection", False):
        st.rerun(scope="app")  # a full rerun: the live refresh pauses while the form is open


def _selected(run: str, axis: str, key: str) -> None:
    """on_change callback: keep the chart's selection as the pending one (an empty one clears nothing)."""
    state = st.session_state.get(key)
    sel = _steps_of(context_for(run, axis), (state or {}).get("selection") or {})
    if sel is None:
        return
    st.session_state["selection"] = {"run": run, "axis": axis, "chart": key, **sel}
    st.session_state["selection_id"] = st.session_state.get("selection_id", 0) + 1
    st.session_state["_new_selection"] = True


def _steps_of(ctx: Ctx, selection) -> dict | None:
    box = selection.get("box") or []
    if box and box[0].get("x"):
        x0, x1 = sorted(from_axis(v, ctx.axis) for v in box[0]["x"][:2])
        s0, s1 = sorted((x_to_step(ctx, x0), x_to_step(ctx, x1)))
        return {"step": max(s0, 0), "step_end": s1 if s1 > s0 else None, "x0": x0, "x1": x1}
    points = selection.get("points") or []
    if points:
        p = points[0]
        cd = p.get("customdata")
        step = cd[0] if isinstance(cd, list) and cd else cd
        if step is None:
            step = x_to_step(ctx, from_axis(p.get("x"), ctx.axis))
        return {"step": max(int(step), 0), "step_end": None, "x0": None, "x1": None}
    return None


def selection(ctx: Ctx) -> dict | None:
    sel = st.session_state.get("selection")
    return sel if sel and sel.get("run") == ctx.run else None


def clear_selection() -> None:
    """Close the annotation form, whichever page opened it."""
    st.session_state.pop("selection", None)
    st.session_state.pop("incidents:open", None)
