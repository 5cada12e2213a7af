"""Recorder -> event log -> ingest -> query round trips through the public API."""

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from midflight import logbook
from midflight.logbook.record import layout
from midflight.logbook.record.recorder import RecorderWarning
from midflight.logbook.store import memory, queries
from midflight.logbook.store.ingest import ingest


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


class _NotAMapping:
    """An object that is not a dict of metrics."""


# (call on a fresh run, exception, words the message must hold). Each is a caller's mistake.
MISUSE = [
    (lambda run: run.log(None, step=1), TypeError, ["dict", "NoneType"]),
    (lambda run: run.log([("loss", 1.0)], step=1), TypeError, ["dict", "list"]),
    (lambda run: run.log({"loss": b"high"}, step=1), TypeError, ["'loss'", "bytes", "not a real number"]),
    (lambda run: run.log({"ok": 1.0, "loss": None}, step=1), TypeError, ["'loss'", "NoneType"]),
    (lambda run: run.log({"loss": [1.0]}, step=1), TypeError, ["'loss'", "list", "midflight.Histogram(...)"]),
    (lambda run: run.log({"img": _NotAMapping()}, step=1), TypeError, ["'img'", "histograms and text"]),
    (lambda run: run.log({"v": {"a": 1.0, "b": [None]}}, step=1), TypeError, ["'v.b'", "list"]),
    (lambda run: run.log({"v": {2: 1.0}}, step=1), TypeError, ["names must be text"]),
    (lambda run: run.log({"s": "x" * 40_000}, step=1), ValueError, ["'s'", "40,000 characters"]),
    (lambda run: run.log({"h": logbook.Histogram([1.0, "a"])}, step=1), TypeError, ["element 1", "str"]),
    (lambda run: run.log({"loss": 1 + 2j}, step=1), TypeError, ["'loss'", "complex"]),
    (lambda run: run.log({"loss": torch.tensor(1 + 2j)}, step=1), TypeError, ["'loss'", "complex64"]),
    (lambda run: run.log({"loss": np.datetime64("2024-01-01")}, step=1), TypeError, ["'loss'", "datetime64"]),
    (lambda run: run.log({"vec": torch.ones(10)}, step=1), ValueError, ["'vec'", "shape (10,)", "Histogram(...)"]),
    (lambda run: run.log({"vec": np.ones(3)}, step=1), ValueError, ["'vec'", "3 values", "Histogram(...)"]),
    (lambda run: run.log({1: 1.0}, step=1), TypeError, ["names must be text", "int"]),
    (lambda run: run.log({"": 1.0}, step=1), ValueError, ["empty"]),
    (lambda run: run.log({"step": 1.0}, step=1), ValueError, ["'step'", "reserved"]),
    (lambda run: run.log({"wall_time": 1.0}, step=1), ValueError, ["'wall_time'", "reserved"]),
    (lambda run: run.log({"loss": 1.0}, step="four"), TypeError, ["step must be an integer", "str"]),
    (lambda run: run.log({"loss": 1.0}, step=2.0), TypeError, ["step must be an integer", "float"]),
    (lambda run: run.log({"loss": 1.0}, step=True), TypeError, ["step must be an integer", "bool"]),
    (lambda run: run.log({"loss": 1.0}, step=torch.tensor(2)), TypeError, ["step must be an integer", "Tensor"]),
    (lambda run: run.event(3, step=1), TypeError, ["kind must be text", "int"]),
    (lambda run: run.event("", step=1), ValueError, ["kind must not be empty"]),
    (lambda run: run.event("checkpoint", step="ten"), TypeError, ["step must be an integer"]),
    (lambda run: run.telemetry({"power_w": "hot"}, device="gpu0"), TypeError, ["'power_w'", "str"]),
    (lambda run: run.telemetry({"power_w": 1.0}, device=0), TypeError, ["device must be text"]),
    (lambda run: run.telemetry({"step": 1.0}, device="gpu0"), ValueError, ["'step'", "reserved"]),
    (lambda run: run.telemetry({"power_w": 1.0}, device="gpu0", step=1.5), TypeError, ["step must be an integer"]),
    (lambda run: run.telemetry(_NotAMapping(), device="gpu0"), TypeError, ["dict", "_NotAMapping"]),
]


@pytest.mark.parametrize("call, exc, words", MISUSE, ids=[f"misuse{i}" for i in range(len(MISUSE))])
def test_misuse_raises_at_the_call_site_and_records_nothing(tmp_path, call, exc, words):
    run = logbook.init(tmp_path / "run", flush_every=60)
    run.log({"loss": 0.5}, step=0)
    queued = len(run._q)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecorderWarning)  # raised, not warned about
        with pytest.raises(exc) as info:
            call(run)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert len(run._q) == queued  # nothing was enqueued for the bad call
    run.log({"loss": 0.25}, step=1)  # and the run goes on
    run.finish()
    assert run.dropped_records == 0 and run.dropped_values == 0
    store, report = _ingest(tmp_path / "run")
    assert report.malformed == 0
    assert queries.series(store, "run", "loss")["value"].tolist() == [0.5, 0.25]
    assert queries.event_counts(store, "run") == {}
    assert store.cursor().execute("SELECT count(*) FROM telemetry").fetchone() == (0,)
    assert queries.metric_names(store, "run") == ["loss"]


def test_numpy_bool_tensor_and_nonfinite_values_round_trip(tmp_path):
    run = logbook.init(tmp_path / "run", flush_every=60)
    values = {
        "np_f32": np.float32(0.5),
        "np_i64": np.int64(7),
        "np_bool": np.bool_(True),
        "np_0d": np.array(2.5),
        "bool": True,  # a flag is recorded as 0/1
        "t_0d": torch.tensor(1.5),
        "t_1elem": torch.tensor([4.0]),
        "t_bool": torch.tensor(False),
        "t_grad": torch.tensor(3.0, requires_grad=True) * 2,
        "nan": float("nan"),
        "t_inf": torch.tensor(float("inf")),
        "np_ninf": np.float64("-inf"),
    }
    run.log(values, step=np.int64(5))  # a numpy integer step is an integer
    run.telemetry({"power_w": np.float32(250.0), "busy": True}, device="gpu0", step=np.int32(5))
    run.finish()
    assert run.dropped_values == 0 and run.dropped_records == 0
    store, report = _ingest(tmp_path / "run")
    assert report.malformed == 0
    got = {n: queries.series(store, "run", n)[["step", "value"]].values.tolist()[0] for n in values}
    assert all(step == 5 for step, _ in got.values())
    want = {
        "np_f32": 0.5,
        "np_i64": 7.0,
        "np_bool": 1.0,
        "np_0d": 2.5,
        "bool": 1.0,
        "t_0d": 1.5,
        "t_1elem": 4.0,
        "t_bool": 0.0,
        "t_grad": 6.0,
        "t_inf": math.inf,
        "np_ninf": -math.inf,
    }
    assert {n: v for n, (_, v) in got.items() if n != "nan"} == want
    assert math.isnan(got["nan"][1])
    rows = store.cursor().execute("SELECT step, name, value FROM telemetry ORDER BY name").fetchall()
    assert rows == [(5, "busy", 1.0), (5, "power_w", 250.0)]


def test_log_reads_only_tensor_metadata_and_counts_what_the_flush_cannot_read(tmp_path):
    """A meta tensor has a shape and a dtype but no data: any .item() at the call site would raise."""
    run = logbook.init(tmp_path / "run", flush_every=60)
    run.log({"loss": torch.tensor(1.0), "ghost": torch.empty((), device="meta")}, step=1)
    with pytest.raises(ValueError, match="shape"):
        run.log({"ghosts": torch.empty(2, device="meta")}, step=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.flush()
    run.finish()
    assert run.dropped_values == 1  # unreadable at flush: dropped and counted, not raised
    assert any("ghost" in str(w.message) for w in caught if issubclass(w.category, RecorderWarning))
    store, _ = _ingest(tmp_path / "run")
    assert queries.series(store, "run", "loss")["value"].tolist() == [1.0]


def test_steps_repeat_freely_but_go_back_only_after_a_restart(tmp_path):
    run = logbook.init(tmp_path / "run", flush_every=60)
    run.log({"loss": 3.0}, step=10)
    run.log({"eval_loss": 3.5}, step=10)  # eval metrics at the same step: fine
    run.log({"loss": 2.0}, step=20)
    with pytest.raises(ValueError, match=r"step=15.*last logged step 20.*restart"):
        run.log({"loss": 9.0}, step=15)
    run.log({"loss": 1.5})  # the refused call did not move the step: this is step 21
    run.event("checkpoint", step=5)  # an event's step may be lower: it does not move log()'s steps
    with pytest.raises(ValueError, match="went back"):
        run.log({"loss": 9.0}, step=12)
    run.event("restart", step=12, checkpoint="ckpt/step-12.pt")  # resumed from the checkpoint of step 12
    run.log({"eval_loss": 2.2}, step=12)  # the checkpoint's own step again: fine
    run.log({"loss": 2.1})  # step 13
    with pytest.raises(ValueError, match="last logged step 13"):
        run.log({"loss": 9.0}, step=11)
    run.event("restart")  # a restart without a step allows any step
    run.log({"loss": 5.0}, step=0)
    run.finish()
    store, _ = _ingest(tmp_path / "run")
    loss = queries.series(store, "run", "loss")
    assert loss[["step", "value"]].values.tolist() == [[0, 5.0], [10, 3.0], [13, 2.1], [20, 2.0], [21, 1.5]]
    assert queries.series(store, "run", "eval_loss")["step"].tolist() == [10, 12]
    assert 9.0 not in loss["value"].tolist()


def test_a_new_segment_starts_its_own_steps(tmp_path):
    """Resuming from a checkpoint in a new launch (logbook.init(resume_step=...)) replays steps freely."""
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, segment_id="seg-a") as run:
        for s in range(1, 31):
            run.log({"loss": 1.0}, step=s)
    with logbook.init(run_dir, segment_id="seg-b", resume_step=20) as run:
        for s in range(21, 26):
            run.log({"loss": 0.5}, step=s)
    store, _ = _ingest(run_dir)
    assert queries.series(store, "run", "loss", which="all")["step"].tolist().count(21) == 2


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


def test_config_updates_after_init_are_recorded_as_diffs(tmp_path):
    """W&B's run.config.update and Lightning's log_hyperparams come after init: each is a config event with a diff."""
    import json

    from midflight.logbook.store import memory, queries
    from midflight.logbook.store.ingest import ingest

    with logbook.init(tmp_path / "run", config={"lr": 0.1, "optim": {"beta2": 0.98}}) as run:
        run.log({"loss": 1.0}, step=1)
        assert run.update_config({"optim": {"beta2": 0.95, "eps": 1e-8}, "batch": 32}) == {
            "batch": [None, 32],
            "optim.beta2": [0.98, 0.95],
            "optim.eps": [None, 1e-8],
        }
        assert run.update_config({"batch": 32}) == {}  # nothing changed: nothing recorded
        assert run.config == {"lr": 0.1, "optim": {"beta2": 0.95, "eps": 1e-8}, "batch": 32}
        with pytest.raises(TypeError, match="dict of config values"):
            run.update_config([("lr", 1)])
    store = memory()
    ingest(store, [tmp_path / "run"])
    ev = queries.events(store, "run", ["config"])
    assert ev["step"].tolist() == [2]
    assert json.loads(ev["fields"].iloc[0])["diff"]["optim.beta2"] == [0.98, 0.95]
