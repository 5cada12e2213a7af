"""Runs: one row per run with its status and totals; selecting a row opens the run on the Live page."""

import pandas as pd
import streamlit as st

from midflight.app import context, data
from midflight.logbook.analysis import energy
from midflight.logbook.present import text
from midflight.logbook.values import whole

ctx = context.context()
st.title("Runs")
runs = data.runs(ctx.src, ctx.k)
if runs.empty:
    st.info(
        "No runs found yet in " + ", ".join(str(r) for r in ctx.src.roots) + ". A live run appears here as soon as "
        "it logs its first step."
    )
    st.stop()

region = energy.DEFAULT_REGION
co2 = energy.co2_basis(region)  # the world-average grid, PUE 1: the summary's default
world = co2["intensity_g_per_kwh"]


def moving(ctx: context.Ctx, run_ids) -> bool:
    """Is anything on this page still changing: a live run, or a run whose totals are being computed?"""
    for run in run_ids:
        if data.run_status(ctx.src, ctx.k, run, data.tick()) == "running":
            return True
        if not data.analyses_ready(ctx.src, run):
            return True
    return False


every = 2.0 if moving(ctx, runs["run_id"]) else None


def last_loss(ctx: context.Ctx, run: str) -> float | None:
    """The run's last loss, whatever it calls its loss (logbook.roles: `train/loss`, `lm loss`, declared)."""
    loss = data.roles(ctx.src, ctx.k, run).get("loss")
    return data.last_value(ctx.src, ctx.k, run, loss.metric) if loss else None


@st.fragment(run_every=every)
def table_region():
    ctx = context.context()
    run_ids = list(data.runs(ctx.src, ctx.k)["run_id"])
    rows = []
    for run in run_ids:
        segs = data.segments(ctx.src, ctx.k, run, data.tick())
        incs, _ = data.incidents(ctx.src, run, wait=0.2)
        power, _ = data.energy_summary(ctx.src, run, wait=0.2)
        e_j = (power or {}).get("energy", {}).get("energy_j")
        notes = data.run_notes(ctx.src, ctx.k, run)
        rows.append(
            {
                "run": run,
                "tags": ", ".join(notes["tags"]),  # text cells: st.dataframe never renders HTML
                "group": notes["group"],
                "status": data.run_status(ctx.src, ctx.k, run, data.tick()),
                "segments": len(segs),
                "last step": whole(segs["end_step"].max()) if len(segs) else None,
                "loss": last_loss(ctx, run),
                "tokens": data.last_value(ctx.src, ctx.k, run, "tokens"),
                "energy kWh": None if e_j is None else e_j / energy.J_PER_KWH,
                "CO2eq kg": energy.co2eq_of(e_j, co2),
                "incidents": None if incs is None else sum(not i.superseded for i in incs),
                "energy basis": None if power is None else text.energy_basis(power["energy"]["basis"]),
            }
        )
    table = pd.DataFrame(rows)
    event = st.dataframe(
        table,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key="runs:table",
        column_config={
            "loss": st.column_config.NumberColumn(format="%.4f"),
            "tokens": st.column_config.NumberColumn(format="%.3e"),
            "energy kWh": st.column_config.NumberColumn(format="%.4g"),
            "CO2eq kg": st.column_config.NumberColumn(format="%.3g", help=f"{region} grid, {world:g} g/kWh"),
        },
    )
    busy = table["incidents"].isna().any() or table["energy basis"].isna().any()
    st.caption(
        f"CO2eq here uses the {region.lower()} average grid ({world:g} gCO2eq/kWh, PUE 1); choose a region "
        "on Energy & CO2. 'energy basis' says how each figure was made: metered, an estimate, TDP x time, or no "
        "data (a run without power telemetry or a TDP has no energy figure)."
        + (" Incident scans and energy totals of big runs are still being computed." if busy else "")
    )
    picked = event.selection.rows if event is not None else []
    if picked:
        st.session_state["open_run"] = table.iloc[picked[0]]["run"]
        st.switch_page("app_pages/live.py")
    if every and not moving(ctx, run_ids):
        st.rerun(scope="app")  # everything settled: redraw once more without the timer


# The Open buttons sit below the table but run before it: once the analyses settle, the table region's
# st.rerun(scope="app") restarts the page run it is part of, and a click that came with that run would be lost.
table_slot = st.container()
for run in runs["run_id"]:
    if st.button(f"Open {run}", key=f"runs:open:{run}"):
        st.session_state["open_run"] = run
        st.switch_page("app_pages/live.py")
with table_slot:
    table_region()
