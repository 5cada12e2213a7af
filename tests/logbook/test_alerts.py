"""Alerts end to end with real parts: runs written through midflight.init/log, a real HTTP receiver and a real
SMTP server (aiosmtpd) on 127.0.0.1, a command hook, and the watcher as a real subprocess that is killed
(SIGKILL) at random points and must lose no alert."""

from __future__ import annotations

import email
import email.policy
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import midflight
from midflight.logbook.oncall import alerts, channels
from midflight.logbook.oncall.watch import RunWatch, watch
from midflight.logbook.record import interventions

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ real local receivers
class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body posted to it; can fail its first `fail` requests."""

    def __init__(self, fail: int = 0, delay: float = 0.0):
        self.bodies: list[dict] = []
        self.arrived = threading.Semaphore(0)  # released as each body arrives, before the answer
        self.fail, self.delay = fail, delay
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))  # received: the sender does not know yet
                outer.arrived.release()
                if outer.delay:
                    time.sleep(outer.delay)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                """Quiet: http.server would print every request to stderr."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    class Keep:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append((envelope.rcpt_tos, msg["Subject"] + "\n" + msg.get_content()))
            return "250 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = Keep()
    ctl = Controller(handler, hostname="127.0.0.1", port=port)
    ctl.start()
    yield handler, port
    ctl.stop()


def _log(run, steps, rng, spikes=()):
    for s in steps:
        loss = 3.0 * math.exp(0.01 * rng.standard_normal()) * (4.0 if s in spikes else 1.0)
        run.log({"loss": loss, "grad_norm": 0.5, "lr": 1e-4}, step=s)


def _cfg(**kw) -> channels.Config:
    base = {"base_url": "http://dash.example:8501", "resend_after_s": 0, "stall_min_s": 3600}
    base.update(kw)
    return channels.parse_config(base)


# ------------------------------------------------------------------ the lifecycle, on every channel
def test_a_loss_spike_opens_resolves_and_reaches_every_channel(tmp_path, receiver, smtp):
    handler, port = smtp
    hook_out = tmp_path / "hook.jsonl"
    cfg = _cfg(
        resolve_after_steps=80,
        channel=[
            {"name": "hook", "type": "webhook", "url": receiver.url},
            {
                "name": "mail",
                "type": "email",
                "host": "127.0.0.1",
                "port": port,
                "from": "mf@x.org",
                "to": "oncall@x.org",
            },
            {
                "name": "cmd",
                "type": "command",
                "argv": [
                    sys.executable,
                    "-c",
                    f"import sys; open({str(hook_out)!r}, 'a').write(sys.stdin.read() + '\\n')",
                ],
            },
        ],
    )
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "spiky"
    run = midflight.init(run_dir, segment_id="a", flush_every=60)
    _log(run, range(0, 260), rng, spikes=(200,))
    run.flush()
    watch([run_dir], cfg, once=True)

    opened = [b for b in receiver.bodies if b["event"] == "opened"]
    assert [(b["kind"], b["step"]) for b in opened] == [("loss_spike", 200)]
    p = opened[0]
    assert p["schema"] == "midflight.alert/1" and p["severity"] in alerts.SEVERITIES
    assert p["link"] == "http://dash.example:8501/live?run=spiky&step=200"
    assert p["key"] == "spiky/loss_spike/a/200/-" and p["delivery_id"] == f"{p['alert_id']}.1"
    around = dict((s, v) for s, v in p["values"]["around"])
    assert 200 in around and around[200] > 2 * around[195]  # the spike itself, among its neighbours
    assert "step 200" in p["text"] and p["alert"]["peak_step"] == 200
    ((rcpt, mail),) = handler.messages
    assert rcpt == ["oncall@x.org"] and "loss spike" in mail and "live?run=spiky&step=200" in mail
    hooked = [json.loads(line) for line in hook_out.read_text().splitlines() if line.strip()]
    assert [h["delivery_id"] for h in hooked] == [p["delivery_id"]]

    # a second pass over unchanged data: nothing new is opened or sent (the key is already in the outbox)
    watch([run_dir], cfg, once=True)
    assert len(receiver.bodies) == 1 and len(handler.messages) == 1

    # the run goes on quietly past resolve_after_steps: the alert resolves, on every channel
    _log(run, range(260, 300), rng)
    run.flush()
    watch([run_dir], cfg, once=True)
    assert [b["event"] for b in receiver.bodies] == ["opened", "resolved"]
    assert len(handler.messages) == 2 and "[RESOLVED" in handler.messages[1][1]
    hooked = [json.loads(line) for line in hook_out.read_text().splitlines() if line.strip()]
    assert [h["event"] for h in hooked] == ["opened", "resolved"]
    run.finish()
    rows = alerts.history(run_dir)
    assert [(r["kind"], r["state"]) for r in rows] == [("loss_spike", "resolved")]


def test_slack_and_discord_shapes_carry_the_message_and_link(tmp_path, receiver):
    cfg = _cfg(
        channel=[
            {"name": "s", "type": "webhook", "url": receiver.url, "format": "slack"},
            {"name": "d", "type": "webhook", "url": receiver.url, "format": "discord"},
        ]
    )
    run_dir = tmp_path / "r"
    run = midflight.init(run_dir, segment_id="a", flush_every=60)
    _log(run, range(0, 260), np.random.default_rng(0), spikes=(200,))
    run.finish()
    watch([run_dir], cfg, once=True)
    slack = [b for b in receiver.bodies if "text" in b and "content" not in b]
    discord = [b for b in receiver.bodies if "content" in b]
    assert slack and discord
    assert slack[0]["text"].startswith("[ALERT") and "live?run=r&step=200" in slack[0]["text"]
    assert discord[0]["embeds"][0]["url"] == "http://dash.example:8501/live?run=r&step=200"
    assert len(discord[0]["content"]) <= 2000


def test_a_failing_channel_backs_off_and_never_stops_the_others(tmp_path, receiver):
    flaky = Receiver(fail=2)
    with socket.socket() as s:  # a port nothing listens on: connection refused, every time
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    try:
        cfg = _cfg(
            backoff_s=0.01,
            backoff_max_s=0.05,
            channel=[
                {"name": "dead", "type": "webhook", "url": dead, "timeout_s": 2},
                {"name": "flaky", "type": "webhook", "url": flaky.url},
                {"name": "good", "type": "webhook", "url": receiver.url},
            ],
        )
        run_dir = tmp_path / "r"
        run = midflight.init(run_dir, segment_id="a", flush_every=60)
        _log(run, range(0, 260), np.random.default_rng(0), spikes=(200,))
        run.finish()
        rw = RunWatch(run_dir)
        rw.step(cfg)
        disp = channels.Dispatcher(cfg)
        disp.flush([rw.box], wait=True)
        rw.box.refresh()
        assert len(receiver.bodies) == 2  # opened and resolved (the run finished): the good channel got both
        assert flaky.bodies == [] and disp.failures["flaky"] == 1
        for _ in range(200):  # retried with back-off until the flaky one accepts
            time.sleep(0.02)
            disp.flush([rw.box], wait=True)
            rw.box.refresh()
            if len(flaky.bodies) == 2:
                break
        assert [b["delivery_id"] for b in flaky.bodies] == [b["delivery_id"] for b in receiver.bodies]
        assert disp.failures["dead"] >= 2 and not any(ch == "dead" for _, ch in rw.box.sent)
        disp.close()
        rw.close()
    finally:
        flaky.close()


def test_crash_restart_intervention_and_ack(tmp_path, receiver):
    cfg = _cfg(channel=[{"name": "hook", "type": "webhook", "url": receiver.url}])
    run_dir = tmp_path / "r"
    rng = np.random.default_rng(1)
    a = midflight.init(run_dir, segment_id="a", flush_every=60)
    _log(a, range(0, 50), rng)
    a.finish("crashed", exit_code=137, error="killed by the OOM killer")
    watch([run_dir], cfg, once=True)
    assert [(b["kind"], b["event"], b["step"]) for b in receiver.bodies] == [("crash", "opened", 49)]
    assert "exit code 137" in receiver.bodies[0]["text"]

    # the crash alert stays open: unacknowledged, it is re-sent after resend_after_s
    rw = RunWatch(run_dir)
    cid = receiver.bodies[0]["alert_id"]
    alerts.reconcile(rw.box, "r", rw.wanted(cfg, time.time()), now=time.time() + 7200, resend_after_s=3600)
    assert [n[1] for n in rw.box.alerts[cid].notifications] == ["opened", "resend"]
    alerts.ack(run_dir, cid, author="ana")  # acknowledged: no more re-sends
    rw.box.refresh()
    alerts.reconcile(rw.box, "r", rw.wanted(cfg, time.time()), now=time.time() + 99999, resend_after_s=3600)
    assert [n[1] for n in rw.box.alerts[cid].notifications] == ["opened", "resend"]
    rw.close()
    with pytest.raises(KeyError):
        alerts.ack(run_dir, "nope", author="ana")

    b = midflight.init(run_dir, segment_id="b", resume_step=40, reason="restart after crash", flush_every=60)
    _log(b, range(41, 60), rng)
    b.alert("data loader slow", "shard 7 took 30 s", "WARN")  # the training code's own alert
    req = interventions.request(run_dir, "lr_multiplier", {"factor": 0.5}, note="calm down", author="ana")
    interventions.resolve(run_dir, req, applied=True, step=55)
    bad = interventions.request(run_dir, "clip", {"max_norm": 0.3}, note="tighter", author="bo")
    interventions.resolve(run_dir, bad, applied=False, detail="clip is locked")
    b.flush()
    watch([run_dir], cfg, once=True)
    got = [(x["kind"], x["event"]) for x in receiver.bodies[1:]]
    assert ("restart", "opened") in got and ("crash", "resolved") in got
    assert ("intervention_applied", "opened") in got and ("intervention_rejected", "opened") in got
    rej = next(x for x in receiver.bodies if x["kind"] == "intervention_rejected")
    assert "clip is locked" in rej["text"] and rej["severity"] == "medium"
    (user,) = [x for x in receiver.bodies if x["kind"] == "user_alert"]
    assert user["severity"] == "medium" and user["step"] == 59 and "shard 7 took 30 s" in user["text"]
    b.finish()

    out = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "alerts", "list", str(run_dir)], capture_output=True, text=True
    )
    assert out.returncode == 0 and cid in out.stdout and "acked by ana" in out.stdout


def test_a_stalled_run_alerts_and_resolves_when_steps_come_back(tmp_path, receiver):
    cfg = _cfg(stall_factor=10, stall_min_s=0.0, channel=[{"name": "hook", "type": "webhook", "url": receiver.url}])
    run_dir = tmp_path / "hung"
    run = midflight.init(run_dir, segment_id="a", flush_every=60)
    for s in range(40):  # ~20 ms a step, then nothing: a hung collective
        run.log({"loss": 3.0}, step=s)
        last = time.time()
        time.sleep(0.02)
    run.flush()
    rw = RunWatch(run_dir)
    rw.step(cfg, now=last + 0.05)  # not stalled yet: within 10 x the median step
    assert not [a for a in rw.box.alerts.values() if a.snapshot["kind"] == "stall"]
    rw.step(cfg, now=last + 5.0)  # 5 s without a step, at ~20 ms a step
    (stalled,) = [a for a in rw.box.alerts.values() if a.snapshot["kind"] == "stall"]
    assert stalled.snapshot["step"] == 39 and stalled.state == "open"
    assert 0.1 <= stalled.snapshot["values"]["window_s"] <= 1.0
    rw.step(cfg, now=last + 6.0)  # still stalled: the same alert, not a new one
    assert len([a for a in rw.box.alerts.values() if a.snapshot["kind"] == "stall"]) == 1
    run.log({"loss": 3.0}, step=40)
    run.log({"loss": 3.0}, step=41)
    run.flush()
    rw.step(cfg, now=time.time())
    rw.box.refresh()
    assert rw.box.alerts[stalled.id].state == "resolved"
    run.finish()
    rw.step(cfg, now=time.time() + 3600)  # a finished run is never stalled
    assert len([a for a in rw.box.alerts.values() if a.snapshot["kind"] == "stall"]) == 1
    rw.close()


def test_bad_config_and_bad_outbox_lines_are_one_line_errors_or_counted(tmp_path):
    for bad, words in (
        ({"channel": [{"type": "pager"}]}, "type must be one of"),
        ({"channel": [{"type": "webhook", "url": "file:///etc/passwd"}]}, "http://"),
        ({"stall_factor": -1}, "stall_factor"),
        ({"colour": "red"}, "unknown key"),
        ({"channel": [{"type": "email", "host": "h", "from": "a@b", "to": "nobody"}]}, "to must be"),
    ):
        with pytest.raises(ValueError, match=words):
            channels.parse_config(bad)
    run_dir = tmp_path / "r"
    midflight.init(run_dir, segment_id="a").finish()
    (run_dir / alerts.OUTBOX).write_text(
        '{"k":"alert","op":"opened","id":"x","key":"k","alert":{}}\n'  # id is not the key's
        '{"k":"alert","op":"acked","id":"nobody"}\nnot json\n[1,2]\n'
    )
    box = alerts.Outbox(run_dir)
    assert box.alerts == {} and box.rejected == 4


# ------------------------------------------------------------------ killed at random points, loses nothing
@pytest.mark.slow
def test_a_watcher_killed_at_random_points_loses_no_alert(tmp_path):
    """SIGKILL mid-send: the receiver holds each request before answering, and the watcher is killed
    after a random number of arrivals, while the last one waits for its answer (so the watcher never
    learns it was delivered), or at a random moment. A restart must deliver everything still owed."""
    slow = Receiver(delay=0.4)
    try:
        cfg_path = tmp_path / "alerts.toml"
        cfg_path.write_text(
            "poll_s = 0.2\nresend_after_s = 0\nstall_min_s = 3600\n"
            f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{slow.url}"\n'
        )
        run_dir = tmp_path / "r"
        run = midflight.init(run_dir, segment_id="a", flush_every=60)
        _log(run, range(0, 700), np.random.default_rng(3), spikes=(200, 300, 400, 500, 600))
        run.finish()
        for i in range(4):
            req = interventions.request(run_dir, "lr_multiplier", {"factor": 0.9}, note=f"n{i}", author="t")
            interventions.resolve(run_dir, req, applied=True, step=650 + i)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "midflight.logbook", "watch", str(run_dir), "--alerts", str(cfg_path)]
        rng = random.Random(7)
        kills_in_flight = 0
        for _ in range(4):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wanted = rng.randint(1, 3)
            got_all = all(slow.arrived.acquire(timeout=30) for _ in range(wanted))
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the held request
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills_in_flight += got_all
        assert kills_in_flight == 4
        slow.delay = 0.0
        done = subprocess.run([*cmd, "--once"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

        box = alerts.Outbox(run_dir)
        owed = {n[0] for a in box.alerts.values() for n in a.notifications}
        got = [b["delivery_id"] for b in slow.bodies]
        assert len(got) > len(set(got))  # some were received twice: killed before it heard the answer
        assert owed and owed <= set(got)  # every notification delivered at least once
        assert set(got) == owed  # and nothing the outbox does not hold (no second alert for a key)
        opened = [b["key"] for b in {b["delivery_id"]: b for b in slow.bodies}.values() if b["event"] == "opened"]
        assert len(opened) == len(set(opened)) == len(box.alerts) == 5 + 4  # five spikes, four interventions
        assert box.undelivered("hook") == []
    finally:
        slow.close()


def test_updates_notify_on_escalation_only_and_a_vanished_alert_resolves(tmp_path):
    box = alerts.Outbox(tmp_path)
    t0 = time.time()  # the outbox stamps its records with the clock

    def want(sev, end, cls="transient"):
        snap = alerts.snapshot("r", "loss_spike", sev, 10, "t", end_step=end, classification=cls)
        return alerts.Wanted(alerts.alert_key("r", "loss_spike", "a", 10), snap, active=True)

    alerts.reconcile(box, "r", [want("low", 10)], now=t0, resend_after_s=None)
    (a,) = box.alerts.values()
    alerts.reconcile(box, "r", [want("low", 11)], now=t0 + 1, resend_after_s=None)  # grows: within 30 s, not kept
    assert len(a.notifications) == 1 and a.snapshot["end_step"] == 10
    alerts.reconcile(box, "r", [want("low", 12)], now=t0 + 100, resend_after_s=None)  # grows: kept, silently
    assert len(a.notifications) == 1 and a.snapshot["end_step"] == 12
    alerts.reconcile(box, "r", [want("high", 13)], now=t0 + 101, resend_after_s=None)  # escalates: a message
    assert [n[1] for n in a.notifications] == ["opened", "updated"] and a.notifications[1][3]["severity"] == "high"
    alerts.reconcile(box, "r", [want("high", 14, "divergent")], now=t0 + 102, resend_after_s=None)  # reclassified
    assert len(a.notifications) == 3
    assert [note[0] for _, note in box.undelivered("pager", "high")] == [
        n[0] for n in a.notifications[1:]
    ]  # severity floor
    alerts.reconcile(box, "r", [], now=t0 + 103, resend_after_s=None)  # detection no longer finds it
    assert a.state == "resolved" and [n[1] for n in a.notifications][-1] == "resolved"
    alerts.reconcile(box, "r", [want("high", 14)], now=t0 + 104, resend_after_s=None)  # the same key: no reopening
    assert len(box.alerts) == 1 and len(a.notifications) == 4


def test_cli_mistakes_are_one_line_errors(tmp_path, capsys):
    from midflight.logbook import cli

    run_dir = tmp_path / "r"
    midflight.init(run_dir, segment_id="a").finish()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[channel]]\ntype = "webhook"\nurl = "ftp://x"\n')
    assert cli.main(["watch", str(tmp_path / "missing")]) == 2
    assert cli.main(["watch", str(run_dir), "--alerts", str(bad)]) == 2
    assert cli.main(["alerts", "ack", str(run_dir), "nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "does not exist" in err[0] and "http://" in err[1] and "no alert 'nope'" in err[2]
    assert cli.main(["watch", str(run_dir), "--once"]) == 0  # no channels: the outbox only


def test_an_energy_or_co2_budget_crossed_alerts_once_with_its_basis(tmp_path, receiver):
    """A metered run (an energy counter rising 1 kJ a step) passes a 0.01 kWh budget at step 36: one alert,
    saying the figure is metered; a run with no energy data never alerts, whatever its budget."""
    run_dir = tmp_path / "metered"
    with midflight.init(run_dir, segment_id="a", flush_every=60) as run:
        for s in range(1, 51):
            run.log({"loss": 3.0}, step=s)
            run.telemetry({"energy_j": 1000.0 * s}, device="gpu0", step=s)
    chan = [{"name": "hook", "type": "webhook", "url": receiver.url}]
    cfg = _cfg(energy_budget_kwh=0.01, co2_budget_kg=1e6, budget_every_s=0, channel=chan)
    watch([run_dir], cfg, once=True, log=lambda m: None)
    watch([run_dir], cfg, once=True, log=lambda m: None)  # a second pass: the same crossing is not sent again
    sent = [b for b in receiver.bodies if b["alert"]["kind"].endswith("_budget")]
    assert len(sent) == 1, sent
    got = sent[0]["alert"]
    assert got["kind"] == "energy_budget" and got["values"]["basis"] == "metered"
    assert got["values"]["value"] == pytest.approx(50_000 / 3.6e6)  # the counter counts from 0 at its start
    bare = tmp_path / "bare"
    with midflight.init(bare, segment_id="a", flush_every=60) as run:
        for s in range(1, 51):
            run.log({"loss": 3.0}, step=s)
    watch([bare], _cfg(energy_budget_kwh=1e-9, budget_every_s=0, channel=chan), once=True, log=lambda m: None)
    assert not [b for b in receiver.bodies if b["alert"]["run"] == "bare" and b["alert"]["kind"].endswith("_budget")]
    with pytest.raises(ValueError, match="energy_budget_kwh must be a number"):
        _cfg(energy_budget_kwh=-1)


def test_a_run_started_after_the_watcher_in_a_watched_folder_is_watched(tmp_path, receiver):
    """`midflight watch runs/` keeps looking: a run that appears in the folder later gets its alerts too."""
    import threading as _threading

    root = tmp_path / "runs"
    rng = np.random.default_rng(3)
    with midflight.init(root / "first", segment_id="a", flush_every=60) as run:
        _log(run, range(1, 60), rng)
    cfg = _cfg(poll_s=0.1, channel=[{"name": "hook", "type": "webhook", "url": receiver.url}])
    stop, logged = _threading.Event(), []
    t = _threading.Thread(target=watch, args=([root], cfg), kwargs={"stop": stop, "log": logged.append})
    t.start()
    try:
        with midflight.init(root / "later", segment_id="a", flush_every=60) as run:  # after the watcher started
            _log(run, range(1, 400), rng, spikes={300})
        deadline = time.time() + 30
        while time.time() < deadline and not [b for b in receiver.bodies if b["alert"]["run"] == "later"]:
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(30)
    assert any("a new run" in m and "later" in m for m in logged), logged
    assert [b["alert"]["kind"] for b in receiver.bodies if b["alert"]["run"] == "later"][0] == "loss_spike"


def test_an_alert_carries_what_the_autopilot_proposed_for_its_incident(tmp_path, receiver):
    """A `suggest` policy proposes; the people on call learn it from the alert: the incident's alert is
    notified again with the proposal (its policy, mode, action and status) in the payload and the text."""
    from midflight.logbook.oncall import autopilot

    run_dir = tmp_path / "spiky"
    rng = np.random.default_rng(5)
    run = midflight.init(run_dir, segment_id="a", flush_every=60)  # still running: its alert stays open
    _log(run, range(1, 330), rng, spikes={300})
    run.flush()
    cfg = _cfg(channel=[{"name": "hook", "type": "webhook", "url": receiver.url}])
    rw = RunWatch(run_dir)
    rw.step(cfg)
    (spike,) = [a for a in rw.box.alerts.values() if a.snapshot["kind"] == "loss_spike"]
    inc = next(i for i in rw.live.incidents(rw.store, "spiky") if i.kind == "loss_spike")
    decision = autopilot.Decision("halve-lr", "suggest", autopilot.incident_key(inc), 329, "lr_multiplier",
                                  {"factor": 0.5}, "loss spike")  # fmt: skip
    autopilot.act(run_dir, decision)
    rw.step(cfg)
    rw.box.refresh()
    carried = rw.box.alerts[spike.id].snapshot["autopilot"]
    assert (carried["policy"], carried["mode"], carried["action"], carried["status"]) == (
        "halve-lr",
        "suggest",
        "lr_multiplier",
        "suggested",
    )
    assert "autopilot (halve-lr, suggest): lr_multiplier" in rw.box.alerts[spike.id].snapshot["text"]
    assert [n[1] for n in rw.box.alerts[spike.id].notifications] == ["opened", "updated"]  # a message, not a note
    rw.close()
    run.finish()
