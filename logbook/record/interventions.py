"""Interventions: requests to change a live run, and the run's answers, as an audit log.

A person (dashboard or CLI) appends a `request` to RUN_DIR/interventions.jsonl; the
trainer polls the file at step boundaries, applies or rejects each request and
appends the outcome. The file is the audit record: who asked for what, when, why
(the note), and what the run did about it. The store shows it through the
`interventions` view.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from pathlib import Path

from logbook.record import layout, records
from logbook.record.annotations import author_name

# action -> {param: check}; validated here so a typo or a nonsense value never reaches a live run
_POSITIVE = ("a number > 0", lambda v: _is_number(v) and v > 0)
_COUNT = ("a whole number >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
_STEP = ("a step number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
_FRACTION = ("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1)
_NON_NEGATIVE = ("a number >= 0", lambda v: _is_number(v) and v >= 0)

# What a rewind may change on the way back (the knobs OPT-175B's team turned at its restarts).
REWIND_CHANGES = {
    "lr_multiplier": _POSITIVE,
    "lr_peak": _POSITIVE,
    "clip": _POSITIVE,
    "loss_scale_floor": _POSITIVE,
    "skip_batches": _COUNT,
    "beta2": _FRACTION,
    "weight_decay": _NON_NEGATIVE,
}

ACTIONS = {
    "lr_multiplier": {"factor": _POSITIVE},
    "lr_peak": {"lr": _POSITIVE},
    "clip": {"max_norm": _POSITIVE},
    "skip_batches": {"n": _COUNT},
    "loss_scale_floor": {"floor": _POSITIVE},
    "checkpoint_now": {},
    "rewind": {"checkpoint_step": _STEP, "changes": ("a dict of changes", lambda v: isinstance(v, dict))},
    "stop": {},
}
_OPTIONAL = {("rewind", "changes")}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(action: str, params: dict | None) -> dict:
    """The request's params, checked; raises ValueError with a message a person can act on."""
    params = dict(params or {})
    if action not in ACTIONS:
        raise ValueError(f"unknown intervention {action!r}; one of: {', '.join(ACTIONS)}")
    spec = ACTIONS[action]
    extra = set(params) - set(spec)
    if extra:
        raise ValueError(f"{action} does not take {', '.join(sorted(extra))}; it takes {sorted(spec) or 'nothing'}")
    for name, (what, ok) in spec.items():
        if name not in params:
            if (action, name) in _OPTIONAL:
                continue
            raise ValueError(f"{action} needs {name} ({what})")
        if not ok(params[name]):
            raise ValueError(f"{action}: {name} must be {what}, not {params[name]!r}")
    for name, value in (params.get("changes") or {}).items():
        if name not in REWIND_CHANGES:
            raise ValueError(f"rewind cannot change {name!r}; it can change {', '.join(REWIND_CHANGES)}")
        what, ok = REWIND_CHANGES[name]
        if not ok(value):
            raise ValueError(f"rewind: {name} must be {what}, not {value!r}")
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
    """Requests with no outcome yet, oldest first (read from the file; for the trainer's poll)."""
    open_reqs: dict[str, dict] = {}
    for rec in records.iter_records(Path(run_dir) / layout.INTERVENTIONS):
        if rec["k"] != "intervention" or "id" not in rec:
            continue
        if rec.get("op") == "request":
            open_reqs[rec["id"]] = rec
        elif rec.get("op") in ("applied", "rejected"):
            open_reqs.pop(rec["id"], None)
    return list(open_reqs.values())


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
