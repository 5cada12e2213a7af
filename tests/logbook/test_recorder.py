"""Recorder -> event log -> ingest -> query round trips through the public API."""

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

import logbook
from logbook.record import layout
from logbook.record.recorder import RecorderWarning
from logbook.store import memory, queries
from logbook.store.ingest import ingest


def _ingest(run_dir):
    store = memory()
    report = ingest(store, [run_dir])
    return store, report


def test_log_roundtrip_keeps_values_steps_and_nonfinite(tmp_path):
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, name="r", config={"lr": 1e-3}) as run:
        for s in range(100):
            run.log({"loss": 1.0 / (s + 1), "lr": 1e-3}, step=s)
        run.log({"loss": float("nan"), "grad_norm": float("inf")}, step=100)
        run.log({"grad_norm": float("-inf")}, step=101)
    store, report = _ingest(run_dir)
    assert report.malformed == 0
    loss = queries.series(store, "run", "loss")
    assert list(loss["step"]) == list(range(101))
    assert loss["value"].iloc[3] == pytest.approx(0.25)
    assert math.isnan(loss["value"].iloc[-1])
    gn = queries.series(store, "run", "grad_norm")
    assert list(gn["value"]) == [math.inf, -math.inf]


def test_tensor_values_are_resolved_at_flush_time(tmp_path):
    run = logbook.init(tmp_path / "run", flush_every=60)
    t = torch.tensor(2.5)
    run.log(
        {"loss": t, "acc": torch.tensor(1, dtype=torch.int64), "half": torch.tensor(0.5, dtype=torch.float16)}, step=1
    )
    assert run.flush()
    run.finish()
    store, _ = _ingest(tmp_path / "run")
    got = {n: queries.series(store, "run", n)["value"].tolist() for n in ("loss", "acc", "half")}
    assert got == {"loss": [2.5], "acc": [1.0], "half": [0.5]}


def test_log_never_raises_and_counts_bad_values(tmp_path):
    run = logbook.init(tmp_path / "run", flush_every=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.log(None, step=1)  # not a dict
        run.log({"loss": "high", "ok": 1.0}, step=2)  # a string is not a number
        run.log({"vec": torch.ones(3), "ok": 2.0}, step=3)  # not a scalar
        run.log({"ok": 3.0}, step="four")  # bad step
        run.flush()
    run.finish()
    assert run.dropped_values == 2 and run.dropped_records == 2  # log(None) and the bad step
    assert any(issubclass(w.category, RecorderWarning) for w in caught)
    store, report = _ingest(tmp_path / "run")
    assert report.malformed == 0
    assert queries.series(store, "run", "ok")["value"].tolist() == [1.0, 2.0]


def test_auto_step_and_events(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        run.log({"loss": 1.0})
        run.log({"loss": 2.0})
        run.log({"loss": 3.0}, step=10)
        run.log({"loss": 4.0})
        run.event("overflow", step=11, scale_before=4.0, scale_after=2.0)
        run.event("checkpoint", step=11, path="ckpt/step-11", obj=object())  # odd field: stored as text
    store, _ = _ingest(tmp_path / "run")
    assert queries.series(store, "run", "loss")["step"].tolist() == [0, 1, 10, 11]
    ev = queries.events(store, "run", kinds=["overflow"])
    assert json.loads(ev["fields"].iloc[0]) == {"scale_before": 4.0, "scale_after": 2.0}
    assert queries.event_counts(store, "run") == {"checkpoint": 1, "overflow": 1}


def test_end_reasons(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with logbook.init(run_dir) as run:
            run.log({"loss": 1.0}, step=1)
            raise RuntimeError("CUDA error: an illegal memory access")
    run = logbook.init(run_dir, resume_step=1)
    run.finish("stopped")
    with pytest.raises(ValueError):
        logbook.init(run_dir, resume_step=1).finish("exploded")
    store, _ = _ingest(run_dir)
    segs = queries.segments(store, "run")
    assert segs["end_reason"].tolist()[:2] == ["crashed", "stopped"]
    assert "illegal memory access" in segs["error"].iloc[0]


def test_process_killed_without_close_is_unknown_and_exit_code_recorded(tmp_path):
    code = (
        "import logbook, os, sys\n"
        f"run = logbook.init({str(tmp_path / 'a')!r})\n"
        "run.log({'loss': 1.0}, step=1); run.flush()\n"
        "os._exit(0)\n"  # dies without a close record
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code_b = (
        "import logbook, sys\n"
        f"with logbook.init({str(tmp_path / 'b')!r}) as run:\n"
        "    run.log({'loss': 1.0}, step=1)\n"
        "    sys.exit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code_b]).returncode == 3
    store = memory()
    ingest(store, [tmp_path / "a", tmp_path / "b"])
    a = queries.segments(store, "a", now=1e12)  # long after its last write
    assert a["end_reason"].tolist() == ["unknown"]
    assert queries.run_status(store, "a") in ("unknown", "running")
    b = queries.segments(store, "b")
    assert b["end_reason"].tolist() == ["crashed"] and int(b["exit_code"].iloc[0]) == 3


def test_uncaught_exception_without_context_manager_is_crashed(tmp_path):
    code = (
        "import logbook\n"
        f"run = logbook.init({str(tmp_path / 'run')!r})\n"
        "run.log({'loss': 1.0}, step=1)\n"
        "raise SystemError('NCCL watchdog timeout')\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 1
    store, _ = _ingest(tmp_path / "run")
    segs = queries.segments(store, "run")
    assert segs["end_reason"].tolist() == ["crashed"]
    assert "NCCL watchdog timeout" in segs["error"].iloc[0]


def test_hostile_run_name_stays_text_and_inside_the_run_dir(tmp_path):
    run_dir = tmp_path / "box" / "run"
    evil = "../../../escaped/<script>alert(1)</script>\x00\n"
    with logbook.init(run_dir, name=evil) as run:
        run.log({"loss": 1.0}, step=1)
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all(run_dir in p.parents for p in written)
    store, _ = _ingest(run_dir)
    assert store.cursor().execute("SELECT name FROM runs").fetchone()[0] == evil
    with pytest.raises(ValueError):
        logbook.init(run_dir, segment_id="../../etc")
    with pytest.raises(ValueError):
        layout.segment_dir(run_dir, "..")


def test_config_diff_against_parent(tmp_path):
    run_dir = tmp_path / "run"
    logbook.init(run_dir, config={"optim": {"lr": 1e-4, "betas": [0.9, 0.95]}, "clip": 1.0}).finish()
    logbook.init(
        run_dir,
        config={"optim": {"lr": 5e-5, "betas": [0.9, 0.98]}, "clip": 1.0, "wd": 0.1},
        resume_step=0,
        reason="lower lr",
    ).finish()
    store, _ = _ingest(run_dir)
    segs = queries.segments(store, "run")
    diff = json.loads(segs["config_diff"].iloc[1])
    assert diff == {"optim.lr": [1e-4, 5e-5], "optim.betas": [[0.9, 0.95], [0.9, 0.98]], "wd": [None, 0.1]}
    assert segs["reason"].iloc[1] == "lower lr"


def test_logbook_imports_without_torch_or_duckdb():
    code = "import sys, logbook; r = logbook.init; assert 'torch' not in sys.modules and 'duckdb' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rank_from_env_and_two_ranks_share_a_segment(tmp_path):
    env_base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "TORCHELASTIC_RUN_ID": "job-1", "WORLD_SIZE": "2"}
    code = f"import logbook; logbook.init({str(tmp_path / 'run')!r}).log({{'loss': 1.0}}, step=1)"
    import os

    for rank in (0, 1):
        env = {**os.environ, **env_base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    seg_dirs = list((tmp_path / "run" / "segments").iterdir())
    assert len(seg_dirs) == 1
    assert sorted(p.name for p in seg_dirs[0].glob("rank-*.jsonl")) == ["rank-00000.jsonl", "rank-00001.jsonl"]


def test_telemetry_samples_per_device(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        run.telemetry({"gpu/power_w": 301.5, "gpu/temp_c": 64.0}, device="cuda:0")
        run.telemetry({"gpu/power_w": 299.0, "gpu/temp_c": 66.0}, device="cuda:1", step=7)
    store, report = _ingest(tmp_path / "run")
    assert report.malformed == 0
    rows = store.cursor().execute("SELECT device, step, name, value FROM telemetry ORDER BY device, name").fetchall()
    assert rows == [
        ("cuda:0", None, "gpu/power_w", 301.5),
        ("cuda:0", None, "gpu/temp_c", 64.0),
        ("cuda:1", 7, "gpu/power_w", 299.0),
        ("cuda:1", 7, "gpu/temp_c", 66.0),
    ]


def test_reopened_rank_file_with_torn_tail_keeps_every_record(tmp_path):
    """A relaunch that reuses a segment id appends after a torn line without damaging its own records."""
    run = logbook.init(tmp_path / "run", segment_id="seg-a")
    run.log({"loss": 1.0}, step=1)
    run.finish()
    path = layout.rank_file(tmp_path / "run", "seg-a", 0)
    with open(path, "ab") as f:
        f.write(b'{"k":"metrics","names":["loss"],"rows":[[2,')  # killed mid-write
    with logbook.init(tmp_path / "run", segment_id="seg-a") as run:
        run.log({"loss": 3.0}, step=3)
    store, report = _ingest(tmp_path / "run")
    assert queries.series(store, "run", "loss")["step"].tolist() == [1, 3]
    assert report.malformed == 1  # the torn fragment, now terminated, is counted once


def test_queue_is_bounded_and_recovers_after_a_flush(tmp_path):
    run = logbook.init(tmp_path / "run", flush_every=60, max_queue=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(25):  # the flush thread "cannot keep up": it sleeps for 60 s
            run.log({"loss": float(s)}, step=s)
    assert run.dropped_records == 15 and any("cannot keep up" in str(w.message) for w in caught)
    run.flush()
    run.log({"loss": 99.0}, step=99)
    run.finish()
    store, _ = _ingest(tmp_path / "run")
    assert queries.series(store, "run", "loss")["step"].tolist() == [*range(10), 99]


def test_blocks_are_strict_json_and_old_nan_tokens_still_read(tmp_path):
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, segment_id="seg-a") as run:
        run.log({"loss": float("nan"), "gn": float("-inf")}, step=1)
    path = layout.rank_file(run_dir, "seg-a", 0)
    block = next(json.loads(line) for line in path.read_text().splitlines() if '"metrics"' in line)
    assert block["rows"][0][2:] == [None, None]  # strict JSON: parseable by any tool
    assert block["nonfinite"] == [[0, 0, "NaN"], [0, 1, "-Infinity"]]
    with open(path, "ab") as f:
        f.write(b'{"k":"metrics","names":["loss"],"rows":[[2,1.0,NaN],[3,1.0,Infinity]]}\n')  # format 1
        f.write(b'{"k":"metrics","names":["loss"],"rows":[[4,1.0,null]],"nonfinite":[[0,5,"NaN"]]}\n')  # bad index
    store, report = _ingest(run_dir)
    loss = queries.series(store, "run", "loss")
    assert loss["step"].tolist() == [1, 2, 3] and report.malformed == 1
    assert math.isnan(loss["value"].iloc[0]) and math.isnan(loss["value"].iloc[1]) and loss["value"].iloc[2] == math.inf
    assert queries.series(store, "run", "gn")["value"].tolist() == [-math.inf]
