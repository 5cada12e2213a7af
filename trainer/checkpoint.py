"""Sharded, crash-safe checkpoints in RUN/checkpoints/step-NNNNNNNN/.

A save is written to `step-N.partial/`, renamed to `step-N/` once every rank has
written its shard, and only then marked with a COMPLETE file (written whole, then
renamed into place): resume ignores any folder without a readable marker, so a crash
mid-save never costs the previous checkpoint. `keep_latest >= 2` for the same reason,
and old checkpoints are pruned only after a newer one is complete, never to make room.

A save that fails (a full disk, a read-only mount: any OSError, or DCP's
CheckpointException) fails on every rank alike: the ranks agree on the outcome of each
phase with one small all-gather, rank 0 removes what the save wrote, and every rank
raises CheckpointFailed, which the trainer records and trains on. Model and optimizer go through
torch.distributed.checkpoint (one shard per rank under FSDP2; fairscale FSDP saves
its local flat shards with torch.save), next to the trainer's own state (step,
batch index, loss scaler, config, the knobs interventions changed) and each rank's RNG.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .parallelize import _is_fairscale

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointFailed(Exception):
    """A save that failed on some rank; raised on every rank, after the partial checkpoint was removed."""

    def __init__(self, step: int, path: Path, failure: _Failure):
        self.step, self.path, self.failure = step, path, failure
        super().__init__(f"checkpoint step {step} failed on rank {failure.rank}: {failure.reason}")

    @property
    def errno(self) -> int | None:
        return self.failure.errno


class _Failure:
    """What went wrong on one rank, small and picklable so that every rank can be told."""

    def __init__(self, rank: int, err: int | None, reason: str):
        self.rank, self.errno, self.reason = rank, err, reason

    @classmethod
    def of(cls, exc: BaseException, rank: int) -> _Failure:
        if isinstance(exc, _Failure):
            return exc
        os_error = _os_error(exc)
        if os_error is not None:
            text = os_error.strerror or str(os_error)
            where = f": {os_error.filename}" if os_error.filename else ""
            return cls(rank, os_error.errno, f"{type(os_error).__name__}: {text}{where}"[:500])
        first = (str(exc).strip().splitlines() or [""])[0]
        return cls(rank, None, f"{type(exc).__name__}: {first}"[:500])

    @property
    def errno_name(self) -> str | None:
        return errno.errorcode.get(self.errno) if self.errno is not None else None


def _os_error(exc, depth: int = 0) -> OSError | None:
    """The OSError behind `exc`: itself, one of DCP's per-rank failures, or its cause/context."""
    if exc is None or depth > 8:
        return None
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, CheckpointException):
        for item in exc.failures.values():
            found = _os_error(item[0] if isinstance(item, tuple) else item, depth + 1)
            if found is not None:
                return found
    return _os_error(exc.__cause__ or exc.__context__, depth + 1)


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
            if m and _complete(p, int(m[1])):
                found.append(int(m[1]))
        return sorted(found)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------ save / load (collectives)
    def save(self, step: int, model, optimizer, state: dict, *, inject: OSError | None = None) -> tuple[Path, float]:
        """Every rank calls this. Returns (path, seconds), or raises CheckpointFailed on every rank alike.

        A failure on any rank (a full disk, a read-only mount, DCP's CheckpointException) is agreed on by
        all ranks after each phase, so they leave together and the next collective pairs up; rank 0 then
        removes what this save wrote. The checkpoints already complete are untouched, and old ones are
        pruned only after this one is complete. `inject` (a test fault) is raised on the last rank after its
        shards are written, where a real full disk would most often strike.
        """
        t0 = time.perf_counter()
        final, partial = self.path(step), self.root / f"step-{step:08d}.partial"
        replaced = self.root / f"step-{step:08d}.replaced"  # a complete checkpoint of the same step, set aside
        failure = None
        if self.rank == 0:
            try:
                for stale in self.root.glob("step-*.partial"):  # left by saves that crashed: reclaim the space
                    shutil.rmtree(stale, ignore_errors=True)
                partial.mkdir(parents=True)
            except OSError as exc:
                failure = exc
        failure = self._agree(failure)
        if failure is None:
            try:
                if _is_fairscale(model):
                    shard = {"model": model.local_state_dict(), "optim": optimizer.state_dict()}
                    _torch_save(shard, partial / f"shard-rank{self.rank:05d}.pt")
                else:
                    msd, osd = get_state_dict(model, optimizer)
                    with warnings.catch_warnings():  # one process without a group is a supported, intended DCP case
                        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                        dcp.save({"model": msd, "optim": osd}, storage_writer=_Writer(str(partial)))
                _torch_save(_rng_state(), partial / f"rng-rank{self.rank:05d}.pt")
                if inject is not None and self._last_rank():
                    raise inject
            except (OSError, CheckpointException) as exc:  # DCP's error is a BaseException, not an Exception
                failure = exc
            failure = self._agree(failure)
        if failure is None and self.rank == 0:
            try:
                (partial / STATE).write_text(json.dumps(state, indent=1))
                if final.exists():  # the same step again: the old copy goes only once the new one is complete
                    shutil.rmtree(replaced, ignore_errors=True)
                    final.rename(replaced)
                partial.rename(final)
                _write_marker(final / COMPLETE, {"step": step, "time": time.time()})  # last: the marker
            except OSError as exc:
                failure = exc
        failure = self._agree(failure)
        if failure is not None:
            if self.rank == 0:
                self._discard(step, partial, final, replaced)
            _barrier()
            raise CheckpointFailed(step, final, failure)
        if self.rank == 0:
            shutil.rmtree(replaced, ignore_errors=True)
            self._prune()
        _barrier()
        return final, time.perf_counter() - t0

    def _discard(self, step: int, partial: Path, final: Path, replaced: Path) -> None:
        """After a failed save (rank 0): remove what it wrote, put back a complete copy it had set aside."""
        shutil.rmtree(partial, ignore_errors=True)
        if final.exists() and not _complete(final, step):
            shutil.rmtree(final, ignore_errors=True)
        if replaced.exists() and not final.exists():
            try:
                replaced.rename(final)
            except OSError as exc:
                warnings.warn(f"midflight trainer: could not restore checkpoint step {step}: {exc}", stacklevel=3)

    def _agree(self, failure: BaseException | _Failure | None) -> _Failure | None:
        """Every rank's outcome of a phase, shared: this rank's failure, else the first other rank's, else None."""
        mine = None if failure is None else _Failure.of(failure, self.rank)
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return mine
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)  # a collective: every rank calls it once per phase, failed or not
        return mine or next((f for f in everyone if f is not None), None)

    @staticmethod
    def _last_rank() -> bool:
        return not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1

    def load(self, step: int, model, optimizer) -> dict:
        """Every rank calls this. Restores model, optimizer and this rank's RNG; returns the trainer state."""
        path = self.path(step)
        if not _complete(path, step):
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


class _Writer(dcp.FileSystemWriter):
    """DCP's file writer, reporting a failed write as the OSError behind it.

    DCP shares each rank's failure with all ranks by pickling it, which drops an exception's context; and
    torch's serializer reports a full disk as a RuntimeError whose context is the OSError. Raised here,
    on the rank that wrote, the OSError (errno, text, file) survives the trip.
    """

    def write_data(self, plan, planner):
        try:
            return super().write_data(plan, planner)
        except RuntimeError as exc:
            _reraise_os_error(exc)

    def finish(self, metadata, results) -> None:
        try:
            super().finish(metadata, results)
        except RuntimeError as exc:
            _reraise_os_error(exc)


def _reraise_os_error(exc: RuntimeError) -> None:
    """Raise the OSError behind `exc` as a new OSError (picklable, errno kept), or `exc` itself if none."""
    found = _os_error(exc)
    if found is None:
        raise exc
    raise OSError(found.errno, found.strerror, found.filename) from exc


def _complete(path: Path, step: int) -> bool:
    """The checkpoint folder carries a whole COMPLETE marker for `step` (an empty or cut one does not count)."""
    try:
        return json.loads((path / COMPLETE).read_text()).get("step") == step
    except (OSError, ValueError, AttributeError):
        return False


def _write_marker(path: Path, content: dict) -> None:
    """Write `path` whole or not at all: a temp file, flushed, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(content))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _torch_save(obj, path: Path) -> None:
    """torch.save through a Python file, so a failed write surfaces as the OSError (errno and all) behind it.

    Given a path, torch.save reports a full disk as a bare RuntimeError ("unexpected pos ..."); through a
    file object the OSError is the RuntimeError's context, and it is raised here instead.
    """
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as exc:
        _reraise_os_error(exc)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
