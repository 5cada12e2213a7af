"""A distributed engine reads the sealed Parquet of a fleet of runs, and agrees with DuckDB to the last bit.

The question (examples/fleet_query.py): per run and segment, loss points, mean and max loss, and the p95
of step_time_s over every rank and step. Dask (local threads, the same graph a dask.distributed cluster
runs) answers it from the Parquet files alone; DuckDB answers it over the same files and over
midflight's store. A fleet with one live (unsealed) segment checks that only sealed segments are in the
Parquet, and one slow rank per run checks that the answer depends on the data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dask.dataframe  # noqa: F401  requirements.txt installs it; CI must run this test, never skip it
import pandas as pd

from midflight import logbook
from midflight.logbook.record import layout
from midflight.logbook.store import sealed

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet_query.py"


def _example():
    spec = importlib.util.spec_from_file_location("fleet_query", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dask_over_the_fleet_parquet_equals_duckdb(tmp_path):
    ex = _example()
    runs = ex.write_demo_fleet(tmp_path / "fleet", runs=3, ranks=4, steps=240)
    live = tmp_path / "fleet" / "run-live"
    ex._record_rank(live, "seg-0", 0, 1, range(0, 60), None, slow=False)
    rank_log = layout.rank_file(live, "seg-0", 0)
    rank_log.write_bytes(b"".join(rank_log.read_bytes().splitlines(keepends=True)[:-1]))  # no close: still running

    store, report = logbook.open_run(tmp_path / "fleet")
    try:
        assert len(report.sealed) == 6 and ("run-live", "seg-0") not in report.sealed
        files = sealed.part_files(runs + [live])
        assert len(files) == 6
        by_dask = ex.normalise(ex.dask_fleet_stats(files))
        by_parquet = ex.normalise(sealed.fleet_stats(files=files))
        by_store = ex.normalise(sealed.fleet_stats(store=store))
    finally:
        store.close()

    assert list(zip(by_dask.run_id, by_dask.segment_id)) == [
        (f"run-{k}", f"seg-{s}") for k in range(3) for s in range(2)
    ]
    pd.testing.assert_frame_equal(by_dask, by_parquet, check_exact=False, rtol=1e-12)
    assert ("run-live", "seg-0") in set(zip(by_store.run_id, by_store.segment_id))  # the store has the live one too
    in_parquet = by_store[by_store.run_id != "run-live"].reset_index(drop=True)
    pd.testing.assert_frame_equal(by_dask, in_parquet, check_exact=False, rtol=1e-12)
    # the numbers mean something: 140 + 120 steps of loss per run; the slow rank of runs 1 and 2 lifts their p95
    assert by_dask["loss_points"].tolist() == [140, 120] * 3
    p95 = by_dask.set_index(["run_id", "segment_id"])["step_time_p95"]
    assert p95["run-0"].max() < 1.1 < p95["run-1"].min() and p95["run-2"].min() > 1.1


def test_the_example_runs_end_to_end(tmp_path):
    assert _example().main([str(tmp_path / "fleet"), "--demo", "2"]) == 0
