"""What the integration tests share: read a run back through the store, run a 2-process torchrun job."""

import os
import subprocess
import sys
from pathlib import Path

from midflight.logbook.store import memory, queries
from midflight.logbook.store.ingest import ingest

ROOT = Path(__file__).resolve().parents[2]
MAIN = Path(__file__).with_name("torchrun_main.py")


def ingested(run_dir):
    """A fresh in-memory store holding the run at `run_dir` (its id is the folder name)."""
    store = memory()
    ingest(store, [Path(run_dir)])
    return store


def values(store, run_dir, name, rank=0) -> dict:
    """{step: value} of one metric."""
    df = queries.series(store, Path(run_dir).name, name, rank=rank)
    return dict(zip(df["step"].astype(int).tolist(), df["value"].tolist()))


def offline_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    return env


def torchrun(library: str, run_dir) -> subprocess.CompletedProcess:
    """torchrun_main.py for `library` as 2 gloo/CPU processes; the timeout turns a hang into a failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(MAIN), library, str(run_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=offline_env(), cwd=run_dir.parent)


def rank0_only_run(library: str, run_dir):
    """The 2-process torchrun job of a library that calls its logger or tracker on rank 0 only (Lightning,
    Accelerate): it must finish, leaving one completed segment of world size 2 that rank 0 alone wrote.
    Returns the store holding it."""
    out = torchrun(library, run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    (segment,) = (run_dir / "segments").iterdir()
    assert sorted(p.name for p in segment.iterdir()) == ["rank-00000.jsonl", "segment.json"]
    store = ingested(run_dir)
    seg = queries.segments(store, Path(run_dir).name)
    assert seg["world_size"].tolist() == [2] and seg["end_reason"].tolist() == ["completed"]
    return store
