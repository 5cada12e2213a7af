"""Energy (metered / estimated / nameplate), CO2eq, projection and lineage accounting of wasted compute."""

import math
import subprocess
import sys
import time

import pytest

from midflight import logbook
from midflight.logbook.analysis import accounting, energy
from midflight.logbook.analysis.energy import J_PER_KWH
from midflight.logbook.present import tree
from midflight.logbook.report import energy as energy_report
from midflight.logbook.report import wasted as wasted_report
from midflight.logbook.report.summary import energy_summary
from midflight.logbook.store import lineage


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(time, "time", c)  # the recorder stamps records with time.time()
    return c


def _open(run_dir, tmp_path):
    store, _ = logbook.open_run(run_dir, store_path=tmp_path / "store.duckdb")
    return store


def _gpu_start(run, tdp_w=300.0, n=2):
    devices = [{"device": f"gpu{i}", "name": "H100", "tdp_w": tdp_w} for i in range(n)]
    run.event("telemetry_start", source="nvml", measured=True, devices=devices, method="NVML energy counter")


# ----------------------------------------------------------------- energy
def test_metered_total_survives_counter_reset_and_sits_beside_nameplate(clock, tmp_path):
    run_dir = tmp_path / "reset"
    clock.t = 1000.0
    run = logbook.init(run_dir, segment_id="a", flush_every=60)
    _gpu_start(run)
    gpu0 = [100.0, 200.0, 50.0, 150.0]  # the counter restarted between samples 2 and 3
    gpu1 = [10.0, 20.0, 30.0, 40.0]
    for i, (e0, e1) in enumerate(zip(gpu0, gpu1), start=1):
        clock.t = 1000.0 + i
        run.log({"loss": 1.0, "tokens": i * 100}, step=i)
        run.telemetry({"energy_j": e0, "power_w": 100.0}, device="gpu0", step=i)
        run.telemetry({"energy_j": e1}, device="gpu1", step=i)
    clock.t = 1010.0
    run.finish()
    store = _open(run_dir, tmp_path)

    (seg,) = energy_report.segment_energy(store, "reset")
    assert seg["metered_j"] == pytest.approx(350.0 + 40.0)  # 100+100+50(after reset)+100, not max-min=150
    assert seg["estimated_j"] is None
    assert seg["duration_s"] == pytest.approx(10.0)
    assert seg["nameplate_w"] == pytest.approx(600.0)  # 2 GPUs x 300 W from telemetry_start
    assert seg["nameplate_j"] == pytest.approx(6000.0)
    assert (seg["basis"], seg["estimated"], seg["energy_j"]) == ("metered", False, pytest.approx(390.0))

    steps = energy_report.step_energy(store, "reset")
    assert steps["step"].tolist() == [1, 2, 3, 4]
    # first step: energy before the first sample is attributed to its instant (sampling granularity)
    assert steps["metered_j"].tolist() == pytest.approx([110.0, 110.0, 60.0, 110.0])
    assert steps["metered_j"].sum() == pytest.approx(390.0)
    assert steps["effective"].all()

    s = energy_summary(store, "reset", intensity_g_per_kwh=400.0, pue=1.2)
    assert s["energy"]["metered_j"] == pytest.approx(390.0)
    assert s["energy"]["nameplate_j"] == pytest.approx(6000.0)
    assert s["energy"]["estimated"] is False
    assert s["energy"]["j_per_token"] == pytest.approx(390.0 / 400)
    assert s["co2eq_kg"] == pytest.approx(390.0 / J_PER_KWH * 1.2 * 0.4)
    assert s["co2"]["source"] == "given by the user"


def test_cpu_estimate_stays_labelled_estimated(clock, tmp_path):
    run_dir = tmp_path / "est"
    run = logbook.init(run_dir, segment_id="a", flush_every=60)
    run.event(
        "telemetry_start", source="estimate", measured=False, devices=[{"device": "cpu", "tdp_w": 8.0}], method="x"
    )
    for i in range(1, 4):
        clock.t = 1000.0 + i
        run.log({"loss": 1.0}, step=i)
        run.telemetry({"energy_est_j": 5.0 * i}, device="cpu", step=i)
    clock.t = 1004.0
    run.finish()
    store = _open(run_dir, tmp_path)
    s = energy_summary(store, "est", region="France")
    e = s["energy"]
    assert e["metered_j"] is None
    assert e["estimated_j"] == pytest.approx(15.0)
    assert (e["basis"], e["estimated"]) == ("estimate", True)
    assert e["nameplate_j"] == pytest.approx(8.0 * 4.0)
    assert s["co2"]["estimated"] is True
    assert s["co2"]["intensity_g_per_kwh"] == 56.0 and "CC BY 4.0" in s["co2"]["source"]
    assert s["co2eq_kg"] == pytest.approx(15.0 / J_PER_KWH * 56.0 / 1000)


def test_no_telemetry_and_no_tdp_is_no_energy_data(clock, tmp_path):
    """A loop with no power telemetry is never charged a silent default (it was 400 W x ranks x wall time)."""
    run_dir = tmp_path / "bare"
    run = logbook.init(run_dir, segment_id="a", flush_every=60)
    clock.t = 1100.0
    run.log({"loss": 1.0}, step=1)
    run.finish()
    store = _open(run_dir, tmp_path)
    (seg,) = energy_report.segment_energy(store, "bare")
    assert (seg["energy_j"], seg["nameplate_j"], seg["basis"]) == (None, None, "none")
    s = energy_summary(store, "bare", region="World")
    assert s["energy"]["energy_j"] is None and s["energy"]["basis"] == "none" and s["co2eq_kg"] is None
    out = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "summary", str(run_dir)], capture_output=True, text=True, check=True
    ).stdout
    assert "energy: no energy data" in out and "kWh" not in out
    # given to the report: a labelled nameplate estimate, 1 rank x 250 W x 100 s
    (seg,) = energy_report.segment_energy(store, "bare", tdp_w=250.0)
    assert (seg["basis"], seg["estimated"], seg["energy_j"]) == ("nameplate", True, pytest.approx(250.0 * 100.0))
    assert seg["nameplate_source"] == "TDP given: 250 W x 1 ranks"


def test_a_tdp_given_at_init_is_a_labelled_nameplate_estimate(clock, tmp_path):
    run_dir = tmp_path / "given"
    run = logbook.init(run_dir, segment_id="a", flush_every=60, device="A100-SXM4-80GB", tdp_w=400, devices=8)
    clock.t = 1010.0
    run.log({"loss": 1.0}, step=1)
    run.finish()
    store = _open(run_dir, tmp_path)
    s = energy_summary(store, "given")
    assert s["energy"]["basis"] == "nameplate" and s["energy"]["estimated"] is True
    assert s["energy"]["energy_j"] == pytest.approx(8 * 400.0 * 10.0)
    assert s["energy"]["nameplate_source"] == "TDP given at init: A100-SXM4-80GB 400 W x 8"
    with pytest.raises(ValueError, match="tdp_w must be a number of watts"):
        logbook.init(tmp_path / "bad", tdp_w=-5)
    with pytest.raises(ValueError, match="give tdp_w"):
        logbook.init(tmp_path / "bad", device="A100")


# ----------------------------------------------------------------- CO2 arithmetic and references
def test_co2_reproduces_gpt3_figures():
    # Patterson et al. 2021: 1,287 MWh (PUE 1.1 included) x 0.429 kg/kWh = 552 t; ~502 t without PUE
    assert energy.co2eq_kg(1287e3 * J_PER_KWH, 429.0) / 1000 == pytest.approx(552.1, abs=0.1)
    gpt3 = energy.REFERENCES["gpt3"]  # the table's figure follows from its own inputs, with and without PUE
    it_j = gpt3["energy_mwh"] / gpt3["pue"] * 1000 * J_PER_KWH
    assert energy.co2eq_kg(it_j, gpt3["intensity_g_per_kwh"], gpt3["pue"]) / 1000 == pytest.approx(
        gpt3["co2eq_t"], 1e-3
    )
    assert energy.co2eq_kg(it_j, gpt3["intensity_g_per_kwh"]) / 1000 == pytest.approx(501.9, abs=0.1)
    assert energy.co2eq_kg(J_PER_KWH, 429.0, pue=1.1) == pytest.approx(0.4719)
    opt = energy.REFERENCES["opt175b"]
    assert opt["co2eq_t"] == 75.0 and opt["estimated"] and "2x" in opt["method"]


def test_projection_from_j_per_token_and_j_per_flop():
    p = energy.project(1000.0, 100.0, 1e6, intensity_g_per_kwh=500.0, pue=1.1, estimated=True)
    assert p["j_per_token"] == 10.0 and p["projected_j"] == pytest.approx(1e7)
    assert p["co2eq_kg"] == pytest.approx(1e7 / J_PER_KWH * 1.1 * 0.5)
    assert "ESTIMATE" in p["assumptions"] and "PUE 1.1" in p["assumptions"]
    q = energy.project(1000.0, 100.0, 1e6, n_params=1e6, planned_params=2e6)
    assert q["j_per_flop"] == pytest.approx(1000.0 / (6 * 1e6 * 100))
    assert q["projected_j"] == pytest.approx(2e7)  # twice the parameters, twice the FLOPs per token
    assert "6·N·D" in q["assumptions"] and q["co2eq_kg"] is None


def test_grid_table_rows_have_source_year_and_licence():
    rows = energy.grid_table()
    countries = [r for r in rows if r["kind"] == "country"]
    assert len(countries) >= 20
    assert any(r["kind"] == "cloud_region" for r in rows)
    for r in rows:
        assert r["source"] and r["url"].startswith("https://") and r["licence"], r
        assert 2015 <= r["year"] <= 2026 and 0 <= r["g_per_kwh"] < 1200, r
    assert all(r["licence"] == "CC BY 4.0" for r in countries)
    assert len({r["key"] for r in rows}) == len(rows)
    assert energy.grid_intensity("fra")["g_per_kwh"] == 56.0
    assert energy.grid_intensity("us-central1")["g_per_kwh"] == 430.0
    with pytest.raises(KeyError):
        energy.grid_intensity("Atlantis")


# ----------------------------------------------------------------- lineage accounting
def _segment(clock, run_dir, seg, steps, t0, *, resume_step=None, finish="completed", gpu_j_per_s=None):
    clock.t = t0
    run = logbook.init(run_dir, segment_id=seg, resume_step=resume_step, flush_every=60)
    if gpu_j_per_s:
        _gpu_start(run, tdp_w=500.0, n=1)
    for i, s in enumerate(steps, start=1):
        clock.t = t0 + i
        run.log({"loss": 1.0, "tokens": s * 100}, step=s)
        if gpu_j_per_s:
            run.telemetry({"energy_j": gpu_j_per_s * i}, device="gpu0", step=s)
    clock.t = t0 + len(steps) + 1
    run.finish(finish)


def test_wasted_compute_on_hand_built_lineage(clock, tmp_path):
    run_dir = tmp_path / "lin"
    # A: 1..40 then crashes; B resumes from 30, runs 31..60, is rewound to 50; C: 51..70
    _segment(clock, run_dir, "A", range(1, 41), 1000.0, finish="crashed", gpu_j_per_s=10.0)
    _segment(clock, run_dir, "B", range(31, 61), 2000.0, resume_step=30, finish="rewound")
    _segment(clock, run_dir, "C", range(51, 71), 3000.0, resume_step=50)
    store = _open(run_dir, tmp_path)

    lanes = tree.lanes(logbook.queries.segments(store, "lin"))
    assert [(ln["id"], ln["parent_lane"], ln["start"], ln["end"], ln["effective"]) for ln in lanes] == [
        ("A", None, 1, 40, True),
        ("B", 0, 30, 60, True),
        ("C", 1, 50, 70, True),
    ]

    a, b = wasted_report.wasted(store, "lin")
    # A logged step s at 1000 + s and closed at 1041; step 30 (B's resume step) was done at 1030
    assert (a["segment_id"], a["discarded_by"], a["on_path"]) == ("A", "B", True)
    assert (a["first_step"], a["last_step"], a["steps"], a["tokens"]) == (31, 40, 10, 1000.0)
    assert a["wall_s"] == pytest.approx(11.0)
    assert (a["devices"], a["device_kind"]) == (1, "gpu")
    assert a["device_hours"] == pytest.approx(11.0 / 3600)
    assert a["metered_j"] == pytest.approx(100.0)  # 10 J/s sampled to 1040; nothing sampled after
    assert (a["energy_basis"], a["estimated"]) == ("metered", False)
    assert a["nameplate_j"] == pytest.approx(500.0 * 11.0)
    # B logged step s at 2000 + (s - 30), closed at 2031; C resumed from 50, logged at 2020
    assert (b["segment_id"], b["discarded_by"]) == ("B", "C")
    assert (b["first_step"], b["last_step"], b["steps"], b["tokens"]) == (51, 60, 10, 1000.0)
    assert b["wall_s"] == pytest.approx(11.0)
    assert (b["devices"], b["device_kind"]) == (1, "rank")  # no GPU telemetry: world size
    assert b["metered_j"] is None and b["nameplate_j"] is None  # no telemetry, no TDP: no energy figure
    assert (b["energy_j"], b["energy_basis"], b["estimated"]) == (None, "none", False)
    (b_given,) = [r for r in wasted_report.wasted(store, "lin", tdp_w=300.0) if r["segment_id"] == "B"]
    assert (b_given["energy_basis"], b_given["nameplate_j"]) == ("nameplate", pytest.approx(300.0 * 11.0))

    tot = accounting.totals([a, b])
    assert (tot["steps"], tot["tokens"], tot["wall_s"]) == (20, 2000.0, pytest.approx(22.0))


def test_abandoned_spans_pure_off_path_branch():
    segs = [
        lineage.Seg("A", None, None, 1.0, 1),
        lineage.Seg("B", "A", 100, 2.0, 101),  # abandoned: C resumed from A's 150 instead
        lineage.Seg("C", "A", 150, 3.0, 151),
    ]
    spans = lineage.abandoned_spans(segs, {"A": 200, "B": 180, "C": 300})
    assert spans == [
        lineage.Span("A", 150, 200, "C", True),
        lineage.Span("B", 100, 180, "C", False),
    ]
    assert accounting.value_at([1, 2, 3], [10.0, 20.0, 30.0], 0) == pytest.approx(0.0)  # extrapolated
    assert accounting.value_at([1, 2, 3], [10.0, 20.0, 30.0], 2.5) == pytest.approx(25.0)


def test_sample_run_waste_and_energy(tmp_path):
    store = _open("sample_runs/opt-tiny-faults", tmp_path)
    run = "opt-tiny-faults"
    segs = logbook.queries.segments(store, run)
    root, second, head = segs["segment_id"].tolist()
    rows = wasted_report.wasted(store, run)
    # the root crashed at 380 and the restart resumed from 350: its 351..379 were re-run, so wasted.
    # The second segment's own 351..379 are effective; what it ran past the rewind to 500 is wasted.
    assert [(r["segment_id"], r["discarded_by"]) for r in rows] == [(root, second), (second, head)]
    first, rewound = rows
    assert (first["first_step"], first["last_step"], first["steps"]) == (351, 379, 29)
    assert rewound["first_step"] == 501 and rewound["last_step"] > 501
    assert rewound["steps"] == rewound["last_step"] - 500
    per_step = first["tokens"] / first["steps"]
    assert per_step > 0 and rewound["tokens"] == pytest.approx(per_step * rewound["steps"])
    for r in rows:
        assert r["wall_s"] > 0 and r["device_kind"] == "rank" and r["devices"] == 2
        assert r["energy_basis"] == "estimate" and r["estimated"] and r["metered_j"] is None
        assert 0 < r["estimated_j"] <= r["nameplate_j"]
    s = energy_summary(store, run, region="FRA", pue=1.1)
    assert s["energy"]["estimated"] is True and s["energy"]["metered_j"] is None
    assert s["energy"]["energy_j"] > s["energy"]["wasted_j"] > 0
    assert s["co2eq_kg"] == pytest.approx(s["energy"]["energy_j"] / J_PER_KWH * 1.1 * 0.056)
    assert not math.isnan(s["energy"]["nameplate_j"])
