"""Each rank's own work in a step, apart from the time it waits for its peers: `compute_s`.

Why: in synchronous training every rank waits for the slowest one inside the gradient
synchronisation, so end-to-end `step_time_s` is the same on every rank and cannot name a
straggler. What differs is the time a rank spends on work that waits for nobody: loading its batch,
the forward pass, and everything after the step's first blocking sync (the optimizer step, host
work; a straggler's extra time lands here). `compute_s` is that time:

    compute_s = (backward starts - step starts) + (step ends - first host sync after backward)

The backward pass is left out because the gradient all-reduce runs inside it (DDP buckets, FSDP
reduce-scatters), so its duration is where the fast ranks wait. `wait_s = step_time_s - compute_s`
is the rest: backward plus the wait for peers.

Cost: on CPU four perf_counter() calls a step. On CUDA the GPU runs ahead of the host, so the
marks are CUDA events (recording one is a few microseconds and does not sync); they are read only on
log steps, after waiting for the step's last event, which the log step's own host sync has nearly
reached. No collective and no `.item()` is added.
"""

from __future__ import annotations

import time

import torch

MARKS = ("start", "backward", "synced", "end")


class StepClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.host: dict[str, float] = {}
        self.events = {m: torch.cuda.Event(enable_timing=True) for m in MARKS} if self.cuda else {}

    def mark(self, name: str) -> None:
        self.host[name] = time.perf_counter()
        if self.cuda:
            self.events[name].record()

    def compute_s(self) -> float | None:
        """The step's compute time (seconds) after all four marks; None if a mark is missing."""
        if any(m not in self.host for m in MARKS):
            return None
        if self.cuda:
            ev = self.events
            ev["end"].synchronize()
            ms = ev["start"].elapsed_time(ev["backward"]) + ev["synced"].elapsed_time(ev["end"])
            return ms / 1e3
        h = self.host
        return (h["backward"] - h["start"]) + (h["end"] - h["synced"])
