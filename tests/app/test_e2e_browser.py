"""End to end: a real `midflight dashboard` server, a real CPU trainer writing a live run, and headless Chromium.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright. Without it these tests
skip, unless MIDFLIGHT_REQUIRE_BROWSER=1 (set by .ci/run, which installs it), where a
missing browser is a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from midflight import logbook
from midflight.logbook.record import annotations as ann_log
from midflight.logbook.record import records

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("MIDFLIGHT_CHROMIUM", "/usr/bin/chromium"))
LIVE = "live-cpu"
FAULTS = "opt-tiny-faults"
CONST, CONST_LR = "constant-lr", 6e-05
PAGES = ["", "live", "ranks", "lineage", "incidents", "energy", "compare"]
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"><b>bold</b> & done'

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - requirements.txt installs it
    sync_playwright = None

if sync_playwright is None or not CHROMIUM.exists():
    why = f"needs Playwright and Chromium at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("MIDFLIGHT_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"end-to-end tests are required here but cannot run: {why}")
    pytest.skip(why, allow_module_level=True)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def stop(proc: subprocess.Popen, sig: int, timeout: float = 30) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def logged_times(run_dir: Path) -> dict[int, float]:
    """step -> wall time rank 0 logged it (read from the run's own log: the ground truth)."""
    out: dict[int, float] = {}
    for path in sorted((run_dir / "segments").glob("*/rank-00000.jsonl")):
        for rec in records.iter_records(path):
            if rec.get("k") == "metrics" and "loss" in rec.get("names", []):
                for row in rec["rows"]:
                    out.setdefault(int(row[0]), float(row[1]))
    return out


# ----------------------------------------------------------------- fixtures: runs, trainer, server, browser
@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e") / "runs"
    root.mkdir()
    for name in (FAULTS, "tiny-rollback"):
        shutil.copytree(ROOT / "sample_runs" / name, root / name, ignore=shutil.ignore_patterns(".midflight"))
    ann_log.annotate(root / FAULTS, step=600, kind="note", text=XSS, author="e2e")
    run = logbook.init(root / CONST, name=CONST)  # a finished run whose LR never moves
    for i in range(50):
        run.log({"loss": 3.0 - 0.01 * i, "lr": CONST_LR, "grad_norm": 1.0 + 0.01 * i}, step=i)
    run.finish()
    return root


@pytest.fixture(scope="module")
def trainer(runs_root):
    """A real single-process CPU training run that keeps going for the whole module (~10 steps/s)."""
    run_dir = runs_root / LIVE
    cmd = [sys.executable, "-m", "midflight.trainer", "--model", "tiny", "--steps", "200000", "--run-dir", str(run_dir),
           "--name", LIVE, "--device", "cpu", "--data.seq_len=32", "--data.batch_size=4", "--checkpoint.every=25",
           "--log.print_every=1000", "--telemetry.hz=2",
           # a step of ~0.1 s, mostly asleep: a real run's pace, leaving the 2-core CI machine to the dashboard
           "--inject", "slow-rank@1-200000", "--faults.slow_rank_s=0.08"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = open(runs_root.parent / "midflight.trainer.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(logged_times(run_dir)) > 30 or proc.poll() is not None, 120, "the trainer's first steps")
        assert proc.poll() is None, (runs_root.parent / "midflight.trainer.log").read_text()[-3000:]
        yield run_dir
    finally:
        stop(proc, signal.SIGTERM)  # the trainer checkpoints and closes its logs
        log.close()


@pytest.fixture(scope="module")
def server(runs_root, trainer):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(runs_root.parent / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "midflight.app", str(runs_root), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def healthy():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(lambda: healthy() or proc.poll() is not None, 90, "the dashboard's /_stcore/health")
        assert proc.poll() is None, (runs_root.parent / "server.log").read_text()[-3000:]
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, signal.SIGINT)  # midflight dashboard stops Streamlit with it
        log.close()


@pytest.fixture(scope="module")
def browser():
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1500})
    pg = ctx.new_page()
    yield pg
    ctx.close()


def open_page(page, server: str, path: str, run: str):
    page.goto(f"{server}/{path}?run={run}")
    page.wait_for_selector('[data-testid="stAppViewContainer"]')
    page.wait_for_selector("h1", timeout=30000)
    return page


def idle(page) -> None:
    """Wait until the page's script run is over and its charts are drawn (a drag must not race a redraw)."""
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stApp]').getAttribute('data-test-script-state') === 'notRunning'",
        timeout=30000,
    )
    time.sleep(1.5)


def step_shown(page) -> int | None:
    """The Live header's step value (the first metric)."""
    try:
        text = page.locator('[data-testid="stMetricValue"]').first.inner_text(timeout=500)
    except Exception:
        return None
    digits = text.replace(",", "").strip()
    return int(digits) if digits.isdigit() else None


# Every drawn Plotly plot on screen, in page order: st.plotly_chart's and the in-place charts'
# (app/live_chart.py), and any in a same-origin iframe. Each: the plot (gd), its top-left in the page (x, y:
# for the mouse), its title. A plot of no size (a stale copy st.plotly_chart keeps) is left out.
PLOTS = """const plots = () => { const out = [];
    const add = (doc, frame) => { for (const gd of doc.querySelectorAll('.js-plotly-plot')) {
        if (!gd._fullLayout || !gd.querySelector('.main-svg')) continue;
        const r = gd.getBoundingClientRect();
        const f = frame ? frame.getBoundingClientRect() : {x: 0, y: 0, width: 1, height: 1};
        if (!(r.width > 0 && r.height > 0 && f.width > 0 && f.height > 0)) continue;
        const t = gd.querySelector('.gtitle');
        out.push({gd, el: frame || gd, x: f.x + r.x, y: f.y + r.y, title: t ? t.textContent : '?'}); } };
    add(document, null);
    for (const f of document.querySelectorAll('iframe')) { let d = null; try { d = f.contentDocument; } catch (e) {}
        if (d) add(d, f); }
    return out.sort((a, b) => a.el.compareDocumentPosition(b.el) & Node.DOCUMENT_POSITION_FOLLOWING ? -1 : 1); };"""


def plots_js(body: str, arg: str = "") -> str:
    """A page function with `plots()` in scope."""
    return f"({arg}) => {{ {PLOTS} {body} }}"


def plot_traces(page, chart_index: int = 0) -> list[dict]:
    """The data of the chart's drawn Plotly figure."""
    return page.evaluate(
        plots_js(
            """const p = plots()[i];
            return p ? p.gd._fullData.map(t => ({name: t.name, hovertext: t.hovertext || null})) : [];""",
            "i",
        ),
        chart_index,
    )


# ----------------------------------------------------------------- the tests
@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("run", [FAULTS, LIVE])
def test_every_page_loads_without_an_exception(page, server, path, run):
    open_page(page, server, path, run)
    page.wait_for_load_state("networkidle")
    time.sleep(1.5)  # let the page's first script run finish drawing
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator("h1").count() >= 1
    if path in ("live", "lineage"):
        wait_for(lambda: page.evaluate(plots_js("return plots().length;")) > 0, 20, "a chart")


def test_a_live_runs_new_steps_appear_within_2_seconds(page, server, trainer):
    open_page(page, server, "live", LIVE)
    wait_for(lambda: step_shown(page), 30, "the step in the Live header")
    lags, last = [], None
    deadline = time.time() + 25
    while time.time() < deadline and len(lags) < 15:
        s = step_shown(page)
        if s is not None and s != last:
            seen = time.time()
            logged = logged_times(trainer).get(s)
            if last is not None and logged is not None:
                lags.append(seen - logged)
            last = s
        time.sleep(0.05)
    assert len(lags) >= 8, f"the step moved only {len(lags)} times in 25 s"
    lags.sort()
    p80 = lags[int(0.8 * (len(lags) - 1))]
    assert p80 <= 2.0, f"lag from log() to the browser: {[round(x, 2) for x in lags]} s"


def test_click_a_point_of_a_live_run_then_save_creates_an_annotation_drawn_on_the_chart(page, server, trainer):
    open_page(page, server, "live", LIVE)  # live: the charts are redrawn every second while we click
    where = plots_js(
        """const p = plots()[0], gd = p && p.gd;
        if (!gd || !gd._fullData[0] || gd._fullData[0].x.length < 100) return null;
        const t = gd._fullData[0], k = Math.floor(t.x.length * 0.6), fl = gd._fullLayout;
        return [p.x + fl.xaxis._offset + fl.xaxis.l2p(t.x[k]), p.y + fl.yaxis._offset + fl.yaxis.l2p(t.y[k]),
                t.customdata[k]];"""
    )
    form = page.locator('[data-testid="stForm"]').first

    def click_a_point():  # a refresh that redraws the chart between hover and click swallows it: click again
        x, y, step = wait_for(lambda: page.evaluate(where), 30, "the loss chart")
        page.mouse.move(x - 3, y)
        page.mouse.move(x, y)
        time.sleep(0.2)
        page.mouse.click(x, y)
        try:
            form.wait_for(timeout=3000)
        except Exception:
            return None
        return step

    wait_for(click_a_point, 60, "the annotation form after clicking a point of the live chart", every=0.5)
    # a retried click can still arrive after the form opened (the chart was redrawn under the first one):
    # the newest selection re-opens the form, so wait until the selected step has held for 2 s
    held = {"text": None, "since": time.time()}

    def settled():
        now = page.get_by_text("Selected step").inner_text()
        if now != held["text"]:
            held.update(text=now, since=time.time())
        return time.time() - held["since"] >= 2.0

    wait_for(settled, 20, "the selection to settle", every=0.2)
    step = int(page.get_by_text("Selected step").inner_text().split("step ")[1])
    text = f"e2e note at step {step}"
    form.locator("textarea").fill(text)
    form.get_by_role("button", name="Save annotation").click()
    saved = wait_for(lambda: [a for a in ann_log.current(trainer).values() if a["text"] == text], 15, "the saved note")
    assert saved[0]["step"] == step and saved[0]["author"].endswith("(dashboard)")

    def drawn():
        marks = [t for t in plot_traces(page) if t["name"] == "annotations"]
        return marks and any(text in h for h in marks[0]["hovertext"])

    wait_for(drawn, 20, "the new annotation's marker on the loss chart")


def test_an_intervention_sent_from_the_ui_is_applied_by_the_live_trainer(page, server, trainer):
    open_page(page, server, "live", LIVE)
    page.get_by_text("Intervene in this run").click()
    page.get_by_label("why (kept in the audit record)").fill("e2e: calm the LR down")
    page.get_by_role("button", name="Review…").click()
    confirm = page.get_by_role("button", name="Confirm and send")
    confirm.wait_for(timeout=15000)
    assert not (trainer / "interventions.jsonl").exists()  # nothing is sent before the confirmation
    confirm.click()
    path = trainer / "interventions.jsonl"

    def applied():
        ops = list(records.iter_records(path)) if path.exists() else []
        return [op for op in ops if op.get("op") == "applied"]

    ops = wait_for(applied, 30, "the trainer's acknowledgement")
    reqs = [op for op in records.iter_records(path) if op.get("op") == "request"]
    assert reqs[0]["action"] == "lr_multiplier" and reqs[0]["params"] == {"factor": 0.5}
    assert reqs[0]["note"] == "e2e: calm the LR down" and reqs[0]["author"].endswith("(dashboard)")
    wait_for(lambda: page.get_by_text(f"applied at step {ops[0]['step']}").count() > 0, 20, "the page's 'applied'")


def test_annotation_html_is_shown_inert(page, server):
    open_page(page, server, "lineage", FAULTS)
    page.wait_for_load_state("networkidle")
    # the lineage curves: the chart whose annotation markers hold the planted text, found by that and not by its
    # place (the page's other charts arrive as their analyses finish: the goodput bars may come before it)
    chart = "const p = plots().find(p => p.gd._fullData.some(t => t.name === 'annotations' && (t.hovertext || [])" \
            ".some(h => h.includes('pwned'))));"  # fmt: skip
    hover_texts = plots_js(chart + "return p ? p.gd._fullData.find(t => t.name === 'annotations').hovertext : null;")
    marks = wait_for(lambda: page.evaluate(hover_texts), 30, "the lineage curves")
    assert any("&lt;script&gt;" in h for h in marks)  # escaped for Plotly's hover
    # hover the annotation's marker: Plotly shows the text typed, as text
    where = plots_js(
        chart
        + """const gd = p && p.gd;
        const t = gd && gd._fullData.find(t => t.name === 'annotations'); if (!t) return null;
        const k = t.hovertext.findIndex(h => h.includes('pwned')), fl = gd._fullLayout;
        return [p.x + fl.xaxis._offset + fl.xaxis.l2p(t.x[k]), p.y + fl.yaxis2._offset + fl.yaxis2.l2p(t.y[k])];"""
    )
    x, y = wait_for(lambda: page.evaluate(where), 20, "the annotation marker's position")
    page.mouse.move(x, y)
    hover_text = plots_js("return plots().map(p => (p.gd.querySelector('.hoverlayer') || {}).textContent).join(' ');")
    hover = wait_for(lambda: page.evaluate(hover_text).strip(), 10, "the hover label")
    assert "<script>window.__pwned=1</script>" in hover and "<b>bold</b>" in hover
    for frame in page.frames:  # the page and each chart's iframe
        assert frame.evaluate("window.__pwned") is None  # neither the <script> nor the onerror handler ran
        assert frame.locator("b", has_text="bold").count() == 0  # no <b> element was made from the text


RANGES = plots_js("return plots().map(p => p.gd._fullLayout.xaxis.range);")


def zoomed_to(page) -> tuple[float, float]:
    caption = page.get_by_text("Zoomed to step")
    caption.wait_for(timeout=15000)
    lo, hi = caption.inner_text().split("step ", 1)[1].split(" (")[0].split(" – ")
    return float(lo.replace(",", "")), float(hi.replace(",", ""))


def assert_charts_show(page, lo: float, hi: float, n: int = 6) -> None:
    def shown():
        ranges = page.evaluate(RANGES)[:n]
        return len(ranges) == n and all(abs(a - lo) <= 1 and abs(b - hi) <= 1 for a, b in ranges) and ranges

    wait_for(shown, 20, f"every chart to show steps {lo}..{hi}: {page.evaluate(RANGES)[:n]}")


def test_a_box_selection_zooms_every_chart_of_the_run(page, server):
    open_page(page, server, "live", FAULTS)
    wait_for(lambda: len(page.evaluate(RANGES)) >= 6, 30, "the charts")
    page.get_by_text("Select ranges", exact=True).click()  # charts drag-select instead of answering clicks
    idle(page)
    box = page.evaluate(
        plots_js(
            """const p = plots()[0], fl = p.gd._fullLayout;
            return [p.x + fl.xaxis._offset + fl.xaxis._length * 0.2, p.x + fl.xaxis._offset + fl.xaxis._length * 0.5,
                    p.y + fl.yaxis._offset + fl.yaxis._length * 0.3, p.y + fl.yaxis._offset + fl.yaxis._length * 0.7,
                    fl.dragmode];"""
        )
    )
    assert box[4] == "select"
    page.mouse.move(box[0], box[2])
    page.mouse.down()
    page.mouse.move((box[0] + box[1]) / 2, (box[2] + box[3]) / 2, steps=5)
    page.mouse.move(box[1], box[3], steps=5)
    page.mouse.up()
    page.get_by_role("button", name="Zoom to this range").click(timeout=15000)
    lo, hi = zoomed_to(page)
    assert 100 < lo < hi < 500  # 20 % .. 50 % of a 700-step run
    assert_charts_show(page, lo, hi)
    page.get_by_role("button", name="Reset zoom").click()
    wait_for(lambda: page.get_by_text("Zoomed to step").count() == 0, 15, "the zoom to be reset")


def test_a_zoom_survives_live_refreshes(page, server, trainer):
    open_page(page, server, "live", LIVE)
    wait_for(lambda: step_shown(page) and step_shown(page) > 60, 60, "60 steps of the live run")
    page.get_by_text("Zoom to…").click()
    page.get_by_label("from step").fill("10")
    page.get_by_label("to step").fill("50")
    page.get_by_role("button", name="Apply zoom").click()
    assert zoomed_to(page) == (10.0, 50.0)
    assert_charts_show(page, 10, 50)
    before = step_shown(page)
    wait_for(lambda: (step_shown(page) or 0) > before + 5, 20, "the live refresh to go on")
    assert_charts_show(page, 10, 50)  # refreshed with new data, and still zoomed


# ----------------------------------------------------------------- no flicker; a constant series shows its value
# each chart drawn on screen (a chart with no data yet counts: it is drawn, empty): its title, the tag this
# test put on its plot element (null: a plot drawn since), and the last x of its first trace (the newest step)
SHOWN = plots_js(
    """return plots().map(p => { const t = p.gd._fullData[0];
        return [p.title, p.gd.__midflightTag || null, t && t.x.length ? Number(t.x[t.x.length - 1]) : null]; });"""
)
TAG = plots_js("plots().forEach(p => { p.gd.__midflightTag = p.title; });")


def test_live_refreshes_keep_every_chart_on_screen(page, server, trainer):
    """While the page refreshes every second, every chart stays on screen and is updated in place.

    Each plot on screen is tagged, then the page is sampled at 40 moments over ~15 s of refreshes: each
    time every chart must be there, drawn by the tagged plot (the element on screen before the refreshes,
    not one mounted since), and by the end the loss chart shows newer steps. A chart that a refresh replaces
    (st.plotly_chart, whose identity is a hash of its figure) is blank from the new element's mount until
    its first draw; how long depends on the machine's load, so sampling what is visible catches that only
    sometimes, but a replaced element is caught every time."""
    open_page(page, server, "live", LIVE)
    wait_for(lambda: step_shown(page), 30, "the step in the Live header")
    wait_for(lambda: len(page.evaluate(SHOWN)) >= 8, 30, "the Live charts")
    time.sleep(3)
    page.evaluate(TAG)
    before = page.evaluate(SHOWN)
    full = sorted(title for title, _, _ in before)
    assert len(full) >= 8 and len(set(full)) == len(full), full  # each chart once: no hidden copy counted
    first = step_shown(page)
    samples = []
    for i in range(40):
        time.sleep(0.1 + 0.37 * (i % 3))  # moments spread over the refresh cycle
        samples.append(page.evaluate(SHOWN))
    assert (step_shown(page) or 0) > (first or 0) + 3, "the page did not refresh while sampled"
    replaced = [(i, sorted(t for t, tag, _ in s if tag != t)) for i, s in enumerate(samples)]
    replaced = [r for r in replaced if r[1]]
    assert not replaced, f"charts drawn by a new plot element, not updated in place (sample, titles): {replaced}"
    missing = [(i, sorted(set(full) - {t for t, _, _ in s})) for i, s in enumerate(samples)]
    missing = [m for m in missing if m[1]]
    assert not missing, f"charts missing during refreshes (sample, titles): {missing}"
    newest = {t: x for t, _, x in before}
    grown = [t for t, _, x in samples[-1] if x is not None and newest[t] is not None and x > newest[t]]
    assert "loss" in grown, f"the refreshes brought no new steps: {newest} -> {samples[-1]}"


def test_a_constant_series_is_drawn_around_its_value(page, server):
    open_page(page, server, "live", CONST)
    ticks = plots_js(
        """const p = plots().find(p => p.title.startsWith('learning rate')); if (!p) return null;
        const ticks = [...p.gd.querySelectorAll('.ytick text')].map(t => t.textContent);
        return {range: p.gd._fullLayout.yaxis.range, ticks: ticks};"""
    )
    try:
        got = wait_for(lambda: page.evaluate(ticks), 30, "the learning-rate chart")
    except AssertionError:
        raise AssertionError(
            f"no learning-rate chart among {page.evaluate(SHOWN)}: {page.inner_text('body')[:800]}"
        ) from None
    lo, hi = got["range"]
    assert lo < CONST_LR < hi and hi - lo <= 0.5 * CONST_LR, got  # around the value, not -1..1
    values = [float(t.replace("\u2212", "-")) for t in got["ticks"] if t.strip()]
    assert len(values) >= 2 and all(lo <= v <= hi for v in values), got
    assert min(abs(v - CONST_LR) for v in values) <= 0.1 * CONST_LR, got  # a tick reads (about) the value


# ----------------------------------------------------------------- a fleet-shaped run: 512 ranks
@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory):
    """Its own server over one generated run of 64 nodes x 8 GPUs (512 ranks) x 240 steps, ingested first."""
    from benchmarks.fleet_run import write_fleet_run
    from midflight.logbook.store import ingest

    root = tmp_path_factory.mktemp("fleet") / "runs"
    truth = write_fleet_run(root / "fleet", nodes=64, gpus_per_node=8, steps=240, telemetry_hz=0.01, seed=5)
    store, _ = ingest.open_run(root)
    store.close()
    port = free_port()
    log = open(root.parent / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "midflight.app", str(root), "--port", str(port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url) or proc.poll() is not None, 90, "the fleet dashboard")
        assert proc.poll() is None, (root.parent / "server.log").read_text()[-3000:]
        yield url, truth
    finally:
        stop(proc, signal.SIGINT)
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_the_per_rank_view_of_a_512_rank_run_shows_the_planted_straggler(page, fleet_server):
    url, truth = fleet_server
    s = truth["straggler"]
    open_page(page, url, "ranks", "fleet")
    heat = plots_js(
        """const p = plots()[0], gd = p && p.gd; if (!gd || gd._fullData[0].type !== 'heatmap') return null;
        const t = gd._fullData[0]; return {rows: t.y.length, z: t.z.map(r => Math.max(...r.filter(v => v !== null))),
                y: t.y, drawn: !!gd.querySelector('.hm, image')};"""
    )
    got = wait_for(lambda: page.evaluate(heat), 60, "the step-time heatmap")
    assert got["rows"] == 512 and got["drawn"]
    hottest = max(range(512), key=lambda i: got["z"][i])
    assert got["y"][hottest] == f"rank {s['rank']}"  # the one bright stripe is the straggler's
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30000)  # the outlier table (a canvas)
    worst = f"Worst: rank {s['rank']} on {s['host']}"
    line = wait_for(lambda: page.get_by_text(worst).count() and page.get_by_text(worst).first.inner_text(), 30, worst)
    assert f"since step {s['first_step']:,}" in line, line
    assert page.locator('[data-testid="stException"]').count() == 0


# ----------------------------------------------------------------- runs from a new user's own stack
PLAIN = """
import sys, midflight
run = midflight.init(sys.argv[1], name="plain loop", config={"lr": 0.1})
for step in range(1, 61):
    loss = 2.0 / (1 + 0.05 * step) * (20.0 if step == 40 else 1.0)  # a planted spike at 40
    run.log({"train/loss": loss, "train/lr": 0.1, "train/grad_norm": 1.0 + (30.0 if step == 40 else 0.0)}, step=step)
run.finish()
"""
STACKS = {  # run -> how it is written: the integrations' own runs (tests/integrations/runs.py), a plain loop
    "hf": "from tests.integrations.runs import hf_run; hf_run(sys.argv[1])",
    "lightning": "from tests.integrations.runs import lightning_run; lightning_run(sys.argv[1])",
    "plain": PLAIN,
}


@pytest.fixture(scope="module")
def stack_server(tmp_path_factory):
    """A dashboard over three runs recorded as a new user records them: a Hugging Face Trainer with
    MidflightCallback, a Lightning Trainer with MidflightLogger, and a plain loop logging `train/*` names;
    each with a loss spike planted at step 40."""
    root = tmp_path_factory.mktemp("stacks") / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    script = "import sys\nroot = sys.argv[1]\n"  # one process writes the three (torch and friends load once)
    for name, code in STACKS.items():
        script += f"sys.argv[1] = root + '/{name}'\n{code}\n"
    out = subprocess.run([sys.executable, "-c", script, str(root)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    port = free_port()
    log = open(root.parent / "server.log", "w")
    cmd = [sys.executable, "-m", "midflight.app", str(root), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url) or proc.poll() is not None, 90, "the dashboard")
        assert proc.poll() is None, (root.parent / "server.log").read_text()[-3000:]
        yield url
    finally:
        stop(proc, signal.SIGINT)
        log.close()


def header_value(page, label: str) -> str | None:
    metric = page.locator('[data-testid="stMetric"]').filter(has_text=label)
    try:
        return metric.first.locator('[data-testid="stMetricValue"]').inner_text(timeout=500).strip()
    except Exception:
        return None


@pytest.mark.parametrize("run", list(STACKS))
def test_a_new_users_run_shows_a_full_live_page(page, stack_server, run):
    """Whatever the stack named them (`loss`/`learning_rate` for HF, `train_loss`/`lr` for Lightning, `train/*`
    for the plain loop), the Live page draws loss, learning rate and grad norm, and the spike is an incident."""
    open_page(page, stack_server, "live", run)
    charts = plots_js("return plots().map(p => ({title: p.title, n: Math.max(0, ...p.gd._fullData.map(t => "
                      "(t.x || []).length))}));")  # fmt: skip

    def drawn():
        got = {c["title"].split(" (")[0].split(" ·")[0]: c["n"] for c in page.evaluate(charts)}
        return got if all(got.get(t, 0) >= 30 for t in ("loss", "grad norm", "learning rate")) else None

    got = wait_for(drawn, 60, f"the loss, grad norm and learning rate charts of {run}", every=0.5)
    assert got["loss"] >= 30
    incidents = wait_for(lambda: (v := header_value(page, "open incidents")) not in (None, "…") and v, 60, "incidents")
    assert int(incidents) >= 1, incidents  # the planted spike
    assert page.locator('[data-testid="stException"]').count() == 0
