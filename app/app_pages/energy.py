"""Energy & CO2: what the run drew (metered, estimated or nameplate, always labelled), where it went, and its CO2eq."""

import numpy as np
import pandas as pd
import streamlit as st

from midflight.app import bands, context, data
from midflight.logbook.analysis import energy
from midflight.logbook.present import figures, text

BAND_BUCKETS = 300  # time buckets of the fleet power band

ctx = context.context()
context.require_run(ctx)
st.title(f"Energy & CO2 · {context.plain(ctx.run)}")
power, busy = data.energy_summary(ctx.src, ctx.run, wait=1.0)
if power is None:
    context.until_ready(
        lambda: data.energy_summary(ctx.src, ctx.run, wait=0)[0] is not None,
        "Adding up the run's energy… (this page fills in when it is done)",
    )
e = power["energy"]
if e["energy_j"] is None:
    st.info(text.NO_ENERGY[0].upper() + text.NO_ENERGY[1:])
    if e.get("wall_time"):
        st.warning(f"Wall times {e['wall_time']}: durations and wasted hours are estimates.")
    st.stop()

# --- CO2 settings
grid = {r["name"]: r for r in energy.grid_table()}
names = sorted(grid, key=lambda n: (n != energy.DEFAULT_REGION, grid[n]["kind"], n))
c1, c2, c3 = st.columns([2, 1, 1])
region = c1.selectbox("grid (country or cloud region)", names, key="energy:region")
pue = c2.number_input(
    "PUE",
    min_value=1.0,
    max_value=3.0,
    value=1.0,
    step=0.05,
    key="energy:pue",
    help="data-centre overhead: 1.0 counts the IT energy only",
)
custom = c3.number_input("or gCO2eq/kWh", min_value=0.0, value=None, key="energy:custom")
co2 = energy.co2_basis(region, custom, pue)
intensity, source = co2["intensity_g_per_kwh"], co2["source"]
kg = energy.co2eq_of(e["energy_j"], co2)

label = "estimated" if e["estimated"] else "metered"
m = st.columns(4)
m[0].metric(f"energy ({label})", text.energy(e["energy_j"]))
m[1].metric("CO2eq", text.mass(kg))
m[2].metric("wasted in abandoned branches", text.energy(e["wasted_j"]))
m[3].metric("per token", "—" if not e["j_per_token"] else f"{e['j_per_token']:.4g} J")
st.caption(f"Basis: {text.energy_basis(e['basis'])}. Intensity {intensity:g} gCO2eq/kWh ({source}); PUE {pue:g}.")
if e.get("wall_time"):
    st.warning(f"Wall times {e['wall_time']}: durations, wasted hours and energy are estimates.")
if "nameplate" in e["basis"]:
    st.warning(
        "No power meter in (part of) this run: its energy is TDP x wall time, an upper bound, not a measurement "
        f"({e.get('nameplate_source') or 'TDP'})."
    )
elif e["estimated"]:
    st.warning(
        "No power meter in (part of) this run: its energy is an ESTIMATE (TDP x utilisation), not a measurement."
    )
if "none" in e["basis"].split("+"):
    st.caption("Some segments have no energy data and are not counted: " + text.NO_ENERGY)
if busy:
    st.caption("Newer data is being added up; these totals are from the previous pass.")

# --- over time
devices = max(data.gpu_counts(ctx.src, ctx.k, ctx.run).values(), default=0)
if devices > data.FEW:  # a fleet: one curve per segment, every device summed (992 lines read as none)
    curves = data.fleet_curves(ctx.src, ctx.k, ctx.run)
    lines = []
    for (seg, metered), g in curves.groupby(["segment_id", "metered"], sort=False):
        kind = "metered" if metered else "estimated"
        name = f"{seg[-6:]}: {int(g['devices'].iat[0]):,} devices ({kind})"
        x = g["wall_time"].to_numpy()
        lines.append(figures.Line(name, x, g["energy_j"].to_numpy() / 1e6, np.zeros(len(x)), mode="lines"))
    if lines:
        st.plotly_chart(
            figures.metric_figure("cumulative energy (MJ) per segment, all devices", lines, axis="time"),
            key="energy:cum",
            config={"displaylogo": False},
        )
else:
    ms = data.meters(ctx.src, ctx.k, ctx.run)
    lines = []
    for mt in ms:
        x = mt.times
        thin = figures.thin(pd.DataFrame({"t": x, "v": mt.cum, "step": np.zeros(len(x))}), "t", "v")
        kind = "metered" if mt.metered else "estimated"
        name = f"{mt.segment_id[-6:]} {mt.host}/{mt.device} ({kind})"
        lines.append(
            figures.Line(name, thin["t"].to_numpy(), thin["v"].to_numpy() / 1000, thin["step"].to_numpy(), mode="lines")
        )
    if lines:
        st.plotly_chart(
            figures.metric_figure("cumulative energy (kJ) per device and segment", lines, axis="time"),
            key="energy:cum",
            config={"displaylogo": False},
        )
per_step = data.step_energy(ctx.src, ctx.k, ctx.run)
if len(per_step):
    lines = []
    for col, what in (("metered_j", "metered"), ("estimated_j", "estimated"), ("nameplate_j", "nameplate")):
        done = per_step[per_step[col].notna() & per_step["effective"]]
        if len(done) and not lines:  # the best figure the run has, as the summary chooses it
            thin = figures.thin(done.assign(j=done[col] / done["steps"]), "step", "j")
            lines.append(figures.Line(f"J per step ({what})", thin["step"], thin["j"], thin["step"], mode="lines"))
    st.plotly_chart(
        figures.metric_figure("energy per step, effective history (J; each a share of ~0.1-0.5 s samples)", lines),
        key="energy:per_step",
        config={"displaylogo": False},
    )
pnames = set(data.telemetry_names(ctx.src, ctx.k, ctx.run))
pname = "power_w" if "power_w" in pnames else "power_est_w" if "power_est_w" in pnames else None
if pname and devices > data.FEW:
    view = data.telemetry_view(ctx.src, ctx.k, ctx.run, pname, BAND_BUCKETS)
    lines, band_list = bands.telemetry_band(view, lambda s: s, on_time=True)
    title = f"power (W) across {len(view.rows):,} devices: median, p5–p95, min–max, worst" + (
        " (estimated)" if pname == "power_est_w" else " (NVML)"
    )
    fig = figures.metric_figure(title, lines, axis="time", bands=band_list)
    st.plotly_chart(fig, key="energy:power", config={"displaylogo": False})
elif pname:
    df = data.telemetry_series(ctx.src, ctx.k, ctx.run, pname)
    lines = []
    for (host, dev), g in df.groupby(["host", "device"], dropna=False):
        g = figures.thin(g, "wall_time", "value")
        lines.append(
            figures.Line(
                f"{host}/{dev}",
                g["wall_time"].to_numpy(),
                g["value"].to_numpy(),
                g["step"].fillna(0).to_numpy(),
                mode="lines",
            )
        )
    title = "power (W)" + (" (estimated)" if pname == "power_est_w" else " (NVML)")
    st.plotly_chart(figures.metric_figure(title, lines, axis="time"), key="energy:power", config={"displaylogo": False})

# --- metered vs nameplate, and per branch
c1, c2 = st.columns(2)
kinds = [("metered", e["metered_j"]), ("estimated", e["estimated_j"]), ("nameplate (TDP x time)", e["nameplate_j"])]
kinds = [(k, v / 3600) for k, v in kinds if v is not None]
with c1:
    st.plotly_chart(
        figures.bar_figure("metered vs nameplate", [k for k, _ in kinds], [v for _, v in kinds], unit="Wh"),
        key="energy:kinds",
        config={"displaylogo": False},
    )
segs = pd.DataFrame(e["segments"])
wasted_by_seg = {}
for w in power["wasted"]:
    if w.get("energy_j") is not None:
        wasted_by_seg[w["segment_id"]] = wasted_by_seg.get(w["segment_id"], 0.0) + w["energy_j"]
labels, values, colours = [], [], []
for s in segs.itertuples():
    waste = wasted_by_seg.get(s.segment_id, 0.0)
    labels += [f"{s.segment_id[-6:]} kept", f"{s.segment_id[-6:]} wasted"]
    values += [max(s.energy_j - waste, 0.0) / 3600, waste / 3600]
    colours += ["#2ca02c", "#d62728"]
with c2:
    st.plotly_chart(
        figures.bar_figure(
            "per segment: kept vs wasted (abandoned branch)", labels, values, unit="Wh", colours=colours
        ),
        key="energy:branches",
        config={"displaylogo": False},
    )
st.dataframe(segs, hide_index=True, key="energy:segments")

# --- projection and reference points
st.subheader("Projection to the full run")
proj = data.projection(ctx.src, ctx.k, ctx.run, e, co2)
if proj:
    p = st.columns(3)
    p[0].metric("planned steps", f"{proj['planned_steps']:,}")
    p[1].metric("projected energy", text.energy(proj["projected_j"]))
    p[2].metric("projected CO2eq", text.mass(proj["co2eq_kg"]))
    st.caption("Assumptions: " + proj["assumptions"])
else:
    st.caption("No projection: the run's config does not name its planned length, or it has no tokens yet.")
st.subheader("For scale")
refs = [
    {
        "what": f"this run ({label})",
        "tCO2eq": kg / 1000,
        "method": f"{e['basis']} energy x {intensity:g} g/kWh x PUE {pue:g}",
    }
]
refs += [{"what": r["name"], "tCO2eq": r["co2eq_t"], "method": r["method"]} for r in energy.REFERENCES.values()]
st.dataframe(
    pd.DataFrame(refs),
    hide_index=True,
    key="energy:refs",
    column_config={"tCO2eq": st.column_config.NumberColumn(format="%.4g")},
)
