"""Telemetry on disk and into the store: the per-device records (format 2) against node records (format 3).

Why: at fleet scale telemetry is most of the points (992 GPUs x 6 names at 1 Hz is 6k points/s), and the
per-device records cost ~40 bytes a point in the logs and were ingested one Python tuple per point. This
prints, side by side, for the same NVML-like readings (N nodes x 8 GPUs x 6 names at 1 Hz):

- bytes per point in the logs: format 2 as the sampler wrote it (one record per GPU per 0.5 s flush,
  values as NVML gives them: whole numbers as floats, power in mW/1000, memory as bytes/2**30) against
  format 3 (one record per node per 5 s, values at the sensor's resolution: trainer.telemetry.DECIMALS);
- the store's bytes per point (DuckDB file with telemetry and telemetry_tiles, after CHECKPOINT: the file's
  size, and its used blocks, which leave out blocks freed by earlier transactions);
- the ingest rate (points/s) of each, into a fresh store, tiles included.

    python benchmarks/bench_telemetry.py --nodes 4 --hours 1

`--fleet NODES` measures instead what `midflight ingest` does with a fleet-shaped run
(benchmarks/fleet_run.py, synchronous: NODES x 8 ranks, metrics per step on every rank, telemetry of every
GPU at 0.2 Hz and 20 s steps): points/s (metric + telemetry points, sealing included) and the store's bytes
per telemetry point, for this checkout and, with `--baseline DIR` (a checkout of earlier code, e.g.
`git worktree add /tmp/base COMMIT`), for that one on the same logs, side by side. Each ingest runs in its
own process (`open_run`, the CLI's path) into a fresh on-disk store; the run's sealed Parquet is removed
before each, so every one parses the logs.

    python benchmarks/bench_telemetry.py --fleet 124 --steps 100 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas  # noqa: F401 - imported by the store on first use; loaded here so no timing pays for it

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from midflight.logbook.record import layout, records  # noqa: E402
from midflight.logbook.store import open_store  # noqa: E402
from midflight.logbook.store.ingest import ingest  # noqa: E402
from midflight.trainer.telemetry import DECIMALS  # noqa: E402

NAMES = ["util_pct", "mem_used_gib", "power_w", "temp_c", "sm_clock_mhz", "energy_j"]
GPUS = 8
T0 = 1_700_000_000.0


def readings(rng, ticks: int):
    """[ticks, GPUS * 6] NVML readings as the library returns them (device-major), and their wall times."""
    t = T0 + np.arange(ticks) + rng.uniform(0, 0.01, ticks)
    cols = []
    for _ in range(GPUS):
        power = np.round(400 + 10 * rng.standard_normal(ticks), 3)  # mW / 1000
        cols += [
            np.clip(np.round(97 + rng.standard_normal(ticks)), 0, 100),
            (71.5 * 2**30 + np.round(rng.standard_normal(ticks) * 2**24)) / 2**30,
            power,
            np.round(70 + 1.5 * rng.standard_normal(ticks)),
            np.round(1980 - 5 * np.abs(rng.standard_normal(ticks))),
            np.round(np.cumsum(power), 3),
        ]
    return t, np.column_stack(cols)


def write(run_dir: Path, nodes: int, ticks: int, compact: bool, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    total = 0
    for node in range(nodes):
        t, vals = readings(rng, ticks)
        steps = (np.arange(ticks) // 20).tolist()
        out = []
        if compact:  # a sampler's telemetry_block per tick, held 5 s: one node record per 5 ticks
            devices = [f"gpu{g}" for g in range(GPUS)]
            tl, vl = t.tolist(), vals.tolist()
            for a in range(0, ticks, 5):
                out.append(
                    records.encode_telemetry(
                        devices, NAMES, tl[a : a + 5], steps[a : a + 5], vl[a : a + 5], decimals=DECIMALS
                    )
                )
        else:  # format 2: one run.telemetry per GPU per tick, one block per GPU per 0.5 s flush
            for i in range(ticks):
                for g in range(GPUS):
                    row = [float(t[i]), steps[i], *vals[i, g * 6 : (g + 1) * 6].tolist()]
                    out.append(
                        records.encode_block({"k": "telemetry", "names": NAMES, "rows": [row], "device": f"gpu{g}"})
                    )
        data = b"".join(out)
        total += len(data)
        path = layout.rank_file(run_dir, "seg-bench", node * GPUS)
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = {"k": "open", "v": records.FORMAT_VERSION, "run": "bench", "segment": "seg-bench"}
        opened.update(rank=node * GPUS, local_rank=0, world=nodes * GPUS, host=f"node{node:04d}", pid=1, t=T0)
        path.write_bytes(records.encode(opened) + data)
    return total


# Run in a subprocess with the measured checkout first on sys.path: ingest as the CLI does (open_run: seal
# included), then the store's size. Sizes are DuckDB's used blocks (after CHECKPOINT) and, per table, the
# blocks its columns occupy (an upper bound: a block may be shared), read with plain duckdb.
_FLEET_INGEST = r"""
import json, sys, time
import pandas  # imported by the store on first use: not timed
from midflight.logbook.store.ingest import open_run
run, db = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
store, report = open_run(run, db)
took = time.perf_counter() - t0
store.close()
import duckdb
con = duckdb.connect(db)
con.execute("CHECKPOINT")
used, block = con.execute("SELECT used_blocks * block_size, block_size FROM pragma_database_size()").fetchone()
tables = {}
for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
    (n,) = con.execute(f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{t}')").fetchone()
    tables[t] = n * block
print(json.dumps({"seconds": took, "metric_points": report.metric_points,
                  "telemetry_points": report.telemetry_points, "malformed": report.malformed,
                  "store_bytes": used, "tables": tables}))
"""


def fleet(a) -> int:
    from benchmarks.fleet_run import write_fleet_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        run = tmp / "run"
        write_fleet_run(run, nodes=a.fleet, steps=a.steps, synchronous=True)
        logs = sum(p.stat().st_size for p in run.rglob("*.jsonl"))
        print(
            f"fleet run: {a.fleet} nodes x 8 GPUs = {a.fleet * 8} ranks x {a.steps} steps, {logs / 1e6:.1f} MB of logs"
        )
        head = f"{'code':<28} {'ingest s':>9} {'points/s':>11} {'metric pts':>11} {'telemetry pts':>14}"
        print(head + f" {'store B/tel pt':>15} {'raw tel B/pt':>13} {'tiles B/pt':>11} {'Parquet B/tel pt':>17}")
        for label, root_dir in ([("baseline " + a.baseline, a.baseline)] if a.baseline else []) + [
            ("this checkout", str(Path(__file__).resolve().parents[1]))
        ]:
            shutil.rmtree(run / layout.STORE_DIR, ignore_errors=True)
            db = tmp / f"store-{len(list(tmp.glob('store-*')))}.duckdb"
            env = dict(os.environ, PYTHONPATH=root_dir)
            out = subprocess.run(
                [sys.executable, "-c", _FLEET_INGEST, str(run), str(db)], env=env, cwd=root_dir,
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            tel = r["telemetry_points"]
            raw = r["tables"].get("telemetry_blocks", r["tables"].get("telemetry", 0)) + r["tables"].get(
                "telemetry_names", 0
            )
            parquet = sum(p.stat().st_size for p in run.glob(".midflight/parquet/v1/table=telemetry*/**/*.parquet"))
            points = r["metric_points"] + tel
            print(
                f"{label[-28:]:<28} {r['seconds']:>9.1f} {points / r['seconds']:>11,.0f} {r['metric_points']:>11,}"
                f" {tel:>14,} {r['store_bytes'] / tel:>15.2f} {raw / tel:>13.2f}"
                f" {r['tables'].get('telemetry_tiles', 0) / tel:>11.2f} {parquet / tel:>17.2f}"
            )
            db.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--fleet", type=int, default=0, metavar="NODES", help="a fleet-shaped run of NODES x 8 ranks")
    ap.add_argument("--steps", type=int, default=100, help="--fleet: steps of 20 s")
    ap.add_argument("--baseline", default=None, help="--fleet: a checkout of earlier code to measure beside this one")
    a = ap.parse_args(argv)
    if a.fleet:
        return fleet(a)
    ticks = int(a.hours * 3600)
    points = a.nodes * GPUS * len(NAMES) * ticks
    tmp = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    print(f"{a.nodes} nodes x {GPUS} GPUs x {len(NAMES)} names at 1 Hz for {a.hours:g} h: {points:,} points")
    print(f"{'format':<34} {'log B/point':>12} {'store B/point':>14} {'used B/point':>14} {'ingest points/s':>16}")
    try:
        for label, compact in (("2: one record per GPU per flush", False), ("3: node record, 5 ticks", True)):
            run = tmp / ("new" if compact else "old") / "bench"
            size = write(run, a.nodes, ticks, compact)
            db = run.parent / "store.duckdb"
            with open_store(db, fallback=False) as store:
                t0 = time.perf_counter()
                report = ingest(store, [run])
                dt = time.perf_counter() - t0
                assert report.malformed == 0 and report.telemetry_points == points, report.describe()
                cur = store.cursor()
                cur.execute("CHECKPOINT")
                (used,) = cur.execute("SELECT used_blocks * block_size FROM pragma_database_size()").fetchone()
            print(
                f"{label:<34} {size / points:>12.2f} {db.stat().st_size / points:>14.2f} {used / points:>14.2f}"
                f" {points / dt:>16,.0f}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
