"""Run the real trainer (`python -m midflight.trainer`, or under torchrun with gloo) and read what it recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from midflight import logbook
from midflight.logbook.store import queries
from tests.logbook.proc_helpers import ROOT, Proc, child_env

# Small and fast on a 2-core CPU: ~5 ms a step.
FAST = [
    "--model",
    "tiny",
    "--data.seq_len=64",
    "--data.batch_size=8",
    "--telemetry.hz=4",
    "--log.print_every=5",
]


def trainer_cmd(run_dir: Path, *args, nproc: int | None = None, max_restarts: int = 0) -> list[str]:
    if nproc is None:
        head = [sys.executable, "-m", "midflight.trainer"]
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        head += [f"--max-restarts={max_restarts}", "-m", "midflight.trainer"]
    return [*head, "--run-dir", str(run_dir), *FAST, *map(str, args)]


def train(run_dir: Path, *args, nproc: int | None = None, max_restarts: int = 0, timeout: float = 240, check=True):
    """Run the trainer to the end; returns the CompletedProcess (asserting exit 0 unless check=False)."""
    out = subprocess.run(
        trainer_cmd(run_dir, *args, nproc=nproc, max_restarts=max_restarts),
        capture_output=True,
        text=True,
        env=child_env(OMP_NUM_THREADS="1"),
        cwd=ROOT,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def start(run_dir: Path, *args) -> Proc:
    """The trainer as a live child process whose progress lines can be awaited with `.expect(prefix)`."""
    return Proc(trainer_cmd(run_dir, *args), env=child_env(OMP_NUM_THREADS="1"), cwd=ROOT)


def logbook_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "midflight.logbook", *map(str, args)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


class Recorded:
    """The run's logbook, ingested into a fresh store."""

    def __init__(self, run_dir: Path, store_path: Path | None = None):
        store_path = store_path or Path(run_dir).parent / f"{Path(run_dir).name}.duckdb"
        self.store, self.report = logbook.open_run(run_dir, store_path=store_path)
        (self.run,) = queries.run_ids(self.store)

    def metric(self, name: str, *, rank: int = 0, which: str = "effective") -> dict[int, float]:
        df = queries.series(self.store, self.run, name, rank=rank, which=which)
        return dict(zip(df["step"].astype(int), df["value"]))

    def segments(self):
        return queries.segments(self.store, self.run)

    def events(self, kind: str):
        df = queries.events(self.store, self.run, [kind])
        return [
            (None if pd.isna(s) else int(s), json.loads(f) if isinstance(f, str) else f)
            for s, f in zip(df.step, df.fields)
        ]

    def interventions(self):
        return queries.interventions(self.store, self.run).set_index("intervention_id")
