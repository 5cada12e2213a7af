"""Interventions: requests to change a live run, and the run's answers, as an audit log.

A person (dashboard or CLI) appends a `request` to RUN_DIR/interventions.jsonl; the
trainer polls the file at step boundaries, applies or rejects each request and
appends the outcome. The file is the audit record: who asked for what, when, why
(the note), and what the run did about it. The store shows it through the
`interventions` view.

What a request may ask for is one table, `VOCABULARY` (see its comment): validation here, the
trainer, the `midflight intervene` flags and the dashboard's form all derive from it.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from midflight.logbook.record import layout, records
from midflight.logbook.record.annotations import author_name
from midflight.logbook.values import STEP_LIMIT


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _in(lo, hi, *, lo_open=True):
    """A finite number in (lo, hi] (or [lo, hi] when lo_open is False), with the words for it.

    Every knob has an upper bound as well as a lower one: a request reaches a live run, and a value no
    run would want (an LR scaled by 1e308) is refused here, before it can overflow anything there."""
    words = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    return words, lambda v: _is_number(v) and (v > lo if lo_open else v >= lo) and v <= hi


def _is_step(v) -> bool:
    return _is_whole(v) and 0 <= v < STEP_LIMIT


# the checks, each with the words an error message uses for it
_LR_FACTOR = _in(0, 100)  # x100 already turns a sane LR into a divergence; beyond it is a typo
_LR = _in(0, 10)  # peak LRs of real runs are 1e-5 .. 1e-2
_CLIP = _in(0, 1e6)
_SCALE_FLOOR = _in(0, 2.0**24)  # fp16 loss scales live in 2**-14 .. 2**24
_COUNT = ("a whole number in [1, 1e9]", lambda v: _is_whole(v) and 1 <= v <= 10**9)
_STEP = ("a step number in [0, 2**63)", _is_step)
_FRACTION = ("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1)
_WEIGHT_DECAY = _in(0, 10, lo_open=False)
_CHANGES = ("a dict of changes", lambda v: isinstance(v, dict))


@dataclass(frozen=True)
class Param:
    """One parameter of a request: its wire name, type, check, and how the dashboard asks for it."""

    name: str  # the key in the request's `params`
    type: type  # int or float (dict for a rewind's `changes`)
    check: tuple[str, Callable[[object], bool]]  # (what it must be, in words; the test)
    label: str = ""  # the dashboard's number_input label
    default: int | float | None = None  # the dashboard's starting value
    min: int | float | None = None  # the dashboard's lowest value (validation still decides)
    format: str | None = None  # the dashboard's number format, e.g. "%.3e"
    optional: bool = False

    @property
    def what(self) -> str:
        return self.check[0]

    def ok(self, value) -> bool:
        return self.check[1](value)


@dataclass(frozen=True)
class Knob:
    """One entry of the vocabulary: an action a request can name, a change a rewind can carry, or both."""

    label: str  # the dashboard's name for it
    params: tuple[Param, ...] = ()  # a change carries the value of params[0]
    config_key: str | None = None  # the TrainConfig key it sets (None: the trainer acts on it itself)
    flag: str = ""  # `midflight intervene` flag; its value fills params[0] (no params: a switch)
    metavar: str | None = None
    help: str = ""
    action: bool = True  # a request of its own (False: it only rides along with a rewind)
    rewind_change: bool = False  # a rewind may carry it in `changes`


REWIND = "rewind"  # the action that restarts from a checkpoint, carrying any rewind changes

# The intervention vocabulary, in ONE place. Everything that speaks it derives from this table when it
# runs: `validate` here, the trainer (which config key a knob sets: trainer.trainer.set_knob, the
# rewind changes applied in trainer/build.py, `python -m midflight.trainer --change`), the `midflight
# intervene` flags, and the dashboard's form (labels, number inputs, the rewind form's changes).
# Adding a knob is adding an entry here; the trainer keeps only engine preconditions (no loss
# scale in bf16) and the actions it carries out itself (skip, checkpoint, rewind, stop).
VOCABULARY: dict[str, Knob] = {
    "lr_multiplier": Knob(
        "Scale the LR",
        (Param("factor", float, _LR_FACTOR, "LR x", 0.5, 0.0, "%.4g"),),
        "optim.lr_multiplier",
        "--lr-scale",
        "X",
        "multiply the LR schedule by X",
        rewind_change=True,
    ),
    "lr_peak": Knob(
        "Set a new peak LR",
        (Param("lr", float, _LR, "peak LR", 3e-4, 0.0, "%.3e"),),
        "optim.lr",
        "--lr",
        "X",
        "new peak LR",
        rewind_change=True,
    ),
    "clip": Knob(
        "Set the gradient-clip threshold",
        (Param("max_norm", float, _CLIP, "max grad norm", 0.3, 0.0),),
        "optim.clip",
        "--clip",
        "X",
        "new gradient-clipping threshold",
        rewind_change=True,
    ),
    "skip_batches": Knob(
        "Skip the next N batches",
        (Param("n", int, _COUNT, "batches to skip", 10, 1),),
        None,
        "--skip-batches",
        "N",
        "skip the next N batches",
        rewind_change=True,
    ),
    "loss_scale_floor": Knob(
        "Set the fp16 loss-scale floor",
        (Param("floor", float, _SCALE_FLOOR, "loss-scale floor", 0.25, 0.0),),
        "precision.scale_floor",
        "--loss-scale-floor",
        "X",
        "fp16 loss-scale floor",
        rewind_change=True,
    ),
    "beta2": Knob(
        "Set Adam's beta2",
        (Param("beta2", float, _FRACTION, "Adam beta2", 0.95, 0.0, "%.4f"),),
        "optim.beta2",
        "--beta2",
        "X",
        "with --rewind: Adam's beta2 on the way back",
        action=False,
        rewind_change=True,
    ),
    "weight_decay": Knob(
        "Set the weight decay",
        (Param("weight_decay", float, _WEIGHT_DECAY, "weight decay", 0.1, 0.0, "%.4g"),),
        "optim.weight_decay",
        "--weight-decay",
        "X",
        "with --rewind: the weight decay on the way back",
        action=False,
        rewind_change=True,
    ),
    "checkpoint_now": Knob("Checkpoint now", flag="--checkpoint", help="save a checkpoint now"),
    REWIND: Knob(
        "Rewind to a checkpoint (with changes)",
        (Param("checkpoint_step", int, _STEP, "checkpoint step"), Param("changes", dict, _CHANGES, optional=True)),
        flag="--rewind",
        metavar="STEP",
        help="restart from checkpoint STEP (with the other changes)",
    ),
    "stop": Knob("Stop the run (checkpoints first)", flag="--stop", help="checkpoint and stop the run"),
}


def actions() -> dict[str, Knob]:
    """The knobs a request may name as its action, in table order."""
    return {name: k for name, k in VOCABULARY.items() if k.action}


def rewind_changes() -> dict[str, Knob]:
    """What a rewind may change on the way back (the knobs OPT-175B's team turned at its restarts)."""
    return {name: k for name, k in VOCABULARY.items() if k.rewind_change}


def config_key(name: str) -> str | None:
    """The TrainConfig key knob `name` sets (None if the trainer acts on it itself); KeyError if unknown."""
    return VOCABULARY[name].config_key


def validate(action: str, params: dict | None) -> dict:
    """The request's params, checked; raises ValueError with a message a person can act on."""
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"params must be a JSON object, not {type(params).__name__}")
    params = dict(params or {})
    known = actions()
    if not isinstance(action, str) or action not in known:
        raise ValueError(f"unknown intervention {str(action)[:80]!r}; one of: {', '.join(known)}")
    spec = {p.name: p for p in known[action].params}
    extra = set(params) - set(spec)
    if extra:
        raise ValueError(f"{action} does not take {', '.join(sorted(extra))}; it takes {sorted(spec) or 'nothing'}")
    for name, p in spec.items():
        if name not in params:
            if p.optional:
                continue
            raise ValueError(f"{action} needs {name} ({p.what})")
        if not p.ok(params[name]):
            raise ValueError(f"{action}: {name} must be {p.what}, not {params[name]!r:.80}")
    if action == REWIND:
        changes = rewind_changes()
        for name, value in (params.get("changes") or {}).items():
            if name not in changes:
                raise ValueError(f"rewind cannot change {name[:80]!r}; it can change {', '.join(changes)}")
            p = changes[name].params[0]
            if not p.ok(value):
                raise ValueError(f"rewind: {name} must be {p.what}, not {value!r:.80}")
    return params


def _path(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not layout.is_run_dir(run_dir):
        raise FileNotFoundError(f"{str(run_dir)!r} is not a midflight run directory")
    return run_dir / layout.INTERVENTIONS


def request(
    run_dir, action: str, params: dict | None = None, *, note: str | None = None, author: str | None = None
) -> str:
    """Ask the live run to change course; returns the request id (status: pending until the run answers)."""
    params = validate(action, params)
    if note is not None and not isinstance(note, str):
        raise ValueError("the note must be text")
    req_id = uuid.uuid4().hex[:12]
    records.append_line(
        _path(run_dir),
        {
            "k": "intervention",
            "op": "request",
            "id": req_id,
            "t": time.time(),
            "action": action,
            "params": params,
            "note": note,
            "author": author_name(author),
        },
    )
    return req_id


def resolve(run_dir, req_id: str, *, applied: bool, step: int | None = None, detail: str | None = None) -> None:
    """The run's answer: applied at `step`, or rejected with `detail` as the reason."""
    records.append_line(
        _path(run_dir),
        {
            "k": "intervention",
            "op": "applied" if applied else "rejected",
            "id": req_id,
            "t": time.time(),
            "step": step,
            "detail": detail,
            "author": "trainer",
        },
    )


def pending(run_dir) -> list[dict]:
    """Requests with no outcome yet, oldest first (read from the file; for the trainer's poll).

    The file is a control channel anyone with write access can append to, so nothing in a line is
    trusted: each request comes back with only the fields the trainer reads (`id`, `action`,
    `params`, `note`, `author`) and `problem`, the reason to reject it unread (None when it may be
    checked). A line with an id that is not short text goes by `line-N` (records.record_id), so it
    is answered, and shown as rejected, like any other. This function never raises on content.
    """
    open_reqs: dict[str, dict] = {}
    for line_no, rec in records.numbered_records(Path(run_dir) / layout.INTERVENTIONS):
        if rec.get("k") != "intervention":
            continue
        req_id, op = records.record_id(rec, line_no), rec.get("op")
        if op == "request":
            open_reqs[req_id] = _request_from(rec, req_id)
        elif op in ("applied", "rejected"):
            open_reqs.pop(req_id, None)
    return list(open_reqs.values())


def _request_from(rec: dict, req_id: str) -> dict:
    problem = None
    if req_id != rec.get("id"):
        problem = f"the request's id must be text of 1 to {records.MAX_ID} printable characters"
    note, author = rec.get("note"), rec.get("author")
    return {
        "id": req_id,
        "action": rec.get("action"),
        "params": rec.get("params"),
        "note": note[:2000] if isinstance(note, str) else None,
        "author": author[:200] if isinstance(author, str) else "unknown",
        "problem": problem,
    }


class Channel:
    """The trainer's side of the channel: `poll()` costs one stat() unless the file changed."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / layout.INTERVENTIONS
        self._seen: tuple | None = None

    def poll(self) -> list[dict]:
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if key == self._seen:
            return []
        self._seen = key
        return pending(self.path.parent)
