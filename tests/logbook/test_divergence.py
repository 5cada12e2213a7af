"""Divergence detection: spikes by shape, classification, NaN, loss scale, stragglers, rollbacks, real data
(the BLOOM spike, and labelled real sparse logs that go importer -> store -> detection)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from midflight import logbook
from midflight.logbook.analysis import divergence
from midflight.logbook.analysis.divergence import DivergenceConfig, OnlineDetector, detect
from midflight.logbook.importers import import_logs
from midflight.logbook.report import incidents as incident_report
from midflight.logbook.store import memory
from midflight.logbook.store.ingest import ingest

ROOT = Path(__file__).resolve().parents[2]
BLOOM = ROOT / "tests" / "fixtures" / "bloom_tr11_176B_megatron_deepspeed.log"
SPIKES = ("loss_spike", "grad_norm_spike")


def curve(n=2000, seed=0, step0=1):
    rng = np.random.default_rng(seed)
    s = np.arange(step0, step0 + n)
    loss = (2.0 + 3.0 * (1 + (s - step0) / 500) ** -0.5) * np.exp(0.01 * rng.standard_normal(n))
    grad = 0.8 * np.exp(0.15 * rng.standard_normal(n))
    return pd.DataFrame({"step": s, "loss": loss, "grad_norm": grad, "lr": 3e-4, "clip": 1.0})


def spikes(found, kind=None):
    return [i for i in found if i.kind in ((kind,) if kind else SPIKES)]


def test_clean_curves_raise_no_alarm():
    for seed in range(5):
        df = curve(4000, seed)
        df["step_time_s/0"], df["step_time_s/1"] = 1.0, 1.02
        df["tokens_per_s"] = 1e5 * np.exp(0.02 * np.random.default_rng(seed).standard_normal(len(df)))
        assert detect(df) == [], seed


@pytest.mark.parametrize(
    "shape, classification",
    [("single", "transient"), ("decay", "transient"), ("slow_recovery", "recovering"), ("level", "divergent")],
)
def test_each_spike_shape_found_and_classified(shape, classification):
    df = curve(1500, seed=3)
    rel = df["step"].to_numpy() - 1000
    w = {
        "single": rel == 0,
        "decay": np.where(rel >= 0, np.exp(-np.maximum(rel, 0) / 4), 0.0),
        "slow_recovery": np.where(rel >= 0, np.exp(-np.maximum(rel, 0) / 25), 0.0),
        "level": rel >= 0,
    }[shape].astype(float)
    df["loss"] *= np.exp(np.log(2.0) * w)
    df["grad_norm"] *= np.exp(np.log(30.0) * w)
    found = detect(df)
    assert {i.kind for i in found} == set(SPIKES), found
    for inc in found:
        assert inc.start_step == 1000 and inc.detected_step == 1000
        assert inc.classification == classification
        assert inc.context["lr"] == 3e-4 and inc.context["clip"] == 1.0 and "grad_norm" in inc.context
        assert (inc.suggested_action is not None) == (classification == "divergent")
        assert inc.severity in ("medium", "high")
        json.dumps(inc.to_dict())
    loss = spikes(found, "loss_spike")[0]
    if shape == "level":  # the new level's own noise sets the peak
        assert loss.end_step == 1050 and loss.peak_value > 2 * loss.baseline
    else:
        assert loss.peak_step == 1000 and loss.peak_value == pytest.approx(df.loss[df.step == 1000].item())
    if shape == "single":
        assert loss.end_step == 1000
    if shape == "level":
        assert "rewind to the last checkpoint before step 1000" in loss.suggested_action


def test_small_uncorroborated_blip_is_not_an_incident_but_a_corroborated_one_is():
    df = curve(1500, seed=4)
    df.loc[df.step == 800, "grad_norm"] *= 3.0  # one metric, one step: noise-like
    assert detect(df) == []
    df.loc[df.step == 801, "loss"] *= 1.15  # the loss follows a step later: corroborated
    found = detect(df)
    assert [(i.kind, i.start_step, i.detected_step) for i in found] == [
        ("grad_norm_spike", 800, 801),
        ("loss_spike", 801, 801),
    ]


def test_online_equals_batch():
    df = curve(3000, seed=5)
    df.loc[df.step.between(700, 710), "loss"] *= 1.8
    df.loc[df.step == 1200, "grad_norm"] *= 100
    df.loc[df.step.isin([1500, 1501]), "loss"] = math.nan
    df["overflow"] = df.step.isin([1800, 1801, 1802, 1803])
    df["step_time_s/0"], df["step_time_s/1"] = 1.0, np.where(df.step.between(2000, 2030), 3.0, 1.0)
    df.loc[df.step >= 2500, "loss"] *= 1.5  # divergent, still open at the end
    batch = detect(df)
    assert {i.kind for i in batch} >= {"loss_spike", "grad_norm_spike", "nonfinite", "loss_scale_collapse", "straggler"}
    det = OnlineDetector()
    rng = np.random.default_rng(0)
    rows = df.to_dict("records")
    for k, row in enumerate(rows):
        times = {r: row.pop(f"step_time_s/{r}") for r in (0, 1)}
        det.update(int(row.pop("step")), row, step_times=times, overflow=bool(row.pop("overflow")))
        if rng.random() < 0.01 or k == len(rows) - 1:
            online = det.incidents()  # querying mid-stream changes nothing
    assert [i.to_dict() for i in online] == [i.to_dict() for i in batch]
    with pytest.raises(ValueError):
        det.update(5, {"loss": 1.0})


def test_nan_and_inf_handling():
    df = curve(1500, seed=6)
    df.loc[df.step.isin([600, 601, 602]), "loss"] = math.nan
    df.loc[df.step == 900, "grad_norm"] = math.inf
    found = detect(df)
    got = [(i.kind, i.metric, i.start_step, i.end_step, i.severity) for i in found]
    assert got == [("nonfinite", "loss", 600, 602, "high"), ("nonfinite", "grad_norm", 900, 900, "high")]
    # non-finite values never enter the baseline: a later spike is still found
    df.loc[df.step == 1200, ["loss", "grad_norm"]] *= [2.0, 30.0]
    assert [i.start_step for i in spikes(detect(df))] == [1200, 1200]
    # a NaN that never ends is divergent
    df.loc[df.step >= 1300, "loss"] = math.nan
    last = [i for i in detect(df) if i.kind == "nonfinite" and i.metric == "loss"][-1]
    assert (last.start_step, last.classification) == (1300, "recovering")  # still going at the end of data
    df2 = pd.concat([df, curve(100, step0=1501)[["step", "loss"]].assign(grad_norm=0.8)], ignore_index=True)
    last = [i for i in detect(df2) if i.kind == "nonfinite" and i.metric == "loss"][-1]
    assert (last.start_step, last.end_step, last.classification) == (1300, 1500, "divergent")


def test_loss_scale_collapse_overflow_streak_and_floor():
    df = curve(600, seed=7)
    df["loss_scale"] = 1024.0
    df["overflow"] = df.step.isin([100, 101])  # two overflows: the scaler's normal business
    df.loc[df.step.isin([100, 101]), "grad_norm"] = math.nan
    assert detect(df) == []
    df["overflow"], df["grad_norm"] = df.step.isin([300, 301, 302, 303]), df["grad_norm"].fillna(0.8)
    df.loc[df.step.isin([300, 301, 302, 303]), "grad_norm"] = math.nan
    df.loc[df.step.between(302, 310), "loss_scale"] = 64.0
    (inc,) = detect(df)  # no "nonfinite grad norm" on overflow steps: the scaler skipped them
    assert (inc.kind, inc.start_step, inc.end_step, inc.detected_step) == ("loss_scale_collapse", 300, 303, 302)
    assert inc.detail["reasons"] == ["overflow_streak", "scale_drop"] and inc.classification == "transient"
    assert inc.peak_value == 64.0 and inc.detail["fall"] == 16.0  # 1024 -> 64 within the window
    df["overflow"], df["grad_norm"], df["loss_scale"] = False, df["grad_norm"].fillna(0.8), 1024.0
    df.loc[df.step.between(400, 499), "loss_scale"] = 0.25
    (inc,) = detect(df, DivergenceConfig(loss_scale_floor=0.25))
    assert (inc.start_step, inc.end_step, inc.classification) == (400, 499, "divergent")
    assert inc.detail["reasons"] == ["at_floor", "scale_drop"]  # 1024 -> 0.25 in one step is a collapse too
    # the trainer's loss_scale_at_floor event alone
    (inc,) = detect(df.assign(at_floor=df.step.between(450, 455), loss_scale=1024.0))
    assert (inc.start_step, inc.end_step) == (450, 455)


def test_straggler_and_throughput_drop():
    df = curve(800, seed=8)
    for r in range(4):
        df[f"step_time_s/{r}"] = 1.0 + 0.01 * r
    df.loc[df.step.between(300, 340), "step_time_s/2"] = 1.9
    df.loc[df.step.between(500, 501), "step_time_s/1"] = 5.0  # two slow steps: not a straggler
    df["tokens_per_s"] = 1e5
    df.loc[df.step.between(600, 620), "tokens_per_s"] = 6e4
    found = detect(df)
    got = [(i.kind, i.start_step, i.end_step, i.detail.get("rank")) for i in found]
    assert got == [("straggler", 300, 340, 2), ("throughput_drop", 600, 620, None)]
    assert found[0].peak_value == 1.9 and found[0].baseline == 1.01


def test_slow_divergence():
    df = curve(3000, seed=9)
    s = df.step.to_numpy()
    df["loss"] = np.where(s > 1500, df.loss * np.exp(0.3 * (s - 1500) / 1500), df.loss)
    found = detect(df)
    assert [i.kind for i in found] == ["slow_divergence"]
    assert 1500 < found[0].start_step < 2500 and found[0].classification == "recovering"


def _bloom() -> pd.DataFrame:
    pat = re.compile(r"iteration\s+(\d+)/.*?lm loss: ([0-9.E+-]+) \| grad norm: ([0-9.]+)")
    rows = [(int(m[1]), float(m[2]), float(m[3])) for m in map(pat.search, BLOOM.read_text().splitlines()) if m]
    return pd.DataFrame(rows, columns=["step", "loss", "grad_norm"])


def test_bloom_176b_spike_is_detected_with_the_right_step_range():
    real = _bloom()
    spike = real[real.step.between(31214, 31251)]
    assert len(spike) == 11 and spike.grad_norm.max() == 960.351
    rng = np.random.default_rng(0)  # the excerpt has no history: 200 steps around its own normal values
    before = pd.DataFrame({"step": np.arange(31014, 31214), "loss": 2.2 * np.exp(0.01 * rng.standard_normal(200)),
                           "grad_norm": 0.22 * np.exp(0.2 * rng.standard_normal(200))})  # fmt: skip
    after = pd.DataFrame({"step": np.arange(31252, 31262), "loss": 2.2, "grad_norm": 0.22})
    found = detect(pd.concat([before, spike, after], ignore_index=True))
    grad = spikes(found, "grad_norm_spike")
    assert len(grad) == 1, found
    g = grad[0]
    assert (g.start_step, g.peak_step, g.peak_value) == (31215, 31219, 960.351)
    assert g.detected_step <= 31216 and 31222 <= g.end_step < 31250
    assert g.classification == "transient" and g.severity == "high"
    loss = spikes(found, "loss_spike")
    assert [(i.start_step, i.peak_step, i.peak_value) for i in loss] == [(31216, 31219, 5.098124)]


def test_sample_run_spike_overflows_and_straggler(tmp_path):
    store, _ = logbook.open_run(ROOT / "sample_runs" / "opt-tiny-faults", store_path=str(tmp_path / "s.duckdb"))
    found = incident_report.incidents(store, "opt-tiny-faults")
    eff = [i for i in found if not i.superseded]
    by = {(i.kind, i.start_step) for i in eff}
    assert {("loss_spike", 300), ("grad_norm_spike", 300), ("loss_scale_collapse", 250)} <= by
    (strag,) = [i for i in eff if i.kind == "straggler"]
    assert (strag.start_step, strag.end_step, strag.detail["rank"]) == (470, 490, 1)
    assert all(i.segment_id for i in found)
    # superseded branches (351-379 of the crashed segment, 501-529 of the rewound one) are scanned with the
    # effective history before them as baseline, but only their own incidents are kept
    assert all(i.start_step > 350 for i in found if i.superseded)
    assert not [i for i in eff if i.kind == "nonfinite"]  # NaN grad norms only on overflow steps


def _segment(run_dir, seg_id, steps, values, *, resume_step=None, finish="completed"):
    run = logbook.init(run_dir, segment_id=seg_id, resume_step=resume_step, flush_every=60)
    for s in steps:
        loss, grad = values(s)
        run.log({"loss": loss, "grad_norm": grad, "lr": 1e-4}, step=s)
    run.finish(finish)


def test_rollback_lineage_no_false_incident_and_superseded_marked(tmp_path):
    rng = np.random.default_rng(10)
    noise = np.exp(0.01 * rng.standard_normal((3, 800)))

    def clean(s):
        return 3.0 * noise[0, s], 0.5 * noise[1, s] ** 10

    def diverging(s):  # segment a blows up at 300 and stays up: the operator rewinds to 250
        loss, grad = clean(s)
        return (loss * 3, grad * 50) if s >= 300 else (loss, grad)

    run = tmp_path / "r"
    _segment(run, "a", range(1, 401), diverging, finish="crashed")
    _segment(run, "b", range(251, 700), lambda s: (2.5 * noise[2, s], clean(s)[1]), resume_step=250)
    store = memory()
    ingest(store, [run])
    found = incident_report.incidents(store, "r")
    eff = [i for i in found if not i.superseded]
    sup = [i for i in found if i.superseded]
    assert eff == []  # neither the blow-up nor the jump back down at the rollback is an incident
    assert {(i.kind, i.start_step, i.segment_id, i.classification) for i in sup} == {
        ("loss_spike", 300, "a", "divergent"),
        ("grad_norm_spike", 300, "a", "divergent"),
    }
    assert all(i.to_dict()["superseded"] is True for i in sup)


def test_hardware_throttling_ecc_and_silent_device():
    det = divergence.TelemetryDetector(DivergenceConfig(silent_after_s=30))
    for k in range(100):  # one sample per device every 5 s; a step every second
        t = 1000.0 + 5 * k
        for dev in ("gpu0", "gpu1"):
            if dev == "gpu1" and k >= 60:
                continue  # gpu1 goes silent at t = 1300
            key = ("seg", "node7", dev)
            det.update(t, 5 * k, key, "throttle_reasons", 4.0 if dev == "gpu0" and 20 <= k < 25 else 0.0)
            det.update(t, 5 * k, key, "ecc_errors", 3.0 if dev == "gpu1" and k >= 40 else 0.0)
            det.update(t, 5 * k, key, "util_pct", 99.0)
    got = [(i.kind, i.detail["device"], i.start_step, i.end_step, i.classification) for i in det.incidents()]
    assert got == [
        ("throttling", "gpu0", 100, 120, "transient"),
        ("ecc_errors", "gpu1", 200, 200, "transient"),
        ("device_silent", "gpu1", 330, 495, "recovering"),  # last sample at t=1295, noticed at t=1330; still silent
    ]
    assert all(i.suggested_action for i in det.incidents())


# ----------------------------------------------------------------- real, sparse logs (issue 14)
REAL = ROOT / "tests" / "fixtures" / "real_spikes"
LABELS = json.loads((REAL / "labels.json").read_text())
SCORED = set(LABELS["kinds"])


def _imported(tmp_path, fmt: str, path: Path, how: str = "api"):
    """A real log through its importer (the library call or the CLI) into a run directory, then the store."""
    run_dir = tmp_path / path.stem
    if how == "cli":
        cmd = [sys.executable, "-m", "midflight.logbook", "import", fmt, str(path), "--run-dir", str(run_dir), "-q"]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    else:
        import_logs(fmt, [path], run_dir)
    store, _ = logbook.open_run(run_dir, store_path=str(tmp_path / f"{path.stem}.duckdb"))
    return store, run_dir.name


def test_sparse_megatron_fp16_spike_with_loss_scale_collapse_is_detected(tmp_path):
    """BigScience tr1-13B: a line every 10 iterations, 3 lines of baseline, mid-run (iteration 29020): the lm
    loss goes 2.77 -> 7.34 within 10 iterations while the loss scale falls 65536 -> 8192 -> 4096."""
    store, run = _imported(tmp_path, "megatron", REAL / "tr1_13B_fp16_spike_every10.log", how="cli")
    found = [i for i in incident_report.incidents(store, run) if not i.superseded]
    (loss,) = spikes(found, "loss_spike")
    assert (loss.start_step, loss.detected_step, loss.peak_step) == (29050, 29050, 29060)
    assert loss.classification == "recovering" and loss.severity == "high"  # still at 6.85 when the excerpt ends
    assert loss.detail["confidence"] == "low" and loss.detail["history_points"] == 3
    assert loss.detail["log_interval"] == 10
    (scale,) = [i for i in found if i.kind == "loss_scale_collapse"]
    assert (scale.start_step, scale.end_step, scale.detected_step) == (29050, 29060, 29050)
    assert scale.detail["reasons"] == ["scale_drop"] and scale.detail["fall"] == 16.0
    assert scale.peak_value == 4096.0
    assert {i.kind for i in found} == {"loss_spike", "loss_scale_collapse"}  # nothing else: grad norm is 0.000


def test_loss_scale_collapse_corroborates_a_loss_rise_below_the_z_threshold():
    df = curve(1500, seed=11)
    df["loss"] *= np.exp(0.025 * np.random.default_rng(11).standard_normal(len(df)))  # a noisier loss
    df["loss_scale"] = 65536.0
    df.loc[df.step >= 1000, "loss_scale"] = 4096.0  # four halvings at once
    df.loc[df.step == 1000, "loss"] *= 1.2  # ~4 robust sigma of this curve: under z = 6 on its own
    assert spikes(detect(df.assign(loss_scale=65536.0))) == []
    found = detect(df)
    (loss,) = spikes(found, "loss_spike")
    assert (loss.start_step, loss.detected_step) == (1000, 1000)
    assert loss.detail["evidence"] == ["loss_scale_collapse"] and "confidence" not in loss.detail
    (scale,) = [i for i in found if i.kind == "loss_scale_collapse"]
    assert (scale.start_step, scale.end_step, scale.detail["fall"]) == (1000, 1000, 16.0)


def test_the_loss_scalers_own_search_and_slow_halvings_are_not_a_collapse():
    df = curve(3000, seed=12)
    s = df.step.to_numpy()
    # Megatron's start: 2**32 halved on the first steps until nothing overflows, then one halving per
    # 500 steps and growth (x2) every 1000 clean steps: the scaler's normal business
    df["loss_scale"] = np.where(s < 20, 2.0 ** (32 - s), 2.0**12 / 2 ** ((s - 20) // 500 % 2))
    assert detect(df) == []


@pytest.mark.parametrize("case", LABELS["cases"], ids=lambda c: Path(c["file"]).stem)
def test_real_excerpts_labelled_incidents_found_and_clean_points_quiet(tmp_path, case):
    """Every labelled real excerpt, tuning and held-out alike: each labelled incident is raised within one
    logging interval of its range, and nothing is raised on its clean points."""
    store, run = _imported(tmp_path, case["format"], ROOT / "tests" / "fixtures" / case["file"])
    found = [i for i in incident_report.incidents(store, run) if i.kind in SCORED and not i.superseded]
    steps = np.sort(incident_report.run_frame(store, run)["step"].to_numpy())
    tol = max(3, int(np.median(np.diff(steps))))
    for lab in case["incidents"]:
        assert any(lab["onset"] - tol <= i.detected_step <= lab["end"] + tol for i in found), (lab, found)
    stray = [i for i in found if not any(lab["onset"] - tol <= i.detected_step <= lab["end"] + tol
                                         for lab in case["incidents"])]  # fmt: skip
    assert stray == []
