"""Where alerts go: a JSON webhook (midflight's own payload, or Slack- or Discord-shaped), email over SMTP,
and a command hook (the payload as JSON on stdin, for PagerDuty's CLI and the like).

Why the standard library only (urllib, smtplib, subprocess): the watcher must run on a login node or in a
side container with nothing but midflight installed. Each channel delivers on its own thread with its own
timeout and exponential back-off, so a channel that is down (or hangs) never holds up the others; the
outbox (logbook.oncall.alerts) remembers what each channel still owes. The config (`alerts.toml`) and the
payload are stable interfaces, documented in docs/architecture.md ("Alerts").
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage

from midflight.logbook.oncall import alerts as alerts_mod

TYPES = ("webhook", "email", "command")
FORMATS = ("json", "slack", "discord")
_COLOR = {"low": 0x4C78A8, "medium": 0xF2A93B, "high": 0xD62728}


@dataclass
class ChannelConfig:
    name: str
    type: str
    min_severity: str = "low"
    timeout_s: float = 10.0
    # webhook
    url: str | None = None
    format: str = "json"
    headers: dict = field(default_factory=dict)
    # email
    host: str | None = None
    port: int = 25
    starttls: bool = False
    sender: str | None = None
    to: list = field(default_factory=list)
    username: str | None = None
    password_env: str | None = None
    # command
    argv: list = field(default_factory=list)


@dataclass
class Config:
    channels: list
    base_url: str | None = None
    stall_factor: float = 10.0
    stall_min_s: float = 60.0
    resend_after_s: float | None = 3600.0
    resolve_after_steps: int = 50
    poll_s: float = 1.0
    backoff_s: float = 1.0
    backoff_max_s: float = 300.0
    energy_budget_kwh: float | None = None  # alert once when the run's energy passes it (any basis but none)
    co2_budget_kg: float | None = None  # ... or its CO2eq, at `region`'s grid x `pue`
    region: str | None = None  # the grid for CO2eq (as `summary --region`); None: the world average
    pue: float | None = None
    budget_every_s: float = 60.0  # how often the energy total is added up again (incremental, but not free)


def _number(table: dict, key: str, default, lo: float, hi: float, where: str, *, whole: bool = False):
    v = table.get(key, default)
    if v is None:
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi and (not whole or v == int(v))
    if not ok:
        raise ValueError(
            f"{where}: {key} must be a {'whole ' if whole else ''}number in [{lo:g}, {hi:g}], not {v!r:.60}"
        )
    return int(v) if whole else float(v)


def _text(table: dict, key: str, where: str, *, required: bool = False, default=None):
    v = table.get(key, default)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > 2000:
        raise ValueError(f"{where}: {key} must be non-empty text")
    return v


def parse_config(data: dict) -> Config:
    """A Config from parsed TOML; ValueError (one line, naming the key) for anything wrong."""
    known = {
        "base_url",
        "stall_factor",
        "stall_min_s",
        "resend_after_s",
        "resolve_after_steps",
        "poll_s",
        "backoff_s",
        "backoff_max_s",
        "energy_budget_kwh",
        "co2_budget_kg",
        "region",
        "pue",
        "budget_every_s",
        "channel",
    }
    extra = set(data) - known
    if extra:
        raise ValueError(f"alerts config: unknown key(s) {', '.join(sorted(extra))}; known: {', '.join(sorted(known))}")
    cfg = Config(
        channels=[],
        base_url=_text(data, "base_url", "alerts config"),
        stall_factor=_number(data, "stall_factor", 10.0, 1.0, 1e6, "alerts config"),
        stall_min_s=_number(data, "stall_min_s", 60.0, 0.0, 1e7, "alerts config"),
        resend_after_s=_number(data, "resend_after_s", 3600.0, 0.0, 1e8, "alerts config"),
        resolve_after_steps=_number(data, "resolve_after_steps", 50, 1, 1e9, "alerts config", whole=True),
        poll_s=_number(data, "poll_s", 1.0, 0.05, 3600, "alerts config"),
        backoff_s=_number(data, "backoff_s", 1.0, 0.01, 3600, "alerts config"),
        backoff_max_s=_number(data, "backoff_max_s", 300.0, 0.01, 86400, "alerts config"),
        energy_budget_kwh=_number(data, "energy_budget_kwh", None, 1e-9, 1e12, "alerts config"),
        co2_budget_kg=_number(data, "co2_budget_kg", None, 1e-9, 1e12, "alerts config"),
        region=_text(data, "region", "alerts config"),
        pue=_number(data, "pue", None, 1.0, 10.0, "alerts config"),
        budget_every_s=_number(data, "budget_every_s", 60.0, 0.0, 86400, "alerts config"),
    )
    if cfg.resend_after_s == 0:
        cfg.resend_after_s = None  # 0: never re-send
    chans = data.get("channel", [])
    if not isinstance(chans, list):
        raise ValueError("alerts config: channels are [[channel]] tables")
    names = set()
    for i, t in enumerate(chans):
        if not isinstance(t, dict):
            raise ValueError(f"alerts config: channel {i + 1} is not a table")
        kind = t.get("type")
        where = f"alerts config: channel {t.get('name', i + 1)!s:.60}"
        if kind not in TYPES:
            raise ValueError(f"{where}: type must be one of {', '.join(TYPES)}, not {kind!r:.60}")
        name = _text(t, "name", where, default=f"{kind}-{i + 1}")
        if name in names:
            raise ValueError(f"{where}: two channels named {name!r}")
        names.add(name)
        sev = t.get("min_severity", "low")
        if sev not in alerts_mod.SEVERITIES:
            raise ValueError(f"{where}: min_severity must be one of {', '.join(alerts_mod.SEVERITIES)}")
        ch = ChannelConfig(
            name=name, type=kind, min_severity=sev, timeout_s=_number(t, "timeout_s", 10.0, 0.1, 600, where)
        )
        if kind == "webhook":
            ch.url = _text(t, "url", where, required=True)
            if not ch.url.startswith(("http://", "https://")):
                raise ValueError(f"{where}: url must start with http:// or https://")
            ch.format = t.get("format", "json")
            if ch.format not in FORMATS:
                raise ValueError(f"{where}: format must be one of {', '.join(FORMATS)}")
            headers = t.get("headers", {})
            if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
                raise ValueError(f"{where}: headers must be a table of text values")
            ch.headers = headers
        elif kind == "email":
            ch.host = _text(t, "host", where, required=True)
            ch.port = _number(t, "port", 25, 1, 65535, where, whole=True)
            ch.starttls = bool(t.get("starttls", False))
            ch.sender = _text(t, "from", where, required=True)
            to = t.get("to")
            to = [to] if isinstance(to, str) else to
            if not isinstance(to, list) or not to or not all(isinstance(x, str) and "@" in x for x in to):
                raise ValueError(f"{where}: to must be an address or a list of addresses")
            ch.to = to
            ch.username = _text(t, "username", where)
            ch.password_env = _text(t, "password_env", where)  # the password itself never sits in the file
        else:
            argv = t.get("argv")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError(f"{where}: argv must be a non-empty list of text (the command and its arguments)")
            ch.argv = argv
        cfg.channels.append(ch)
    return cfg


def load_config(path) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data)


# ------------------------------------------------------------------ the payload (stable: midflight.alert/1)
def payload(alert: alerts_mod.Alert, note: tuple, base_url: str | None) -> dict:
    """midflight's JSON payload for one notification (`note` is one of alert.notifications)."""
    delivery, op, t, snap = note
    step = snap.get("step")
    return {
        "schema": alerts_mod.SCHEMA,
        "delivery_id": delivery,
        "alert_id": alert.id,
        "key": alert.key,
        "event": op,
        "time": t,
        "run": snap.get("run"),
        "kind": snap.get("kind"),
        "severity": snap.get("severity"),
        "step": step,
        "title": snap.get("title"),
        "text": snap.get("text"),
        "values": snap.get("values", {}),
        "alert": snap,
        "acked": alert.acked,
        "link": alerts_mod.link(base_url, str(snap.get("run")), step),
    }


_HEAD = {"opened": "ALERT", "updated": "UPDATE", "resolved": "RESOLVED", "resend": "REMINDER"}


def _line(p: dict) -> str:
    out = f"[{_HEAD.get(p['event'], '')} {str(p['severity']).upper()}] {p['text'] or p['title']}"
    return out + (f"\n{p['link']}" if p["link"] else "")


def shaped(p: dict, fmt: str) -> dict:
    """The body a webhook of this format posts: midflight's payload, or Slack's / Discord's message shape
    (both also carry midflight's payload under `midflight`, so a relay can read the fields)."""
    if fmt == "slack":
        return {"text": _line(p)[:3000], "midflight": p}
    if fmt == "discord":
        embed = {
            "title": str(p["title"])[:256],
            "description": str(p["text"])[:4000],
            "color": _COLOR.get(p["severity"]),
        }
        if p["link"]:
            embed["url"] = p["link"]
        return {"content": _line(p)[:2000], "embeds": [embed], "midflight": p}
    return p


# ------------------------------------------------------------------ senders
def send(ch: ChannelConfig, p: dict) -> None:
    """Deliver one payload on one channel; raises on any failure (the dispatcher retries)."""
    if ch.type == "webhook":
        body = json.dumps(shaped(p, ch.format), allow_nan=False, default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": p["delivery_id"], **ch.headers}
        req = urllib.request.Request(ch.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=ch.timeout_s) as resp:
            if not 200 <= resp.status < 300:
                raise OSError(f"HTTP {resp.status}")
    elif ch.type == "email":
        msg = EmailMessage()
        msg["Subject"] = f"[{_HEAD.get(p['event'], '')} {str(p['severity']).upper()}] {p['title']}"[:200]
        msg["From"], msg["To"] = ch.sender, ", ".join(ch.to)
        msg["Message-ID"] = f"<{p['delivery_id']}@midflight>"  # the idempotency key, for a mail filter
        msg["X-Midflight-Delivery"] = p["delivery_id"]
        msg.set_content(_line(p) + "\n\n" + json.dumps(p, indent=1, default=str))
        with smtplib.SMTP(ch.host, ch.port, timeout=ch.timeout_s) as smtp:
            if ch.starttls:
                smtp.starttls()
            if ch.username:
                smtp.login(ch.username, os.environ.get(ch.password_env or "", ""))
            smtp.send_message(msg)
    else:
        body = json.dumps(p, allow_nan=False, default=str)
        done = subprocess.run(ch.argv, input=body, text=True, capture_output=True, timeout=ch.timeout_s)
        if done.returncode != 0:
            raise OSError(f"exit code {done.returncode}: {done.stderr.strip()[:200]}")


class Dispatcher:
    """Sends what the outbox owes, every channel on its own thread; back-off per channel on failure."""

    def __init__(self, cfg: Config, *, log=None):
        self.cfg = cfg
        self.log = log or (lambda msg: None)
        self._next_try: dict[str, float] = {}
        self._delay: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(cfg.channels)), thread_name_prefix="midflight-alert")
        self._busy: dict[str, object] = {}
        self._lock = threading.Lock()
        self.failures: dict[str, int] = {}

    def flush(self, boxes: list, *, wait: bool = False) -> None:
        """Start a delivery round on every channel that is idle and not backing off; wait=True waits for it."""
        for box in boxes:
            box.refresh()  # the `sent` records of the last round
        now = time.monotonic()
        started = []
        for ch in self.cfg.channels:
            fut = self._busy.get(ch.name)
            if fut is not None and not fut.done():
                continue
            if now < self._next_try.get(ch.name, 0.0):
                continue
            owed = [(box, a, n) for box in boxes for a, n in box.undelivered(ch.name, ch.min_severity)]
            if not owed:
                continue
            owed.sort(key=lambda x: x[2][2])
            fut = self._pool.submit(self._round, ch, owed)
            self._busy[ch.name] = fut
            started.append(fut)
        if wait:
            for f in started:
                f.result()

    def _round(self, ch: ChannelConfig, owed: list) -> None:
        for box, alert, note in owed:
            try:
                send(ch, payload(alert, note, self.cfg.base_url))
            except Exception as exc:  # a channel's failure is that channel's: back off, keep the others going
                with self._lock:
                    delay = min(self._delay.get(ch.name, self.cfg.backoff_s / 2) * 2, self.cfg.backoff_max_s)
                    self._delay[ch.name] = delay
                    self._next_try[ch.name] = time.monotonic() + delay
                    self.failures[ch.name] = self.failures.get(ch.name, 0) + 1
                self.log(f"channel {ch.name}: {note[0]} not delivered ({exc!r:.200}); retry in {delay:.1f} s")
                return
            box.mark_sent(note[0], ch.name)
            with self._lock:
                self._delay.pop(ch.name, None)

    def idle(self) -> bool:
        return all(f.done() for f in self._busy.values())

    def close(self) -> None:
        self._pool.shutdown(wait=True)
