"""W&B-style code, recorded by midflight: `import midflight.wandb as wandb`, and the script runs unchanged.

    import midflight.wandb as wandb
    run = wandb.init(project="mnist", name="baseline", config={"lr": 1e-3}, tags=["cnn"])
    for epoch in range(10):
        wandb.log({"loss": loss, "acc": acc})          # step 0, 1, 2, ... as in W&B
    run.summary["best_acc"] = best
    wandb.finish()

Why a module and not a plugin: most users will not rewrite their loop to try a new logger; a one-line import
change lets them keep `wandb.init / log / config / summary / define_metric / alert / finish` and see the run on
midflight's dashboard. It records through the Recorder only (`midflight.init`), so it never syncs a GPU in
`log`, never blocks a job whose other ranks do not call init (the W&B habit: rank 0 only), and raises at the
call site for what it cannot record.

Where runs go: `dir=` if given, else $MIDFLIGHT_DIR, else `./midflight-runs`; inside it `<project>/<name or id>`
(project defaults to W&B's "uncategorized"). Project and name are user text, so the folder name is made a safe
path component (characters other than letters, digits, `.`, `_`, `-` become `-`); the run's display name stays
the text given. A later `init` with the same project and name adds a segment to that run directory; with
`resume=` ("allow", "must", True) it continues the step count and lineage from the last segment.

What maps to what:
- `config`: the header's config; every later change (`config.lr = x`, `config["lr"] = x`, `config.update({...})`)
  is a `config` event with its diff (Run.update_config).
- `log(data, step=None, commit=None)`: W&B's step rules. Without `step` each call is the next step;
  `commit=False` accumulates into the step until a committing call; a given `step` higher than the current one
  commits what was pending; a lower one is ignored with a warning, as W&B does. Numbers, `Histogram` (stored as
  quantiles), `str` (a `text` event) and dicts of them; `Image`, `Table`, `Html`, `Video`, `Audio`, ... raise a
  TypeError when logged (midflight records numbers, histograms and text).
- `summary`: `run.summary[k] = v` and `.update()` are `summary` events (last value wins).
- `define_metric(name, step_metric=None, summary=None, goal=None)`: a `define_metric` event; `midflight summary`
  computes summary="min"/"max"/"mean"/"last" (comma-separated too, glob names too) from the stored metric.
  W&B's automatic summary (the last value of every logged key) is not recorded as such: the store has it.
- `alert(title, text, level)`: an `alert` event.
- `tags`, `notes`, `group`, `job_type`: the segment header (checked text), later tag/notes changes as events.
- `mode="disabled"` (or WANDB_MODE=disabled): a run that records nothing, as in W&B.
- `watch`, `save`, `log_artifact`, `use_artifact`, `log_code`, `unwatch`: do nothing, with a one-time warning.
  Unknown `init` arguments: a one-time warning each, never an error.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import string
import warnings
from collections.abc import Mapping
from pathlib import Path

import midflight
from midflight.logbook import values as mf_values
from midflight.logbook.record import histograms, layout, recorder, runmeta, segments


class Error(Exception):
    """W&B's `wandb.Error`: raised for calls made before `wandb.init()`."""


class MidflightWandbWarning(UserWarning):
    """Something W&B code asked for that midflight does not do; the run is recorded without it."""


DEFAULT_PROJECT = "uncategorized"  # W&B's project when none is given
DEFAULT_ROOT = "midflight-runs"
_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, MidflightWandbWarning, stacklevel=3)


def _component(text: str, fallback: str) -> str:
    """User text as one safe folder name: letters, digits, `.`, `_`, `-` (others become `-`), at most 100."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")[:100]
    return safe if layout.is_valid_segment_id(safe) else fallback


def _new_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def run_dir_for(project: str | None, name: str | None, run_id: str, dir: str | os.PathLike | None = None) -> Path:
    """Where a W&B-style run is recorded: (dir or $MIDFLIGHT_DIR or ./midflight-runs) / project / (name or id)."""
    root = Path(dir) if dir is not None else Path(os.environ.get("MIDFLIGHT_DIR") or DEFAULT_ROOT)
    folder = _component(name, run_id) if name else run_id
    return root / _component(project or DEFAULT_PROJECT, DEFAULT_PROJECT) / folder


# ----------------------------------------------------------------- media: refused when logged, with a reason
class _Refused:
    """A W&B media type: building one works (scripts build them before logging), logging one raises."""

    _kind = "media"

    def __init__(self, *args, **kwargs):
        """Nothing is kept: an image or a table is never recorded."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._midflight_refusal = (
            f"wandb.{cls.__name__} is not recorded: midflight records numbers, histograms and text; "
            f"drop the {cls._kind} from wandb.log, or log numbers about it"
        )

    def add_data(self, *args, **kwargs) -> None:  # wandb.Table
        """Accepted and dropped: the table is refused when it is logged, with the reason."""

    def add_column(self, *args, **kwargs) -> None:
        """Accepted and dropped: the table is refused when it is logged, with the reason."""


class Image(_Refused):
    _kind = "image"


class Table(_Refused):
    _kind = "table"


class Html(_Refused):
    _kind = "HTML"


class Video(_Refused):
    _kind = "video"


class Audio(_Refused):
    _kind = "audio"


class Object3D(_Refused):
    _kind = "3D object"


class Plotly(_Refused):
    _kind = "figure"


class Histogram(histograms.Histogram):
    """W&B's `wandb.Histogram(sequence, np_histogram=None, num_bins=64)`, stored as quantiles (record.histograms)."""

    __slots__ = ()

    def __init__(self, sequence=None, np_histogram=None, num_bins: int = 64):
        super().__init__(sequence, np_histogram=np_histogram, num_bins=num_bins)


class AlertLevel:
    """W&B's `wandb.AlertLevel.INFO / WARN / ERROR`."""

    INFO, WARN, ERROR = "INFO", "WARN", "ERROR"


class Settings(dict):
    """W&B's `wandb.Settings(...)`: accepted, and only `mode` is read."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)


Text = midflight.Text  # not in W&B (it logs str), here for symmetry: both are `text` events


# ----------------------------------------------------------------- config
class Config:
    """`run.config`: attribute and item access; every change after init is recorded as a config event (its diff)."""

    def __init__(self, run: Run):
        object.__setattr__(self, "_run", run)

    def _values(self) -> dict:
        return self._run._config

    def update(self, d=None, allow_val_change: bool | None = None, **kwargs) -> None:
        values = dict(_as_mapping("config.update()", d or {}), **kwargs)
        if values:
            self._run._update_config(values)

    def setdefaults(self, d) -> None:
        current = self._values()
        self.update({k: v for k, v in _as_mapping("config.setdefaults()", d).items() if k not in current})

    def __setitem__(self, key, value) -> None:
        self.update({key: value})

    def __setattr__(self, key, value) -> None:
        self.update({key: value})

    def __getitem__(self, key):
        return self._values()[key]

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self._values()[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __contains__(self, key) -> bool:
        return key in self._values()

    def __iter__(self):
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def get(self, key, default=None):
        return self._values().get(key, default)

    def keys(self):
        return self._values().keys()

    def items(self):
        return self._values().items()

    def values(self):
        return self._values().values()

    def as_dict(self) -> dict:
        return dict(self._values())

    def __repr__(self) -> str:
        return repr(self._values())


def _as_mapping(where: str, d) -> Mapping:
    """A config given as a dict, an argparse.Namespace or any object with attributes (as W&B takes it)."""
    if isinstance(d, Mapping):
        return d
    if hasattr(d, "__dict__"):
        return {k: v for k, v in vars(d).items() if not k.startswith("_")}
    raise TypeError(f"{where}: give a dict (or an argparse.Namespace) of config values, not {type(d).__name__}")


# ----------------------------------------------------------------- the run
class Run:
    """What `wandb.init()` returns: W&B's Run API over one midflight Recorder run."""

    def __init__(self, rec: recorder.Run | None, *, project: str, name: str, run_id: str, start_step: int,
                 config: dict, group: str | None, job_type: str | None):  # fmt: skip
        self._rec = rec  # None: mode="disabled"
        self.project = project
        self.name = name
        self.id = run_id
        self.group = group
        self.job_type = job_type
        self.entity = None
        self.url = None
        self.dir = str(rec.run_dir) if rec is not None else None
        self.disabled = rec is None
        self._config = dict(config)
        self.config = Config(self)
        self.summary = rec.summary if rec is not None else runmeta.Summary(lambda values, removed: None)
        self._step = start_step
        self._pending: dict = {}
        self._finished = False
        if rec is not None:  # runs before the Recorder's own exit handler (registered earlier): nothing pending is lost
            atexit.register(self._commit)

    # W&B's names for things the Recorder keeps
    @property
    def step(self) -> int:
        return self._step

    @property
    def tags(self) -> tuple:
        return self._rec.tags if self._rec is not None else ()

    @tags.setter
    def tags(self, tags) -> None:
        if self._rec is not None:
            self._rec.tags = tags

    @property
    def notes(self) -> str | None:
        return self._rec.notes if self._rec is not None else None

    @notes.setter
    def notes(self, notes) -> None:
        if self._rec is not None:
            self._rec.notes = notes

    def _update_config(self, values: dict) -> None:
        if self._rec is not None:
            self._rec.update_config(values, step=self._step)
            self._config = self._rec.config
        else:
            self._config = segments.merge_config(self._config, values)

    def log(self, data: Mapping, step: int | None = None, commit: bool | None = None, sync: bool | None = None) -> None:
        """W&B's log: see the module's doc for the step and commit rules. Misuse raises here (one line)."""
        del sync  # W&B's deprecated argument
        if self._finished:
            raise Error("wandb.log() after run.finish(): start a new run with wandb.init()")
        values = recorder.check_log_values("wandb.log()", data)
        if step is not None:
            try:
                step = mf_values.step(step)
            except ValueError as exc:
                raise ValueError(f"wandb.log(step=...): {exc}") from None
            if step < self._step:
                warnings.warn(
                    f"wandb.log(step={step}): the current step is {self._step}; steps must increase, so this data "
                    "is ignored (as W&B does)",
                    MidflightWandbWarning,
                    stacklevel=2,
                )
                return
            if step > self._step:
                self._commit()
                self._step = step
        self._pending.update(values)
        if commit or (commit is None and step is None):
            self._commit()

    def _commit(self) -> None:
        """Record what is pending at the current step, and move to the next step (W&B's history row)."""
        if not self._pending:
            return
        data, self._pending = self._pending, {}
        if self._rec is not None:
            self._rec.log(data, step=self._step)
        self._step += 1

    def define_metric(self, name: str, step_metric: str | None = None, step_sync: bool | None = None,
                      hidden: bool | None = None, summary: str | None = None, goal: str | None = None,
                      overwrite: bool | None = None) -> None:  # fmt: skip
        """Record W&B's metric definition (a `define_metric` event); `midflight summary` computes summary=
        min / max / mean / last from the stored metric. The others (best, copy, none) are kept as given."""
        del step_sync, hidden, overwrite
        name = runmeta.check_label("define_metric()", name, what="name")
        if name is None:
            raise TypeError("define_metric(): name must be text, not None")
        fields = {"name": name}
        for key, value in (("step_metric", step_metric), ("summary", summary), ("goal", goal)):
            if value is not None:
                fields[key] = runmeta.check_label("define_metric()", value, what=key)
        if self._rec is not None:
            self._rec.event("define_metric", step=None, **fields)

    def alert(self, title: str, text: str, level=None, wait_duration=None) -> None:
        """W&B's alert: an `alert` event (title, text, level INFO / WARN / ERROR) at the current step."""
        del wait_duration
        if self._rec is not None:
            self._rec.alert(title, text, "INFO" if level is None else level, step=self._step)

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Commit what is pending and end the run: completed, or crashed for a non-zero exit code."""
        global run
        del quiet
        if self._finished:
            return
        self._commit()
        self._finished = True
        atexit.unregister(self._commit)
        if self._rec is not None:
            if exit_code:
                self._rec.finish("crashed", exit_code=int(exit_code))
            else:
                self._rec.finish("completed", exit_code=exit_code)
        if run is self:
            _set_current(None)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.finish()
        else:
            self._commit()
            self._finished = True
            atexit.unregister(self._commit)
            if self._rec is not None:
                self._rec.__exit__(exc_type, exc, tb)
            if run is self:
                _set_current(None)

    # things W&B does that midflight does not
    def watch(self, *args, **kwargs) -> None:
        watch(*args, **kwargs)

    def save(self, *args, **kwargs) -> None:
        save(*args, **kwargs)

    def log_artifact(self, *args, **kwargs) -> None:
        log_artifact(*args, **kwargs)

    def use_artifact(self, *args, **kwargs) -> None:
        use_artifact(*args, **kwargs)

    def log_code(self, *args, **kwargs) -> None:
        log_code(*args, **kwargs)


# ----------------------------------------------------------------- module level, as in W&B
class _PreInit:
    """`wandb.config` / `wandb.summary` before init: any use says to call wandb.init() first."""

    def __init__(self, what: str):
        object.__setattr__(self, "_what", what)

    def _fail(self, *args, **kwargs):
        raise Error(f"call wandb.init() before using wandb.{self._what}")

    __getattr__ = __getitem__ = __setitem__ = __setattr__ = __contains__ = __iter__ = __len__ = _fail


run: Run | None = None
config = _PreInit("config")
summary = _PreInit("summary")


def _set_current(r: Run | None) -> None:
    global run, config, summary
    run = r
    config = r.config if r is not None else _PreInit("config")
    summary = r.summary if r is not None else _PreInit("summary")


def init(
    project: str | None = None,
    name: str | None = None,
    config: Mapping | None = None,  # W&B's argument name; the module's `config` is set by _set_current
    dir: str | os.PathLike | None = None,
    tags=None,
    notes: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    mode: str | None = None,
    reinit=None,
    id: str | None = None,
    resume=None,
    settings=None,
    config_exclude_keys=None,
    config_include_keys=None,
    **kwargs,
) -> Run:
    """Start a W&B-style run recorded by midflight; see the module's doc. Returns the Run (also `wandb.run`)."""
    for key in sorted(kwargs):
        _warn_once(f"init:{key}", f"midflight.wandb ignores wandb.init({key}=...)")
    if isinstance(settings, Mapping) and mode is None:
        mode = settings.get("mode")
    mode = mode or os.environ.get("WANDB_MODE")
    if mode not in (None, "online", "offline", "disabled", "shared", "dryrun", "run"):
        raise ValueError(f"wandb.init(mode={mode!r:.40}): use 'online', 'offline' or 'disabled'")
    if run is not None:
        if reinit in ("return_previous", False):
            return run
        run.finish()  # W&B's "finish_previous" (its default in scripts), and "create_new" here too
    values = dict(_as_mapping("wandb.init(config=...)", config)) if config is not None else {}
    if config_include_keys:
        values = {k: v for k, v in values.items() if k in set(config_include_keys)}
    if config_exclude_keys:
        values = {k: v for k, v in values.items() if k not in set(config_exclude_keys)}
    for label, value in (("project", project), ("name", name), ("id", id)):
        if value is not None:
            runmeta.check_label("wandb.init()", value, what=label)
    run_id = id or _new_id()
    display = name or run_id
    if mode == "disabled":
        r = Run(None, project=project or DEFAULT_PROJECT, name=display, run_id=run_id, start_step=0,
                config=values, group=group, job_type=job_type)  # fmt: skip
        _set_current(r)
        return r
    where = run_dir_for(project, name or (id if id else None), run_id, dir)
    previous = segments.latest(where) if where.exists() else None
    if resume == "must" and previous is None:
        raise Error(f"wandb.init(resume='must'): no run to resume in {where}")
    if resume == "never" and previous is not None:
        raise Error(f"wandb.init(resume='never'): {where} already holds a run")
    resume_step = segments.last_step(where, previous) if resume not in (None, False, "never") and previous else None
    rec = midflight.init(
        where,
        name=display,
        config=values,
        resume_step=resume_step,
        reason="resumed (wandb.init resume=)" if resume_step is not None else None,
        tags=tags,
        notes=notes,
        group=group,
        job_type=job_type,
    )
    start = 0 if resume_step is None else resume_step + 1
    r = Run(rec, project=project or DEFAULT_PROJECT, name=display, run_id=run_id, start_step=start,
            config=rec.config, group=group, job_type=job_type)  # fmt: skip
    _set_current(r)
    return r


def _require(what: str) -> Run:
    if run is None:
        raise Error(f"call wandb.init() before wandb.{what}()")
    return run


def log(data: Mapping, step: int | None = None, commit: bool | None = None, sync: bool | None = None) -> None:
    _require("log").log(data, step=step, commit=commit, sync=sync)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    if run is not None:
        run.finish(exit_code=exit_code, quiet=quiet)


def define_metric(name: str, step_metric: str | None = None, step_sync: bool | None = None,
                  hidden: bool | None = None, summary: str | None = None, goal: str | None = None,
                  overwrite: bool | None = None) -> None:  # fmt: skip
    _require("define_metric").define_metric(name, step_metric, step_sync, hidden, summary, goal, overwrite)


def alert(title: str, text: str, level=None, wait_duration=None) -> None:
    _require("alert").alert(title, text, level=level, wait_duration=wait_duration)


def _noop(what: str, why: str):
    def call(*args, **kwargs):
        _warn_once(what, f"midflight.wandb: wandb.{what}() does nothing here ({why})")

    call.__name__ = what
    call.__doc__ = f"Does nothing in midflight ({why}); warns once."
    return call


watch = _noop("watch", "gradients and parameters are not hooked; log midflight.Histogram(p.grad) where you want one")
unwatch = _noop("unwatch", "nothing is watched")
save = _noop("save", "files stay where they are; the run directory holds the logs")
log_artifact = _noop("log_artifact", "midflight keeps no artifacts")
use_artifact = _noop("use_artifact", "midflight keeps no artifacts")
log_code = _noop("log_code", "midflight keeps no code")


def login(*args, **kwargs) -> bool:
    """Nothing to log in to: midflight writes local files. Returns True, as a successful W&B login does."""
    return True


def setup(*args, **kwargs) -> None:
    """W&B's process setup: nothing to do."""
