"""MLPerf / NeMo compliance logs: one `:::MLLOG {json}` record per line.

    :::MLLOG {"namespace": "", "time_ms": 1715240877183, "event_type": "POINT_IN_TIME", "key": "train_loss",
              "value": 3.2219, "metadata": {"file": "...", "lineno": 170, "samples_count": 192}}
    0: :::MLLOG {... "key": "tracked_stats", "value": {"train_step_timing": 11.05}, "metadata": {"step": 746586112}}

MLPerf result files (mlcommons/training_results_v*) and NeMo's MLPerf callbacks write
these. Every record carries its wall time (`time_ms`), so no clock or zone is needed.

- **Steps are the log's own counter**: the record's `metadata.step`, else `samples_count`,
  else `epoch_num` (MLPerf counts in samples or tokens, not optimizer steps). Which one was
  used is recorded in the run config (`units.step`). A record without one is pinned to the
  last step seen.
- **Metrics**: numeric `POINT_IN_TIME` values after `run_start` (or, before it, any that
  carry a step counter in their metadata, which hyperparameters never do: an unreadable
  `run_start` line costs that line, not the run's metrics) and every number inside a
  `tracked_stats` value, named through `names.py` (`train_loss`/`reduced_train_loss` ->
  `loss`, `train_step_timing` -> `step_time_s`, `current_lr` -> `lr`; `throughput` keeps
  its name, because its unit differs by benchmark).
- **Config**: `submission_*`, `opt_*`, `global_batch_size`, `seed`, ... (the hyperparameters
  MLPerf requires before `run_start`) go into the segment's config.
- **Events**: `run_start`, `run_stop` (with its `status`), `epoch_*`, `block_*`, `eval_*`;
  `run_stop` also ends the launch: status `success` closes it as completed, anything
  else (`aborted`) as stopped. The per-rank `init_start`/`cache_clear` flood is skipped.
- Every rank may print every record (`0: :::MLLOG`, `1: :::MLLOG`, `[default3]:`, ...): only
  lines without a rank prefix or from rank 0 are read (other prefixes, a timestamp, are allowed).
  A line that has `:::MLLOG` but no readable record is counted as malformed, never fatal.
"""

from __future__ import annotations

import json
import math
import re

from midflight.logbook.importers import names
from midflight.logbook.importers.items import Config, Context, End, Event, Step
from midflight.logbook.values import step as valid_step

MARK = ":::MLLOG"
STEP_KEYS = ("step", "samples_count", "epoch_num", "first_epoch_num")
EVENTS = {
    "run_start",
    "run_stop",
    "epoch_start",
    "epoch_stop",
    "block_start",
    "block_stop",
    "eval_start",
    "eval_stop",
    "init_stop",
}
SKIP = {"init_start", "cache_clear"}
CONFIG_KEYS = {
    "seed",
    "global_batch_size",
    "gradient_accumulation_steps",
    "max_sequence_length",
    "train_samples",
    "eval_samples",
    "trained_samples",
    "init_checkpoint_step",
    "lora_rank",
    "lora_alpha",
}
KEEP_NAME = {"throughput"}  # samples/s or tokens/s depending on the benchmark: not midflight's tokens_per_s
MAX_CONFIG_TEXT = 200
MAX_NAME = 200  # a key or tracked_stats name longer than this is not a metric name

_RANK = re.compile(r"^\s*\[?(?:default)?(\d{1,6})\]?\s*:\s*" + re.escape(MARK))  # "0: :::MLLOG", "[default3]:..."
_RECORD = re.compile(re.escape(MARK) + r"\s*(\{.*\})\s*$")


def parse(lines, ctx: Context):
    """Items from the lines of one MLLOG file (see the module docstring)."""
    state = {"step": None, "started": False, "unit": None, "init_stop": False}
    for line_no, raw in lines:
        ctx.report.lines += 1
        if MARK not in raw:
            ctx.report.other_lines += 1
            continue
        rank = _RANK.match(raw)
        if rank and rank.group(1) is not None and rank.group(1) != "0":
            ctx.report.other_lines += 1  # another rank's copy of a record rank 0 also printed
            continue
        try:
            items = list(_record(raw, line_no, state, ctx))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            ctx.report.bad(ctx.source, line_no, str(exc) or type(exc).__name__, raw)
            continue
        yield from items


def _record(raw: str, line_no: int, state: dict, ctx: Context):
    m = _RECORD.search(raw)
    if not m:
        raise ValueError("no JSON object after :::MLLOG")
    rec = json.loads(m.group(1))
    if not isinstance(rec, dict):
        raise ValueError("the MLLOG record is not an object")
    key = rec.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError("MLLOG record without a key")
    if len(key) > MAX_NAME:
        raise ValueError(f"MLLOG key of {len(key):,} characters")
    meta = rec.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    t = _time(rec.get("time_ms"))
    value = rec.get("value")
    if key in SKIP:
        return
    if key in EVENTS:
        if key == "init_stop":
            if state["init_stop"]:
                return
            state["init_stop"] = True
        if key == "run_start":
            state["started"] = True
        fields = {k: _plain(v) for k, v in meta.items() if k not in ("file", "lineno")}
        if value not in (None, ""):
            fields["value"] = _plain(value)
        yield Event(key, None, t, fields, line_no)
        if key == "run_stop":
            status = str(meta.get("status", "")).lower()
            yield End("completed" if status == "success" else "stopped", t, line_no)
        return
    if (
        key.startswith(("submission_", "opt_"))
        or key in CONFIG_KEYS
        or (not state["started"] and key != "tracked_stats" and not any(meta.get(k) is not None for k in STEP_KEYS))
    ):
        if isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and not math.isfinite(value)):
            yield Config({f"mlperf.{key}": value[:MAX_CONFIG_TEXT] if isinstance(value, str) else value}, line_no)
        return
    if key == "tracked_stats":
        if not isinstance(value, dict):
            raise ValueError("tracked_stats value is not an object")
        pairs = list(value.items())
    else:
        pairs = [(key, value)]
    values: dict[str, float] = {}
    for name, v in pairs:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or len(str(name)) > MAX_NAME:
            continue  # text or structure: not a metric
        values[_name(str(name))] = float(v)
    if not values:
        if key == "tracked_stats":
            raise ValueError("tracked_stats without a number")
        return  # a text-valued point (a status, a name): nothing to plot
    step = _step(meta, state, ctx)
    yield Step(step, values, t, line_no)


def _step(meta: dict, state: dict, ctx: Context) -> int:
    for k in STEP_KEYS:
        if k in meta and meta[k] is not None:
            step = valid_step(meta[k])  # ValueError with the reason: a counted bad line
            if state["unit"] is None:
                state["unit"] = k
                ctx.run_config.setdefault("units", {})["step"] = f"MLPerf metadata '{k}' (as logged)"
            state["step"] = step
            return step
    return state["step"] if state["step"] is not None else 0


def _name(key: str) -> str:
    if key in KEEP_NAME:
        return key
    claim = names.canonical(key)
    return claim[0] if claim else names.safe(key) or "unnamed"


def _time(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        t = float(v) / 1000.0
    except OverflowError:
        return None
    return t if math.isfinite(t) and 0 < t < 1e11 else None


def _plain(v):
    """A JSON-safe field value: numbers and short text as they are, anything else as short text."""
    if v is None or isinstance(v, (bool, int, str)):
        return v[:MAX_CONFIG_TEXT] if isinstance(v, str) else v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return json.dumps(v)[:MAX_CONFIG_TEXT]


def looks_like(sample: list[str]) -> int:
    return sum(1 for raw in sample if MARK in raw and "{" in raw)
