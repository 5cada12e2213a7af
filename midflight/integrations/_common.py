"""What the three integrations share: a link to one midflight Run that never raises into someone's training.

The Recorder refuses misuse at the call site (a string metric, a step that goes back), which is right
for code the user wrote. Inside a library callback the user did not write the call, so a refusal would
crash their training for a value they never chose to log. `Link` sits between: it keeps the numbers the
Recorder accepts, skips anything else with ONE warning and a count (recorded as a `skipped_values` event
when the segment ends), turns a step that goes back into a `restart` event (the library replayed steps),
and turns any other failure into a counted warning. Only a wrong keyword for `midflight.init` raises,
when the integration is built: that is the user's own line.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Mapping

from midflight.logbook import values as mfvalues
from midflight.logbook.record import recorder
from midflight.logbook.record.recorder import RESERVED_NAMES, RecorderWarning, Run

_INIT = inspect.signature(recorder.init)


def check_init_kwargs(where: str, run_dir, init_kwargs: dict) -> None:
    """TypeError now, at the user's line, for a keyword `midflight.init` does not take."""
    try:
        _INIT.bind(run_dir, **init_kwargs)
    except TypeError as exc:
        raise TypeError(f"{where}: {exc}; it takes midflight.init's keywords ({', '.join(_INIT.parameters)})") from None


class Link:
    """One integration's current Run (None before start and after end) and the counts of what it left out."""

    def __init__(self, where: str, run_dir, init_kwargs: dict):
        check_init_kwargs(where, run_dir, init_kwargs)
        self.where = where
        self.run_dir = run_dir
        self.init_kwargs = dict(init_kwargs)
        self.run: Run | None = None
        self.skipped: dict[str, int] = {}  # metric name -> values left out (not a number, or a reserved name)
        self.failures = 0  # recorder calls that failed (warned once)
        self.last_segment: str | None = None  # of the previous Run this link ended (a later start resumes it)
        self.last_step: int | None = None  # the highest step logged in the current Run
        self._warned: set = set()

    # ---------------------------------------------------------------- lifecycle
    def start(self, config: Mapping | None = None, *, continues: bool = False, **launch) -> Run | None:
        """midflight.init with the library's config under the user's (the user's keys win) and `launch`
        (resume_step, reason, name) unless the user gave those. None, with a warning, if init failed.

        `continues`: the same object records again after it ended a Run (Lightning's test() after fit()):
        the new segment is a child of the last one, resumed at its last step."""
        if self.run is not None:
            return self.run
        kwargs = {k: v for k, v in launch.items() if v is not None}
        kwargs.update(self.init_kwargs)
        if config is not None or "config" in self.init_kwargs:
            kwargs["config"] = {**dict(config or {}), **dict(self.init_kwargs.get("config") or {})}
        if continues and self.last_segment is not None and "parent" not in self.init_kwargs:
            kwargs.setdefault("parent", self.last_segment)
            if self.last_step is not None:
                kwargs.setdefault("resume_step", self.last_step)
        try:
            self.run = recorder.init(self.run_dir, **kwargs)
        except Exception as exc:  # noqa: BLE001  (an unwritable run directory must not stop the training)
            self.warn_once("init", f"{self.where}: midflight could not start recording in {self.run_dir}: {exc!r}")
            return None
        if not continues:
            self.last_step = None
        return self.run

    def end(self, reason: str = "completed", **close) -> None:
        """Finish the Run with `reason` (one of the Recorder's end reasons), after a `skipped_values` event."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            if self.skipped:
                run.event("skipped_values", step=self.last_step, counts=dict(self.skipped))
                self.skipped = {}
            run.finish(reason, **close)
        except Exception as exc:  # noqa: BLE001
            self.failed(exc)
        self.last_segment = run.segment_id  # last_step stays: a continuing start resumes from it

    # ---------------------------------------------------------------- records
    def log(self, metrics: Mapping, step=None) -> None:
        """Log the numbers in `metrics` (nested dicts flattened as a/b) at `step`; the rest is skipped, counted."""
        run = self.run
        if run is None:
            return
        try:
            clean = self.numbers(metrics)
            if not clean:
                return
            if step is not None:
                try:
                    step = mfvalues.step(step)
                except ValueError as exc:
                    self.warn_once("step", f"{self.where}: {exc}; such values are logged at the next step")
                    step = None
            if step is not None and self.last_step is not None and step < self.last_step:
                self.warn_once(
                    "restart",
                    f"{self.where}: the library's step went back from {self.last_step} to {step}; "
                    "midflight records a restart event there (replayed steps stay distinguishable)",
                )
                run.event("restart", step=step)
            if step is None:  # the Run's own default: the step after the last one
                step = 0 if self.last_step is None else self.last_step + 1
            run.log(clean, step=step)
            self.last_step = step
        except Exception as exc:  # noqa: BLE001  (never into the training loop)
            self.failed(exc)

    def event(self, kind: str, step=None, **fields) -> None:
        run = self.run
        if run is None:
            return
        try:
            run.event(kind, step=mfvalues.optional_step(step), **fields)
        except Exception as exc:  # noqa: BLE001
            self.failed(exc)

    def update_config(self, values: Mapping, step=None) -> None:
        run = self.run
        if run is None:
            return
        try:
            run.update_config(dict(values), step=mfvalues.optional_step(step))
        except Exception as exc:  # noqa: BLE001
            self.failed(exc)

    def flush(self) -> None:
        if self.run is not None:
            self.run.flush()

    # ---------------------------------------------------------------- helpers
    def numbers(self, metrics: Mapping, prefix: str = "") -> dict:
        """The values the Recorder accepts, tensors detached; anything else counted in `skipped`."""
        out = {}
        for key, v in dict(metrics).items():
            name = f"{prefix}{key}"
            if isinstance(v, Mapping):  # {"loss": {"train": .., "val": ..}}, as TensorBoard's add_scalars takes
                out.update(self.numbers(v, prefix=f"{name}/"))
                continue
            if name in RESERVED_NAMES:
                self.skip(name, "is a name midflight reserves (every point already has a step and a wall time)")
                continue
            value = number(v)
            if value is None:
                self.skip(name, f"is {type(v).__name__} ({v!r:.60}), not one number")
                continue
            out[name] = value
        return out

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = self.skipped.get(name, 0) + 1
        self.warn_once(
            "skip",
            f"{self.where}: {name!r} {why}; midflight records numbers only, so such values are skipped "
            "(counted, and listed in a skipped_values event when the run ends)",
        )

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.warn_once(("fail", type(exc)), f"{self.where}: midflight could not record ({exc!r}); training goes on")

    def warn_once(self, key, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RecorderWarning, stacklevel=3)


def number(v):
    """`v` as a value Run.log accepts, or None: real numbers as they are, one-element tensors detached
    (read later on the flush thread, never synced here), one-element numpy arrays; not text, None, complex."""
    if type(v) in (int, float, bool):
        return v
    module = type(v).__module__.partition(".")[0]
    if module == "torch":
        dtype = getattr(v, "dtype", None)
        if dtype is None or getattr(dtype, "is_complex", True) or v.numel() != 1:
            return None
        # detached and copied: a library may reuse the tensor (an accumulator) before the flush thread reads it
        return v.detach().reshape(()).clone()
    if isinstance(v, (str, bytes)):
        return None
    if isinstance(v, numbers.Real):
        return v
    if module == "numpy" and getattr(getattr(v, "dtype", None), "kind", None) in ("b", "i", "u", "f"):
        return v.reshape(()) if getattr(v, "size", 0) == 1 else None
    return None
