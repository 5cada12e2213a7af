"""The goodput ledger against runs with known answers: written through the real Recorder (its wall clock set by
the test, so every second is known), ingested into a real DuckDB store, read by report.goodput.

Run "ledger": segment A (t=1000..1041) logs steps 1..16 at 1 s a step, saves a 2 s checkpoint at step 5 and a
1 s one at step 12, stalls 20 s before step 11, and crashes at 1041; segment B resumes from 12 at t=1050
(9 s of restart gap), loads the checkpoint in 3 s, has an overflow-skipped step 15, saves 10 s at step 17 (a long
gap that is a save, not a stall) and 1.5 s at step 20, and finishes at 1074. The expected split is worked out
second by second in `EXPECTED`.
"""

import json
import subprocess
import sys
import time as real_time
from pathlib import Path

import pytest

from midflight import logbook
from midflight.logbook.analysis import goodput as goodput_analysis
from midflight.logbook.present.summary import format_text
from midflight.logbook.record import recorder, segments
from midflight.logbook.report import goodput
from midflight.logbook.report.summary import summarize
from midflight.logbook.store import ingest

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    """The recorder's `time` module with a wall clock the test sets; everything else is the real module."""

    def __init__(self, t: float):
        self.t = t

    def time(self) -> float:
        return self.t

    def __getattr__(self, name):
        return getattr(real_time, name)


@pytest.fixture
def clock(monkeypatch):
    c = Clock(0.0)
    monkeypatch.setattr(recorder, "time", c)
    monkeypatch.setattr(segments, "time", c)
    return c


def _log(run, clock, step, t, **extra):
    clock.t = t
    run.log({"loss": 1.0, **extra}, step=step)


def _event(run, clock, kind, step, **fields):
    run.event(kind, step=step, **fields)


def write_ledger_run(path: Path, clock: Clock) -> None:
    clock.t = 1000.0
    a = logbook.init(path, name="ledger", segment_id="seg-a", flush_every=0.05)
    for k in range(1, 6):
        _log(a, clock, k, 1000.0 + k)
    _event(a, clock, "checkpoint_saved", 5, seconds=2.0)
    for k in range(6, 11):
        _log(a, clock, k, 1002.0 + k)  # step 6 at 1008: 1 s of step + the 2 s save
    _log(a, clock, 11, 1033.0)  # a 21 s gap for one step: a 20 s stall
    _log(a, clock, 12, 1034.0)
    _event(a, clock, "checkpoint_saved", 12, seconds=1.0)  # the checkpoint B resumes from
    _log(a, clock, 13, 1036.0)
    for k in range(14, 17):
        _log(a, clock, k, 1023.0 + k)
    clock.t = 1041.0
    a.finish("crashed", exit_code=1, error="RuntimeError: NCCL timeout")

    clock.t = 1050.0
    b = logbook.init(path, name="ledger", segment_id="seg-b", resume_step=12, reason="restart after crash")
    _event(b, clock, "restart", 12, load_seconds=3.0)
    _log(b, clock, 13, 1055.0)
    for k in range(14, 18):
        _log(b, clock, k, 1042.0 + k)
    _event(b, clock, "overflow", 15, skipped=True, scale_before=4.0, scale_after=2.0)
    _event(b, clock, "checkpoint_saved", 17, seconds=10.0)  # a slow save: an 11 s gap that is not a stall
    for k in range(18, 21):
        _log(b, clock, k, 1052.0 + k)
    _event(b, clock, "checkpoint_saved", 20, seconds=1.5)
    clock.t = 1074.0
    b.finish("completed")


# seconds per category, worked out by hand (module docstring)
EXPECTED = {
    "seg-a": {"productive": 12.0, "checkpoint": 3.0, "stall": 20.0, "wasted": 6.0, "downtime": 0.0, "skipped": 0.0},
    "seg-b": {"productive": 7.0, "checkpoint": 14.5, "stall": 0.0, "wasted": 0.0, "downtime": 10.5, "skipped": 1.0},
}


def ledger_run_store(path):
    return ingest.open_run(path)[0]


@pytest.fixture
def ledger_run(tmp_path, clock):
    path = tmp_path / "ledger"
    write_ledger_run(path, clock)
    store, _ = ingest.open_run(path)
    yield store
    store.close()


def test_every_second_lands_in_the_expected_category(ledger_run):
    g = goodput.ledger(ledger_run, "ledger")
    by_seg = {r["segment_id"]: r for r in g["segments"]}
    for seg, want in EXPECTED.items():
        got = {k: round(v["s"], 6) for k, v in by_seg[seg]["parts"].items()}
        assert {k: got[k] for k in want} == want, seg
        assert got["straggler"] == got["unattributed"] == 0.0
    assert by_seg["seg-a"]["wall_s"] == pytest.approx(41.0)
    assert by_seg["seg-b"]["wall_s"] == pytest.approx(33.0)  # 9 s gap after A's crash + B's 24 s
    assert g["wall_s"] == pytest.approx(74.0)  # first launch to last close: nothing counted twice
    assert g["effective_ratio"] == pytest.approx(19.0 / 74.0)
    assert g["median_step_s"] == pytest.approx(1.0)
    assert not g["estimated"] and g["assumptions"] == []
    # one rank, no GPU telemetry: device-hours are rank-hours
    assert by_seg["seg-a"]["device_kind"] == "rank"
    assert g["device_hours"] == pytest.approx(74.0 / 3600.0)
    assert g["categories"]["straggler"]["estimated"] and not g["categories"]["stall"]["estimated"]


def test_the_save_of_the_resumed_checkpoint_is_not_waste(ledger_run):
    """Precedence: waste beats everything, except the checkpoint the next launch resumed from."""
    g = goodput.ledger(ledger_run, "ledger")
    a = next(r for r in g["segments"] if r["segment_id"] == "seg-a")
    wasted_branch = 1041.0 - 1034.0  # accounting: from the cut step's time to the crash
    assert a["parts"]["wasted"]["s"] + 1.0 == pytest.approx(wasted_branch)
    assert a["parts"]["checkpoint"]["s"] == pytest.approx(2.0 + 1.0)


def test_stall_factor_moves_a_gap_between_stall_and_steps(ledger_run):
    loose = goodput.ledger(ledger_run, "ledger", stall_factor=50.0)  # 21 s is no longer a stall
    assert loose["categories"]["stall"]["s"] == 0.0
    assert loose["categories"]["productive"]["s"] == pytest.approx(19.0 + 20.0)
    assert loose["wall_s"] == pytest.approx(74.0)


def test_straggler_loss_from_per_rank_compute_times(tmp_path, clock, monkeypatch):
    """Two ranks; rank 1 computes 0.9 s instead of 0.5 s at steps 4..6: 3 x (0.9 - median 0.7) = 0.6 s."""
    path = tmp_path / "strag"
    monkeypatch.setenv("WORLD_SIZE", "2")
    runs = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        clock.t = 100.0
        runs.append(logbook.init(path, name="strag", segment_id="seg-s", flush_every=0.05))
    for k in range(1, 11):
        for rank, run in enumerate(runs):
            slow = rank == 1 and 4 <= k <= 6
            _log(run, clock, k, 100.0 + k, compute_s=0.9 if slow else 0.5)
    clock.t = 110.0
    for run in runs:
        run.finish()
    store, _ = ingest.open_run(path)
    try:
        g = goodput.ledger(store, "strag")
    finally:
        store.close()
    assert g["categories"]["straggler"]["s"] == pytest.approx(0.6)
    assert g["categories"]["productive"]["s"] == pytest.approx(10.0 - 0.6)
    assert g["categories"]["straggler"]["device_hours"] == pytest.approx(0.6 * 2 / 3600.0)  # 2 ranks
    assert "compute_s" in g["categories"]["straggler"]["method"]


def test_summary_json_carries_the_ledger(ledger_run):
    s = summarize(ledger_run, "ledger")
    g = s["goodput"]
    assert set(g) >= {"wall_s", "device_hours", "effective_ratio", "estimated", "categories", "segments", "precedence"}
    assert set(g["categories"]) == set(goodput_analysis.CATEGORIES)
    for c in g["categories"].values():
        assert set(c) == {"s", "device_hours", "method", "estimated"} and c["method"]
    json.dumps(s, allow_nan=False)  # strict JSON


def test_summary_cli_prints_the_ledger_as_text_and_json(tmp_path, clock):
    """`summary --json` (a real subprocess) has the key; the text summary (same formatter) shows each method."""
    path = tmp_path / "ledger"
    write_ledger_run(path, clock)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "summary", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    g = json.loads(out)["goodput"]
    assert g["categories"]["stall"]["s"] == pytest.approx(20.0)
    store = ledger_run_store(path)
    text = format_text(summarize(store, "ledger"))
    store.close()
    assert "goodput: effective training time 25.7%" in text
    assert "stalls:" in text and "[measured:" in text


# ----------------------------------------------------------------- the OPT-175B timeline: an estimate
@pytest.fixture(scope="module")
def opt_store(tmp_path_factory):
    import shutil

    dst = tmp_path_factory.mktemp("opt") / "opt175b-timeline"
    shutil.copytree(ROOT / "sample_runs" / "opt175b-timeline", dst, ignore=shutil.ignore_patterns(".midflight"))
    store, _ = ingest.open_run(dst)
    yield store
    store.close()


def test_opt175b_timeline_gives_a_flagged_estimate_with_its_assumptions(opt_store):
    g = goodput.ledger(opt_store, "opt175b-timeline")
    ref = goodput_analysis.PUBLISHED["opt175b"]
    step_s = 6 * 175e9 * 2e6 / (992 * 147e12)  # the paper's throughput
    assert g["estimated"] and g["assumed_step_s"] == pytest.approx(step_s)
    assert any("arXiv:2205.01068" in a and "14.4 s per step" in a for a in g["assumptions"])
    assert any("no recorded end" in a for a in g["assumptions"])
    assert ref["source"] in " ".join(g["assumptions"])
    cats = g["categories"]
    # every effective step (the 12.x lineage, to update 143,052) at the published step time, capped where a
    # launch's estimated step range would not fit in its wall time at that rate (12.08: ~3,000 steps in 1.8 h)
    bound = 143_052 * step_s
    assert 0.99 * bound < cats["productive"]["s"] < bound
    # the 11.x lineage was abandoned whole; 12.07's 13,251..13,459 rolled back (209 steps)
    segs = {r["segment_id"]: r for r in g["segments"]}
    assert segs["11.0"]["parts"]["wasted"]["s"] == pytest.approx(segs["11.0"]["wall_s"])
    assert segs["12.07"]["parts"]["wasted"]["s"] == pytest.approx(209 * step_s, rel=1e-6)
    # nothing counted twice: the parts add up to first launch .. end of training (2021-11-05 .. 2022-01-06)
    assert g["wall_s"] == pytest.approx(sum(c["s"] for c in cats.values()))
    assert 62 < g["wall_s"] / 86400 < 65
    assert 0.3 < g["effective_ratio"] < 0.45
    assert all(cats[k]["estimated"] for k in ("productive", "wasted", "downtime", "stall"))
    assert g["device_hours"] == pytest.approx(g["wall_s"] * 992 / 3600.0)


def test_an_explicit_step_time_overrides_the_published_one(opt_store):
    g = goodput.ledger(opt_store, "opt175b-timeline", step_s=20.0)
    assert g["assumed_step_s"] == 20.0 and any("20 s per step (given)" in a for a in g["assumptions"])


# ----------------------------------------------------------------- the exports
def test_markdown_and_html_logbooks_have_a_goodput_section(ledger_run, tmp_path):
    from midflight.logbook.exporters import export

    paths = export(ledger_run, "ledger", "markdown", tmp_path / "book.md")
    md = (tmp_path / "book.md").read_text()
    section = md[md.index("## Goodput") :]
    section = section[: section.index("\n## ", 4)]
    assert "Effective training time: 25.7%" in section
    assert "| stalls | 20 s | 27.0% |" in section and "| productive steps (effective path) | 19 s |" in section
    assert "| straggler loss | 0 s | 0.0% | 0 | estimated |" in section
    assert "An estimate" not in section and "****" not in section
    assert "goodput.png" in section and any(p.name == "goodput.png" for p in paths)
    (html,) = export(ledger_run, "ledger", "html", tmp_path / "book.html")
    page = html.read_text()
    assert "Goodput" in page and "Effective training time: 25.7%" in page
    assert "where the wall-clock time went" in page  # the stacked-bar figure


def test_hostile_event_values_never_break_the_sum(tmp_path, clock):
    """A log is a file anyone can write: a save time that is text, negative, NaN or absurd, a load time of 1e300, a
    skipped count of a billion: each is ignored or capped at its interval, and the parts still add up."""
    path = tmp_path / "hostile"
    clock.t = 0.0
    run = logbook.init(path, name="hostile", segment_id="seg-h")
    for k in range(1, 11):
        _log(run, clock, k, float(k))
    run.event("checkpoint_saved", step=2, seconds="abc")
    run.event("checkpoint_saved", step=3, seconds=-5.0)
    run.event("checkpoint_saved", step=4, seconds=float("nan"))
    run.event("checkpoint_saved", step=5, seconds=1e300)
    run.event("skipped_iterations", step=7, count=10**9)
    run.event("restart", step=0, load_seconds=1e300)
    clock.t = 10.0
    run.finish()
    store, _ = ingest.open_run(path)
    try:
        g = goodput.ledger(store, "hostile")
    finally:
        store.close()
    cats = {k: c["s"] for k, c in g["categories"].items()}
    assert g["wall_s"] == pytest.approx(10.0) and sum(cats.values()) == pytest.approx(10.0)
    assert cats["checkpoint"] == pytest.approx(1.0 + 1.0)  # the 1e300 save fills its 1 s gap; the load, the lead-in
    assert cats["skipped"] == pytest.approx(1.0)  # at most the steps of its interval (one)
    assert all(v >= 0 for v in cats.values())
