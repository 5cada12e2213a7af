"""Lineage accounting: the compute a restart or rollback threw away.

The effective history (`logbook.store.lineage`) keeps, for each step, the segment on the head's chain
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

from midflight.logbook.analysis import energy


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
    energy_basis: str  # metered | estimate | nameplate | none
    estimated: bool
    metered_j: float | None
    estimated_j: float | None
    nameplate_j: float | None

    def to_dict(self) -> dict:
        return asdict(self)


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


def branches(
    spans: list,
    *,
    times: dict[str, tuple[float, float]],
    step_times: pd.DataFrame,
    tokens: pd.DataFrame,
    meters: list[energy.Meter],
    plates: dict[str, dict],
    world_sizes: dict[str, int],
    gpus: dict[str, int],
) -> list[Branch]:
    """What each abandoned span cost, oldest first.

    spans: `store.lineage.abandoned_spans()` rows; times: each segment's (start, end) wall time; step_times:
    segment_id, step, wall_time; tokens: the cumulative tokens series of every history (segment_id, step,
    value); gpus: GPUs that reported telemetry per segment."""
    out = []
    for sp in spans:
        seg_start, seg_end = times.get(sp.segment_id, (math.nan, math.nan))
        if sp.on_path:
            g = step_times[step_times["segment_id"] == sp.segment_id]
            t_cut = value_at(g["step"], g["wall_time"], sp.cut) if not g.empty else seg_start
            t_cut = min(max(t_cut, seg_start), seg_end)
        else:
            t_cut = seg_start
        wall = max(0.0, seg_end - t_cut) if math.isfinite(t_cut) and math.isfinite(seg_end) else 0.0
        tk = tokens[tokens["segment_id"] == sp.segment_id]
        n_tokens = None
        if not tk.empty:
            n_tokens = value_at(tk["step"], tk["value"], sp.last_step) - value_at(tk["step"], tk["value"], sp.cut)
            n_tokens = None if not math.isfinite(n_tokens) else max(0.0, n_tokens)
        n_gpu = gpus.get(sp.segment_id, 0)
        devices, kind = (n_gpu, "gpu") if n_gpu else (world_sizes.get(sp.segment_id, 1), "rank")
        e = (
            energy.window_energy(meters, sp.segment_id, t_cut, seg_end)
            if wall > 0
            else _no_energy(meters, sp.segment_id)
        )
        row = {
            "metered_j": e["metered_j"],
            "estimated_j": e["estimated_j"],
            "nameplate_j": plates[sp.segment_id]["watts"] * wall if sp.segment_id in plates else None,
        }
        chosen = energy.best(row)
        out.append(
            Branch(
                segment_id=sp.segment_id,
                discarded_by=sp.discarded_by,
                on_path=sp.on_path,
                first_step=sp.cut + 1,
                last_step=sp.last_step,
                steps=sp.last_step - sp.cut,
                tokens=n_tokens,
                start_time=t_cut,
                end_time=seg_end,
                wall_s=wall,
                devices=devices,
                device_kind=kind,
                device_hours=wall * devices / 3600.0,
                energy_j=chosen["energy_j"],
                energy_basis=chosen["basis"],
                estimated=chosen["estimated"],
                **row,
            )
        )
    return sorted(out, key=lambda b: (b.start_time, b.segment_id))


def _no_energy(ms, seg) -> dict:
    has_m = any(m.segment_id == seg and m.metered for m in ms)
    has_e = any(m.segment_id == seg and not m.metered for m in ms)
    return {"metered_j": 0.0 if has_m else None, "estimated_j": 0.0 if has_e else None}


def totals(rows: list[dict]) -> dict:
    """Sum of the wasted branches: steps, tokens, wall_s, device_hours, energy_j (None where none known)."""

    def add(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return sum(vals) if vals else None

    return {k: add(k) for k in ("steps", "tokens", "wall_s", "device_hours", "energy_j", "nameplate_j")} | {
        "estimated": any(r["estimated"] for r in rows)
    }
