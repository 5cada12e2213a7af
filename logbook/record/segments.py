"""Segments: one launch of a run, and its place in the restart lineage.

A resume or rollback from a checkpoint starts a new segment whose parent is the
segment it resumed from. Rank 0 writes the header once, atomically; the header
carries the full config and its diff against the parent, so "what changed at
this restart" is answered without reading any metrics.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from midflight.logbook.record import layout, records


def new_segment_id(now: float | None = None) -> str:
    """Sortable by start time, unique without coordination: seg-20261125T090102-3fa9c1."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"seg-{stamp}-{secrets.token_hex(3)}"


def read_header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            header = json.load(f)
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def existing_headers(run_dir: Path) -> list[dict]:
    headers, _ = layout.run_files(run_dir)
    found = [h for h in (read_header(p) for p in headers) if h and isinstance(h.get("segment"), str)]
    return sorted(found, key=lambda h: (h.get("start_time") or 0, h["segment"]))


def infer_parent(run_dir: Path, resume_step: int | None) -> str | None:
    """The segment a resume from `resume_step` continues: the latest-started one that began at or before it.

    OPT-175B's 12.08 resumed from step 13,251 after 12.07 had run on to 13,459:
    12.07 began before 13,251, so it is the parent even though it ran past it.
    A launch without a resume step starts a new root.
    """
    if resume_step is None:
        return None
    parent = None
    for h in existing_headers(run_dir):
        start = h.get("resume_step")
        if start is None or start <= resume_step:
            parent = h["segment"]
    return parent


def flatten(config: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def merge_config(config: dict, update) -> dict:
    """`config` with `update` merged in, nested dicts merged key by key (neither argument is changed)."""
    out = dict(config or {})
    for key, value in update.items():
        key = str(key)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def config_diff(old: dict | None, new: dict) -> dict:
    """{dotted.key: [old, new]} for every key that changed, was added (old None) or removed (new None)."""
    a, b = flatten(old or {}), flatten(new or {})
    return {k: [a.get(k), b.get(k)] for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def write_header(run_dir: Path, header: dict) -> None:
    seg_dir = layout.segment_dir(run_dir, header["segment"])
    seg_dir.mkdir(parents=True, exist_ok=True)
    records.write_json_atomic(seg_dir / layout.SEGMENT_HEADER, header)


def build_header(
    run_dir: Path,
    *,
    segment_id: str,
    name: str,
    config: dict,
    parent: str | None,
    resume_step: int | None,
    reason: str | None,
    world_size: int,
    roles: dict | None = None,
    meta: dict | None = None,
) -> dict:
    """The header of a new segment. `meta`: what people said about the run at init (tags, notes, group,
    job_type; checked text, see record.runmeta), stored as top-level keys beside the config."""
    parent_config = None
    if parent is not None:
        p = read_header(layout.segment_dir(run_dir, parent) / layout.SEGMENT_HEADER)
        parent_config = (p or {}).get("config")
    header = {
        "v": records.FORMAT_VERSION,
        "segment": segment_id,
        "run": name,
        "parent": parent,
        "resume_step": resume_step,
        "reason": reason,
        "start_time": time.time(),
        "world_size": world_size,
        "host": os.uname().nodename,
        "pid": os.getpid(),
        "config": config,
        "config_diff": config_diff(parent_config, config) if parent is not None else {},
        **(meta or {}),
    }
    if roles:  # {role: metric name}, validated by the caller (logbook.roles.validate)
        header["roles"] = dict(roles)
    return header


def describe_end(run_dir: Path, segment_id: str, tail_bytes: int = 1 << 16) -> str:
    """How a segment ended, from the close records at the end of its rank logs (for a restart's reason).

    Reads only the last `tail_bytes` of each rank's log. A rank with no close record died
    without one: killed by a signal, the OOM killer or its launcher.
    """
    seg_dir = layout.segment_dir(Path(run_dir), segment_id)
    crashed, silent, ended = [], [], []
    for path in sorted(seg_dir.glob("rank-*.jsonl")):
        rank = layout.rank_of(path)
        close = None
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - tail_bytes))
                lines = f.read().split(b"\n")
        except OSError:
            lines = []
        for line in reversed(lines):
            try:
                rec = records.decode(line)
            except Exception:
                continue
            if rec.get("k") == records.CLOSE:
                close = rec
                break
        if close is None:
            silent.append(rank)
        elif close.get("reason") == "crashed":
            crashed.append((close.get("t") or 0, rank, close.get("error") or f"exit code {close.get('exit_code')}"))
        else:
            ended.append((rank, close.get("reason")))
    lost = f"rank(s) {', '.join(map(str, silent))} ended without a close record (killed?)" if silent else ""
    if crashed:  # the first rank to crash holds the cause; the others mostly died of losing it
        _, rank, error = min(crashed)
        last = error.strip().splitlines()[-1] if error.strip() else error
        if lost:  # a rank killed outright (OOM, a lost GPU) writes nothing; the others crash of losing it
            return f"{segment_id}: {lost}; then rank {rank} crashed: {last[:300]}"
        return f"{segment_id} crashed on rank {rank}: {last[:300]}"
    if silent:
        return f"{segment_id}: {lost}"
    if ended:
        return f"{segment_id} ended: {ended[0][1]}"
    return f"{segment_id}: no rank logs"


def last_step(run_dir: Path, segment_id: str, tail_bytes: int = 1 << 20) -> int | None:
    """The last step rank 0 of a segment recorded: its close record's `last_step`, else its last metrics row's step
    (a launch that died without a close). Reads only the last `tail_bytes` of the log; None if nothing is found.
    What a resumed W&B-style run continues its step count from (midflight.wandb)."""
    path = layout.rank_file(Path(run_dir), segment_id, 0)
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = records.decode(line)
        except Exception:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("k") == records.CLOSE and isinstance(rec.get("last_step"), int):
            return rec["last_step"]
        rows = rec.get("rows") if rec.get("k") == records.METRICS else None
        if isinstance(rows, list) and rows and isinstance(rows[-1], list) and rows[-1]:
            step = rows[-1][0]
            if isinstance(step, int) and step >= 0:
                return step
    return None


def latest(run_dir: Path) -> str | None:
    """The most recently started segment's id."""
    headers = existing_headers(Path(run_dir))
    return headers[-1]["segment"] if headers else None
