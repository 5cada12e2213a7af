"""A run's energy and CO2eq: its meters, segments and steps read from the store, worked out by
`analysis.energy`. Three figures are kept apart everywhere (metered, estimated, nameplate), and
each total says which one it is (`basis`, `estimated`) and how it was computed (`method`)."""

from __future__ import annotations

import pandas as pd

from midflight.logbook.analysis import energy
from midflight.logbook.analysis.energy import Meter, MeterTotal
from midflight.logbook.store import kept, queries
from midflight.logbook.store.database import Store


def meters(store: Store, run: str, segments: list[str] | None = None, *, coarse: bool = False) -> list[Meter]:
    """Every energy series of the run (or of these segments), one per (segment, host, device) and kind
    (metered or estimated). coarse: a long fleet's counters from their 4096 s tiles (queries.counter_samples)."""
    out = []
    for name, metered in ((energy.METERED_NAME, True), (energy.ESTIMATE_NAME, False)):
        samples = queries.counter_samples(store, run, name, segments=segments, coarse=coarse)
        out += energy.meters_from(samples, metered=metered)
    return out


def meter_totals(store: Store, run: str, segments: list[str]) -> list[MeterTotal]:
    """Each meter's total energy, for these segments, integrated window by window. A segment's totals are
    kept in the store with its watermark (logbook.store.kept) and with each meter's newest sample and
    reading: a finished segment is integrated once, and a segment that grew (a live run's head) reads only
    the samples after its meters' newest kept one and adds their rises to the kept totals."""
    marks = kept.segment_watermarks(store, run)
    out = []
    for seg in segments:
        mark = marks.get(seg, "")
        before = kept.get_any(store, run, f"meters/{seg}")
        if before is not None and before[0] == mark:
            rows = before[1]
        else:
            rows = _integrate(store, run, seg, before[1] if before is not None else [])
            kept.put(store, run, f"meters/{seg}", mark, rows)
        out += [MeterTotal(seg, *row) for row in rows]
    return out


def _integrate(store: Store, run: str, seg: str, rows: list) -> list:
    """[host, device, metered, total, last_t, last] per meter of one segment: the kept `rows` carried
    forward by each meter's samples after its newest integrated one (every sample when nothing is kept)."""
    prior = {(h, d, m): (tot, t, v) for h, d, m, tot, t, v in rows}
    newest = [t for _, t, _ in prior.values()]
    since = min(newest) if newest and all(t == t for t in newest) else None  # NaN: integrate from scratch
    if since is None:  # the whole segment: summed in the query layer, one row per device
        out = []
        for name, metered in ((energy.METERED_NAME, True), (energy.ESTIMATE_NAME, False)):
            out += energy.totals_rows(queries.counter_totals(store, run, name, [seg]), metered=metered)
        return sorted(out)
    out = dict(prior)
    for name, metered in ((energy.METERED_NAME, True), (energy.ESTIMATE_NAME, False)):
        mine = {(seg, h, d): v for (h, d, m), v in out.items() if m == metered}
        samples = queries.counter_samples(store, run, name, segments=[seg], since=since)
        start = {k: v for k, (_, _, v) in mine.items()}
        after = {k: t for k, (_, t, _) in mine.items()}
        for mt in energy.meters_from(samples, metered=metered, start=start, after=after):
            tot0, _, last0 = mine.get((seg, mt.host, mt.device), (0.0, None, None))
            last = float(mt.last) if mt.last == mt.last else last0
            out[(mt.host, mt.device, metered)] = (tot0 + mt.total, float(mt.times[-1]), last)
    return [[h, d, m, tot, t, v] for (h, d, m), (tot, t, v) in sorted(out.items())]


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
        ms = meters(store, run, todo, coarse=True)  # a curve of `points` over hours: 68-minute tiles suffice
        for seg in todo:
            mine = []
            for flag in (True, False):
                group = [m for m in ms if m.segment_id == seg and m.metered == flag]
                grid, total = energy.summed_curve(group, points)
                mine += [[seg, flag, float(t), float(e), len(group)] for t, e in zip(grid, total)]
            kept.put(store, run, f"curve/{seg}/{points}", marks.get(seg, ""), mine)
            rows += mine
    return pd.DataFrame(rows, columns=["segment_id", "metered", "wall_time", "energy_j", "devices"])


def nameplate(store: Store, run: str, tdp_w: float | None = None) -> dict[str, dict]:
    """Per segment: {"watts", "devices", "source"} (see analysis.energy.nameplate)."""
    segs = queries.segments(store, run)
    return energy.nameplate(
        queries.events(store, run, ["telemetry_start"]),
        queries.rank_hosts(store, run),
        dict(zip(segs["segment_id"], segs["world_size"])),
        tdp_w,
    )


def segment_energy(store: Store, run: str, *, tdp_w: float | None = None) -> list[dict]:
    """One dict per segment: metered_j, estimated_j, nameplate_j, energy_j (best figure), basis, estimated."""
    segs = queries.segments(store, run)
    return energy.segment_rows(
        list(zip(segs["segment_id"], segs["effective"])),
        meter_totals(store, run, list(segs["segment_id"])),
        queries.segment_times(store, run),
        nameplate(store, run, tdp_w),
    )


def step_energy(store: Store, run: str, *, tdp_w: float | None = None) -> pd.DataFrame:
    """Energy of each logged step (see analysis.energy.per_step): the Energy page's per-step chart."""
    return energy.per_step(
        queries.step_wall_times(store, run),
        meters(store, run),
        queries.segment_times(store, run),
        nameplate(store, run, tdp_w),
        {r.segment_id: r for r in queries.effective_ranges(store, run)},
    )


def run_energy(store: Store, run: str, *, tdp_w: float | None = None) -> dict:
    """Totals over every segment (all energy spent, wasted branches included), plus per-segment rows."""
    return energy.totals(segment_energy(store, run, tdp_w=tdp_w))
