"""The shipped sample run and the example training script tell the story the README promises."""

import subprocess
import sys
from pathlib import Path

from midflight.logbook import open_run
from midflight.logbook.record import layout
from midflight.logbook.report.summary import summarize
from midflight.logbook.store import open_store, queries
from midflight.logbook.store.ingest import ingest

ROOT = Path(__file__).resolve().parents[2]


def _check_rollback_story(store, run, steps):
    s = summarize(store, run)
    first, second = s["segments"]
    assert first["end_reason"] == "crashed" and second["end_reason"] == "completed"
    assert second["parent"] == first["id"] and second["resume_step"] == (steps // 2 // 100) * 100 - 100
    assert s["segments"][1]["config_diff"] == {"clip": [1.0, 0.3], "lr": [0.003, 0.0015]}
    assert s["effective_steps"] == steps and s["status"] == "finished"
    loss = queries.series(store, run, "loss", which="all")
    spike = loss[(loss.step > steps // 2) & (loss.segment_id == first["id"])]["value"].max()
    calm = queries.series(store, run, "loss", x_range=(steps // 2, steps))["value"].max()
    assert spike > 2 * calm  # the LR typo shows as a spike in the superseded branch only
    assert s["annotations"] == 1 and s["events"]["restart"] == 1


def test_sample_run_reads_back(tmp_path):
    store = open_store(None)
    ingest(store, layout.discover_runs(ROOT / "sample_runs"))
    assert "tiny-rollback" in queries.run_ids(store)
    _check_rollback_story(store, "tiny-rollback", 600)


def test_example_records_a_real_training_run(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_run.py"), str(tmp_path / "demo"), "--steps", "400"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    store, report = open_run(tmp_path / "demo", tmp_path / "store.duckdb")
    assert report.malformed == 0
    _check_rollback_story(store, "demo", 400)
    # its step time is the step_time role, in seconds: the Live page's step-time chart and the ETA read it
    assert queries.role_metric(store, "demo", "step_time") == "step_time_s"
