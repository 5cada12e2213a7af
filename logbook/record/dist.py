"""Which rank am I? Read once, from torch.distributed if it is up, else torchrun's env."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torch_dist():
    """torch.distributed if the caller already imported torch and initialised a group; logbook never imports torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def detect() -> DistInfo:
    local_rank = _env_int("LOCAL_RANK", 0)
    dist = torch_dist()
    if dist is not None:
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size())
    return DistInfo(_env_int("RANK", 0), local_rank, _env_int("WORLD_SIZE", 1))


def agree_on(value: str, info: DistInfo) -> str:
    """Rank 0's value on every rank (one collective at init), so all ranks share a segment id."""
    dist = torch_dist()
    if dist is None or info.world_size <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch_key() -> str | None:
    """A string all ranks of one torchrun launch share, when torch.distributed is not up yet."""
    parts = [
        os.environ.get(k) for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")
    ]
    if not any(parts[:3]):
        return None
    return "|".join(p or "" for p in parts)
