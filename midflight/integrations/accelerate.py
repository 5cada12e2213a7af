"""Accelerate: one tracker, `Accelerator(log_with=MidflightTracker("runs/x"))`.

Then the usual `accelerator.init_trackers(project, config=...)`, `accelerator.log({...}, step=...)` and
`accelerator.end_training()`. Accelerate calls trackers on the main process only, so only rank 0
records (`midflight.init` on one rank never waits for the others). What it maps (docs/architecture.md,
"Integrations"):
- the Run starts at the first of `store_init_configuration` (init_trackers' `config`: the segment
  header's config), `log`, `tracker` or `finish`; a later `store_init_configuration` is a config update;
- `log(values, step)`: the numbers under the caller's names (a dict value as name/key, the way
  TensorBoard's tracker takes it), at `step` (omitted: the step after the last);
- `finish()` (`end_training`): finish, `completed`; a script that raises is recorded as `crashed` by
  the Recorder's own exit hook.
"""

from __future__ import annotations

import os

from accelerate.tracking import GeneralTracker, on_main_process

from midflight.integrations._common import Link


class MidflightTracker(GeneralTracker):
    """An Accelerate tracker that records into a midflight run directory.

    Args:
        run_dir: the run directory.
        **init_kwargs: passed to `midflight.init` (name, config, reason, flush_every, ...).
    """

    name = "midflight"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_dir: str | os.PathLike, **init_kwargs):
        super().__init__()
        self.run_dir = run_dir
        self._link = Link("MidflightTracker", run_dir, init_kwargs)

    @property
    def tracker(self):
        """The midflight Run (started on first use)."""
        return self._link.start(continues=True)

    @on_main_process
    def start(self):
        """Nothing yet: the Run starts with the config init_trackers passes next, so that it is in the header."""

    @on_main_process
    def store_init_configuration(self, values: dict):
        if self._link.run is None:
            self._link.start(dict(values or {}), continues=True)
        else:
            self._link.update_config(dict(values or {}))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        self._link.start(continues=True)
        self._link.log(values, step=step)

    @on_main_process
    def finish(self):
        if self._link.last_segment is None:  # init_trackers then end_training, nothing between: still a launch
            self._link.start()
        self._link.end("completed")
