"""Annotations: notes pinned to a step (or a step range) of a run.

They are appended as records to RUN_DIR/annotations.jsonl, so they survive a
rebuild of the store, and an edit or a delete is a new record, never a rewrite:
the file is its own audit trail. Text is stored and returned as plain text.
"""

from __future__ import annotations

import getpass
import time
import uuid
from pathlib import Path

from midflight.logbook.record import layout, records
from midflight.logbook.values import STEP_LIMIT

KINDS = ("note", "hardware", "data", "optimizer", "lr", "clip", "code")
MAX_TEXT = 100_000  # characters; a logbook entry, not a file upload


def _is_step(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < STEP_LIMIT


def _check(step, step_end, kind, text) -> None:
    if not _is_step(step):
        raise ValueError(f"step must be an integer in [0, 2**63), not {str(step)[:40]}")
    if step_end is not None and (not _is_step(step_end) or step_end < step):
        raise ValueError(f"step_end must be an integer in [step ({step}), 2**63), not {str(step_end)[:40]}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of: {', '.join(KINDS)}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("annotation text must be non-empty text")
    if len(text) > MAX_TEXT:
        raise ValueError(f"annotation text is {len(text):,} characters; the limit is {MAX_TEXT:,}")


def _run_path(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    return run_dir / layout.ANNOTATIONS


def author_name(author: str | None) -> str:
    if author is not None:
        return str(author)
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def annotate(
    run_dir, *, step: int, text: str, kind: str = "note", step_end: int | None = None, author: str | None = None
) -> str:
    """Pin a note to `step` (or steps step..step_end) of the run; returns the annotation id."""
    _check(step, step_end, kind, text)
    ann_id = uuid.uuid4().hex[:12]
    records.append_line(
        _run_path(run_dir),
        {
            "k": "annotation",
            "op": "create",
            "id": ann_id,
            "t": time.time(),
            "step": step,
            "step_end": step_end,
            "kind": kind,
            "text": text,
            "author": author_name(author),
        },
    )
    return ann_id


def current(run_dir) -> dict[str, dict]:
    """The live annotations, by id, read straight from the run's annotation log."""
    state: dict[str, dict] = {}
    for line_no, rec in records.numbered_records(Path(run_dir) / layout.ANNOTATIONS):
        if rec.get("k") != "annotation":
            continue
        ann_id = records.record_id(rec, line_no)  # a hand-written id may be any JSON
        if rec.get("op") == "delete":
            state.pop(ann_id, None)
        else:
            state[ann_id] = {**rec, "id": ann_id}
    return state


def edit_annotation(run_dir, ann_id: str, *, author: str | None = None, **changes) -> None:
    """Change step, step_end, kind or text of an annotation; the old version stays in the audit trail."""
    unknown = set(changes) - {"step", "step_end", "kind", "text"}
    if unknown:
        raise ValueError(f"cannot edit {', '.join(sorted(unknown))}: editable fields are step, step_end, kind, text")
    old = current(run_dir).get(ann_id)
    if old is None:
        raise KeyError(f"no annotation {ann_id!r} in {run_dir}")
    new = {k: changes.get(k, old.get(k)) for k in ("step", "step_end", "kind", "text")}
    _check(new["step"], new["step_end"], new["kind"], new["text"])
    records.append_line(
        _run_path(run_dir),
        {"k": "annotation", "op": "edit", "id": ann_id, "t": time.time(), **new, "author": author_name(author)},
    )


def delete_annotation(run_dir, ann_id: str, *, author: str | None = None) -> None:
    if ann_id not in current(run_dir):
        raise KeyError(f"no annotation {ann_id!r} in {run_dir}")
    records.append_line(
        _run_path(run_dir),
        {"k": "annotation", "op": "delete", "id": ann_id, "t": time.time(), "author": author_name(author)},
    )
