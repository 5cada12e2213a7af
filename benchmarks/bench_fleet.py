"""The fleet end to end: one OPT-175B-shaped run through every stage of midflight, goals side by side.

Why: each of the other benchmarks measures one part on a shape that suits it. This one takes the shape
midflight exists for (124 nodes x 8 GPUs = 992 ranks, a 20 s step; rank 0 logs 11 training metrics per
step, every rank step_time_s, compute_s and wait_s (synchronous training), each node's local rank 0 NVML
telemetry for its 8 GPUs at 0.2 Hz) and runs it through what a user runs, in order, each stage in its own
process where memory matters, so every number is the real front door's:

1. write: benchmarks/fleet_run.write_fleet_run writes the run in the Recorder's exact bytes, with planted
   incidents (a loss spike, an overflow streak, one straggler rank; --plant), and returns the truth;
2. ingest: `midflight ingest RUN` (wall time, peak RSS); points/s over every point written;
3. reopen: `midflight ingest RUN` again: the finished run must be read from its store, not
   ingested again (0 new records), and how long that takes;
4. summary: `midflight summary RUN --json`, twice (the second is a reopen too): wall time, peak
   RSS, and its incidents judged against the planted truth (straggler: right rank, delay from onset,
   false alarms on clean ranks, scored by bench_stragglers.score; spike and overflow: an incident of
   the kind overlapping the planted steps);
5. pages: the real server (`midflight dashboard RUN`) and headless Chromium, by bench_dashboard.measure_site:
   first full render of Live and of Ranks & devices (the per-rank view), cold (fresh server and
   browser context) and warm (reload); then the Ranks page once more, to check that it names the
   planted straggler;
6. live lag (largest size only): the run goes on as a new segment (fleet_run.LiveFleet: every rank
   appends each new step, each node a telemetry tick) while the Live page is open;
   bench_dashboard.measure_lag reads the page's step until `--lag-samples` new steps were seen.

Peak RSS is per process (os.wait4's rusage of that child). Each stage has a timeout: a stage past it is
killed and reported as "> N s (not met)"; stages that need its result are skipped.

Projection. Stages 1-5 run at two sizes (--project-from and --steps steps, same nodes). Each cost
(seconds, peak RSS, bytes) is fitted as cost = a + b * steps through the two points and evaluated at
--project-to steps (143,052: OPT-175B's logbook); a cost that grew by less than 10 % from the small size
to the large one is called constant and projected as the larger of the two. Points per second and bytes
per point are derived from the projected totals. Detection and live lag are measured, not projected.

    python benchmarks/bench_fleet.py --quick                                # 16 nodes x 200 steps, ~2 min
    python benchmarks/bench_fleet.py --nodes 124 --steps 10000 --project-from 1000   # the issue's report
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from benchmarks import bench_dashboard as dash  # noqa: E402
from benchmarks import bench_stragglers  # noqa: E402
from benchmarks._common import machine_info, note, print_header, print_table, progress  # noqa: E402
from benchmarks.fleet_run import DEFAULT_PLANT, PLANTS, LiveFleet, write_fleet_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPT_STEPS = 143_052  # OPT-175B's logbook: the full run's steps
GOAL = {
    "log_b_per_tel_point": 10.0,
    "store_b_per_point": 2.0,
    "ingest_points_s": 3e6,
    "summary_s": 5.0,
    "summary_rss_mb": 1024.0,
    "straggler_delay": 30,
    "live_load_s": 1.5,
    "lag_p95_s": 2.0,
}
CONSTANT_BELOW = 0.20  # a cost that grew less than this from the small size to the large one is constant
RUN = "fleet"


# ----------------------------------------------------------------- one stage in its own process
def run_stage(cmd: list[str], timeout: float, stdout: Path) -> dict:
    """Run `cmd` (stderr shown: its progress bar), stdout to a file; wall s, peak RSS MB, rc, timed_out."""
    t0 = time.perf_counter()
    with open(stdout, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, env=os.environ.copy(), start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the stage and anything it began
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"s": wall, "rss_mb": usage.ru_maxrss / 1024, "rc": proc.returncode, "timed_out": timed_out,
            "timeout": timeout, "out": stdout}  # fmt: skip


def logbook_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "midflight.logbook", *args]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ----------------------------------------------------------------- judging the summary against the truth
def judge(summary: dict, truth: dict) -> dict:
    """What the summary found of what was planted (never a hard-coded step or rank)."""
    incs = summary.get("incidents") or []
    found = [
        SimpleNamespace(kind=i.get("kind"), detail=i.get("detail") or {}, detected_step=i.get("detected_step"))
        for i in incs
    ]
    sc = bench_stragglers.score([{"truth": truth, "found": found}], "found")
    out: dict = {"false_alarms": sc["false_alarms"], "clean_ranks": sc["clean_ranks"], "kinds": {}}
    for k, v in sc["per"].items():
        if v["planted"]:
            out["kinds"][k] = {"found": v["tp"] > 0, "delay": min(v["delays"]) if v["delays"] else None}

    def overlap(kinds: tuple, t: dict) -> dict:
        hits = [
            i
            for i in incs
            if i.get("kind") in kinds
            and i.get("start_step") is not None
            and i["start_step"] <= t["last_step"]
            and (i.get("end_step") if i.get("end_step") is not None else i["start_step"]) >= t["first_step"]
        ]
        delays = [i["detected_step"] - t["first_step"] for i in hits if i.get("detected_step") is not None]
        return {"found": bool(hits), "delay": min(delays) if delays else None}

    if "spike" in truth:
        out["kinds"]["spike"] = overlap(("loss_spike", "grad_norm_spike"), truth["spike"])
    if "overflow" in truth:
        out["kinds"]["overflow"] = overlap(("loss_scale_collapse",), truth["overflow"])
    return out


# ----------------------------------------------------------------- one size, stages 1-5
def measure_size(a, work: Path, steps: int, browser) -> dict:
    run_dir = work / f"steps-{steps}" / RUN
    res: dict = {"steps": steps, "stages": {}}
    world = a.nodes * 8
    bar = progress(world, f"write {world} ranks x {steps:,} steps")
    t0 = time.perf_counter()
    truth = write_fleet_run(
        run_dir, nodes=a.nodes, steps=steps, telemetry_hz=a.telemetry_hz, plant=a.plant, seed=a.seed,
        synchronous=True, name=RUN, on_rank=lambda _r: bar.update(1),
    )  # fmt: skip
    bar.close()
    res["stages"]["write"] = {"s": time.perf_counter() - t0, "rss_mb": float("nan"), "timed_out": False}
    res["truth"] = truth
    points = truth["points"]["metrics"] + truth["points"]["telemetry"]
    res["points"], res["log_bytes"] = points, truth["bytes"]["logs"]
    note(f"{steps:,} steps: {points:,} points, {truth['bytes']['logs'] / 1e6:,.1f} MB of logs in {run_dir}")

    st = res["stages"]
    note(f"ingest ({steps:,} steps)")
    st["ingest"] = run_stage(logbook_cmd("ingest", str(run_dir)), a.timeout_ingest, run_dir.parent / "ingest.out")
    if not ok(st["ingest"]):
        note("ingest did not finish: the stages that read its store are skipped")
        return res
    res["store_bytes"] = dir_bytes(run_dir / ".midflight")
    res["ingested_records"] = records_ingested(st["ingest"]["out"])
    note("reopen: ingest again (nothing new)")
    st["reopen"] = run_stage(logbook_cmd("ingest", str(run_dir)), a.timeout_ingest, run_dir.parent / "reopen.out")
    res["reopen_records"] = records_ingested(st["reopen"]["out"]) if ok(st["reopen"]) else None
    for key in ("summary", "summary_again"):
        note(f"{key.replace('_', ' ')}")
        out = run_dir.parent / f"{key}.json"
        st[key] = run_stage(logbook_cmd("summary", str(run_dir), "--json"), a.timeout_summary, out)
        if ok(st[key]) and key == "summary":
            res["detection"] = judge(json.loads(out.read_text()), truth)
    if browser is not None and not a.skip_pages:
        try:
            res["pages"] = pages(a, browser, run_dir, work, truth)
        except Exception as exc:  # a server that never came up, a browser that died: reported, the rest kept
            note(f"page loads failed: {type(exc).__name__}: {exc}")
            res["pages_error"] = f"{type(exc).__name__}: {exc}"
    res["run_dir"] = run_dir
    return res


def ok(stage: dict) -> bool:
    return not stage["timed_out"] and stage["rc"] == 0


def records_ingested(out: Path) -> int | None:
    m = re.search(r"ingested ([\d,]+) records", out.read_text(errors="replace"))
    return int(m.group(1).replace(",", "")) if m else None


RANKS_WORST_JS = """() => Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'))
    .map(e => e.innerText).find(t => t.startsWith('Worst: ')) || null"""
# The metric that tells ranks apart: in synchronous training every rank's step_time_s is the slowest's.
RANKS_METRIC = "compute_s"
HEATMAP_TITLE_JS = """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"] .gtitle'))
    .map(e => e.textContent)"""


def pages(a, browser, run_dir: Path, work: Path, truth: dict) -> dict:
    """First full render of Live and Ranks & devices (cold and warm); which rank the Ranks page calls worst."""
    note("page loads: live, ranks")
    res = dash.measure_site(
        browser, run_dir, f"fleet-{truth['steps']}", ["live", "ranks"], a.cold, a.warm, work,
        timeout=a.timeout_page, incidents_timeout=a.timeout_page,
    )  # fmt: skip
    res["_ranks_worst"], res["_ranks_errors"] = ranks_worst(browser, run_dir, work, a.timeout_page)
    return res


def ranks_worst(browser, run_dir: Path, work: Path, timeout: float) -> tuple[str | None, int]:
    """The Ranks page's "Worst: ..." caption for RANKS_METRIC (picked in its metric box), and its error count."""
    with dash.Server(run_dir, work / "server-ranks-check.log") as srv:
        srv.wait_healthy(max(90.0, timeout))
        ctx = dash.new_context(browser)
        try:
            page = ctx.new_page()
            t0 = time.time()
            page.goto(srv.url + "ranks", wait_until="commit")
            try:
                before = dash.wait_full_render(page, t0, timeout=timeout)
                box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("metric", exact=True))
                box.click()
                page.get_by_role("option", name=RANKS_METRIC, exact=True).click(timeout=10000)
                t1 = time.time()
                while time.time() - t1 < timeout:  # the page's rerun with the metric picked: its heatmap's title
                    picked = any(t.startswith(f"{RANKS_METRIC} per ") for t in page.evaluate(HEATMAP_TITLE_JS))
                    if picked and page.evaluate(dash.STATE_JS)["state"] == "notRunning":
                        time.sleep(0.5)
                        return page.evaluate(RANKS_WORST_JS), page.locator('[data-testid="stException"]').count()
                    time.sleep(0.1)
                note(f"ranks page: no outliers for {RANKS_METRIC} within {timeout:g} s (charts: {before['charts']})")
            except Exception as exc:  # a page that never rendered, or no metric box: reported, not raised
                note(f"ranks page: {type(exc).__name__}: {exc}")
            return None, page.locator('[data-testid="stException"]').count()
        finally:
            ctx.close()


class FleetWriter:
    """bench_dashboard.measure_lag's writer protocol over a LiveFleet: `logged[step]` = time its append began."""

    def __init__(self, fleet: LiveFleet, every: float):
        self.fleet, self.every, self.logged, self.stop_evt = fleet, every, {}, threading.Event()
        self.append_s: list[float] = []

    def log_one(self) -> None:
        t = time.time()
        self.logged[self.fleet.step] = t
        self.fleet.append()
        self.append_s.append(time.time() - t)

    def flush(self) -> None:
        return None  # every append is on disk when it returns

    def finish(self) -> None:
        self.fleet.close()


def live_lag(a, browser, size: dict, work: Path) -> dict:
    note(f"live lag: the run goes on, one step every {a.lag_every:g} s on all {size['truth']['ranks']} ranks")
    w = FleetWriter(LiveFleet(size["run_dir"], size["truth"]), a.lag_every)
    try:
        r = dash.measure_lag(
            browser, work, 1.0, a.lag_samples, writer=w, root=size["run_dir"], timeout=a.timeout_page, each_step=True,
            window_s=a.timeout_lag,
        )  # fmt: skip
    except Exception as exc:  # the Live page never rendered, or the server never came up
        note(f"live lag: {type(exc).__name__}: {exc}")
        return {"lags": [], "load": float("nan"), "append_s": w.append_s, "error": str(exc)}
    r["append_s"] = w.append_s
    # steps logged while the page was watched and never shown: waited at least until the watch ended
    late = r["last_seen"] if r["last_seen"] is not None else -1
    r["unshown"] = [r["t_end"] - t for s, t in w.logged.items() if t >= r["t_start"] and s > late]
    return r


# ----------------------------------------------------------------- projection and tables
def fit(s1: int, c1: float, s2: int, c2: float, to: int, constant_below: float = CONSTANT_BELOW) -> tuple:
    """(cost at `to` steps, how): linear a + b * steps through two sizes, or constant (the larger of the two)
    if it grew by less than `constant_below` (a fraction) from s1 to s2: timing noise, not growth."""
    if not (np.isfinite(c1) and np.isfinite(c2)):
        return float("nan"), "-"
    if c2 <= c1 * (1 + constant_below) or s2 == s1:
        return max(c1, c2), "constant"
    b = (c2 - c1) / (s2 - s1)
    return c1 + b * (to - s1), f"{c1 - b * s1:.3g} + {b:.3g} x steps"


def stage_s(stage: dict | None) -> float:
    """Its wall time; nan if it was skipped, failed or ran past its timeout (no number to project)."""
    if not stage or stage["timed_out"] or stage.get("rc"):
        return float("nan")
    return stage["s"]


def stage_met(stage: dict | None, goal: float):
    """A timed stage's goal: not met if it failed or ran past its timeout, "-" if skipped."""
    if not stage:
        return None
    return stage_s(stage) <= goal


def fmt_s(stage: dict | None) -> str:
    if not stage:
        return "skipped"
    if stage["timed_out"]:
        return f"> {stage['timeout']:g} s (not met)"
    if stage.get("rc"):
        return f"failed (rc {stage['rc']})"
    return f"{stage['s']:.2f}"


def yes(b) -> str:
    return "-" if b is None else ("met" if b else "NOT met")


def page_full(site: dict | None, page: str, kind: str) -> list[float]:
    if not site:
        return []
    return [r["full"] for r in site[page][kind]]


def median_ok(xs: list[float]) -> float:
    good = [x for x in xs if x == x]
    return float(np.median(good)) if good else float("nan")


def report(a, sizes: list[dict], lag: dict | None) -> dict:
    big = sizes[-1]
    steps = [s["steps"] for s in sizes]
    # per-size stage table
    rows = []
    for s in sizes:
        for name in ("write", "ingest", "reopen", "summary", "summary_again"):
            st = s["stages"].get(name)
            rss = "-" if not st or st["rss_mb"] != st["rss_mb"] else f"{st['rss_mb']:.0f}"
            rows.append([f"{s['steps']:,}", name, fmt_s(st), rss])
        for p in ("live", "ranks"):
            for kind in ("cold", "warm"):
                xs = page_full(s.get("pages"), p, kind)
                shown = f"{median_ok(xs):.2f}" if xs and median_ok(xs) == median_ok(xs) else (
                    f"> {a.timeout_page:g} s (not met)" if xs else "skipped")  # fmt: skip
                rows.append([f"{s['steps']:,}", f"/{p} first render, {kind} (median of {len(xs)})", shown, "-"])
    print_table(["steps", "stage", "wall s", "peak RSS MB"], rows, title="Stages, each size (one run each)")

    def per_size(fn):
        return [fn(s) for s in sizes]

    def proj(values: list[float], linear: bool = False) -> tuple[float, str]:
        if len(sizes) < 2:
            return float("nan"), "one size: not projected"
        below = float("-inf") if linear else a.constant_below  # what was written grows with steps: never noise
        return fit(steps[0], values[0], steps[-1], values[-1], a.project_to, below)

    stages = {n: per_size(lambda s, n=n: stage_s(s["stages"].get(n))) for n in ("ingest", "reopen", "summary")}
    rss = {n: per_size(lambda s, n=n: (s["stages"].get(n) or {}).get("rss_mb", float("nan"))) for n in ("summary",)}
    points = per_size(lambda s: float(s["points"]))
    tel_points = per_size(lambda s: float(s["truth"]["points"]["telemetry"]))
    tel_bytes = per_size(lambda s: float(s["truth"]["bytes"]["telemetry"]))
    log_bytes = per_size(lambda s: float(s["log_bytes"]))
    store = per_size(lambda s: float(s.get("store_bytes", float("nan"))))
    live_cold = per_size(lambda s: median_ok(page_full(s.get("pages"), "live", "cold")))
    live_warm = per_size(lambda s: median_ok(page_full(s.get("pages"), "live", "warm")))
    ranks_cold = per_size(lambda s: median_ok(page_full(s.get("pages"), "ranks", "cold")))
    ranks_warm = per_size(lambda s: median_ok(page_full(s.get("pages"), "ranks", "warm")))

    p_points, _ = proj(points, linear=True)
    p_tel_points, _ = proj(tel_points, linear=True)
    p_tel_bytes, _ = proj(tel_bytes, linear=True)
    p_log_bytes, _ = proj(log_bytes, linear=True)
    p_store, m_store = proj(store)
    p_ingest, m_ingest = proj(stages["ingest"])
    p_reopen, m_reopen = proj(stages["reopen"])
    p_summary, m_summary = proj(stages["summary"])
    p_rss, m_rss = proj(rss["summary"])
    p_lc, m_lc = proj(live_cold)
    p_lw, m_lw = proj(live_warm)
    p_rc, m_rc = proj(ranks_cold)
    p_rw, m_rw = proj(ranks_warm)

    def met(v, goal, below=True):
        if v != v:
            return None
        return v <= goal if below else v >= goal

    def timed(name: str) -> str:
        st = big["stages"].get(name)
        return fmt_s(st) if (not st or st["timed_out"] or st.get("rc")) else st["s"]

    b_tel = tel_bytes[-1] / tel_points[-1] if tel_points[-1] else float("nan")
    b_store = store[-1] / points[-1]
    rate = points[-1] / stages["ingest"][-1]  # nan if ingest did not finish
    lags = sorted(lag["lags"]) if lag else []
    unshown = (lag or {}).get("unshown") or []
    # a step never shown counts with the wait it had when watching ended (a lower bound): then so is p95
    every = sorted(lags + unshown)
    p95 = float(np.percentile(every, 95)) if every else float("nan")
    p95_lower = bool(unshown) and p95 >= min(unshown)
    grows = f"projected to {a.project_to:,} steps"
    rows = [
        ["logs, bytes per telemetry point", f"<= {GOAL['log_b_per_tel_point']:g}", b_tel,
         p_tel_bytes / p_tel_points if p_tel_points else float("nan"), yes(met(b_tel, GOAL["log_b_per_tel_point"]))],
        ["logs, bytes per point (all)", "-", log_bytes[-1] / points[-1], p_log_bytes / p_points, "-"],
        ["store, bytes per point (.midflight/)", f"<= {GOAL['store_b_per_point']:g}", b_store, p_store / p_points,
         yes(met(b_store, GOAL["store_b_per_point"]))],
        ["ingest, points/s", f">= {GOAL['ingest_points_s']:,.0f}", rate, p_points / p_ingest,
         yes(rate >= GOAL["ingest_points_s"])],  # an ingest past its timeout: not met
        ["ingest, wall s", "-", timed("ingest"), p_ingest, "-"],
        ["reopen: ingest again, new records", "0", str(big.get("reopen_records", "-")), "-",
         yes(None if big.get("reopen_records") is None else big["reopen_records"] == 0)],
        ["reopen: ingest again, wall s", "-", timed("reopen"), p_reopen, "-"],
        ["summary, wall s", f"<= {GOAL['summary_s']:g}", timed("summary"), p_summary,
         yes(stage_met(big["stages"].get("summary"), GOAL["summary_s"]))],
        ["summary again (reopen), wall s", f"<= {GOAL['summary_s']:g}", timed("summary_again"), "-",
         yes(stage_met(big["stages"].get("summary_again"), GOAL["summary_s"]))],
        rss_row(big["stages"].get("summary"), p_rss),
        *detection_rows(big),
        ["Live first render s, cold", f"<= {GOAL['live_load_s']:g}", page_text(a, big, "live", "cold"), p_lc,
         yes(page_met(big, "live", "cold", GOAL["live_load_s"]))],
        ["Live first render s, warm", f"<= {GOAL['live_load_s']:g}", page_text(a, big, "live", "warm"), p_lw,
         yes(page_met(big, "live", "warm", GOAL["live_load_s"]))],
        ["Ranks & devices first render s, cold", "loads", page_text(a, big, "ranks", "cold"), p_rc,
         yes(page_met(big, "ranks", "cold", float("inf")))],
        ["Ranks & devices first render s, warm", "loads", page_text(a, big, "ranks", "warm"), p_rw,
         yes(page_met(big, "ranks", "warm", float("inf")))],
        ["Ranks & devices names the straggler", "yes", ranks_text(big), "-", yes(ranks_ok(big))],
        ["live lag p95 s (while the run writes)", f"<= {GOAL['lag_p95_s']:g}", lag_text(lag, p95, p95_lower), "-",
         yes(None if lag is None else (met(p95, GOAL["lag_p95_s"]) or False))],
    ]  # fmt: skip
    if len(sizes) < 2:  # one size: nothing to project
        rows = [[*r[:3], "-", r[4]] for r in rows]
    world = big["truth"]["ranks"]
    print_table(
        ["goal", "target", f"measured ({world} ranks x {big['steps']:,} steps)", grows, "goal (measured)"],
        rows,
        title=f"Goals (issue 16), measured at {world} ranks x {big['steps']:,} steps and projected",
    )
    if len(sizes) > 1:
        prow = [
            ["points", points[0], points[-1], p_points, "linear (as written)"],
            ["log bytes", log_bytes[0], log_bytes[-1], p_log_bytes, "linear (as written)"],
            ["log bytes, telemetry", tel_bytes[0], tel_bytes[-1], p_tel_bytes, "linear (as written)"],
            ["store bytes", store[0], store[-1], p_store, m_store],
            ["ingest s", stages["ingest"][0], stages["ingest"][-1], p_ingest, m_ingest],
            ["reopen s", stages["reopen"][0], stages["reopen"][-1], p_reopen, m_reopen],
            ["summary s", stages["summary"][0], stages["summary"][-1], p_summary, m_summary],
            ["summary peak RSS MB", rss["summary"][0], rss["summary"][-1], p_rss, m_rss],
            ["Live cold s", live_cold[0], live_cold[-1], p_lc, m_lc],
            ["Live warm s", live_warm[0], live_warm[-1], p_lw, m_lw],
            ["Ranks cold s", ranks_cold[0], ranks_cold[-1], p_rc, m_rc],
            ["Ranks warm s", ranks_warm[0], ranks_warm[-1], p_rw, m_rw],
        ]
        print_table(
            ["cost", f"at {steps[0]:,} steps", f"at {steps[-1]:,} steps", f"at {a.project_to:,} steps", "fit"],
            prow,
            title=f"Projection: cost = a + b x steps through the two sizes (constant if it grew < "
            f"{a.constant_below:.0%}); a stage past its timeout has no number and is not projected",
        )
    if lag is not None:
        ap = lag.get("append_s") or [float("nan")]
        p50 = float(np.percentile(every, 50)) if every else float("nan")
        print(
            f"live lag: {len(lags)} steps shown, {len(unshown)} written and never shown while watched (counted with "
            f"their wait so far); p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(every, default=float('nan')):.2f} s; "
            f"Live's first render while writing {lag.get('load') or float('nan'):.2f} s; one step on every rank took "
            f"{np.median(ap) * 1e3:.0f} ms to append (median), one step every {a.lag_every:g} s\n"
        )
    return {"rows": rows}


def lag_text(lag: dict | None, p95: float, lower: bool) -> str | float:
    if lag is None:
        return "skipped"
    if lag.get("error"):
        return "failed: " + lag["error"][:60]
    if p95 != p95:
        return "no step written while watched"
    if lower:
        return f">= {p95:.2f} ({len(lag['unshown'])} steps never shown)"
    return p95


def page_text(a, size: dict, page: str, kind: str):
    xs = page_full(size.get("pages"), page, kind)
    if size.get("pages_error"):
        return "failed: " + size["pages_error"][:60]
    if not xs:
        return "skipped"
    m = median_ok(xs)
    return m if m == m else f"> {a.timeout_page:g} s (not met)"


def page_met(size: dict, page: str, kind: str, goal: float):
    """The median first render <= goal, every load counted (a load past its timeout: not met)."""
    xs = page_full(size.get("pages"), page, kind)
    if size.get("pages_error"):
        return False
    if not xs:
        return None
    return all(x == x for x in xs) and median_ok(xs) <= goal


def rss_row(stage: dict | None, projected: float) -> list:
    goal = GOAL["summary_rss_mb"]
    what = ["summary, peak RSS MB", f"<= {goal:g}"]
    if not stage:
        return [*what, "skipped", "-", "-"]
    if stage["timed_out"]:  # killed before its peak, perhaps: a lower bound
        return [
            *what,
            f">= {stage['rss_mb']:.0f} (killed at its timeout)",
            "-",
            "-" if stage["rss_mb"] <= goal else "NOT met",
        ]
    return [*what, stage["rss_mb"], projected, yes(stage["rss_mb"] <= goal)]


def detection_rows(size: dict) -> list[list]:
    """Straggler, false alarms, spike and overflow, from the summary's incidents against the planted truth."""
    truth, det = size["truth"], size.get("detection")
    planted = {"straggler": "straggler" in truth, "spike": "spike" in truth, "overflow": "overflow" in truth}
    if det is None:  # no summary to judge: what was planted was not found by it
        why = "no summary (it did not finish)"
        return [
            ["straggler found (right rank), delay in steps", "<= 30", why if planted["straggler"] else "not planted",
             "-", yes(False if planted["straggler"] else None)],
            ["false alarms on clean ranks", "0", why, "-", "-"],
            ["loss spike found", "yes", why if planted["spike"] else "not planted", "-",
             yes(False if planted["spike"] else None)],
            ["overflow streak found", "yes", why if planted["overflow"] else "not planted", "-",
             yes(False if planted["overflow"] else None)],
        ]  # fmt: skip
    kinds, delay = det["kinds"], GOAL["straggler_delay"]
    strag = kinds.get("straggler")
    return [
        ["straggler found (right rank), delay in steps", f"<= {delay}",
         "not planted" if not strag else ("not found" if not strag["found"] else strag["delay"]), "-",
         yes(None if not strag else strag["found"] and strag["delay"] <= delay)],
        ["false alarms on clean ranks", "0", f"{det['false_alarms']} (of {det['clean_ranks']:,} clean ranks)", "-",
         yes(det["false_alarms"] == 0)],
        ["loss spike found", "yes", found_text(kinds.get("spike")), "-", yes(found_ok(kinds.get("spike")))],
        ["overflow streak found", "yes", found_text(kinds.get("overflow")), "-", yes(found_ok(kinds.get("overflow")))],
    ]  # fmt: skip


def found_text(k: dict | None) -> str:
    if not k:
        return "not planted"
    return f"yes (detected {k['delay']} steps after onset)" if k["found"] else "no"


def found_ok(k: dict | None):
    return None if not k else k["found"]


def ranks_text(size: dict) -> str:
    pages_ = size.get("pages")
    if size.get("pages_error"):
        return "failed"
    if not pages_:
        return "skipped"
    return str(pages_["_ranks_worst"] or "no outlier shown")


def ranks_ok(size: dict):
    pages_, truth = size.get("pages"), size["truth"]
    if "straggler" not in truth:
        return None
    if size.get("pages_error"):
        return False
    if not pages_:
        return None
    w = pages_["_ranks_worst"] or ""
    return w.startswith(f"Worst: rank {truth['straggler']['rank']} ") and pages_["_ranks_errors"] == 0


# ----------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 nodes, 200 steps (projected from 100), 1 load each")
    ap.add_argument("--nodes", type=int, help="nodes of 8 GPUs (default 124: 992 ranks)")
    ap.add_argument("--steps", type=int, help="steps of the measured run (default 10,000)")
    ap.add_argument("--project-from", type=int, help="the small size for the projection (default steps / 10; 0: none)")
    ap.add_argument("--project-to", type=int, default=OPT_STEPS, help="project to this many steps")
    grew = "a cost that grew by less than this fraction between the sizes is projected as constant"
    ap.add_argument("--constant-below", type=float, default=CONSTANT_BELOW, help=grew)
    ap.add_argument("--telemetry-hz", type=float, default=0.2, help="NVML samples per second per GPU")
    ap.add_argument("--plant", default=",".join(DEFAULT_PLANT), help=f"comma-separated: {', '.join(PLANTS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold", type=int, help="cold loads per page (a fresh server each; default 2, quick 1)")
    ap.add_argument("--warm", type=int, help="warm reloads per page (default 3, quick 1)")
    ap.add_argument("--lag-samples", type=int, help="new steps seen on the Live page (default 30, quick 10)")
    ap.add_argument("--lag-every", type=float, default=1.0, help="seconds between the live writer's steps")
    ap.add_argument("--timeout-ingest", type=float, default=3600.0, help="seconds before ingest counts as not met")
    ap.add_argument("--timeout-summary", type=float, default=600.0, help="seconds for one summary")
    ap.add_argument("--timeout-page", type=float, default=60.0, help="seconds for one page's first render")
    ap.add_argument("--timeout-lag", type=float, default=120.0, help="seconds to watch the Live page for new steps")
    ap.add_argument("--skip-pages", action="store_true", help="no browser: no page loads, no live lag")
    ap.add_argument("--skip-lag", action="store_true", help="no live lag")
    ap.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the runs and server logs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    a.nodes = a.nodes or (16 if a.quick else 124)
    a.steps = a.steps or (200 if a.quick else 10_000)
    if a.project_from is None:
        a.project_from = a.steps // 2 if a.quick else a.steps // 10
    a.cold = a.cold or (1 if a.quick else 2)
    a.warm = a.warm or (1 if a.quick else 3)
    a.lag_samples = a.lag_samples or (10 if a.quick else 30)
    a.plant = () if a.plant in ("", "none") else tuple(p.strip() for p in a.plant.split(","))
    if a.nodes < 1 or a.steps < 10 or (a.project_from and not 10 <= a.project_from < a.steps):
        ap.error("need --nodes >= 1, --steps >= 10 and 10 <= --project-from < --steps (or 0)")
    sizes_steps = ([a.project_from] if a.project_from else []) + [a.steps]

    work = a.work or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        ap.error(f"{work} is not empty")
    extra = {"fleet": f"{a.nodes} nodes x 8 GPUs = {a.nodes * 8} ranks", "steps": " and ".join(map(str, sizes_steps))}
    extra["telemetry"] = f"{a.telemetry_hz:g} Hz"
    print_header("fleet end to end: write, ingest, reopen, summary, pages, live lag", machine_info(extra))
    note(f"working in {work}")
    sizes, lag = [], None
    try:
        with contextlib.ExitStack() as stack:
            browser = None
            if not a.skip_pages:
                from playwright.sync_api import sync_playwright

                pw = stack.enter_context(sync_playwright())
                browser = pw.chromium.launch(executable_path=dash.CHROMIUM, args=dash.CHROMIUM_ARGS)
                stack.callback(browser.close)
            for n in sizes_steps:
                sizes.append(measure_size(a, work, n, browser))
            big = sizes[-1]
            if browser is not None and not a.skip_lag and "run_dir" in big:
                lag = live_lag(a, browser, big, work)
        out = report(a, sizes, lag)
        if a.json:
            results = {"args": {k: str(v) for k, v in vars(a).items()}, "goals": out["rows"], "lag": lag}
            a.json.write_text(json.dumps(results, default=str, indent=1))
    finally:
        if a.keep or a.work:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
