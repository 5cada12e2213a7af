"""A run's incidents: the detector's inputs read from the store, then `analysis.divergence` over them.

Detection runs on the effective history, so a rollback creates no false incident; each superseded
branch is fed the effective history before it as a baseline. The read (`inputs`) and the detection
(`analysis.divergence.incidents_from`) are separate calls, so the dashboard can read on its own
thread and detect in a worker process (the detector is a Python loop that would hold the GIL).
"""

from __future__ import annotations

import pandas as pd

from logbook.analysis.divergence import STEP_TIME_PREFIX, DivergenceConfig, Incident, incidents_from
from logbook.store import queries
from logbook.store.database import Store

SERIES = ("loss", "grad_norm", "loss_scale", "lr", "clip", "tokens_per_s")


def run_frame(store: Store, run: str, which: str = "effective"):
    """The detector's input table for a run, read through logbook.queries: one row per step with the
    metrics of rank 0, step_time_s/<rank> for every rank, overflow / at_floor flags from events, and
    segment_id. which: "effective" or "superseded" (rows of every superseded branch together)."""
    names = set(queries.metric_names(store, run))
    frame = None

    def join(df, col):
        nonlocal frame
        df = df.drop_duplicates(["segment_id", "step"], keep="last")[["segment_id", "step", "value"]]
        df = df.rename(columns={"value": col})
        frame = df if frame is None else frame.merge(df, on=["segment_id", "step"], how="outer")

    for name in SERIES:
        if name in names:
            join(queries.series(store, run, name, which=which), name)
    if "step_time_s" in names:
        segs = queries.segments(store, run)
        for r in range(int(segs["ranks"].max()) if len(segs) else 0):
            join(queries.series(store, run, "step_time_s", rank=r, which=which), f"{STEP_TIME_PREFIX}{r}")
    if frame is None:
        return pd.DataFrame(columns=["segment_id", "step"])
    ev = queries.events(store, run, kinds=["overflow", "loss_scale_at_floor"])
    for kind, col in (("overflow", "overflow"), ("loss_scale_at_floor", "at_floor")):
        hits = set(zip(ev.loc[ev.kind == kind, "segment_id"], ev.loc[ev.kind == kind, "step"]))
        frame[col] = [(s, st) in hits for s, st in zip(frame["segment_id"], frame["step"])]
    return frame.sort_values(["step", "segment_id"], ignore_index=True)


def telemetry_frame(store: Store, run: str):
    """The telemetry samples hardware detection reads: throttling and ECC series, plus one liveness
    series per device (all names of a sample arrive together), sorted by wall time."""
    names = queries.telemetry_names(store, run)
    wanted = [n for n in ("throttle_reasons", "ecc_errors") if n in names]
    alive = next((n for n in ("util_pct", "power_w", "temp_c") if n in names), None) or (names[0] if names else None)
    wanted += [alive] if alive is not None and alive not in wanted else []
    frames = [queries.telemetry(store, run, n).assign(name=n) for n in wanted]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["wall_time", "step", "segment_id", "host", "device", "name", "value"])
    return pd.concat(frames, ignore_index=True).sort_values(["wall_time", "name"], kind="stable")


def inputs(store: Store, run: str) -> dict:
    """Everything incident detection reads from the store, as plain frames. The split lets a caller
    read on one thread (DuckDB) and detect elsewhere: the dashboard runs incidents_from() in a worker
    process, because the detector is a Python loop (~13 µs a step) that would hold the server's GIL."""
    return {
        "effective": run_frame(store, run, "effective"),
        "superseded": run_frame(store, run, "superseded"),
        "telemetry": telemetry_frame(store, run),
    }


def incidents(store: Store, run: str, config: DivergenceConfig | None = None) -> list[Incident]:
    """Every incident of a run (see incidents_from)."""
    return incidents_from(inputs(store, run), config)
