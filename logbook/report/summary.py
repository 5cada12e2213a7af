"""A run's summary as one plain dict: what `midflight summary --json` prints."""

from __future__ import annotations

import json

from midflight.logbook.analysis import energy
from midflight.logbook.analysis.energy import J_PER_KWH
from midflight.logbook.analysis.progress import planned_steps
from midflight.logbook.record import records
from midflight.logbook.report import energy as energy_report
from midflight.logbook.report import incidents
from midflight.logbook.report.wasted import wasted
from midflight.logbook.store import queries
from midflight.logbook.store.database import Store
from midflight.logbook.values import finite, json_ready, number, text


def _interventions(store: Store, run: str) -> list[dict]:
    return [
        {
            "id": r.intervention_id,
            "kind": r.action,
            "status": r.status,
            "applied_step": number(r.applied_step),
            "note": text(r.note),
            "params": json.loads(r.params) if isinstance(r.params, str) else {},
            "detail": text(r.detail),
            "author": text(r.author),
            "requested_time": number(r.requested_time),
        }
        for r in queries.interventions(store, run).itertuples()
    ]


def wall_time(store: Store, run: str) -> dict:
    """Where the run's wall times come from: {"estimated", "method", "segments" (ids with made-up times)}.

    An importer that found no clock in a log estimates wall times from iteration times and says so in
    the segment's config (records.WALL_TIME_SOURCE); every duration, wasted hour and energy figure of
    such a segment is then an estimate too."""
    ids = []
    for r in queries.segments(store, run).itertuples():
        try:
            config = json.loads(r.config) if isinstance(r.config, str) else {}
        except ValueError:
            config = {}
        if isinstance(config, dict) and config.get(records.WALL_TIME_SOURCE) == records.WALL_TIME_ESTIMATED:
            ids.append(r.segment_id)
    method = f"{records.WALL_TIME_ESTIMATED} (the log has no timestamps)" if ids else "as logged"
    return {"estimated": bool(ids), "method": method, "segments": ids}


def projection(store: Store, run: str, power: dict, effective_steps: int) -> dict | None:
    """The planned full run's energy and CO2eq, from the measured J/token, when the run's config names its length."""
    segs = queries.segments(store, run)
    e, tokens = power["energy"], queries.last_value(store, run, queries.TOKENS_METRIC)
    if segs.empty or not e or not e["energy_j"] or not tokens or not effective_steps:
        return None
    planned = planned_steps(segs.iloc[-1].config)
    if planned is None:
        return None  # not a midflight trainer config: no plan to project to
    params = None
    models = queries.events(store, run, ["model"])
    if not models.empty:
        params = json.loads(models.iloc[-1].fields).get("params")
    tokens_per_step = float(tokens) / effective_steps
    out = energy.project(
        e["energy_j"],
        float(tokens),
        tokens_per_step * planned,
        n_params=params,
        intensity_g_per_kwh=power["co2"]["intensity_g_per_kwh"],
        pue=power["co2"]["pue"],
        estimated=e["estimated"],
    )
    out["planned_steps"] = planned
    return out


def summarize(
    store: Store,
    run: str,
    *,
    region: str | None = None,
    intensity_g_per_kwh: float | None = None,
    pue: float | None = None,
    tdp_w: float | None = None,
) -> dict:
    """Everything `summary --json` prints. CO2eq: the given intensity, else the region's, else the world average."""
    if region is None and intensity_g_per_kwh is None:
        region = energy.DEFAULT_REGION
    power = energy_summary(store, run, region=region, intensity_g_per_kwh=intensity_g_per_kwh, pue=pue, tdp_w=tdp_w)
    segs = queries.segments(store, run)
    segments = [
        {
            "id": r.segment_id,
            "parent": text(r.parent_id),
            "resume_step": number(r.resume_step),
            "start_step": number(r.start_step),
            "end_step": number(r.end_step),
            "end_reason": r.end_reason,
            "exit_code": number(r.exit_code),
            "start_time": number(r.start_time),
            "end_time": number(r.end_time),
            "reason": text(r.reason),
            "effective": bool(r.effective),
            "ranks": int(r.ranks),
            "config_diff": json.loads(r.config_diff) if isinstance(r.config_diff, str) else {},
            "error": text(r.error),
        }
        for r in segs.itertuples()
    ]
    found = queries.metric_roles(store, run)  # the run's own names for loss, lr, ... (logbook.roles)
    loss = found.get("loss")
    last_loss = number(queries.last_value(store, run, loss.metric)) if loss is not None else None
    ends = [s["end_step"] for s in segments if s["end_step"] is not None]
    effective_steps = queries.effective_steps(store, run)
    summary = {
        "run": run,
        "status": queries.run_status(store, run),
        "last_step": max(ends) if ends else None,
        "effective_steps": effective_steps,
        "last_loss": last_loss,
        "roles": {r.role: {"metric": r.metric, "declared": r.declared, "unit": r.unit} for r in found.values()},
        "segments": segments,
        "metrics": queries.metric_names(store, run),
        "events": queries.event_counts(store, run),
        "annotations": len(queries.annotations(store, run)),
        "incidents": [i.to_dict() for i in incidents.incidents(store, run)],
        "interventions": _interventions(store, run),
        "energy": power["energy"],
        "co2eq_kg": power["co2eq_kg"],
        "co2": power["co2"],
        "projection": projection(store, run, power, effective_steps),
        "wasted": power["wasted"],  # computed once, by the energy summary that sums its energy
        "wall_time": power["wall_time"],
        "references": {k: {"co2eq_t": v["co2eq_t"], "method": v["method"]} for k, v in energy.REFERENCES.items()},
        "ingest_problems": queries.ingest_problems(store, run),
    }
    summary, nonfinite = json_ready(summary)  # strict JSON, always: see logbook.values.json_ready
    summary["nonfinite"] = nonfinite
    return summary


def energy_summary(
    store: Store,
    run: str,
    *,
    region: str | None = None,
    intensity_g_per_kwh: float | None = None,
    pue: float | None = None,
    tdp_w: float | None = None,
) -> dict:
    """{"energy": {...}, "co2eq_kg": float | None, "co2": {...}, "wasted": [...]}, what `summary` prints.

    CO2eq follows analysis.energy.co2_basis: the given intensity, else the region's, else None.
    """
    tot = energy_report.run_energy(store, run, tdp_w=tdp_w)
    waste = wasted(store, run, tdp_w=tdp_w)
    wasted_j = sum(b["energy_j"] for b in waste if b["energy_j"] is not None) if waste else 0.0
    tokens = finite(queries.last_value(store, run, queries.TOKENS_METRIC))
    figures = {
        "energy_j": tot["energy_j"],
        "energy_kwh": None if tot["energy_j"] is None else tot["energy_j"] / J_PER_KWH,
        "basis": tot["basis"],
        "estimated": tot["estimated"],
        "metered_j": tot["metered_j"],
        "estimated_j": tot["estimated_j"],
        "nameplate_j": tot["nameplate_j"],
        "nameplate_source": "; ".join(sorted({s["nameplate_source"] for s in tot["segments"] if s["nameplate_source"]}))
        or None,
        "wasted_j": wasted_j,
        "j_per_token": tot["energy_j"] / tokens if tot["energy_j"] and tokens else None,
        "method": energy.ENERGY_METHOD,
        "segments": [
            {k: s[k] for k in ("segment_id", "energy_j", "basis", "metered_j", "estimated_j", "nameplate_j")}
            for s in tot["segments"]
        ],
    }
    clock = wall_time(store, run)
    figures["wall_time"] = clock["method"] if clock["estimated"] else None
    if clock["estimated"]:
        figures["method"] = f"{figures['method']}; wall times {clock['method']}"
    co2 = energy.co2_basis(region, intensity_g_per_kwh, pue)
    kg = energy.co2eq_of(tot["energy_j"], co2)
    co2["estimated"] = tot["estimated"]
    return {"energy": figures, "co2eq_kg": kg, "co2": co2, "wasted": waste, "wall_time": clock}
