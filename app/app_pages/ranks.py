"""Ranks & devices: every rank and every GPU of a run at once, as heatmaps and a table of the outliers.

One line per rank stops being readable at a few dozen ranks and drawable at a few hundred. Here a
metric that every rank logs (step time) is a rank x step heatmap (or node x step), and device
telemetry a device x time heatmap (or node x time): each cell keeps the worst point of its bucket,
so one straggler among a thousand ranks is the one bright stripe at any zoom. Below each heatmap,
the top outliers (how far from the median, since when) and, for a rank picked there or linked with
`?rank=N`, that rank's own series next to the fleet's median and band. All of it comes from one
aggregate query per view (logbook.store.ranks via app.data).
"""

import numpy as np
import pandas as pd
import streamlit as st

from midflight.app import axis, bands, context, data
from midflight.logbook.present import figures, text
from midflight.logbook.values import optional_step

BUCKETS = 200  # step or time buckets of a heatmap: ~one per 5 px of a full-width chart
TELEMETRY_FIRST = ("power_w", "temp_c", "util_pct", "sm_clock_mhz", "mem_used_gib", "power_est_w")

ctx = context.context()
context.require_run(ctx)
st.title(f"Ranks & devices · {context.plain(ctx.run)}")


def outlier_table(view, key: str) -> None:
    o = view.outliers
    if o.empty:
        return
    table = pd.DataFrame(
        {
            "rank": o["rank"] if view.group == "rank" else None,
            "host": o["host"],
            "device": o["label"] if view.source == "telemetry" and view.group == "device" else None,
            "vs median": [f"{v:+.1%}" for v in o["vs_median"]],
            "peak": o["peak"],
            "median": o["median"],
            "worst at step": o["peak_step"],
            "since step": o["since_step"],
            "until step": o["until_step"],
        }
    ).dropna(axis=1, how="all")
    w = o.iloc[0]
    who = f"rank {w['rank']} on {w['host']}" if view.group == "rank" else str(w["label"])
    at = "" if w["peak_step"] is None or pd.isna(w["peak_step"]) else f" at step {int(w['peak_step']):,}"
    since = "" if w["since_step"] is None or pd.isna(w["since_step"]) else f" (since step {int(w['since_step']):,})"
    st.caption(context.plain(f"Worst: {who}, {w['vs_median']:+.1%} from the median{at}{since}"))
    st.dataframe(table, hide_index=True, key=key, width="stretch")


def heatmap(view, unit: str, what: str) -> None:
    x = view.x_lo if view.source == "metric" else view.x_lo
    where = "step" if view.source == "metric" else "time"
    fig = figures.heatmap_figure(
        f"{view.name} per {view.group} ({what} of each bucket)",
        view.cells,
        list(view.rows["label"]),
        x,
        axis=where,
        unit=unit,
        reverse=view.cell == "min",
    )
    st.plotly_chart(fig, key=f"ranks:heat:{view.source}", config={"displaylogo": False})


# ----------------------------------------------------------------- a metric every rank logs
names = data.metric_names(ctx.src, ctx.k, ctx.run)
segs = data.segments(ctx.src, ctx.k, ctx.run, data.tick())
n_ranks = int(segs["ranks"].max()) if not segs.empty else 0
st.caption(f"{n_ranks:,} ranks" + (f" on {len(set(h for h in segs['host'] if h))} header host(s)" if n_ranks else ""))
if names:
    c1, c2 = st.columns([3, 2])
    # synchronous ranks all wait for the slowest, so their step times match: their own work (compute_s,
    # before the collectives) is what tells them apart, when the trainer logs it
    first = next((n for n in ("compute_s", "step_time_s") if n in names), names[0])
    metric = c1.selectbox("metric", names, index=names.index(first), key="ranks:metric")
    group = c2.radio("rows", ["rank", "node"], horizontal=True, key="ranks:group", help="node: the max over its ranks")
    view = data.metric_view(ctx.src, ctx.k, ctx.run, metric, BUCKETS, group=group)
    if view.empty:
        st.info(f"No finite {metric} values in this run.")
    else:
        heatmap(view, "s" if metric.endswith("_s") else "", "max" if view.cell == "max" else "min")
        st.subheader("Outliers")
        st.caption(
            "Furthest from the median of their step bucket, worst first; *since* and *until* bound the episode "
            "around the worst bucket (the buckets at least half as far from the median)."
        )
        outlier_table(view, "ranks:outliers")
        # a rank's own series next to the fleet's median: picked here, or linked as ?rank=N
        ranks_listed = [int(r) for r in view.rows["rank"]] if group == "rank" else list(range(n_ranks))
        try:
            linked = optional_step(st.query_params.get("rank"))
        except ValueError:
            linked = None
            st.warning("?rank= must be a rank number; showing the worst rank instead.")
        first = [int(r) for r in view.outliers["rank"].dropna()] if group == "rank" else []
        if linked is not None and linked in ranks_listed and linked != st.session_state.get("ranks:written"):
            st.session_state["ranks:rank"] = linked  # a link followed (the address bar changed, not our own write)
        choices = first + [r for r in ranks_listed if r not in first]
        if choices:
            rank = st.selectbox(
                "show one rank's series",
                choices,
                key="ranks:rank",
                format_func=lambda r: f"rank {r}" + (" (outlier)" if r in first else ""),
            )
            st.query_params["rank"] = str(rank)
            st.session_state["ranks:written"] = rank
            b = view.band
            x = b["x_lo"].to_numpy()
            own = axis.line(ctx, metric, rank=rank, label=f"rank {rank}", colour="#d62728", mode="lines")
            lines = [figures.Line("median of all ranks", x, b["median"].to_numpy(), x, colour="#1f77b4", mode="lines")]
            lines += [own] if own is not None else []
            fig = figures.metric_figure(
                f"{metric}: rank {rank} and the fleet", lines, bands=bands.distribution(x, b), height=300
            )
            st.plotly_chart(fig, key="ranks:one", config={"displaylogo": False})
else:
    st.info("No metrics in this run.")

# ----------------------------------------------------------------- device telemetry
st.header("Devices")
tnames = data.telemetry_names(ctx.src, ctx.k, ctx.run)
tnames = [n for n in TELEMETRY_FIRST if n in tnames] + [n for n in tnames if n not in TELEMETRY_FIRST]
tnames = [n for n in tnames if not n.startswith("energy")]  # a counter: its heatmap is a ramp, see Energy
if not tnames:
    st.caption("No device telemetry in this run.")
else:
    c1, c2 = st.columns([3, 2])
    tname = c1.selectbox("telemetry", tnames, key="ranks:telemetry")
    tgroup = c2.radio("rows ", ["device", "node"], horizontal=True, key="ranks:tgroup")
    tview = data.telemetry_view(ctx.src, ctx.k, ctx.run, tname, BUCKETS, group=tgroup)
    if tview.empty:
        st.info(f"No finite {tname} samples in this run.")
    else:
        unit = {"power_w": "W", "temp_c": "°C", "util_pct": "%", "sm_clock_mhz": "MHz", "mem_used_gib": "GiB"}
        heatmap(tview, unit.get(tname, ""), "lowest" if tview.cell == "min" else "highest")
        span = float(np.nanmax(tview.x_hi) - np.nanmin(tview.x_lo)) if len(tview.x_lo) else 0.0
        st.caption(f"{len(tview.rows):,} {tgroup}s over {text.duration(span)}, in {len(tview.x_lo)} time buckets")
        outlier_table(tview, "ranks:toutliers")
