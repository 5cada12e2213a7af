"""fp32, bf16 or fp16 with dynamic loss scaling, and the loss-scale events OPT-175B needed.

Mixed precision is torch.autocast around the forward pass on every backend; weights,
gradients and optimizer state stay fp32. fp16 adds torch's GradScaler (initial scale 4,
as in metaseq's final OPT-175B config) with a floor: the scale never goes below
`scale_floor`, and sitting there is an event, because a scale stuck at its floor is
how OPT-175B's fp16 training "ground to a halt".
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, dtype: str, *, device_type: str, init_scale: float, growth_interval: int, floor: float):
        self.name = dtype
        self.dtype = DTYPES[dtype]
        self.device_type = device_type
        self.floor = floor
        self.scaler = (
            torch.amp.GradScaler(device_type, init_scale=init_scale, growth_interval=growth_interval)
            if dtype == "fp16"
            else None
        )

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler else loss

    def unscale(self, optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)  # so clipping sees true gradient norms

    @property
    def loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler else 1.0  # a host read: the scaler synced in step()

    def step(self, optimizer) -> tuple[float, float, bool]:
        """Optimizer step through the scaler; returns (scale before, scale after, overflowed: step skipped)."""
        if not self.scaler:
            optimizer.step()
            return 1.0, 1.0, False
        before = self.loss_scale
        self.scaler.step(optimizer)
        self.scaler.update()
        after = self.loss_scale
        overflowed = after < before  # the scaler backs off (halves) on an overflow and only then
        if after < self.floor:
            self.scaler.update(new_scale=self.floor)
            after = self.floor
        return before, after, overflowed

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def scale_events(before: float, after: float, floor: float, overflowed: bool) -> list[tuple[str, dict]]:
    """The loss-scale events of one fp16 step, each with the scale before and after."""
    fields = {"scale_before": before, "scale_after": after}
    events = []
    if overflowed:
        events.append(("overflow", {**fields, "skipped": True}))
        if after < before:
            events.append(("loss_scale_decrease", fields))
        if after <= floor:
            events.append(("loss_scale_at_floor", {**fields, "floor": floor}))
    elif after > before:
        events.append(("loss_scale_increase", fields))
    return events
