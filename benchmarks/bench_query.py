"""How fast does a 10M-point curve come back for a chart? (goal: <= 100 ms for 2,000 M4 buckets)

A loss chart of a long run asks `queries.series(store, run, "loss", buckets=2000)`:
M4 downsampling (first, last, min, max per bucket, NaNs kept) of every point in
the range. This script builds an on-disk store through the real ingest path (the
Recorder's JSON-lines format, ingested by `logbook.store.ingest`) holding one run with
`loss`, `grad_norm` and `lr` at every step (so the filter on name matters), with a
single spike (1e6) and a single NaN injected into `loss` at random steps, then
times, warm, median of several repeats:

  downsampled   series(..., buckets=2000) over all N points           (the goal)
  zoom          series(..., buckets=2000, x_range=1M steps)           (M4 on a slice)
  raw           series(..., x_range=10k steps)                        (full resolution)
  baseline      SELECT step, value FROM metrics WHERE run_id=? AND name=?  (all N points)

plus a breakdown of the downsampled query (lineage lookup, count pass, M4 pass),
and checks that the spike and the NaN survive downsampling. `--explain` prints
DuckDB's profile of the M4 query.

Not a pass/fail test: docs/benchmarks.md interprets the table.

    python benchmarks/bench_query.py            # 10M steps (30M rows in the store; about 1 minute)
    python benchmarks/bench_query.py --quick    # 1M steps
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import Timer, machine_info, median, note, print_header, print_table, progress  # noqa: E402

NAMES = ["loss", "grad_norm", "lr"]
BUCKETS = 2000
GOAL_MS = 100.0
BLOCK = 10_000  # rows per metrics record when writing directly


# ----------------------------------------------------------------- the store
def loss_block(rng: np.random.Generator, first: int, n: int) -> np.ndarray:
    s = np.arange(first, first + n, dtype=np.float64)
    return np.column_stack(
        [
            2.0 + 8.0 / np.sqrt(1.0 + s / 5000.0) + rng.normal(0, 0.05, n),  # loss
            np.abs(rng.lognormal(-0.5, 0.4, n)),  # grad_norm
            6e-4 * np.minimum(1.0, (s + 1) / 2000.0),  # lr
        ]
    )


def write_run(run_dir: Path, steps: int, spike_step: int, nan_step: int, writer: str, seed: int = 0) -> None:
    """One rank's log in the Recorder's format; `loss` is 1e6 at spike_step and NaN at nan_step."""
    from midflight import logbook
    from midflight.logbook.record import records

    rng = np.random.default_rng(seed)
    run = logbook.init(run_dir, name="bench-query", config={"bench": "query"}, flush_every=3600.0)
    t0 = time.time()
    bar = progress(steps, f"write {steps:,} steps ({writer})")
    f = open(run.path, "ab") if writer == "direct" else None
    try:
        for first in range(0, steps, BLOCK):
            n = min(BLOCK, steps - first)
            vals = loss_block(rng, first, n)
            for s, v in ((spike_step, 1e6), (nan_step, float("nan"))):
                if first <= s < first + n:
                    vals[s - first, 0] = v
            rows = vals.tolist()
            if f is not None:
                f.write(
                    records.encode(
                        {
                            "k": records.METRICS,
                            "names": NAMES,
                            "rows": [[first + j, t0 + (first + j) * 0.2, *r] for j, r in enumerate(rows)],
                        }
                    )
                )
            else:
                for j, r in enumerate(rows):
                    run.log(dict(zip(NAMES, r)), step=first + j)
                run.flush()
            bar.update(n)
    finally:
        if f is not None:
            f.close()
        bar.close()
    run.finish()


def build_store(tmp: Path, steps: int, writer: str, seed: int = 0):
    """Returns (store, run_id, spike_step, nan_step, write seconds, ingest seconds, metric points)."""
    from midflight.logbook.store import open_store
    from midflight.logbook.store.ingest import ingest

    rng = np.random.default_rng(seed + 1)
    spike_step, nan_step = (int(x) for x in rng.choice(np.arange(1, steps - 1), size=2, replace=False))
    run_dir = tmp / "run"
    with Timer() as t_write:
        write_run(run_dir, steps, spike_step, nan_step, writer, seed)
    store = open_store(tmp / "store.duckdb")
    with Timer() as t_ingest:
        report = ingest(store, [run_dir], progress=True)
    note(f"built store: {report.describe()} in {t_ingest.s:.1f} s (writing took {t_write.s:.1f} s)")
    return store, run_dir.name, spike_step, nan_step, t_write.s, t_ingest.s, report.metric_points


# ----------------------------------------------------------------- timing
def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Warm once, then `repeats` timed calls; returns (ms per call, last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        with Timer() as t:
            result = fn()
        times.append(t.ns / 1e6)
    return times, result


def baseline_fetch(store, run: str, name: str):
    """The plainest possible read of one metric: every point, no ordering, no downsampling."""
    return (
        store.cursor()
        .execute("SELECT step, value FROM metrics WHERE run_id = ? AND name = ?", [run, name])
        .fetchnumpy()
    )


def raw_m4(store, run: str):
    """M4 straight over the raw rows: what the tile path replaces (uses queries' private helper, read-only)."""
    from midflight.logbook.store import downsample, queries

    sql, params = queries._series_sql(store, run, "loss", "step", 0, "effective", None)
    cur = store.cursor()
    n, lo, hi = cur.execute(f"SELECT count(*), min(x), max(x) FROM ({sql})", params).fetchone()
    return downsample.m4(cur, sql, params, lo, (hi - lo) / BUCKETS, BUCKETS)


def breakdown(store, run: str, repeats: int) -> list[list]:
    """The tile path against M4 over the raw rows, same series, same bucket count."""
    from midflight.logbook.store import queries

    stages = [
        ("lineage lookup (effective_ranges)", lambda: queries.effective_ranges(store, run)),
        ("M4 from ingest-time tiles (what series() does)", lambda: queries.series(store, run, "loss", buckets=BUCKETS)),
        ("M4 over the raw rows (count pass + aggregate)", lambda: raw_m4(store, run)),
    ]
    rows = []
    for label, fn in stages:
        times, _ = timed(fn, repeats)
        rows.append([label, median(times), min(times), max(times)])
    return rows


def explain_m4(store, run: str) -> str:
    """DuckDB's own profile of the downsampled query (tile path)."""
    from midflight.logbook.store import queries

    cur = store.cursor()
    out = Path(tempfile.mkdtemp(prefix="mf-explain-")) / "profile.txt"
    cur.execute("PRAGMA enable_profiling = 'query_tree'")
    cur.execute(f"PRAGMA profiling_output = '{out}'")
    queries.series(store, run, "loss", buckets=BUCKETS)
    cur.execute("PRAGMA disable_profiling")
    return out.read_text() if out.exists() else "(no profile written)"


# ----------------------------------------------------------------- checks
def has_point(df, step: int, value: float) -> bool:
    rows = df[df["step"] == step]
    if value != value:
        return bool(rows["value"].isna().any())
    return bool((rows["value"] == value).any())


def checks(down, zoom, raw, spike_step: int, nan_step: int, zoom_range, raw_range) -> list[list]:
    out = [
        ["downsampled: spike 1e6 at its step", f"step {spike_step:,}", has_point(down, spike_step, 1e6)],
        ["downsampled: NaN at its step", f"step {nan_step:,}", has_point(down, nan_step, float("nan"))],
        [
            "downsampled: at most 4 rows per bucket (+NaN rows)",
            f"{len(down):,} rows",
            len(down) <= 4 * BUCKETS + int(down["value"].isna().sum()),
        ],
        ["downsampled: sorted by x", "", bool(down["x"].is_monotonic_increasing)],
        ["zoom: spike kept", f"steps {zoom_range[0]:,}..{zoom_range[1]:,}", has_point(zoom, spike_step, 1e6)],
        [
            "raw: every step of the range",
            f"{len(raw):,} rows",
            raw["step"].tolist() == list(range(raw_range[0], raw_range[1] + 1)),
        ],
        ["raw: NaN kept", f"steps {raw_range[0]:,}..{raw_range[1]:,}", has_point(raw, nan_step, float("nan"))],
    ]
    return [[what, where, "yes" if ok else "NO"] for what, where, ok in out]


def centred(step: int, width: int, steps: int) -> tuple[int, int]:
    lo = min(max(step - width // 2, 0), max(steps - width, 0))
    return lo, lo + width - 1


# ----------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1M steps instead of 10M")
    ap.add_argument("--steps", type=int, help="steps in the run (each logs loss, grad_norm and lr)")
    ap.add_argument("--repeats", type=int, help="timed repeats per query after one warm-up (default 7; quick 5)")
    ap.add_argument(
        "--writer",
        choices=["direct", "recorder"],
        default="direct",
        help="write the log straight from numpy (default, fast) or through the real Recorder",
    )
    ap.add_argument("--explain", action="store_true", help="print DuckDB's profile of the M4 query")
    ap.add_argument("--keep", action="store_true", help="keep the generated run and store")
    args = ap.parse_args(argv)
    steps = args.steps or (1_000_000 if args.quick else 10_000_000)
    repeats = args.repeats or (5 if args.quick else 7)

    import duckdb

    from midflight import logbook
    from midflight.logbook.store import queries

    print_header(
        "bench_query: downsampled series from the store",
        machine_info(
            {
                "duckdb": duckdb.__version__,
                "logbook": Path(logbook.__file__).parent,
                "steps": steps,
                "metrics/step": len(NAMES),
                "buckets": BUCKETS,
                "repeats": repeats,
                "writer": args.writer,
            }
        ),
    )
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-query-"))
    try:
        store, run, spike_step, nan_step, write_s, ingest_s, points = build_store(tmp, steps, args.writer)
        zoom_w = min(1_000_000, steps // 10)
        zoom_range, raw_range = centred(spike_step, zoom_w, steps), centred(nan_step, 10_000, steps)
        cases = [
            (
                f"downsampled: series(buckets={BUCKETS}), all {steps:,} points",
                lambda: queries.series(store, run, "loss", buckets=BUCKETS),
            ),
            (
                f"zoom: series(buckets={BUCKETS}, x_range={zoom_w:,} steps)",
                lambda: queries.series(store, run, "loss", buckets=BUCKETS, x_range=zoom_range),
            ),
            (
                "raw: series(x_range=10,000 steps), full resolution",
                lambda: queries.series(store, run, "loss", x_range=raw_range),
            ),
            (
                f"baseline: SELECT step, value WHERE name=? (all {steps:,} points)",
                lambda: baseline_fetch(store, run, "loss"),
            ),
        ]
        results, outputs = [], []
        bar = progress(len(cases), "queries")
        for label, fn in cases:
            times, out = timed(fn, repeats)
            results.append((label, times, out))
            outputs.append(out)
            bar.update(1)
        bar.close()
        base_ms = median(results[-1][1])
        rows = []
        for label, times, out in results:
            n_out = len(next(iter(out.values()))) if isinstance(out, dict) else len(out)  # fetchnumpy: a dict
            rows.append([label, median(times), min(times), max(times), n_out, f"{median(times) / base_ms:.2f}x"])
        print_table(
            ["query (warm)", "median ms", "min ms", "max ms", "rows out", "vs baseline"],
            rows,
            title=f"Queries on one run of {steps:,} steps x {len(NAMES)} metrics ({points:,} rows in "
            f"the store); goal: downsampled <= {GOAL_MS:.0f} ms",
        )
        print_table(
            ["stage of the downsampled query", "median ms", "min ms", "max ms"],
            breakdown(store, run, repeats),
            title="Where the downsampled query's time goes",
        )
        print_table(
            ["check", "where", "ok"],
            checks(outputs[0], outputs[1], outputs[2], spike_step, nan_step, zoom_range, raw_range),
            title="Spike and NaN survive downsampling",
        )
        print_table(
            ["step", "seconds", "rate"],
            [
                ["write the log", write_s, f"{steps / write_s:,.0f} steps/s"],
                ["ingest into the store", ingest_s, f"{points / ingest_s:,.0f} points/s"],
            ],
            title="Building the store (not part of the goal)",
        )
        if args.explain:
            print("DuckDB profile of the M4 query:")
            print(explain_m4(store, run))
        store.close()
    finally:
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
