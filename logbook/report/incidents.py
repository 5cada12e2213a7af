"""A run's incidents: the detector's inputs read from the store, then `analysis.divergence` over them.

Detection runs on the effective history, so a rollback creates no false incident; each superseded
branch is fed the effective history before it as a baseline. The read (`inputs`) and the detection
(`analysis.divergence.incidents_from`) are separate calls, so the dashboard can read on its own
thread and detect in a worker process (the detector is a Python loop that would hold the GIL).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pandas as pd

from midflight.logbook import roles
from midflight.logbook.analysis.divergence import DivergenceConfig, Incident, incidents_from
from midflight.logbook.store import fleet, kept, lineage, queries, ranks
from midflight.logbook.store.database import Store

SERIES = ("loss", "grad_norm", "loss_scale", "lr", "clip", "tokens_per_s")
ONLINE_RANKS = 8  # up to this many ranks, each rank's step time also feeds the per-step detector


def run_frame(store: Store, run: str, which: str = "effective", *, after: int | None = None):
    """The detector's input table for a run, read through logbook.queries: one row per step with the
    metrics of rank 0, step_time_s/<rank> for every rank of a small run (<= ONLINE_RANKS; a bigger fleet's
    ranks are compared per bucket by fleet_frame instead), overflow counts (overflow events, and the
    count of an imported skipped_iterations event) and at_floor flags from events, and segment_id.
    Columns carry midflight's names ("loss", "lr", ...) whatever the run calls them: each role is read
    from the metric that plays it in this run (logbook.roles, resolved once from the run's metric names)
    and converted to the role's unit (step_time_ms to seconds).
    which: "effective" or "superseded" (rows of every superseded branch together). after: only the steps
    after this one (a kept detector's new steps)."""
    names = queries.metric_names(store, run)
    found = queries.metric_roles(store, run, names)
    columns = detector_columns(found, names)
    per_rank, step_time = None, found.get("step_time")
    if step_time is not None:
        segs = queries.segments(store, run)
        world = int(segs["ranks"].max()) if len(segs) else 0
        if world <= ONLINE_RANKS:
            per_rank = (step_time.metric, list(range(world)))
    # step_table names a rank's column "<metric>/<rank>": renamed to the detector's STEP_TIME_PREFIX below
    frame = (
        queries.step_table(store, run, [m for m, _ in columns.values()], per_rank=per_rank, which=which, after=after)
        if columns or per_rank
        else None
    )
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["segment_id", "step"])
    rename, scales = {}, {}
    for canon, (metric, scale) in columns.items():
        rename[metric], scales[canon] = canon, scale
    if per_rank is not None:
        for r in per_rank[1]:
            rename[f"{step_time.metric}/{r}"] = f"step_time_s/{r}"
            scales[f"step_time_s/{r}"] = step_time.scale
    frame = frame.rename(columns=rename)
    for col, scale in scales.items():
        if scale != 1.0 and col in frame:
            frame[col] = frame[col] * scale
    ev = queries.events(store, run, kinds=["overflow", "skipped_iterations", "loss_scale_at_floor"])
    ev = ev[ev["step"].notna() & (ev["rank"].fillna(0) == 0) & (ev["step"] > (-1 if after is None else after))]
    # a sparse log's overflows can sit at a step with no metric (fairseq's cascade after an epoch
    # summary): from their segment's first step here up to the next segment's, they get a row of their own
    first = frame.groupby("segment_id")["step"].min().sort_values()
    upto = pd.Series([*first.iloc[1:], float("inf")][: len(first)], index=first.index, dtype="float64")
    extra = ev.iloc[:0]
    if len(ev):  # (an empty selection maps to text, which `between` cannot compare)
        inside = ev["step"].between(ev["segment_id"].map(first), ev["segment_id"].map(upto), inclusive="left")
        extra = ev[inside & (ev.kind != "loss_scale_at_floor")][["segment_id", "step"]].drop_duplicates()
    if len(extra):
        extra = extra.merge(frame[["segment_id", "step"]], how="left", indicator=True)
        extra = extra.loc[extra["_merge"] == "left_only", ["segment_id", "step"]].astype({"step": "int64"})
        frame = pd.concat([frame.assign(events_only=False), extra.assign(events_only=True)], ignore_index=True)
    # overflows per point: one per overflow event, or a Megatron line's count of skipped iterations
    counts: dict = {}
    for seg, st, kind, fields in zip(ev["segment_id"], ev["step"], ev["kind"], ev["fields"]):
        if kind != "loss_scale_at_floor":
            n = _skipped(fields) if kind == "skipped_iterations" else 1
            counts[(seg, int(st))] = counts.get((seg, int(st)), 0) + n
    keys = list(zip(frame["segment_id"], frame["step"]))
    frame["overflow"] = [counts.get((s, int(st)), 0) for s, st in keys]
    floor = set(
        zip(ev.loc[ev.kind == "loss_scale_at_floor", "segment_id"], ev.loc[ev.kind == "loss_scale_at_floor", "step"])
    )
    frame["at_floor"] = [(s, st) in floor for s, st in keys]
    return frame.sort_values(["step", "segment_id"], ignore_index=True)


def detector_columns(found: dict, names) -> dict[str, tuple[str, float]]:
    """midflight name of each detector series -> (the run's metric for it, scale to the role's unit): the
    resolved role where there is one, else the name itself if the run logs it (`clip` has no role)."""
    present, out = set(names), {}
    for canon in SERIES:
        role = roles.role_of(canon)
        hit = found.get(role) if role is not None else None
        if hit is not None:
            out[canon] = (hit.metric, hit.scale)
        elif canon in present and role is None:
            out[canon] = (canon, 1.0)
    return out


def user_names(incs: list[Incident], found: dict) -> list[Incident]:
    """Each incident's metric as the run calls it ("train/loss" for a loss spike), so that a page drawing
    "the metric around the incident" reads a series that exists. Only same-unit roles are renamed: an
    incident on a converted series (step_time_ms) keeps midflight's name and unit."""
    by_canonical = {r.canonical: r for r in found.values() if r.scale == 1.0}
    for inc in incs:
        hit = by_canonical.get(inc.metric)
        if hit is not None:
            inc.metric = hit.metric
    return incs


def _skipped(fields) -> int:
    """The count of a skipped_iterations event (an importer's; under fp16 a skip is an overflow)."""
    try:
        n = json.loads(fields).get("count", 1) if isinstance(fields, str) else 1
        return int(n) if isinstance(n, (int, float)) and 0 < n < 2**31 else 1
    except (ValueError, AttributeError):
        return 1


def telemetry_frame(store: Store, run: str, *, sparse: bool = False):
    """The telemetry samples hardware detection reads, sorted by wall time: throttling and ECC series, plus
    one liveness series per device (all names of a sample arrive together).
    sparse=True (a fleet, whose silent devices analysis.stragglers finds from presence per bucket): only the
    samples around each change of the throttling and ECC series, and no liveness series; at 992 GPUs the
    raw samples are tens of millions of rows, the changes a handful."""
    names = queries.telemetry_names(store, run)
    wanted = [n for n in ("throttle_reasons", "ecc_errors") if n in names]
    if sparse:
        return queries.telemetry_changes(store, run, wanted)
    alive = next((n for n in ("util_pct", "power_w", "temp_c") if n in names), None) or (names[0] if names else None)
    wanted += [alive] if alive is not None and alive not in wanted else []
    frames = [queries.telemetry(store, run, n).assign(name=n) for n in wanted]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["wall_time", "step", "segment_id", "host", "device", "name", "value"])
    return pd.concat(frames, ignore_index=True).sort_values(["wall_time", "name"], kind="stable")


BUCKET_STEPS = 5  # across-rank detection: steps per bucket (2 buckets of persistence: found within ~15 steps)
MAX_BUCKETS = 4000  # a longer run gets wider buckets (the grid stays <= ranks x MAX_BUCKETS)
FLEET_MIN_RANKS = 3


def _grid(view, steps=None) -> dict | None:
    if view.empty:
        return None
    rows = view.rows
    x_lo, x_hi = (view.x_lo, view.x_hi) if steps is None else (steps, steps)
    return {
        "cells": view.cells,
        "labels": list(rows["label"]),
        "hosts": list(rows["host"]),
        "ranks": [None if r is None or r != r else int(r) for r in rows["rank"]],
        "x_lo": x_lo,
        "x_hi": x_hi,
    }


def fleet_frame(store: Store, run: str, bucket_steps: int = BUCKET_STEPS) -> dict:
    """What across-rank detection (analysis.stragglers) reads, as per-bucket aggregates from
    logbook.store.ranks: compute_s per rank (each bucket's MINIMUM: slow at every step of it), and per
    device the SM clock (MAXIMUM: low all bucket long), temperature and power (medians' context), and a
    presence grid for silence. Telemetry buckets are at least two sampling periods wide."""
    out: dict = {}
    names = queries.metric_names(store, run)
    span, scale = None, 1.0
    # a rank's own work is compute_s; a run without it (an older trainer, an import) is judged on its
    # step time (whatever the run calls it: logbook.roles), which tells ranks apart only where they do not
    # wait for each other
    metric = "compute_s" if "compute_s" in names else None
    if metric is None:
        hit = queries.metric_roles(store, run, names).get("step_time")
        metric, scale = (hit.metric, hit.scale) if hit is not None else (None, 1.0)
    if metric is not None:
        probe = ranks.metric_view(store, run, metric, buckets=1, top=0)
        if not probe.empty and probe.cells.shape[0] >= FLEET_MIN_RANKS:
            span = (float(probe.x_lo[0]), float(probe.x_hi[-1]))
            nb = max(1, min(MAX_BUCKETS, math.ceil((span[1] - span[0] + 1) / bucket_steps)))
            out["compute"] = _grid(ranks.metric_view(store, run, metric, buckets=nb, cell="min", top=0))
            if scale != 1.0 and out["compute"] is not None:  # seconds, as the detector's thresholds are
                out["compute"]["cells"] = out["compute"]["cells"] * scale
            out["compute_metric"] = metric
        elif not probe.empty:  # too few ranks to compare: still map each device to its rank
            out["ranks"] = {"ranks": [int(r) for r in probe.rows["rank"]], "hosts": list(probe.rows["host"])}
    cad = fleet.telemetry_cadence(store, run, "sm_clock_mhz")
    if cad is not None and cad["devices"] >= FLEET_MIN_RANKS and math.isfinite(cad["period_s"]):
        dur = cad["t_hi"] - cad["t_lo"]
        steps_n = (span[1] - span[0] + 1) if span else None
        per_step = dur / steps_n if steps_n else cad["period_s"]
        width = max(bucket_steps * per_step, 2.0 * cad["period_s"])
        nb = max(1, min(MAX_BUCKETS, math.ceil(dur / width))) if width > 0 else 1
        clock = ranks.telemetry_view(store, run, "sm_clock_mhz", buckets=nb, cell="max", top=0)
        out["sm_clock"] = _grid(clock, clock.step)
        out["presence"] = out["sm_clock"]
        tnames = set(queries.telemetry_names(store, run))
        for key, name, cell in (("temp", "temp_c", "min"), ("power", "power_w", "max")):
            if name in tnames:
                v = ranks.telemetry_view(store, run, name, buckets=nb, cell=cell, top=0)
                out[key] = _grid(v, v.step)
    return out


def inputs(store: Store, run: str) -> dict:
    """Everything incident detection reads from the store, as plain frames. The split lets a caller
    read on one thread (DuckDB) and detect elsewhere: the dashboard runs incidents_from() in a worker
    process, because the detector is a Python loop (~13 µs a step) that would hold the server's GIL."""
    return {
        "effective": run_frame(store, run, "effective"),
        "superseded": run_frame(store, run, "superseded"),
        **device_inputs(store, run),
    }


def device_inputs(store: Store, run: str) -> dict:
    """What hardware and across-rank detection read: {"telemetry", "fleet"}. On a fleet (a presence grid
    to judge silence from), telemetry is read sparse: only the changes of the throttle and ECC series."""
    fleet_inputs = fleet_frame(store, run)
    return {"telemetry": telemetry_frame(store, run, sparse=bool(fleet_inputs.get("presence"))), "fleet": fleet_inputs}


def incidents(store: Store, run: str, config: DivergenceConfig | None = None) -> list[Incident]:
    """Every incident of a run (see incidents_from), kept in the store until the run's logs grow
    (logbook.store.kept): a second summary, export or dashboard of an unchanged run does not detect again.
    A non-default config is never kept."""
    found = queries.metric_roles(store, run)
    if config is not None:
        return user_names(incidents_from(inputs(store, run), config), found)
    return kept.cached(
        store,
        run,
        "incidents",
        kept.watermark(store, run),
        lambda: user_names(incidents_from(inputs(store, run)), found),
        dump=lambda incs: [dataclasses.asdict(i) for i in incs],
        load=lambda rows: [Incident(**row) for row in rows],
    )


class LiveIncidents:
    """A growing run's incidents, with its effective history fed to a KEPT online detector: each call
    reads and feeds only the steps logged since the last one, where `incidents()` detects over the
    whole history again. The dashboard holds one (app.source): it is what keeps a live run of 150k steps
    cheap to re-check every refresh.

    The detector and the superseded branches' incidents are kept per run with the run's lineage: a new
    segment, a rollback or anything else that changes which steps are effective starts over with a full
    detection (`detect_full`, e.g. the dashboard's worker process, given the inputs and a `keep` dict).
    Hardware and across-rank incidents come from bounded aggregates and are recomputed each call. The
    newest step is held back until a later step arrives (a step can still be flushing on other ranks),
    so a spike is reported at most one logged step late. A finished, unchanged run is answered from the
    store's kept results (report.incidents.incidents) without feeding anything."""

    def __init__(self, detect_full=None):
        self.detect_full = detect_full or (lambda frames, keep: incidents_from(frames, keep=keep))
        self._state: dict[str, dict] = {}

    def incidents(self, store: Store, run: str) -> list[Incident]:
        mark = kept.watermark(store, run)
        hit = kept.get(store, run, "incidents", mark)
        if hit is not None:
            return [Incident(**row) for row in hit]
        segs = queries.lineage_segments(store, run)
        ranges = lineage.effective_ranges(segs)
        lineage_key = (
            tuple((r.segment_id, r.lo, r.hi) for r in ranges[:-1]),
            (ranges[-1].segment_id, ranges[-1].lo) if ranges else None,
            tuple(sorted(s.segment_id for s in segs)),
        )
        running = queries.run_status(store, run) == "running"  # its newest step may still be flushing
        state = self._state.get(run)
        if state is None or state["lineage"] != lineage_key or state["detector"] is None:
            found = self._full(store, run, lineage_key, running)
        else:
            found = self._grow(store, run, state, ranges, running)
        found = user_names(found, queries.metric_roles(store, run))
        if not running:  # a live answer holds its newest step back: not the run's final one
            kept.put(store, run, "incidents", mark, [dataclasses.asdict(i) for i in found])
        return found

    def _full(self, store: Store, run: str, lineage_key, running: bool) -> list[Incident]:
        frames = inputs(store, run)
        eff = frames["effective"]
        keep: dict = {}
        if len(eff) and eff["step"].nunique() > 1 and running:
            frames["effective"] = eff[eff["step"] < eff["step"].max()]  # the newest step may still be flushing
        found = self.detect_full(frames, keep)
        self._state[run] = {
            "lineage": lineage_key,
            "detector": keep.get("detector"),
            "superseded": keep.get("superseded", []),
            "last": int(frames["effective"]["step"].max()) if len(frames["effective"]) else None,
        }
        return found

    def _grow(self, store: Store, run: str, state: dict, ranges, running: bool) -> list[Incident]:
        from midflight.logbook.analysis.divergence import feed, with_device_incidents

        new = run_frame(store, run, "effective", after=state["last"])
        ready = new
        if len(new) and running:  # hold the newest step back (see above)
            ready = new[new["step"] < new["step"].max()]
        if len(ready):
            feed(state["detector"], ready.drop(columns=["segment_id"]))
            state["last"] = int(ready["step"].max())
        out = copy.deepcopy(state["detector"].incidents())
        for inc in out:
            inc.segment_id = next((r.segment_id for r in ranges if r.lo < inc.start_step <= r.hi), None)
        on_path = {r.segment_id for r in ranges}
        return with_device_incidents(out + copy.deepcopy(state["superseded"]), device_inputs(store, run), on_path)
