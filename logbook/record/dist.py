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


ENV_AGREE_WAIT = "MIDFLIGHT_AGREE_WAIT_S"  # how long a rank waits for rank 0's segment id (default 10 s)


def agree_wait_s() -> float:
    try:
        wait = float(os.environ.get(ENV_AGREE_WAIT, "10"))
    except ValueError:
        return 10.0
    return wait if 0 <= wait <= 3600 else 10.0


def agree_on(value: str, info: DistInfo, scope: str) -> tuple[str | None, bool]:
    """Rank 0's `value` on every rank that asks, through the process group's key-value store: never a collective.

    Rank 0 writes it and goes on; any other rank waits for it at most agree_wait_s() (rank 0 normally gets
    there at the same moment). A collective such as broadcast_object_list would hang the job whenever only
    some ranks call init, which is how W&B users, Lightning loggers and Accelerate trackers call it (rank 0
    only). `scope` names the agreement (the run directory and how many inits this process made there), so
    every rank that initialises the same run in the same order reads the same value.

    Returns (value, rank 0 absent): value None when there is no store or rank 0 never wrote one (the caller
    falls back to an id derived from the launch); rank 0 absent when the wait ran out.
    """
    dist = torch_dist()
    if dist is None or info.world_size <= 1:
        return value, False
    key = f"midflight/segment/{scope}"
    try:
        store = dist.distributed_c10d._get_default_store()
        if info.is_main:
            store.set(key, value)
            return value, False
    except Exception:  # noqa: BLE001  (no default store, a store from another torch version: fall back)
        return None, False
    try:
        import datetime

        store.wait([key], datetime.timedelta(seconds=agree_wait_s()))
        return store.get(key).decode(), False
    except Exception:  # noqa: BLE001  (torch raises its own timeout types, which differ between versions)
        return None, True


LAUNCH_ENV = (
    "MIDFLIGHT_LAUNCH_ID",  # set it yourself where nothing below is unique to one launch
    "TORCHELASTIC_RUN_ID",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "SLURM_RESTART_COUNT",
)


def launch_key() -> str | None:
    """A string all ranks of one launch share (torchrun's or SLURM's environment), or None outside a launcher.

    Static rendezvous with a fixed port and no run id gives every relaunch the same key: such launches
    are told apart by the process group's store when it is up (agree_on), else by MIDFLIGHT_LAUNCH_ID.
    """
    parts = [os.environ.get(k) for k in LAUNCH_ENV]
    if not any(parts[:6]):
        return None
    return "|".join(p or "" for p in parts)
