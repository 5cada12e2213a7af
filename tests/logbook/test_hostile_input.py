"""Hostile input at every boundary of the store: one rule for steps, a poisoned line never hides good data.

Each case is a defect that was measured: a 20-digit step in an annotation made every annotation of the
run vanish (the whole chunk was refused by DuckDB, silently, and again at every ingest); a segment
header with such a step broke the store for every run of the folder; NaN in the audit trail broke
`summary --json`. The rule: steps are integers in [0, 2**63); anything else is refused where it enters,
counted in `ingest_problems` with its reason, and the good lines around it are stored as usual.
"""

import json
import math
import subprocess
import sys

import pytest

from midflight import logbook
from midflight.logbook.record import annotations, interventions, layout, records
from midflight.logbook.report.summary import summarize
from midflight.logbook.store import ingest as ingest_module
from midflight.logbook.store import memory, queries
from midflight.logbook.store.ingest import ingest
from midflight.logbook.values import json_ready, optional_step, step

HUGE = 99999999999999999999  # 20 digits: beyond int64


def _append(path, *recs):
    with open(path, "a") as f:
        for rec in recs:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")


def _problems(store, run) -> dict[str, int]:
    return {p["file"]: p["malformed"] for p in queries.ingest_problems(store, run)}


@pytest.fixture
def run_dir(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        for s in range(1, 21):
            run.log({"loss": 3.0 - s / 10}, step=s)
    return tmp_path / "run"


@pytest.mark.parametrize("good", [0, 1, 7, 2**63 - 1, 7.0, "150", " 12 ", "1.5e3"])
def test_the_step_rule_accepts_whole_numbers_in_range(good):
    assert step(good) == int(float(good)) if not isinstance(good, int) else step(good) == good


@pytest.mark.parametrize(
    "bad", [-1, 2**63, HUGE, "99999999999999999999", "1e30", 1e30, 1.5, math.nan, math.inf, True, None, "x", [1]]
)
def test_the_step_rule_refuses_everything_else_with_a_reason(bad):
    with pytest.raises(ValueError, match="step"):
        step(bad)
    assert optional_step(None) is None


def test_a_huge_step_in_one_annotation_hides_no_other_annotation(run_dir):
    kept = [annotations.annotate(run_dir, step=s, text=f"note {s}") for s in (3, 9)]
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        annotations.annotate(run_dir, step=HUGE, text="x")
    with pytest.raises(ValueError, match="step_end"):
        annotations.annotate(run_dir, step=1, step_end=2**63, text="x")
    _append(  # what the CLI accepted before: the same line, written by hand
        run_dir / layout.ANNOTATIONS,
        {"k": "annotation", "op": "create", "id": "far", "t": 1.0, "step": HUGE, "kind": "note", "text": "x"},
        {"k": "annotation", "op": "create", "id": ["list"], "t": 1.0, "step": 4, "kind": "note", "text": "odd id"},
    )
    kept.append(annotations.annotate(run_dir, step=12, text="after the bad line"))
    store = memory()
    report = ingest(store, [run_dir])
    shown = queries.annotations(store, "run")
    assert set(kept) <= set(shown.annotation_id) and "far" not in set(shown.annotation_id)
    assert "line-4" in set(shown.annotation_id)  # an id that is not text goes by its line number
    assert _problems(store, "run") == {layout.ANNOTATIONS: 1} and report.malformed == 1
    assert "2**63" in queries.ingest_problems(store, "run")[0]["examples"][0][1]
    assert ingest(store, [run_dir]).errors == []  # and nothing is retried, or refused, again
    assert summarize(store, "run")["annotations"] == 4


def test_annotate_cli_refuses_a_huge_step_in_one_line(run_dir):
    out = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "annotate", str(run_dir), "--step", str(HUGE), "--text", "x"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "[0, 2**63)" in out.stderr, out.stderr
    assert not (run_dir / layout.ANNOTATIONS).exists()


def test_a_huge_step_in_the_audit_trail_hides_no_other_intervention(run_dir):
    a = interventions.request(run_dir, "clip", {"max_norm": 0.3}, note="tighten")
    interventions.resolve(run_dir, a, applied=True, step=17)
    _append(
        run_dir / layout.INTERVENTIONS,
        {"k": "intervention", "op": "applied", "id": "ghost", "t": 2.0, "step": HUGE},
        {
            "k": "intervention",
            "op": "request",
            "id": "nanp",
            "t": 2.0,
            "action": "clip",
            "params": {"max_norm": math.nan},
        },
    )
    b = interventions.request(run_dir, "stop", note="later")
    store = memory()
    ingest(store, [run_dir])
    view = queries.interventions(store, "run").set_index("intervention_id")
    assert view.loc[a, "status"] == "applied" and view.loc[a, "applied_step"] == 17
    assert view.loc[b, "status"] == "pending" and "nanp" in view.index and "ghost" not in view.index
    assert _problems(store, "run") == {layout.INTERVENTIONS: 1}
    summary = summarize(store, "run")  # NaN params: still strict JSON, with the NaN's place listed
    json.dumps(summary, allow_nan=False, default=str)
    where = {path for path, token in summary["nonfinite"] if token == "NaN"}
    assert any(p.startswith("interventions[") and p.endswith(".params.max_norm") for p in where), where


def test_bad_values_in_rank_logs_are_counted_per_line_and_the_rest_is_stored(run_dir):
    log = next((run_dir / layout.SEGMENTS).glob("*/rank-00000.jsonl"))
    _append(
        log,
        {"k": "metrics", "names": ["loss"], "rows": [[1e30, 1.0, 5.0]]},
        {"k": "metrics", "names": ["loss"], "rows": [[-3, 1.0, 5.0]]},
        {"k": "metrics", "names": ["loss"], "rows": [[21.5, 1.0, 5.0]]},
        {"k": "metrics", "names": ["loss"], "rows": [[21, 1.0, 1.0]]},
        {"k": "telemetry", "device": "gpu0", "names": ["power_w"], "rows": [[1.0, 1e30, 300.0]]},
        {"k": "telemetry", "device": "gpu0", "names": ["power_w"], "rows": [[1.0, 22, 310.0]]},
        {"k": "event", "kind": "restart", "step": HUGE, "t": 1.0},
        {"k": "event", "kind": "spike", "step": 22, "t": 1.0},
        {"k": "open", "t": 1.0, "pid": HUGE, "world": 1},
        {"k": "close", "t": 9.0, "reason": "completed", "last_step": HUGE},
    )
    store = memory()
    report = ingest(store, [run_dir])
    assert report.errors == []
    assert _problems(store, "run") == {log.relative_to(run_dir).as_posix(): 7}
    loss = queries.series(store, "run", "loss")
    assert sorted(loss.step) == list(range(1, 22)) and loss.step.max() == 21
    assert queries.event_counts(store, "run").get("spike") == 1
    assert summarize(store, "run")["last_step"] == 21  # not -9223372036854775808, not 1e20


def test_a_bad_segment_header_breaks_neither_its_run_nor_the_folder(tmp_path):
    for name in ("good", "bad"):
        with logbook.init(tmp_path / name) as run:
            run.log({"loss": 1.0}, step=5)
    header = next((tmp_path / "bad" / layout.SEGMENTS).glob(f"*/{layout.SEGMENT_HEADER}"))
    h = json.loads(header.read_text())
    header.write_text(json.dumps({**h, "resume_step": HUGE, "world_size": 2**40}))
    store = memory()
    report = ingest(store, layout.discover_runs(tmp_path))
    assert report.errors == [] and report.malformed == 1
    assert set(queries.run_ids(store)) == {"good", "bad"}
    for run in ("good", "bad"):  # both summarise, as strict JSON
        json.dumps(summarize(store, run), allow_nan=False, default=str)
    assert list(queries.series(store, "bad", "loss").value) == [1.0]


def test_summary_json_is_strict_for_a_rollback_with_no_wall_times(tmp_path):
    """Three fairseq lines, num_updates 100, 200, 150: a rollback, and no timestamps at all."""
    log = tmp_path / "train.log"
    log.write_text(
        "".join(
            f"| epoch 001:   {i} / 1000 loss=3.{i}, ppl=8.0, wps=1000, ups=1, wpb=100, bsz=8, num_updates={n}, "
            f"lr=0.001, gnorm=0.5, clip=0, oom=0, loss_scale=8, wall=0, train_wall=0\n"
            for i, n in enumerate((100, 200, 150), 1)
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "import", "fairseq", str(log), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "midflight.logbook", "summary", str(tmp_path / "run"), "--json", "-q"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr

    def refuse(token):
        raise AssertionError(f"{token} in summary --json")

    summary = json.loads(out.stdout, parse_constant=refuse)
    assert summary["wasted"], "the rollback is wasted work"
    assert all(isinstance(p, str) and t in ("NaN", "Infinity", "-Infinity") for p, t in summary["nonfinite"])


def test_json_ready_keeps_the_place_of_every_nonfinite_value():
    obj = {"a": [1.0, math.nan, {"b": -math.inf}], "c": math.inf, "d": "text", "e": None}
    clean, found = json_ready(obj)
    assert clean == {"a": [1.0, None, {"b": None}], "c": None, "d": "text", "e": None}
    assert found == [["a[1]", "NaN"], ["a[2].b", "-Infinity"], ["c", "Infinity"]]
    json.dumps(clean, allow_nan=False)


def test_a_line_the_store_refuses_is_found_and_the_rest_of_its_chunk_stored(run_dir, monkeypatch):
    """The safety net under the checks: with the step check taken out, a 20-digit event step reaches
    DuckDB, which refuses the chunk. Bisection finds that one line; every other line is stored once."""
    log = next((run_dir / layout.SEGMENTS).glob("*/rank-00000.jsonl"))
    _append(log, {"k": "event", "kind": "far", "step": HUGE, "t": 1.0}, {"k": "event", "kind": "near", "step": 3})
    monkeypatch.setattr(ingest_module, "optional_step", lambda v: v)
    store = memory()
    report = ingest(store, [run_dir])
    assert report.errors == [] and report.malformed == 1
    assert "the store refused it" in report.examples[0][3]
    assert sorted(queries.series(store, "run", "loss").step) == list(range(1, 21))
    assert queries.event_counts(store, "run").get("near") == 1 and "far" not in queries.event_counts(store, "run")
    assert ingest(store, [run_dir]).records == 0  # exactly once: nothing is read twice


def test_recorder_refuses_steps_outside_the_rule(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        for bad in (2**63, -1):
            with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
                run.log({"loss": 1.0}, step=bad)
            with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
                run.event("x", step=bad)
            with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
                run.telemetry({"power_w": 1.0}, device="gpu0", step=bad)
        run.log({"loss": 1.0}, step=2**63 - 1)
    assert any(r.get("k") == "metrics" for r in records.iter_records(next(tmp_path.glob("run/segments/*/rank-*"))))


def test_control_lines_never_break_the_poll(run_dir):
    ok = interventions.request(run_dir, "stop", note="fine")
    _append(
        run_dir / layout.INTERVENTIONS,
        {"k": "intervention", "op": "request", "id": ["x"], "action": "stop", "params": {}},
        {"k": "intervention", "op": {"a": 1}, "id": "odd-op"},
        {"k": "intervention", "op": "request", "id": "y" * 10_000, "action": "stop"},
        {"k": "intervention", "op": "request", "id": "big", "action": "lr_multiplier", "params": {"factor": 1e308}},
        '{"k":"intervention","op":"request","id":"deep","params":' + "[" * 3000 + "]" * 3000 + "}",
        "[1, 2, 3]",
        "not json",
    )
    reqs = {r["id"]: r for r in interventions.pending(run_dir)}
    assert set(reqs) == {ok, "line-2", "line-4", "big"}
    assert reqs[ok]["problem"] is None and reqs["big"]["problem"] is None
    assert "id must be text" in reqs["line-2"]["problem"] and "id must be text" in reqs["line-4"]["problem"]
    with pytest.raises(ValueError, match=r"factor must be a number in \(0, 100\]"):
        interventions.validate("lr_multiplier", reqs["big"]["params"])
    with pytest.raises(ValueError, match="params must be a JSON object"):
        interventions.validate("clip", [["max_norm", 0.3]])
    with pytest.raises(ValueError, match="unknown intervention"):
        interventions.validate(["stop"], {})


def test_the_largest_step_is_stored_exactly(run_dir):
    """2**63 - 1 passes the rule, so the store keeps it as itself (a float64 path rounded it up to 2**63,
    and refused the line); a step past 2**53 is not rounded either. Found by the long fuzz run."""
    log = next((run_dir / layout.SEGMENTS).glob("*/rank-00000.jsonl"))
    big = [2**53 + 1, 2**63 - 1]
    _append(log, {"k": "metrics", "names": ["tokens"], "rows": [[s, None, 1.0] for s in big]})
    _append(log, {"k": "metrics", "names": ["tokens"], "rows": [[2**63, None, 1.0]]})
    store = memory()
    ingest(store, [run_dir])
    assert sorted(queries.series(store, "run", "tokens").step) == big
    assert _problems(store, "run") == {log.relative_to(run_dir).as_posix(): 1}
    assert "2**63" in queries.ingest_problems(store, "run")[0]["examples"][0][1]
