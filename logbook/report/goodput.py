"""A run's goodput ledger: reads its inputs through `store.queries` (a few queries, aggregated in SQL: a
fleet-scale run has 150k steps x 1,000 ranks, so per-rank series are never loaded), reuses the wasted-compute
accounting (`report.wasted`), and leaves the arithmetic to `analysis.goodput`."""

from __future__ import annotations

import json
import re

from midflight.logbook.analysis import accounting, goodput
from midflight.logbook.record import records
from midflight.logbook.report.wasted import branches
from midflight.logbook.store import lineage, queries
from midflight.logbook.store.database import Store
from midflight.logbook.values import missing


def published_reference(name: str | None) -> dict | None:
    """The published throughput whose key the run's display name spells (`OPT-175B (timeline)` -> opt175b)."""
    key = re.sub(r"[^a-z0-9]", "", (name or "").lower())
    return next((ref for k, ref in goodput.PUBLISHED.items() if k in key), None)


def ledger(
    store: Store,
    run: str,
    *,
    step_s: float | None = None,
    stall_factor: float = goodput.STALL_FACTOR,
    wasted: list[dict] | None = None,
) -> dict:
    """The goodput ledger of `run` (analysis.goodput.ledger). step_s: the time per step to assume for launches
    that logged no step times; by default the published figure for a run whose name matches one. wasted: the
    run's `report.wasted.wasted` rows when the caller has them already (the summary does), else computed."""
    info = queries.segments(store, run)
    if info.empty:
        return goodput.ledger([], queries.step_wall_times(store, run), [], None, None)
    times = queries.segment_times(store, run)
    gpus = queries.gpu_counts(store, run)
    ranges = {r.segment_id: r for r in lineage.effective_ranges(queries.lineage_segments(store, run))}
    events = queries.goodput_events(store, run)
    loads = events[events["kind"] == "restart"].groupby("segment_id")["seconds"].max().to_dict()
    launches, clock_estimated = [], False
    for r in info.itertuples():
        if r.segment_id not in times:
            continue
        start, end = times[r.segment_id]
        n_gpu = gpus.get(r.segment_id, 0)
        world = 1 if missing(r.world_size) else int(r.world_size)
        resume = None if missing(r.resume_step) else int(r.resume_step)
        first = None if missing(r.start_step) else int(r.start_step)
        base = resume if resume is not None else (first - 1 if first is not None and first > 0 else 0)
        rng = ranges.get(r.segment_id)
        launches.append(
            goodput.Launch(
                segment_id=r.segment_id,
                start=start,
                end=end,
                devices=n_gpu or world,
                device_kind="gpu" if n_gpu else "rank",
                on_path=bool(r.effective),
                base_step=base,
                last_step=None if missing(r.end_step) else int(r.end_step),
                kept_hi=None if rng is None or rng.hi >= lineage.POS_INF else int(rng.hi),
                load_s=None if missing(loads.get(r.segment_id)) else loads.get(r.segment_id),
            )
        )
        clock_estimated |= _clock_estimated(r.config)
    steps = queries.step_wall_times(store, run)
    source = None
    if step_s is not None:
        source = "given"
    else:
        names = queries.runs(store)
        name = names.loc[names["run_id"] == run, "name"]
        ref = published_reference(name.iloc[0] if len(name) else run) or published_reference(run)
        if ref is not None:
            step_s, source = goodput.published_step_s(ref), ref["source"]
    return goodput.ledger(
        launches,
        steps,
        branches(store, run) if wasted is None else [accounting.Branch(**b) for b in wasted],
        events,
        queries.straggler_excess(store, run),
        stall_factor=stall_factor,
        step_s=step_s,
        step_s_source=source,
        clock_estimated=clock_estimated,
    )


def _clock_estimated(config) -> bool:
    try:
        c = json.loads(config) if isinstance(config, str) else {}
    except ValueError:
        return False
    return isinstance(c, dict) and c.get(records.WALL_TIME_SOURCE) == records.WALL_TIME_ESTIMATED
