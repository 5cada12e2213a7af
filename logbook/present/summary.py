"""A run's summary (`report.summary.summarize`) as the text `midflight summary` prints."""

from __future__ import annotations

from midflight.logbook.present.text import NO_ENERGY


def _g(v) -> str:
    """A number for people (3-4 significant digits), or what it is if it is not one."""
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _resumed(seg: dict, parent: dict | None) -> str:
    """How a segment follows its parent, saying only what is known: an imported log often gives no
    checkpoint step, only that the steps went back (a rollback) or went on."""
    if not seg["parent"]:
        return ""
    if seg["resume_step"] is not None:
        return f" resumed from {seg['resume_step']} of {seg['parent']}"
    start = seg["start_step"]
    if start is None:
        return f" after {seg['parent']}"
    parent_end = parent["end_step"] if parent else None
    if parent_end is not None and start <= parent_end:
        return f" resumed at step {start} (rollback from {parent_end}) after {seg['parent']}"
    return f" resumed at step {start} after {seg['parent']}"


def format_text(s: dict) -> str:
    loss = (s.get("roles") or {}).get("loss") or {}
    named = f" ({loss['metric']})" if loss.get("metric") not in (None, "loss") else ""  # the run's own name
    lines = [
        f"run {s['run']}: {s['status']}, last step {s['last_step']}, "
        f"{s['effective_steps']} effective steps, last loss {s['last_loss']}{named}"
    ]
    lines += _notes(s)
    lines.append(f"segments ({len(s['segments'])}):")
    by_id = {seg["id"]: seg for seg in s["segments"]}
    for seg in s["segments"]:
        mark = "*" if seg["effective"] else " "
        span = f"steps {seg['start_step']}..{seg['end_step']}"
        resumed = _resumed(seg, by_id.get(seg["parent"]))
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
    clock = s.get("wall_time") or {}
    if clock.get("estimated"):
        lines.append(f"wall times: {clock['method']}: durations, wasted hours and energy below are estimates")
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
        where = _who(i.get("detail")) + where
        lines.append(
            f"    {i['kind']} steps {i['start_step']}..{i['end_step']}{where}: {i['severity']}, "
            f"{i['classification']}, peak {_g(i['peak_value'])} at {i['peak_step']}{act}"
        )
    e = s["energy"]
    if e and e["energy_j"] is None:
        lines.append(f"energy: {NO_ENERGY}")
    if e and e["energy_j"] is not None:
        label = "estimated" if e["estimated"] else "metered"
        if e.get("wall_time"):
            label += f"; wall times {e['wall_time']}"
        co2 = s["co2"]
        kg = f"{s['co2eq_kg']:.3g} kg CO2eq" if s["co2eq_kg"] is not None else "CO2eq unknown"
        plate = "unknown (no TDP)" if e["nameplate_j"] is None else f"{_g(e['nameplate_j'] / 3.6e6)} kWh"
        if e.get("nameplate_source"):
            plate += f", {e['nameplate_source']}"
        lines.append(
            f"energy: {_g(e['energy_kwh'])} kWh ({label}, basis {e['basis']}; nameplate {plate}); "
            f"{kg} at {co2['intensity_g_per_kwh']} g/kWh x PUE {co2['pue']:g} ({co2['source']})"
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
        guess = ", estimated from iteration times" if b["segment_id"] in clock.get("segments", ()) else ""
        lines.append(
            f"wasted: {b['segment_id']} steps {b['first_step']}..{b['last_step']} ({b['steps']} steps, "
            f"{_g(b['wall_s'])} s, {_g(b['device_hours'])} {b['device_kind']}-hours{energy_txt}{guess}), "
            f"discarded by {b['discarded_by']}"
        )
    lines += goodput_lines(s.get("goodput"))
    for p in s["ingest_problems"]:
        lines.append(f"warning: {p['file']}: {p['malformed']} malformed lines skipped")
        for line_no, msg, snippet in p["examples"][:3]:
            lines.append(f"    line {line_no}: {msg}: {snippet[:80]}")
    return "\n".join(lines)


def _one_line(text: str, limit: int = 300) -> str:
    """User text on one line of the summary (line breaks as spaces, cut with an ellipsis): it stays text."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _notes(s: dict) -> list[str]:
    """Tags, group, notes, summary values, config changes after init and alerts: what people said about the run."""
    lines = []
    labels = [
        f"group {_one_line(s['group'])}" if s.get("group") else "",
        f"job type {s['job_type']}" if s.get("job_type") else "",
    ]
    if s.get("tags") or any(labels):
        tags = f"tags: {', '.join(s['tags'])}" if s.get("tags") else "tags: -"
        lines.append("; ".join([tags] + [x for x in labels if x]))
    if s.get("notes"):
        lines.append(f"notes: {_one_line(s['notes'])}")
    values = s.get("summary_values") or {}
    if values:
        lines.append("summary: " + ", ".join(f"{k}={_one_line(_g(v), 80)}" for k, v in values.items()))
    for name, got in (s.get("metric_summaries") or {}).items():
        lines.append(f"summary of {name}: " + ", ".join(f"{k} {_g(v)}" for k, v in got.items()))
    changes = s.get("config_changes") or []
    if changes:
        more = s.get("config_change_count", len(changes)) - len(changes)
        lines.append(
            f"config changed after init ({len(changes) + more}{f', the last {len(changes)} shown' if more else ''}):"
        )
        for c in changes:
            for key, (old, new) in c["diff"].items():
                lines.append(
                    f"    step {c['step']} ({c['segment']}): {key}: {_one_line(old, 80)} -> {_one_line(new, 80)}"
                )
    for a in s.get("alerts") or []:
        lines.append(f"alert {a['level']} at step {a['step']}: {_one_line(a['title'], 120)}: {_one_line(a['text'])}")
    return lines


def _who(d) -> str:
    """Where an across-rank or hardware incident is: " on rank 33 (node0004)", " on node0002/gpu3 (rank 19)",
    " on node0007 (8 ranks)"; "" for a run-wide incident."""
    if not isinstance(d, dict):
        return ""
    host, device, rank, ranks = d.get("host"), d.get("device"), d.get("rank"), d.get("ranks")
    if device is not None:
        return f" on {host}/{device}" + (f" (rank {rank})" if rank is not None else "")
    if rank is not None:
        return f" on rank {rank}" + (f" ({host})" if host is not None else "")
    if host is not None and isinstance(ranks, list):
        return f" on {host} ({len(ranks)} ranks)"
    return ""


GOODPUT_LABELS = {
    "productive": "productive steps",
    "wasted": "thrown away (rollbacks, crashes)",
    "downtime": "restart downtime",
    "checkpoint": "checkpoint save/load",
    "skipped": "skipped steps",
    "stall": "stalls",
    "straggler": "straggler loss",
    "unattributed": "unattributed",
}


def goodput_lines(g: dict | None) -> list[str]:
    """The goodput ledger as text: the ratio, each category with its share and method, the assumptions."""
    if not g or not g.get("wall_s"):
        return []
    flag = " (ESTIMATE)" if g["estimated"] else ""
    ratio = g["effective_ratio"]
    lines = [
        f"goodput{flag}: effective training time {100 * ratio:.1f}% of {_g(g['wall_s'] / 3600)} h wall-clock, "
        f"{_g(g['device_hours'])} device-hours"
    ]
    for k, c in g["categories"].items():
        if not c["s"] and k in ("unattributed",):
            continue
        share = 100 * c["s"] / g["wall_s"]
        est = "estimated" if c["estimated"] else "measured"
        lines.append(
            f"    {GOODPUT_LABELS.get(k, k)}: {_g(c['s'] / 3600)} h ({share:.1f}%), {_g(c['device_hours'])} "
            f"device-hours [{est}: {c['method']}]"
        )
    for a in g.get("assumptions") or []:
        lines.append(f"    assumption: {a}")
    return lines
