"""Zoom, kept on the server: a range per run and axis in the session, queried again at full resolution.

A Plotly zoom is reset whenever a live refresh redraws the figure; this one survives it (typed in
'Zoom to…', or taken from a box selection).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from midflight.app.context import AXES, Ctx
from midflight.logbook.values import optional_step


def _zoom_key(ctx: Ctx) -> str:
    return f"zoom:{ctx.run}:{ctx.axis}"


def zoom(ctx: Ctx) -> tuple | None:
    return st.session_state.get(_zoom_key(ctx))


def set_zoom(ctx: Ctx, x_range: tuple | None) -> None:
    """Zoom every chart of the run to (lo, hi) on the current axis (None: the whole run)."""
    if x_range is None:
        st.session_state.pop(_zoom_key(ctx), None)
    else:
        st.session_state[_zoom_key(ctx)] = (float(x_range[0]), float(x_range[1]))


LINK_STEPS = 200  # a link to a step (?step=N: an alert's) opens the charts on N +- this many steps


def follow_link(ctx: Ctx) -> int | None:
    """Zoom to the step a link names (`?run=NAME&step=N`, as the watcher's alerts send), once per link: a
    later zoom or reset by the user is kept. Returns the linked step, or None (no link, or not a valid step)."""
    try:
        linked = optional_step(st.query_params.get("step"))
    except ValueError as exc:  # a hand-edited or hostile link: say so, show the whole run
        st.warning(f"?step= is not a step ({exc}); showing the whole run.")
        return None
    if linked is None or ctx.axis != "step":
        return None
    if st.session_state.get("zoom:linked") != (ctx.run, linked):
        st.session_state["zoom:linked"] = (ctx.run, linked)
        set_zoom(ctx, (max(0, linked - LINK_STEPS), linked + LINK_STEPS))
    return linked


def zoom_bar(ctx: Ctx, prefix: str) -> None:
    z = zoom(ctx)
    if ctx.axis != "time":  # a range typed in: the keyboard's way to the same server-side zoom
        with st.popover("Zoom to…"):
            with st.form(f"{prefix}:zoomform", border=False):
                lo = st.number_input(f"from {AXES[ctx.axis]}", min_value=0.0, value=None, key=f"{prefix}:zlo")
                hi = st.number_input(f"to {AXES[ctx.axis]}", min_value=0.0, value=None, key=f"{prefix}:zhi")
                if st.form_submit_button("Apply zoom") and lo is not None and hi is not None and hi > lo:
                    set_zoom(ctx, (lo, hi))
                    st.rerun(scope="app")
    if z is None:
        st.caption(
            "Whole run. Click a point to annotate it; switch on 'Select ranges' and drag across a chart to annotate "
            "a range or zoom every chart to it (the zoom is kept across live refreshes)."
        )
        return
    lo, hi = z
    c1, c2 = st.columns([4, 1])
    shown = (
        f"{lo:,.0f} – {hi:,.0f}"
        if ctx.axis != "time"
        else f"{pd.Timestamp(lo, unit='s')} – {pd.Timestamp(hi, unit='s')}"
    )
    c1.caption(f"Zoomed to {AXES[ctx.axis]} {shown} (queried at full resolution; kept across live refreshes)")
    if c2.button("Reset zoom", key=f"{prefix}:unzoom"):
        set_zoom(ctx, None)
        st.rerun()
