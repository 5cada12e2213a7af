"""MidflightLogger against a real Lightning Trainer (a small MLP on synthetic tensors, CPU)."""

import json
from statistics import median

import pytest
import torch

from midflight.logbook.store import queries
from tests.integrations.proc import ingested, rank0_only_run, values
from tests.integrations.runs import SPIKE_FACTOR, lightning_module, lightning_run


def test_the_logger_records_metrics_hyperparameters_checkpoints_and_a_completed_end(tmp_path):
    run = tmp_path / "mlp"
    trainer = lightning_run(run, steps=30, spike_at=20)
    store = ingested(run)
    seg = queries.segments(store, "mlp")
    assert len(seg) == 1 and seg["end_reason"].tolist() == ["completed"]
    loss, lr, grad = (values(store, run, n) for n in ("train_loss", "lr", "grad_norm"))
    assert sorted(loss) == sorted(lr) == sorted(grad) == list(range(30))  # Lightning's steps: 0..29
    before = range(14, 20)
    assert loss[20] > 0.3 * SPIKE_FACTOR * median(loss[s] for s in before)  # the planted spike
    assert grad[20] > 0.3 * SPIKE_FACTOR * median(grad[s] for s in before)
    assert lr == pytest.approx({s: 0.15 if s < 20 else 0.075 for s in range(30)})  # StepLR(20, 0.5)
    assert set(values(store, run, "epoch").values()) == {0.0}  # what Lightning adds to each log

    events = queries.events(store, "mlp")
    config = events[events["kind"] == "config"]
    assert [json.loads(f)["diff"] for f in config["fields"]] == [{"lr": [None, 0.15], "hidden": [None, 32]}]
    saved = events[events["kind"] == "checkpoint"]
    path = json.loads(saved["fields"].iloc[0])["path"]
    assert saved["step"].tolist() == [30] and path == trainer.checkpoint_callback.best_model_path
    assert path.startswith(str(run / "lightning" / "checkpoints"))  # inside the run, not RUN_DIR/checkpoints

    logger = trainer.logger
    assert (logger.name, logger.version, logger.save_dir) == ("lightning", "", str(run))


def test_a_training_that_raises_is_recorded_as_crashed_with_the_error(tmp_path):
    class Exploding(type(lightning_module())):
        def training_step(self, batch, batch_idx):
            if self.global_step == 5:
                raise RuntimeError("exploded at step 5")
            return super().training_step(batch, batch_idx)

    run = tmp_path / "boom"
    with pytest.raises(RuntimeError, match="exploded at step 5"):
        lightning_run(run, steps=30, module=Exploding())
    seg = queries.segments(ingested(run), "boom")
    assert seg["end_reason"].tolist() == ["crashed"] and "exploded at step 5" in seg["error"].iloc[0]
    assert seg["end_step"].tolist() == [4]


def test_logging_after_finalize_starts_a_child_segment(tmp_path):
    """trainer.validate() after fit(): Lightning finalized the logger; what it logs next is a new launch."""

    class WithValidation(type(lightning_module())):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    run = tmp_path / "val"
    module = WithValidation()
    trainer = lightning_run(run, steps=10, module=module, limit_val_batches=2, check_val_every_n_epoch=None)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randn(32, 1)))
    trainer.validate(module, loader)
    segs = queries.segments(ingested(run), "val").sort_values("start_time")
    assert segs["end_reason"].tolist() == ["completed", "completed"]
    assert segs["parent_id"].iloc[1] == segs["segment_id"].iloc[0]


@pytest.mark.slow
def test_two_processes_under_torchrun_finish_and_rank_0_records_one_segment(tmp_path):
    run = tmp_path / "ddp"
    store = rank0_only_run("lightning", run)
    assert sorted(values(store, run, "train_loss")) == list(range(20))
