"""Sharded, crash-safe checkpoints in RUN/checkpoints/step-NNNNNNNN/.

A save is written to `step-N.partial/`, renamed to `step-N/` once every rank has
written its shard, and only then marked with a COMPLETE file: resume ignores any
folder without it, so a crash mid-save never costs the previous checkpoint.
`keep_latest >= 2` for the same reason. Model and optimizer go through
torch.distributed.checkpoint (one shard per rank under FSDP2; fairscale FSDP saves
its local flat shards with torch.save), next to the trainer's own state (step,
batch index, loss scaler, config, the knobs interventions changed) and each rank's RNG.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .parallelize import _is_fairscale

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(self, root: Path, *, keep_latest: int, rank: int):
        if keep_latest < 2:
            raise ValueError("checkpoint.keep_latest must be >= 2: the newest checkpoint may still be mid-save")
        self.root = Path(root)
        self.keep_latest = keep_latest
        self.rank = rank

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / COMPLETE).is_file():
                found.append(int(m[1]))
        return sorted(found)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------ save / load (collectives)
    def save(self, step: int, model, optimizer, state: dict) -> tuple[Path, float]:
        """Every rank calls this. Returns (path, seconds)."""
        t0 = time.perf_counter()
        final, partial = self.path(step), self.root / f"step-{step:08d}.partial"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)  # left by a save that crashed
            partial.mkdir(parents=True)
        _barrier()
        if _is_fairscale(model):
            shard = {"model": model.local_state_dict(), "optim": optimizer.state_dict()}
            torch.save(shard, partial / f"shard-rank{self.rank:05d}.pt")
        else:
            msd, osd = get_state_dict(model, optimizer)
            with warnings.catch_warnings():  # one process without a group is a supported, intended DCP case
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(partial))
        torch.save(_rng_state(), partial / f"rng-rank{self.rank:05d}.pt")
        _barrier()
        if self.rank == 0:
            (partial / STATE).write_text(json.dumps(state, indent=1))
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            (final / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))  # last: the marker
            self._prune()
        _barrier()
        return final, time.perf_counter() - t0

    def load(self, step: int, model, optimizer) -> dict:
        """Every rank calls this. Restores model, optimizer and this rank's RNG; returns the trainer state."""
        path = self.path(step)
        if not (path / COMPLETE).is_file():
            raise FileNotFoundError(f"no complete checkpoint for step {step} in {self.root}")
        if _is_fairscale(model):
            shard = torch.load(path / f"shard-rank{self.rank:05d}.pt", weights_only=False)
            model.load_local_state_dict(shard["model"])
            optimizer.load_state_dict(shard["optim"])
        else:
            msd, osd = get_state_dict(model, optimizer)
            sd = {"model": msd, "optim": osd}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.load(sd, checkpoint_id=str(path))
            set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        rng = path / f"rng-rank{self.rank:05d}.pt"
        if rng.is_file():  # absent when resuming on more ranks than saved: dropout differs, data does not
            _set_rng_state(torch.load(rng, weights_only=False))
        return json.loads((path / STATE).read_text())

    # ------------------------------------------------------------------ housekeeping (rank 0)
    def supersede_after(self, step: int) -> list[str]:
        """Move checkpoints past `step` (an abandoned branch) to superseded/; they are kept, never reused."""
        moved = []
        for s in self.steps():
            if s > step:
                dest = self.root / "superseded" / f"step-{s:08d}-{time.strftime('%Y%m%dT%H%M%S')}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.path(s).rename(dest)
                moved.append(str(dest.relative_to(self.root)))
        return moved

    def _prune(self) -> None:
        for s in self.steps()[: -self.keep_latest]:
            try:
                shutil.rmtree(self.path(s))
            except OSError as exc:
                warnings.warn(f"midflight trainer: could not delete old checkpoint step {s}: {exc}", stacklevel=2)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
