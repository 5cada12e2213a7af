"""The goodput ledger: where a run's wall-clock time and device-hours went.

Why: "the run took 57 days" says nothing about how much of it trained the model. The ledger splits every
second of a run, launch by launch, into one category each, so the parts add up to the whole and a second is
never counted twice. Pure arithmetic: frames in, numbers out (`report.goodput` does the reading).

Categories, and the precedence that settles a second two of them could claim (first wins):

1. `wasted`: work the effective history threw away (a crash's or rollback's steps after the resume
   step, a whole abandoned branch), priced by `analysis.accounting` (the span from the cut to the launch's
   end). Exception: the save of the checkpoint the next launch resumed from is `checkpoint`, not waste.
2. `checkpoint`: checkpoint saves (the trainer's `checkpoint_saved` event's `seconds`) and loads (the
   `restart` event's `load_seconds`), each capped at the interval it happened in.
3. `downtime`: no step running: from a launch's last record to the next launch's first step (the first
   launch: from its start), less the load and the estimated compute of the steps before the first logged
   one; and a launch's tail after its last step (shutdown), less saves there.
4. `stall`: a gap between two logged steps whose time per step exceeds `stall_factor` x the run's median
   time per step: the excess over the median is stall, the rest is counted as steps.
5. `skipped`: steps that ran but did not update the weights (an overflow the loss scaler skipped, a
   non-finite gradient skipped, Megatron's skipped iterations), at their interval's time per step.
6. `straggler`: an estimate: at each logged step, the slowest rank's `compute_s` minus the median rank's
   (what every other rank waited), times the steps in its interval.
7. `productive`: the rest of the step intervals on the effective path.
8. `unattributed`: only in an estimate (no per-step times): a launch's time beyond its steps at the assumed
   step time (startup, slow steps, stalls: the log cannot say which).

Device-hours: seconds x the launch's devices (GPUs that reported telemetry, else its world size, as in
`accounting`); the downtime before a launch is priced at that launch's devices (the allocation that waited).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

CATEGORIES = ("productive", "wasted", "downtime", "checkpoint", "skipped", "stall", "straggler", "unattributed")
PRECEDENCE = ("wasted", "checkpoint", "downtime", "stall", "skipped", "straggler", "productive")
STALL_FACTOR = 5.0  # a step interval this many times the median time per step is a stall
SKIP_KINDS = ("overflow", "nonfinite_grad_skipped", "skipped_iterations")

# Published throughput for runs that logged no step times (matched by run name in report.goodput).
PUBLISHED = {
    "opt175b": {
        "name": "OPT-175B",
        "params": 175e9,
        "tokens_per_step": 2e6,
        "gpus": 992,
        "flops_per_gpu": 147e12,
        "source": "Zhang et al. 2022 (arXiv:2205.01068): 175B parameters, 2M-token batches, 992 80GB A100s at "
        "up to 147 TFLOP/s each; step time = 6 x params x tokens per step / (GPUs x FLOP/s)",
    }
}


def published_step_s(ref: dict) -> float:
    """Seconds per step from a published throughput: 6 N FLOPs per token (forward + backward)."""
    return 6.0 * ref["params"] * ref["tokens_per_step"] / (ref["gpus"] * ref["flops_per_gpu"])


@dataclass
class Launch:
    """One segment as the ledger needs it."""

    segment_id: str
    start: float
    end: float
    devices: int
    device_kind: str  # gpu | rank
    on_path: bool
    base_step: int  # steps after this one ran in this launch (its resume step, else its first step - 1, else 0)
    last_step: int | None
    kept_hi: int | None  # the last step the effective history keeps from it (None: all it logged)
    load_s: float | None = None


def _pos(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) and x > 0 else 0.0


class _Parts:
    def __init__(self):
        self.s = dict.fromkeys(CATEGORIES, 0.0)

    def add(self, cat: str, seconds: float) -> None:
        self.s[cat] += max(0.0, seconds)


def median_step_s(steps: pd.DataFrame) -> float | None:
    """The run's median time per step over consecutive logged steps of each launch."""
    rates = []
    for _, g in steps.groupby("segment_id"):
        g = g.sort_values("step")
        ds, dt = np.diff(g["step"].to_numpy(float)), np.diff(g["wall_time"].to_numpy(float))
        ok = (ds > 0) & np.isfinite(dt) & (dt >= 0)
        rates.append(dt[ok] / ds[ok])
    r = np.concatenate(rates) if rates else np.array([])
    return float(np.median(r)) if len(r) else None


def ledger(
    launches: list[Launch],
    steps: pd.DataFrame,
    branches: list,
    events: pd.DataFrame,
    straggle: pd.DataFrame,
    *,
    stall_factor: float = STALL_FACTOR,
    step_s: float | None = None,
    step_s_source: str | None = None,
    clock_estimated: bool = False,
) -> dict:
    """The ledger of one run.

    launches: every segment; steps: segment_id, step, wall_time (rank 0); branches: `accounting.branches`;
    events: segment_id, step, kind (checkpoint_saved | restart | a SKIP_KINDS kind), n (steps skipped), seconds;
    straggle: segment_id, step, excess (slowest minus median rank's compute_s). step_s: the assumed time per step
    for launches without step times (an estimate), with step_s_source saying where it comes from.
    """
    by_branch = {b.segment_id: b for b in branches}
    median = median_step_s(steps)
    per_step = median if median is not None else step_s
    ev = events if events is not None else pd.DataFrame(columns=["segment_id", "step", "kind", "n", "seconds"])
    sg = straggle if straggle is not None else pd.DataFrame(columns=["segment_id", "step", "excess"])
    rows, assumptions = [], []
    prev_end = None
    est_segments, any_straggle = [], False
    order = sorted(launches, key=lambda x: (x.start, x.segment_id))
    logged = set(steps["segment_id"]) if not steps.empty else set()
    open_ended = 0
    for i, ln in enumerate(order):  # a launch with no step times and no end: it ran until the next one started
        if ln.segment_id not in logged and ln.end <= ln.start and i + 1 < len(order):
            ln = order[i] = Launch(**{**ln.__dict__, "end": max(ln.start, order[i + 1].start)})
            open_ended += 1
    for ln in order:
        p = _Parts()
        gap = 0.0
        if prev_end is not None and prev_end < ln.start:
            gap = ln.start - prev_end
        p.add("downtime", gap)
        g = steps[steps["segment_id"] == ln.segment_id].sort_values("step")
        e = ev[ev["segment_id"] == ln.segment_id]
        b = by_branch.get(ln.segment_id)
        if g.empty:
            est_segments.append(ln.segment_id)
            _estimate(p, ln, b, step_s)
        else:
            any_straggle |= _measured(p, ln, g, b, e, sg[sg["segment_id"] == ln.segment_id], per_step, stall_factor)
        prev_end = ln.end if prev_end is None else max(prev_end, ln.end)
        wall = sum(p.s.values())
        rows.append(
            {
                "segment_id": ln.segment_id,
                "on_path": ln.on_path,
                "devices": ln.devices,
                "device_kind": ln.device_kind,
                "estimated": g.empty or clock_estimated,
                "wall_s": wall,
                "device_hours": wall * ln.devices / 3600.0,
                "parts": {k: {"s": v, "device_hours": v * ln.devices / 3600.0} for k, v in p.s.items()},
            }
        )
    total = {k: {"s": sum(r["parts"][k]["s"] for r in rows)} for k in CATEGORIES}
    for k in CATEGORIES:
        total[k]["device_hours"] = sum(r["parts"][k]["device_hours"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    dev_h = sum(r["device_hours"] for r in rows)
    estimated = bool(est_segments) or clock_estimated
    if est_segments:
        assumptions.append(
            f"{len(est_segments)} launch(es) logged no step times: their steps are priced at "
            + (f"{step_s:.3g} s per step ({step_s_source})" if step_s else "no known step time (all unattributed)")
        )
        assumptions.append(
            "restart downtime from the launches' recorded start and end times (an imported timeline's dates; "
            "where its source gives a date without a time the importer estimated one)"
        )
        assumptions.append("a launch's time beyond its steps at that step time is unattributed (startup, slow steps)")
        if open_ended:
            assumptions.append(
                f"{open_ended} launch(es) have no recorded end: each ran until the next launch started, so the "
                "downtime between them is not known and falls in unattributed"
            )
    if clock_estimated:
        assumptions.append("wall times were estimated from iteration times (the log has no timestamps)")
    methods = _methods(bool(est_segments), len(est_segments) < len(launches), any_straggle, median, stall_factor)
    for k in CATEGORIES:
        total[k]["method"], m_est = methods[k]
        total[k]["estimated"] = m_est or clock_estimated
    return {
        "wall_s": wall,
        "device_hours": dev_h,
        "effective_ratio": total["productive"]["s"] / wall if wall > 0 else None,
        "effective_device_ratio": total["productive"]["device_hours"] / dev_h if dev_h > 0 else None,
        "estimated": estimated,
        "median_step_s": median,
        "assumed_step_s": step_s if est_segments else None,
        "stall_factor": stall_factor,
        "precedence": list(PRECEDENCE),
        "assumptions": assumptions,
        "categories": total,
        "segments": rows,
    }


def _methods(est: bool, measured: bool, straggle: bool, median, factor) -> dict:
    both = est and measured
    step_m = "per-step wall times (rank 0)" if measured else ""
    step_e = "steps x the assumed step time" if est else ""
    how = "; ".join(x for x in (step_m, step_e) if x)
    return {
        "productive": (f"step intervals on the effective path, less the other categories ({how})", est or both),
        "wasted": ("accounting of the abandoned spans (from the cut step's time to the launch's end)", est),
        "downtime": ("last record of a launch to the next launch's first step, less loads; launch tails", est),
        "checkpoint": (
            "the trainer's checkpoint_saved seconds and restart load_seconds (0 where none recorded)",
            False,
        ),
        "skipped": (
            "steps with a skipped update (overflow, non-finite gradient) x their interval's time per step",
            False,
        ),
        "stall": (
            f"excess of step intervals above {factor:g} x the median time per step"
            + (f" ({median:.3g} s)" if median else " (no step times: not measured)"),
            False,
        ),
        "straggler": (
            "estimate: slowest minus median rank's compute_s per logged step x its steps"
            if straggle
            else "no per-rank compute times (compute_s) on 2+ ranks: not measured (0)",
            True,
        ),
        **(
            {}
            if measured
            else {
                k: ("not measured: no launch logged step times (0)", True) for k in ("checkpoint", "skipped", "stall")
            }
        ),
        "unattributed": ("a launch's time beyond its steps at the assumed step time (estimates only)", True),
    }


def _estimate(p: _Parts, ln: Launch, b, step_s: float | None) -> None:
    wall = max(0.0, ln.end - ln.start)
    if b is not None and not b.on_path:
        p.add("wasted", wall)
        return
    last = ln.last_step if ln.last_step is not None else ln.base_step
    hi = ln.kept_hi if ln.kept_hi is not None else last
    kept = max(0, min(hi, last) - ln.base_step)
    thrown = max(0, last - max(hi, ln.base_step))
    if not step_s:
        p.add("unattributed", wall)
        return
    prod = min(wall, kept * step_s)
    waste = min(wall - prod, thrown * step_s)
    p.add("productive", prod)
    p.add("wasted", waste)
    p.add("unattributed", wall - prod - waste)


def _measured(p: _Parts, ln: Launch, g, b, e, sg, per_step, factor) -> bool:
    """Split a launch with step times; True when straggler data was used."""
    t_cut = b.start_time if b is not None and math.isfinite(b.start_time) else ln.end
    cut_step = (b.first_step - 1) if b is not None and b.on_path else None
    if b is not None and not b.on_path:
        lead_end = min(max(float(g["wall_time"].iloc[0]), ln.start), ln.end)
        p.add("downtime", lead_end - ln.start)
        p.add("wasted", ln.end - lead_end)
        return False
    kept = g[g["wall_time"] <= t_cut + 1e-9]
    if cut_step is not None:
        kept = kept[kept["step"] <= cut_step]
    saves = e[e["kind"] == "checkpoint_saved"]
    save_at = {}
    for s, sec in zip(saves["step"], saves["seconds"]):
        if not pd.isna(s):
            save_at[int(s)] = save_at.get(int(s), 0.0) + _pos(sec)
    skips = e[e["kind"].isin(SKIP_KINDS)]
    skip_steps = skips["step"].to_numpy(float)
    skip_n = skips["n"].to_numpy(float)
    excess = dict(zip(sg["step"].astype(int), sg["excess"].astype(float)))
    load = _pos(ln.load_s)
    if kept.empty:
        p.add("checkpoint", min(load, t_cut - ln.start))
        p.add("downtime", t_cut - ln.start - min(load, t_cut - ln.start))
    else:
        st = kept["step"].to_numpy(np.int64)
        wt = kept["wall_time"].to_numpy(float)
        lead = max(0.0, min(wt[0], ln.end) - ln.start)
        ld = min(load, lead)
        n0 = max(1, int(st[0]) - ln.base_step)
        c0 = min(lead - ld, n0 * per_step) if per_step else 0.0
        p.add("checkpoint", ld)
        p.add("productive", c0)
        p.add("downtime", lead - ld - c0)
        for i in range(1, len(st)):
            lo, hi = int(st[i - 1]), int(st[i])
            dt = max(0.0, wt[i] - wt[i - 1])
            n = max(1, hi - lo)
            save = min(dt, sum(v for s, v in save_at.items() if lo <= s < hi))
            p.add("checkpoint", save)
            rem = dt - save
            stall = rem - n * per_step if per_step and rem / n > factor * per_step else 0.0
            p.add("stall", stall)
            base = rem - stall
            in_iv = (skip_steps > lo) & (skip_steps <= hi)
            k = min(n, int(skip_n[in_iv].sum())) if in_iv.any() else 0
            sk = k * base / n
            p.add("skipped", sk)
            strag = min(base - sk, _pos(excess.get(hi)) * (n - k))
            p.add("straggler", strag)
            p.add("productive", base - sk - strag)
        last_kept = int(st[-1])
        tail_end = t_cut
        tail = max(0.0, tail_end - wt[-1])
        save_tail = min(
            tail, sum(v for s, v in save_at.items() if s >= last_kept and (cut_step is None or s < cut_step))
        )
        p.add("checkpoint", save_tail)
        if b is not None:  # the steps between the last logged one and the cut ran and were kept
            p.add("productive", tail - save_tail)
        else:
            p.add("downtime", tail - save_tail)
    if b is not None:
        waste = max(0.0, ln.end - t_cut)
        # the save of the checkpoint the next launch resumed from ran just after the cut step: not waste
        moved = min(save_at.get(cut_step, 0.0), waste) if cut_step is not None else 0.0
        p.add("checkpoint", moved)
        p.add("wasted", waste - moved)
    return bool(excess)
