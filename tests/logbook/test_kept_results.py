"""Incidents and energy are worked out once per watermark and kept in the store (logbook.store.kept).

A real Recorder writes a live run; a real DuckDB store ingests it. Kept results must be (1) used while
the logs are unchanged, (2) worked out again as soon as the run grows, and (3) per segment for energy,
so a finished segment is never integrated again while the head segment grows.
"""

from __future__ import annotations

import json
import math

import numpy as np

from midflight import logbook
from midflight.logbook.report import energy as energy_report
from midflight.logbook.report import incidents as incident_report
from midflight.logbook.store import ingest, kept
from midflight.logbook.store.database import memory


def _log(run, steps, rng, spike_at=None):
    for s in steps:
        loss = 3.0 * math.exp(0.01 * rng.standard_normal()) * (4.0 if s == spike_at else 1.0)
        run.log({"loss": loss, "grad_norm": 0.5, "lr": 1e-4}, step=s)
        # one GPU whose energy counter rises 300 J per step (a 300 W device at a 1 s step)
        run.telemetry({"energy_j": 300.0 * (s + 1), "power_w": 300.0}, device="gpu0", step=s)


def _kept_rows(store, run):
    return dict(store.cursor().execute("SELECT what, watermark FROM kept_results WHERE run_id = ?", [run]).fetchall())


def test_incidents_are_kept_until_the_run_grows(tmp_path):
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "live"
    run = logbook.init(run_dir, segment_id="a", flush_every=60)
    _log(run, range(0, 300), rng, spike_at=200)
    run.flush()
    store, _ = ingest.open_run(run_dir, store_path=str(tmp_path / "s.duckdb"))
    first = incident_report.incidents(store, "live")
    assert [(i.kind, i.start_step) for i in first if i.kind == "loss_spike"] == [("loss_spike", 200)]
    mark = kept.watermark(store, "live")
    assert _kept_rows(store, "live")["incidents"] == mark

    # unchanged logs: the kept value is what comes back (proved by editing it in place: a recomputation
    # would find the spike again)
    store.cursor().execute("UPDATE kept_results SET value = '[]' WHERE run_id = 'live' AND what = 'incidents'")
    assert incident_report.incidents(store, "live") == []

    # the run grows (a second spike is flushed): the watermark moves and detection runs again
    _log(run, range(300, 500), rng, spike_at=420)
    run.flush()
    ingest.ingest(store, [run_dir])
    assert kept.watermark(store, "live") != mark
    again = incident_report.incidents(store, "live")
    assert [i.start_step for i in again if i.kind == "loss_spike"] == [200, 420]
    run.finish()

    # and what is kept equals a fresh store's answer, field for field
    fresh = memory()
    ingest.ingest(fresh, [run_dir])
    assert [i.to_dict() for i in incident_report.incidents(store, "live")] == [
        i.to_dict() for i in incident_report.incidents(fresh, "live")
    ]


def test_energy_of_a_finished_segment_is_integrated_once(tmp_path):
    rng = np.random.default_rng(1)
    run_dir = tmp_path / "r"
    a = logbook.init(run_dir, segment_id="a", flush_every=60)
    _log(a, range(0, 100), rng)
    a.finish()
    b = logbook.init(run_dir, segment_id="b", resume_step=99, flush_every=60)
    _log(b, range(100, 150), rng)
    b.flush()
    store, _ = ingest.open_run(run_dir, store_path=str(tmp_path / "s.duckdb"))

    def metered():
        return {r["segment_id"]: r["metered_j"] for r in energy_report.segment_energy(store, "r")}

    assert metered() == {"a": 300.0 * 100, "b": 300.0 * 150}  # b's counter restarts its own series at 300 x 101
    rows = _kept_rows(store, "r")
    assert set(rows) >= {"meters/a", "meters/b"}

    # kept totals are used: a's is changed to 1 J and b's is raised by 1 MJ in place (a re-integration
    # would restore 30,000 J, and lose the extra MJ)
    for seg, total in (("a", 1.0), ("b", 45000.0 + 1e6)):
        (value,) = (
            store.cursor()
            .execute("SELECT value FROM kept_results WHERE run_id = 'r' AND what = ?", [f"meters/{seg}"])
            .fetchone()
        )
        (host, device, is_metered, _, last_t, last) = json.loads(value)[0]
        row = [host, device, is_metered, total, last_t, last]
        store.cursor().execute(
            "UPDATE kept_results SET value = ? WHERE run_id = 'r' AND what = ?", [json.dumps([row]), f"meters/{seg}"]
        )
    assert metered() == {"a": 1.0, "b": 45000.0 + 1e6}

    # the head grows: b's kept integral is carried forward over its NEW samples only (its extra MJ stays),
    # and a, unchanged, is not integrated again
    _log(b, range(150, 200), rng)
    b.finish()
    ingest.ingest(store, [run_dir])
    assert metered() == {"a": 1.0, "b": 300.0 * 200 + 1e6}
    after = _kept_rows(store, "r")
    assert after["meters/a"] == rows["meters/a"] and after["meters/b"] != rows["meters/b"]
    fresh = memory()
    ingest.ingest(fresh, [run_dir])
    assert {r["segment_id"]: r["metered_j"] for r in energy_report.segment_energy(fresh, "r")} == {
        "a": 300.0 * 100,
        "b": 300.0 * 200,
    }


def test_a_fleet_reads_only_the_changes_of_throttle_and_ecc_series(tmp_path):
    """report.incidents.telemetry_frame(sparse=True) reads the samples around each change (from the 64 s
    tiles), not every sample: the hardware incidents must be exactly those of the full series."""
    from benchmarks.fleet_run import write_fleet_run
    from midflight.logbook.analysis import divergence
    from midflight.logbook.record import layout, records

    run_dir = tmp_path / "fleet"
    write_fleet_run(run_dir, nodes=1, gpus_per_node=4, steps=400, telemetry_hz=0.2, plant=(), closed=False)
    t0 = 1_780_000_000.0
    times = [t0 + 5.0 * k for k in range(1600)]  # 8,000 s at 0.2 Hz: 125 tiles of 64 s per series
    rows = []
    for k in range(len(times)):
        row = []
        for g in range(4):
            throttled = g == 1 and (300 <= k < 640 or 1000 <= k < 1003)  # 640: on a tile edge (t0 + 3,200 s)
            ecc = 0 if g != 2 else (1 if k >= 700 else 0) + (2 if k >= 1500 else 0)
            row += [4 if throttled else 0, ecc]
        rows.append(row)
    rec = records.encode_telemetry(["gpu0", "gpu1", "gpu2", "gpu3"], ["throttle_reasons", "ecc_errors"], times,
                                   [k // 4 for k in range(len(times))], rows)  # fmt: skip
    with open(layout.rank_file(run_dir, "seg-fleet-0", 0), "ab") as f:
        f.write(rec)
    store, _ = ingest.open_run(run_dir, store_path=str(tmp_path / "s.duckdb"))

    full = incident_report.telemetry_frame(store, "fleet")
    full = full[full["name"].isin(["throttle_reasons", "ecc_errors"])]
    sparse = incident_report.telemetry_frame(store, "fleet", sparse=True)
    assert len(full) == 2 * 4 * len(times) and len(sparse) < len(full) / 10

    def found(frame):
        return [i.to_dict() for i in divergence.hardware_from(frame, silence=False)]

    got = found(sparse)
    assert got == found(full)
    assert [(i["kind"], i["detail"]["device"], i["start_step"], i["end_step"]) for i in got] == [
        ("throttling", "gpu1", 75, 159),
        ("ecc_errors", "gpu2", 175, 175),
        ("throttling", "gpu1", 250, 250),
        ("ecc_errors", "gpu2", 375, 375),
    ]


def test_a_live_run_feeds_only_its_new_steps_to_a_kept_detector(tmp_path):
    """report.incidents.LiveIncidents: one full detection, then each call feeds the steps logged since;
    a rollback starts over. At every stage the answer equals a full detection on a fresh store."""
    from midflight.logbook.analysis import divergence

    fulls = []

    def full(frames, keep):
        fulls.append(len(frames["effective"]))
        return divergence.incidents_from(frames, keep=keep)

    def fresh(run_dir):
        store = memory()
        ingest.ingest(store, [run_dir])
        return [i.to_dict() for i in incident_report.incidents(store, run_dir.name)]

    rng = np.random.default_rng(2)
    run_dir = tmp_path / "grow"
    run = logbook.init(run_dir, segment_id="a", flush_every=60)
    store, _ = ingest.open_run(run_dir, store_path=str(tmp_path / "s.duckdb"))
    live = incident_report.LiveIncidents(full)
    for lo, hi, spike in ((0, 300, 200), (300, 420, None), (420, 520, 450), (520, 600, None)):
        _log(run, range(lo, hi), rng, spike_at=spike)
        run.flush()
        ingest.ingest(store, [run_dir])
        got = live.incidents(store, "grow")
        # the newest step is held back while the run is live; everything before it is detected
        assert [i.start_step for i in got if i.kind == "loss_spike"] == [s for s in (200, 450) if s < hi - 1]
    assert len(fulls) == 1  # one full detection; later calls fed only new steps
    run.finish()
    ingest.ingest(store, [run_dir])
    assert [i.to_dict() for i in live.incidents(store, "grow")] == fresh(run_dir)

    # a rollback: segment b resumes from step 400, so 401..599 of a are superseded: a full detection again
    b = logbook.init(run_dir, segment_id="b", resume_step=400, flush_every=60)
    _log(b, range(401, 480), rng)
    b.finish()
    ingest.ingest(store, [run_dir])
    got = live.incidents(store, "grow")
    assert len(fulls) == 2 and [i.to_dict() for i in got] == fresh(run_dir)
    assert any(i.superseded and i.start_step == 450 for i in got)  # a's spike, now on an abandoned branch


def test_new_steps_after_the_last_overflow_are_read(tmp_path):
    """run_frame(after=N) with every overflow event at or before N: the kept detector's next read (it
    raised a TypeError, which crashed the Live page of any run that had overflowed)."""
    from benchmarks.fleet_run import write_fleet_run

    truth = write_fleet_run(tmp_path / "ov", nodes=1, steps=100, plant=("overflow",))
    store, _ = ingest.open_run(tmp_path / "ov", store_path=str(tmp_path / "s.duckdb"))
    last_overflow = truth["overflow"]["last_step"]
    frame = incident_report.run_frame(store, "ov", after=last_overflow + 1)
    assert list(frame["step"]) == list(range(last_overflow + 2, 100))
    assert frame["overflow"].sum() == 0
    assert incident_report.run_frame(store, "ov", after=0)["overflow"].sum() > 0


def test_counter_totals_from_the_widest_tiles_equal_the_sum_over_every_sample(tmp_path):
    """queries.counter_totals past its raw limit reads 4096 s tiles' four points per device; the totals must
    equal analysis.energy's integral over every raw sample."""
    from benchmarks.fleet_run import write_fleet_run
    from midflight.logbook.analysis import energy
    from midflight.logbook.store import queries

    run_dir = tmp_path / "e"
    write_fleet_run(run_dir, nodes=1, gpus_per_node=4, steps=1000, telemetry_hz=0.2, plant=())
    store, _ = ingest.open_run(run_dir, store_path=str(tmp_path / "s.duckdb"))
    tiles = queries.counter_totals(store, "e", "energy_j", ["seg-fleet-0"], raw_limit=0)
    raw = queries.counter_totals(store, "e", "energy_j", ["seg-fleet-0"])
    by_meter = {(m.host, m.device): m.total for m in energy.meters_from(queries.telemetry(store, "e", "energy_j"),
                                                                           metered=True)}  # fmt: skip
    for frame in (tiles, raw):
        got = {(r[0], r[1]): r[3] for r in energy.totals_rows(frame, metered=True)}
        assert got.keys() == by_meter.keys()
        assert all(abs(got[k] - by_meter[k]) <= 1e-9 * by_meter[k] for k in got), (got, by_meter)
