"""Alerts: their record, their lifecycle, and the outbox (RUN_DIR/alerts.jsonl) that makes delivery at-least-once.

Why an append-only outbox: a watcher can be killed at any instant (OOM, a node drain, SIGKILL). Every
change of an alert is appended and fsynced (records.append_line, as annotations.jsonl and
interventions.jsonl are) BEFORE anything is sent, and each delivery is confirmed by a `sent` record
AFTER the channel accepted it. A restarted watcher replays the file: a notification with no `sent` for a
channel is sent again, so nothing is lost; a receiver may see it twice and drops the copy by its
`delivery_id`. An alert is named by a stable key (run, kind, segment, start step, rank), so a restarted
watcher that finds the same incident again updates the alert it already has instead of opening another.

Lifecycle: `opened` (notified) -> `updated` while it grows (notified when severity or classification
changes) -> `resolved` (notified) when it ends; `acked` (a person, CLI or dashboard) stops re-sends;
`resend` (notified) repeats an open, unacknowledged alert after the configured time. The ops are the
stable interface described in docs/architecture.md ("Alerts").
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from midflight.logbook.record import records
from midflight.logbook.record.annotations import author_name

OUTBOX = "alerts.jsonl"
SCHEMA = "midflight.alert/1"
SEVERITIES = ("low", "medium", "high")
OPS = ("opened", "updated", "resolved", "resend", "acked", "sent")
NOTIFYING = ("opened", "updated", "resolved", "resend")
MAX_NOTE = 2000


def severity_rank(sev) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else 0


def alert_key(run: str, kind: str, segment=None, start_step=None, rank=None) -> str:
    """The idempotency key: the same happening always gets the same key, whoever finds it and when."""
    parts = [run, kind, segment, start_step, rank]
    return "/".join("-" if p is None else str(p) for p in parts)


def alert_id(key: str) -> str:
    """A short, stable id for a key (what `midflight alerts ack` takes)."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


@dataclass
class Wanted:
    """What the run's data says one alert should look like now (alerts.evaluate builds these)."""

    key: str
    snapshot: dict  # run, kind, severity, step, title, text, values, ... (see `snapshot`)
    active: bool  # still going on (False: it ended, or it is an instant event)
    instant: bool = False  # an event with no duration (a restart, an intervention's outcome)


def snapshot(run, kind, severity, step, title, **extra) -> dict:
    out = {"run": run, "kind": kind, "severity": severity, "step": step, "title": title}
    out.update({k: _json_safe(v) for k, v in extra.items()})
    return out


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # a numpy scalar
        try:
            return _json_safe(v.item())
        except (TypeError, ValueError):
            return str(v)
    return v


@dataclass
class Alert:
    """One alert as the outbox replays it."""

    id: str
    key: str
    snapshot: dict
    state: str = "open"  # open | resolved
    acked: bool = False
    acked_by: str | None = None
    opened_t: float = 0.0
    last_notify_t: float = 0.0
    last_change_t: float = 0.0
    notifications: list = field(default_factory=list)  # [(delivery_id, op, t, snapshot)]

    @property
    def severity(self) -> str:
        return self.snapshot.get("severity", "low")


class Outbox:
    """RUN_DIR/alerts.jsonl, replayed into alerts, read incrementally (from the last offset).

    Appends go through records.append_line (flock + O_APPEND + fsync), so the CLI's `ack`, the
    dashboard and a watcher may write at once. Nothing in the file is trusted: a record that is not
    one of ours (unknown op, an id that names no alert, odd types) is counted in `rejected` and skipped."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / OUTBOX
        self.alerts: dict[str, Alert] = {}  # by id
        self.by_key: dict[str, str] = {}
        self.sent: set[tuple[str, str]] = set()  # (delivery_id, channel)
        self.rejected = 0
        self._offset = 0
        self._lock = threading.Lock()
        self.refresh()

    # ---------------------------------------------------------------- reading
    def refresh(self) -> None:
        with self._lock:
            try:
                while True:
                    data, new = records.read_complete(self.path, self._offset, 8 << 20)
                    if not data:
                        break
                    for line in data.split(b"\n"):
                        if line.strip():
                            try:
                                self._apply(records.decode(line))
                            except ValueError:
                                self.rejected += 1
                    self._offset = new
            except FileNotFoundError:
                return

    def _apply(self, rec: dict) -> None:
        op, aid, t = rec.get("op"), rec.get("id"), rec.get("t")
        if rec.get("k") != "alert" or op not in OPS or not isinstance(aid, str) or len(aid) > records.MAX_ID:
            self.rejected += 1
            return
        t = float(t) if isinstance(t, (int, float)) and math.isfinite(t) else 0.0
        alert = self.alerts.get(aid)
        if op == "opened":
            key, snap = rec.get("key"), rec.get("alert")
            if alert is not None or not isinstance(key, str) or not isinstance(snap, dict) or alert_id(key) != aid:
                self.rejected += 1
                return
            alert = self.alerts[aid] = Alert(aid, key, snap, opened_t=t)
            self.by_key[key] = aid
        elif alert is None:
            self.rejected += 1
            return
        if op in ("opened", "updated", "resolved"):
            alert.last_change_t = t
        if op in ("updated", "resolved") and isinstance(rec.get("alert"), dict):
            alert.snapshot = rec["alert"]
        if op == "resolved":
            alert.state = "resolved"
        elif op == "acked":
            alert.acked = True
            author = rec.get("author")
            alert.acked_by = author[:200] if isinstance(author, str) else "unknown"
        elif op == "sent":
            delivery, channel = rec.get("delivery"), rec.get("channel")
            if isinstance(delivery, str) and isinstance(channel, str):
                self.sent.add((delivery, channel))
            return
        if op in NOTIFYING and rec.get("notify", True):
            delivery = f"{aid}.{len(alert.notifications) + 1}"
            alert.notifications.append((delivery, op, t, dict(alert.snapshot)))
            alert.last_notify_t = t

    # ---------------------------------------------------------------- writing
    def _append(self, rec: dict) -> None:
        records.append_line(self.path, {"k": "alert", "t": time.time(), **rec})

    def open(self, wanted: Wanted) -> str:
        aid = alert_id(wanted.key)
        self._append({"op": "opened", "id": aid, "key": wanted.key, "notify": True, "alert": wanted.snapshot})
        return aid

    def update(self, aid: str, snap: dict, *, notify: bool) -> None:
        self._append({"op": "updated", "id": aid, "notify": notify, "alert": snap})

    def resolve(self, aid: str, snap: dict, *, notify: bool = True, reason: str | None = None) -> None:
        self._append({"op": "resolved", "id": aid, "notify": notify, "reason": reason, "alert": snap})

    def resend(self, aid: str) -> None:
        self._append({"op": "resend", "id": aid, "notify": True})

    def mark_sent(self, delivery: str, channel: str) -> None:
        aid = delivery.rpartition(".")[0]
        self._append({"op": "sent", "id": aid, "delivery": delivery, "channel": channel})

    # ---------------------------------------------------------------- what is owed
    def undelivered(self, channel: str, min_severity: str = "low") -> list[tuple[Alert, tuple]]:
        """Notifications not yet confirmed sent on `channel`, oldest first (by their outbox time)."""
        floor = severity_rank(min_severity)
        out = []
        for alert in self.alerts.values():
            for note in alert.notifications:
                if (note[0], channel) in self.sent:
                    continue
                if severity_rank(note[3].get("severity")) < floor:
                    continue
                out.append((alert, note))
        out.sort(key=lambda an: an[1][2])
        return out


def ack(run_dir, aid: str, *, author: str | None = None, note: str | None = None) -> None:
    """Acknowledge an alert: it is no longer re-sent. KeyError for an id the outbox does not hold."""
    box = Outbox(run_dir)
    if aid not in box.alerts:
        raise KeyError(f"no alert {aid!r} in {run_dir} (see `midflight alerts list`)")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise ValueError(f"the note must be text of at most {MAX_NOTE} characters")
    box._append({"op": "acked", "id": aid, "author": author_name(author), "note": note})


def history(run_dir) -> list[dict]:
    """Every alert of the run, newest first, as plain rows (the CLI's `alerts list`, the dashboard)."""
    box = Outbox(run_dir)
    rows = []
    for a in box.alerts.values():
        s = a.snapshot
        rows.append(
            {
                "id": a.id,
                "kind": s.get("kind"),
                "severity": s.get("severity"),
                "step": s.get("step"),
                "title": s.get("title"),
                "state": a.state,
                "acked": a.acked,
                "acked_by": a.acked_by,
                "opened": a.opened_t,
                "notifications": len(a.notifications),
                "key": a.key,
            }
        )
    rows.sort(key=lambda r: r["opened"], reverse=True)
    return rows


UPDATE_EVERY_S = 30.0  # a growing incident's silent updates are recorded at most this often (escalations at once)


def reconcile(
    box: Outbox,
    run: str,
    wanted: list[Wanted],
    *,
    now: float,
    resend_after_s: float | None,
    update_every_s: float = UPDATE_EVERY_S,
) -> int:
    """Bring the outbox in line with what the data says now; returns how many records were appended.

    New key: opened (and at once resolved, without a second message, for an instant event or one that
    already ended). Known key: updated when it changed (notified when severity, classification or the
    autopilot's proposal did),
    resolved when it ended. An open alert of this run that nothing wants any more is resolved. An open,
    unacknowledged alert whose last message is older than resend_after_s is sent again. A change that is
    not an escalation is recorded at most every update_every_s (a slow divergence grows at every step; the
    outbox need not), and always with the resolution."""
    n = 0
    seen = set()
    wanted = list({w.key: w for w in wanted}.values())  # one per key (the last)
    for w in wanted:
        seen.add(w.key)
        aid = box.by_key.get(w.key)
        if aid is None:
            aid = box.open(w)
            n += 1
            if w.instant or not w.active:
                box.resolve(aid, w.snapshot, notify=not w.instant, reason="instant" if w.instant else "ended")
                n += 1
            continue
        alert = box.alerts[aid]
        if alert.state != "open":
            continue
        old = alert.snapshot
        if _changed(old, w.snapshot) and w.active:
            escalated = (
                severity_rank(w.snapshot.get("severity")) > severity_rank(old.get("severity"))
                or w.snapshot.get("classification") != old.get("classification")
                or w.snapshot.get("autopilot") != old.get("autopilot")  # the autopilot proposed or acted: say so
            )
            if escalated or now - alert.last_change_t >= update_every_s:
                box.update(aid, w.snapshot, notify=escalated)
                n += 1
        if not w.active:
            box.resolve(aid, w.snapshot, reason="ended")
            n += 1
    for aid, alert in list(box.alerts.items()):
        if alert.state == "open" and alert.snapshot.get("run") == run and alert.key not in seen:
            box.resolve(aid, alert.snapshot, reason="no longer detected")
            n += 1
    if resend_after_s is not None and resend_after_s > 0:
        box.refresh()
        for aid, alert in box.alerts.items():
            if (
                alert.state == "open"
                and not alert.acked
                and alert.snapshot.get("run") == run
                and now - alert.last_notify_t >= resend_after_s
            ):
                box.resend(aid)
                n += 1
    box.refresh()
    return n


_TRACKED = ("severity", "classification", "end_step", "peak_step", "peak_value", "step", "title", "autopilot")


def _changed(old: dict, new: dict) -> bool:
    return any(old.get(k) != new.get(k) for k in _TRACKED)


# ------------------------------------------------------------------ what the data says (plain inputs)
def link(base_url: str | None, run: str, step) -> str | None:
    """The dashboard at this run and step: BASE_URL/live?run=...&step=..."""
    if not base_url:
        return None
    from urllib.parse import urlencode

    query = {"run": run} if step is None else {"run": run, "step": int(step)}
    return f"{base_url.rstrip('/')}/live?{urlencode(query)}"


def from_incidents(run: str, incidents, *, last_step, running: bool, resolve_after_steps: int, proposal=None) -> list:
    """One alert per incident. It is active while the run runs and the incident ended fewer than
    resolve_after_steps steps before the newest step detection has seen (an incident on a branch a
    rollback abandoned has ended). `proposal(incident)`: what the autopilot proposed or did for it (its
    ledger entry, or None), which the alert carries: a `suggest` policy's action reaches people this way."""
    out = []
    for inc in incidents:
        prop = proposal(inc) if proposal is not None else None
        detail = inc.detail if isinstance(inc.detail, dict) else {}
        rank = detail.get("rank", detail.get("device"))
        key = alert_key(run, inc.kind, inc.segment_id, inc.start_step, rank)
        ended = (last_step is not None and last_step - inc.end_step >= resolve_after_steps) or inc.superseded
        where = f" on rank {rank}" if rank is not None else ""
        title = f"{inc.kind.replace('_', ' ')}{where} at step {inc.start_step} ({inc.severity}, {inc.classification})"
        text = (
            f"{run}: {inc.kind.replace('_', ' ')}{where} from step {inc.start_step} to {inc.end_step}, "
            f"peak {inc.metric or 'value'} {_num(inc.peak_value)} at step {inc.peak_step}"
            + (f" (baseline {_num(inc.baseline)})" if inc.baseline is not None else "")
            + (f"; suggested: {inc.suggested_action}" if inc.suggested_action else "")
        )
        if prop:
            text += (
                f"; autopilot ({prop['policy']}, {prop['mode']}): {prop['action']} {prop['params']} [{prop['status']}]"
            )
        snap = snapshot(
            run,
            inc.kind,
            inc.severity,
            inc.start_step,
            title,
            text=text,
            start_step=inc.start_step,
            end_step=inc.end_step,
            peak_step=inc.peak_step,
            peak_value=inc.peak_value,
            metric=inc.metric,
            baseline=inc.baseline,
            classification=inc.classification,
            segment=inc.segment_id,
            rank=rank,
            superseded=inc.superseded,
            suggested_action=inc.suggested_action,
            values={"before": inc.context or {}},
        )
        if prop:
            snap["autopilot"] = {
                k: _json_safe(prop.get(k)) for k in ("id", "policy", "mode", "action", "params", "status")
            }
        out.append(Wanted(key, snap, active=running and not ended))
    return out


def from_segments(run: str, segments: list[dict]) -> list:
    """Crashes (open until a later launch of the run) and restarts (instant), from one dict per segment,
    oldest first: segment_id, parent_id, resume_step, reason, end_reason, end_step, exit_code, error."""
    out = []
    for i, seg in enumerate(segments):
        sid = seg.get("segment_id")
        if i > 0:
            step = seg.get("resume_step")
            reason = seg.get("reason") or "restart"
            title = f"restart: segment {sid} resumed from step {step if step is not None else '?'} ({reason})"
            snap = snapshot(
                run,
                "restart",
                "low",
                step,
                title,
                text=f"{run}: {title}",
                segment=sid,
                parent=seg.get("parent_id"),
                values={"reason": reason},
            )
            out.append(Wanted(alert_key(run, "restart", sid), snap, active=False, instant=True))
        if seg.get("end_reason") == "crashed":
            later = i < len(segments) - 1
            step, code, err = seg.get("end_step"), seg.get("exit_code"), seg.get("error")
            title = f"crash: segment {sid} died at step {step if step is not None else '?'}"
            text = f"{run}: {title}" + (f", exit code {code}" if code is not None else "")
            text += f": {str(err)[:300]}" if err else ""
            snap = snapshot(
                run, "crash", "high", step, title, text=text, segment=sid, values={"exit_code": code, "error": err}
            )
            out.append(Wanted(alert_key(run, "crash", sid), snap, active=not later))
    return out


def from_interventions(run: str, rows: list[dict]) -> list:
    """An intervention applied or rejected (instant): rows with intervention_id, action, params, status,
    applied_step, detail, author, note."""
    out = []
    for r in rows:
        status = r.get("status")
        if status not in ("applied", "rejected"):
            continue
        iid, action = r.get("intervention_id"), r.get("action")
        step = r.get("applied_step")
        title = f"intervention {action} {status}" + (f" at step {step}" if step is not None else "")
        text = f"{run}: {title} (asked by {r.get('author')}: {str(r.get('note') or '')[:300]})"
        if status == "rejected" and r.get("detail"):
            text += f"; reason: {str(r.get('detail'))[:300]}"
        snap = snapshot(
            run,
            f"intervention_{status}",
            "low" if status == "applied" else "medium",
            step,
            title,
            text=text,
            values={"action": action, "params": r.get("params"), "author": r.get("author"), "note": r.get("note")},
        )
        out.append(Wanted(alert_key(run, "intervention", None, None, iid), snap, active=False, instant=True))
    return out


def stall(run: str, recent: list[tuple[int, float]], *, now: float, open_segment, factor: float, min_s: float):
    """A stalled run: no new step for factor x the recent median step time (and at least min_s).

    recent: (step, wall time it was logged) of the newest steps, any order. open_segment: the head segment
    when it has no close record (a finished or crashed run is not stalled), else None. A hung collective
    writes no step, while the telemetry thread may go on writing: only steps count."""
    if open_segment is None or len(recent) < 3:
        return []
    pts = sorted(recent)
    per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(pts, pts[1:]) if s1 > s0 and t1 >= t0]
    if not per_step:
        return []
    per_step.sort()
    median = per_step[len(per_step) // 2]
    window = max(factor * median, min_s)
    last_step, last_t = pts[-1]
    quiet = now - last_t
    if quiet < window:
        return []
    title = f"stalled: no new step after step {last_step} for more than {window:.0f} s"
    snap = snapshot(
        run,
        "stall",
        "high",
        last_step,
        title,
        text=f"{run}: {title} (quiet for {quiet:.0f} s; the recent median step time is {median:.3g} s)",
        segment=open_segment,
        values={"median_step_s": median, "window_s": window, "last_step_wall_time": last_t},
    )
    return [Wanted(alert_key(run, "stall", open_segment, last_step), snap, active=True)]


def budgets(run: str, power: dict | None, *, energy_kwh: float | None, co2_kg: float | None) -> list:
    """An alert, once, when the run's energy or CO2eq passes its budget (`power`: report.summary.energy_summary).

    The figure is whatever the run has, labelled with its basis (metered, estimate, nameplate); a run with
    no energy data has nothing to compare and raises nothing. Energy only grows, so the alert is an instant
    event: it says the budget was crossed, once (its key has no step)."""
    e = (power or {}).get("energy") or {}
    if e.get("energy_j") is None:
        return []
    kwh, kg, basis = e["energy_j"] / 3.6e6, power.get("co2eq_kg"), e.get("basis")
    out = []
    for kind, value, budget, unit in (
        ("energy_budget", kwh, energy_kwh, "kWh"),
        ("co2_budget", kg, co2_kg, "kg CO2eq"),
    ):
        if budget is None or value is None or value <= budget:
            continue
        title = f"{kind.replace('_', ' ')} crossed: {_num(value)} {unit} > {_num(budget)} {unit} ({basis})"
        snap = snapshot(
            run,
            kind,
            "medium",
            None,
            title,
            text=f"{run}: {title}",
            values={"value": value, "budget": budget, "unit": unit, "basis": basis},
        )
        out.append(Wanted(alert_key(run, kind), snap, active=False, instant=True))
    return out


def _num(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f"{v:.4g}"
    return str(v)


_LEVELS = {"INFO": "low", "WARN": "medium", "ERROR": "high"}


def from_user_alerts(run: str, rows: list[dict]) -> list:
    """The training code's own `run.alert(title, text, level)` events (instant): rows with segment_id,
    step, rank and fields (the event's JSON text: title, text, level)."""
    import json

    out = []
    for r in rows:
        try:
            f = json.loads(r.get("fields") or "{}")
        except (TypeError, ValueError):
            f = {}
        f = f if isinstance(f, dict) else {}
        title, text = str(f.get("title") or "alert")[:300], str(f.get("text") or "")[:2000]
        step = r.get("step")
        step = int(step) if isinstance(step, (int, float)) and step == step else None
        sev = _LEVELS.get(str(f.get("level", "INFO")).upper(), "low")
        tag = hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:8]
        key = alert_key(run, "user_alert", r.get("segment_id"), step, f"{r.get('rank')}-{tag}")
        snap = snapshot(
            run, "user_alert", sev, step, title, text=f"{run}: {title}: {text}", values={"level": f.get("level")}
        )
        out.append(Wanted(key, snap, active=False, instant=True))
    return out
