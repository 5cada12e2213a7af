"""MidflightTracker against a real Accelerator (a small MLP in a plain loop, CPU)."""

import json
import warnings
from statistics import median

import pytest

from midflight.logbook.record.recorder import RecorderWarning
from midflight.logbook.store import queries
from tests.integrations.proc import ingested, rank0_only_run, values
from tests.integrations.runs import SPIKE_FACTOR, accelerate_run


def test_the_tracker_records_config_loss_lr_grad_norm_and_a_completed_end(tmp_path):
    run = tmp_path / "mlp"
    accelerate_run(run, steps=30, spike_at=20)
    store = ingested(run)
    seg = queries.segments(store, "mlp")
    assert len(seg) == 1 and seg["end_reason"].tolist() == ["completed"]
    assert json.loads(seg["config"].iloc[0]) == {"lr": 0.15, "batch": 128, "steps": 30, "optimizer": "SGD"}
    loss, lr, grad = (values(store, run, n) for n in ("loss", "lr", "grad_norm"))  # tensors, read by the Recorder
    assert sorted(loss) == sorted(lr) == sorted(grad) == list(range(1, 31))
    before = range(14, 20)
    assert loss[20] > 0.3 * SPIKE_FACTOR * median(loss[s] for s in before)  # the planted spike
    assert grad[20] > 0.3 * SPIKE_FACTOR * median(grad[s] for s in before)
    assert lr == {s: 0.15 if s <= 20 else 0.075 for s in range(1, 31)}


def test_what_is_not_a_number_is_skipped_counted_and_warned_about_once(tmp_path):
    import torch
    from accelerate import Accelerator

    from midflight.integrations.accelerate import MidflightTracker

    run = tmp_path / "mixed"
    accelerator = Accelerator(cpu=True, log_with=MidflightTracker(run))
    accelerator.init_trackers("mixed", config={"lr": 0.1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 4):
            accelerator.log(
                {
                    "loss": torch.tensor(1.0 / step),  # a 0-d tensor: recorded
                    "acc": torch.tensor([0.5]),  # one element: recorded
                    "phase": "warmup",  # text: skipped
                    "hist": torch.ones(4),  # four values: skipped
                    "step": step,  # reserved (every point has a step): skipped
                    "val": {"loss": 2.0, "acc": 0.25},  # TensorBoard-style groups: val/loss, val/acc
                },
                step=step,
            )
        accelerator.init_trackers("mixed", config={"lr": 0.2, "warmup": 5})  # later config: an update
    accelerator.end_training()
    said = [str(w.message) for w in caught if issubclass(w.category, RecorderWarning)]
    assert len(said) == 1 and "'phase'" in said[0] and "skipped" in said[0]

    store = ingested(run)
    assert values(store, run, "loss") == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert values(store, run, "acc") == {1: 0.5, 2: 0.5, 3: 0.5}
    assert values(store, run, "val/loss") == {1: 2.0, 2: 2.0, 3: 2.0} and values(store, run, "phase") == {}
    events = queries.events(store, "mixed")
    (skipped,) = [json.loads(f)["counts"] for f, k in zip(events["fields"], events["kind"]) if k == "skipped_values"]
    assert skipped == {"phase": 3, "hist": 3, "step": 3}
    (config,) = [json.loads(f)["diff"] for f, k in zip(events["fields"], events["kind"]) if k == "config"]
    assert config == {"lr": [0.1, 0.2], "warmup": [None, 5]}
    assert queries.segments(store, "mixed")["end_reason"].tolist() == ["completed"]


@pytest.mark.slow
def test_two_processes_under_torchrun_finish_and_the_main_process_records_one_segment(tmp_path):
    run = tmp_path / "ddp"
    store = rank0_only_run("accelerate", run)
    assert sorted(values(store, run, "loss")) == list(range(1, 11))  # 20 batches shared by 2 processes
