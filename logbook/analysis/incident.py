"""The one incident record every detector returns (per-run divergence, per-device hardware, across ranks).

Why its own module: `divergence` and `stragglers` both build incidents and `divergence.incidents_from`
runs `stragglers`; the record sits below both so neither imports the other's module for it.
`divergence.Incident` stays importable (re-exported there).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Incident:
    kind: str  # loss_spike | grad_norm_spike | nonfinite | loss_scale_collapse | slow_divergence | straggler | ...
    start_step: int
    end_step: int
    peak_value: float
    peak_step: int
    severity: str  # low | medium | high
    classification: str  # transient | recovering | divergent
    context: dict = field(default_factory=dict)  # lr, clip, loss_scale, grad_norm, loss just before start
    metric: str | None = None
    baseline: float | None = None
    detail: dict = field(default_factory=dict)
    detected_step: int | None = None  # the step at which the online detector raised it
    suggested_action: str | None = None
    segment_id: str | None = None
    superseded: bool = False

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else str(v)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return {k: clean(v) for k, v in asdict(self).items()}
