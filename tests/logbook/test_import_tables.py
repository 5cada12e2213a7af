"""Importing TensorBoard event files and CSV tables (W&B history, wide, long): real files, real store."""

import gzip
import math

import numpy as np
import pytest

from midflight import logbook
from midflight.logbook.importers import import_logs, sniff
from midflight.logbook.store import queries

WALL0 = 1_700_000_000.0


def _f32(x: float) -> float:
    return float(np.float32(x))


def _loss(step: int, launch: int) -> float:
    return 10.0 / (step + 1) + 0.125 * launch


def _tb_launch(logdir, steps, launch, *, extras=False):
    """One launch's event file, written with torch's SummaryWriter; wall time WALL0 + 1000·launch + step."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s in steps:
        t = WALL0 + 1000 * launch + s
        w.add_scalar("train/loss", _loss(s, launch), s, walltime=t)
        w.add_scalar("train/grad_norm", 0.5 + s / 100, s, walltime=t)
        w.add_scalar("lr", 1e-4 * (1 + launch), s, walltime=t)
        if extras and s == 5:
            w.add_histogram("weights", np.arange(10.0), s, walltime=t)
            w.add_image("sample", np.zeros((3, 4, 4)), s, walltime=t)
            w.add_text("note", "hello", s, walltime=t)
    w.close()
    return sorted(logdir.glob("events.out.tfevents.*"))[-1] if launch == 0 else None


def _open(run_dir):
    store, _ = logbook.open_run(run_dir)
    return store


def _count(store, run, name=None):
    sql = "SELECT count(*) FROM metrics WHERE run_id = ?" + (" AND name = ?" if name else "")
    return store.cursor().execute(sql, [run] + ([name] if name else [])).fetchone()[0]


def _rows(store, run, name):
    """{(segment, step): (value, wall_time)} of a metric."""
    rows = (
        store.cursor()
        .execute("SELECT segment_id, step, value, wall_time FROM metrics WHERE run_id = ? AND name = ?", [run, name])
        .fetchall()
    )
    return {(seg, step): (v, t) for seg, step, v, t in rows}


# --------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_rollback_two_launches(tmp_path):
    logs = tmp_path / "logs"
    _tb_launch(logs, range(100), 0, extras=True)
    _tb_launch(logs, range(60, 100), 1)
    files = sorted(logs.iterdir())
    assert len(files) == 2
    run_dir = tmp_path / "run"
    report = import_logs("auto", [logs], run_dir)
    assert report.notes[0].startswith("format: tensorboard")
    assert report.malformed == 0
    assert report.steps == 140
    # events: 2 file-version events + a histogram, an image and a text event are skipped
    assert report.other_lines == 5
    assert report.lines == 2 + 3 + 3 * 140

    store = _open(run_dir)
    segs = queries.segments(store, "run")
    assert len(segs) == 2
    first, second = segs["segment_id"].tolist()
    assert segs["parent_id"].tolist()[1] == first
    assert sorted(queries.metric_names(store, "run")) == ["grad_norm", "loss", "lr"]

    eff = queries.series(store, "run", "loss")
    assert eff["step"].is_unique and len(eff) == 100
    assert eff["step"].tolist() == list(range(100))
    by_step = dict(zip(eff["step"], eff["segment_id"]))
    assert {by_step[s] for s in range(60)} == {first}
    assert {by_step[s] for s in range(60, 100)} == {second}
    for s, v in zip(eff["step"], eff["value"]):
        assert v == _f32(_loss(s, 0 if s < 60 else 1))

    rows = _rows(store, "run", "loss")
    assert len(rows) == 140
    assert rows[(first, 70)] == (_f32(_loss(70, 0)), WALL0 + 70)  # superseded, kept
    assert rows[(second, 70)] == (_f32(_loss(70, 1)), WALL0 + 1070)
    assert _rows(store, "run", "lr")[(second, 99)] == (_f32(2e-4), WALL0 + 1099)


def test_tensorboard_tree_of_runs_and_reimport(tmp_path):
    logs = tmp_path / "logs"
    _tb_launch(logs / "a", range(10), 0)
    _tb_launch(logs / "b" / "seed 1", range(20), 0)
    out = tmp_path / "runs"
    report = import_logs("tensorboard", [logs], out, name="sweep")
    assert any("sweep/a -> a" in n and "sweep/b/seed 1 -> b__seed_1" in n for n in report.notes)
    store = _open(out)
    assert queries.run_ids(store) == ["a", "b__seed_1"]
    names = dict(zip(queries.runs(store)["run_id"], queries.runs(store)["name"]))
    assert names == {"a": "sweep/a", "b__seed_1": "sweep/b/seed 1"}
    assert _count(store, "a", "loss") == 10 and _count(store, "b__seed_1", "loss") == 20
    before = {r: _count(store, r) for r in ("a", "b__seed_1")}
    store.close()

    again = import_logs("tensorboard", [logs], out, name="sweep")
    assert again.new_bytes == 0 and again.appended_bytes == 0
    store = _open(out)
    assert {r: _count(store, r) for r in ("a", "b__seed_1")} == before == {"a": 30, "b__seed_1": 60}

    with pytest.raises(ValueError, match="already holds one run"):
        import_logs("tensorboard", [logs], out / "a")


def test_tensorboard_truncated_and_corrupt_files(tmp_path):
    logs = tmp_path / "logs"
    full = _tb_launch(logs, range(50), 0)
    data = full.read_bytes()

    cut = tmp_path / "cut" / full.name
    cut.parent.mkdir()
    cut.write_bytes(data[:-30])  # the last record loses its end
    report = import_logs("tensorboard", [cut], tmp_path / "run_cut")
    assert report.malformed == 1
    source, line, message, _ = report.examples[0]
    assert source == full.name and line == report.lines + 1 and "truncated or corrupt" in message
    store = _open(tmp_path / "run_cut")
    assert _count(store, "run_cut", "loss") == 50 and _count(store, "run_cut", "lr") == 49
    store.close()

    bad = tmp_path / "bad" / full.name
    bad.parent.mkdir()
    broken = bytearray(data)
    broken[len(data) // 2] ^= 0xFF  # a CRC mismatch in the middle: the rest of the file is unreadable
    bad.write_bytes(bytes(broken))
    report = import_logs("tensorboard", [bad], tmp_path / "run_bad")
    assert report.malformed == 1 and "truncated or corrupt" in report.examples[0][2]
    store = _open(tmp_path / "run_bad")
    n = _count(store, "run_bad", "loss")
    assert 10 < n < 50
    eff = queries.series(store, "run_bad", "loss")
    assert eff["value"].tolist() == [_f32(_loss(s, 0)) for s in range(n)]


def test_tensorboard_tf2_tensor_scalars(tmp_path):
    """TF2 writes the `scalars` plugin metadata with a tag's first value only; doubles are read exactly."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logs = tmp_path / "tf2"
    w = EventFileWriter(str(logs))
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    for s in range(5):
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[0.1 * s])
        value = summary_pb2.Summary.Value(tag="loss", tensor=tensor, metadata=meta if s == 0 else None)
        text = summary_pb2.Summary.Value(tag="note", tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING))
        w.add_event(event_pb2.Event(wall_time=WALL0 + s, step=s, summary=summary_pb2.Summary(value=[value, text])))
    w.close()
    report = import_logs("tensorboard", [logs], tmp_path / "run")
    assert report.steps == 5
    store = _open(tmp_path / "run")
    assert queries.metric_names(store, "run") == ["loss"]
    assert queries.series(store, "run", "loss")["value"].tolist() == [0.1 * s for s in range(5)]


# --------------------------------------------------------------------------------------------- CSV
WANDB = """,_step,_runtime,_timestamp,train/loss,train/grad_norm,lr,eval/loss,_wandb
0,0,1.5,1700000000.25,2.5,1.25,0.0001,,
1,1,2.5,1700000001.25,2.25,,0.0001,,
2,2,3.5,1700000002.25,,,,1.75,
3,3,4.5,1700000003.25,NaN,inf,0.0002,,
4,4,5.5,1700000004.25,2.0,0.5,0.0002,,{"runtime": 5}
"""


def test_wandb_history_export(tmp_path):
    src = tmp_path / "history.csv"
    src.write_text(WANDB)
    assert sniff(src)[0] == "csv"
    report = import_logs("auto", [src], tmp_path / "wb")
    assert report.malformed == 0 and report.steps == 5
    assert any("W&B history table, step column '_step'" in n for n in report.notes)
    assert any("ignored unnamed column(s) [1] (a pandas index" in n for n in report.notes)
    store = _open(tmp_path / "wb")
    assert sorted(queries.metric_names(store, "wb")) == ["eval/loss", "grad_norm", "loss", "lr"]
    loss = _rows(store, "wb", "loss")
    assert {step: v for (_, step), (v, _) in loss.items() if not math.isnan(v)} == {0: 2.5, 1: 2.25, 4: 2.0}
    assert math.isnan(next(v for (_, step), (v, _) in loss.items() if step == 3))  # NaN kept, blank absent
    assert sorted(step for _, step in loss) == [0, 1, 3, 4]
    gn = _rows(store, "wb", "grad_norm")
    assert {step: v for (_, step), (v, _) in gn.items()} == {0: 1.25, 3: math.inf, 4: 0.5}
    assert [(step, t) for (_, step), (_, t) in sorted(_rows(store, "wb", "eval/loss").items())] == [(2, 1700000002.25)]
    assert [t for _, (_, t) in sorted(loss.items())] == [1700000000.25, 1700000001.25, 1700000003.25, 1700000004.25]
    header = queries.segments(store, "wb")
    assert len(header) == 1


def test_wandb_prefers_global_step_and_merges_rows(tmp_path):
    src = tmp_path / "history.csv"
    src.write_text(
        "_step,_timestamp,trainer/global_step,train/loss,eval/loss\n"
        "0,1700000000,100,2.5,\n"
        "1,1700000001,100,,2.0\n"
        "2,1700000002,200,2.25,\n"
        "3,1700000003,,,\n"
    )
    report = import_logs("csv", [src], tmp_path / "wb")
    assert any("'trainer/global_step' (an explicit global step, preferred over W&B's _step)" in n for n in report.notes)
    assert report.steps == 2  # the train and eval rows of step 100 are one step
    assert report.malformed == 1 and report.examples[0][1] == 5  # no step, no values: line 5
    store = _open(tmp_path / "wb")
    assert sorted(s for _, s in _rows(store, "wb", "loss")) == [100, 200]
    assert [s for _, s in _rows(store, "wb", "eval/loss")] == [100]
    assert "_step" not in queries.metric_names(store, "wb")


def test_wide_table_iso_time_nan_blank_and_garbage_rows(tmp_path):
    src = tmp_path / "metrics.csv"
    src.write_text(
        "iteration,loss,gnorm,learning_rate,time\n"  # line 1
        "0,NaN,1.0,0.001,2024-03-01 12:00:00\n"
        "1,,2.0,0.001,2024-03-01T12:00:01.5\n"
        "x,1.0,1.0,0.001,2024-03-01 12:00:02\n"  # line 4: not a step
        "2,inf,,0.001,2024-03-01T11:00:03+00:00\n"  # an explicit offset wins over --tz
        "3,1,2\n"  # line 6: wrong number of cells
        "2.5,1.0,1.0,0.001,\n"  # line 7: not an integer step
        "4,-inf,nan,0.001,\n"
    )
    report = import_logs("auto", [src], tmp_path / "wide", tz="Europe/Paris")
    assert report.lines == 7 and report.steps == 4 and report.malformed == 3
    assert [e[1] for e in report.examples] == [4, 6, 7]
    assert "step 'x' is not a number" in report.examples[0][2] and "5 cells" not in report.examples[1][2]
    assert "3 cells where the header has 5" in report.examples[1][2]
    store = _open(tmp_path / "wide")
    loss = {step: (v, t) for (_, step), (v, t) in _rows(store, "wide", "loss").items()}
    assert sorted(loss) == [0, 2, 4]  # the blank at step 1 is missing, not NaN
    assert math.isnan(loss[0][0]) and loss[2][0] == math.inf and loss[4][0] == -math.inf
    paris_noon = 1709290800.0  # 2024-03-01 12:00:00 in Paris (UTC+1)
    assert loss[0][1] == paris_noon and loss[2][1] == paris_noon + 3
    assert loss[4][1] is None or math.isnan(loss[4][1])  # no time cell: no wall time
    gn = {step: v for (_, step), (v, _) in _rows(store, "wide", "grad_norm").items()}
    assert gn[0] == 1.0 and gn[1] == 2.0 and 2 not in gn and math.isnan(gn[4])
    assert _rows(store, "wide", "lr")[(queries.segments(store, "wide")["segment_id"][0], 1)] == (
        0.001,
        paris_noon + 1.5,
    )
    assert store.cursor().execute("SELECT config FROM segments").fetchone()[0].count("CSV import does not convert")


def test_elapsed_time_column_is_a_metric_not_a_clock(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("step,time,throughput\n0,0.5,100\n1,1.5,200\n")
    report = import_logs("csv", [src], tmp_path / "r")
    assert any("2 'time' cells are below 1e+09" in n for n in report.notes)
    store = _open(tmp_path / "r")
    assert sorted(queries.metric_names(store, "r")) == ["time", "tokens_per_s"]
    assert queries.series(store, "r", "time")["value"].tolist() == [0.5, 1.5]
    walls = store.cursor().execute("SELECT wall_time FROM metrics WHERE run_id = 'r'").fetchall()
    assert all(w is None or math.isnan(w) for (w,) in walls)


def test_wide_table_steps_go_back_make_a_restart(tmp_path):
    src = tmp_path / "log.tsv"
    lines = ["step\ttimestamp\tloss"] + [f"{s}\t{WALL0 + s}\t{s}" for s in range(10)]
    lines += [f"{s}\t{WALL0 + 100 + s}\t{s + 0.5}" for s in range(5, 15)]
    src.write_text("\n".join(lines) + "\n")
    assert sniff(src)[0] == "csv"
    import_logs("auto", [src], tmp_path / "r")
    store = _open(tmp_path / "r")
    segs = queries.segments(store, "r")
    assert len(segs) == 2 and segs["parent_id"].tolist()[1] == segs["segment_id"][0]
    eff = queries.series(store, "r", "loss")
    assert eff["step"].tolist() == list(range(15))
    assert eff["value"].tolist() == [float(s) for s in range(5)] + [s + 0.5 for s in range(5, 15)]
    assert (eff["segment_id"] == segs["segment_id"][1]).sum() == 10


def test_long_table_grouped_by_metric_is_one_segment(tmp_path):
    src = tmp_path / "long.csv.gz"
    rows = ["tag;step;value;wall_time"]
    rows += [f"train/loss;{s};{10 - s / 10};{WALL0 + s}" for s in range(50)]
    rows += [f"lr;{s};{s / 1000}" + ";" for s in range(0, 50, 2)]
    rows += [f"eval/loss;{s};NaN;" for s in (10, 20)]
    with gzip.open(src, "wt") as f:
        f.write("\n".join(rows) + "\n")
    report = import_logs("csv", [src], tmp_path / "long")
    assert report.malformed == 0 and report.steps == 50 and report.lines == 77
    store = _open(tmp_path / "long")
    assert len(queries.segments(store, "long")) == 1
    loss = queries.series(store, "long", "loss")
    assert loss["step"].tolist() == list(range(50)) and loss["value"].tolist() == [10 - s / 10 for s in range(50)]
    assert queries.series(store, "long", "lr")["value"].tolist() == [s / 1000 for s in range(0, 50, 2)]
    assert queries.series(store, "long", "eval/loss")["value"].isna().all()
    t = queries.series(store, "long", "lr", x="time")
    assert t["x"].tolist() == [WALL0 + s for s in range(0, 50, 2)]  # the step's time, from its loss row


def test_long_table_rollback_inside_each_metric_group(tmp_path):
    src = tmp_path / "long.csv"
    rows = ["metric,step,value"]
    for name in ("loss", "grad_norm"):
        rows += [f"{name},{s},{s}" for s in range(20)]
        rows += [f"{name},{s},{s + 0.5}" for s in range(12, 30)]
    src.write_text("\n".join(rows) + "\n")
    import_logs("csv", [src], tmp_path / "r")
    store = _open(tmp_path / "r")
    segs = queries.segments(store, "r")
    assert len(segs) == 2 and segs["parent_id"].tolist()[1] == segs["segment_id"][0]
    for name in ("loss", "grad_norm"):
        eff = queries.series(store, "r", name)
        assert eff["step"].tolist() == list(range(30))
        assert eff["value"].tolist() == [float(s) for s in range(12)] + [s + 0.5 for s in range(12, 30)]


def test_csv_reimport_is_idempotent_and_errors_are_clear(tmp_path):
    src = tmp_path / "h.csv"
    src.write_text(WANDB)
    import_logs("csv", [src], tmp_path / "r")
    store = _open(tmp_path / "r")
    once = _count(store, "r")
    store.close()
    import_logs("csv", [src], tmp_path / "r")
    import_logs("csv", [src], tmp_path / "r")
    store = _open(tmp_path / "r")
    assert _count(store, "r") == once == 12

    nostep = tmp_path / "nostep.csv"
    nostep.write_text("epoch_time,loss\n1,2\n")
    with pytest.raises(ValueError, match="no step column: expected one of trainer/global_step"):
        import_logs("csv", [nostep], tmp_path / "x")


@pytest.mark.parametrize("fmt", ["csv", "auto"])
def test_a_header_cell_over_the_csv_limit_is_a_one_line_error(tmp_path, fmt):
    """Found by the long fuzz run: a header line with a cell over 128 KiB raised _csv.Error (a traceback from the
    CLI) while sniffing the delimiter."""
    src = tmp_path / "wide.csv"
    src.write_text("step," + "9" * (128 * 1024 + 1) + "\n1,2.0\n")
    with pytest.raises(ValueError, match="unreadable header line: field larger than field limit") as exc:
        import_logs(fmt, [src], tmp_path / "run")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()
