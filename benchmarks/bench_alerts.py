"""How soon does a person hear about it? Alert latency (goal: p95 <= 5 s) and a stalled run's alert.

End to end with real parts: a run written through `midflight.init`/`log` on a thread (a step every
STEP_S seconds, the Recorder's default flush every 0.5 s), loss spikes (x4) planted every SPACING steps,
the watcher as a real subprocess (`python -m midflight.logbook watch RUN --alerts alerts.toml`, its
default `poll_s = 1`), and an HTTP receiver on 127.0.0.1 that notes when each body arrives.

1. Latency of a spike: from the moment `run.flush()` returned after logging the spike's step (the step is
   on disk) to the moment the webhook carrying the `opened` loss_spike alert for that step arrived. It
   includes everything the watcher adds: waiting for its next pass, ingest, the kept detector (which holds
   the newest step back until a later step is on disk: the next flush), the outbox's fsynced append, and
   the POST.
2. A stalled run: after the last spike the writer stops logging without finishing (a hung collective).
   With `stall_factor = 10` and `stall_min_s = 3` (the window must exceed the Recorder's flush interval,
   or a quiet moment between flushes looks like a stall), the stall alert must arrive within the window
   plus one pass: reported as the time from the last step's flush to the alert.

Usage: python -m benchmarks.bench_alerts [--spikes 12] [--step-s 0.02]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import midflight

ROOT = Path(__file__).resolve().parents[1]


def receiver():
    got: list[tuple[float, dict]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((time.time(), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            """Quiet: http.server would print every request to stderr."""

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/", got


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spikes", type=int, default=12)
    ap.add_argument("--spacing", type=int, default=150)
    ap.add_argument("--step-s", type=float, default=0.02)
    ap.add_argument("--stall-min-s", type=float, default=3.0)
    args = ap.parse_args(argv)

    srv, url, got = receiver()
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    run_dir = tmp / "live"
    cfg = tmp / "alerts.toml"
    cfg.write_text(
        f"stall_factor = 10\nstall_min_s = {args.stall_min_s}\nresend_after_s = 0\n"
        f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{url}"\n'
    )
    run = midflight.init(run_dir, segment_id="a")  # the Recorder's defaults: flush every 0.5 s
    rng = random.Random(0)
    first = 300
    spike_steps = [first + i * args.spacing for i in range(args.spikes)]
    last_step = spike_steps[-1] + 60
    flushed: dict[int, float] = {}
    for s in range(0, 100):  # a head start, before the watcher's first pass
        run.log({"loss": 3.0 * math.exp(0.01 * rng.gauss(0, 1)), "lr": 1e-4}, step=s)
    run.flush()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "midflight.logbook", "watch", str(run_dir), "--alerts", str(cfg)]
    watcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for s in range(100, last_step + 1):
            loss = 3.0 * math.exp(0.01 * rng.gauss(0, 1)) * (4.0 if s in spike_steps else 1.0)
            run.log({"loss": loss, "lr": 1e-4}, step=s)
            if s in spike_steps:
                run.flush()
                flushed[s] = time.time()
            time.sleep(args.step_s)
        run.flush()
        stopped = time.time()  # the run hangs here: no finish, no more steps
        deadline = stopped + args.stall_min_s + 30
        while time.time() < deadline and not any(b["kind"] == "stall" for _, b in got):
            time.sleep(0.05)
    finally:
        watcher.terminate()
        err = watcher.communicate(timeout=30)[1]
        srv.shutdown()
    opened = {b["step"]: t for t, b in got if b["event"] == "opened" and b["kind"] == "loss_spike"}
    lat = sorted(opened[s] - flushed[s] for s in spike_steps if s in opened)
    missed = [s for s in spike_steps if s not in opened]
    stall = [t for t, b in got if b["kind"] == "stall" and b["event"] == "opened"]
    out = {
        "spikes": len(spike_steps),
        "alerted": len(lat),
        "missed": missed,
        "latency_s": {
            "p50": lat[len(lat) // 2] if lat else None,
            "p95": lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)] if lat else None,
            "max": lat[-1] if lat else None,
        },
        "stall_window_s": args.stall_min_s,
        "stall_alert_after_s": (stall[0] - stopped) if stall else None,
        "step_s": args.step_s,
    }
    print(json.dumps(out, indent=1))
    if not lat:
        print(err[-2000:], file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
