"""A run's summary as one plain dict: what `midflight summary --json` prints."""

from __future__ import annotations

import fnmatch
import json

from midflight.logbook.analysis import energy
from midflight.logbook.analysis.energy import J_PER_KWH
from midflight.logbook.analysis.progress import planned_steps
from midflight.logbook.record import records, runmeta
from midflight.logbook.report import energy as energy_report
from midflight.logbook.report import goodput, incidents
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


METRIC_SUMMARIES = ("min", "max", "mean", "last")  # define_metric(summary=...) kinds the summary computes
MAX_LISTED = 200  # config changes and alerts listed in the summary (the newest; the count says how many in all)


def _valid(check, *args):
    try:
        return check(*args), True
    except (TypeError, ValueError):
        return None, False


def _summary_values(fields: dict) -> tuple[dict, list]:
    """A summary event's values (numbers, bools, text of the summary's size, None) and removed keys; the rest of
    a hostile or damaged log is left out."""
    values = fields.get("values")
    good = {}
    for key, v in (values if isinstance(values, dict) else {}).items():
        if (
            isinstance(key, str)
            and len(key) <= runmeta.MAX_LABEL
            and (
                v is None
                or type(v) in (int, float, bool)
                or (isinstance(v, str) and len(v) <= runmeta.MAX_SUMMARY_TEXT)
            )
        ):
            good[key] = v
    removed = fields.get("removed")
    return good, [k for k in removed if isinstance(k, str)] if isinstance(removed, list) else []


def run_notes(store: Store, run: str) -> dict:
    """What people said about the run: tags, notes, group, job type, summary values, config changes after
    init, alerts and define_metric summaries, folded from the headers and note events (queries.run_notes).

    Tags: every header's tags (a relaunch may add some), then each `tags` event sets the whole list. Notes,
    group, job type: the latest given. Summary: last value wins per key. Each value is checked as the Recorder
    checks it (record.runmeta): a log is a file anyone can write, and what fails is left out.
    """
    tags: list = []
    notes = group = job_type = None
    values: dict = {}
    changes, alerts, defined = [], [], {}
    for r in queries.run_notes(store, run).itertuples():
        try:
            f = json.loads(r.fields)
        except (TypeError, ValueError):
            continue
        if not isinstance(f, dict):
            continue
        step = number(r.step)
        if r.kind == "header":
            got, ok = _valid(runmeta.check_tags, "header", f.get("tags"))
            tags = list(dict.fromkeys(tags + list(got))) if ok else tags
            note, ok = _valid(runmeta.check_text, "header", f.get("notes"), runmeta.MAX_NOTES)
            notes = note if ok else notes
            for key in ("group", "job_type"):
                label, ok = _valid(lambda v, k=key: runmeta.check_label("header", v, what=k), f.get(key))
                if ok and label is not None:
                    group, job_type = (label, job_type) if key == "group" else (group, label)
        elif r.kind == "tags":
            got, ok = _valid(runmeta.check_tags, "tags", f.get("tags"))
            tags = list(got) if ok else tags
        elif r.kind == "notes":
            note, ok = _valid(runmeta.check_text, "notes", f.get("notes"), runmeta.MAX_NOTES)
            notes = note if ok else notes
        elif r.kind == "summary":
            good, removed = _summary_values(f)
            for key in removed:
                values.pop(key, None)
            values.update(good)
        elif r.kind == "config" and isinstance(f.get("diff"), dict):
            changes.append({"segment": r.segment_id, "step": step, "diff": f["diff"]})
        elif r.kind == "alert":
            title, ok1 = _valid(lambda v: runmeta.check_label("alert", v, what="title"), f.get("title"))
            text, ok2 = _valid(runmeta.check_text, "alert", f.get("text"), runmeta.MAX_NOTES)
            if ok1 and ok2 and title is not None and f.get("level") in runmeta.ALERT_LEVELS:
                alerts.append(
                    {"title": title, "text": text, "level": f["level"], "step": step, "time": number(r.wall_time)}
                )
        elif r.kind == "define_metric" and isinstance(f.get("name"), str):
            defined[f["name"]] = {k: f.get(k) for k in ("step_metric", "summary", "goal")}
    return {
        "tags": tags,
        "notes": notes,
        "group": group,
        "job_type": job_type,
        "summary_values": values,
        "config_changes": changes[-MAX_LISTED:],
        "config_change_count": len(changes),
        "alerts": alerts[-MAX_LISTED:],
        "alert_count": len(alerts),
        "defined_metrics": defined,
        "metric_summaries": metric_summaries(store, run, defined),
    }


def metric_summaries(store: Store, run: str, defined: dict) -> dict:
    """{metric: {"min": v, ...}} for each define_metric(name, summary="min,max,...") the run recorded: W&B's
    summary of a metric, computed from the store (min, max, mean over finite values; last: the last step's).
    A name may be a glob (`val/*`), as in W&B; other summary kinds (best, copy, none) are recorded, not computed."""
    wanted: dict = {}
    names = None
    for pattern, spec in defined.items():
        kinds = [k.strip() for k in spec["summary"].split(",")] if isinstance(spec.get("summary"), str) else []
        kinds = [k for k in kinds if k in METRIC_SUMMARIES]
        if not kinds:
            continue
        if any(c in pattern for c in "*?["):
            names = queries.metric_names(store, run) if names is None else names
            matched = fnmatch.filter(names, pattern)
        else:
            matched = [pattern]
        for name in matched:
            wanted.setdefault(name, {}).update(dict.fromkeys(kinds))
    found = queries.metric_aggregates(store, run, list(wanted))
    out = {}
    for name, kinds in wanted.items():
        if name in found:
            out[name] = {k: found[name][k] for k in kinds}
    return out


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
    step_s: float | None = None,
) -> dict:
    """Everything `summary --json` prints. CO2eq: the given intensity, else the region's, else the world average.
    step_s: the goodput ledger's assumed time per step where a run logged none."""
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
        **run_notes(store, run),
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
        "goodput": goodput.ledger(store, run, step_s=step_s, wasted=power["wasted"]),
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
