"""`midflight`: real subprocesses, clear errors, the summary JSON contract."""

import json
import os
import re

import pytest

from midflight import logbook
from midflight.logbook.record import layout
from midflight.logbook.store import queries
from midflight.logbook.store.database import open_store

from .proc_helpers import cli

SUMMARY_KEYS = {
    "run",
    "status",
    "last_step",
    "effective_steps",
    "segments",
    "metrics",
    "events",
    "annotations",
    "incidents",
    "interventions",
    "energy",
    "co2eq_kg",
}
SEGMENT_KEYS = {"id", "parent", "resume_step", "start_step", "end_step", "end_reason", "reason"}


@pytest.fixture
def run_dir(tmp_path):
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, name="cli-run", config={"lr": 3e-4}) as run:
        for s in range(1, 101):
            run.log({"loss": 3.0 - s / 100, "grad_norm": 0.5}, step=s)
        run.event("overflow", step=40, scale_before=8.0, scale_after=4.0)
        run.event("checkpoint", step=50)
    with logbook.init(run_dir, config={"lr": 1e-4}, resume_step=50, reason="spike at 90") as run:
        for s in range(51, 121):
            run.log({"loss": 2.0 - s / 1000}, step=s)
    return run_dir


def test_summary_json_contract(run_dir):
    assert cli("annotate", run_dir, "--step", 90, "--text", "spike", "--kind", "optimizer").returncode == 0
    out = cli("summary", run_dir, "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert SUMMARY_KEYS <= set(s)
    assert (s["run"], s["status"], s["last_step"], s["effective_steps"]) == ("run", "finished", 120, 120)
    assert s["last_loss"] == pytest.approx(2.0 - 120 / 1000)
    assert [SEGMENT_KEYS <= set(seg) for seg in s["segments"]] == [True, True]
    first, second = s["segments"]
    assert second["parent"] == first["id"] and second["resume_step"] == 50 and second["reason"] == "spike at 90"
    assert (first["start_step"], first["end_step"], first["end_reason"]) == (1, 100, "completed")
    assert first["start_time"] <= first["end_time"] <= second["start_time"] <= second["end_time"]
    assert s["metrics"] == ["grad_norm", "loss"]
    assert s["events"] == {"checkpoint": 1, "overflow": 1} and s["annotations"] == 1
    text = cli("summary", run_dir)
    assert text.returncode == 0 and "resumed from 50" in text.stdout and "lr: 0.0003 -> 0.0001" in text.stdout


def test_ingest_is_idempotent_from_the_cli(run_dir):
    first = cli("ingest", run_dir, "-q")
    assert first.returncode == 0, first.stderr
    # 100 steps x 2 metrics + 70 steps x 1 metric, from the two segments' rank logs (the number of
    # records depends on how the flush thread grouped the steps into blocks; the points do not)
    assert re.search(r"ingested [1-9]\d* records \(270 metric points, .*\) from 2 files", first.stdout), first.stdout
    store = open_store(layout.default_store_path(run_dir), fallback=False)  # what the CLI left on disk
    try:
        assert queries.series(store, "run", "loss")["step"].tolist() == list(range(1, 121))  # 1..50, then 51..120
        assert len(queries.series(store, "run", "loss", which="all")) == 170  # the abandoned 51..100 too
        assert queries.series(store, "run", "grad_norm")["step"].tolist() == list(range(1, 51))  # 51.. abandoned
        assert queries.event_counts(store, "run") == {"checkpoint": 1, "overflow": 1}
        assert len(queries.segments(store, "run")) == 2
    finally:
        store.close()
    again = cli("ingest", run_dir, "-q")
    assert again.returncode == 0, again.stderr
    assert "ingested 0 records (0 metric points" in again.stdout, again.stdout


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "file.txt").write_text("hi") and p / "file.txt", "is a file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "not a midflight run directory"),
    ],
)
def test_bad_paths_give_one_line_errors(tmp_path, make, message):
    out = cli("summary", make(tmp_path))
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_bad_annotate_arguments(run_dir):
    out = cli("annotate", run_dir, "--step", -5, "--text", "x")
    assert out.returncode == 2 and "[0, 2**63)" in out.stderr and "Traceback" not in out.stderr
    out = cli("annotate", run_dir, "--step", "ten", "--text", "x")
    assert out.returncode == 2 and "is not a number" in out.stderr


def test_garbage_files_are_skipped_and_counted(run_dir):
    seg = next((run_dir / "segments").iterdir())
    with open(seg / "rank-00000.jsonl", "ab") as f:
        f.write(b"this is not json\n")
        f.write(b'{"k":"metrics","names":["loss"],"rows":[[1,2]]}\n')  # rows do not match names
        f.write(b"\xff\xfe\x00binary\n")
        f.write(b'{"k":"metrics","names":["loss"],"rows":[[101, 1.0, 0.5]]}\n')  # a good one after the garbage
    (seg / "rank-00001.jsonl").write_bytes(os.urandom(4096) + b"\n")
    (run_dir / "segments" / "not a segment!").mkdir()
    out = cli("summary", run_dir, "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    problems = {p["file"].split("/")[-1]: p for p in s["ingest_problems"]}
    assert problems["rank-00000.jsonl"]["malformed"] == 3
    assert problems["rank-00000.jsonl"]["examples"][0][0] > 1  # line numbers are reported
    assert problems["rank-00001.jsonl"]["malformed"] >= 1
    text = cli("summary", run_dir)
    assert "malformed lines skipped" in text.stdout


def test_long_ingest_shows_progress(run_dir, monkeypatch, capsys):
    from midflight.logbook.store import ingest as ingest_mod
    from midflight.logbook.store import memory

    monkeypatch.setattr(ingest_mod, "PROGRESS_MIN_BYTES", 0)
    report = ingest_mod.ingest(memory(), [run_dir], progress=True)
    err = capsys.readouterr().err
    assert "ingest" in err and "100%" in err and report.records > 0


def test_garbage_segment_header_is_reported_not_fatal(run_dir):
    seg = sorted((run_dir / "segments").iterdir())[0]
    (seg / "segment.json").write_bytes(b"\x00\x01 not json" + b"[" * 100_000)
    out = cli("ingest", run_dir)
    assert out.returncode == 0, out.stderr
    assert "skipped 1 malformed" in out.stdout and "segment header" in out.stdout
    s = json.loads(cli("summary", run_dir, "--json").stdout)
    assert len(s["segments"]) == 2 and s["last_step"] == 120  # the rank logs still carry the data


def test_metrics_record_without_names_is_one_malformed_line(run_dir):
    seg = sorted((run_dir / "segments").iterdir())[0]
    assert cli("ingest", run_dir, "-q").returncode == 0
    with open(seg / "rank-00000.jsonl", "ab") as f:
        f.write(b'{"k":"metrics","names":[],"rows":[[1,2.0]]}\n')
    for _ in range(2):  # not fatal, and not stuck: the offset moves past it
        out = cli("ingest", run_dir)
        assert out.returncode == 0, out.stderr
    s = json.loads(cli("summary", run_dir, "--json").stdout)
    assert s["ingest_problems"][0]["malformed"] == 1


def test_a_log_that_shrank_is_reported_and_the_rest_still_ingests(run_dir):
    assert cli("ingest", run_dir, "-q").returncode == 0
    first, second = sorted((run_dir / "segments").iterdir())
    log = first / "rank-00000.jsonl"
    log.write_bytes(log.read_bytes()[:100])  # someone truncated it
    with open(second / "rank-00000.jsonl", "ab") as f:
        f.write(b'{"k":"metrics","names":["loss"],"rows":[[121, 1.0, 0.5]]}\n')
    out = cli("summary", run_dir, "--json")
    assert out.returncode == 0, out.stderr
    assert "shrank" in out.stderr and "Traceback" not in out.stderr
    assert json.loads(out.stdout)["last_step"] == 121


def test_summary_carries_energy_co2_and_waste_of_the_sample():
    """The shipped trainer sample: estimated CPU energy, CO2eq at a chosen intensity and PUE, two wasted branches."""
    sample = os.path.join(os.path.dirname(__file__), "..", "..", "sample_runs", "opt-tiny-faults")
    out = cli("summary", sample, "--json", "-q", "--store", ":memory:", "--intensity", "400", "--pue", "1.5")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    energy = s["energy"]
    assert energy["estimated"] is True and energy["metered_j"] is None and energy["energy_j"] > 0
    assert s["co2eq_kg"] == pytest.approx(energy["energy_j"] / 3.6e6 * 0.400 * 1.5)
    assert s["co2"]["source"] == "given by the user" and s["co2"]["pue"] == 1.5
    assert [(w["first_step"], w["last_step"]) for w in s["wasted"]] == [(351, 379), (501, 529)]
    default = json.loads(cli("summary", sample, "--json", "-q", "--store", ":memory:").stdout)
    assert default["co2"]["intensity_g_per_kwh"] == 481 and "World" in default["co2"]["source"]
    bad = cli("summary", sample, "-q", "--store", ":memory:", "--region", "Atlantis")
    assert bad.returncode == 2 and "no grid intensity for 'Atlantis'" in bad.stderr


def test_summary_projects_a_live_run_to_its_planned_length(tmp_path):
    """A run half-way through its planned steps: the projection doubles the measured energy (same J/token)."""
    import time

    run_dir = tmp_path / "run"
    with logbook.init(run_dir, config={"steps": 200}) as run:
        run.event("model", params=1_000_000)
        for step in range(1, 101):
            run.log({"loss": 1.0, "tokens": step * 1000}, step=step)
        run.telemetry({"energy_j": 0.0}, device="gpu0", step=1)
        time.sleep(0.05)
        run.telemetry({"energy_j": 500.0}, device="gpu0", step=100)
    s = json.loads(cli("summary", run_dir, "--json", "-q", "--intensity", "100").stdout)
    proj = s["projection"]
    assert proj["planned_steps"] == 200 and proj["planned_tokens"] == 200_000
    assert proj["projected_j"] == pytest.approx(2 * s["energy"]["energy_j"])
    assert proj["co2eq_kg"] == pytest.approx(proj["projected_j"] / 3.6e6 * 0.1)
    assert "6·N·D" in proj["assumptions"]
