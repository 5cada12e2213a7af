"""metaseq and fairseq progress logs: JSON `train_inner` lines and the text `key=value` forms.

    2022-11-11 14:05:27 | INFO | train_inner | {"epoch": 1, "loss": "15.878", "ppl": "60214.8", ...}
    | epoch 001:    450 / 1891 loss=11.521, nll_loss=10.881, ppl=1886.05, ..., num_updates=445, ...
    2020-07-17 07:11:02 | INFO | train_inner | epoch 001:   2800 / 160368 loss=9.255, ..., num_updates=2800
    | WARNING: overflow detected, setting loss scale to: 0.25

Every JSON value is a string. The step is `num_updates`. Both trainers log the loss
in bits (base 2, `ppl = 2**loss`); midflight stores nats, so loss-like values are
multiplied by ln 2 unless the line's own ppl shows they are already nats, and the
unit is recorded in the segment's config. `clip` is the percentage of the interval's
steps that were clipped (`clipped_pct`), not a threshold. Epoch-summary lines repeat
averages of steps already logged, so they are skipped. Steps (`num_updates`, a loaded
checkpoint's update) follow `logbook.values.step`: anything but an integer in [0, 2**63)
makes the line a counted malformed line.
"""

from __future__ import annotations

import json
import math
import re

from midflight.logbook import values as vals
from midflight.logbook.importers.items import Config, Context, End, Event, Resume, Step

LN2 = math.log(2)
BITS = ("loss", "nll_loss", "valid_loss", "valid_nll_loss", "valid_best_loss")
RENAME = {
    "gnorm": "grad_norm",
    "wps": "tokens_per_s",
    "clip": "clipped_pct",
    "wall": "wall_s",
    "train_wall": "train_wall_s",
    "cuda_gb_allocated": "mem_allocated_gib",
    "cuda_gb_reserved": "mem_reserved_gib",
    "cuda_gb_free": "mem_free_gib",
    "update": "epoch_progress",
    "valid_best": "valid_best_loss",
}
UNIT_BITS = "nats (converted from the log's bits: base-2 loss × ln 2)"
UNIT_NATS = "nats (as logged)"

_PREFIX = re.compile(r"^\s*(?:slurm_procid \d+ : |\[[^\]\s]+\]:\s?|\d+: )")
_STAMP_AT_START = re.compile(r"^\s*\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")
_INNER_TEXT = re.compile(r"epoch\s+(\d+):\s+(\d+)\s*/\s*(\d+)\s+(.*)$")
_PAIR_EQ = re.compile(r"\b([A-Za-z_]\w*+)=([^,\s]++)")  # \b and possessive: linear on a 128 KiB word
_PAIR_SP = re.compile(r"^\s*([A-Za-z_][\w]*)\s+(\S+)\s*$")
_OVERFLOW = re.compile(r"overflow detected, setting loss scale to:\s*(\S+)")
_LOADED = re.compile(r"[Ll]oaded checkpoint (\S+) \(epoch (\d+) @ (\d+) updates\)")
_SCALER = re.compile(r"SCALE_WINDOW:\s*(\d+), loss scale:\s*([\d.eE+-]+)")
_DONE = re.compile(r"done training in ([\d.]+) seconds")
_EPOCH_SUMMARY = re.compile(r"epoch \d+ \| (?!valid on)")


def parse(lines, ctx: Context):
    """Items from the lines of one metaseq or fairseq log (see the module docstring)."""
    for line_no, raw in lines:
        ctx.report.lines += 1
        text = _PREFIX.sub("", raw, count=1)
        t = ctx.clock.find(text[:40]) if _STAMP_AT_START.match(text) else None
        try:
            item = _line(text, line_no, t, ctx)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            ctx.report.bad(ctx.source, line_no, str(exc) or type(exc).__name__, raw)
            continue
        if item is None:
            ctx.report.other_lines += 1
        else:
            yield from item


def _line(text: str, line_no: int, t, ctx: Context):
    brace = text.find("{")
    if brace >= 0 and ("train_inner" in text or "| valid |" in text or text.lstrip().startswith("{")):
        return _json_line(text[brace:], line_no, t, ctx)
    if "| train |" in text and brace >= 0:
        return ()  # epoch summary
    m = _INNER_TEXT.search(text)
    if m and "=" in m.group(4):
        values = {k: v for k, v in _PAIR_EQ.findall(m.group(4))}
        return _step(values, line_no, t, ctx)
    if "valid on" in text and "subset" in text:
        pairs = dict(p for p in (_pair(part) for part in text.split("|")[1:]) if p)
        pairs.pop("epoch", None)
        values = {k if k.startswith("valid_") or k == "num_updates" else f"valid_{k}": v for k, v in pairs.items()}
        return _step(values, line_no, t, ctx, keep=lambda k: k.startswith("valid_"))
    m = _OVERFLOW.search(text)
    if m:
        return (Event("overflow", None, t, {"scale_after": _num(m.group(1))}, line_no),)
    m = _LOADED.search(text)
    if m:
        step = vals.step(m.group(3))
        return (Resume(step, t, line_no, f"loaded checkpoint {m.group(1)} at update {step}"),)
    m = _SCALER.search(text)
    if m:
        scale = _num(m.group(2))
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"loss scale {m.group(2)[:40]} is not a positive number")
        return (Config({"loss_scale_init": scale, "loss_scale_window": vals.step(m.group(1))}, line_no),)
    m = _DONE.search(text)
    if m:
        return (End("completed", t, line_no),)
    if _EPOCH_SUMMARY.search(text):
        return ()  # averages of steps already logged
    return None


def _pair(part: str):
    m = _PAIR_SP.match(part)
    return (m.group(1), m.group(2)) if m else None


def _json_line(blob: str, line_no: int, t, ctx: Context):
    end = blob.rfind("}")
    if end < 0:
        raise ValueError("unterminated JSON progress line")
    rec = json.loads(blob[: end + 1])
    if not isinstance(rec, dict):
        raise ValueError("the JSON progress record is not an object")
    if any(k.startswith("train_") for k in rec) and "loss" not in rec:
        return ()  # epoch summary
    if any(k.startswith("valid_") for k in rec):
        return _step(rec, line_no, t, ctx, keep=lambda k: k.startswith("valid_"))
    return _step(rec, line_no, t, ctx)


def _num(v) -> float:
    if isinstance(v, bool):
        raise ValueError(f"not a number: {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    return float(str(v).strip().rstrip("%"))


def _step(values: dict, line_no: int, t, ctx: Context, keep=None):
    if "num_updates" not in values:
        raise ValueError("progress line without num_updates (the step)")
    step = vals.step(values["num_updates"])
    out: dict[str, float] = {}
    for key, raw in values.items():
        if key == "num_updates" or (keep is not None and not keep(key)):
            continue
        try:
            out[RENAME.get(key, key)] = _num(raw)
        except (ValueError, TypeError, OverflowError):
            continue  # a text field (a name, a list) or an integer beyond a float: not a metric
    for key in ("loss", "valid_loss"):
        if key in values and key not in out:
            raise ValueError(f"{key} is not a number: {values[key]!r}")
    if not out:
        raise ValueError("progress line without any number")
    _to_nats(out, ctx)
    return (Step(step, out, t, line_no),)


def _to_nats(values: dict, ctx: Context) -> None:
    """Convert base-2 losses to nats, unless this line's ppl shows they are nats already."""
    unit = ctx.run_config.get("units", {}).get("loss")
    if unit is None:
        unit = _unit(values)
        ctx.run_config.setdefault("units", {})["loss"] = unit
    if unit == UNIT_BITS:
        for key in BITS:
            if key in values:
                values[key] *= LN2


def _unit(values: dict) -> str:
    ppl = values.get("ppl", values.get("valid_ppl"))
    base = [values[k] for k in ("nll_loss", "loss", "valid_nll_loss", "valid_loss") if k in values]
    if ppl and ppl > 0 and base and all(math.isfinite(b) for b in base):
        ln_ppl = math.log(ppl)
        if any(abs(b * LN2 - ln_ppl) < 0.01 * max(1.0, ln_ppl) for b in base):
            return UNIT_BITS
        if any(abs(b - ln_ppl) < 0.01 * max(1.0, ln_ppl) for b in base):
            return UNIT_NATS
    return UNIT_BITS  # fairseq's and metaseq's criterions log base 2


def looks_like(sample: list[str]) -> tuple[int, str | None]:
    """(how many sample lines are this format's progress lines, metaseq or fairseq)."""
    hits = 0
    meta = False
    for raw in sample:
        text = _PREFIX.sub("", raw, count=1)
        if ("train_inner" in text and "{" in text) or (_INNER_TEXT.search(text) and "num_updates=" in text):
            hits += 1
        if "metaseq" in text or '"actv_norm"' in text or "slurm_procid" in raw:
            meta = True
        if _OVERFLOW.search(text):
            hits += 1
    return hits, ("metaseq" if meta else "fairseq")
