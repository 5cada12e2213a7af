"""Where a run stands: its last step, its planned length and the time left at its recent pace."""

from __future__ import annotations

import numpy as np

from midflight.logbook.analysis.progress import ETA_WINDOW, eta_s, planned_steps
from midflight.logbook.store import queries
from midflight.logbook.store.database import Store
from midflight.logbook.values import whole


def progress(store: Store, run: str) -> dict:
    """{"step": last step or None, "planned": planned steps or None, "step_time_s": median of the last
    ETA_WINDOW steps' step time in seconds (full resolution) or None, "eta_s": seconds to the plan or None}.
    The ETA assumes the run keeps going: a page shows it for live runs only."""
    segs = queries.segments(store, run)
    step = whole(segs["end_step"].max()) if len(segs) else None
    planned = planned_steps(segs.iloc[-1]["config"]) if len(segs) else None
    recent = np.empty(0)
    step_time = queries.metric_roles(store, run).get("step_time")  # whatever the run calls it (logbook.roles)
    if step is not None and step_time is not None:
        tail = queries.series(store, run, step_time.metric, x_range=(step - ETA_WINDOW, step))
        recent = tail["value"].to_numpy(dtype="float64") * step_time.scale
    finite = recent[np.isfinite(recent)]
    return {
        "step": step,
        "planned": planned,
        "step_time_s": float(np.median(finite)) if len(finite) else None,
        "eta_s": eta_s(planned, step, recent),
    }
