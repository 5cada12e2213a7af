"""The dashboard's only writes: annotations (create, edit, delete) and interventions (choose, review, confirm).

Both go through the logbook's own appenders (logbook.record.annotations and .interventions), which
validate and audit them. User text is shown with st.text / st.dataframe / st.code, never as markdown.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import data
from app.context import Ctx, author, plain
from app.selection import clear_selection, selection
from app.zoom import set_zoom
from logbook.present.text import one_line
from logbook.record import annotations as ann_log
from logbook.record import interventions as iv_log


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
                set_zoom(ctx, (sel["x0"], sel["x1"]))
                clear_selection()
                st.rerun(scope="app")
        annotation_form(ctx, prefix, step=sel["step"], step_end=sel.get("step_end"))


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
        r.annotation_id: f"step {r.step} [{r.kind}] {one_line(r.text, 60)}" for r in anns.itertuples()
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
