"""Importers of text logs (metaseq, fairseq, Megatron) and of the OPT-175B timeline, end to end:
real fixtures -> run directory -> real DuckDB store -> queries."""

import gzip
import json
import math
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from midflight import logbook
from midflight.logbook.importers import ImportConflict, import_logs, reading, sniff
from midflight.logbook.record import annotations
from midflight.logbook.store import queries
from midflight.logbook.store.ingest import ingest
from midflight.logbook.store.lineage import effective_path

from .proc_helpers import cli

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
METASEQ = FIX / "metaseq_train_inner_json.log"
LEGACY = FIX / "fairseq_legacy_pipe_format.log"
MODERN = FIX / "fairseq_modern_train_inner_format.log"
BLOOM = FIX / "bloom_tr11_176B_megatron_deepspeed.log"
TIMELINE = ROOT / "sample_runs" / "opt175b-timeline" / "opt175b_timeline.csv"
LN2 = math.log(2)


def load(run_dir: Path):
    store, report = logbook.open_run(run_dir)
    assert not report.errors, report.errors
    return store, run_dir.name


def values(store, run, name, which="effective") -> dict[int, float]:
    df = queries.series(store, run, name, which=which)
    return dict(zip(df["step"].tolist(), df["value"].tolist()))


def count(store, table: str, run: str) -> int:
    return store.cursor().execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run]).fetchone()[0]


def utc(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def fairseq_line(step: int, loss: float, stamp: str = "") -> str:
    head = f"{stamp} | INFO | train_inner | " if stamp else "| "
    pairs = f"loss={loss:.3f}, ppl={2**loss:.2f}, num_updates={step}, lr=0.0001, gnorm=1.5"
    return f"{head}epoch 001:   {step} / 9999 {pairs}"


# ----------------------------------------------------------------- formats
def test_metaseq_json_lines_loss_in_nats_with_the_unit_recorded(tmp_path):
    report = import_logs("metaseq", [METASEQ], tmp_path / "m")
    assert report.steps == 4 and report.malformed == 0
    store, run = load(tmp_path / "m")
    loss = values(store, run, "loss")
    assert sorted(loss) == [1, 2, 85, 86]
    assert loss[1] == pytest.approx(15.878 * LN2) and loss[86] == pytest.approx(12.246 * LN2)
    assert values(store, run, "ppl")[1] == pytest.approx(60214.8)  # 2**bits == e**nats: kept as logged
    assert values(store, run, "clipped_pct")[85] == 100.0  # the share of clipped steps, not a threshold
    assert values(store, run, "grad_norm")[2] == pytest.approx(16.783)
    assert values(store, run, "tokens_per_s")[2] == 739601.0
    seg = queries.segments(store, run).iloc[0]
    assert "bits" in json.loads(seg.config)["units"]["loss"]
    df = queries.series(store, run, "loss", x="time")
    assert df["x"].iloc[0] == utc("2022-11-11 14:05:27")  # the log's wall clock (read as UTC by default)


def test_fairseq_legacy_text_lines_and_the_overflow_cascade(tmp_path):
    report = import_logs("fairseq", [LEGACY], tmp_path / "f")
    assert report.malformed == 0
    store, run = load(tmp_path / "f")
    loss = values(store, run, "loss")
    assert sorted(loss) == [445, 495, 545, 595]
    assert loss[445] == pytest.approx(11.521 * LN2)
    assert values(store, run, "loss_scale")[445] == 2.0
    assert values(store, run, "valid_loss") == {600: pytest.approx(8.11425 * LN2), 10198: pytest.approx(8.30118 * LN2)}
    ev = queries.events(store, run, ["overflow"])
    assert len(ev) == 12  # one per "overflow detected" line
    scales = [json.loads(f)["scale_after"] for f in ev["fields"]]
    assert scales[0] == 0.25 and scales[-1] == pytest.approx(0.0001220703125)
    assert set(ev["step"]) == {10198}  # the last step logged before the lines
    assert np.isnan(queries.series(store, run, "loss", x="time")["x"]).all()  # no wall clock in this format


def test_fairseq_modern_lines_timestamps_and_a_bare_json_line(tmp_path):
    import_logs("auto", [MODERN], tmp_path / "f", tz="Europe/Paris")
    store, run = load(tmp_path / "f")
    assert sorted(values(store, run, "loss")) == [2800, 2900, 3000, 33700]
    assert values(store, run, "loss")[33700] == pytest.approx(8.206 * LN2)
    ev = queries.events(store, run, ["overflow"])
    assert len(ev) == 2 and ev["step"].isna().all()  # before any progress line: no step to pin them to
    df = queries.series(store, run, "loss", x="time")
    assert df["x"].iloc[0] == utc("2020-07-17 05:11:02")  # 07:11:02 in Paris (CEST, UTC+2)


def test_megatron_bloom_spike_values_prefix_and_validation(tmp_path):
    report = import_logs("megatron", [BLOOM], tmp_path / "b")
    assert report.malformed == 0 and report.steps == 19
    store, run = load(tmp_path / "b")
    loss, gn = values(store, run, "loss"), values(store, run, "grad_norm")
    assert len(loss) == 18 and min(loss) == 12695 and max(loss) == 45000
    assert loss[31219] == pytest.approx(5.098124) and gn[31219] == pytest.approx(960.351)  # nats: no conversion
    assert values(store, run, "step_time_s")[42784] == pytest.approx(111.14)
    assert values(store, run, "valid_loss") == {45000: pytest.approx(2.327091)}
    assert values(store, run, "tokens_per_s")[12695] == pytest.approx(19.463 * 2048)  # samples/s x seq len
    assert queries.event_counts(store, run) == {}  # no skipped or NaN iterations in this excerpt
    seg = queries.segments(store, run).iloc[0]
    assert json.loads(seg.config)["train_iters"] == 115311


def test_megatron_skipped_and_nan_iterations_become_events_and_wrapped_lines_rejoin(tmp_path):
    def line(i, skipped=0, nan=0):
        return (
            f"[default3]: iteration {i:>8}/ 1000 | consumed samples: {i * 8} | elapsed time per iteration (s): 1.5 | "
            f"learning rate: 1.000E-04 | global batch size: 8 | lm loss: {3 - i / 1000:.6E} | loss scale: 4096.0 | "
            f"grad norm: 0.5 | number of skipped iterations: {skipped:3d} | number of nan iterations: {nan:3d} |"
        )

    wrapped = line(30, skipped=1)
    cut = wrapped.index("| grad norm")
    text = "\n".join([line(10), line(20, skipped=2, nan=1), wrapped[:cut], "[default3]:" + wrapped[cut:], line(40)])
    src = tmp_path / "megatron.log"
    src.write_text(text + "\n")
    report = import_logs("auto", [src], tmp_path / "r")
    assert report.malformed == 0
    store, run = load(tmp_path / "r")
    assert sorted(values(store, run, "loss")) == [10, 20, 30, 40]  # the wrapped record was joined
    assert values(store, run, "grad_norm")[30] == 0.5
    assert queries.event_counts(store, run) == {"skipped_iterations": 2, "nan_iterations": 1}
    ev = queries.events(store, run, ["skipped_iterations"])
    assert [json.loads(f)["count"] for f in ev["fields"]] == [2, 1]


def test_megatron_lm_newer_lines_with_timestamps_and_milliseconds(tmp_path):
    src = tmp_path / "megatron-lm.log"
    src.write_text(
        " [2024-05-01 10:00:00] iteration      100/    1000 | consumed samples:        51200 | elapsed time per "
        "iteration (ms): 1234.5 | throughput per GPU (TFLOP/s/GPU): 150.2 | learning rate: 1.000000E-04 | global "
        "batch size:   512 | lm loss: 5.123000E+00 | loss scale: 1.0 | grad norm: 1.234 | number of skipped "
        "iterations:   0 | number of nan iterations:   0 |\n"
    )
    import_logs("auto", [src], tmp_path / "r")
    store, run = load(tmp_path / "r")
    assert values(store, run, "step_time_s") == {100: pytest.approx(1.2345)}
    assert values(store, run, "tflops_per_gpu") == {100: pytest.approx(150.2)}
    assert queries.series(store, run, "loss", x="time")["x"].tolist() == [utc("2024-05-01 10:00:00")]


def test_sniff_names_each_format(tmp_path):
    assert sniff(METASEQ)[0] == "metaseq"
    assert sniff(LEGACY)[0] == "fairseq"
    assert sniff(MODERN)[0] == "fairseq"
    assert sniff(BLOOM)[0] == "megatron"
    assert sniff(TIMELINE)[0] == "timeline"
    semicolons = tmp_path / "table.txt"
    semicolons.write_text("step;loss;lr\n1;2.5;0.1\n")
    assert sniff(semicolons)[0] == "csv"
    packed = tmp_path / "history.csv.gz"
    with gzip.open(packed, "wt") as f:
        f.write("_step\ttrain/loss\n1\t2.0\n")
    assert sniff(packed)[0] == "csv"
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        sniff(junk)


# ----------------------------------------------------------------- restarts and segments
def test_steps_going_back_and_a_loaded_checkpoint_make_the_segment_tree(tmp_path):
    lines = [fairseq_line(s, 10 - s / 100) for s in range(100, 501, 100)]  # launch A: 100..500
    lines += [fairseq_line(s, 20 - s / 100) for s in range(300, 701, 100)]  # B: back to 300 (from A's 299 or so)
    lines += ["| loaded checkpoint /ckpt/checkpoint_600.pt (epoch 1 @ 600 updates)"]  # C: resumes from 600
    lines += [fairseq_line(s, 30 - s / 100) for s in range(650, 901, 50)]
    src = tmp_path / "train.log"
    src.write_text("\n".join(lines) + "\n")
    report = import_logs("fairseq", [src], tmp_path / "run")
    a, b, c = (s["segment"] for s in report.segments)
    assert [s["parent"] for s in report.segments] == [None, a, b]
    assert report.segments[2]["resume_step"] == 600
    assert "steps went back from 500 to 300" in report.segments[1]["reason"]
    store, run = load(tmp_path / "run")
    segs = queries.segments(store, run).set_index("segment_id")
    assert segs.loc[b, "parent_id"] == a and segs.loc[c, "parent_id"] == b
    assert segs.loc[c, "resume_step"] == 600
    loss = values(store, run, "loss")
    # effective: A up to 200 (B resumed before 300), B for 300..600, C after 600
    assert loss[200] == pytest.approx((10 - 2) * LN2)
    assert loss[400] == pytest.approx((20 - 4) * LN2)
    assert loss[600] == pytest.approx((20 - 6) * LN2)
    assert loss[650] == pytest.approx((30 - 6.5) * LN2)
    assert 700 in loss and loss[700] == pytest.approx((30 - 7) * LN2)  # C's, not B's
    superseded = values(store, run, "loss", which="superseded")
    assert superseded[500] == pytest.approx((10 - 5) * LN2)  # A past the rollback


def test_several_files_are_launches_of_one_run(tmp_path):
    first, second = tmp_path / "job-1.out", tmp_path / "job-2.out"
    first.write_text("\n".join(fairseq_line(s, 5.0, "2024-01-01 10:00:00") for s in (10, 20, 30)) + "\n")
    second.write_text("\n".join(fairseq_line(s, 4.0, "2024-01-02 10:00:00") for s in (40, 50)) + "\n")
    report = import_logs("fairseq", [first, second], tmp_path / "run")
    assert len(report.segments) == 2
    assert report.segments[1]["parent"] == report.segments[0]["segment"]
    assert "new log file job-2.out" in report.segments[1]["reason"]
    store, run = load(tmp_path / "run")
    assert sorted(values(store, run, "loss")) == [10, 20, 30, 40, 50]
    assert queries.segments(store, run)["effective"].all()


def test_a_log_that_says_training_ended_closes_its_run_as_finished(tmp_path):
    src = tmp_path / "train.log"
    lines = [fairseq_line(s, 5.0, "2024-01-01 10:00:00") for s in (10, 20)]
    src.write_text(
        "\n".join([*lines, "2024-01-01 11:00:00 | INFO | fairseq_cli.train | done training in 3600.1 seconds"])
    )
    import_logs("fairseq", [src], tmp_path / "run")
    store, run = load(tmp_path / "run")
    seg = queries.segments(store, run).iloc[0]
    assert seg.end_reason == "completed" and seg.end_step == 20 and seg.end_time == utc("2024-01-01 11:00:00")
    assert queries.run_status(store, run) == "finished"


# ----------------------------------------------------------------- bad input
def test_garbage_lines_are_counted_with_line_numbers_and_never_fatal(tmp_path):
    good = [fairseq_line(s, 5.0) for s in (1, 2, 3)]
    text = "\n".join(
        [
            good[0],
            "\x00\x01\x02 binary junk \xff",
            '2024-01-01 10:00:00 | INFO | train_inner | {"loss": "4.1", "num_updates": ',  # cut short
            good[1],
            "| epoch 001:   3 / 9999 loss=abc, num_updates=3",  # a loss that is not a number
            "| epoch 001:   4 / 9999 loss=4.0, lr=0.1",  # no step
            good[2],
        ]
    )
    src = tmp_path / "bad.log"
    src.write_bytes(text.encode("utf-8", "surrogateescape") + b"\n\xc3\x28 invalid utf-8\n")
    report = import_logs("fairseq", [src], tmp_path / "run")
    assert report.steps == 3
    assert report.malformed == 3
    assert [ex[1] for ex in report.examples] == [3, 5, 6]  # line numbers of the malformed lines
    assert report.other_lines == 2  # the junk lines: not progress lines
    assert "skipped 3 malformed lines" in report.describe() and "bad.log:3" in report.describe()
    store, run = load(tmp_path / "run")
    assert sorted(values(store, run, "loss")) == [1, 2, 3]


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_logs("fairseq", [tmp_path / "missing.log"], tmp_path / "run")
    with pytest.raises(ValueError, match="unknown time zone"):
        import_logs("fairseq", [METASEQ], tmp_path / "run", tz="Mars/Olympus")
    with pytest.raises(ValueError, match="unknown format"):
        import_logs("jsonl", [METASEQ], tmp_path / "run")
    with pytest.raises(ValueError, match="world size"):
        import_logs("fairseq", [METASEQ], tmp_path / "run", world_size=0)


# ----------------------------------------------------------------- idempotency and growing logs
def test_reimport_is_idempotent(tmp_path):
    run_dir = tmp_path / "run"
    import_logs("megatron", [BLOOM], run_dir)
    store, run = load(run_dir)
    n = count(store, "metrics", run)
    store.close()
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and ".midflight" not in p.parts}
    again = import_logs("megatron", [BLOOM], run_dir)
    assert "nothing new" in again.describe()
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # not a byte rewritten
    store, run = load(run_dir)
    assert count(store, "metrics", run) == n


def test_a_growing_log_is_brought_up_to_date_exactly_once(tmp_path):
    src, run_dir = tmp_path / "live.log", tmp_path / "run"
    src.write_text("\n".join(fairseq_line(s, 5 - s / 100) for s in range(1, 51)) + "\n")
    import_logs("fairseq", [src], run_dir)
    store, run = load(run_dir)
    assert len(values(store, run, "loss")) == 50
    with open(src, "a") as f:  # the job logs on, then restarts from step 40
        f.write("\n".join(fairseq_line(s, 5 - s / 100) for s in range(51, 61)) + "\n")
        f.write("\n".join(fairseq_line(s, 9.0) for s in range(41, 71)) + "\n")
    report = import_logs("fairseq", [src], run_dir)
    assert "appended" in report.describe() and len(report.segments) == 2
    ingest(store, [run_dir])
    loss = values(store, run, "loss")
    assert sorted(loss) == list(range(1, 71))
    assert loss[45] == pytest.approx(9.0 * LN2) and loss[40] == pytest.approx((5 - 0.4) * LN2)
    per_line = len(queries.metric_names(store, run))
    assert count(store, "metrics", run) == (60 + 30) * per_line  # every point once


def test_an_interrupted_import_is_completed_by_the_next(tmp_path):
    src, run_dir = tmp_path / "train.log", tmp_path / "run"
    src.write_text("\n".join(fairseq_line(s, 5.0) for s in range(1, 21)) + "\n")
    import_logs("fairseq", [src], run_dir)
    log = next(run_dir.glob("segments/*/rank-00000.jsonl"))
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2 + 7])  # killed mid-write: a prefix with a torn last line
    import_logs("fairseq", [src], run_dir)
    assert log.read_bytes() == data
    store, run = load(run_dir)
    assert sorted(values(store, run, "loss")) == list(range(1, 21))


def test_a_source_changed_in_place_is_refused_unless_replaced(tmp_path):
    src, run_dir = tmp_path / "train.log", tmp_path / "run"
    src.write_text("\n".join(fairseq_line(s, 5.0) for s in range(1, 11)) + "\n")
    import_logs("fairseq", [src], run_dir)
    src.write_text("\n".join(fairseq_line(s, 6.0) for s in range(1, 11)) + "\n")
    with pytest.raises(ImportConflict, match="--replace"):
        import_logs("fairseq", [src], run_dir)
    report = import_logs("fairseq", [src], run_dir, replace=True)
    assert any("delete the store" in n for n in report.notes)
    store, run = load(run_dir)
    loss = values(store, run, "loss")
    assert len(loss) == 10 and all(v == pytest.approx(6.0 * LN2) for v in loss.values())


def test_big_files_stream_with_a_progress_bar(tmp_path, monkeypatch, capsys):
    src = tmp_path / "big.log"
    with open(src, "w") as f:
        for s in range(1, 20_001):
            f.write(fairseq_line(s, 5.0) + "\n")
    monkeypatch.setattr(reading, "PROGRESS_MIN_BYTES", 1 << 20)
    report = import_logs("fairseq", [src], tmp_path / "run", progress=True)
    assert report.steps == 20_000
    assert "import big.log" in capsys.readouterr().err


# ----------------------------------------------------------------- the OPT-175B timeline
@pytest.fixture(scope="module")
def opt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("opt") / "opt175b"
    report = import_logs("timeline", [TIMELINE], run_dir, name="OPT-175B", world_size=992)
    store, run = load(run_dir)
    yield run_dir, report, store, run
    store.close()


def test_the_opt_timeline_gives_the_11x_and_12x_lineages(opt):
    run_dir, report, store, run = opt
    assert report.malformed == 0 and report.annotations == 68
    segs = queries.segments(store, run).set_index("segment_id")
    roots = sorted(segs.index[segs["parent_id"].isna()])
    assert roots == ["11.0", "12.00"]
    assert segs.loc["11.1", "parent_id"] == "11.0" and segs.loc["11.10", "parent_id"] == "11.9"
    assert segs.loc["12.08", "parent_id"] == "12.07" and segs.loc["12.08", "resume_step"] == 13250
    assert segs.loc["12.07", "end_step"] == 13459 and segs.loc["11.10", "end_step"] == 6852
    assert segs.loc["12.47", "end_step"] == 143052 and segs.loc["12.47", "end_reason"] == "completed"
    path = [s.segment_id for s in effective_path(queries.lineage_segments(store, run))]
    assert path[0] == "12.00" and path[-1] == "12.47" and all(p.startswith("12.") for p in path)
    assert not segs.loc[[s for s in segs.index if s.startswith("11.")], "effective"].any()  # abandoned
    assert queries.run_status(store, run) == "finished"
    assert segs.loc["12.02", "end_reason"] == "crashed"  # "all 12.xx restarts up to Nov 17 were hardware"
    assert "hardware" in segs.loc["12.02", "error"]
    assert "estimated" in segs.loc["12.20", "reason"] and "estimated" not in segs.loc["12.08", "reason"]
    steps = segs["resume_step"].dropna()
    assert (steps % 250 == 0).sum() >= len(steps) - 2  # estimates sit on checkpoint boundaries
    assert (segs["world_size"] == 992).all()


def test_the_opt_timeline_annotations_and_a_reimport(opt):
    run_dir, _, store, run = opt
    ann = queries.annotations(store, run)
    assert len(ann) == 68
    lr = ann[ann["kind"] == "lr"]
    assert len(lr) == 3 and 42500 in set(lr["step"])
    hw = ann[ann["kind"] == "hardware"]
    assert len(hw) == 4
    one = ann[ann["text"].str.contains("12.08: resumed from an earlier checkpoint")].iloc[0]
    assert one["step"] == 13251 and "confidence: high" in one["text"]
    annotations.delete_annotation(run_dir, ann.iloc[0]["annotation_id"], author="test")
    again = import_logs("timeline", [TIMELINE], run_dir, name="OPT-175B", world_size=992)
    assert again.annotations == 0  # nothing added, and the deleted one stays deleted
    ingest(store, [run_dir])
    assert len(queries.annotations(store, run)) == 67


def test_the_shipped_sample_is_this_importers_output(tmp_path, monkeypatch):
    sample = ROOT / "sample_runs" / "opt175b-timeline"
    shutil.copy(TIMELINE, tmp_path / TIMELINE.name)
    monkeypatch.chdir(tmp_path)  # the sample was imported with a relative source path
    import_logs("timeline", [TIMELINE.name], tmp_path / "opt175b-timeline", name="OPT-175B (timeline)", world_size=992)
    for header in sample.glob("segments/*/segment.json"):
        mine = tmp_path / "opt175b-timeline" / header.relative_to(sample)
        expected = json.loads(header.read_text())
        expected["import"]["source"] = TIMELINE.name
        got = json.loads(mine.read_text())
        got["import"]["source"] = TIMELINE.name
        assert got == expected, header
    ours = (tmp_path / "opt175b-timeline" / "annotations.jsonl").read_text()
    assert ours == (sample / "annotations.jsonl").read_text()


# ----------------------------------------------------------------- command line
def test_cli_import_auto_then_ingest(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "midflight.logbook",
            "import",
            "auto",
            str(BLOOM),
            "--run-dir",
            str(tmp_path / "bloom"),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "format: megatron" in out.stdout and "19 logged steps" in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "midflight.logbook",
            "import",
            "fairseq",
            str(tmp_path / "nope.log"),
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


# ----------------------------------------------------------------- out-of-range numbers (issue 14)
def _all_written_steps(run_dir: Path) -> list[int]:
    steps = []
    for rank in run_dir.glob("segments/*/rank-*.jsonl"):
        for rec in map(json.loads, rank.read_text().splitlines()):
            steps += [row[0] for row in rec.get("rows", [])] + [rec.get("step"), rec.get("last_step")]
    for header in run_dir.glob("segments/*/segment.json"):
        h = json.loads(header.read_text())
        steps += [h["resume_step"], h["import"].get("first_step"), h["import"].get("last_step")]
    return [s for s in steps if s is not None]


def _summary_and_export(run_dir: Path, tmp_path: Path) -> dict:
    """`summary --json` (strict JSON: no NaN or Infinity tokens) and a CSV export, through the CLI."""
    out = cli("summary", str(run_dir), "--json", "-q")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    summary = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} in summary --json"))
    exported = cli("export", "csv", str(run_dir), "-o", str(tmp_path / "csv"), "-q")
    assert exported.returncode == 0, exported.stderr
    return summary


@pytest.mark.parametrize("num_updates", ["99999999999999999999", "-3", "12.5", "nan"])
def test_a_fairseq_step_outside_the_range_is_a_counted_line(tmp_path, num_updates):
    """num_updates=99999999999999999999 raised OverflowError (or was written as a 20-digit step)."""
    src = tmp_path / "train.log"
    bad = fairseq_line(20, 4.0).replace("num_updates=20", f"num_updates={num_updates}")
    src.write_text("\n".join([fairseq_line(10, 5.0), bad, fairseq_line(30, 3.0)]) + "\n")
    report = import_logs("fairseq", [src], tmp_path / "run")
    assert (report.steps, report.malformed) == (2, 1)
    assert report.examples[0][1] == 2 and "step" in report.examples[0][2]
    assert sorted(_all_written_steps(tmp_path / "run")) == [10, 10, 30, 30]  # rows + header first/last


def test_a_metaseq_step_of_1e30_is_refused_not_wrapped(tmp_path):
    """ "num_updates": "1e30" was stored as step -9223372036854775808 and reported as last_step."""
    src = tmp_path / "train.log"
    line = '2022-11-11 14:05:27 | INFO | train_inner | {{"loss": "{loss}", "ppl": "4.0", "num_updates": "{n}"}}'
    src.write_text("\n".join([line.format(loss=2.0, n=5), line.format(loss=1.9, n="1e30")]) + "\n")
    report = import_logs("metaseq", [src], tmp_path / "run")
    assert (report.steps, report.malformed) == (1, 1) and "outside [0, 2**63)" in report.examples[0][2]
    store, run = load(tmp_path / "run")
    assert queries.segments(store, run)["end_step"].tolist() == [5]
    store.close()
    assert _summary_and_export(tmp_path / "run", tmp_path)["last_step"] == 5


def test_a_loaded_checkpoint_beyond_the_range_does_not_break_the_folder(tmp_path):
    """A `loaded checkpoint ... (epoch 1 @ 99999999999999999999 updates)` line imported with exit 0, then every
    summary and export of the folder failed with a DuckDB ConversionException."""
    src = tmp_path / "train.log"
    lines = [fairseq_line(10, 5.0), "| loaded checkpoint /c/x.pt (epoch 1 @ 99999999999999999999 updates)"]
    src.write_text("\n".join([*lines, fairseq_line(11, 4.0)]) + "\n")
    report = import_logs("fairseq", [src], tmp_path / "run")
    assert (report.steps, report.malformed) == (2, 1) and report.examples[0][1] == 2
    assert all(s["resume_step"] is None for s in report.segments)
    summary = _summary_and_export(tmp_path / "run", tmp_path)
    assert summary["last_step"] == 11


def test_megatron_skipped_iterations_inf_is_a_counted_line_not_a_half_written_run(tmp_path):
    """`number of skipped iterations: inf` raised OverflowError and left a run that showed as running."""

    def line(i, skipped="0"):
        return (
            f" iteration {i:>8}/ 1000 | lm loss: 2.5E+00 | number of skipped iterations: {skipped} | "
            "number of nan iterations:   0 |"
        )

    src = tmp_path / "megatron.log"
    src.write_text("\n".join([line(10), line(20, "inf"), line(30, "-1"), line(40, "2")]) + "\n")
    report = import_logs("megatron", [src], tmp_path / "run")
    assert (report.steps, report.malformed, report.events) == (2, 2, 1)
    assert "is not a count" in report.examples[0][2] and report.examples[0][1] == 2
    store, run = load(tmp_path / "run")
    assert sorted(values(store, run, "loss")) == [10, 40]
    assert queries.event_counts(store, run) == {"skipped_iterations": 1}


def test_a_failed_import_leaves_no_half_written_run(tmp_path):
    """An importer failure part-way (here an unreadable second source: EIO) must not leave the first source's
    segment behind, headerless and fresh, where it shows as a running run."""
    good = tmp_path / "good.log"
    good.write_text("\n".join(fairseq_line(s, 5.0) for s in (10, 20)) + "\n")
    with pytest.raises(OSError):
        import_logs("fairseq", [good, Path("/proc/self/mem")], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_failed_reimport_restores_what_it_had_appended(tmp_path):
    """A re-import that fails on a later source (changed in place) leaves the earlier, grown source's segment
    as it was, not half brought up to date."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(fairseq_line(10, 5.0) + "\n")
    b.write_text(fairseq_line(20, 4.0) + "\n")
    import_logs("fairseq", [a, b], tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    a.write_text(fairseq_line(10, 5.0) + "\n" + fairseq_line(11, 4.9) + "\n")  # grew
    b.write_text(fairseq_line(20, 3.0) + "\n")  # changed in place
    with pytest.raises(ImportConflict):
        import_logs("fairseq", [a, b], tmp_path / "run")
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


def test_a_timeline_field_over_the_csv_limit_is_one_counted_row(tmp_path):
    """A timeline cell over 128 KiB raised _csv.Error and the import failed."""
    rows = TIMELINE.read_text().splitlines()
    cells = rows[3].split(",")
    cells[-3] = "x" * (128 * 1024 + 10)
    src = tmp_path / "timeline.csv"
    src.write_text("\n".join([*rows[:3], ",".join(cells), *rows[4:]]) + "\n")
    report = import_logs("timeline", [src], tmp_path / "run")
    assert report.malformed == 1 and "field larger than field limit" in report.examples[0][2]
    assert report.annotations == 67  # every other row


def test_a_401_digit_timeline_step_is_one_counted_row(tmp_path):
    """A 401-digit step in a timeline raised OverflowError."""
    header, *rows = TIMELINE.read_text().splitlines()
    step_col = header.split(",").index("step")
    i = next(i for i, r in enumerate(rows) if r.split(",")[step_col].isdigit())
    cells = rows[i].split(",")
    cells[step_col] = "9" * 401
    rows[i] = ",".join(cells)
    src = tmp_path / "timeline.csv"
    src.write_text("\n".join([header, *rows]) + "\n")
    report = import_logs("timeline", [src], tmp_path / "run")
    assert report.malformed == 1 and report.examples[0][2].startswith("step '9999")
    assert report.annotations == 67
    assert all(0 <= s < 2**63 for s in _all_written_steps(tmp_path / "run"))


def test_a_loss_scale_of_inf_is_a_counted_line_not_infinity_in_the_header(tmp_path):
    """Found by the fuzz suite: `SCALE_WINDOW: 256, loss scale: 1e400` put Infinity (not JSON) in the segment's
    config."""
    src = tmp_path / "train.log"
    scaler = (
        "2022-08-20 23:35:25 | INFO | metaseq.optim.dynamic_loss_scaler | *** SCALE_WINDOW: 256, loss scale: {} ***"
    )
    src.write_text("\n".join([scaler.format("1e400"), METASEQ.read_text()]))
    report = import_logs("metaseq", [src], tmp_path / "run")
    assert report.malformed == 1 and "loss scale" in report.examples[0][2] and report.steps == 4
    for header in (tmp_path / "run").glob("segments/*/segment.json"):
        config = json.loads(header.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in a header"))["config"]
        assert "loss_scale_init" not in config
