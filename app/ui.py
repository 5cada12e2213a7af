"""Page furniture shared by every page: the run context, markers, charts that select, zoom, and the two forms.

The forms are the dashboard's only writes, and both go through the logbook's own
appenders (logbook.annotations, logbook.interventions), which validate and audit them.
User text is shown with st.text / st.dataframe / st.code, never through markdown.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from logbook.record import annotations as ann_log
from logbook.record import interventions as iv_log

from logbook.present import figures
from app import data
from app.source import Source, roots_from, take_preloaded

AXES = {"step": "step", "tokens": "tokens", "time": "wall time"}


# ----------------------------------------------------------------- the source and the selected run
@st.cache_resource(show_spinner="opening the logbook…")
def _source(roots: tuple[str, ...]) -> Source:
    return take_preloaded(roots) or Source([Path(r) for r in roots])


def source() -> Source:
    try:
        roots = roots_from(sys.argv[1:], dict(os.environ))
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    return _source(tuple(str(r) for r in roots))


@dataclass
class Ctx:
    src: Source
    k: tuple  # the data key: cached answers live until it changes
    run: str | None
    axis: str
    status: str | None
    run_dir: Path | None

    @property
    def live(self) -> bool:
        return self.status == "running"


def context() -> Ctx:
    src = source()
    k = data.key(src)
    run = st.session_state.get("run")
    status = data.run_status(src, k, run, data.tick()) if run else None
    return Ctx(src, k, run, st.session_state.get("axis", "step"), status, src.run_dir(run) if run else None)


def require_run(ctx: Ctx) -> None:
    if not ctx.run:
        st.info(
            "No run yet: point the dashboard at a run folder (`python -m app PATH`), or wait for a live run to log."
        )
        st.stop()


def plain(text) -> str:
    """Free text (a run id) safe inside markdown: its markdown, LaTeX and shortcode characters escaped."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~$:])", r"\\\1", str(text))


def until_ready(ready, message: str) -> None:
    """Show `message`, then rerun the page as soon as `ready()` holds (checked every second); stops the page."""
    st.info(message)

    @st.fragment(run_every=1.0)
    def poll():
        if ready():
            st.rerun(scope="app")

    poll()
    st.stop()


def author() -> str:
    try:
        return f"{getpass.getuser()} (dashboard)"
    except Exception:
        return "dashboard"


# ----------------------------------------------------------------- axis mapping and markers
def _axis_curve(ctx: Ctx, run: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, x) along the run's effective curve on the current axis: how steps map to tokens or time."""
    names = data.metric_names(ctx.src, ctx.k, run)
    name = "loss" if "loss" in names else (names[0] if names else None)
    df = data.series(ctx.src, ctx.k, run, name, x=ctx.axis) if name else pd.DataFrame()
    if df.empty:
        return np.empty(0), np.empty(0)
    df = df.sort_values("step")
    return df["step"].to_numpy(float), df["x"].to_numpy(float)


def step_mapper(ctx: Ctx, run: str | None = None):
    """step -> x on the current axis, interpolated along the run's effective curve (identity on the step axis)."""
    if ctx.axis == "step":
        return lambda s: np.asarray(s, dtype="float64")
    steps, xs = _axis_curve(ctx, run or ctx.run)
    if not len(steps):
        return lambda s: np.full(np.shape(s), np.nan)
    return lambda s: np.interp(np.asarray(s, dtype="float64"), steps, xs)


def x_to_step(ctx: Ctx, x: float) -> int:
    """The step at a point of the current axis (a box selection's edge on the tokens or time axis)."""
    if ctx.axis == "step":
        return int(round(x))
    steps, xs = _axis_curve(ctx, ctx.run)
    if not len(steps):
        return 0
    order = np.argsort(xs, kind="stable")
    return int(round(np.interp(x, xs[order], steps[order])))


def open_incidents(incidents: list, anns: pd.DataFrame) -> list:
    """Incidents on the effective history that no annotation covers yet (annotating one closes it)."""
    if anns.empty:
        return [i for i in incidents or [] if not i.superseded]
    starts, ends = anns["step"], anns["step_end"].fillna(anns["step"])
    return [
        i for i in incidents or [] if not i.superseded and not ((starts <= i.end_step) & (ends >= i.start_step)).any()
    ]


def markers(ctx: Ctx, run: str | None = None) -> list[charts.Marker]:
    """Every marker of a run: annotations, incidents, restarts and applied interventions."""
    run = run or ctx.run
    to_x = step_mapper(ctx, run)
    out: list[tuple[int, str, str]] = []
    for a in data.annotations(ctx.src, ctx.k, run).itertuples():
        out.append((int(a.step), "annotation", f"[{a.kind}] {a.text} ({a.author})"))
    incs, _ = data.incidents(ctx.src, run, wait=0)  # drawn once the scan is in: never wait for it here
    for inc in incs or []:
        if not inc.superseded:
            out.append((inc.start_step, "incident", f"{inc.kind}: {inc.classification}, {inc.severity}"))
    segs = data.segments(ctx.src, ctx.k, run, data.tick())
    for s in segs.iloc[1:].itertuples():
        at = s.resume_step if pd.notna(s.resume_step) else s.start_step
        if pd.notna(at):
            out.append((int(at), "restart", f"{s.segment_id}: {s.reason or ''}"))
    for iv in data.interventions(ctx.src, ctx.k, run).itertuples():
        if iv.status == "applied" and pd.notna(iv.applied_step):
            out.append((int(iv.applied_step), "intervention", f"{iv.action} {iv.params}: {iv.note or ''}"))
    if not out:
        return []
    xs = to_x([s for s, _, _ in out])
    return [charts.Marker(float(x), s, kind, label) for x, (s, kind, label) in zip(xs, out) if np.isfinite(x)]


def line(
    ctx: Ctx, name: str, *, rank=0, label: str | None = None, buckets: int = data.GRID_BUCKETS, **kw
) -> charts.Line | None:
    """A metric of the run as a chart line, downsampled by the query layer, within the zoom range."""
    df = data.series(ctx.src, ctx.k, ctx.run, name, x=ctx.axis, rank=rank, x_range=zoom(ctx), buckets=buckets)
    if df.empty:
        return None
    return charts.Line(label or name, df["x"].to_numpy(), df["value"].to_numpy(), df["step"].to_numpy(), **kw)


# ----------------------------------------------------------------- zoom (server-side, so it survives live refreshes)
def _zoom_key(ctx: Ctx) -> str:
    return f"zoom:{ctx.run}:{ctx.axis}"


def zoom(ctx: Ctx) -> tuple | None:
    return st.session_state.get(_zoom_key(ctx))


def zoom_bar(ctx: Ctx, prefix: str) -> None:
    z = zoom(ctx)
    if ctx.axis != "time":  # a range typed in: the keyboard's way to the same server-side zoom
        with st.popover("Zoom to…"):
            with st.form(f"{prefix}:zoomform", border=False):
                lo = st.number_input(f"from {AXES[ctx.axis]}", min_value=0.0, value=None, key=f"{prefix}:zlo")
                hi = st.number_input(f"to {AXES[ctx.axis]}", min_value=0.0, value=None, key=f"{prefix}:zhi")
                if st.form_submit_button("Apply zoom") and lo is not None and hi is not None and hi > lo:
                    st.session_state[_zoom_key(ctx)] = (float(lo), float(hi))
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
        st.session_state.pop(_zoom_key(ctx), None)
        st.rerun()


# ----------------------------------------------------------------- charts that select
def box_mode_toggle() -> bool:
    """Charts answer clicks (a point) by default; this switches them to box selection (a range).

    Plotly reports no clicks while its drag mode is "select", so the two cannot be on at once, and a live
    refresh redraws the figure, which resets a drag mode picked in the chart's own toolbar: hence a
    server-side switch (the Live page also pauses its refresh while it is on, so a drag is not cut short).
    """
    return st.toggle(
        "Select ranges",
        key="box_mode",
        help="Drag across any chart to select a step range: annotate it, or zoom every chart to it",
    )


def chart(ctx: Ctx, fig, key: str) -> None:
    """Render a figure; a click or a box selection becomes the pending selection (step or step range).

    The selection is read in the on_select callback, not from the return value: Streamlit derives a
    chart's identity from its figure, so on a live run the rerun that a click causes draws a chart with
    new data, a new identity and no selection. The callback runs first, with the clicked chart's state.
    """
    if st.session_state.get("box_mode"):
        fig.update_layout(dragmode="select", selectdirection="h")
    st.plotly_chart(
        fig,
        key=key,
        on_select=functools.partial(_selected, ctx.run, ctx.axis, key),
        selection_mode=("points", "box"),
        config={"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d"]},
    )
    if st.session_state.pop("_new_selection", False):
        st.rerun(scope="app")  # a full rerun: the live refresh pauses while the form is open


def _selected(run: str, axis: str, key: str) -> None:
    """on_select callback: keep the chart's selection as the pending one (an empty one clears nothing)."""
    state = st.session_state.get(key)
    sel = _steps_of(context_for(run, axis), (state or {}).get("selection") or {})
    if sel is None:
        return
    st.session_state["selection"] = {"run": run, "axis": axis, "chart": key, **sel}
    st.session_state["selection_id"] = st.session_state.get("selection_id", 0) + 1
    st.session_state["_new_selection"] = True


def context_for(run: str, axis: str) -> Ctx:
    src = source()
    return Ctx(src, data.key(src), run, axis, None, None)


def _steps_of(ctx: Ctx, selection) -> dict | None:
    box = selection.get("box") or []
    if box and box[0].get("x"):
        x0, x1 = sorted(charts.from_axis(v, ctx.axis) for v in box[0]["x"][:2])
        s0, s1 = sorted((x_to_step(ctx, x0), x_to_step(ctx, x1)))
        return {"step": max(s0, 0), "step_end": s1 if s1 > s0 else None, "x0": x0, "x1": x1}
    points = selection.get("points") or []
    if points:
        p = points[0]
        cd = p.get("customdata")
        step = cd[0] if isinstance(cd, list) and cd else cd
        if step is None:
            step = x_to_step(ctx, charts.from_axis(p.get("x"), ctx.axis))
        return {"step": max(int(step), 0), "step_end": None, "x0": None, "x1": None}
    return None


def selection(ctx: Ctx) -> dict | None:
    sel = st.session_state.get("selection")
    return sel if sel and sel.get("run") == ctx.run else None


def selection_panel(ctx: Ctx, prefix: str) -> None:
    """The annotation form for the pending selection, plus 'zoom to range' for a box."""
    sel = selection(ctx)
    if sel is None:
        return
    with st.container(border=True):
        where = f"steps {sel['step']}–{sel['step_end']}" if sel.get("step_end") else f"step {sel['step']}"
        st.markdown(f"**Selected {where}**")
        if sel.get("x0") is not None and sel.get("axis") == ctx.axis:
            if st.button("Zoom to this range", key=f"{prefix}:zoomsel"):
                st.session_state[_zoom_key(ctx)] = (sel["x0"], sel["x1"])
                clear_selection()
                st.rerun(scope="app")
        annotation_form(ctx, prefix, step=sel["step"], step_end=sel.get("step_end"))


def clear_selection() -> None:
    """Close the annotation form, whichever page opened it."""
    st.session_state.pop("selection", None)
    st.session_state.pop("incidents:open", None)


# ----------------------------------------------------------------- annotations
def annotation_form(ctx: Ctx, prefix: str, *, step: int, step_end=None, kind: str = "note", text: str = "") -> None:
    sid = st.session_state.get("selection_id", 0)
    with st.form(f"{prefix}:annotate:{sid}", border=False):
        c1, c2, c3 = st.columns([1, 1, 1])
        s0 = c1.number_input("step", min_value=0, value=int(step), step=1, key=f"{prefix}:ann_step:{sid}")
        s1 = c2.number_input(
            "to step (optional)",
            min_value=0,
            value=None if step_end is None else int(step_end),
            step=1,
            key=f"{prefix}:ann_end:{sid}",
        )
        kinds = list(ann_log.KINDS)
        k = c3.selectbox("kind", kinds, index=kinds.index(kind) if kind in kinds else 0, key=f"{prefix}:ann_kind:{sid}")
        body = st.text_area("annotation", value=text, key=f"{prefix}:ann_text:{sid}", placeholder="what happened here")
        b1, b2 = st.columns([1, 5])
        save = b1.form_submit_button("Save annotation", type="primary")
        cancel = b2.form_submit_button("Cancel")
    if cancel:
        clear_selection()
        st.rerun(scope="app")
    if save:
        try:
            ann_log.annotate(
                ctx.run_dir, step=int(s0), step_end=None if s1 is None else int(s1), kind=k, text=body, author=author()
            )
        except (ValueError, OSError) as exc:
            st.error(f"Not saved: {exc}")
            return
        ctx.src.refresh()
        clear_selection()
        st.toast(f"Annotation saved at step {int(s0)}")
        st.rerun(scope="app")


def annotation_editor(ctx: Ctx, prefix: str) -> None:
    """Edit or delete an annotation; both stay in the audit trail below."""
    anns = data.annotations(ctx.src, ctx.k, ctx.run)
    if anns.empty:
        st.caption("No annotations yet: click a point on any chart to add one.")
        return
    labels = {
        r.annotation_id: f"step {r.step} [{r.kind}] {charts.one_line(r.text, 60)}" for r in anns.itertuples()
    }  # a selectbox shows its labels as text
    aid = st.selectbox("annotation", list(labels), format_func=lambda i: labels[i], key=f"{prefix}:edit_pick")
    row = anns.loc[anns.annotation_id == aid].iloc[0]
    with st.form(f"{prefix}:edit:{aid}", border=False):
        c1, c2 = st.columns(2)
        step = c1.number_input("step", min_value=0, value=int(row.step), key=f"{prefix}:edit_step:{aid}")
        kinds = list(ann_log.KINDS)
        kind = c2.selectbox("kind", kinds, index=kinds.index(row.kind), key=f"{prefix}:edit_kind:{aid}")
        text = st.text_area("text", value=row.text, key=f"{prefix}:edit_text:{aid}")
        b1, b2, b3 = st.columns([1, 1, 3])
        save = b1.form_submit_button("Save edit")
        confirm = b3.checkbox("yes, delete it", key=f"{prefix}:edit_confirm:{aid}")
        delete = b2.form_submit_button("Delete")
    try:
        if save:
            ann_log.edit_annotation(ctx.run_dir, aid, step=int(step), kind=kind, text=text, author=author())
        elif delete and not confirm:
            st.warning("Tick 'yes, delete it' to delete (the audit trail keeps it either way).")
            return
        elif delete:
            ann_log.delete_annotation(ctx.run_dir, aid, author=author())
        else:
            return
    except (ValueError, KeyError, OSError) as exc:
        st.error(f"Not saved: {exc}")
        return
    ctx.src.refresh()
    st.rerun(scope="app")


# ----------------------------------------------------------------- interventions
ACTION_LABELS = {
    "lr_multiplier": "Scale the LR",
    "lr_peak": "Set a new peak LR",
    "clip": "Set the gradient-clip threshold",
    "skip_batches": "Skip the next N batches",
    "loss_scale_floor": "Set the fp16 loss-scale floor",
    "checkpoint_now": "Checkpoint now",
    "rewind": "Rewind to a checkpoint (with changes)",
    "stop": "Stop the run (checkpoints first)",
}


def _params_widgets(ctx: Ctx, action: str, prefix: str) -> dict:
    if action == "lr_multiplier":
        return {"factor": st.number_input("LR x", min_value=0.0, value=0.5, format="%.4g", key=f"{prefix}:f")}
    if action == "lr_peak":
        return {"lr": st.number_input("peak LR", min_value=0.0, value=3e-4, format="%.3e", key=f"{prefix}:lr")}
    if action == "clip":
        return {"max_norm": st.number_input("max grad norm", min_value=0.0, value=0.3, key=f"{prefix}:clip")}
    if action == "loss_scale_floor":
        return {"floor": st.number_input("loss-scale floor", min_value=0.0, value=0.25, key=f"{prefix}:floor")}
    if action == "skip_batches":
        return {"n": int(st.number_input("batches", min_value=1, value=10, step=1, key=f"{prefix}:n"))}
    if action == "rewind":
        ck = data.events(ctx.src, ctx.k, ctx.run, ("checkpoint_saved",))
        steps = sorted({int(s) for s in ck["step"].dropna()}, reverse=True)
        if not steps:
            st.warning("No checkpoint has been saved in this run yet.")
            return {}
        params: dict = {"checkpoint_step": st.selectbox("checkpoint step", steps, key=f"{prefix}:ck")}
        c1, c2, c3 = st.columns(3)
        changes = {
            "lr_multiplier": c1.number_input("then LR x", min_value=0.0, value=None, key=f"{prefix}:rlr"),
            "clip": c2.number_input("then clip", min_value=0.0, value=None, key=f"{prefix}:rclip"),
            "skip_batches": c3.number_input("then skip", min_value=1, value=None, step=1, key=f"{prefix}:rskip"),
        }
        changes = {k: (int(v) if k == "skip_batches" else v) for k, v in changes.items() if v is not None}
        if changes:
            params["changes"] = changes
        return params
    return {}


def describe(action: str, params: dict) -> str:
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
    return f"{ACTION_LABELS[action]}" + (f" ({shown})" if shown else "")


def intervention_form(ctx: Ctx, prefix: str) -> None:
    """Ask the live run to change course: choose, review, then confirm. Nothing is sent without the confirm click."""
    if not ctx.live:
        st.caption(f"Interventions go to live runs; this run is {ctx.status}.")
        return
    pending = st.session_state.get(f"{prefix}:review")
    if pending is None:
        action = st.selectbox("action", list(ACTION_LABELS), format_func=ACTION_LABELS.get, key=f"{prefix}:action")
        params = _params_widgets(ctx, action, prefix)
        note = st.text_input("why (kept in the audit record)", key=f"{prefix}:note")
        if st.button("Review…", key=f"{prefix}:review_btn"):
            try:
                params = iv_log.validate(action, params)
            except ValueError as exc:
                st.error(str(exc))
                return
            st.session_state[f"{prefix}:review"] = {"action": action, "params": params, "note": note or None}
            st.rerun(scope="app")
        return
    st.warning(
        f"Send to the live run **{plain(ctx.run)}**: {describe(pending['action'], pending['params'])}. "
        "The trainer applies it at its next step boundary and records who asked and why."
    )
    if pending["note"]:
        st.text(f"why: {pending['note']}")
    c1, c2 = st.columns([1, 4])
    if c1.button("Confirm and send", type="primary", key=f"{prefix}:confirm"):
        try:
            req = iv_log.request(
                ctx.run_dir, pending["action"], pending["params"], note=pending["note"], author=author()
            )
        except (ValueError, OSError) as exc:
            st.error(f"Not sent: {exc}")
            return
        st.session_state.pop(f"{prefix}:review")
        ctx.src.refresh()
        st.toast(f"Intervention {req} sent; waiting for the run to answer")
        st.rerun(scope="app")
    if c2.button("Cancel", key=f"{prefix}:cancel"):
        st.session_state.pop(f"{prefix}:review")
        # the form's widgets were not drawn while reviewing, so Streamlit dropped their state: restore it
        st.session_state[f"{prefix}:action"] = pending["action"]
        st.session_state[f"{prefix}:note"] = pending["note"] or ""
        st.rerun(scope="app")


def intervention_status(ctx: Ctx) -> None:
    iv = data.interventions(ctx.src, ctx.k, ctx.run)
    if iv.empty:
        return
    state = [
        "pending"
        if r.status == "pending"
        else f"applied at step {int(r.applied_step)}"
        if r.status == "applied" and pd.notna(r.applied_step)
        else f"rejected: {r.detail}"
        for r in iv.itertuples()
    ]
    st.dataframe(
        pd.DataFrame(
            {
                "requested": pd.to_datetime(iv["requested_time"], unit="s").dt.strftime("%H:%M:%S"),
                "action": iv["action"],
                "params": iv["params"],
                "state": state,
                "why": iv["note"],
                "who": iv["author"],
            }
        ),
        hide_index=True,
        key=f"ivstatus:{ctx.run}",
    )
