"""Wall times estimated from iteration times, for logs that print no clock.

A Megatron log says `elapsed time per iteration (ms)` on every line but not when the
line was written, so an imported run would have no wall time: no duration, no wasted
hours, no energy. Where the first progress line of a source has no timestamp but a
per-iteration time (`step_time_s`), wall times are made up by cumulating

    iteration time x iterations since the previous logged line

(Megatron's figure is the average over that logging interval). The clock starts at 0
(1970-01-01 UTC: the log does not say when the run began) and runs on across the
sources of a run and across restarts, so launches stay in order; iterations between a
restart's checkpoint and its first logged line count when the log names the checkpoint
step (a `Resume`), else the first line counts one iteration. Events and ends get the
clock's current time. The run's config then says so (`records.WALL_TIME_SOURCE`), and
every figure made from these times is labelled estimated downstream.

A value that would make the clock absurd (an infinite or negative iteration time, a
step jump that overflows it) stops the estimate for the rest of the source, with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from midflight.logbook.importers.items import Context, End, Event, Resume, Step
from midflight.logbook.record import records

MAX_ITERATION_S = 1e6
MAX_CLOCK = 1e11  # seconds: beyond year 5000 the estimate is not a wall time any more
NOTE = (
    "wall times estimated from iteration times (elapsed time per iteration x iterations between log lines): "
    "the log has no timestamps, so the clock starts at 1970-01-01 00:00 UTC"
)


@dataclass
class Clock:
    """The running estimate, shared by the sources of one run."""

    now: float = 0.0
    last_step: int | None = None
    per_iteration: float | None = None
    used: bool = False


def estimate(items, clock: Clock, ctx: Context):
    """`items` of one source, with estimated times where the source has no clock (see the module docstring)."""
    active: bool | None = None
    anchor: int | None = None  # the checkpoint step a Resume named: the next line counts from it
    for item in items:
        if isinstance(item, Step):
            if active is None:
                active = item.t is None
            if active and item.t is None:
                item.t = _tick(item, clock, anchor, ctx)
                if item.t is None:
                    active = False
                anchor = None
            if item.step is not None:
                clock.last_step = item.step
        elif isinstance(item, Resume):
            anchor = item.step
        elif isinstance(item, (Event, End)) and active and item.t is None and clock.used:
            item.t = clock.now
        yield item


def _tick(item: Step, clock: Clock, anchor: int | None, ctx: Context) -> float | None:
    per = item.values.get("step_time_s")
    if per is not None and math.isfinite(per) and 0 < per < MAX_ITERATION_S:
        clock.per_iteration = per
    if clock.per_iteration is None:
        return None  # no iteration time yet: nothing to estimate from
    prev = anchor if anchor is not None else clock.last_step
    if prev is None or item.step < prev:
        n = 1  # the first line of the run, or a restart whose checkpoint the log does not name
    else:
        n = item.step - prev
    now = clock.now + n * clock.per_iteration
    if not (math.isfinite(now) and now < MAX_CLOCK):
        ctx.report.notes.append(
            f"{ctx.source}: stopped estimating wall times at line {item.line} (step {item.step}): "
            "the clock would overflow"
        )
        return None
    clock.now = now
    if not clock.used:
        clock.used = True
        ctx.run_config[records.WALL_TIME_SOURCE] = records.WALL_TIME_ESTIMATED
        ctx.report.notes.append(NOTE)
    return now
