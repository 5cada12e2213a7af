"""Hugging Face `transformers`: one callback, `Trainer(..., callbacks=[MidflightCallback("runs/x")])`.

What it records (docs/architecture.md, "Integrations"):
- `on_train_begin`, on EVERY process: `midflight.init` (the ranks agree on one segment without a
  collective). Config: the TrainingArguments (`args.to_dict()`, tokens redacted by HF), the model's
  config under `model`, and `steps` (the planned optimizer steps, `state.max_steps`: the Live page's ETA).
  A `trainer.train(resume_from_checkpoint=...)` starts at `state.global_step` > 0: a new segment with
  `resume_step` = that step (its parent is inferred from it).
- `on_step_begin` / `on_step_end`, every process: `step_time_s` (the optimizer step's wall time,
  gradient accumulation included) at `state.global_step`, so a slow rank shows.
- `on_log`, process 0 only (HF logs the same gathered values on every process): HF's own names,
  unchanged (loss, learning_rate, grad_norm, epoch, eval_loss, train_runtime, ...) at `state.global_step`.
- `on_save`, process 0: a `checkpoint` event with the folder HF wrote.
- `on_train_end`: finish, `completed`. A training that raises is recorded as `crashed` by the
  Recorder's own exit hook. Metrics logged outside `train()` (`trainer.evaluate()` afterwards) go to
  a child segment of the last one, ended by the next `train()` or at exit.
"""

from __future__ import annotations

import os
import time

from transformers import TrainerCallback

from midflight.integrations._common import Link


class MidflightCallback(TrainerCallback):
    """Records a Hugging Face Trainer's training into a midflight run directory.

    Args:
        run_dir: the run directory (default: the Trainer's `output_dir`).
        **init_kwargs: passed to `midflight.init` (name, config, reason, flush_every, ...); a `config`
            given here is merged over the TrainingArguments.
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, **init_kwargs):
        self._run_dir = run_dir
        self._link = Link("MidflightCallback", run_dir if run_dir is not None else ".", init_kwargs)
        self._step_t0: float | None = None
        self._training = False  # between on_train_begin and on_train_end

    @property
    def run(self):
        """The midflight Run being recorded (None outside `trainer.train()`)."""
        return self._link.run

    # ---------------------------------------------------------------- lifecycle
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        link = self._link
        if self._training:  # the last train() never reached on_train_end: an exception its caller caught
            # (auto_find_batch_size retries after an out-of-memory error this way)
            link.end("crashed", error="train() ended without on_train_end: an exception its caller caught")
        link.end("completed")  # evaluation logged after the last train()
        self._training = True
        link.run_dir = self._run_dir if self._run_dir is not None else args.output_dir
        config = _training_config(args, state, model)
        resume = state.global_step if state.global_step > 0 else None
        link.start(
            config,
            resume_step=resume,
            reason=f"resumed from checkpoint at step {resume}" if resume is not None else None,
        )
        link.last_step = resume

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        self._link.end("completed")

    # ---------------------------------------------------------------- per step, every process
    def on_step_begin(self, args, state, control, **kwargs):
        self._step_t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_t0 is not None:
            self._link.log({"step_time_s": time.perf_counter() - self._step_t0}, step=state.global_step)
            self._step_t0 = None

    # ---------------------------------------------------------------- process 0
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            if self._link.run is None:  # trainer.evaluate() outside train(): a child of the last segment
                self._link.start(continues=True)  # (ended by the next train() or at exit)
            self._link.log(logs, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self._link.event("checkpoint", step=state.global_step, path=path)


def _training_config(args, state, model) -> dict:
    """The TrainingArguments as a dict, the model's config under `model`, and the planned steps."""
    try:
        config = args.to_dict()
    except Exception:  # noqa: BLE001  (a subclass whose fields do not serialise: keep what is plain)
        config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    model_config = getattr(model, "config", None)
    if model_config is not None and hasattr(model_config, "to_dict"):
        try:
            config["model"] = model_config.to_dict()
        except Exception as exc:  # noqa: BLE001  (a custom config that cannot say itself: record the rest)
            config["model"] = f"unreadable model config: {type(exc).__name__}"
    if isinstance(getattr(state, "max_steps", None), int) and state.max_steps > 0:
        config["steps"] = state.max_steps
    return config
