"""A run's summary as one plain dict: what `python -m logbook summary --json` prints."""

from __future__ import annotations

import json
import math

from . import queries
from .store import Store


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else (int(f) if f.is_integer() else f)


def _g(v) -> str:
    """A number for people (3-4 significant digits), or what it is if it is not one."""
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _text(v):
    return v if isinstance(v, str) else None


def _interventions(store: Store, run: str) -> list[dict]:
    return [
        {
            "id": r.intervention_id,
            "kind": r.action,
            "status": r.status,
            "applied_step": _num(r.applied_step),
            "note": _text(r.note),
            "params": json.loads(r.params) if isinstance(r.params, str) else {},
            "detail": _text(r.detail),
            "author": _text(r.author),
            "requested_time": _num(r.requested_time),
        }
        for r in queries.interventions(store, run).itertuples()
    ]


DEFAULT_REGION = "World"  # without a region or an intensity, CO2eq uses the world-average grid (Ember 2023)


def projection(store: Store, run: str, power: dict, effective_steps: int) -> dict | None:
    """The planned full run's energy and CO2eq, from the measured J/token, when the run's config names its length."""
    segs = queries.segments(store, run)
    e, tokens = power["energy"], queries.last_value(store, run, queries.TOKENS_METRIC)
    if segs.empty or not e or not e["energy_j"] or not tokens or not effective_steps:
        return None
    try:
        planned_steps = int(json.loads(segs.iloc[-1].config).get("steps"))
    except (TypeError, ValueError, AttributeError):
        return None  # not a midflight trainer config: no plan to project to
    params = None
    models = queries.events(store, run, ["model"])
    if not models.empty:
        params = json.loads(models.iloc[-1].fields).get("params")
    from .energy import project

    tokens_per_step = float(tokens) / effective_steps
    out = project(
        e["energy_j"],
        float(tokens),
        tokens_per_step * planned_steps,
        n_params=params,
        intensity_g_per_kwh=power["co2"]["intensity_g_per_kwh"],
        pue=power["co2"]["pue"],
        estimated=e["estimated"],
    )
    out["planned_steps"] = planned_steps
    return out


def summarize(
    store: Store,
    run: str,
    *,
    region: str | None = None,
    intensity_g_per_kwh: float | None = None,
    pue: float | None = None,
) -> dict:
    """Everything `summary --json` prints. CO2eq: the given intensity, else the region's, else the world average."""
    from . import divergence, energy

    if region is None and intensity_g_per_kwh is None:
        region = DEFAULT_REGION
    power = energy.summary_energy(store, run, region=region, intensity_g_per_kwh=intensity_g_per_kwh, pue=pue)
    segs = queries.segments(store, run)
    segments = [
        {
            "id": r.segment_id,
            "parent": _text(r.parent_id),
            "resume_step": _num(r.resume_step),
            "start_step": _num(r.start_step),
            "end_step": _num(r.end_step),
            "end_reason": r.end_reason,
            "exit_code": _num(r.exit_code),
            "start_time": _num(r.start_time),
            "end_time": _num(r.end_time),
            "reason": _text(r.reason),
            "effective": bool(r.effective),
            "ranks": int(r.ranks),
            "config_diff": json.loads(r.config_diff) if isinstance(r.config_diff, str) else {},
            "error": _text(r.error),
        }
        for r in segs.itertuples()
    ]
    last_loss = _num(queries.last_value(store, run, "loss"))
    ends = [s["end_step"] for s in segments if s["end_step"] is not None]
    effective_steps = queries.effective_steps(store, run)
    return {
        "run": run,
        "status": queries.run_status(store, run),
        "last_step": max(ends) if ends else None,
        "effective_steps": effective_steps,
        "last_loss": last_loss,
        "segments": segments,
        "metrics": queries.metric_names(store, run),
        "events": queries.event_counts(store, run),
        "annotations": len(queries.annotations(store, run)),
        "incidents": [i.to_dict() for i in divergence.incidents(store, run)],
        "interventions": _interventions(store, run),
        "energy": power["energy"],
        "co2eq_kg": power["co2eq_kg"],
        "co2": power["co2"],
        "projection": projection(store, run, power, effective_steps),
        "wasted": power["wasted"],  # computed once, by the energy summary that sums its energy
        "references": {k: {"co2eq_t": v["co2eq_t"], "method": v["method"]} for k, v in energy.REFERENCES.items()},
        "ingest_problems": queries.ingest_problems(store, run),
    }


def format_text(s: dict) -> str:
    lines = [
        f"run {s['run']}: {s['status']}, last step {s['last_step']}, "
        f"{s['effective_steps']} effective steps, last loss {s['last_loss']}"
    ]
    lines.append(f"segments ({len(s['segments'])}):")
    for seg in s["segments"]:
        mark = "*" if seg["effective"] else " "
        span = f"steps {seg['start_step']}..{seg['end_step']}"
        resumed = f" resumed from {seg['resume_step']} of {seg['parent']}" if seg["parent"] else ""
        why = f" ({seg['reason']})" if seg["reason"] else ""
        ended = seg["end_reason"]
        if seg["error"]:
            ended += f" ({seg['error'].strip().splitlines()[-1][:100]})"
        elif seg["exit_code"]:
            ended += f" (exit code {seg['exit_code']})"
        lines.append(f" {mark} {seg['id']}: {span}, {ended}{resumed}{why}")
        for key, (old, new) in seg["config_diff"].items():
            lines.append(f"      {key}: {old} -> {new}")
    lines.append("   (* = on the effective path)")
    lines.append(f"metrics: {', '.join(s['metrics']) or '-'}")
    lines.append(f"events: {', '.join(f'{k}={n}' for k, n in s['events'].items()) or '-'}")
    lines.append(f"annotations: {s['annotations']}, interventions: {len(s['interventions'])}")
    for i in s["interventions"]:
        params = ", ".join(f"{k}={v}" for k, v in i["params"].items())
        at = f" at step {i['applied_step']}" if i["applied_step"] is not None else ""
        why = f": {i['detail']}" if i["detail"] else ""
        note = f' ("{i["note"]}")' if i["note"] else ""
        lines.append(f"    {i['kind']}({params}) by {i['author']}: {i['status']}{at}{why}{note}")
    open_now = [i for i in s["incidents"] if not i["superseded"]]
    lines.append(f"incidents: {len(open_now)} on the effective path, {len(s['incidents']) - len(open_now)} superseded")
    for i in s["incidents"]:
        where = " (superseded)" if i["superseded"] else ""
        act = f"; suggested: {i['suggested_action']}" if i.get("suggested_action") else ""
        lines.append(
            f"    {i['kind']} steps {i['start_step']}..{i['end_step']}{where}: {i['severity']}, "
            f"{i['classification']}, peak {_g(i['peak_value'])} at {i['peak_step']}{act}"
        )
    e = s["energy"]
    if e and e["energy_j"] is not None:
        label = "estimated" if e["estimated"] else "metered"
        co2 = s["co2"]
        kg = f"{s['co2eq_kg']:.3g} kg CO2eq" if s["co2eq_kg"] is not None else "CO2eq unknown"
        lines.append(
            f"energy: {_g(e['energy_kwh'])} kWh ({label}, basis {e['basis']}; nameplate "
            f"{_g(e['nameplate_j'] and e['nameplate_j'] / 3.6e6)} kWh); {kg} at {co2['intensity_g_per_kwh']} g/kWh "
            f"x PUE {co2['pue']:g} ({co2['source']})"
        )
    proj = s.get("projection")
    if proj:
        kg = f", {_g(proj['co2eq_kg'])} kg CO2eq" if proj["co2eq_kg"] is not None else ""
        lines.append(
            f"projection to the planned {proj['planned_steps']:,} steps: {_g(proj['projected_kwh'])} kWh{kg} "
            f"(at {_g(proj['j_per_token'])} J/token{', estimated' if proj['estimated'] else ''})"
        )
    for b in s["wasted"]:
        energy_txt = f", {_g(b['energy_j'])} J" if b["energy_j"] is not None else ""
        lines.append(
            f"wasted: {b['segment_id']} steps {b['first_step']}..{b['last_step']} ({b['steps']} steps, "
            f"{_g(b['wall_s'])} s, {_g(b['device_hours'])} {b['device_kind']}-hours{energy_txt}), "
            f"discarded by {b['discarded_by']}"
        )
    for p in s["ingest_problems"]:
        lines.append(f"warning: {p['file']}: {p['malformed']} malformed lines skipped")
        for line_no, msg, snippet in p["examples"][:3]:
            lines.append(f"    line {line_no}: {msg}: {snippet[:80]}")
    return "\n".join(lines)
