"""Exporters: the Markdown, HTML, Parquet and CSV logbooks of real runs (real DuckDB, real files, no mocks)."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from midflight import logbook
from midflight.logbook.exporters import export, export_bytes
from midflight.logbook.exporters.png import PNG_SIGNATURE
from midflight.logbook.present.text import md
from midflight.logbook.record import segments
from midflight.logbook.report import incidents as incident_report
from midflight.logbook.store import queries

from .proc_helpers import ROOT, cli

SAMPLE = ROOT / "sample_runs" / "opt-tiny-faults"
RUN = "opt-tiny-faults"
XSS = "<script>alert(1)</script> | **bold**"
CHROMIUM = Path(os.environ.get("MIDFLIGHT_CHROMIUM", "/usr/bin/chromium"))


def copy_sample(dest: Path) -> Path:
    """The sample run copied without its store: nothing is ever written into sample_runs/."""
    run_dir = dest / RUN
    shutil.copytree(SAMPLE, run_dir, ignore=shutil.ignore_patterns(".midflight"))
    return run_dir


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    run_dir = copy_sample(tmp_path_factory.mktemp("sample"))
    store, _ = logbook.open_run(run_dir)
    yield run_dir, store
    store.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The sample with an annotation that tries to inject markup, HTML and a table column."""
    run_dir = copy_sample(tmp_path_factory.mktemp("hostile"))
    logbook.annotate(run_dir, step=320, text=XSS, kind="note", author="<img src=x onerror=alert(2)>")
    store, _ = logbook.open_run(run_dir)
    yield run_dir, store
    store.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pipes(line: str) -> int:
    """Table column separators in a Markdown line: pipes not escaped with a backslash."""
    return len(re.findall(r"(?<!\\)\|", line))


# ----------------------------------------------------------------- markdown
def test_markdown_has_every_segment_incident_and_annotation_and_its_pngs(sample, tmp_path):
    run_dir, store = sample
    out = tmp_path / "book" / "faults.md"
    paths = export(store, RUN, "markdown", out)
    text = out.read_text()
    assert paths[0] == out and text.startswith("# Logbook: ")

    seg_ids = list(queries.segments(store, RUN)["segment_id"])
    assert len(seg_ids) == 3
    for sid in seg_ids:
        assert md(sid) in text
    assert "## Chronicle" in text and text.count("\n### ") >= 3  # one chronicle entry per segment

    incidents = incident_report.incidents(store, RUN)
    assert incidents, "the sample run has incidents"
    table = text.split("## Incidents", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == len(incidents)
    for inc in incidents:
        steps = f"{inc.start_step}–{inc.end_step}" if inc.end_step != inc.start_step else f"{inc.start_step}"
        assert any(md(inc.kind) in row and f"| {steps} |" in row for row in rows), (inc.kind, inc.start_step)

    notes = queries.annotations(store, RUN)
    assert len(notes) == 4
    for t in notes["text"]:
        assert md(t) in text
    assert "rewind" in text and "applied" in text  # the intervention
    assert "## Energy and CO2eq" in text and "481 g/kWh" in text
    assert "351–379 (29)" in text and "501–529 (29)" in text  # wasted compute of both abandoned branches

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {Path(link).name for link in links} == {
        "loss.png",
        "grad_norm.png",
        "lr.png",
        "loss_scale.png",
        "restart_tree.png",
        "goodput.png",
    }
    for link in links:
        assert not Path(link).is_absolute() and link.startswith("faults_files/")
        png = out.parent / link
        assert png in paths and png.stat().st_size > 10_000
        w, h = png_size(png)
        assert w >= 600 and h >= 150


def test_markdown_escapes_hostile_text(hostile, tmp_path):
    _, store = hostile
    out = tmp_path / "hostile.md"
    export(store, RUN, "markdown", out)
    text = out.read_text()
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;alert\\(1\\)&lt;/script&gt; \\| \\*\\*bold\\*\\*" in text
    table = text.split("## Annotations", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 5  # header, rule, 5 annotations
    assert {pipes(ln) for ln in lines} == {pipes(lines[0])}  # the text added no column


def test_markdown_escaping_rules():
    assert md("a|b") == "a\\|b"
    assert md("`x`") == "\\`x\\`"
    assert md("[link](javascript:alert(1))") == "\\[link\\]\\(javascript\\:alert\\(1\\)\\)"
    assert md("# not a heading") == "\\# not a heading"
    assert md("1. not a list") == "1\\. not a list"
    assert md("line one\n\nline two") == "line one<br>line two"
    assert md("$x$ & <b>") == "\\$x\\$ &amp; &lt;b&gt;"


# ----------------------------------------------------------------- html
def test_html_is_one_escaped_self_contained_page(hostile, tmp_path):
    _, store = hostile
    out = tmp_path / "page.html"
    export(store, RUN, "html", out)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert len(re.findall(r"plotly\.js v\d", page)) == 1  # plotly.js inlined once, for every chart
    assert "<script src" not in page and '<link rel="stylesheet"' not in page  # nothing to fetch
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; | **bold**" in page
    assert "<img src=x" not in page
    assert page.count('class="plotly-graph-div"') == 6  # loss, grad norm, LR, loss scale, restart tree, goodput


def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        why = f"needs Playwright and Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("MIDFLIGHT_REQUIRE_BROWSER") == "1":
            raise RuntimeError(f"browser tests are required here but cannot run: {why}")
        pytest.skip(why)
    return sync_playwright


@pytest.mark.slow
def test_html_renders_in_chromium_offline_without_errors(hostile, tmp_path):
    sync_playwright = browser_or_skip()
    _, store = hostile
    out = tmp_path / "page.html"
    export(store, RUN, "html", out)
    errors, requests, dialogs = [], [], []
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("request", lambda req: requests.append(req.url))
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(out.as_uri(), wait_until="load")
            page.wait_for_function(
                "() => document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length > 0", timeout=30000
            )
            graphs = page.evaluate("() => document.querySelectorAll('.js-plotly-plot').length")
            traces = page.evaluate("() => document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length")
            body = page.evaluate("() => document.body.innerText")
            injected = page.evaluate(
                "() => document.querySelectorAll('img').length"
                " + [...document.scripts].filter(s => s.src || s.textContent.trim() === 'alert(1)').length"
            )
            page.wait_for_timeout(300)  # anything the page would still do (a deferred script, an alert)
        finally:
            browser.close()
    assert errors == []
    assert graphs == 6 and traces >= 6  # the goodput bars too
    assert dialogs == []
    assert [u for u in requests if not u.startswith("file://")] == []
    assert XSS in body  # shown as the characters typed
    assert injected == 0  # no <img> and no <script> element came from the data


# ----------------------------------------------------------------- parquet and csv
def read_table(path: Path) -> pd.DataFrame:
    con = duckdb.connect()
    reader = "read_parquet" if path.suffix == ".parquet" else "read_csv"
    return con.execute(f"SELECT * FROM {reader}(?)", [str(path)]).df()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_tables_round_trip(sample, tmp_path, fmt):
    _, store = sample
    out = tmp_path / fmt
    paths = export(store, RUN, fmt, out)
    assert sorted(p.name for p in paths) == sorted(
        f"{t}.{fmt}"
        for t in ("metrics", "events", "telemetry", "segments", "annotations", "interventions", "incidents")
    )
    cur = store.cursor()
    metrics = read_table(out / f"metrics.{fmt}")
    assert list(metrics.columns) == ["run_id", "segment_id", "rank", "step", "name", "value", "wall_time", "effective"]
    assert len(metrics) == cur.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [RUN]).fetchone()[0]
    assert metrics["effective"].dtype == bool and 0 < metrics["effective"].sum() < len(metrics)
    for name in ("loss", "step_time_s", "tokens"):
        mine = metrics[(metrics["name"] == name) & metrics["effective"]]
        assert len(mine) == len(queries.series(store, RUN, name, rank=None, which="effective")), name
        assert len(metrics[metrics["name"] == name]) == len(queries.series(store, RUN, name, rank=None, which="all"))
    for table, expected in (
        ("events", cur.execute("SELECT count(*) FROM events WHERE run_id = ?", [RUN]).fetchone()[0]),
        ("telemetry", cur.execute("SELECT count(*) FROM telemetry WHERE run_id = ?", [RUN]).fetchone()[0]),
        ("segments", 3),
        ("annotations", 4),
        ("interventions", 1),
        ("incidents", len(incident_report.incidents(store, RUN))),
    ):
        assert len(read_table(out / f"{table}.{fmt}")) == expected, table
    segs = read_table(out / f"segments.{fmt}")
    assert list(segs["resume_step"].dropna().astype(int)) == [350, 500]
    assert set(segs["end_reason"]) == {"crashed", "rewound", "completed"}


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_tables_keep_nan_and_inf(tmp_path, fmt):
    run_dir = tmp_path / "odd"
    with logbook.init(run_dir, name="odd", config={}) as run:
        for s, v in enumerate([1.0, float("nan"), float("inf"), float("-inf"), 2.5], start=1):
            run.log({"loss": v}, step=s)
    store, _ = logbook.open_run(run_dir)
    try:
        export(store, "odd", fmt, tmp_path / "out")
    finally:
        store.close()
    loss = read_table(tmp_path / "out" / f"metrics.{fmt}").sort_values("step")["value"].tolist()
    assert loss[0] == 1.0 and math.isnan(loss[1]) and loss[2] == math.inf and loss[3] == -math.inf
    assert loss[4] == 2.5
    if fmt == "csv":
        assert {"nan", "inf", "-inf"} <= set(re.split(r"[,\n]", (tmp_path / "out" / "metrics.csv").read_text()))


# ----------------------------------------------------------------- downloads
def test_export_bytes_for_the_dashboard(sample):
    _, store = sample
    name, mime, data = export_bytes(store, RUN, "markdown")
    assert (name, mime) == ("opt-tiny-faults_logbook_markdown.zip", "application/zip")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert "opt-tiny-faults_logbook.md" in names
        assert "opt-tiny-faults_logbook_files/loss.png" in names
        assert zf.read("opt-tiny-faults_logbook_files/loss.png")[:8] == PNG_SIGNATURE
    name, mime, data = export_bytes(store, RUN, "html")
    assert (name, mime) == ("opt-tiny-faults_logbook.html", "text/html") and data.startswith(b"<!DOCTYPE html>")
    for fmt in ("parquet", "csv"):
        name, mime, data = export_bytes(store, RUN, fmt)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert f"opt-tiny-faults_{fmt}/metrics.{fmt}" in zf.namelist()
    with pytest.raises(ValueError, match="unknown export format 'pdf'"):
        export_bytes(store, RUN, "pdf")


# ----------------------------------------------------------------- a run with no metrics
def test_a_run_with_only_segments_and_annotations(tmp_path):
    run_dir = tmp_path / "lineage-only"
    for sid, parent, resume in (("seg-a", None, None), ("seg-b", "seg-a", 100)):
        header = segments.build_header(
            run_dir,
            segment_id=sid,
            name="lineage only",
            config={"lr": 1e-3 if parent else 2e-3},
            parent=parent,
            resume_step=resume,
            reason="restarted by hand" if parent else None,
            world_size=1,
        )
        segments.write_header(run_dir, header)
    logbook.annotate(run_dir, step=50, text="nothing was logged, <only> notes", kind="note", author="me")
    store, _ = logbook.open_run(run_dir)
    try:
        md_paths = export(store, "lineage-only", "markdown", tmp_path / "out" / "book.md")
        html_paths = export(store, "lineage-only", "html", tmp_path / "out" / "book.html")
    finally:
        store.close()
    text = md_paths[0].read_text()
    assert "seg-a" in text and "seg-b" in text and md("nothing was logged, <only> notes") in text
    assert "no curves to draw" in text and "No metrics, so no incidents" in text
    assert [p.name for p in md_paths[1:]] == ["restart_tree.png"]
    page = html_paths[0].read_text()
    assert "nothing was logged, &lt;only&gt; notes" in page and page.count('class="plotly-graph-div"') == 1


# ----------------------------------------------------------------- the command line
def test_cli_export_and_its_errors(tmp_path):
    run_dir = copy_sample(tmp_path)
    out = cli("export", "markdown", run_dir, "-o", tmp_path / "x" / "book.md")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x" / "book.md").is_file() and str(tmp_path / "x" / "book.md") in out.stdout
    assert "drawing loss.png" in out.stderr  # progress goes to stderr

    folder = cli("export", "csv", tmp_path, "--run", RUN, "-o", tmp_path / "tables", "-q")
    assert folder.returncode == 0, folder.stderr
    assert (tmp_path / "tables" / "metrics.csv").is_file() and folder.stderr == ""

    for args, message in (
        (("export", "pdf", run_dir, "-o", tmp_path / "y"), "error: unknown export format 'pdf'"),
        (("export", "html", tmp_path / "missing", "-o", tmp_path / "y.html", "-q"), "error: run directory"),
        (("export", "html", tmp_path, "--run", "nope", "-o", tmp_path / "y.html", "-q"), "error: no run named 'nope'"),
        (("export", "html", run_dir, "-o", tmp_path, "-q"), "is a directory"),
        (("export", "markdown", run_dir, "-o", tmp_path / "x" / "book.md" / "in.md", "-q"), "cannot write"),
        (("export", "csv", run_dir, "-o", tmp_path / "x" / "book.md", "-q"), "cannot write"),
    ):
        bad = cli(*args)
        assert bad.returncode == 2, (args, bad.stderr)
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], bad.stderr


@pytest.mark.parametrize("values", [[], [0.0, -1.0, math.nan]])
def test_a_log_chart_with_no_positive_value_still_draws(values):
    """Found by the fuzz suite: a grad-norm chart (log y) whose effective curve was empty, with a marker,
    made matplotlib raise 'Data cannot be log-scaled' and the whole Markdown export fail."""
    from midflight.logbook.exporters.content import Chart, Curve
    from midflight.logbook.exporters.png import chart_png
    from midflight.logbook.present.markers import Marker

    steps = list(range(len(values)))
    chart = Chart("grad_norm", "Gradient norm", [Curve("grad_norm", np.array(steps), np.array(values))], log_y=True)
    assert chart_png(chart, [Marker("restart", 5, "a restart")]).startswith(PNG_SIGNATURE)


def test_the_logbook_charts_a_runs_own_names_for_loss_lr_and_grad_norm(tmp_path):
    """A Hugging Face-style run (`train/loss`, `learning_rate`, `grad_norm`): its exported logbook has the loss,
    gradient-norm and learning-rate charts, titled with the run's own names (logbook.roles), not none at all."""
    from midflight.logbook.exporters import content
    from midflight.logbook.store import memory
    from midflight.logbook.store.ingest import ingest

    with logbook.init(tmp_path / "hf", name="hf") as run:
        for step in range(1, 41):
            run.log({"train/loss": 3.0 / step, "learning_rate": 1e-3, "grad_norm": 1.0 + step % 3}, step=step)
    store = memory()
    ingest(store, [tmp_path / "hf"])
    charts = content.charts(store, "hf", queries.metric_names(store, "hf"), buckets=100)
    assert [(c.metric, c.title) for c in charts] == [
        ("loss", "Loss (train/loss)"),
        ("grad_norm", "Gradient norm (before clipping)"),
        ("lr", "Learning rate (learning_rate)"),
    ]
    assert len(charts[0].curves[0].step) == 40
    book = export(store, "hf", "markdown", tmp_path / "out" / "book.md")[0].read_text()
    assert "![Loss \\(train/loss\\)](book_files/loss.png)" in book  # Markdown-escaped user text
    assert "book_files/lr.png" in book and "book_files/grad_norm.png" in book
