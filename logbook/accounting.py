"""Lineage accounting: the compute a restart or rollback threw away.

The effective history (logbook.lineage) keeps, for each step, the segment on the head's chain
that owns it. Everything a segment did that the effective history does not keep is waste:

- an **on-path segment** that ran past the step the next path segment resumed from (a crash
  at 380 with a restart from the checkpoint of 350, or a rewind from 529 to 500): its steps
  after that resume step, and the wall time from when it logged the resume step to its end;
- an **off-path segment** (an abandoned branch, or an earlier lineage a fresh start replaced):
  all its steps, and its whole wall time from launch to end.

For each such branch: steps, tokens, wall time, device-hours (GPUs that reported telemetry in
that segment, else its world size: "rank-hours"), energy (metered, else estimated, and the
nameplate figure beside it). Steps are counted from logged step numbers (last logged - resume
step), tokens from the cumulative `tokens` metric, so work on a step that crashed before it was
logged counts in wall time and energy but not in steps or tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from . import energy, lineage, queries
from .store import Store


@dataclass(frozen=True)
class Span:
    """Steps cut < step <= last_step of `segment_id` are not in the effective history."""

    segment_id: str
    cut: int  # the last step it kept (a resume step); steps after it were discarded
    last_step: int
    discarded_by: str | None  # the path segment whose start superseded them
    on_path: bool  # False: the whole segment is an abandoned branch


@dataclass
class Branch:
    segment_id: str
    discarded_by: str | None
    on_path: bool
    first_step: int  # first discarded step
    last_step: int
    steps: int
    tokens: float | None
    start_time: float
    end_time: float
    wall_s: float
    devices: int
    device_kind: str  # "gpu" (GPUs reporting telemetry) or "rank" (world size, no GPU telemetry)
    device_hours: float
    energy_j: float | None
    energy_basis: str  # metered | estimate | nameplate
    estimated: bool
    metered_j: float | None
    estimated_j: float | None
    nameplate_j: float

    def to_dict(self) -> dict:
        return asdict(self)


def tree(segs: list[lineage.Seg]) -> dict:
    """{"root": ids of roots, "children": {id: [child ids]}, "path": effective path ids, root to head}."""
    ids = {s.segment_id for s in segs}
    children: dict[str, list[str]] = {s.segment_id: [] for s in segs}
    order = sorted(segs, key=lambda s: (s.start_time if s.start_time is not None else -math.inf, s.segment_id))
    roots = []
    for s in order:
        if s.parent_id in ids and s.parent_id != s.segment_id:
            children[s.parent_id].append(s.segment_id)
        else:
            roots.append(s.segment_id)
    return {"roots": roots, "children": children, "path": [s.segment_id for s in lineage.effective_path(segs)]}


def abandoned_spans(segs: list[lineage.Seg], last_steps: dict[str, int | None]) -> list[Span]:
    """Pure: which logged steps of which segment the effective history discarded.

    last_steps: the last step each segment logged (None if it logged none).
    """
    path = lineage.effective_path(segs)
    ranges = {r.segment_id: r for r in lineage.effective_ranges(segs)}
    pos = {s.segment_id: i for i, s in enumerate(path)}
    by_id = {s.segment_id: s for s in segs}
    spans = []
    for s in segs:
        last = last_steps.get(s.segment_id)
        if last is None:
            continue
        if s.segment_id in pos:
            hi = ranges[s.segment_id].hi
            if last > hi:
                nxt = path[pos[s.segment_id] + 1].segment_id
                spans.append(Span(s.segment_id, hi, int(last), nxt, True))
            continue
        start = lineage._start(s, s.parent_id is None)  # its own first step - 1
        if start == lineage.NEG_INF:
            start = (s.first_step - 1) if s.first_step is not None else 0
        spans.append(Span(s.segment_id, int(start), int(last), _superseder(s, by_id, pos, path), False))
    return spans


def _superseder(seg: lineage.Seg, by_id: dict, pos: dict, path: list) -> str | None:
    """The path segment that replaced an off-path branch: the child, on the path, of its nearest path ancestor."""
    seen = set()
    node = seg
    while node is not None and node.segment_id not in seen:
        seen.add(node.segment_id)
        if node.segment_id in pos:
            i = pos[node.segment_id]
            return path[i + 1].segment_id if i + 1 < len(path) else None
        node = by_id.get(node.parent_id) if node.parent_id else None
    return path[0].segment_id if path else None  # a replaced lineage: the new root superseded it


def value_at(steps, values, step: float) -> float:
    """Linear interpolation of a per-step series at `step`; outside it, extrapolated at the series' mean slope."""
    x = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return math.nan
    if len(x) == 1 or x[0] <= step <= x[-1]:
        return float(np.interp(step, x, y))
    slope = (y[-1] - y[0]) / (x[-1] - x[0])
    edge = 0 if step < x[0] else -1
    return float(y[edge] + slope * (step - x[edge]))


def wasted(store: Store, run: str, *, default_tdp_w: float = energy.DEFAULT_TDP_W) -> list[dict]:
    """Every abandoned branch of the run, oldest first, as Branch.to_dict() rows."""
    return [b.to_dict() for b in branches(store, run, default_tdp_w=default_tdp_w)]


def branches(store: Store, run: str, *, default_tdp_w: float = energy.DEFAULT_TDP_W) -> list[Branch]:
    segs = queries.lineage_segments(store, run)
    info = queries.segments(store, run)
    last_steps = {r.segment_id: (None if _na(r.end_step) else int(r.end_step)) for r in info.itertuples()}
    spans = abandoned_spans(segs, last_steps)
    if not spans:
        return []
    world = {r.segment_id: (1 if _na(r.world_size) else int(r.world_size)) for r in info.itertuples()}
    times = energy.segment_times(store, run)
    ms = energy.meters(store, run)
    plates = energy.nameplate_watts(store, run, default_tdp_w)
    st = energy.step_wall_times(store, run)
    tok = queries.series(store, run, queries.TOKENS_METRIC, which="all")
    gpus = _gpus(store, run)
    out = []
    for sp in spans:
        seg_start, seg_end = times.get(sp.segment_id, (math.nan, math.nan))
        if sp.on_path:
            g = st[st["segment_id"] == sp.segment_id]
            t_cut = value_at(g["step"], g["wall_time"], sp.cut) if not g.empty else seg_start
            t_cut = min(max(t_cut, seg_start), seg_end)
        else:
            t_cut = seg_start
        wall = max(0.0, seg_end - t_cut) if math.isfinite(t_cut) and math.isfinite(seg_end) else 0.0
        tk = tok[tok["segment_id"] == sp.segment_id]
        tokens = None
        if not tk.empty:
            tokens = value_at(tk["step"], tk["value"], sp.last_step) - value_at(tk["step"], tk["value"], sp.cut)
            tokens = None if not math.isfinite(tokens) else max(0.0, tokens)
        n_gpu = gpus.get(sp.segment_id, 0)
        devices, kind = (n_gpu, "gpu") if n_gpu else (world.get(sp.segment_id, 1), "rank")
        e = energy.window_energy(ms, sp.segment_id, t_cut, seg_end) if wall > 0 else _no_energy(ms, sp.segment_id)
        row = {
            "metered_j": e["metered_j"],
            "estimated_j": e["estimated_j"],
            "nameplate_j": plates.get(sp.segment_id, {"watts": default_tdp_w})["watts"] * wall,
        }
        best = energy._best(row)
        out.append(
            Branch(
                segment_id=sp.segment_id,
                discarded_by=sp.discarded_by,
                on_path=sp.on_path,
                first_step=sp.cut + 1,
                last_step=sp.last_step,
                steps=sp.last_step - sp.cut,
                tokens=tokens,
                start_time=t_cut,
                end_time=seg_end,
                wall_s=wall,
                devices=devices,
                device_kind=kind,
                device_hours=wall * devices / 3600.0,
                energy_j=best["energy_j"],
                energy_basis=best["basis"],
                estimated=best["estimated"],
                **row,
            )
        )
    return sorted(out, key=lambda b: (b.start_time, b.segment_id))


def _no_energy(ms, seg) -> dict:
    has_m = any(m.segment_id == seg and m.metered for m in ms)
    has_e = any(m.segment_id == seg and not m.metered for m in ms)
    return {"metered_j": 0.0 if has_m else None, "estimated_j": 0.0 if has_e else None}


def _gpus(store: Store, run: str) -> dict[str, int]:
    """GPUs that reported telemetry, per segment (distinct host x device)."""
    rows = (
        store.cursor()
        .execute(
            """SELECT t.segment_id, count(DISTINCT coalesce(r.host, 'rank' || t.rank::VARCHAR) || '/' || t.device)
               FROM telemetry t LEFT JOIN rank_logs r USING (run_id, segment_id, rank)
               WHERE t.run_id = ? AND t.device LIKE 'gpu%' GROUP BY t.segment_id""",
            [run],
        )
        .fetchall()
    )
    return {seg: int(n) for seg, n in rows}


def totals(rows: list[dict]) -> dict:
    """Sum of the wasted branches: steps, tokens, wall_s, device_hours, energy_j (None where none known)."""

    def add(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return sum(vals) if vals else None

    return {k: add(k) for k in ("steps", "tokens", "wall_s", "device_hours", "energy_j", "nameplate_j")} | {
        "estimated": any(r["estimated"] for r in rows)
    }


def _na(v) -> bool:
    return v is None or bool(pd.isna(v))
