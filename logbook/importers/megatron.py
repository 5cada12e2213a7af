"""Megatron-LM and Megatron-DeepSpeed iteration logs.

    [default7]: iteration    31219/  115311 | consumed samples: 47778736 | ... | lm loss: 5.098124E+00 |
        grad norm: 960.351 | ... | number of skipped iterations:   0 | number of nan iterations:   0 | ...

A launcher may prefix every line (`[default7]:`, `3: `) and a terminal may wrap a
long line; wrapped parts are joined until the record ends with its closing `|`.
`lm loss` is in nats already. Skipped and NaN iteration counts are kept as metrics
and, when non-zero, become `skipped_iterations` / `nan_iterations` events (under
fp16 a skipped iteration is a loss-scale overflow). Steps follow `logbook.values.step`
(integers in [0, 2**63)) and the two counts must be whole numbers >= 0: a record that breaks
either is a counted malformed line, never an error.
"""

from __future__ import annotations

import math
import re

from midflight.logbook import values as vals
from midflight.logbook.importers.items import Context, End, Event, Resume, Step

RENAME = {
    "consumed samples": "samples",
    "consumed tokens": "tokens",
    "elapsed time per iteration (s)": "step_time_s",
    "learning rate": "lr",
    "global batch size": "batch_size",
    "lm loss": "loss",
    "loss scale": "loss_scale",
    "grad norm": "grad_norm",
    "num zeros": "num_zeros",
    "number of skipped iterations": "skipped_iterations",
    "number of nan iterations": "nan_iterations",
    "samples per second": "samples_per_s",
    "TFLOPs": "tflops",
    "params norm": "param_norm",
    "throughput per GPU (TFLOP/s/GPU)": "tflops_per_gpu",
}
COUNTS = {"skipped_iterations": "skipped_iterations", "nan_iterations": "nan_iterations"}  # metric -> event kind
SCALED = {"elapsed time per iteration (ms)": ("step_time_s", 1e-3)}  # newer Megatron-LM prints milliseconds
MAX_JOINED = 4  # a wrapped record spans at most this many lines

_PREFIX = re.compile(r"^\s*(?:\[[^\]\s]+\]:\s?|\d+: )")
_ITER = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_VALID = re.compile(r"valid(?:ation)? loss at iteration (\d+)\s*\|(.*)")
_LOADED = re.compile(r"successfully loaded checkpoint from (\S++).*? at iteration (\d+)")  # possessive: linear
_DONE = re.compile(r"\[after training is done\]|exiting program at iteration")
_NAME = re.compile(r"[^0-9A-Za-z]+")


def parse(lines, ctx: Context):
    """Items from the lines of one Megatron log (see the module docstring)."""
    pending: list = []  # (line_no, text) of a record still being wrapped
    for line_no, raw in lines:
        ctx.report.lines += 1
        text = _PREFIX.sub("", raw, count=1)
        if pending:
            if _ITER.search(text) or _VALID.search(text):  # a new record: the wrapped one was cut short
                yield from _record(pending, ctx)
                pending = []
            else:
                pending.append((line_no, text))
                if text.rstrip().endswith("|") or len(pending) >= MAX_JOINED:
                    yield from _record(pending, ctx)
                    pending = []
                continue
        if _ITER.search(text):
            pending = [(line_no, text)]
            if text.rstrip().endswith("|"):
                yield from _record(pending, ctx)
                pending = []
            continue
        item = _other(text, line_no, ctx)
        if item is None:
            ctx.report.other_lines += 1
        else:
            yield from item
    if pending:
        yield from _record(pending, ctx)


def _other(text: str, line_no: int, ctx: Context):
    t = ctx.clock.find(text[:40])
    m = _VALID.search(text)
    if m:
        try:
            fields = _fields(m.group(2))
            values = {}
            if "lm loss value" in fields:
                values["valid_loss"] = float(fields["lm loss value"])
            if "lm loss PPL" in fields:
                values["valid_ppl"] = float(fields["lm loss PPL"])
            if not values:
                raise ValueError("validation line without an lm loss")
            step = vals.step(m.group(1))
        except ValueError as exc:
            ctx.report.bad(ctx.source, line_no, str(exc), text)
            return ()
        return (Step(step, values, t, line_no),)
    m = _LOADED.search(text)
    if m:
        try:
            step = vals.step(m.group(2))
        except ValueError as exc:
            ctx.report.bad(ctx.source, line_no, f"loaded checkpoint: {exc}", text)
            return ()
        return (Resume(step, t, line_no, f"loaded checkpoint {m.group(1)} at iteration {step}"),)
    if _DONE.search(text):
        return (End("completed", t, line_no),)
    return None


def _fields(body: str) -> dict[str, str]:
    out = {}
    for part in body.split("|"):
        name, sep, value = part.rpartition(":")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    return out


def _record(parts: list, ctx: Context):
    line_no = parts[0][0]
    text = " ".join(p[1].strip() for p in parts)
    try:
        m = _ITER.search(text)
        step = vals.step(m.group(1))
        values: dict[str, float] = {}
        train_iters = _whole(m.group(2))
        for name, raw in _fields(text[m.end() :]).items():
            try:
                v = float(raw)
            except ValueError:
                continue  # a text field
            if name in SCALED:
                key, factor = SCALED[name]
                values[key] = v * factor
            else:
                values[RENAME.get(name) or _NAME.sub("_", name).strip("_").lower()] = v
        if "loss" not in values and not any(k.endswith("loss") for k in values):
            raise ValueError("iteration line without a loss (cut short?)")
        for key in COUNTS:
            n = values.get(key)
            if n is not None and not (math.isfinite(n) and n >= 0 and n.is_integer()):
                raise ValueError(f"{key.replace('_', ' ')} {n!r} is not a count")
    except (ValueError, AttributeError, OverflowError) as exc:
        ctx.report.bad(ctx.source, line_no, str(exc) or type(exc).__name__, text)
        return
    if train_iters is not None:
        ctx.run_config.setdefault("train_iters", train_iters)
    if values.get("samples") and values.get("tokens") and "samples_per_s" in values:
        values["tokens_per_s"] = values["samples_per_s"] * values["tokens"] / values["samples"]
    t = ctx.clock.find(parts[0][1][:40])
    yield Step(step, values, t, line_no)
    for key, kind in COUNTS.items():
        n = values.get(key, 0)
        if n > 0:
            yield Event(kind, step, t, {"count": int(n)}, line_no)


def _whole(text: str) -> int | None:
    """The planned iteration count, if it is one (an absurd total loses the setting, not the record)."""
    try:
        return vals.step(text)
    except ValueError:
        return None


def looks_like(sample: list[str]) -> int:
    return sum(1 for raw in sample if _ITER.search(raw) and ("lm loss" in raw or "consumed" in raw))
