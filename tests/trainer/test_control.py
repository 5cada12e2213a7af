"""Mid-flight interventions against a live trainer, issued the way a person does: `midflight intervene`."""

import json
import re

import pytest

from midflight.logbook.record import interventions

from .helpers import Recorded, logbook_cli, start, train


def _ask(run_dir, *args) -> str:
    out = logbook_cli("intervene", run_dir, *args)
    assert out.returncode == 0, out.stderr
    return re.search(r"intervention (\w+) requested", out.stdout)[1]


def _step_of(line: str) -> int:
    return int(re.search(r"applied at step (\d+)", line)[1])


def test_live_interventions_are_applied_acknowledged_and_audited(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(
        run_dir,
        "--steps=2000",
        "--checkpoint.every=20",
        "--checkpoint.keep_latest=50",
        "--inject=slow-rank@1-2000",  # ~25 ms a step: room to act between steps
        "--faults.slow_rank_s=0.02",
        "--telemetry.enabled=false",
    )
    try:
        proc.expect("step 30/", timeout=60)
        clip = _ask(run_dir, "--clip", "0.3", "--note", "tighten like OPT's 1.0 -> 0.3")
        clip_step = _step_of(proc.expect(f"intervention {clip}", timeout=30))
        lr = _ask(run_dir, "--lr-scale", "0.5", "--note", "halve the LR")
        lr_step = _step_of(proc.expect(f"intervention {lr}", timeout=30))
        skip = _ask(run_dir, "--skip-batches", "7", "--note", "a bad shard")
        proc.expect(f"intervention {skip}", timeout=30)
        ckpt = _ask(run_dir, "--checkpoint", "--note", "before I try something")
        ckpt_step = _step_of(proc.expect(f"intervention {ckpt}", timeout=30))
        bad = _ask(run_dir, "--rewind", "7", "--note", "there is no such checkpoint")
        assert "rejected" in proc.expect(f"intervention {bad}", timeout=30)
        floor = _ask(run_dir, "--loss-scale-floor", "2", "--note", "fp32 has no loss scale")
        assert "rejected" in proc.expect(f"intervention {floor}", timeout=30)
        proc.expect(f"checkpoint step {(lr_step // 20 + 2) * 20} saved", timeout=60)
        rewind = _ask(run_dir, "--rewind", "40", "--lr-scale", "0.25", "--note", "loss spike: roll back")
        rewind_step = _step_of(proc.expect(f"intervention {rewind}", timeout=30))
        proc.expect("midflight: ", timeout=60)  # the new segment
        proc.expect("step 60/", timeout=60)
        stop = _ask(run_dir, "--stop", "--note", "enough for this test")
        stop_step = _step_of(proc.expect(f"intervention {stop}", timeout=30))
        assert proc.wait(60) == 0, proc.stderr
    finally:
        proc.close()

    rec = Recorded(run_dir)
    seg_df = rec.segments()
    first = seg_df.iloc[0].segment_id
    # the change shows in the logged values from the acknowledged step on, and not before
    first_clip = _by_segment(rec, "clip")[first]
    assert first_clip[clip_step - 1] == 1.0 and first_clip[clip_step] == 0.3
    by_seg = _by_segment(rec, "lr")
    lr_first = by_seg[first]
    assert lr_first[lr_step] == pytest.approx(0.5 * lr_first[lr_step - 1], rel=0.05)  # same schedule, x0.5
    # the rewind: a second segment from the checkpoint of step 40, overlapping the first, with its reason
    assert len(seg_df) == 2
    one, two = seg_df.iloc[0], seg_df.iloc[1]
    assert one.end_reason == "rewound" and one.end_step == rewind_step >= 60
    assert two.parent_id == one.segment_id and two.resume_step == 40 and two.start_step == 41
    assert "rewind to step 40" in two.reason and "loss spike: roll back" in two.reason
    assert two.end_reason == "stopped" and two.end_step == stop_step
    diff = json.loads(two.config_diff)
    assert diff["optim.lr_multiplier"][1] == 0.25 and diff["optim.clip"] == [1.0, 0.3]
    assert set(rec.metric("loss", which="superseded")) == set(range(41, rewind_step + 1))
    # the clip set before the rewind stays in force on the new branch; the LR is the rewind's x0.25
    lr_two = by_seg[two.segment_id]
    assert all(v == 0.3 for s, v in _by_segment(rec, "clip")[two.segment_id].items())
    first_multiplier_at_50 = 0.5 if lr_step <= 50 else 1.0
    assert lr_two[50] == pytest.approx(lr_first[50] * 0.25 / first_multiplier_at_50, rel=1e-6)
    # on demand: a complete checkpoint of the acknowledged step, whose data position includes the 7 skipped batches
    saved = run_dir / "checkpoints" / f"step-{ckpt_step:08d}"
    if ckpt_step > 40:  # on a loaded machine it can land after 40: then the rewind to 40 moved it aside
        saved = next((run_dir / "checkpoints" / "superseded").glob(f"step-{ckpt_step:08d}-*"))
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["step"] == ckpt_step and state["batch_index"] == ckpt_step + 7
    why = "periodic" if ckpt_step % 20 == 0 else f"intervention {ckpt}"  # a periodic save of that step serves it
    assert any(f["why"] == why and s == ckpt_step for s, f in rec.events("checkpoint_saved"))
    # the audit record
    view = rec.interventions()
    assert view.loc[clip, "status"] == "applied" and view.loc[clip, "applied_step"] == clip_step
    assert view.loc[clip, "note"] == "tighten like OPT's 1.0 -> 0.3"
    assert view.loc[bad, "status"] == "rejected" and "no complete checkpoint at step 7" in view.loc[bad, "detail"]
    assert view.loc[floor, "status"] == "rejected" and "no loss scale" in view.loc[floor, "detail"]
    assert view.loc[stop, "status"] == "applied"
    summary = json.loads(logbook_cli("summary", run_dir, "--json", "-q").stdout)
    listed = {i["id"]: i for i in summary["interventions"]}
    assert listed[rewind]["kind"] == "rewind" and listed[rewind]["status"] == "applied"
    assert listed[lr]["applied_step"] == lr_step and listed[lr]["note"] == "halve the LR"


def _by_segment(rec: Recorded, name: str) -> dict:
    rows = rec.store.cursor().execute(
        "SELECT segment_id, step, value FROM metrics WHERE run_id = ? AND name = ? AND rank = 0", [rec.run, name]
    )
    out: dict = {}
    for seg, step, value in rows.fetchall():
        out.setdefault(seg, {})[int(step)] = value
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clip", "0.3", "--lr", "1e-4"], "exactly one change"),
        (["--clip", "-1"], "max_norm must be a number in (0, 1e+06]"),
        (["--lr-scale", "1e308"], "factor must be a number in (0, 100]"),
        (["--lr-scale", "nan"], "factor must be a number in (0, 100]"),
        (["--rewind", "99999999999999999999"], "checkpoint_step must be a step number in [0, 2**63)"),
        (["--skip-batches", "0"], "n must be a whole number in [1, 1e9]"),
        (["--rewind", "10", "--stop"], "cannot be combined"),
        ([], "exactly one change"),
    ],
)
def test_bad_intervention_requests_are_refused_at_the_cli(tmp_path, args, message):
    run_dir = tmp_path / "run"
    (run_dir / "segments").mkdir(parents=True)
    out = logbook_cli("intervene", run_dir, *args, "--note", "x")
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (run_dir / "interventions.jsonl").exists()


def test_queued_requests_are_each_answered_once_and_bad_lines_rejected(tmp_path):
    """Requests waiting before the first step: the first stop wins, a second is rejected, hand-edited lines too.

    The control file is untrusted: lines with a list as id (which crashed the trainer's poll, and its
    resume), an unhashable action, NaN or absurd params, and JSON nested too deep are each rejected
    with a reason, and training goes on."""
    run_dir = tmp_path / "run"
    (run_dir / "segments").mkdir(parents=True)
    clip = interventions.request(run_dir, "clip", {"max_norm": 0.5}, note="before the start")
    stop = interventions.request(run_dir, "stop", note="changed my mind")
    again = interventions.request(run_dir, "stop", note="double click")
    hostile = [
        {"id": "byhand", "action": "clip", "params": [1]},
        {"id": ["x"], "action": "stop", "params": {}},
        {"id": "dict-action", "action": {"a": 1}, "params": {}},
        {"id": "nan-lr", "action": "lr_multiplier", "params": {"factor": float("nan")}},
        {"id": "huge-lr", "action": "lr_multiplier", "params": {"factor": 1e308}},
        {"id": "far-rewind", "action": "rewind", "params": {"checkpoint_step": 10**20}},
    ]
    with open(run_dir / "interventions.jsonl", "a") as f:  # written by hand, wrongly
        for req in hostile:
            f.write(json.dumps({"k": "intervention", "op": "request", **req}) + "\n")
        f.write('{"k":"intervention","op":"request","id":"deep","params":' + "[" * 5000 + "]" * 5000 + "}\n")
    list_id = "line-5"  # the 2nd hand-written line, after the three requests above
    train(run_dir, "--steps=50", "--telemetry.enabled=false")
    view = Recorded(run_dir).interventions()
    assert view.loc[clip, "status"] == "applied" and view.loc[clip, "applied_step"] == 1
    assert view.loc[stop, "status"] == "applied" and view.loc[stop, "applied_step"] == 0
    assert view.loc[again, "status"] == "rejected" and "already ending" in view.loc[again, "detail"]
    for req_id in ("byhand", list_id, "dict-action", "nan-lr", "huge-lr", "far-rewind"):
        assert view.loc[req_id, "status"] == "rejected" and "invalid request" in view.loc[req_id, "detail"], req_id
    assert "id must be text" in view.loc[list_id, "detail"]
    assert "(0, 100]" in view.loc["huge-lr", "detail"]
    assert Recorded(run_dir).segments().iloc[0].end_reason == "stopped"
    assert interventions.pending(run_dir) == []  # every line answered once: a resume polls nothing stale
