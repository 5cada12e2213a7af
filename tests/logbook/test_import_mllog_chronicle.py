"""The MLPerf `:::MLLOG` and Markdown chronicle importers on real public logs, wall times estimated
from iteration times, and how the text summary says an imported segment resumed.

Fixtures are verbatim excerpts (sources and licences in tests/fixtures/README.md). Everything runs
through the real importers, the real ingest into DuckDB and the real summary/export code.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from midflight import logbook
from midflight.logbook.exporters import export
from midflight.logbook.importers import import_logs, sniff
from midflight.logbook.present.markers import run_markers
from midflight.logbook.present.summary import format_text
from midflight.logbook.record import annotations, records
from midflight.logbook.report.summary import summarize
from midflight.logbook.store import queries

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
HABANA = FIX / "mlperf_v4.0_habana_llama2_70b_lora.txt"
GPT3 = FIX / "mlperf_v3.1_nvidia_gpt3_nemo_excerpt.txt"
FUJITSU = FIX / "mlperf_v4.0_fujitsu_llama2_lora_rank_prefixed_excerpt.txt"
BLOOM_MD = FIX / "bloom_tr11_176B_chronicles_excerpt.md"
GLM_MD = FIX / "glm130b_training_log_excerpt.md"
OPT_MD = FIX / "opt175b_10_percent_update_excerpt.md"
BLOOM_LOG = FIX / "bloom_tr11_176B_megatron_deepspeed.log"


def load(run_dir: Path):
    store, report = logbook.open_run(run_dir)
    assert not report.errors, report.errors
    return store, run_dir.name


def values(store, run, name) -> dict[int, float]:
    df = queries.series(store, run, name, which="all")
    return dict(zip(df["step"].tolist(), df["value"].tolist()))


def times(store, run, name) -> dict[int, float]:
    sql = "SELECT step, wall_time FROM metrics WHERE run_id = ? AND name = ? ORDER BY step"
    return dict(store.cursor().execute(sql, [run, name]).fetchall())


def utc(text: str, zone: str = "UTC") -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=ZoneInfo(zone)).timestamp()


def by_line(run_dir: Path) -> dict[int, dict]:
    """The run's annotations keyed by the source line their text names."""
    out = {}
    for a in annotations.current(run_dir).values():
        tail = a["text"].rsplit("(chronicle ", 1)[1]
        out[int(tail.split(";")[0].rsplit(":", 1)[1])] = a
    return out


# ----------------------------------------------------------------- MLLOG
def test_mllog_habana_lora_losses_evals_config_and_a_finished_run(tmp_path):
    assert sniff(HABANA)[0] == "mllog"
    report = import_logs("auto", [HABANA], tmp_path / "lora")
    assert (report.steps, report.malformed, report.lines) == (15, 0, 51)
    store, run = load(tmp_path / "lora")
    loss, acc = values(store, run, "loss"), values(store, run, "eval_accuracy")
    assert sorted(loss) == [192, 576, 960, 1344, 1728, 2112, 2496, 2880, 3264]
    assert loss[192] == pytest.approx(3.2219) and loss[3264] == pytest.approx(1.3001)
    assert sorted(acc) == [1536, 1920, 2304, 2688, 3072, 3456]
    assert acc[3456] == pytest.approx(0.9213100075721741)
    assert times(store, run, "loss")[192] == pytest.approx(1715240877.183)  # time_ms, exact
    s = summarize(store, run)
    assert s["status"] == "finished" and s["segments"][0]["end_reason"] == "completed"  # run_stop: success
    assert s["events"]["run_start"] == 1 and s["events"]["run_stop"] == 1
    config = json.loads(queries.segments(store, run).iloc[0].config)
    assert config["mlperf.global_batch_size"] == 8 and config["mlperf.opt_base_learning_rate"] == 0.0004
    assert config["mlperf.submission_org"] == "Intel-Habanalabs"
    assert "samples_count" in config["units"]["step"]
    assert not s["wall_time"]["estimated"]  # MLLOG has its own clock


def test_mllog_nemo_gpt3_tracked_stats_step_timing_and_the_skipped_flood(tmp_path):
    report = import_logs("mllog", [GPT3], tmp_path / "gpt3")
    assert report.malformed == 0
    store, run = load(tmp_path / "gpt3")
    step_time = values(store, run, "step_time_s")  # tracked_stats {"train_step_timing": ...}
    assert step_time[41943040] == pytest.approx(11.03638744354248)
    assert len(step_time) == 17  # every train_step_timing line of the excerpt
    assert values(store, run, "eval_accuracy")[50331648] == pytest.approx(2.75110125541687)
    assert values(store, run, "throughput") == {1207959552: pytest.approx(345645.44173345104)}  # not tokens_per_s
    assert "tokens_per_s" not in queries.metric_names(store, run)
    s = summarize(store, run)
    assert "init_start" not in s["events"] and "cache_clear" not in s["events"]
    assert s["events"]["block_start"] == 2 and s["status"] == "finished"


def test_mllog_reads_rank_zero_of_a_prefixed_slurm_log_and_skips_other_ranks(tmp_path):
    text = FUJITSU.read_text()
    loss_line = next(line for line in text.splitlines() if '"key": "eval_accuracy"' in line)
    rank1 = loss_line.replace("0: :::MLLOG", "1: :::MLLOG").replace('"value": 0.93', '"value": 0.11')
    src = tmp_path / "prefixed.txt"
    src.write_text(text + rank1 + "\n")
    report = import_logs("auto", [src], tmp_path / "run")
    assert report.malformed == 0 and report.other_lines > 20  # model tables, SLURM and NeMo lines
    store, run = load(tmp_path / "run")
    acc = values(store, run, "eval_accuracy")
    assert acc[1536] == pytest.approx(0.9392887949943542)
    assert all(v > 0.9 for v in acc.values())  # rank 1's copy is not read
    assert summarize(store, run)["status"] == "finished"


def test_mllog_bad_records_are_counted_and_never_hide_good_ones(tmp_path):
    good = HABANA.read_text().splitlines()
    bad = [
        ":::MLLOG {truncated",
        ":::MLLOG [1, 2]",
        ':::MLLOG {"key": "train_loss", "value": 1.0, "metadata": {"samples_count": 99999999999999999999}}',
        ':::MLLOG {"key": "train_loss", "value": 1.0, "metadata": {"samples_count": -5}}',
        ':::MLLOG {"key": "tracked_stats", "value": [1], "metadata": {"step": 3}}',
        ':::MLLOG {"value": 1.0}',
        ":::MLLOG " + "[" * 100_000,
    ]
    src = tmp_path / "poisoned.txt"
    src.write_text("\n".join(good[:30] + bad + good[30:]) + "\n")
    report = import_logs("mllog", [src], tmp_path / "run")
    assert report.malformed == len(bad) and report.steps == 15
    store, run = load(tmp_path / "run")
    assert len(values(store, run, "loss")) == 9
    s = summarize(store, run)
    assert s["last_step"] == 3456
    json.dumps(s, allow_nan=False)
    export(store, run, "csv", tmp_path / "tables")


def test_mllog_an_unreadable_run_start_costs_one_line_not_the_metrics(tmp_path):
    """Found by the fuzz suite: with the `run_start` record cut short, every train_loss after it was taken for
    a hyperparameter (a config value) and the run imported no steps at all."""
    lines = HABANA.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if '"key": "run_start"' in line)
    lines[i] = lines[i][:40]
    src = tmp_path / "cut.txt"
    src.write_text("\n".join(lines) + "\n")
    whole = import_logs("mllog", [HABANA], tmp_path / "whole")
    report = import_logs("mllog", [src], tmp_path / "run")
    assert report.malformed == 1 and report.steps == whole.steps


# ----------------------------------------------------------------- chronicles
def test_chronicle_glm130b_restarts_steps_kinds_and_dates(tmp_path):
    assert sniff(GLM_MD)[0] == "chronicle"
    report = import_logs("auto", [GLM_MD], tmp_path / "glm")
    assert report.annotations == 17 and report.malformed == 0
    anns = by_line(tmp_path / "glm")
    node = anns[5]  # "## 2022-05-07 20:14 Node failure ... restart from 4000 step"
    assert node["text"].startswith("restart: 2022-05-07 20:14 Node failure")
    assert (node["step"], node["kind"], node["author"]) == (4000, "hardware", "import")
    assert node["t"] == utc("2022-05-07 20:14")
    assert "resumed from step 4,000" in node["text"]
    restarts = {a["step"] for a in anns.values() if a["text"].startswith("restart:")}
    assert {4000, 7300, 15400, 23200, 23500, 24500, 25000, 48100} <= restarts
    assert anns[59]["step"] == 23500 and anns[59]["t"] == utc("2022-05-03 20:00")  # "2022.05.03 20:00"
    lr = anns[80]  # "Reduce learning rate ... from 26000 step, we half the learning rate"
    assert (lr["kind"], lr["step"]) == ("lr", 26000) and not lr["text"].startswith("restart")
    assert anns[1]["step"] is None and anns[1]["t"] == utc("2022-05-06 04:00")  # no step: the date stays
    again = import_logs("chronicle", [GLM_MD], tmp_path / "glm")
    assert again.annotations == 0 and len(annotations.current(tmp_path / "glm")) == 17


def test_chronicle_bloom_headings_code_fences_and_an_unknown_day(tmp_path):
    report = import_logs("chronicle", [BLOOM_MD], tmp_path / "bloom")
    anns = by_line(tmp_path / "bloom")
    assert report.annotations == len(anns) == 8
    texts = [a["text"] for a in anns.values()]
    assert not any(t.startswith(("force crashing", "srun error", "frame #")) for t in texts)  # '#' in fences
    assert anns[20]["step"] == 12695  # the log line quoted in the 2022-03-18 entry
    xx = next(a for a in anns.values() if a["text"].startswith("2022-04-XX"))
    assert xx["t"] == utc("2022-04-01 00:00") and "day not given" in xx["text"] and xx["kind"] == "hardware"
    nodes = next(a for a in anns.values() if "48 to 24 nodes" in a["text"])
    assert nodes["step"] == 94767  # global_step94767, not "from 48 to 24 nodes"
    crash = next(a for a in anns.values() if a["text"].startswith("2022-03-21"))
    assert crash["kind"] == "hardware" and crash["step"] is None


def test_chronicle_opt_posted_on_and_dated_headings(tmp_path):
    report = import_logs("chronicle", [OPT_MD], tmp_path / "opt")
    anns = by_line(tmp_path / "opt")
    assert report.annotations == 3
    assert anns[4]["t"] == utc("2021-11-17 00:00") and anns[4]["text"].startswith("Posted on:")
    assert anns[19]["t"] == utc("2021-11-05 00:00")
    assert anns[42]["step"] == 4750  # "from update 4750 to ~6700"


def test_chronicle_tolerates_the_ways_people_write_dates(tmp_path):
    md = tmp_path / "notes.md"
    md.write_text(
        "# Notes\n"
        "## 2021-11-12\nstarted\n"
        "### Nov 13, 2021\nloss spike at iteration 31214\n"
        "**11/14/2021**\nbumped the learning rate\n"
        "- 2021-11-15 14:05 PT restarted from step 13,459 after an ECC error\n"
        "Dec 6th: rolled back to 13,251 after the loss diverged\n"
        "### Notes 12/29\nnothing new @ 20000 updates\n"
        "### Jan 3\nnew year, same run\n"
        "### 50/50 split of the data\nnot a date\n"
        "## 2022-01-05\nrestart from step 99999999999999999999 after a crash\n"
        "```\n## 2022-01-06 inside a code block\n```\n"
    )
    report = import_logs("chronicle", [md], tmp_path / "run")
    anns = by_line(tmp_path / "run")
    assert report.annotations == 8 and report.malformed == 1  # the 20-digit step: counted, annotation kept
    assert anns[2]["t"] == utc("2021-11-12 00:00")
    assert (anns[4]["t"], anns[4]["step"]) == (utc("2021-11-13 00:00"), 31214)
    assert (anns[6]["t"], anns[6]["kind"]) == (utc("2021-11-14 00:00"), "lr")
    pt = anns[8]
    assert pt["t"] == utc("2021-11-15 14:05", "America/Los_Angeles") and pt["step"] == 13459
    assert pt["text"].startswith("restart:") and pt["kind"] == "hardware"
    dec = anns[9]
    assert dec["t"] == utc("2021-12-06 00:00") and dec["step"] == 13251 and dec["text"].startswith("rollback:")
    assert (anns[10]["t"], anns[10]["step"]) == (utc("2021-12-29 00:00"), 20000)
    assert anns[12]["t"] == utc("2022-01-03 00:00")  # after December: the next year
    assert anns[16]["step"] is None and anns[16]["t"] == utc("2022-01-05 00:00")
    assert not any("50/50" in a["text"] for a in anns.values())  # an undated section ends the entry before
    assert not any("inside a code block" in a["text"].splitlines()[0] for a in anns.values())


def test_chronicle_without_any_year_counts_the_entry_and_keeps_it(tmp_path):
    md = tmp_path / "noyear.md"
    md.write_text("### Dec 6th\nrestarted from step 100\n")
    report = import_logs("chronicle", [md], tmp_path / "run")
    (a,) = annotations.current(tmp_path / "run").values()
    assert report.malformed == 1 and "no year" in report.examples[0][2]
    assert a["t"] is None and a["step"] == 100


def test_a_log_and_its_chronicle_make_one_run(tmp_path):
    """The Megatron log, then the chronicle, into one run directory; re-importing either adds nothing."""
    run_dir = tmp_path / "bloom"
    import_logs("megatron", [BLOOM_LOG], run_dir)
    report = import_logs("chronicle", [BLOOM_MD], run_dir)
    assert report.annotations == 8
    again_log = import_logs("megatron", [BLOOM_LOG], run_dir)
    again_md = import_logs("chronicle", [BLOOM_MD], run_dir)
    assert again_log.new_bytes == again_log.appended_bytes == 0 and again_md.annotations == 0
    store, run = load(run_dir)
    assert len(queries.annotations(store, run)) == 8
    assert values(store, run, "loss")[31219] == pytest.approx(5.098124)
    s = summarize(store, run)
    assert s["annotations"] == 8 and len(s["segments"]) == 1  # a chronicle entry is not a launch
    marks = run_markers(
        queries.segments(store, run), [], queries.annotations(store, run), queries.interventions(store, run)
    )
    assert sorted(m.step for m in marks if m.kind == "annotation") == [12695, 94767]  # the dated-only ones: no marker
    paths = export(store, run, "markdown", tmp_path / "out" / "book.md")
    book = paths[0].read_text()
    assert "2022-04-XX repeated hardware crashes" in book


def test_a_chronicle_restart_names_the_segment_that_resumed_there(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    log.write_text(
        "| epoch 001:    100 / 999 loss=5.0, ppl=32.0, num_updates=100\n"
        "| epoch 001:    200 / 999 loss=4.0, ppl=16.0, num_updates=200\n"
        "| loaded checkpoint /ckpt/checkpoint_150.pt (epoch 1 @ 150 updates)\n"
        "| epoch 001:    160 / 999 loss=4.4, ppl=21.1, num_updates=160\n"
    )
    first = import_logs("fairseq", [log], run_dir)
    resumed = first.segments[1]["segment"]
    md = tmp_path / "chronicle.md"
    md.write_text("## 2021-11-15 14:05\nNode failure, restarted from step 150\n")
    report = import_logs("chronicle", [md], run_dir)
    (a,) = annotations.current(run_dir).values()
    assert first.segments[1]["resume_step"] == 150
    assert a["step"] == 150 and f"segment {resumed}" in a["text"]
    assert any(f"the restart at step 150 is segment {resumed}" in n for n in report.notes)


def test_cli_imports_a_chronicle_and_mllog(tmp_path):
    for fmt, src in (("chronicle", GLM_MD), ("mllog", HABANA)):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "midflight.logbook",
                "import",
                fmt,
                str(src),
                "--run-dir",
                str(tmp_path / fmt),
                "-q",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
    assert (
        "17 annotations"
        in subprocess.run(
            [
                sys.executable,
                "-m",
                "midflight.logbook",
                "import",
                "auto",
                str(GLM_MD),
                "--run-dir",
                str(tmp_path / "x"),
                "-q",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout
    )


# ----------------------------------------------------------------- wall time from iteration times
def test_megatron_without_timestamps_gets_labelled_wall_times_from_iteration_times(tmp_path):
    import_logs("megatron", [BLOOM_LOG], tmp_path / "bloom")
    header = json.loads(next((tmp_path / "bloom" / "segments").glob("*/segment.json")).read_text())
    assert header["config"][records.WALL_TIME_SOURCE] == records.WALL_TIME_ESTIMATED
    store, run = load(tmp_path / "bloom")
    t = times(store, run, "loss")
    assert t[12695] == pytest.approx(105.22)  # the first line: one iteration
    assert t[31214] == pytest.approx(105.22 + (31214 - 12695) * 106.46)
    assert t[31215] == pytest.approx(t[31214] + 105.90)
    assert all(b > a for a, b in zip(list(t.values()), list(t.values())[1:]))
    assert summarize(store, run)["energy"]["energy_j"] is None  # no telemetry, no TDP: no energy figure
    s = summarize(store, run, tdp_w=400.0)  # BLOOM's A100s, given as `summary --tdp-w 400` would
    assert s["wall_time"]["estimated"] and s["wall_time"]["segments"] == [header["segment"]]
    assert s["energy"]["energy_j"] > 0 and "estimated from iteration times" in s["energy"]["wall_time"]
    assert s["energy"]["basis"] == "nameplate" and s["energy"]["nameplate_source"] == "TDP given: 400 W x 1 ranks"
    assert "estimated from iteration times" in s["energy"]["method"]
    text = format_text(s)
    assert "wall times: estimated from iteration times" in text
    assert "kWh (estimated; wall times estimated from iteration times" in text
    book = export(store, run, "markdown", tmp_path / "out" / "book.md")[0].read_text()
    assert "estimated from iteration times" in book


def test_a_rollback_without_timestamps_wastes_estimated_hours_and_says_so(tmp_path):
    def line(i, ms):
        return (
            f" iteration {i:8d}/ 1000 | consumed samples: {i * 8} | elapsed time per iteration (ms): {ms} | "
            f"learning rate: 1.0E-04 | global batch size: 8 | lm loss: {3.0 - i / 1000:.6E} | grad norm: 0.5 |"
        )

    src = tmp_path / "meg.log"
    src.write_text("\n".join([line(100, 2000.0), line(200, 2000.0), line(150, 4000.0), line(300, 2000.0)]) + "\n")
    import_logs("megatron", [src], tmp_path / "run")
    store, run = load(tmp_path / "run")
    t = times(store, run, "loss")
    assert t[100] == pytest.approx(2.0) and t[200] == pytest.approx(202.0)
    assert t[150] == pytest.approx(206.0)  # after the rollback: one iteration, the checkpoint is not named
    assert t[300] == pytest.approx(206.0 + 150 * 2.0)
    s = summarize(store, run)
    (branch,) = s["wasted"]
    assert branch["wall_s"] > 0
    assert math.isfinite(branch["start_time"]) and math.isfinite(branch["end_time"])
    text = format_text(s)
    assert "estimated from iteration times)" in text.split("wasted:")[1]
    assert "None" not in text.split("segments")[1].split("metrics:")[0]


def test_a_log_with_timestamps_keeps_them_and_is_not_labelled(tmp_path):
    src = tmp_path / "meg.log"
    src.write_text(
        "\n".join(
            f"[2024-01-01 10:0{i}:00] iteration {i * 10:8d}/ 1000 | consumed samples: {i * 80} | "
            f"elapsed time per iteration (ms): 500.0 | lm loss: 2.5E+00 |"
            for i in range(1, 4)
        )
        + "\n"
    )
    report = import_logs("megatron", [src], tmp_path / "run")
    assert not any("estimated" in n for n in report.notes)
    store, run = load(tmp_path / "run")
    assert times(store, run, "loss")[10] == pytest.approx(utc("2024-01-01 10:01"))
    s = summarize(store, run)
    assert not s["wall_time"]["estimated"] and s["energy"]["wall_time"] is None
    assert "wall times:" not in format_text(s)


def test_an_absurd_iteration_time_stops_the_estimate_instead_of_breaking_the_run(tmp_path):
    src = tmp_path / "meg.log"
    src.write_text(
        " iteration       10/ 1000 | elapsed time per iteration (ms): 1000.0 | lm loss: 2.5E+00 |\n"
        " iteration 9999999999999999/ 99999999999999999 | elapsed time per iteration (ms): 1e300 | lm loss: 2.4E+00 |\n"
    )
    report = import_logs("megatron", [src], tmp_path / "run")
    assert any("stopped estimating" in n for n in report.notes)
    store, run = load(tmp_path / "run")
    json.dumps(summarize(store, run), allow_nan=False)


# ----------------------------------------------------------------- "resumed from None"
def test_the_text_summary_says_how_an_imported_rollback_resumed(tmp_path):
    src = tmp_path / "r.log"
    src.write_text(
        "\n".join(
            f"| epoch 001:    {u} / 1000 loss={loss}, ppl={2**loss:.2f}, num_updates={u}"
            for u, loss in ((100, 5.0), (200, 4.0), (150, 4.5))
        )
        + "\n"
    )
    import_logs("fairseq", [src], tmp_path / "run")
    store, run = load(tmp_path / "run")
    text = format_text(summarize(store, run))
    assert "resumed from None" not in text
    assert "resumed at step 150 (rollback from 200) after r.log-" in text


# ----------------------------------------------------------------- hostile input
def test_hostile_input_never_raises_from_either_importer(tmp_path):
    """Garbage bytes, huge lines, absurd numbers: counted or skipped, and the good entries still arrive."""
    rng = __import__("random").Random(14)
    garbage = bytes(rng.randrange(256) for _ in range(20_000))
    md = tmp_path / "hostile.md"
    md.write_bytes(
        garbage
        + b"\n# a"
        + b" " * 200_000
        + b"b\n"
        + b"## 0000-01-01 year zero\n## 2022-13-45 no such day\n## 2022-02-30 Feb 30th\n"
        + b"## 2022-05-07 25:99 a bad time\n**"
        + b"x" * 100_000
        + b"\n"
        + b"## 2022-05-08 Node failure, restart from step 7 \xff\xfe\n"
    )
    report = import_logs("chronicle", [md], tmp_path / "md")
    anns = [a for a in annotations.current(tmp_path / "md").values() if a["step"] == 7]
    assert len(anns) == 1 and anns[0]["t"] == utc("2022-05-08 00:00")
    assert report.malformed >= 3
    ml = tmp_path / "hostile.txt"
    good = HABANA.read_text().splitlines()
    ml.write_bytes(
        "\n".join(good[:25]).encode()
        + b"\n" + garbage + b"\n"
        + b':::MLLOG {"key": "train_loss", "value": 1.5, "time_ms": 1' + b"0" * 400
        + b', "metadata": {"samples_count": 400}}\n'
        + b':::MLLOG {"key": "' + b"k" * 10_000 + b'", "value": 1.0}\n'
        + b":::MLLOG " * 5_000 + b"\n"
        + "\n".join(good[25:]).encode()
        + b"\n"
    )  # fmt: skip
    report = import_logs("mllog", [ml], tmp_path / "ml")
    store, run = load(tmp_path / "ml")
    loss = values(store, run, "loss")
    assert loss[400] == 1.5 and len(loss) == 10  # a time_ms too big for a float loses the time, not the value
    assert report.malformed >= 2
    json.dumps(summarize(store, run), allow_nan=False)
