"""How far a run is, and how long it has left: the planned length from its config, and an ETA.

The planned length is the `steps` of the newest segment's config (midflight's trainer writes it;
an imported run has none, and then there is no plan and no ETA). The ETA multiplies the steps left
by the median step time of the recent steps: a median, so one checkpoint or evaluation stall does
not swing it.
"""

from __future__ import annotations

import json
import math

import numpy as np

ETA_WINDOW = 100  # steps whose median step time drives the ETA


def planned_steps(config) -> int | None:
    """The run's planned number of steps from a segment's config (a JSON text or a dict), else None."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return None
    steps = config.get("steps") if isinstance(config, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def eta_s(planned: int | None, step: int | None, recent_step_times) -> float | None:
    """Seconds until `planned` steps at the median of `recent_step_times` (None without a plan, a step or
    a finite step time; 0 when the plan is reached)."""
    if planned is None or step is None:
        return None
    times = np.asarray(recent_step_times, dtype="float64")
    times = times[np.isfinite(times) & (times > 0)]
    if not len(times):
        return None
    eta = (planned - step) * float(np.median(times))
    return max(0.0, eta) if math.isfinite(eta) else None
