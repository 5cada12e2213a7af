"""A run's energy and CO2eq: its meters, segments and steps read from the store, worked out by
`analysis.energy`. Three figures are kept apart everywhere (metered, estimated, nameplate), and
each total says which one it is (`basis`, `estimated`) and how it was computed (`method`)."""

from __future__ import annotations

import pandas as pd

from logbook.analysis import energy
from logbook.analysis.energy import DEFAULT_TDP_W, Meter, MeterTotal
from logbook.store import kept, queries
from logbook.store.database import Store


def meters(store: Store, run: str, segments: list[str] | None = None) -> list[Meter]:
    """Every energy series of the run (or of these segments), one per (segment, host, device) and kind
    (metered or estimated)."""
    out = []
    for name, metered in ((energy.METERED_NAME, True), (energy.ESTIMATE_NAME, False)):
        out += energy.meters_from(queries.counter_samples(store, run, name, segments=segments), metered=metered)
    return out


def meter_totals(store: Store, run: str, segments: list[str]) -> list[MeterTotal]:
    """Each meter's total energy, for these segments. A segment's totals are kept in the store with its
    watermark (logbook.store.kept), so a finished segment is integrated once, and a live run re-reads
    only the segments that grew since: its head."""
    marks = kept.segment_watermarks(store, run)
    out, todo = [], []
    for seg in segments:
        hit = kept.get(store, run, f"meters/{seg}", marks.get(seg, ""))
        if hit is None:
            todo.append(seg)
        else:
            out += [MeterTotal(seg, *row) for row in hit]
    if not todo:
        return out
    fresh = [MeterTotal(m.segment_id, m.host, m.device, m.metered, m.total) for m in meters(store, run, todo)]
    for seg in todo:
        rows = [[m.host, m.device, m.metered, m.total] for m in fresh if m.segment_id == seg]
        kept.put(store, run, f"meters/{seg}", marks.get(seg, ""), rows)
    return out + fresh


CURVE_POINTS = 400  # points of a segment's summed energy curve: a full-width chart's resolution


def fleet_curves(store: Store, run: str, points: int = CURVE_POINTS) -> pd.DataFrame:
    """Per segment and kind (metered / estimated), the cumulative energy of ALL its devices together at
    `points` evenly spaced wall times: columns segment_id, metered, wall_time, energy_j, devices.
    Why: a chart of 992 devices' counters is 992 lines nobody can read; their sum is the run's meter. Each
    segment's curve is kept with its watermark (logbook.store.kept), so a finished segment is summed once."""
    marks = kept.segment_watermarks(store, run)
    segs = list(queries.segments(store, run)["segment_id"])
    rows, todo = [], []
    for seg in segs:
        hit = kept.get(store, run, f"curve/{seg}/{points}", marks.get(seg, ""))
        (rows.extend(hit) if hit is not None else todo.append(seg))
    if todo:
        ms = meters(store, run, todo)
        for seg in todo:
            mine = []
            for flag in (True, False):
                group = [m for m in ms if m.segment_id == seg and m.metered == flag]
                grid, total = energy.summed_curve(group, points)
                mine += [[seg, flag, float(t), float(e), len(group)] for t, e in zip(grid, total)]
            kept.put(store, run, f"curve/{seg}/{points}", marks.get(seg, ""), mine)
            rows += mine
    return pd.DataFrame(rows, columns=["segment_id", "metered", "wall_time", "energy_j", "devices"])


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
        meter_totals(store, run, list(segs["segment_id"])),
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
