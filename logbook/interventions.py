"""Interventions: requests to change a live run, and the run's answers, as an audit log.

A person (dashboard or CLI) appends a `request` to RUN_DIR/interventions.jsonl; the
trainer polls `pending()`, applies or rejects each request at a step boundary and
appends the outcome. The file is the audit record: who asked for what, when, and
what the run did about it. The store shows it through the `interventions` view.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from . import layout, records
from .annotations import author_name

# action -> the params it takes (validated here so a typo never reaches a live run)
ACTIONS = {
    "lr_multiplier": {"factor"},
    "lr_peak": {"lr"},
    "clip": {"max_norm"},
    "skip_batches": {"n"},
    "checkpoint_now": set(),
    "rewind": {"checkpoint_step", "changes"},
    "stop": set(),
}


def _path(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not layout.is_run_dir(run_dir):
        raise FileNotFoundError(f"{str(run_dir)!r} is not a midflight run directory")
    return run_dir / layout.INTERVENTIONS


def request(run_dir, action: str, params: dict | None = None, *, author: str | None = None) -> str:
    """Ask the live run to change course; returns the request id (status: pending)."""
    params = dict(params or {})
    if action not in ACTIONS:
        raise ValueError(f"unknown intervention {action!r}; one of: {', '.join(ACTIONS)}")
    extra = set(params) - ACTIONS[action]
    if extra:
        raise ValueError(f"{action} does not take {', '.join(sorted(extra))}; it takes {sorted(ACTIONS[action])}")
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
