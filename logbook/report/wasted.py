"""What a run's abandoned branches cost: the spans the lineage discarded (`store.lineage`), priced in
steps, tokens, wall time, device-hours and energy by `analysis.accounting`."""

from __future__ import annotations

from midflight.logbook.analysis import accounting
from midflight.logbook.report import energy as energy_report
from midflight.logbook.store import lineage, queries
from midflight.logbook.store.database import Store
from midflight.logbook.values import missing


def branches(store: Store, run: str, *, tdp_w: float | None = None) -> list[accounting.Branch]:
    """Every abandoned branch of the run, oldest first."""
    info = queries.segments(store, run)
    last_steps = {r.segment_id: (None if missing(r.end_step) else int(r.end_step)) for r in info.itertuples()}
    spans = lineage.abandoned_spans(queries.lineage_segments(store, run), last_steps)
    if not spans:
        return []
    return accounting.branches(
        spans,
        times=queries.segment_times(store, run),
        step_times=queries.step_wall_times(store, run),
        tokens=queries.series(store, run, queries.TOKENS_METRIC, which="all"),
        meters=energy_report.meters(store, run, sorted({s.segment_id for s in spans})),
        plates=energy_report.nameplate(store, run, tdp_w),
        world_sizes={r.segment_id: (1 if missing(r.world_size) else int(r.world_size)) for r in info.itertuples()},
        gpus=queries.gpu_counts(store, run),
    )


def wasted(store: Store, run: str, *, tdp_w: float | None = None) -> list[dict]:
    """Every abandoned branch of the run, oldest first, as Branch.to_dict() rows."""
    return [b.to_dict() for b in branches(store, run, tdp_w=tdp_w)]
