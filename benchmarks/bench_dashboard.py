"""How fast is the dashboard in a real browser? Page load of a 1M-step run and live lag (goals: <= 1.5 s, <= 2 s p95).

Both goals are measured end to end: the real server (`midflight dashboard ROOT --port N`,
Streamlit, from the repository root) and a real headless browser (Debian chromium,
driven by Python playwright), so every clock below is Python's `time.time()`.

1. Page load. A run of N steps x 20 metrics (default 1,000,000 steps, a few loss /
   grad-norm spikes) is written straight in the Recorder's JSON-lines format (as
   bench_query.py's `--writer direct` does) and ingested into the folder's store
   *before* any timing (the ingest time is reported on its own), so what is timed
   is the page, not the first ingest. A copy of sample_runs/opt-tiny-faults is the
   baseline: same pages, same procedure, and the table shows big / small ratios.

   "First full render" of a page, timed from just before `page.goto` (or `reload`):
     * the Streamlit script run is over: `[data-testid=stApp]` has
       data-test-script-state="notRunning" and the page's <h1> title is there;
     * no element is stale (`[data-stale=true]`: left over from a previous run);
     * every chart (`[data-testid=stPlotlyChart]`, or `.midflight-chart`: an in-place
       chart, app/live_chart.py) has drawn its `.main-svg`, and there are at
       least as many as the page showed in an untimed visit that stayed quiet for 2 s
       (a cold load can report "notRunning" with the title but no charts yet);
     * and this still holds 300 ms later (else the wait goes on).
   The breakdown columns are the first time the script was seen running (page +
   websocket + session start), the first time it was seen finished (the server
   has sent every element: mostly server-side queries and figure building), and
   the rest to "full" (the browser drawing the Plotly charts).
   Cold = a freshly started server (empty st.cache_data, no incident scan yet) and
   a fresh browser context (empty HTTP cache), one server start per repeat; warm =
   `page.reload()` on a server that has served the page before (new session, warm
   caches), measured after the run's incident scan has finished.

   Incident detection over a big run runs in the background (app/source.py
   Background, the detector itself in a worker process: app/detector.py) and the Live
   header shows "…" in "open incidents" until it is done; that does NOT count towards
   the first full render (the page is complete and usable, and refreshes itself
   until the scan is in). The Incidents page shows "Scanning…" meanwhile, so its cold
   load on the big run counts as failed (no charts within 60 s of the expected count). Time-to-incidents is reported
   separately: from the first navigation to /live on a fresh server, reloading the
   page every second until the header shows a number.

   A third table times the Live page's data calls in-process (the same
   `logbook.store.queries` calls, 600 M4 buckets as the grid charts ask) on the same store, to split
   server-side query time from Streamlit / browser time.

2. Live lag. A writer thread logs one step every 0.2 s through the real Recorder
   (`logbook.init` + `run.log(..., step=i)`, default flush_every=0.5) and records
   `time.time()` at each `run.log`. The browser shows /live on that run, and a
   Python loop reads the header's "step" metric every 50 ms; each new step value
   seen gives lag = time seen - time that step was logged. Reported for
   MIDFLIGHT_REFRESH_S = 1.0 (the default) and 0.5.

Timings are noisy on a small, shared machine (the incident scan of a big run also
takes a core for ~10 s after each cold start): read medians with min/max. Not a
pass/fail test.

    python benchmarks/bench_dashboard.py            # 1M steps x 20 metrics, 3 cold + 5 warm loads, 120 lag samples
    python benchmarks/bench_dashboard.py --quick    # 100k steps, 2 cold + 3 warm, 40 lag samples
    python benchmarks/bench_dashboard.py --skip-lag # page loads only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import Timer, machine_info, median, note, print_header, print_table, progress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = ["", "live", "lineage", "incidents", "energy", "compare"]  # URL paths ("" is Runs)
GOAL_LOAD_S = 1.5
GOAL_LAG_S = 2.0
BLOCK = 10_000
SMALL_RUN = ROOT / "sample_runs" / "opt-tiny-faults"
NAMES = [
    "loss", "grad_norm", "lr", "loss_scale", "tokens", "tokens_per_s", "step_time_s", "ppl", "clip", "clipped",
    "mfu", "actv_norm", "param_norm", "mem_rss_gib", "update_ratio", "grad_norm_pre", "data_time_s", "weight_norm",
    "samples", "epoch",
]  # fmt: skip
# What the page reports about itself, read in one evaluate per poll.
STATE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  // st.plotly_chart's containers, and the in-place charts' plots (app/live_chart.py)
  const charts = document.querySelectorAll('[data-testid="stPlotlyChart"], .midflight-chart');
  let drawn = 0;
  charts.forEach(c => { if (c.querySelector('.main-svg')) drawn++; });
  const h1 = document.querySelector('h1');
  return {
    state: app ? app.getAttribute('data-test-script-state') : null,
    charts: charts.length,
    drawn: drawn,
    stale: document.querySelectorAll('[data-stale="true"]').length,
    h1: h1 ? h1.innerText : null,
    metrics: Array.from(document.querySelectorAll('[data-testid="stMetricValue"]')).map(e => e.innerText),
  };
}"""
STEP_JS = """() => {
  const m = document.querySelector('[data-testid="stMetricValue"]');
  return m ? m.innerText : null;
}"""


# ----------------------------------------------------------------- the big run
def metric_block(rng: np.random.Generator, first: int, n: int, spikes: list[int], steps: int) -> np.ndarray:
    s = np.arange(first, first + n, dtype=np.float64)
    loss = 2.0 + 8.0 / np.sqrt(1.0 + s / 5000.0) + rng.normal(0, 0.05, n)
    gn = np.abs(rng.lognormal(-0.5, 0.4, n))
    for sp in spikes:  # a 20-step loss spike with a grad-norm spike at its start
        hit = (s >= sp) & (s < sp + 20)
        loss[hit] *= 4.0
        gn[s == sp] *= 200.0
    lr = 6e-4 * np.minimum(1.0, (s + 1) / 2000.0) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / steps)))
    scale = 2.0 ** (16 - (s // 100_000) % 4)
    step_time = 0.25 + rng.normal(0, 0.01, n)
    tps = 4096 / step_time
    cols = [
        loss, gn, lr, scale, (s + 1) * 4096, tps, step_time, np.exp(np.minimum(loss, 20)), np.full(n, 1.0),
        (gn > 1.0).astype(float), 0.42 + rng.normal(0, 0.01, n), 10 + rng.normal(0, 0.1, n), 300 + s * 1e-5,
        12.0 + rng.normal(0, 0.05, n), 1e-3 * gn, gn * 1.01, 0.01 + np.abs(rng.normal(0, 0.002, n)), 300 + s * 1e-5,
        (s + 1) * 8, s // 100_000,
    ]  # fmt: skip
    return np.round(np.column_stack(cols), 6)


def write_big_run(run_dir: Path, steps: int, seed: int = 0) -> float:
    """One rank's log of `steps` x 20 metrics in the Recorder's format; returns seconds."""
    from midflight import logbook
    from midflight.logbook.record import records

    rng = np.random.default_rng(seed)
    spikes = [int(steps * 0.31), int(steps * 0.72)]
    t_start = time.time()
    t0 = t_start - steps * 0.25 - 120  # the run ended two minutes ago (so it is not "live")
    run = logbook.init(run_dir, name=run_dir.name, config={"steps": steps}, flush_every=3600.0)
    bar = progress(steps, f"write {steps:,} steps x {len(NAMES)} metrics")
    with open(run.path, "ab") as f:
        for first in range(0, steps, BLOCK):
            n = min(BLOCK, steps - first)
            vals = metric_block(rng, first, n, spikes, steps).tolist()
            rows = [[first + j, t0 + (first + j) * 0.25, *r] for j, r in enumerate(vals)]
            f.write(records.encode({"k": records.METRICS, "names": NAMES, "rows": rows}))
            bar.update(n)
    bar.close()
    run.finish()
    return time.time() - t_start


def ingest_root(root: Path) -> tuple[float, str]:
    """Pre-ingest every run under root into root/.midflight/store.duckdb (what the dashboard opens)."""
    from midflight.logbook.record import layout
    from midflight.logbook.store import open_store, queries
    from midflight.logbook.store.ingest import ingest

    st = open_store(layout.default_store_path(root), fallback=False)
    try:
        with Timer() as t:
            report = ingest(st, layout.discover_runs(root))
        note(f"ingested {root}: {report.describe()} in {t.s:.1f} s")
        return t.s, str(queries.runs(st)["run_id"].iloc[0])
    finally:
        st.close()


# ----------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`midflight dashboard ROOT --port N` in its own process group; stopped (SIGINT, then SIGKILL) on exit."""

    def __init__(self, root: Path, log: Path, refresh_s: float | None = None):
        self.port = free_port()
        env = {**os.environ}
        if refresh_s is not None:
            env["MIDFLIGHT_REFRESH_S"] = str(refresh_s)
        self._log = open(log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "midflight.app", str(root), "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_healthy(self, timeout: float = 90.0) -> float:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {self.proc.returncode} (see {self._log.name})")
            try:
                with urllib.request.urlopen(self.url + "_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return time.time() - t0
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"dashboard not healthy after {timeout:.0f} s (see {self._log.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # app/__main__ forwards it to streamlit
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group: anything left of this server
        self.proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------- one page load
def wait_full_render(page, t0: float, timeout: float = 120.0, settle: float = 0.3, min_charts: int = 0) -> dict:
    """Poll until the first full render (see the docstring); times are seconds from t0."""
    out = {"running": None, "finished": None, "full": None, "charts": 0, "metrics": []}
    done_since = None
    while time.time() - t0 < timeout:
        try:
            s = page.evaluate(STATE_JS)
        except Exception:  # navigation in progress: the context was destroyed
            time.sleep(0.02)
            continue
        now = time.time()
        if s["state"] == "running" and out["running"] is None:
            out["running"] = now - t0
        ok = s["state"] == "notRunning" and s["h1"] and s["stale"] == 0 and s["drawn"] == s["charts"] >= min_charts
        if s["state"] == "notRunning" and s["h1"] and out["finished"] is None:
            out["finished"] = now - t0
        if ok:
            if done_since is None or s["charts"] != out["charts"]:
                done_since, out["charts"], out["metrics"] = now, s["charts"], s["metrics"]
            elif now - done_since >= settle:
                out["full"] = done_since - t0
                out["running"] = out["running"] if out["running"] is not None else out["finished"]
                return out
        else:
            done_since = None
            if s["state"] != "notRunning":
                out["finished"] = None  # a later rerun: the script is not finished after all
        time.sleep(0.02)
    raise TimeoutError(f"no full render within {timeout:.0f} s (last state {s})")


def try_render(page, t0: float, min_charts: int, what: str, timeout: float = 60.0) -> dict:
    """wait_full_render, or a failed load (full = nan, counted in the table) after `timeout` s."""
    try:
        return wait_full_render(page, t0, timeout=timeout, min_charts=min_charts)
    except TimeoutError as exc:
        note(f"{what}: {exc}")
        nan = float("nan")
        return {"running": nan, "finished": nan, "full": nan, "charts": -1, "metrics": []}


def new_context(browser):
    return browser.new_context(viewport={"width": 1600, "height": 1000})


def incidents_value(metrics: list[str]) -> str | None:
    return metrics[5] if len(metrics) > 5 else None


def time_to_incidents(page, t0: float, timeout: float = 300.0) -> float | None:
    """Reload /live every second until the header's "open incidents" is no longer "…"; seconds from t0."""
    while time.time() - t0 < timeout:
        r = wait_full_render(page, time.time(), timeout=max(1.0, min(120.0, t0 + timeout - time.time())), settle=0.0)
        v = incidents_value(r["metrics"])
        if v is not None and v != "…":
            return time.time() - t0
        time.sleep(1.0)
        page.reload(wait_until="commit")
    return None


def measure_site(
    browser,
    root: Path,
    label: str,
    pages: list[str],
    cold: int,
    warm: int,
    tmp: Path,
    timeout: float = 60.0,
    incidents_timeout: float = 300.0,
) -> dict:
    """{page: {"cold": [results], "warm": [results]}} plus "_incidents_s", "_server_start_s" and "_charts".

    A load that has not rendered in `timeout` s counts as failed (full = nan); the scan's wait for the
    header's incident count gives up after `incidents_timeout` s (None)."""
    res: dict = {p: {"cold": [], "warm": []} for p in pages}
    starts, expected = [], {}
    bar = progress(len(pages) * (cold + warm + 1) + 1, f"page loads ({label})")
    log = tmp / f"server-{label}.log"
    # warm: one server; time-to-incidents from its first /live visit, then per page one untimed visit that
    # settles for 2 s (it fixes how many charts the page has: a load counts as full only with all of them)
    with Server(root, log) as srv:
        starts.append(srv.wait_healthy(max(90.0, timeout)))
        ctx = new_context(browser)
        try:
            page = ctx.new_page()
            t0 = time.time()
            page.goto(srv.url + "live", wait_until="commit")
            try:
                wait_full_render(page, t0, timeout=max(120.0, timeout), settle=2.0)
                incid = time_to_incidents(page, t0, timeout=incidents_timeout)
            except TimeoutError as exc:  # a page that never settles: its timed loads below say so too
                note(f"{label} /live, untimed first visit: {exc}")
                incid = None
            bar.update(1)
            for p in pages:
                t0 = time.time()
                page.goto(srv.url + p, wait_until="commit")
                try:
                    expected[p] = wait_full_render(page, t0, timeout=max(120.0, timeout), settle=2.0)["charts"]
                except TimeoutError as exc:
                    note(f"{label} /{p}, untimed visit: {exc}")
                    expected[p] = 0
                bar.update(1)
                for _ in range(warm):
                    t0 = time.time()
                    page.reload(wait_until="commit")
                    res[p]["warm"].append(try_render(page, t0, expected[p], f"{label} /{p} warm", timeout))
                    bar.update(1)
        finally:
            ctx.close()
    # cold: a fresh server and a fresh browser context for every load
    for _ in range(cold):
        for p in pages:
            with Server(root, log) as srv:
                starts.append(srv.wait_healthy(max(90.0, timeout)))
                ctx = new_context(browser)
                try:
                    page = ctx.new_page()
                    t0 = time.time()
                    page.goto(srv.url + p, wait_until="commit")
                    res[p]["cold"].append(try_render(page, t0, expected[p], f"{label} /{p} cold", timeout))
                finally:
                    ctx.close()
            bar.update(1)
    bar.close()
    res["_incidents_s"], res["_server_start_s"], res["_charts"] = incid, starts, expected
    return res


def stats(xs: list[float]) -> tuple[float, float, float]:
    return (median(xs), min(xs), max(xs)) if xs else (float("nan"),) * 3


# ----------------------------------------------------------------- server-side query time (in-process)
def live_queries(store_root: Path, run: str, repeats: int) -> list[list]:
    """The Live page's data calls, timed directly on the store: first call and warm median (ms)."""
    from midflight.logbook.record import layout
    from midflight.logbook.report import incidents
    from midflight.logbook.report.summary import energy_summary
    from midflight.logbook.store import open_store, queries

    st = open_store(layout.default_store_path(store_root), fallback=False)
    rows = []
    try:
        series = ["loss", "grad_norm", "clip", "lr", "loss_scale", "tokens_per_s", "step_time_s"]
        calls = [
            ("runs", lambda: queries.runs(st)),
            ("segments", lambda: queries.segments(st, run)),
            ("run_status", lambda: queries.run_status(st, run)),
            ("metric_names", lambda: queries.metric_names(st, run)),
            ("last_value(tokens_per_s)", lambda: queries.last_value(st, run, "tokens_per_s")),
            ("last_value(ppl)", lambda: queries.last_value(st, run, "ppl")),
            ("events(overflow)", lambda: queries.events(st, run, ["overflow"])),
            ("annotations", lambda: queries.annotations(st, run)),
            ("telemetry_names", lambda: queries.telemetry_names(st, run)),
        ] + [(f"series({n}, 600)", lambda n=n: queries.series(st, run, n, x="step", buckets=600)) for n in series]
        total_first = total_warm = 0.0
        for name, fn in calls:
            with Timer() as t:
                fn()
            first = t.s * 1e3
            warm = []
            for _ in range(repeats):
                with Timer() as t:
                    fn()
                warm.append(t.s * 1e3)
            total_first += first
            total_warm += median(warm)
            rows.append([name, first, median(warm)])
        rows.append(["total (Live page's queries)", total_first, total_warm])
        for name, fn in [
            ("summary.energy_summary (background)", lambda: energy_summary(st, run)),
            ("incidents.incidents (background)", lambda: incidents.incidents(st, run)),
        ]:
            with Timer() as t:
                fn()
            rows.append([name, t.s * 1e3, float("nan")])
    finally:
        st.close()
    return rows


# ----------------------------------------------------------------- live lag
class LiveWriter:
    """Logs steps through the real Recorder; `logged[step]` = time.time() at its run.log."""

    def __init__(self, run_dir: Path, every: float = 0.2, planned: int = 100_000):
        from midflight import logbook

        self.run = logbook.init(run_dir, name=run_dir.name, config={"steps": planned})
        self.every, self.logged, self.stop_evt, self.step = every, {}, threading.Event(), 0
        self.rng = np.random.default_rng(0)

    def log_one(self) -> None:
        i = self.step
        vals = {
            "loss": 2.0 + 8.0 / np.sqrt(1.0 + i / 500.0) + float(self.rng.normal(0, 0.05)),
            "grad_norm": float(abs(self.rng.lognormal(-0.5, 0.4))),
            "lr": 6e-4 * min(1.0, (i + 1) / 200.0),
            "loss_scale": 65536.0,
            "tokens": (i + 1) * 4096.0,
            "tokens_per_s": 4096 / self.every,
            "step_time_s": self.every,
            "ppl": 10.0,
            "clip": 1.0,
            "mfu": 0.4,
        }
        self.logged[i] = time.time()
        self.run.log(vals, step=i)
        self.step += 1

    def flush(self) -> None:
        self.run.flush()

    def finish(self) -> None:
        self.run.finish()


def _writer_loop(w: LiveWriter) -> None:
    """One step every w.every seconds until stopped (a background thread of this process)."""
    nxt = time.time()
    while not w.stop_evt.is_set():
        w.log_one()
        nxt += w.every
        time.sleep(max(0.0, nxt - time.time()))


def parse_step(text: str | None) -> int | None:
    if not text:
        return None
    head = text.split("/")[0].strip().replace(",", "")
    return int(head) if head.isdigit() else None


def measure_lag(
    browser,
    tmp: Path,
    refresh_s: float,
    samples: int,
    every: float = 0.2,
    writer=None,
    root: Path | None = None,
    timeout: float = 120.0,
    each_step: bool = False,
    window_s: float | None = None,
) -> dict:
    """Lag from a step's logging to its number in the Live header, for `samples` new steps.

    By default a LiveWriter (one rank through the real Recorder) writes a fresh run; a caller may pass
    its own `writer` (log_one(), flush(), finish(), `logged`, `every`, `stop_evt`, as LiveWriter) and the
    `root` the server opens. `timeout`: seconds for the Live page's first render.

    Each new value the header shows gives one lag, that of the step it shows (the page's freshness when
    it updates). With `each_step`, it gives one lag for every step logged since the previous value: how
    long until the page showed that step or a later one, so steps an update skips over count with their
    full wait (what a person watching a slow page sees). `window_s`: how long to watch for the samples
    (default: samples x 4 refresh periods + 60 s). Besides the lags it returns when watching began and
    ended ("t_start", "t_end") and the last step seen ("last_seen"), so a caller can count the steps
    never shown."""
    if writer is None:
        root = tmp / f"live-{refresh_s:g}"
        root.mkdir()
        writer = LiveWriter(root / "live-run", every=every)
    w = writer
    for _ in range(10):  # a few steps on disk before the server looks
        w.log_one()
        time.sleep(w.every)
    w.flush()
    loop = threading.Thread(target=_writer_loop, args=(w,), daemon=True)
    loop.start()
    lags, seen_steps = [], []
    try:
        with Server(root, tmp / f"server-live-{refresh_s:g}.log", refresh_s=refresh_s) as srv:
            srv.wait_healthy()
            ctx = new_context(browser)
            try:
                page = ctx.new_page()
                t0 = time.time()
                page.goto(srv.url + "live", wait_until="commit")
                load = wait_full_render(page, t0, timeout=timeout)
                bar = progress(samples, f"live lag (refresh {refresh_s:g} s)")
                last = None
                t_start = time.time()
                deadline = t_start + (window_s if window_s is not None else samples * max(refresh_s, w.every) * 4 + 60)
                while len(lags) < samples and time.time() < deadline:
                    try:
                        text = page.evaluate(STEP_JS)
                    except Exception:
                        text = None
                    now = time.time()
                    step = parse_step(text)
                    if step is not None and step != last and step in w.logged:
                        if last is not None:  # the first value was already on the page when we started
                            new = [s for s in range(last + 1, step + 1) if s in w.logged] if each_step else [step]
                            lags.extend(now - w.logged[s] for s in new)
                            seen_steps.append(step)
                            bar.update(len(new))
                        last = step
                    time.sleep(0.05)
                bar.close()
                t_end = time.time()
            finally:
                ctx.close()
    finally:
        w.stop_evt.set()
        loop.join(timeout=5)
        w.finish()
    gaps = np.diff(seen_steps) if len(seen_steps) > 1 else np.array([0])
    return {"lags": lags, "load": load["full"], "steps_per_update": float(np.median(gaps)), "t_start": t_start,
            "t_end": t_end, "last_seen": seen_steps[-1] if seen_steps else None}  # fmt: skip


# ----------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k steps, 2 cold + 3 warm loads, 40 lag samples")
    ap.add_argument("--steps", type=int, help="steps of the big run (20 metrics each)")
    ap.add_argument("--cold", type=int, help="cold loads per page (a fresh server each)")
    ap.add_argument("--warm", type=int, help="warm reloads per page")
    ap.add_argument("--samples", type=int, help="live-lag samples per refresh setting")
    ap.add_argument("--pages", default=",".join(p or "runs" for p in PAGES), help="comma-separated pages to load")
    ap.add_argument("--skip-load", action="store_true", help="no page-load measurements")
    ap.add_argument("--skip-lag", action="store_true", help="no live-lag measurements")
    ap.add_argument("--refresh", default="1.0,0.5", help="MIDFLIGHT_REFRESH_S values for the lag test")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs, the runs)")
    args = ap.parse_args(argv)
    steps = args.steps or (100_000 if args.quick else 1_000_000)
    cold = args.cold or (2 if args.quick else 3)
    warm = args.warm or (3 if args.quick else 5)
    samples = args.samples or (40 if args.quick else 120)
    pages = ["" if p == "runs" else p for p in args.pages.split(",") if p]

    import playwright
    import streamlit

    print_header(
        "dashboard page load and live lag (real server, headless chromium)",
        machine_info(
            {
                "streamlit": streamlit.__version__,
                "playwright": getattr(playwright, "__version__", "?"),
                "big run": f"{steps:,} steps x {len(NAMES)} metrics",
            }
        ),
    )
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    note(f"working in {tmp}")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                if not args.skip_load:
                    page_loads(browser, tmp, steps, pages, cold, warm)
                if not args.skip_lag:
                    live_lag(browser, tmp, [float(x) for x in args.refresh.split(",")], samples)
            finally:
                browser.close()
    finally:
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def page_loads(browser, tmp: Path, steps: int, pages: list[str], cold: int, warm: int) -> None:
    big, small = tmp / "big", tmp / "small"
    write_s = write_big_run(big / "big-run", steps)
    shutil.copytree(SMALL_RUN, small / SMALL_RUN.name, ignore=shutil.ignore_patterns(".midflight"))
    size_mb = sum(f.stat().st_size for f in (big / "big-run").rglob("*") if f.is_file()) / 1e6
    ingest_big, big_run = ingest_root(big)
    ingest_small, small_run = ingest_root(small)
    print_table(
        ["run", "metric points", "log MB", "write s", "pre-ingest s (not in page loads)"],
        [
            [big_run, steps * len(NAMES), size_mb, write_s, ingest_big],
            [small_run, "-", "-", "-", ingest_small],
        ],
        title="The runs",
    )

    results = {}
    for label, root in (("small", small), ("big", big)):
        note(f"page loads: {label} run")
        results[label] = measure_site(browser, root, label, pages, cold, warm, tmp)

    rows = []
    for p in pages:
        for kind in ("cold", "warm"):
            b, s = results["big"][p][kind], results["small"][p][kind]
            if not b:
                continue
            full = [r["full"] for r in b if r["full"] == r["full"]]
            bm, bmin, bmax = stats(full)
            s_ok = [r["full"] for r in s if r["full"] == r["full"]]
            sm = median(s_ok) if s_ok else float("nan")
            b = [r for r in b if r["full"] == r["full"]] or [{"charts": -1, "running": bm, "finished": bm}]
            rows.append(
                [
                    "/" + p,
                    kind,
                    f"{len(full)}/{len(results['big'][p][kind])}",
                    b[-1]["charts"],
                    median([r["running"] for r in b]),
                    median([r["finished"] for r in b]),
                    bm,
                    bmin,
                    bmax,
                    sm,
                    bm / sm if sm else float("nan"),
                    ("yes" if bm <= GOAL_LOAD_S else "no") if p == "live" else "",
                ]
            )
    print_table(
        [
            "page",
            "load",
            "n",
            "charts",
            "script start s",
            "script done s",
            "full render s (median)",
            "min",
            "max",
            "small run s",
            "big/small",
            f"goal <= {GOAL_LOAD_S} s",
        ],
        rows,
        title=f"First full render, big run ({steps:,} steps x {len(NAMES)} metrics) vs the small sample run "
        "(seconds from navigation; incident scan not included)",
    )
    srows = []
    for label in ("small", "big"):
        r = results[label]
        live_cold = r.get("live", {}).get("cold", [])
        first = incidents_value(live_cold[0]["metrics"]) if live_cold else None
        srows.append(
            [
                label,
                median(r["_server_start_s"]),
                "-" if r["_incidents_s"] is None else r["_incidents_s"],
                "-" if first is None else first,
            ]
        )
    print_table(
        ["run", "server start to healthy s", "first /live visit to incidents shown s", "'open incidents' 1st render"],
        srows,
        title="Server start and the background incident scan",
    )
    note("timing the Live page's queries in-process")
    qrows = live_queries(big, big_run, repeats=5)
    print_table(
        ["call (big run)", "first call ms", "warm median ms"],
        qrows,
        title="Server side: the Live page's data calls on the big run's store (no Streamlit, no browser)",
    )


def live_lag(browser, tmp: Path, refreshes: list[float], samples: int) -> None:
    rows = []
    for r in refreshes:
        note(f"live lag with MIDFLIGHT_REFRESH_S={r:g}")
        res = measure_lag(browser, tmp, r, samples)
        lags = sorted(res["lags"])
        if not lags:
            rows.append([f"{r:g}", 0, "-", "-", "-", "-", "-", "-", "no"])
            continue
        p95 = float(np.percentile(lags, 95))
        rows.append(
            [
                f"{r:g}",
                len(lags),
                res["load"],
                res["steps_per_update"],
                float(np.percentile(lags, 50)),
                p95,
                max(lags),
                statistics.fmean(lags),
                "yes" if p95 <= GOAL_LAG_S else "no",
            ]
        )
    print_table(
        [
            "MIDFLIGHT_REFRESH_S",
            "samples",
            "first render s",
            "steps per update",
            "lag p50 s",
            "lag p95 s",
            "max s",
            "mean s",
            f"p95 <= {GOAL_LAG_S} s",
        ],
        rows,
        title="Live lag: a step logged (run.log, flush_every=0.5, one step / 0.2 s) to its number in the browser",
    )


if __name__ == "__main__":
    main()
