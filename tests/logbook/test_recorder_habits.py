"""W&B habits in the Recorder: histograms as quantiles, text samples, summary values, tags, notes and group.

Each round trip is real: the Recorder writes its logs, ingest builds a DuckDB store from them, and the answer
is read back through queries, the report and the `midflight summary` command (a subprocess). Misuse of each
new kind raises at the call site, one line, and records nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import midflight
from midflight import logbook
from midflight.logbook.record import histograms, layout
from midflight.logbook.record.recorder import RecorderWarning
from midflight.logbook.report import summary, timeline
from midflight.logbook.store import memory, open_store, queries
from midflight.logbook.store.ingest import ingest


def _store(run_dir):
    store = memory()
    report = ingest(store, [run_dir])
    assert report.errors == []
    return store, report


def _value(store, run, name):
    return queries.series(store, run, name)["value"].tolist()


def test_histograms_of_lists_arrays_and_tensors_are_stored_as_named_quantiles(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(40, 25))
    arr[3, 4] = np.nan
    tensor = torch.from_numpy(rng.exponential(size=(8, 8, 8))).to(torch.float32)
    tensor[0, 0, 0] = float("inf")
    values = [5, 1, 4, 2, 3, float("-inf")]
    with logbook.init(tmp_path / "run") as run:
        run.log({"arr": midflight.Histogram(arr), "t": midflight.Histogram(tensor), "l": logbook.Histogram(values)}, 7)
        run.log({"ints": midflight.Histogram(torch.arange(101)), "empty": midflight.Histogram([])}, step=8)
    store, _ = _store(tmp_path / "run")
    q = list(histograms.QUANTILES)
    finite = arr[np.isfinite(arr)]
    for name, data, dropped in [
        ("arr", finite, 1),
        ("t", tensor.numpy()[np.isfinite(tensor.numpy())].astype(np.float64), 1),
        ("l", np.array([1.0, 2, 3, 4, 5]), 1),
    ]:
        got = [_value(store, "run", histograms.quantile_name(name, p))[0] for p in q]
        assert got == pytest.approx(np.percentile(data, q), rel=1e-6), name
        assert _value(store, "run", f"{name}/count") == [data.size]
        assert _value(store, "run", f"{name}/nonfinite") == [dropped]
    assert [_value(store, "run", f"ints/p{p}")[0] for p in q] == [0, 5, 25, 50, 75, 95, 100]
    names = queries.metric_names(store, "run")
    assert "ints/nonfinite" not in names and "empty/p50" not in names  # nothing dropped; nothing to rank
    assert _value(store, "run", "empty/count") == [0]
    assert histograms.split_quantile_name("arr/p95") == ("arr", 95)  # the dashboard's grid finds the family


def test_w_and_b_np_histogram_form_interpolates_within_bins(tmp_path):
    counts, edges = np.histogram(np.arange(1000), bins=10)
    h = midflight.Histogram(np_histogram=(counts, edges))
    assert h.count == 1000
    assert h.quantiles == pytest.approx([0, 49.95, 249.75, 499.5, 749.25, 949.05, 999])


def test_text_samples_are_text_events_shown_as_text_in_the_timeline(tmp_path):
    hostile = "<script>alert(1)</script> & <b>bold</b>"
    with logbook.init(tmp_path / "run") as run:
        run.log({"loss": 1.0, "sample": midflight.Text(hostile)}, step=3)
        run.log({"prompt": "plain str"}, step=4)  # a str is text too
        run.log({"loss": 0.5}, step=5)
    store, _ = _store(tmp_path / "run")
    ev = queries.events(store, "run", ["text"])
    assert ev["step"].tolist() == [3, 4]
    assert [json.loads(f) for f in ev["fields"]] == [
        {"name": "sample", "text": hostile},
        {"name": "prompt", "text": "plain str"},
    ]
    assert _value(store, "run", "loss") == [1.0, 0.5]  # the numbers of the same call are metrics as before
    tl = timeline.timeline(store, "run")
    assert f"sample: {hostile}" in tl["detail"].tolist()  # the characters as logged: the page shows a text cell


def test_nested_dicts_of_numbers_are_dotted_names(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        run.log({"val": {"loss": 0.25, "acc": {"top1": 0.5}}, "lr": 1e-3}, step=1)
    store, _ = _store(tmp_path / "run")
    assert queries.metric_names(store, "run") == ["lr", "val.acc.top1", "val.loss"]


HABITS = """
import midflight
run = midflight.init({run_dir!r}, config={{"lr": 0.1, "opt": {{"beta2": 0.98}}}}, tags=["baseline", "fp8"],
                     notes="first try\\n<b>not html</b>", group="sweep-7", job_type="train")
for step in range(20):
    run.log({{"loss": 2.0 - step / 10, "val_loss": 3.0 - step / 20}}, step=step)
run.summary["best_val"] = 1.2
run.summary.update({{"epochs": 3, "verdict": "ok"}})
run.summary["best_val"] = 1.05
run.update_config({{"opt": {{"beta2": 0.95}}}})
run.tags = run.tags + ("promoted",)
run.event("define_metric", name="val_*", summary="min,mean")
run.alert("loss spike", "loss rose 3x at step 12", level="WARN")
run.finish()
"""


def test_summary_tags_notes_group_and_config_changes_reach_the_summary_command(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", HABITS.format(run_dir=str(run_dir))], check=True, env=env, timeout=120)
    header = json.loads(next((run_dir / "segments").glob("*/segment.json")).read_text())
    assert (header["tags"], header["group"], header["job_type"]) == (["baseline", "fp8"], "sweep-7", "train")
    out = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "summary", str(run_dir), "--json"],
        check=True, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    s = json.loads(out.stdout)
    assert s["tags"] == ["baseline", "fp8", "promoted"]
    assert (s["notes"], s["group"], s["job_type"]) == ("first try\n<b>not html</b>", "sweep-7", "train")
    assert s["summary_values"] == {"best_val": 1.05, "epochs": 3, "verdict": "ok"}  # last value wins per key
    assert [c["diff"] for c in s["config_changes"]] == [{"opt.beta2": [0.98, 0.95]}]
    assert s["metric_summaries"] == {"val_loss": {"min": pytest.approx(2.05), "mean": pytest.approx(2.525)}}
    assert [(a["title"], a["level"], a["step"]) for a in s["alerts"]] == [("loss spike", "WARN", 19)]
    text = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "summary", str(run_dir)],
        check=True, env=env, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert "tags: baseline, fp8, promoted; group sweep-7; job type train" in text
    assert "notes: first try <b>not html</b>" in text  # one line, the characters as given
    assert "summary: best_val=1.05, epochs=3, verdict=ok" in text
    assert "opt.beta2: 0.98 -> 0.95" in text
    assert "summary of val_loss: min 2.05, mean 2.525" in text
    assert "alert WARN at step 19: loss spike: loss rose 3x at step 12" in text


def test_summary_updates_of_one_flush_are_one_event_and_deletions_are_kept(tmp_path):
    run = logbook.init(tmp_path / "run", flush_every=60)
    for step in range(500):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        run.summary["last_loss"] = 1.0 / (step + 1)
    run.summary["gone"] = 1
    del run.summary["gone"]
    run.finish()
    store, _ = _store(tmp_path / "run")
    assert queries.event_counts(store, "run") == {"summary": 1}
    assert summary.run_notes(store, "run")["summary_values"] == {"last_loss": pytest.approx(1 / 500)}
    assert (
        dict(run.summary) == {"last_loss": pytest.approx(1 / 500)} and run.summary.last_loss == run.summary["last_loss"]
    )


MISUSE = [
    (lambda d: logbook.init(d, tags="fp8"), TypeError, ["tags must be a list of text", "str"]),
    (lambda d: logbook.init(d, tags=["x" * 65]), ValueError, ["tag", "65 characters", "at most 64"]),
    (lambda d: logbook.init(d, tags=[3]), TypeError, ["a tag must be text", "int"]),
    (lambda d: logbook.init(d, notes=b"bytes"), TypeError, ["notes must be text", "bytes"]),
    (lambda d: logbook.init(d, notes="n" * 5000), ValueError, ["notes", "5,000 characters"]),
    (lambda d: logbook.init(d, group="a\nb"), ValueError, ["group must be one non-empty line"]),
]


@pytest.mark.parametrize("call, exc, words", MISUSE, ids=[f"init{i}" for i in range(len(MISUSE))])
def test_init_refuses_bad_user_text_before_writing_anything(tmp_path, call, exc, words):
    target = tmp_path / "run"
    with pytest.raises(exc) as info:
        call(target)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "\n" not in str(info.value)
    assert not target.exists()


RUN_MISUSE = [
    (lambda run: run.summary.__setitem__("x", [1, 2]), TypeError, ["summary['x']", "list", "numbers, text"]),
    (lambda run: run.summary.__setitem__("x", "t" * 2000), ValueError, ["summary['x']", "2,000 characters"]),
    (lambda run: run.summary.__setitem__(3, 1.0), TypeError, ["key must be non-empty text"]),
    (lambda run: run.summary.update({"ok": 1.0, "bad": torch.ones(3)}), TypeError, ["summary['bad']", "Tensor"]),
    (lambda run: setattr(run, "tags", ("a", "")), ValueError, ["a tag must be one non-empty line"]),
    (lambda run: setattr(run, "notes", 5), TypeError, ["notes must be text", "int"]),
    (lambda run: run.alert("t", "x", level="PANIC"), ValueError, ["INFO, WARN, ERROR", "PANIC"]),
    (lambda run: run.alert(None, "x"), TypeError, ["title must be text"]),
    (lambda run: run.log({"w": midflight.Histogram({"a": 1})}), TypeError, ["Histogram() takes", "dict"]),
    (lambda run: run.log({"w": midflight.Histogram(torch.ones(2, dtype=torch.complex64))}), TypeError, ["complex"]),
    (lambda run: run.log({"w": midflight.Histogram(np.array(["a"]))}), TypeError, ["does not hold real numbers"]),
    (lambda run: run.log({"s": midflight.Text(3)}), TypeError, ["text must be text", "int"]),
]


@pytest.mark.parametrize("call, exc, words", RUN_MISUSE, ids=[f"run{i}" for i in range(len(RUN_MISUSE))])
def test_bad_summary_tags_alerts_and_histograms_raise_one_line_and_record_nothing(tmp_path, call, exc, words):
    run = logbook.init(tmp_path / "run", flush_every=60)
    run.log({"loss": 0.5}, step=0)
    queued = len(run._q)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecorderWarning)
        with pytest.raises(exc) as info:
            call(run)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "\n" not in str(info.value)
    assert len(run._q) == queued and dict(run.summary) == {} and run.tags == ()
    run.finish()
    store, _ = _store(tmp_path / "run")
    assert queries.event_counts(store, "run") == {}


def test_a_hostile_header_keeps_its_segment_and_leaves_out_what_is_not_short_text(tmp_path):
    with logbook.init(tmp_path / "run", tags=["ok"]) as run:
        run.log({"loss": 1.0}, step=1)
    path = next((tmp_path / "run" / "segments").glob("*/segment.json"))
    header = json.loads(path.read_text())
    header.update(tags=["fine", {"x": 1}], notes="n" * 10_000, group="g")
    path.write_text(json.dumps(header))
    store, report = _store(tmp_path / "run")
    assert (
        report.malformed == 1 and "tags left out" in report.examples[0][3] and "notes left out" in report.examples[0][3]
    )
    notes = summary.run_notes(store, "run")
    assert (notes["tags"], notes["notes"], notes["group"]) == ([], None, "g")
    assert _value(store, "run", "loss") == [1.0]  # the run's data is all there


def test_sealed_segments_keep_the_header_meta_and_older_parts_without_it_still_load(tmp_path):
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, tags=["a"], notes="kept", segment_id="seg-a") as run:
        run.log({"loss": 1.0}, step=1)
    store, report = logbook.open_run(run_dir, store_path=tmp_path / "sealer.duckdb")
    store.close()
    assert report.sealed == [("run", "seg-a")]
    with open_store(tmp_path / "reader.duckdb", fallback=False) as store:
        again = ingest(store, [run_dir])
        assert again.from_parquet == [("run", "seg-a")]
        assert summary.run_notes(store, "run")["tags"] == ["a"]
    part = next(run_dir.rglob("table=segments/*/part-0.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.drop_columns(["meta"]).replace_schema_metadata(table.schema.metadata), part)
    with open_store(tmp_path / "old.duckdb", fallback=False) as store:
        again = ingest(store, [run_dir])
        assert again.from_parquet == [("run", "seg-a")] and again.errors == []
        assert queries.segments(store, "run")["segment_id"].tolist() == ["seg-a"]
        assert summary.run_notes(store, "run")["tags"] == []  # sealed before meta existed: none known
    assert layout.rank_file(run_dir, "seg-a", 0).exists()
