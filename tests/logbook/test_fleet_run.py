"""The fleet generator's own bookkeeping, checked against what midflight reads back.

Why: benchmarks/bench_fleet.py divides bytes by the points fleet_run says it wrote, and measures live lag
on a run that fleet_run.LiveFleet continues; if either were wrong, every number of that benchmark would
be wrong with it. So the counts are checked against a real ingest, and the continued run against the
store's own view of it (a resumed segment, live, then finished).
"""

from benchmarks.fleet_run import LiveFleet, write_fleet_run
from midflight.logbook.store import ingest, queries

PLANT = ("straggler", "silent_gpu")  # a silent GPU's missing samples must not be counted as points


def test_points_and_bytes_it_reports_are_what_ingest_reads(tmp_path):
    run_dir = tmp_path / "fleet"
    truth = write_fleet_run(run_dir, nodes=3, steps=40, telemetry_hz=0.2, plant=PLANT, synchronous=True)
    store, report = ingest.open_run(run_dir)
    store.close()
    assert report.malformed == 0
    assert truth["points"]["metrics"] == report.metric_points > 0
    assert truth["points"]["telemetry"] == report.telemetry_points > 0
    on_disk = sum(p.stat().st_size for p in (run_dir / "segments").rglob("*.jsonl"))
    assert truth["bytes"]["logs"] == on_disk
    assert 0 < truth["bytes"]["telemetry"] < on_disk


def test_live_fleet_continues_the_run_as_a_resumed_segment_that_is_live_then_finished(tmp_path):
    run_dir = tmp_path / "fleet"
    truth = write_fleet_run(run_dir, nodes=2, steps=30, telemetry_hz=0.2, synchronous=True, name="fleet")
    live = LiveFleet(run_dir, truth)
    appended = [live.append() for _ in range(3)]
    assert appended == [truth["steps"], truth["steps"] + 1, truth["steps"] + 2]
    store, report = ingest.open_run(run_dir)
    try:
        assert report.malformed == 0
        segs = queries.segments(store, "fleet").set_index("segment_id")
        new = segs.loc[live.segment_id]
        assert new["parent_id"] == truth["segment"] and new["resume_step"] == truth["steps"] - 1
        assert new["ranks"] == truth["ranks"] and new["end_step"] == appended[-1]
        assert queries.run_status(store, "fleet") == "running"
        assert len(queries.telemetry_names(store, "fleet")) == 6
    finally:
        store.close()
    live.close()
    store, _ = ingest.open_run(run_dir)
    try:
        assert queries.run_status(store, "fleet") == "finished"
    finally:
        store.close()
