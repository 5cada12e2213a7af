"""One question over a whole fleet of runs, asked of their sealed Parquet by Dask, and checked against DuckDB.

When a user outgrows one machine, the runs' sealed segments are already immutable, Hive-partitioned
Parquet inside each run directory (docs/architecture.md, "Sealed segments as Parquet"), so any engine
they run can read them without midflight. This example asks Dask (local, here; the same code runs on
a dask.distributed cluster) per run and segment: loss points, mean and max loss, and the p95 of
step_time_s over every rank and step. It prints the answer beside DuckDB's over the same files and
over midflight's own store, and exits 1 if they differ.

    python examples/fleet_query.py runs/fleet --demo 3     # write 3 small 4-rank runs there first
    python examples/fleet_query.py /data/runs              # or a folder of real runs
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd

from midflight import logbook
from midflight.logbook.record import layout
from midflight.logbook.store import sealed

COLUMNS = ["run_id", "segment_id", "loss_points", "loss_mean", "loss_max", "step_time_p95"]


def dask_fleet_stats(files: list[Path]) -> pd.DataFrame:
    """The fleet question in Dask over the sealed `metrics` Parquet files."""
    df = dd.read_parquet([str(f) for f in files], columns=["run_id", "segment_id", "rank", "step", "name", "value"])
    df = df[df["value"].notnull() & df["name"].isin(["loss", "step_time_s"])]  # NaN is missing here
    keys = ["run_id", "segment_id"]
    loss = df[df["name"] == "loss"].groupby(keys)["value"].agg(["count", "mean", "max"])
    p95 = (
        df[df["name"] == "step_time_s"]
        .groupby(keys)["value"]
        .apply(lambda s: s.quantile(0.95), meta=("value", "f8"))  # linear, like DuckDB's quantile_cont
    )
    with dask.config.set(scheduler="threads", num_workers=2):
        loss, p95 = dask.compute(loss, p95)
    out = loss.rename(columns={"count": "loss_points", "mean": "loss_mean", "max": "loss_max"})
    out = out.join(p95.rename("step_time_p95"), how="outer").reset_index()
    out["loss_points"] = out["loss_points"].fillna(0).astype("int64")
    return out[COLUMNS].sort_values(keys, ignore_index=True)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Plain dtypes and a stable order, so two engines' answers compare cell by cell."""
    df = df[COLUMNS].copy()
    for c in ("run_id", "segment_id"):
        df[c] = df[c].astype(str)
    df["loss_points"] = df["loss_points"].astype("int64")
    for c in ("loss_mean", "loss_max", "step_time_p95"):
        df[c] = df[c].astype("float64")
    return df.sort_values(["run_id", "segment_id"], ignore_index=True)


def write_demo_fleet(folder: Path, runs: int = 3, ranks: int = 4, steps: int = 300) -> list[Path]:
    """Small runs of `ranks` ranks and two segments each (a restart half-way); run k's last rank is slow."""
    out = []
    for k in range(runs):
        run_dir = Path(folder) / f"run-{k}"
        for seg, (lo, hi, resume) in enumerate([(0, steps // 2 + 20, None), (steps // 2, steps, steps // 2)]):
            for rank in range(ranks):
                _record_rank(run_dir, f"seg-{seg}", rank, ranks, range(lo, hi), resume, slow=rank == ranks - 1 and k)
        out.append(run_dir)
    return out


def _record_rank(run_dir, segment_id, rank, world, steps, resume_step, slow):
    saved = {v: os.environ.get(v) for v in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))  # the Recorder reads torchrun's variables
    try:
        run = logbook.init(run_dir, name=run_dir.name, segment_id=segment_id, resume_step=resume_step, flush_every=60)
    finally:
        for v, old in saved.items():
            os.environ.pop(v) if old is None else os.environ.__setitem__(v, old)
    for s in steps:
        values = {"step_time_s": (1.3 if slow else 1.0) + 0.001 * ((s * 7 + rank * 13) % 50)}
        if rank == 0:
            values["loss"] = 4.0 / (1 + s / 100) + 0.01 * ((s * 31) % 17)
        run.log(values, step=s)
    run.finish()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a folder of run directories")
    ap.add_argument("--demo", type=int, metavar="N", help="first write N small demo runs into the folder")
    args = ap.parse_args(argv)
    if args.demo:
        write_demo_fleet(args.folder, runs=args.demo)
    runs = layout.discover_runs(args.folder)
    store, report = logbook.open_run(args.folder)  # ingests what is new and seals finished segments
    try:
        files = sealed.part_files(runs)
        print(f"{len(runs)} runs, {len(files)} sealed segments")
        by_dask = normalise(dask_fleet_stats(files))
        by_duckdb = normalise(sealed.fleet_stats(files=files))
        by_store = normalise(sealed.fleet_stats(store=store))
    finally:
        store.close()
    sealed_keys = set(zip(by_dask.run_id, by_dask.segment_id))
    by_store = by_store[[k in sealed_keys for k in zip(by_store.run_id, by_store.segment_id)]].reset_index(drop=True)
    print(by_dask.to_string(index=False))
    for name, other in (("DuckDB over the Parquet", by_duckdb), ("DuckDB over the store", by_store)):
        try:
            pd.testing.assert_frame_equal(by_dask, other, check_exact=False, rtol=1e-12)
        except AssertionError as exc:
            print(f"Dask and {name} differ:\n{exc}", file=sys.stderr)
            return 1
        print(f"Dask equals {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
