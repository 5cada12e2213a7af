"""How fast do event logs become queryable? Ingest throughput into DuckDB (goal: >= 2M metric points/s).

The dashboard's first open of a run, and every process that finds the store
locked (it builds a private in-memory store from the logs), pays one full ingest;
so ingest speed bounds time-to-first-chart. This script:

1. writes a realistic run: one rank, 10 metrics per step, written by the real
   Recorder (`run.log` + an explicit `run.flush()` every B steps, so each metrics
   record holds B rows, as the 0.5 s background flush would at a given step time),
   or, with `--writer direct`, the same JSON lines written straight from numpy;
2. times `ingest()` into a fresh on-disk store (points/s, MB/s), then a re-ingest
   with nothing new (the idempotency check: one stat per file) and the same after
   reopening the store;
3. compares against two floors measured on the same data: reading and parsing every
   line with the ingester's own parser, `records.decode` (orjson; the parse cost
   ingest cannot avoid), and a DuckDB INSERT of the
   same rows from a ready Arrow table (the store-side cost);
4. with `--profile`, runs each case's ingest again under cProfile and prints the
   top functions.

Not a pass/fail test: docs/benchmarks.md interprets the table.

    python benchmarks/bench_ingest.py             # 1M steps x 10 metrics = 10M points per case
    python benchmarks/bench_ingest.py --quick     # 100k steps = 1M points per case
    python benchmarks/bench_ingest.py --profile   # plus a cProfile of each case's ingest
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import TEN_METRICS as NAMES  # noqa: E402
from _common import Timer, machine_info, median, note, print_header, print_table, progress  # noqa: E402

GOAL_POINTS_PER_S = 2e6


# ----------------------------------------------------------------- a realistic run
def metric_block(rng: np.random.Generator, first: int, n: int) -> np.ndarray:
    """n steps x 10 metrics of plausible training values (full-precision floats, as real metrics are)."""
    s = np.arange(first, first + n, dtype=np.float64)
    cols = [
        2.0 + 8.0 / np.sqrt(1.0 + s / 500.0) + rng.normal(0, 0.05, n),  # loss
        np.abs(rng.lognormal(-0.5, 0.4, n)),  # grad_norm
        6e-4 * np.minimum(1.0, (s + 1) / 2000.0) * np.cos(np.pi * s / (4 * max(first + n, 1))) ** 2,  # lr
        np.full(n, 65536.0),  # loss_scale
        rng.normal(1.2e5, 3e3, n),  # tokens_per_s
        rng.normal(0.2, 0.01, n),  # step_time
        1000.0 + s * 1e-3 + rng.normal(0, 0.1, n),  # param_norm
        np.abs(rng.normal(1e-3, 2e-4, n)),  # update_ratio
        rng.random(n),  # clip_frac
        rng.normal(41.0, 0.5, n),  # mem_gb
    ]
    return np.column_stack(cols)


def write_with_recorder(run_dir: Path, steps: int, block: int, seed: int = 0) -> None:
    """The real Recorder: run.log() per step, run.flush() every `block` steps (no timer flushes)."""
    from midflight import logbook

    rng = np.random.default_rng(seed)
    run = logbook.init(run_dir, name="bench-ingest", config={"bench": "ingest", "steps": steps}, flush_every=3600.0)
    log = run.log
    bar = progress(steps, f"write {steps:,} steps (Recorder)")
    chunk = max(block, 10_000 // block * block)  # generate values a few blocks at a time
    for first in range(0, steps, chunk):
        n = min(chunk, steps - first)
        vals = metric_block(rng, first, n).tolist()
        for j, row in enumerate(vals):
            log(dict(zip(NAMES, row)), step=first + j)
            if (j + 1) % block == 0:
                run.flush()
        bar.update(n)
    bar.close()
    run.finish()


def write_direct(run_dir: Path, steps: int, block: int, seed: int = 0) -> None:
    """The same records written straight from numpy (faster to generate; same JSON-lines format)."""
    from midflight import logbook
    from midflight.logbook.record import records

    rng = np.random.default_rng(seed)
    run = logbook.init(
        run_dir, name="bench-ingest", config={"bench": "ingest", "steps": steps}, flush_every=3600.0
    )  # header + open record, exactly as the Recorder writes them
    t0 = time.time()
    bar = progress(steps, f"write {steps:,} steps (direct)")
    with open(run.path, "ab") as f:
        for first in range(0, steps, block):
            n = min(block, steps - first)
            vals = metric_block(rng, first, n).tolist()
            rows = [[first + j, t0 + (first + j) * 0.2, *v] for j, v in enumerate(vals)]
            f.write(records.encode({"k": records.METRICS, "names": NAMES, "rows": rows}))
            bar.update(n)
    bar.close()
    run.finish()  # the close record


def log_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.rglob("*.jsonl"))


# ----------------------------------------------------------------- measurements
def time_ingest(run_dir: Path, store_path: Path, repeats: int) -> dict:
    """`repeats` times: fresh on-disk store, full ingest, re-ingest (nothing new), reopen + re-ingest."""
    from midflight.logbook.store import open_store
    from midflight.logbook.store.ingest import ingest

    full, again_s, reopen_s = [], [], []
    for _ in range(repeats):
        for p in (store_path, Path(str(store_path) + ".wal")):
            p.unlink(missing_ok=True)
        store = open_store(store_path)
        with Timer() as t_full:
            report = ingest(store, [run_dir], progress=True)
        with Timer() as t_again:
            again = ingest(store, [run_dir])
        rows = store.cursor().execute("SELECT count(*) FROM metrics").fetchone()[0]
        store.close()
        store = open_store(store_path)
        with Timer() as t_reopen:
            ingest(store, [run_dir])
        store.close()
        if report.malformed or rows != report.metric_points or again.metric_points:
            note(
                f"warning: malformed={report.malformed} rows={rows} points={report.metric_points} "
                f"re-ingested points={again.metric_points}"
            )
        full.append(t_full.s)
        again_s.append(t_again.s)
        reopen_s.append(t_reopen.s)
    return {
        "s": median(full),
        "s_min": min(full),
        "s_max": max(full),
        "points": report.metric_points,
        "bytes": report.bytes,
        "records": report.records,
        "again_s": median(again_s),
        "reopen_s": median(reopen_s),
        "store_mb": store_path.stat().st_size / 1e6,
    }


def warm_up(tmp: Path) -> None:
    """One tiny ingest first, so one-off imports (pandas via DuckDB's register, tqdm: ~0.3 s) are not timed."""
    import tqdm  # noqa: F401

    from midflight.logbook.store import open_store
    from midflight.logbook.store.ingest import ingest

    write_direct(tmp / "warm-up", 100, 10)
    store = open_store(None)
    ingest(store, [tmp / "warm-up"])
    store.close()


def time_parse_floor(run_dir: Path, repeats: int) -> float:
    """Seconds (median) to read every log line and parse it as ingest does (`records.decode`): the unavoidable part."""
    from midflight.logbook.record.records import decode

    times = []
    for _ in range(repeats):
        with Timer() as t:
            for path in run_dir.rglob("*.jsonl"):
                with open(path, "rb") as f:
                    for line in f:
                        decode(line)
        times.append(t.s)
    return median(times)


def time_insert_floor(points: int, tmp: Path, repeats: int) -> float:
    """Seconds (median) for DuckDB to INSERT `points` metric rows from a ready Arrow table (store-side floor)."""
    import pyarrow as pa

    from midflight.logbook.store import open_store

    n_steps = points // len(NAMES)
    ids = np.tile(np.arange(len(NAMES), dtype=np.int32), n_steps)
    table = pa.table(
        {
            "step": np.repeat(np.arange(n_steps, dtype=np.int64), len(NAMES)),
            "name": pa.DictionaryArray.from_arrays(ids, NAMES),
            "value": np.random.default_rng(1).random(ids.size),
            "wall_time": np.repeat(1.7e9 + np.arange(n_steps) * 0.2, len(NAMES)),
        }
    )
    path = tmp / "floor.duckdb"
    times = []
    for _ in range(repeats):
        for p in (path, Path(str(path) + ".wal")):
            p.unlink(missing_ok=True)
        store = open_store(path)
        cur = store.cursor()
        cur.register("_floor", table)
        with Timer() as t:
            cur.execute("BEGIN TRANSACTION")
            cur.execute("INSERT INTO metrics SELECT 'run', 'seg', 0, step, name::VARCHAR, value, wall_time FROM _floor")
            cur.execute("COMMIT")
        store.close()
        times.append(t.s)
    path.unlink(missing_ok=True)
    return median(times)


def profile_ingest(run_dir: Path, store_path: Path, top: int) -> str:
    """cProfile of one full ingest into a fresh store; returns the top functions by own and cumulative time."""
    from midflight.logbook.store import open_store
    from midflight.logbook.store.ingest import ingest

    for p in (store_path, Path(str(store_path) + ".wal")):
        p.unlink(missing_ok=True)
    store = open_store(store_path)
    prof = cProfile.Profile()
    prof.enable()
    ingest(store, [run_dir])
    prof.disable()
    store.close()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ----------------------------------------------------------------- main
def run_case(tmp: Path, label: str, writer: str, steps: int, block: int, repeats: int) -> dict:
    run_dir = tmp / label
    shutil.rmtree(run_dir, ignore_errors=True)
    write = write_with_recorder if writer == "recorder" else write_direct
    with Timer() as t_gen:
        write(run_dir, steps, block)
    size = log_bytes(run_dir)
    note(f"{label}: wrote {size / 1e6:.0f} MB in {t_gen.s:.1f} s; ingesting")
    res = time_ingest(run_dir, tmp / f"{label}.duckdb", repeats)
    note(f"{label}: ingest {res['s']:.2f} s; measuring the parse floor")
    res.update(
        label=label,
        writer=writer,
        steps=steps,
        block=block,
        gen_s=t_gen.s,
        size=size,
        parse_s=time_parse_floor(run_dir, repeats),
        run_dir=run_dir,
    )
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k steps (1M points) per case instead of 1M steps")
    ap.add_argument("--steps", type=int, help="steps per case (10 metrics each)")
    ap.add_argument(
        "--blocks",
        default="2500,5",
        help="rows per metrics record, one case each (default 2500,5: the 0.5 s flush at a 200 µs and a 100 ms step)",
    )
    ap.add_argument(
        "--writer",
        choices=["recorder", "direct"],
        default="recorder",
        help="who writes the logs (default: the real Recorder)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed ingests per case, fresh store each (median)")
    ap.add_argument("--profile", action="store_true", help="cProfile each case's ingest")
    ap.add_argument("--top", type=int, default=15, help="functions to show in the profile")
    ap.add_argument("--keep", action="store_true", help="keep the generated runs and stores")
    args = ap.parse_args(argv)
    steps = args.steps or (100_000 if args.quick else 1_000_000)
    blocks = [int(b) for b in args.blocks.split(",")]

    import duckdb
    import pyarrow

    from midflight import logbook

    print_header(
        "bench_ingest: event logs -> DuckDB store",
        machine_info(
            {
                "duckdb": duckdb.__version__,
                "pyarrow": pyarrow.__version__,
                "numpy": np.__version__,
                "logbook": Path(logbook.__file__).parent,
                "steps": steps,
                "metrics/step": len(NAMES),
                "writer": args.writer,
            }
        ),
    )
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-ingest-"))
    try:
        warm_up(tmp)
        cases = [run_case(tmp, f"b{b}", args.writer, steps, b, args.repeats) for b in blocks]
        note("measuring the insert floor")
        insert_s = time_insert_floor(cases[0]["points"], tmp, args.repeats)
        rows = []
        for c in cases:
            pps = c["points"] / c["s"]
            rows.append(
                [
                    f"ingest, {c['block']:,} rows/record",
                    c["points"],
                    c["size"] / 1e6,
                    c["records"],
                    c["s"],
                    f"{c['s_min']:.2f} .. {c['s_max']:.2f}",
                    pps,
                    c["size"] / 1e6 / c["s"],
                    f"{pps / GOAL_POINTS_PER_S:.2f}x",
                    c["again_s"] * 1e3,
                    c["reopen_s"] * 1e3,
                ]
            )
        for c in cases:
            rows.append(
                [
                    f"floor: read + parse (records.decode), {c['block']:,} rows/record",
                    c["points"],
                    c["size"] / 1e6,
                    c["records"],
                    c["parse_s"],
                    "-",
                    c["points"] / c["parse_s"],
                    c["size"] / 1e6 / c["parse_s"],
                    f"{c['points'] / c['parse_s'] / GOAL_POINTS_PER_S:.2f}x",
                    "-",
                    "-",
                ]
            )
        p = cases[0]["points"]
        rows.append(
            [
                "floor: DuckDB INSERT from Arrow",
                p,
                "-",
                "-",
                insert_s,
                "-",
                p / insert_s,
                "-",
                f"{p / insert_s / GOAL_POINTS_PER_S:.2f}x",
                "-",
                "-",
            ]
        )
        print_table(
            [
                "what",
                "points",
                "log MB",
                "records",
                "median s",
                "min .. max s",
                "points/s",
                "MB/s",
                "vs goal 2M/s",
                "re-ingest ms",
                "reopen+re-ingest ms",
            ],
            rows,
            title=f"Ingest of one rank's log, {steps:,} steps x {len(NAMES)} metrics, fresh on-disk store "
            f"each time; median of {args.repeats}",
        )
        gen = [[c["label"], c["writer"], c["block"], c["gen_s"], c["steps"] / c["gen_s"], c["store_mb"]] for c in cases]
        print_table(
            ["case", "writer", "rows/record", "write s", "steps/s written", "store MB"],
            gen,
            title="Generation (not part of the goal) and resulting store size",
        )
        if args.profile:
            for c in cases:
                note(f"profiling the ingest of {c['label']}")
                text = profile_ingest(c["run_dir"], tmp / "profile.duckdb", args.top)
                print(
                    f"cProfile of ingest, {c['block']:,} rows/record, {c['points']:,} points "
                    "(DuckDB's C++ time shows as ingest.py:flush's own time):"
                )
                print(text)
    finally:
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
