"""The headless watcher: `midflight watch RUN_DIR... --alerts alerts.toml`.

Why a loop of its own: nobody keeps a browser open for 33 days. Each pass, for every run directory, it
ingests what the run wrote since the last pass (incremental and exactly-once, as the dashboard's Source
does), asks a kept LiveIncidents for the incidents (only the new steps are fed), reads crashes,
restarts, interventions and the newest steps' wall times, brings the outbox in line
(alerts.reconcile) and starts a delivery round (channels.Dispatcher). Everything it knows survives in
files: killed at any point and started again, it rebuilds its state from the store and the outbox, and
delivers what is owed.
"""

from __future__ import annotations

import fcntl
import math
import os
import sys
import time
from pathlib import Path

from midflight.logbook.analysis.energy import DEFAULT_REGION
from midflight.logbook.oncall import alerts as alerts_mod
from midflight.logbook.oncall import autopilot
from midflight.logbook.oncall import channels as channels_mod
from midflight.logbook.record import layout
from midflight.logbook.report.incidents import LiveIncidents
from midflight.logbook.report.summary import energy_summary
from midflight.logbook.store import open_store, queries
from midflight.logbook.store.ingest import ingest

AROUND = 5  # steps either side of an incident whose values a message carries
LOCK = "watch.lock"


class RunWatch:
    """One run directory: its store, its kept detector, its outbox."""

    def __init__(self, run_dir: Path, store_path=None):
        if not layout.is_run_dir(run_dir):
            raise ValueError(f"{str(run_dir)!r} is not a midflight run directory (no '{layout.SEGMENTS}/' folder)")
        self.run_dir = Path(run_dir)
        self.run = self.run_dir.name
        lock_path = self.run_dir / ".midflight" / LOCK
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:  # one watcher per run: two would each send everything (the kernel drops the lock if we die)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ValueError(f"another watcher is already watching {self.run_dir}") from None
        self.store = open_store(store_path or layout.default_store_path(self.run_dir))
        self.live = LiveIncidents()
        self.box = alerts_mod.Outbox(self.run_dir)
        self._power: tuple[float, list] = (-math.inf, [])  # when the energy was last added up, its alerts

    def wanted(self, cfg: channels_mod.Config, now: float) -> list:
        store, run = self.store, self.run
        if run not in queries.run_ids(store):
            return []
        status = queries.run_status(store, run)
        segs = queries.segments(store, run)
        rows = segs.to_dict("records")
        rows = [{k: (None if _missing(v) else v) for k, v in r.items()} for r in rows]
        recent = queries.recent_steps(store, run)
        last_step = recent[0][0] if recent else None
        incs = self.live.incidents(store, run)
        proposed = self._proposals()
        out = alerts_mod.from_incidents(
            run,
            incs,
            last_step=last_step,
            running=status in ("running", "unknown"),
            resolve_after_steps=cfg.resolve_after_steps,
            proposal=lambda inc: proposed.get(autopilot.incident_key(inc)),
        )
        out += alerts_mod.from_segments(run, rows)
        ivs = queries.interventions(store, run)
        out += alerts_mod.from_interventions(
            run, [{k: (None if _missing(v) else v) for k, v in r.items()} for r in ivs.to_dict("records")]
        )
        ev = queries.events(store, run, kinds=["alert"])
        out += alerts_mod.from_user_alerts(
            run, [{k: (None if _missing(v) else v) for k, v in r.items()} for r in ev.to_dict("records")]
        )
        head = rows[-1] if rows else None
        open_seg = head["segment_id"] if head and head.get("end_reason") in ("running", "unknown") else None
        out += alerts_mod.stall(
            run, recent, now=now, open_segment=open_seg, factor=cfg.stall_factor, min_s=cfg.stall_min_s
        )
        out += self._budgets(cfg, now)
        for w in out:  # the values around an incident, read only for an alert that is new or changed
            aid = self.box.by_key.get(w.key)
            old = self.box.alerts[aid].snapshot if aid else None
            if w.snapshot.get("metric") and (old is None or alerts_mod._changed(old, w.snapshot)):
                w.snapshot["values"]["around"] = self._around(w.snapshot)
            elif old is not None and "around" in old.get("values", {}):
                w.snapshot["values"]["around"] = old["values"]["around"]
        return out

    def _proposals(self) -> dict:
        """incident key -> the autopilot's newest proposal for it (its ledger, RUN_DIR/autopilot.jsonl), so that
        an alert carries what a `suggest` (or `ask`, or `auto`) policy proposed. Empty without an autopilot."""
        try:
            entries = autopilot.Ledger(self.run_dir).entries()
        except (FileNotFoundError, OSError):
            return {}
        return {e["incident"]: e for e in entries}  # the newest last: it wins

    def _budgets(self, cfg: channels_mod.Config, now: float) -> list:
        """Energy and CO2 budget alerts, the total added up at most every cfg.budget_every_s."""
        if cfg.energy_budget_kwh is None and cfg.co2_budget_kg is None:
            return []
        if now - self._power[0] >= cfg.budget_every_s:
            power = energy_summary(self.store, self.run, region=cfg.region or DEFAULT_REGION, pue=cfg.pue)
            found = alerts_mod.budgets(self.run, power, energy_kwh=cfg.energy_budget_kwh, co2_kg=cfg.co2_budget_kg)
            self._power = (now, found)
        return self._power[1]

    def _around(self, snap: dict) -> list:
        lo = max(0, int(snap["start_step"]) - AROUND)
        hi = int(snap["end_step"]) + AROUND
        try:
            s = queries.series(self.store, self.run, snap["metric"], x_range=(lo, hi))
        except Exception:  # a metric renamed or gone: the message goes without it
            return []
        s = s.tail(4 * AROUND + 10)
        return [[int(st), alerts_mod._json_safe(float(v))] for st, v in zip(s["step"], s["value"])]

    def step(self, cfg: channels_mod.Config, now: float | None = None) -> int:
        ingest(self.store, [self.run_dir], seal=True)
        self.box.refresh()
        now = time.time() if now is None else now
        return alerts_mod.reconcile(
            self.box, self.run, self.wanted(cfg, now), now=now, resend_after_s=cfg.resend_after_s
        )

    def close(self) -> None:
        self.store.close() if hasattr(self.store, "close") else None
        os.close(self._lock_fd)


def _missing(v) -> bool:
    try:
        return v is None or v != v  # NaN / NaT / NA
    except (TypeError, ValueError):
        return False


def watch(run_dirs, cfg: channels_mod.Config, *, once: bool = False, stop=None, log=None) -> int:
    """Watch until `stop` (a threading.Event) is set; once=True: one pass, then wait for its deliveries
    (returns 1 if some are still owed, for cron). A path may be a run or a folder of runs."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    runs: list[RunWatch] = []

    def discover(later: bool) -> None:  # a folder of runs: each run in it, those started after the watcher too
        known = {rw.run_dir for rw in runs}
        for d in run_dirs:
            for p in layout.discover_runs(Path(d)):
                if p not in known:
                    runs.append(RunWatch(p))
                    known.add(p)
                    if later:
                        log(f"watch: a new run, {p}")

    discover(later=False)
    disp = channels_mod.Dispatcher(cfg, log=log)
    try:
        while True:
            try:
                discover(later=True)
            except (OSError, ValueError) as exc:  # a folder gone or unreadable for a moment: the others go on
                log(f"watch: could not look for new runs: {exc!r:.300}")
            for rw in runs:
                try:
                    n = rw.step(cfg)
                except Exception as exc:  # one run's bad moment is not every run's
                    log(f"watch {rw.run}: pass failed, will retry: {exc!r:.300}")
                    continue
                if n:
                    log(f"{time.strftime('%H:%M:%S')} {rw.run}: {n} alert record(s)")
            for rw in runs:
                rw.box.refresh()
            disp.flush([rw.box for rw in runs], wait=once)
            if once:
                owed = 0
                for rw in runs:
                    rw.box.refresh()
                    owed += sum(len(rw.box.undelivered(ch.name, ch.min_severity)) for ch in cfg.channels)
                if owed:
                    log(f"{owed} notification(s) not delivered yet: the next run of the watcher retries them")
                return 1 if owed else 0
            if stop is not None and stop.wait(cfg.poll_s):
                return 0
            if stop is None:
                time.sleep(cfg.poll_s)
    finally:
        disp.close()
        for rw in runs:
            rw.close()
