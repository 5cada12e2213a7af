"""MidflightCallback against a real Hugging Face Trainer: a one-layer GPT-2 from its config, CPU, nothing downloaded."""

import json
import warnings

import pytest

from midflight.integrations.transformers import MidflightCallback
from midflight.logbook.store import queries
from tests.integrations.proc import ingested, torchrun, values
from tests.integrations.runs import SPIKE_FACTOR, _Counting, hf_run, hf_trainer


def _logged(trainer, name) -> dict:
    """{step: value} of what HF itself logged (its log_history), to compare with what midflight recorded."""
    return {e["step"]: e[name] for e in trainer.state.log_history if name in e}


def test_the_callback_records_hf_metrics_config_step_times_and_a_completed_end(tmp_path):
    run = tmp_path / "gpt2"
    trainer = hf_run(run, steps=30, spike_at=20)
    store = ingested(run)
    seg = queries.segments(store, "gpt2")
    assert len(seg) == 1 and seg["end_reason"].tolist() == ["completed"]
    for name in ("loss", "learning_rate", "grad_norm", "epoch"):  # HF's own names, HF's own values and steps
        got = values(store, run, name)
        assert got == pytest.approx(_logged(trainer, name), rel=1e-6), name
        assert len(got) == 30
    loss = values(store, run, "loss")
    assert loss[20] == max(loss.values()) and loss[20] > 0.5 * SPIKE_FACTOR * loss[19]  # the planted spike
    assert values(store, run, "train_loss") == pytest.approx(_logged(trainer, "train_loss"))  # the end summary
    times = values(store, run, "step_time_s")
    assert sorted(times) == list(range(1, 31)) and all(0 < t < 60 for t in times.values())

    config = json.loads(seg["config"].iloc[0])
    assert config["learning_rate"] == 3e-3 and config["max_steps"] == 30 and config["report_to"] == []
    assert config["model"]["n_embd"] == 32 and config["model"]["model_type"] == "gpt2"
    assert config["steps"] == 30  # the plan the Live page's ETA reads


def test_resume_from_checkpoint_starts_a_child_segment_at_the_checkpoint_step(tmp_path):
    run = tmp_path / "gpt2"
    hf_run(run, steps=20, spike_at=None, save_steps=10)
    hf_run(run, steps=30, spike_at=None, resume=True)  # from the latest checkpoint: step 20
    store = ingested(run)
    segs = queries.segments(store, "gpt2").sort_values("start_time")
    assert len(segs) == 2 and segs["end_reason"].tolist() == ["completed", "completed"]
    first, second = segs.iloc[0], segs.iloc[1]
    assert second["resume_step"] == 20 and second["parent_id"] == first["segment_id"]
    assert "resumed from checkpoint at step 20" in second["reason"]
    events = queries.events(store, "gpt2")
    saved = events[events["kind"] == "checkpoint"]
    assert saved["step"].tolist() == [10, 20, 30]  # HF also saves at the end of the resumed training
    assert saved["segment_id"].tolist() == [first["segment_id"]] * 2 + [second["segment_id"]]
    paths = [json.loads(f)["path"] for f in saved["fields"]]
    assert paths == [str(run / "hf" / f"checkpoint-{s}") for s in (10, 20, 30)]
    by_segment = queries.series(store, "gpt2", "loss")
    steps = by_segment.groupby("segment_id")["step"].agg(["min", "max"])
    assert steps.loc[first["segment_id"]].tolist() == [1, 20] and steps.loc[second["segment_id"]].tolist() == [21, 30]


def test_evaluate_after_train_is_recorded_in_a_child_segment(tmp_path):
    run = tmp_path / "gpt2"
    trainer = hf_run(run, steps=10, spike_at=None)
    metrics = trainer.evaluate(eval_dataset=_Counting(16, seed=1))
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, MidflightCallback)]
    callback.run.finish()  # what the exit hook does at the end of the script
    store = ingested(run)
    segs = queries.segments(store, "gpt2").sort_values("start_time")
    assert segs["end_reason"].tolist() == ["completed", "completed"]
    assert segs["parent_id"].iloc[1] == segs["segment_id"].iloc[0] and segs["resume_step"].iloc[1] == 10
    # at the last training step, which the parent owns: recorded, though outside the effective history
    evals = queries.series(store, "gpt2", "eval_loss", which="all")
    assert evals[["step", "segment_id"]].values.tolist() == [[10, segs["segment_id"].iloc[1]]]
    assert evals["value"].tolist() == pytest.approx([metrics["eval_loss"]])


def test_a_train_that_raised_and_was_caught_is_recorded_as_crashed_when_train_runs_again(tmp_path):
    """What auto_find_batch_size does after an out-of-memory error: the caller catches it and trains again."""
    run = tmp_path / "gpt2"
    trainer = hf_trainer(run, steps=8, spike_at=None)
    trainer.fail_at = 3
    with pytest.raises(RuntimeError, match="planted failure"):
        trainer.train()
    trainer.fail_at = None
    trainer.train()
    segs = queries.segments(ingested(run), "gpt2").sort_values("start_time")
    assert segs["end_reason"].tolist() == ["crashed", "completed"]
    assert "without on_train_end" in segs["error"].iloc[0] and segs["end_step"].tolist() == [3, 8]


@pytest.mark.parametrize(
    "blocked, midflight, said",
    [
        (True, {}, "cannot write"),  # the Recorder degrades: a warning, the records held in memory
        (False, {"segment_id": "../outside"}, "could not start recording"),  # init refused: the callback goes on
    ],
)
def test_a_run_midflight_cannot_record_still_trains_to_the_end(tmp_path, blocked, midflight, said):
    run = tmp_path / "run"
    if blocked:
        run.write_text("a file where the run directory should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = hf_run(run, steps=5, spike_at=None, output_dir=str(tmp_path / "out"), midflight=midflight)
    assert trainer.state.global_step == 5
    assert any(said in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert not (tmp_path / "outside").exists()


@pytest.mark.slow
def test_two_processes_under_torchrun_record_one_segment_with_every_ranks_step_time(tmp_path):
    run = tmp_path / "ddp"
    out = torchrun("transformers", run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((run / "segments").iterdir())) == 1
    store = ingested(run)
    seg = queries.segments(store, "ddp")
    assert seg["world_size"].tolist() == [2] and seg["ranks"].tolist() == [2]
    assert seg["end_reason"].tolist() == ["completed"] and seg["closed_ranks"].tolist() == [2]
    assert len(values(store, run, "loss", rank=0)) == 20 and values(store, run, "loss", rank=1) == {}
    assert sorted(values(store, run, "step_time_s", rank=1)) == list(range(1, 21))  # every rank's step time
