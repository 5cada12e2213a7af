"""A run's energy and CO2eq: its meters, segments and steps read from the store, worked out by
`analysis.energy`. Three figures are kept apart everywhere (metered, estimated, nameplate), and
each total says which one it is (`basis`, `estimated`) and how it was computed (`method`)."""

from __future__ import annotations

import pandas as pd

from logbook.analysis import energy
from logbook.analysis.energy import DEFAULT_TDP_W, Meter
from logbook.store import queries
from logbook.store.database import Store


def meters(store: Store, run: str) -> list[Meter]:
    """Every energy series of the run, one per (segment, host, device) and kind (metered or estimated)."""
    out = []
    for name, metered in ((energy.METERED_NAME, True), (energy.ESTIMATE_NAME, False)):
        out += energy.meters_from(queries.telemetry(store, run, name), metered=metered)
    return out


def nameplate(store: Store, run: str, default_tdp_w: float = DEFAULT_TDP_W) -> dict[str, dict]:
    """Per segment: {"watts", "devices", "source"} (see analysis.energy.nameplate)."""
    segs = queries.segments(store, run)
    return energy.nameplate(
        queries.events(store, run, ["telemetry_start"]),
        queries.rank_hosts(store, run),
        dict(zip(segs["segment_id"], segs["world_size"])),
        default_tdp_w,
    )


def segment_energy(store: Store, run: str, *, default_tdp_w: float = DEFAULT_TDP_W) -> list[dict]:
    """One dict per segment: metered_j, estimated_j, nameplate_j, energy_j (best figure), basis, estimated."""
    segs = queries.segments(store, run)
    return energy.segment_rows(
        list(zip(segs["segment_id"], segs["effective"])),
        meters(store, run),
        queries.segment_times(store, run),
        nameplate(store, run, default_tdp_w),
        default_tdp_w,
    )


def step_energy(store: Store, run: str, *, default_tdp_w: float = DEFAULT_TDP_W) -> pd.DataFrame:
    """Energy of each logged step (see analysis.energy.per_step): the Energy page's per-step chart."""
    return energy.per_step(
        queries.step_wall_times(store, run),
        meters(store, run),
        queries.segment_times(store, run),
        nameplate(store, run, default_tdp_w),
        {r.segment_id: r for r in queries.effective_ranges(store, run)},
        default_tdp_w,
    )


def run_energy(store: Store, run: str, *, default_tdp_w: float = DEFAULT_TDP_W) -> dict:
    """Totals over every segment (all energy spent, wasted branches included), plus per-segment rows."""
    return energy.totals(segment_energy(store, run, default_tdp_w=default_tdp_w))
