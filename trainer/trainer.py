"""The training loop: one flat loop with commented phases, in nanoGPT's order.

Per step: interventions at the boundary -> LR -> batch -> forward/backward -> clip ->
optimizer step (through the loss scaler) -> faults -> metrics -> checkpoint.
A checkpoint that fails (a full disk) is recorded as `checkpoint_failed` and training goes on.

Sync points, on purpose and commented where they happen: one host read per step of
(grad norm, loss, activation norm) together, which the loop needs anyway to skip
non-finite updates and to count NaN losses (under fp16 the scaler syncs at that point
regardless); one small all-reduce per log step for the cross-rank mean loss; and a
broadcast of the control channel every `control.poll_every` steps when there are
several ranks. Recording itself never syncs: `run.log` only enqueues.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from midflight.logbook.record import interventions

from . import parallelize
from .checkpoint import Checkpointer, CheckpointFailed
from .config import TrainConfig, set_value
from .faults import Faults, InjectedCrash
from .precision import Precision, scale_events
from .schedule import lr_at
from .step_clock import StepClock


def set_knob(cfg: TrainConfig, name: str, value) -> str:
    """Set the config key that knob `name` of the intervention vocabulary names; returns the key.

    The knob is looked up in `logbook.record.interventions.VOCABULARY` now, not at import, so the table
    is the one place that says what a knob changes.
    """
    if name not in interventions.VOCABULARY:
        raise ValueError(f"unknown knob {name!r}; one of: {', '.join(interventions.VOCABULARY)}")
    key = interventions.config_key(name)
    if key is None:
        raise ValueError(f"{name} sets no config key (the trainer carries it out itself)")
    set_value(cfg, key, value)
    return key


class NonFiniteLoss(RuntimeError):
    """The loss stayed NaN/Inf for `faults.nan_tolerance` steps: crash, so the job restarts from a checkpoint."""


@dataclass
class Outcome:
    """How a segment ended: completed | stopped | rewound (to `resume_step`, with `changes`)."""

    reason: str
    resume_step: int | None = None
    changes: dict = field(default_factory=dict)
    why: str = ""


@dataclass
class Parts:
    """Everything the loop works with, built by trainer/train.py and passed in (so tests can swap parts)."""

    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    data: object  # trainer.data.TokenData
    checkpointer: Checkpointer
    faults: Faults
    run: object  # logbook Run
    device: torch.device
    rank: int
    world: int
    flops_per_token: float
    peak_flops: float  # per device; 0 = unknown (no MFU)


class Trainer:
    def __init__(
        self,
        parts: Parts,
        *,
        step: int = 0,
        batch_index: int = 0,
        tokens: int | None = None,
        changed: dict | None = None,
    ):
        self.p = parts
        self.cfg = parts.cfg
        self.step = step  # optimizer steps done
        self.batch_index = batch_index  # batches consumed (a skip moves it without a step)
        self.changed = dict(changed or {})  # knobs set by interventions: {config key: value}, kept in checkpoints
        self.tokens = tokens if tokens is not None else step * parts.data.tokens_per_batch(parts.world)
        self.saved_step: int | None = None
        self.bad_steps = 0
        self.main = parts.rank == 0  # what a rank records is decided here, once:
        # events every rank sees alike (checkpoints, loss scale, interventions) are recorded by rank 0 alone;
        # what differs by rank (a crash, a straggler, a NaN loss) goes through run.event on the rank it happens to
        self.event = parts.run.event if self.main else _ignore
        self.channel = interventions.Channel(self.cfg.run_dir) if self.main else None
        self.poll_every = self.cfg.control.poll_every or (1 if parts.world == 1 else 10)
        self.handled: set = set()  # request ids already answered by this segment
        self.clock = StepClock(parts.device)  # compute_s: this rank's own work, apart from waiting for peers

    # ------------------------------------------------------------------ the loop
    def train(self) -> Outcome:
        cfg, p, run = self.cfg, self.p, self.p.run
        model, opt, prec = p.model, p.optimizer, p.precision
        tokens_per_step = p.data.tokens_per_batch(p.world)
        while self.step < cfg.steps:
            s = self.step + 1
            # -- mid-flight interventions, at the step boundary
            outcome = self._control(s)
            if outcome is not None:
                return outcome
            t0 = time.perf_counter()
            clock = self.clock
            clock.mark("start")

            spike = p.faults.active("spike", s)
            if spike:
                p.faults.fire(spike, s)
                self.event("fault_injected", step=s, fault="spike", lr_factor=p.faults.spike_lr_factor)

            poison = p.faults.poisoned(self.batch_index)  # diverge: this batch is bad data, every time it is read
            if poison and p.faults.surge(poison, s):
                self.event("fault_injected", step=s, fault="diverge", lr_factor=p.faults.spike_lr_factor)

            # -- learning rate for this step
            lr = self._lr(s) * p.faults.lr_factor(s)
            for group in opt.param_groups:
                group["lr"] = lr

            # -- batch (a pure function of the batch index: resumes and skips are exact)
            x, y = p.data.batch(self.batch_index, p.rank, p.world)
            self.batch_index += 1
            if spike or poison:  # a corrupted batch: uniformly random tokens, nothing like the text the model has seen
                gen = torch.Generator().manual_seed(s if spike else 1_000_003 + self.batch_index)
                x = torch.randint(0, int(y.max()) + 1, x.shape, generator=gen)
                y = torch.randint(0, int(y.max()) + 1, y.shape, generator=gen)
            x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)

            # -- forward / backward
            with prec.autocast():
                _, loss, actv_norm = model(x, y)
            to_backward = loss
            overflow = p.faults.active("overflow", s)
            if overflow:
                p.faults.fire(overflow, s)
                to_backward = loss * float("inf")  # the gradients overflow for real
                self.event("fault_injected", step=s, fault="overflow")
            clock.mark("backward")
            prec.scale(to_backward).backward()

            # -- clip
            prec.unscale(opt)
            grad_norm = parallelize.clip_grad_norm(model, cfg.optim.clip)
            # Sync point: one host read for all three. The loop needs it to skip non-finite
            # updates and count NaN losses; under fp16 the scaler syncs here anyway.
            gnorm, loss_val, actv = torch.stack([grad_norm.float(), loss.detach().float(), actv_norm]).tolist()
            clock.mark("synced")

            # -- optimizer step (the scaler skips it on overflow)
            scale_before = scale_after = 1.0
            if prec.scaler is not None:
                scale_before, scale_after, overflowed = prec.step(opt)
                for kind, fields in scale_events(scale_before, scale_after, prec.floor, overflowed):
                    self.event(kind, step=s, **fields)
            elif math.isfinite(gnorm):
                opt.step()
            else:
                self.event("nonfinite_grad_skipped", step=s, grad_norm=gnorm, loss=loss_val)
            opt.zero_grad(set_to_none=True)

            # -- faults that act after the update
            self._faults_after(s)

            # -- metrics
            clock.mark("end")
            dt = time.perf_counter() - t0
            self.step, self.tokens = s, self.tokens + tokens_per_step
            if s % cfg.log.every == 0:
                self._log(s, dt, lr, loss_val, gnorm, actv, scale_after, tokens_per_step)
            if cfg.log.enabled and s % cfg.log.param_norm_every == 0:
                self._log_weights_and_memory(s)

            # -- a loss that stays NaN/Inf crashes the run, so it restarts from a good checkpoint
            if math.isfinite(loss_val):
                self.bad_steps = 0
            else:
                self.bad_steps += 1
                run.event("nonfinite_loss", step=s, loss=loss_val, grad_norm=gnorm, consecutive=self.bad_steps)
                if self.bad_steps >= cfg.faults.nan_tolerance:
                    raise NonFiniteLoss(
                        f"loss was non-finite for {self.bad_steps} consecutive steps (faults.nan_tolerance); "
                        f"last at step {s}"
                    )

            # -- checkpoint
            if cfg.checkpoint.every and s % cfg.checkpoint.every == 0:
                self.save(s, why="periodic")
        if cfg.checkpoint.at_end and self.saved_step != self.step:
            self.save(self.step, why="end of run")
        return Outcome("completed")

    def _lr(self, s: int) -> float:
        o = self.cfg.optim
        return lr_at(
            s,
            peak=o.lr,
            warmup=o.warmup_steps,
            decay=o.decay_steps or max(1, self.cfg.steps - o.warmup_steps),
            min_ratio=o.min_lr_ratio,
            multiplier=o.lr_multiplier,
        )

    def _log(self, s, dt, lr, loss_val, gnorm, actv, scale, tokens_per_step) -> None:
        run, p = self.p.run, self.p
        if p.world > 1 and self.cfg.log.enabled:
            # Sync point (log steps only): the cross-rank mean loss and activation norm, in one all-reduce.
            t_sync = time.perf_counter()
            both = torch.tensor([loss_val, actv], device=p.device)
            dist.all_reduce(both)
            loss_val, actv = (both / p.world).tolist()
            # a fast rank waits here for the slowest: the step ends for every rank at the same moment, so
            # step_time_s (which includes this wait) is about equal across ranks, as in any synchronous run
            dt += time.perf_counter() - t_sync
        # per rank: step_time_s is about equal on every rank (all wait for the slowest); compute_s and
        # wait_s tell them apart (trainer.step_clock)
        compute = self.clock.compute_s()
        own = {} if compute is None else {"compute_s": compute, "wait_s": max(0.0, dt - compute)}
        if not self.main:
            run.log({"step_time_s": dt, **own}, step=s)
            return
        tps = tokens_per_step / dt
        metrics = {
            "loss": loss_val,
            "ppl": math.exp(min(loss_val, 700.0)) if math.isfinite(loss_val) else loss_val,
            "grad_norm": gnorm,
            "clipped": float(gnorm > self.cfg.optim.clip),
            "clip": self.cfg.optim.clip,
            "lr": lr,
            "tokens": self.tokens,
            "tokens_per_s": tps,
            "step_time_s": dt,
            "actv_norm": actv,
            **own,
        }
        if self.p.precision.scaler is not None:
            metrics["loss_scale"] = scale
        if p.peak_flops:
            metrics["mfu"] = p.flops_per_token * tps / (p.peak_flops * p.world)
        run.log(metrics, step=s)
        every = self.cfg.log.print_every
        if every and s % every == 0:
            scale = f" | scale {scale:g}" if "loss_scale" in metrics else ""
            print(
                f"step {s}/{self.cfg.steps} | loss {loss_val:.4f} | lr {lr:.3e} | grad norm {gnorm:.3f}{scale} | "
                f"{tps:,.0f} tok/s | {dt * 1e3:.1f} ms",
                flush=True,
            )

    def _log_weights_and_memory(self, s: int) -> None:
        pnorm = parallelize.param_norm(self.p.model).item()  # a collective when sharded: every rank calls it
        if self.p.device.type == "cuda":
            mem = {
                "mem_allocated_gib": torch.cuda.memory_allocated(self.p.device) / 2**30,
                "mem_reserved_gib": torch.cuda.memory_reserved(self.p.device) / 2**30,
            }
        else:
            mem = {"mem_rss_gib": _rss_gib()}
        self.p.run.log({"param_norm": pnorm, **mem} if self.main else mem, step=s)

    def _faults_after(self, s: int) -> None:
        p = self.p
        nan = p.faults.active("nan", s)
        if nan:
            p.faults.fire(nan, s)
            with torch.no_grad():  # poisoned weights: every later loss is NaN until a restart
                parallelize._local(next(iter(p.model.parameters()))).fill_(float("nan"))
            self.event("fault_injected", step=s, fault="nan")
        crash = p.faults.active("crash", s)
        if crash:
            p.faults.fire(crash, s)
            if p.faults.last_rank:
                p.run.event("fault_injected", step=s, fault="crash", rank=p.rank)
                raise InjectedCrash(f"injected crash at step {s} (--inject {crash.label}) on rank {p.rank}")
        slow = p.faults.active("slow-rank", s)
        if slow and p.faults.last_rank:
            if s == slow.first:
                p.run.event("fault_injected", step=s, fault="slow-rank", rank=p.rank, extra_s=p.faults.slow_s)
            time.sleep(p.faults.slow_s)  # a straggler; it does not fire once, it lasts FIRST..LAST

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "step": self.step,
            "batch_index": self.batch_index,
            "tokens": self.tokens,
            "changed": self.changed,
            "scaler": self.p.precision.state_dict(),
            "segment": self.p.run.segment_id,
            "config": self.cfg.to_dict(),
        }

    def save(self, step: int, *, why: str) -> bool:
        """Checkpoint `step` on every rank; False when the save failed (recorded, and training goes on).

        A failed save (a full disk, most often) is the same on every rank (the checkpointer agrees on it), so
        all ranks carry on together; the previous complete checkpoint stays the one a restart resumes from.
        """
        ckpt, inject = self.p.checkpointer, None
        fault = self.p.faults.active("disk-full", step)
        if fault:
            self.p.faults.fire(fault, step)
            self.event("fault_injected", step=step, fault="disk-full")
            inject = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ckpt.path(step)))
        try:
            path, seconds = ckpt.save(step, self.p.model, self.p.optimizer, self.state(), inject=inject)
        except CheckpointFailed as exc:
            last_good = ckpt.latest() if self.main else None
            f = exc.failure
            self.event(
                "checkpoint_failed",
                step=step,
                path=str(exc.path),
                why=why,
                reason=f.reason,
                errno=f.errno,
                error=f.errno_name,
                rank=f.rank,
                last_good_step=last_good,
            )
            if self.main:
                print(
                    f"warning: checkpoint step {step} failed ({why}) on rank {f.rank}: {f.reason}; "
                    f"training continues, the last good checkpoint is step {last_good}",
                    file=sys.stderr,
                    flush=True,
                )
            return False
        self.saved_step = step
        self.event("checkpoint_saved", step=step, path=str(path), seconds=round(seconds, 3), why=why)
        if self.main and self.cfg.log.print_every:
            print(f"checkpoint step {step} saved in {seconds:.2f}s ({why}): {path}", flush=True)
        return True

    # ------------------------------------------------------------------ interventions
    def _control(self, s: int) -> Outcome | None:
        if s % self.poll_every:
            return None
        reqs = self._decide(self.channel.poll() if self.main else None)
        outcome = None
        for req, reason in reqs:
            if reason is not None:
                self._answer(req, applied=False, step=None, detail=reason)
                continue
            action, params = req["action"], req.get("params") or {}
            knob = interventions.VOCABULARY.get(action)
            if knob is not None and knob.config_key is not None:
                value = params[knob.params[0].name]
                key = self._set_knob(action, value)
                self._answer(req, applied=True, step=s, detail=f"{key} = {value}")
            elif action == "skip_batches":
                self.batch_index += params["n"]
                self._answer(req, applied=True, step=s, detail=f"skipped {params['n']} batches")
            elif action == "checkpoint_now" or (action == "stop" and outcome is None):
                saved = self.saved_step == self.step or self.save(self.step, why=f"intervention {req['id']}")
                if saved:
                    self._answer(req, applied=True, step=self.step, detail=f"checkpoint at step {self.step}")
                elif action == "stop":  # the operator asked to stop: stop, and say what a resume comes back to
                    last = self.p.checkpointer.latest() if self.main else None
                    detail = f"stopping without a checkpoint at step {self.step} (the save failed; last good: {last})"
                    self._answer(req, applied=True, step=self.step, detail=detail)
                else:
                    self._answer(req, applied=False, step=None, detail=f"the checkpoint of step {self.step} failed")
                if action == "stop":
                    outcome = Outcome("stopped", why=req.get("note") or "stop requested")
            elif outcome is not None:  # a stop or rewind in the same poll came first: this one cannot follow it
                self._answer(req, applied=False, step=None, detail=f"the run is already ending ({outcome.reason})")
            elif action == "rewind":
                target = params["checkpoint_step"]
                self._answer(req, applied=True, step=self.step, detail=f"rewinding to the checkpoint of step {target}")
                why = f"rewind to step {target} requested by {req.get('author')}" + (
                    f": {req['note']}" if req.get("note") else ""
                )
                outcome = Outcome("rewound", resume_step=target, changes=params.get("changes") or {}, why=why)
        return outcome

    def _decide(self, reqs: list | None) -> list[tuple[dict, str | None]]:
        """Rank 0 checks each new request (None = accept, else the reason to reject); every rank gets the verdicts."""
        verdicts = None
        if self.main:
            new = [r for r in reqs or [] if r.get("id") not in self.handled]  # an answer that failed to write
            self.handled.update(r.get("id") for r in new)  # must not apply the request a second time
            verdicts = [(r, self._check(r)) for r in new]
        if self.p.world > 1:
            box = [verdicts]
            dist.broadcast_object_list(box, src=0)  # a collective every poll_every steps
            verdicts = box[0]
        return verdicts

    def _check(self, req: dict) -> str | None:
        if req.get("problem"):
            return f"invalid request: {req['problem']}"
        try:
            params = interventions.validate(req.get("action"), req.get("params"))
        except (ValueError, TypeError) as exc:  # a hand-edited line can hold anything
            return f"invalid request: {exc}"
        action = req["action"]
        if action == "loss_scale_floor" and self.p.precision.scaler is None:
            return f"the run trains in {self.p.precision.name}: there is no loss scale"
        if action == "rewind":
            have = self.p.checkpointer.steps()
            target = params["checkpoint_step"]
            if target not in have:
                return f"no complete checkpoint at step {target}; available: {have or 'none'}"
            if "loss_scale_floor" in params.get("changes", {}) and self.p.precision.scaler is None:
                return f"the run trains in {self.p.precision.name}: there is no loss scale floor to change"
        return None

    def _set_knob(self, name: str, value) -> str:
        key = set_knob(self.cfg, name, value)
        self.changed[key] = value
        if name == "loss_scale_floor":
            self.p.precision.floor = float(value)
        apply_optimizer_knobs(self.cfg, self.p.optimizer)
        return key

    def _answer(self, req: dict, *, applied: bool, step: int | None, detail: str) -> None:
        kind = "intervention_applied" if applied else "intervention_rejected"
        action = str(req.get("action"))[:80]  # a hand-written line's action can be anything
        if self.main:
            outcome = f"applied at step {step}" if applied else "rejected"
            print(f"intervention {req['id']} ({action}) {outcome}: {detail}", flush=True)
        self.event(kind, step=step if step is not None else self.step, id=req["id"], action=action, detail=detail)
        if not self.main:
            return
        try:
            interventions.resolve(self.cfg.run_dir, req["id"], applied=applied, step=step, detail=detail)
        except OSError as exc:  # the audit file is unwritable: the event above still records the outcome
            warnings.warn(f"midflight trainer: could not write the intervention outcome: {exc}", stacklevel=2)


def apply_optimizer_knobs(cfg: TrainConfig, optimizer) -> None:
    """Betas and weight decay from the config (after a load, which restores the saved ones)."""
    for group in optimizer.param_groups:
        group["betas"] = (cfg.optim.beta1, cfg.optim.beta2)
        if group.get("decay", True):  # the no-decay group (biases, LayerNorm) stays at 0
            group["weight_decay"] = cfg.optim.weight_decay


def _ignore(*args, **kwargs) -> None:
    return None  # the event sink of ranks other than 0, for events rank 0 records


def _rss_gib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**30
    except (OSError, ValueError, IndexError):
        return float("nan")
