"""The dashboard's only writes: annotations (create, edit, delete), interventions (choose, review, confirm) and
alert acknowledgements.

Both go through the logbook's own appenders (logbook.record.annotations and .interventions), which
validate and audit them. User text is shown with st.text / st.dataframe / st.code, never as markdown.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from midflight.app import data
from midflight.app.context import Ctx, author, plain
from midflight.app.selection import clear_selection, selection
from midflight.app.zoom import set_zoom
from midflight.logbook.oncall import alerts as alert_log
from midflight.logbook.oncall import autopilot
from midflight.logbook.present.text import one_line
from midflight.logbook.record import annotations as ann_log
from midflight.logbook.record import interventions as iv_log


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
def action_labels() -> dict[str, str]:
    """The actions a request may name -> the dashboard's words for them, from the intervention vocabulary."""
    return {name: knob.label for name, knob in iv_log.actions().items()}


def __getattr__(name: str):
    if name == "ACTION_LABELS":  # read from the vocabulary each time, never a copy made at import
        return action_labels()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _number(where, param: iv_log.Param, label: str, key: str, *, blank: bool = False):
    """A number_input for one parameter of the vocabulary; typed like it (int or float), None if left blank."""
    whole = param.type is int
    cast = int if whole else float
    lowest = None if param.min is None else cast(param.min)
    start = None if blank or param.default is None else cast(param.default)
    value = where.number_input(
        label, min_value=lowest, value=start, step=1 if whole else None, format=param.format, key=key
    )
    return None if value is None else cast(value)


def _params_widgets(ctx: Ctx, action: str, prefix: str) -> dict:
    knob = iv_log.VOCABULARY[action]
    if action == iv_log.REWIND:
        return _rewind_widgets(ctx, prefix)
    params = {}
    for param in knob.params:
        key = f"{prefix}:{action}" if len(knob.params) == 1 else f"{prefix}:{action}:{param.name}"
        value = _number(st, param, param.label or param.name, key)
        if value is not None:
            params[param.name] = value
    return params


def _rewind_widgets(ctx: Ctx, prefix: str) -> dict:
    """A checkpoint to go back to, and any of the rewind changes (blank = unchanged)."""
    ck = data.events(ctx.src, ctx.k, ctx.run, ("checkpoint_saved",))
    steps = sorted({int(s) for s in ck["step"].dropna()}, reverse=True)
    if not steps:
        st.warning("No checkpoint has been saved in this run yet.")
        return {}
    step_param = iv_log.VOCABULARY[iv_log.REWIND].params[0]
    params: dict = {step_param.name: st.selectbox(step_param.label, steps, key=f"{prefix}:ck")}
    cols = st.columns(3)
    changes = {}
    for i, (name, knob) in enumerate(iv_log.rewind_changes().items()):
        param = knob.params[0]
        value = _number(cols[i % 3], param, f"then {param.label or name}", f"{prefix}:then:{name}", blank=True)
        if value is not None:
            changes[name] = value
    if changes:
        params["changes"] = changes
    return params


def describe(action: str, params: dict) -> str:
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
    return iv_log.VOCABULARY[action].label + (f" ({shown})" if shown else "")


def intervention_form(ctx: Ctx, prefix: str) -> None:
    """Ask the live run to change course: choose, review, then confirm. Nothing is sent without the confirm click."""
    if not ctx.live:
        st.caption(f"Interventions go to live runs; this run is {ctx.status}.")
        return
    pending = st.session_state.get(f"{prefix}:review")
    if pending is None:
        labels = action_labels()
        action = st.selectbox("action", list(labels), format_func=labels.get, key=f"{prefix}:action")
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


def alert_history(ctx: Ctx, prefix: str) -> None:
    """The run's alert history (what the watcher sent: `midflight watch`), and Acknowledge for an open,
    unacknowledged one, which stops its re-sends (the same record as `midflight alerts ack`)."""
    rows = data.alert_history(ctx.run_dir)
    st.subheader("Alerts")
    if not rows:
        st.caption("No alerts: none found yet, or no watcher (`midflight watch RUN_DIR --alerts alerts.toml`).")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "id": [r["id"] for r in rows],
                "opened": pd.to_datetime([r["opened"] for r in rows], unit="s"),
                "kind": [r["kind"] for r in rows],
                "severity": [r["severity"] for r in rows],
                "step": [r["step"] for r in rows],
                "what": [one_line(str(r["title"] or "")) for r in rows],
                "state": [r["state"] for r in rows],
                "acked by": [r["acked_by"] or "" for r in rows],
                "messages": [r["notifications"] for r in rows],
            }
        ),
        hide_index=True,
        key=f"{prefix}:table",
    )
    unacked = [r for r in rows if r["state"] == "open" and not r["acked"]]
    if not unacked:
        return
    c1, c2 = st.columns([4, 1])
    labels = {r["id"]: f"{r['id']} · {one_line(str(r['title'] or ''))}" for r in unacked}
    chosen = c1.selectbox("Open alert", list(labels), format_func=labels.get, key=f"{prefix}:pick")
    if c2.button("Acknowledge", key=f"{prefix}:ack"):
        try:
            alert_log.ack(ctx.run_dir, chosen, author=author())
        except (KeyError, ValueError, OSError) as exc:
            st.error(f"could not acknowledge: {exc}")
            return
        st.toast(f"alert {chosen} acknowledged: it will not be re-sent")
        st.rerun()


def autopilot_approvals(ctx: Ctx, prefix: str) -> None:
    """The autopilot's `ask` proposals waiting for a person: one click approves (the intervention is issued,
    authored by the policy, the approver named in its note) or declines (recorded, never asked again).
    The same records as `midflight autopilot approve RUN_DIR ID [--decline] --author NAME`."""
    rows = data.autopilot_proposals(ctx.run_dir)
    if not rows:
        return
    st.subheader("Autopilot")
    st.dataframe(
        pd.DataFrame(
            {
                "id": [r["id"] for r in rows],
                "step": [r["step"] for r in rows],
                "policy": [r["policy"] for r in rows],
                "mode": [r["mode"] for r in rows],
                "proposes": [one_line(f"{r['action']} {json.dumps(r['params'])}") for r in rows],
                "why": [one_line(r["note"]) for r in rows],
                "status": [r["status"] for r in rows],
                "by": [r["by"] or "" for r in rows],
            }
        ),
        hide_index=True,
        key=f"{prefix}:table",
    )
    pending = [r for r in rows if r["status"] == "pending"]
    if not pending:
        return
    labels = {r["id"]: one_line(f"{r['id']} · {r['policy']}: {r['action']} {json.dumps(r['params'])}") for r in pending}
    c1, c2, c3 = st.columns([4, 1, 1])
    chosen = c1.selectbox("Waiting for approval", list(labels), format_func=labels.get, key=f"{prefix}:pick")
    for col, decline, word in ((c2, False, "Approve"), (c3, True, "Decline")):
        if col.button(word, key=f"{prefix}:{word.lower()}"):
            try:
                done = autopilot.approve(ctx.run_dir, chosen, author=author(), decline=decline)
            except (ValueError, OSError) as exc:
                st.error(f"could not {word.lower()}: {exc}")
                return
            st.toast(
                f"proposal {chosen} {done['status']}" + (f": intervention {done['request']}" if done["request"] else "")
            )
            st.rerun()
