"""Divergence detection: loss and grad-norm spikes, NaN/Inf, loss-scale collapse, slow divergence,
throughput drops and stragglers. Pure functions over plain values; no torch, no UI.

`OnlineDetector` takes one step at a time (O(window) work per point, constant in the run's length).
`detect` is the batch form: it runs the same detector over arrays, so both give the same incidents.
`incidents_from(frames)` finds every incident of a run from its detector inputs (the effective history,
each superseded branch, telemetry), which `logbook.report.incidents` reads from the store.

Spike rule (chosen in benchmarks/bench_divergence.py): on log(value), a point is anomalous when its
robust z-score against the last `window` normal points (median, IQR/1.349) exceeds `z` AND it exceeds
the EWMA (span `ewma_span`) of those points by the factor `ratio`. Anomalous points never enter the
baseline. An incident ends after `settle` consecutive points back within `recover_z`.

Real logs of large runs are sparse (a line every 10-100 steps) and often start mid-run, so two things
adapt (chosen on the tuning split of benchmarks/bench_detection_real.py):
- Short history. With fewer than `min_history` baseline points a noise scale cannot be estimated, so
  from `warmup_points` on the rule uses a prior instead: sigma = log(`short_ratio`) / z, i.e. a point
  is a candidate when it is `short_ratio` times the median of its history (stricter with fewer than
  3 points), and is confirmed at once. Such incidents say `confidence: low` and how many points of
  history they had.
- The logging interval. Step windows (corroboration, recovery, settling, overflow streaks, the
  loss-scale window) are measured in steps but never shorter than a few logging intervals, where the
  interval is the median gap between the last points.
The loss scale is evidence of its own: a fall by `loss_scale_drop` or more within `loss_scale_window`
steps is a `loss_scale_collapse`, and while it lasts a loss rise above `recover_z` (instead of `z`)
is already a confirmed `loss_spike` (detail `evidence: ["loss_scale_collapse"]`).
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from midflight.logbook.analysis.incident import Incident  # noqa: F401 - defined there, re-exported here

CONTEXT_KEYS = ("lr", "clip", "loss_scale", "grad_norm", "loss")


@dataclass
class SpikeRule:
    z: float = 6.0  # robust z-score threshold (in log space when log=True) for a candidate point
    z_alone: float = 10.0  # a candidate above this alarms at once; below it needs corroboration
    ratio: float = 1.1  # and value / EWMA of the baseline must exceed this
    log: bool = True
    min_sigma: float = 1e-3  # floor on the robust sigma (a constant series has IQR 0)
    medium: float = 1.5  # peak / baseline ratio for severity "medium"
    high: float = 3.0  # ... and "high"
    min_points: int = 1  # anomalous points needed before the incident counts
    sign: int = 1  # +1: detect rises; -1: detect drops (throughput)
    short_ratio: float | None = None  # short history: a rise by this factor over the median; None: no alarm


@dataclass
class DivergenceConfig:
    window: int = 128  # rolling baseline window (points)
    min_history: int = 20  # no alarm before this many baseline points
    ewma_span: int = 9  # metaseq's span
    recover_z: float = 3.0  # a point is back to baseline below this robust z
    settle: int = 3  # consecutive baseline points that end an incident
    corroborate_steps: int = 2  # a candidate is confirmed by its own next point staying high, or by the
    # other metric (loss <-> grad norm) being anomalous within this many steps; otherwise it is dropped
    recovery_steps: int = 50  # K: back within K steps of the start -> "transient"
    max_recovering_steps: int = 200  # still not back after this many steps -> "divergent"
    loss: SpikeRule = field(default_factory=lambda: SpikeRule(z=6.0, ratio=1.08, medium=1.3, high=2.0, short_ratio=1.3))
    grad_norm: SpikeRule = field(
        default_factory=lambda: SpikeRule(z=6.0, ratio=2.0, medium=10.0, high=100.0, short_ratio=10.0)
    )
    throughput: SpikeRule = field(
        default_factory=lambda: SpikeRule(z=6.0, ratio=1.15, medium=1.3, high=2.0, min_points=5, sign=-1)
    )
    overflow_streak: int = 3  # consecutive overflow steps that make a loss-scale collapse
    loss_scale_floor: float | None = None  # scale <= floor is "at floor" (events loss_scale_at_floor count too)
    straggler_ratio: float = 1.5  # rank step time / lower median over ranks
    straggler_min_steps: int = 3
    slow_window: int = 500  # slow divergence: least-squares slope of log loss over this many points
    slow_rise: float = 0.05  # rise over the window (log units, ~5 %) that counts as trending up
    slow_t: float = 8.0  # and the slope's t-statistic must exceed this
    silent_after_s: float = 60.0  # a device with no telemetry for this long, while its peers report, is silent
    warmup_points: int = 1  # short history: alarms (rule.short_ratio, confidence "low") from this many points
    interval_points: int = 9  # the logging interval is the median step gap over this many recent gaps
    interval_recovery: int = 5  # "transient" if back within max(recovery_steps, this many intervals)
    interval_max_recovering: int = 20  # "divergent" after max(max_recovering_steps, this many intervals)
    loss_scale_drop: float = 8.0  # a loss-scale fall by this factor (3 halvings) ...
    loss_scale_window: int = 100  # ... within max(this many steps, 2 intervals) is a collapse
    loss_scale_grace_steps: int = 100  # scales logged before this step are the scaler finding its level


def _severity(ratio: float, rule: SpikeRule) -> str:
    return "high" if ratio >= rule.high else "medium" if ratio >= rule.medium else "low"


def _divergent_action(step: int) -> str:
    return (
        f"rewind to the last checkpoint before step {step} (PaLM restarted ~100 steps before a spike) and lower "
        "the LR or skip the next few hundred batches (what the OPT-175B and PaLM teams did)"
    )


class _Open:
    """State of an incident in progress."""

    def __init__(self, kind, metric, step, t, value, base, ctx):
        self.kind, self.metric, self.start, self.ctx = kind, metric, step, ctx
        self.peak_t, self.peak_value, self.peak_step, self.base = t, value, step, base
        self.last_anom, self.calm, self.n_anom, self.post = step, 0, 1, t
        self.detected = step
        self.history, self.evidence, self.interval = 0, [], 1


class _Spike:
    """Rolling robust-z + EWMA-ratio detector for one series."""

    def __init__(self, kind: str, metric: str, rule: SpikeRule, cfg: DivergenceConfig):
        self.kind, self.metric, self.rule, self.cfg = kind, metric, rule, cfg
        self.interval = 1  # steps between logged points (set by OnlineDetector)
        self.alpha = 2.0 / (cfg.ewma_span + 1)
        self.open: _Open | None = None
        self.cand: _Open | None = None  # an anomalous point waiting for corroboration
        self.done: list[Incident] = []
        self._reset()

    def _reset(self):
        self.win: deque = deque()
        self.sorted: list[float] = []
        self.ewma: float | None = None

    def _t(self, v: float) -> float:
        return self.rule.sign * (math.log(max(v, 1e-30)) if self.rule.log else v)

    def _add(self, t: float):
        self.win.append(t)
        insort(self.sorted, t)
        if len(self.win) > self.cfg.window:
            del self.sorted[bisect_left(self.sorted, self.win.popleft())]
        self.ewma = t if self.ewma is None else self.ewma + self.alpha * (t - self.ewma)

    def _stats(self) -> tuple[float, float]:
        s, n = self.sorted, len(self.sorted)
        med = 0.5 * (s[(n - 1) // 2] + s[n // 2])
        if (
            n < self.cfg.min_history and self.rule.short_ratio
        ):  # too few points to estimate the noise: the prior (see module doc)
            return med, math.log(self.rule.short_ratio) / self.rule.z * (1.5 if n < 3 else 1.0)
        return med, max((s[(3 * n) // 4] - s[n // 4]) / 1.349, self.rule.min_sigma)

    def _steps(self, steps: int, intervals: int) -> int:
        return max(steps, intervals * self.interval)

    def _value(self, t: float) -> float:
        t = self.rule.sign * t
        return math.exp(t) if self.rule.log else t

    def update(self, step: int, value: float, ctx: dict, boost: bool = False) -> bool:
        """Feed one point; True when it is normal (usable as baseline by other detectors). boost: other
        evidence (a loss-scale collapse) is present, so a rise above recover_z is enough."""
        if not math.isfinite(value):
            return False
        t = self._t(value)
        if self.cand is not None:
            med, sigma = self._stats()
            if (t - med) / sigma >= self.cfg.recover_z:  # still high on the next point: confirmed
                self.confirm(step)
            elif step - self.cand.start > self._steps(self.cfg.corroborate_steps, 1):
                self.cand = None
        o, cfg = self.open, self.cfg
        if o is not None:
            med, sigma = self._stats()
            if t > o.peak_t:
                o.peak_t, o.peak_value, o.peak_step = t, value, step
            o.post += self.alpha * (t - o.post)
            if (t - med) / sigma < self.cfg.recover_z:
                o.calm += 1
                if o.calm >= self.cfg.settle:
                    late = o.last_anom - o.start > self._recovery()
                    self._close("recovering" if late else "transient", o.last_anom)
                return False
            o.calm, o.last_anom = 0, step
            o.n_anom += 1
            age = step - o.start
            if age >= self._recovery() and o.n_anom >= self.rule.min_points:
                coming_back = (o.post - med) < 0.5 * (o.peak_t - med)
                if not coming_back or age >= self._steps(cfg.max_recovering_steps, cfg.interval_max_recovering):
                    self._close("divergent", step)
                    self._reset()  # the new level becomes the baseline
            return False
        n = len(self.win)
        short = n < cfg.min_history
        if n >= (cfg.warmup_points if self.rule.short_ratio else cfg.min_history):
            med, sigma = self._stats()
            z = (t - med) / sigma
            above = t - self.ewma > math.log(self.rule.ratio) and self.cand is None
            if above and z > (cfg.recover_z if boost else self.rule.z):
                self.cand = _Open(self.kind, self.metric, step, t, value, self._value(med), dict(ctx))
                self.cand.history, self.cand.interval = n, self.interval
                self.cand.evidence = ["loss_scale_collapse"] if boost and z <= self.rule.z else []
                if boost or short or z > self.rule.z_alone:
                    self.confirm(step)
                return False
        self._add(t)
        return True

    def _recovery(self) -> int:
        return self._steps(self.cfg.recovery_steps, self.cfg.interval_recovery)

    def anomalous(self) -> bool:
        return self.cand is not None or self.open is not None

    def confirm(self, step: int):
        self.open, self.cand = self.cand, None
        self.open.detected = step

    def _close(self, classification: str, end: int):
        o, self.open = self.open, None
        if o.n_anom < self.rule.min_points:
            return
        self.done.append(self._incident(o, classification, end))

    def _incident(self, o: _Open, classification: str, end: int) -> Incident:
        ratio = math.exp(o.peak_t - self._t(o.base)) if self.rule.log else 1.0
        sev = "high" if classification == "divergent" else _severity(ratio, self.rule)
        detail = {"ratio_to_baseline": round(ratio, 4)}
        if o.history < self.cfg.min_history:  # a prior, not the series' own noise: say so
            detail.update(confidence="low", history_points=o.history)
        if o.evidence:
            detail["evidence"] = list(o.evidence)
        if o.interval > 1:
            detail["log_interval"] = o.interval
        return Incident(
            kind=o.kind,
            start_step=o.start,
            end_step=end,
            peak_value=o.peak_value,
            peak_step=o.peak_step,
            severity=sev,
            classification=classification,
            context=o.ctx,
            metric=o.metric,
            baseline=o.base,
            detail=detail,
            detected_step=o.detected,
            suggested_action=_divergent_action(o.start) if classification == "divergent" else None,
        )

    def current(self) -> list[Incident]:
        o = self.open
        if o is None or o.n_anom < self.rule.min_points:
            return []
        return [self._incident(o, "recovering", o.last_anom)]


class _Streak:
    """Generic on/off condition per key (non-finite values, overflow streaks, stragglers)."""

    def __init__(self, kind: str, metric: str | None, min_steps: int, cfg: DivergenceConfig, detail: dict, neg=False):
        self.kind, self.metric, self.min_steps, self.cfg, self.detail = kind, metric, min_steps, cfg, detail
        self.neg = neg  # track the minimum instead of the maximum (loss scale)
        self.open: dict | None = None
        self.done: list[Incident] = []
        self.interval = 1  # steps between logged points (set by OnlineDetector)

    def update(self, step: int, on: bool, value: float, ctx: dict, baseline: float | None = None):
        o, settle = self.open, self.cfg.settle * self.interval
        if on:
            if o is None or step - o["last"] > settle:
                if o is not None:
                    self._close()
                o = self.open = {"start": step, "n": 0, "peak": value, "peak_step": step, "ctx": dict(ctx)}
                o["base"] = baseline
            o["n"], o["last"] = o["n"] + 1, step
            if o["n"] == self.min_steps:
                o["detected"] = step
            if _gt(value, o["peak"]):
                o["peak"], o["peak_step"] = value, step
        elif o is not None and step - o["last"] >= settle:
            self._close()

    def _incident(self, o: dict, classification: str) -> Incident:
        dur = o["last"] - o["start"]
        if classification != "recovering" and dur >= max(
            self.cfg.recovery_steps, self.cfg.interval_recovery * self.interval
        ):
            classification = "divergent"
        sev = "high" if classification == "divergent" or self.kind == "nonfinite" else "medium"
        if self.kind == "straggler" and classification != "divergent":
            sev = "medium" if dur >= 10 else "low"
        action = _divergent_action(o["start"]) if classification == "divergent" and self.kind != "straggler" else None
        if classification == "divergent" and self.kind == "straggler":
            action = f"rank {self.detail.get('rank')} is persistently slow: drain or replace its node"
        return Incident(
            kind=self.kind,
            start_step=o["start"],
            end_step=o["last"],
            peak_value=-o["peak"] if self.neg else o["peak"],
            peak_step=o["peak_step"],
            severity=sev,
            classification=classification,
            context=o["ctx"],
            metric=self.metric,
            baseline=o["base"],
            detail={
                **self.detail,
                "steps": o["n"],
                **({"reasons": sorted(o["reasons"])} if "reasons" in o else {}),
                **({"fall": o["fall"]} if "fall" in o else {}),
            },
            detected_step=o["detected"],
            suggested_action=action,
        )

    def _close(self):
        o, self.open = self.open, None
        if o["n"] >= self.min_steps:
            self.done.append(self._incident(o, "transient"))

    def current(self) -> list[Incident]:
        o = self.open
        return [self._incident(o, "recovering")] if o is not None and o["n"] >= self.min_steps else []


def _gt(a: float, b: float) -> bool:
    if math.isnan(a):
        return False
    return math.isnan(b) or a > b


class _Trend:
    """Slow divergence: O(1) rolling least-squares slope of log loss."""

    def __init__(self, cfg: DivergenceConfig):
        self.cfg = cfg
        self.streak = _Streak("slow_divergence", "loss", 1, cfg, {})
        self.reset()

    def reset(self):
        self.pts: deque = deque()
        self.sx = self.sy = self.sxx = self.sxy = self.syy = 0.0
        self.x0: int | None = None

    def _acc(self, x: float, y: float, s: int):
        self.sx += s * x
        self.sy += s * y
        self.sxx += s * x * x
        self.sxy += s * x * y
        self.syy += s * y * y

    def update(self, step: int, value: float | None, ctx: dict):
        on, rise = False, 0.0
        if value is not None and math.isfinite(value) and value > 0:
            self.x0 = step if self.x0 is None else self.x0
            x, y = float(step - self.x0), math.log(value)
            self.pts.append((x, y))
            self._acc(x, y, 1)
            if len(self.pts) > self.cfg.slow_window:
                self._acc(*self.pts.popleft(), -1)
            n = len(self.pts)
            if n >= self.cfg.slow_window:
                vx = self.sxx - self.sx * self.sx / n
                cxy = self.sxy - self.sx * self.sy / n
                vy = self.syy - self.sy * self.sy / n
                slope = cxy / vx if vx > 0 else 0.0
                resid = max(vy - slope * cxy, 1e-18) / max(n - 2, 1)
                t = slope / math.sqrt(resid / vx) if vx > 0 else 0.0
                rise = slope * (self.pts[-1][0] - self.pts[0][0])
                on = rise > self.cfg.slow_rise and t > self.cfg.slow_t
        self.streak.update(step, on, rise, ctx)


class OnlineDetector:
    """Feed steps in order with `update`; `incidents()` returns closed and in-progress incidents."""

    def __init__(self, config: DivergenceConfig | None = None, *, segment_id: str | None = None, superseded=False):
        cfg = self.config = config or DivergenceConfig()
        self.segment_id, self.superseded = segment_id, superseded
        self.loss = _Spike("loss_spike", "loss", cfg.loss, cfg)
        self.grad = _Spike("grad_norm_spike", "grad_norm", cfg.grad_norm, cfg)
        self.tput = _Spike("throughput_drop", "tokens_per_s", cfg.throughput, cfg)
        self.nonfinite = {m: _Streak("nonfinite", m, 1, cfg, {}) for m in ("loss", "grad_norm")}
        self.scale = _Streak("loss_scale_collapse", "loss_scale", 1, cfg, {}, neg=True)
        self.stragglers: dict[int, _Streak] = {}
        self.trend = _Trend(cfg)
        self.overflow_run: list[int] = []
        self.scales: deque = deque()  # (step, loss scale) of the last loss_scale_window steps
        self.last_scale: float | None = None
        self.last_fall: int | None = None  # the last step at which the loss scale was collapsing
        self.gaps: deque = deque(maxlen=cfg.interval_points)
        self.interval = 1
        self.ctx: dict = {}
        self.last_step: int | None = None

    def update(
        self,
        step: int,
        values: Mapping[str, float] | None = None,
        *,
        step_times: Mapping[int, float] | Sequence[float] | None = None,
        overflow: bool | int = False,
        at_floor: bool = False,
    ) -> None:
        """One step: metric values (loss, grad_norm, loss_scale, lr, clip, tokens_per_s), per-rank step
        times, whether the step overflowed (or how many overflows a sparse log counted at this point)
        and whether the loss scale sat at its floor. Steps must not go back."""
        if self.last_step is not None and step < self.last_step:
            raise ValueError(f"step {step} after {self.last_step}: feed each branch in step order")
        if self.last_step is not None and step > self.last_step:
            gap = step - self.last_step
            if gap != self.interval or len(set(self.gaps)) > 1:  # a steady log skips the median
                self.gaps.append(gap)
                interval = sorted(self.gaps)[len(self.gaps) // 2]
                if interval != self.interval:
                    self.interval = interval
                    for det in self._dets():
                        det.interval = interval
            else:
                self.gaps.append(gap)
        self.last_step = step
        cfg, values = self.config, values or {}
        ctx = self.ctx
        collapse = self._scale_fall(step, _f(values.get("loss_scale")))  # falling now, by this much
        if collapse is not None:
            self.last_fall = step
        # a loss rise with (or just after) the fall is corroborated by it
        boost = self.last_fall is not None and step - self.last_fall <= max(cfg.corroborate_steps, self.interval)
        loss_ok = True
        for name, det in (("loss", self.loss), ("grad_norm", self.grad)):
            v = _f(values.get(name))
            if v is None:
                continue
            # a non-finite grad norm on an overflow step is the loss scaler doing its job
            expected = bool(overflow) and name == "grad_norm"
            self.nonfinite[name].update(step, not math.isfinite(v) and not expected, v, ctx)
            ok = det.update(step, v, ctx, boost=boost and name == "loss")
            loss_ok = ok if name == "loss" else loss_ok
        for a, b in ((self.loss, self.grad), (self.grad, self.loss)):
            if a.cand is not None and b.anomalous():
                a.confirm(step)
        if (v := _f(values.get("tokens_per_s"))) is not None and v > 0:
            self.tput.update(step, v, ctx)
        if loss_ok and self.loss.open is None:
            self.trend.update(step, _f(values.get("loss")), ctx)
        if self.loss.done and self.loss.done[-1].classification == "divergent" and self.loss.done[-1].end_step == step:
            self.trend.reset()
        # loss-scale collapse: an overflow streak, or the scale at its floor
        scale = _f(values.get("loss_scale"))
        floor = cfg.loss_scale_floor
        at_floor = at_floor or (floor is not None and scale is not None and scale <= floor)
        if overflow:
            if not self.overflow_run or step - self.overflow_run[-1][0] > self.interval:
                self.overflow_run = []
            # a sparse log counts the overflows between its points: they all end at this step
            self.overflow_run.append((step, int(overflow)))
        else:
            self.overflow_run = []
        streak = sum(n for _, n in self.overflow_run) >= cfg.overflow_streak
        new_streak = streak and self.scale.open is None
        if new_streak:
            for s, _ in self.overflow_run[:-1]:  # the streak started at its first overflow
                self.scale.update(s, True, math.nan, ctx)
        on = streak or at_floor or collapse is not None
        self.scale.update(step, on, -(scale if scale is not None else math.nan), ctx)
        if new_streak:
            self.scale.open["detected"] = step
        if self.scale.open is not None:
            reasons = {"overflow_streak"} if streak else set()
            reasons |= {"at_floor"} if at_floor else set()
            reasons |= {"scale_drop"} if collapse is not None else set()
            self.scale.open.setdefault("reasons", set()).update(reasons)
            if collapse is not None:
                self.scale.open["fall"] = max(self.scale.open.get("fall", 0.0), round(collapse, 4))
        # stragglers: a rank much slower than the lower median of all ranks
        if step_times is not None:
            times = dict(step_times) if isinstance(step_times, Mapping) else dict(enumerate(step_times))
            times = {r: t for r, t in times.items() if t is not None and math.isfinite(t) and t > 0}
            if len(times) >= 2:
                ref = sorted(times.values())[(len(times) - 1) // 2]
                for r, t in times.items():
                    st = self.stragglers.get(r)
                    if st is None:
                        st = self.stragglers[r] = _Streak("straggler", "step_time_s", cfg.straggler_min_steps, cfg, {})
                        st.detail = {"rank": r}
                    st.interval = self.interval
                    st.update(step, t >= cfg.straggler_ratio * ref, t, ctx, baseline=ref)
        for k in CONTEXT_KEYS:
            v = _f(values.get(k))
            if v is not None and math.isfinite(v):
                ctx[k] = v

    def _scale_fall(self, step: int, scale: float | None) -> float | None:
        """At a point where the loss scale went down: its fall (highest in the window / now) when that
        is a collapse, else None. Only scales from loss_scale_grace_steps on count: before, the scaler
        is still finding its level. A scale that stays low after the fall is no longer collapsing."""
        cfg, win = self.config, self.scales
        span = max(cfg.loss_scale_window, 2 * self.interval)
        while win and step - win[0][0] > span:
            win.popleft()
        if scale is None or not math.isfinite(scale) or scale <= 0 or step < cfg.loss_scale_grace_steps:
            return None
        prev, self.last_scale = self.last_scale, scale
        while win and win[-1][1] <= scale:  # a monotone deque: the front holds the window's maximum
            win.pop()
        win.append((step, scale))
        fall = win[0][1] / scale
        return fall if fall >= cfg.loss_scale_drop and prev is not None and scale < prev else None

    def _dets(self):
        return [self.loss, self.grad, self.tput, *self.nonfinite.values(), self.scale, self.trend.streak]

    def incidents(self) -> list[Incident]:
        out = []
        for det in [*self._dets(), *self.stragglers.values()]:
            out += [*det.done, *det.current()]
        for inc in out:
            inc.segment_id, inc.superseded = self.segment_id, self.superseded
        return sorted(out, key=lambda i: (i.start_step, i.kind, str(i.metric), i.detail.get("rank", -1)))


def _f(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class TelemetryDetector:
    """Hardware trouble from device telemetry, sample by sample in wall-time order: throttle reasons
    non-zero, ECC error count increasing, and a device that stops reporting while the other devices of
    its segment keep reporting. Devices are keyed by (segment, host, device)."""

    ACTIONS = {
        "throttling": "check cooling and power capping on this node",
        "ecc_errors": "ECC errors are rising: drain the node and have the GPU checked",
        "device_silent": "this device stopped reporting: check the node (hung GPU, lost host)",
    }

    def __init__(self, config: DivergenceConfig | None = None, *, silence: bool = True):
        """silence=False: the caller feeds only some samples (e.g. the changes of throttle and ECC series) and
        judges silence elsewhere (analysis.stragglers on a fleet), so gaps between samples mean nothing."""
        self.cfg = config or DivergenceConfig()
        self.silence = silence
        self.alive: dict = {}  # per segment: {device key: last seen}, oldest first (an insertion-ordered dict)
        self.quiet: dict = {}  # per segment: {device key: last seen} of the devices found silent
        self.ecc: dict[tuple, float] = {}
        self.open: dict[tuple, Incident] = {}
        self.done: list[Incident] = []
        self.step = 0

    def update(self, wall_time: float, step, key: tuple, name: str, value: float) -> None:
        self.step = int(step) if step is not None and step == step else self.step
        if self.silence:
            self._liveness(wall_time, key)
        if name == "throttle_reasons":
            self._set("throttling", key, _truthy(value), value)
        elif name == "ecc_errors" and value == value:
            before, self.ecc[key] = self.ecc.get(key), value
            self._set("ecc_errors", key, before is not None and value > before, value)

    def _liveness(self, wall_time: float, key: tuple) -> None:
        """A sample from `key`: it is alive; if it was alive a moment ago too, its segment's peers that have
        not reported for silent_after_s are silent. Samples come in wall-time order, so the peers' last-seen
        times are kept oldest first and only the stale front is looked at: linear in samples, where asking
        every peer at every sample was quadratic (185 s for 200 steps of 992 GPUs)."""
        alive, quiet = self.alive.setdefault(key[0], {}), self.quiet.setdefault(key[0], {})
        prev = alive.pop(key, None)
        prev = quiet.pop(key, None) if prev is None else prev
        alive[key] = wall_time
        self._set("device_silent", key, False, 0.0)
        if prev is None or wall_time - prev > self.cfg.silent_after_s:
            return
        while alive:
            other, t = next(iter(alive.items()))
            if wall_time - t <= self.cfg.silent_after_s:
                break
            del alive[other]
            quiet[other] = t
        for other, t in quiet.items():
            self._set("device_silent", other, True, wall_time - t)

    def _set(self, kind: str, key: tuple, on: bool, value: float):
        inc = self.open.get((kind, key))
        if on and inc is None:
            sev = "medium" if kind == "throttling" else "high"
            detail = {"segment": key[0], "host": key[1], "device": key[2]}
            inc = Incident(kind, self.step, self.step, value, self.step, sev, "recovering", detail=detail)
            inc.segment_id, inc.detected_step, inc.suggested_action = key[0], self.step, self.ACTIONS[kind]
            self.open[(kind, key)] = inc
        elif on:
            inc.end_step = self.step
            if _gt(value, inc.peak_value):
                inc.peak_value, inc.peak_step = value, self.step
        elif inc is not None:
            inc.classification = "transient"
            self.done.append(self.open.pop((kind, key)))

    def incidents(self) -> list[Incident]:
        return sorted([*self.done, *self.open.values()], key=lambda i: (i.start_step, i.kind, str(i.detail)))


# ----------------------------------------------------------------- batch
STEP_TIME_PREFIX = "step_time_s/"  # batch column per rank: step_time_s/0, step_time_s/1, ...


def detect(
    frame, config: DivergenceConfig | None = None, *, segment_id: str | None = None, superseded: bool = False
) -> list[Incident]:
    """Batch detection over a table with a `step` column (a DataFrame or a dict of equal-length arrays).

    Optional columns: loss, grad_norm, loss_scale, lr, clip, tokens_per_s, overflow (a flag or a count),
    at_floor, events_only (a row that carries only overflow / at_floor) and step_time_s/<rank>.
    Runs `OnlineDetector` row by row, so it gives exactly the online incidents."""
    det = OnlineDetector(config, segment_id=segment_id, superseded=superseded)
    feed(det, frame)
    return det.incidents()


def feed(det: OnlineDetector, frame) -> None:
    cols = {k: list(frame[k]) for k in (frame.columns if hasattr(frame, "columns") else frame.keys())}
    steps = cols.pop("step")
    overflow, at_floor = cols.pop("overflow", None), cols.pop("at_floor", None)
    events_only = cols.pop("events_only", None)  # a row for events at a step with no metric: no values
    ranks = {int(k[len(STEP_TIME_PREFIX) :]): v for k, v in cols.items() if k.startswith(STEP_TIME_PREFIX)}
    order = sorted(range(len(steps)), key=lambda i: steps[i])
    for i in order:
        bare = events_only is not None and _truthy(events_only[i])
        values = {} if bare else {k: v[i] for k, v in cols.items() if not k.startswith(STEP_TIME_PREFIX)}
        det.update(
            int(steps[i]),
            values,
            step_times={r: v[i] for r, v in ranks.items()} if ranks and not bare else None,
            overflow=_count(overflow[i]) if overflow is not None else 0,
            at_floor=at_floor is not None and _truthy(at_floor[i]),
        )


def _truthy(v) -> bool:
    return v is not None and v == v and bool(v)


def _count(v) -> int:
    """An overflow flag (bool) or count (a sparse log's overflows since its last point) as a count."""
    if not _truthy(v):
        return 0
    try:
        return max(int(v), 1) if math.isfinite(float(v)) else 1
    except (TypeError, ValueError):
        return 1


def hardware_from(telemetry, config: DivergenceConfig | None = None, *, silence: bool = True) -> list[Incident]:
    """Throttling, ECC errors and (silence=True) silent devices from a telemetry_frame()."""
    det = TelemetryDetector(config, silence=silence)
    for r in telemetry.itertuples():
        det.update(r.wall_time, r.step, (r.segment_id, r.host, r.device), r.name, r.value)
    return det.incidents()


def incidents_from(frames: dict, config: DivergenceConfig | None = None, *, keep: dict | None = None) -> list[Incident]:
    """Every incident of a run from its inputs(): detection on the effective history, then on each
    superseded branch (fed with the effective history before the branch, so it has a baseline), marked
    superseded; then hardware incidents (superseded when their segment is not on the effective path).
    keep: a dict that receives the effective history's fed OnlineDetector ("detector", None without
    history) and the superseded incidents ("superseded"), so a caller can feed the run's new steps to the
    same detector later (report.incidents.LiveIncidents) instead of detecting over the whole history."""
    eff, sup = frames["effective"], frames["superseded"]
    out: list[Incident] = []
    det = None
    if len(eff):
        owner = dict(zip(eff["step"], eff["segment_id"]))
        det = OnlineDetector(config)
        feed(det, eff.drop(columns=["segment_id"]))
        # the kept detector goes on being fed: what is returned now must not change with it
        for inc in copy.deepcopy(det.incidents()) if keep is not None else det.incidents():
            inc.segment_id = owner.get(inc.start_step)
            out.append(inc)
    branches = superseded_incidents(eff, sup, config)
    if keep is not None:
        keep.update(detector=det, superseded=copy.deepcopy(branches))
    on_path = set(eff["segment_id"]) if len(eff) else set()
    return with_device_incidents(out + branches, frames, on_path, config)


def superseded_incidents(eff, sup, config: DivergenceConfig | None = None) -> list[Incident]:
    """Each superseded branch's incidents, detected with the effective history before it as a baseline."""
    import pandas as pd

    out = []
    for seg, branch in sup.groupby("segment_id", sort=True) if len(sup) else ():
        first = int(branch["step"].min())
        prefix = eff[eff["step"] < first] if len(eff) else eff
        both = pd.concat([prefix, branch], ignore_index=True).drop(columns=["segment_id"])
        for inc in detect(both, config, segment_id=seg, superseded=True):
            if inc.start_step >= first:
                out.append(inc)
    return out


def with_device_incidents(out: list[Incident], frames: dict, on_path: set, config=None) -> list[Incident]:
    """`out` plus the hardware incidents of frames["telemetry"] and the across-rank ones of frames["fleet"]
    (superseded when their segment is not in on_path), sorted as incidents_from returns them."""
    for inc in hardware_from(frames["telemetry"], config, silence=not frames.get("fleet", {}).get("presence")):
        inc.superseded = inc.segment_id not in on_path
        out.append(inc)
    if frames.get("fleet"):  # across ranks (analysis.stragglers); one incident per (kind, rank/device)
        from midflight.logbook.analysis.stragglers import fleet_incidents

        def key(i):
            d = i.detail
            return (i.kind, d.get("host"), d.get("device")) if "device" in d else (i.kind, d.get("rank"))

        seen = {key(i): i for i in out}
        for inc in fleet_incidents(frames["fleet"]):
            if key(inc) in seen:  # already found (the per-device detector): add what it lacks, e.g. the rank
                for k, v in inc.detail.items():
                    seen[key(inc)].detail.setdefault(k, v)
            else:
                out.append(inc)
    return sorted(out, key=lambda i: (i.superseded, i.start_step, i.kind))
