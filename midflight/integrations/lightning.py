"""Lightning: one logger, `Trainer(logger=MidflightLogger("runs/x"))`.

Lightning calls a logger's methods on every process and each logger keeps them to global rank 0
(`rank_zero_only`, `rank_zero_experiment`), so only rank 0 records, and `midflight.init` on rank 0 alone
never waits for the others. What it maps (docs/architecture.md, "Integrations"):
- `experiment` (Lightning touches it at setup): the midflight Run, started on first use.
- `log_hyperparams(params)`: the run's config (a `config` event with its diff, since the Run already
  started; Namespaces and Lightning's AttributeDicts as dicts).
- `log_metrics(metrics, step)`: the metrics under the names the module logged, at Lightning's step.
- `after_save_checkpoint`: a `checkpoint` event with the file ModelCheckpoint wrote.
- `finalize(status)`: finish: "success" -> completed, "failed" -> crashed (with the exception Lightning
  is handling), anything else ("finished" on a SLURM requeue, "aborted") -> stopped. Logging again after
  that (`trainer.test()` after `fit()`) starts a new segment, a child of the last.
- `save_dir` is the run directory and `name`/`version` are "lightning"/"", so ModelCheckpoint writes to
  RUN_DIR/lightning/checkpoints, the same path on every rank (RUN_DIR/checkpoints is midflight trainer's).
"""

from __future__ import annotations

import os
import sys
import traceback
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from midflight.integrations._common import Link

_REASONS = {"success": "completed", "failed": "crashed"}


class MidflightLogger(Logger):
    """Records a Lightning Trainer's logged metrics and hyperparameters into a midflight run directory.

    Args:
        run_dir: the run directory.
        **init_kwargs: passed to `midflight.init` (name, config, reason, flush_every, ...).
    """

    def __init__(self, run_dir: str | os.PathLike, **init_kwargs):
        super().__init__()
        self._run_dir = Path(run_dir)
        self._link = Link("MidflightLogger", self._run_dir, init_kwargs)

    # ---------------------------------------------------------------- what Lightning reads on every rank
    @property
    def name(self) -> str:
        return "lightning"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._run_dir)

    @property
    def root_dir(self) -> str:
        return str(self._run_dir)

    @property
    def log_dir(self) -> str:
        return str(self._run_dir / "lightning")

    @property
    @rank_zero_experiment
    def experiment(self):
        """The midflight Run (on rank 0; Lightning's dummy elsewhere), started on first use."""
        return self._link.start(continues=True)

    # ---------------------------------------------------------------- rank 0 only
    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        params = _as_dict(params)
        if self._link.run is None:
            self._link.start(params, continues=True)  # before any other use: straight into the header
        else:
            self._link.update_config(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping, step: int | None = None) -> None:
        self._link.start(continues=True)
        self._link.log(metrics, step=step)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        path = getattr(checkpoint_callback, "_last_checkpoint_saved", "") or getattr(
            checkpoint_callback, "last_model_path", ""
        )
        step = getattr(checkpoint_callback, "_last_global_step_saved", None)
        self._link.event("checkpoint", step=step if isinstance(step, int) and step >= 0 else None, path=str(path))

    @rank_zero_only
    def save(self) -> None:
        self._link.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        reason = _REASONS.get(status, "stopped")
        error = None
        if reason == "crashed":
            exc = sys.exc_info()[1]  # Lightning calls finalize("failed") while it handles the exception
            if exc is not None:
                error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))[-4000:]
        self._link.end(reason, error=error)


def _as_dict(params) -> dict:
    if isinstance(params, Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    return {"hyperparameters": str(params)}
