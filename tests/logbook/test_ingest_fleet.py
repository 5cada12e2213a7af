"""Ingest at fleet shape: many rank files per transaction, metrics records checked per name set, and what
raw telemetry costs in the store.

Why: a 992-rank run is a thousand small rank files of one-step metrics records plus node telemetry. Ingest
now commits many files' chunks in one transaction, checks a chunk's metrics records together (falling back
to one at a time to find a bad line), and stores telemetry as series blocks (schema 5). Each of these must
give exactly what the one-file-one-record path gave: same rows, same bookkeeping, same rejected lines.
"""

from __future__ import annotations

import duckdb
import orjson

from benchmarks.fleet_run import write_fleet_run
from midflight.logbook.record import layout, records
from midflight.logbook.store import open_store, queries
from midflight.logbook.store.ingest import ingest

from .proc_helpers import STORE_TABLES, store_snapshot_diff


def _append(path, *lines: bytes) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(lines))


def test_rank_files_sharing_a_transaction_store_what_one_file_per_transaction_stores(tmp_path):
    run = tmp_path / "fleet"
    truth = write_fleet_run(run, nodes=3, steps=40, synchronous=True, plant=("straggler", "silent_gpu", "spike"))
    bad = layout.rank_file(run, truth["segment"], 5)
    _append(bad, b'{"k":"metrics","names":["step_time_s"],"rows":[[41,1.0,"slow"]]}\n', b"not json\n")
    # one relaunch appended to rank 9's file: a second open and close; the last of each must win
    again = layout.rank_file(run, truth["segment"], 9)
    _append(again, records.encode({"k": "open", "rank": 9, "world": 24, "host": "other", "pid": 7, "t": 2e9}))
    _append(again, records.encode({"k": "close", "t": 2.1e9, "reason": "crashed", "exit_code": 3, "last_step": 77}))
    shared, single = tmp_path / "shared.duckdb", tmp_path / "single.duckdb"
    with open_store(shared, fallback=False) as store:  # every file's chunk in one transaction
        report = ingest(store, [run])
    with open_store(single, fallback=False) as store:  # chunks of 4 KiB: one file (or less) per transaction
        small = ingest(store, [run], chunk_bytes=4096)
        logs = store.cursor().execute(
            "SELECT host, pid, end_reason, exit_code, last_step FROM rank_logs WHERE rank = 9"
        )
        assert logs.fetchone() == ("other", 7, "crashed", 3, 77)
    assert (report.malformed, report.metric_points, report.telemetry_points) == (
        small.malformed,
        small.metric_points,
        small.telemetry_points,
    )
    assert report.malformed == 2 and report.telemetry_points > 0
    tables = tuple(t for t in dict.fromkeys(STORE_TABLES + ("telemetry",)) if not t.endswith("_tiles"))
    diff = store_snapshot_diff(shared, single, tables)
    assert {t: d for t, d in diff.items() if d[1] or d[2]} == {}
    # Tiles: the same counts and candidates; of several samples with the lowest (highest) value, either
    # may be a tile's p_min (p_max), as a merge of two chunks' tiles always allowed, so compare the values
    con = duckdb.connect()
    con.execute(f"ATTACH '{shared}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{single}' AS b (READ_ONLY)")
    for table in ("metric_tiles", "telemetry_tiles"):
        cols = "* EXCLUDE (p_min, p_max), p_min.value, p_max.value"
        (n,) = con.execute(
            f"SELECT count(*) FROM (SELECT {cols} FROM a.{table} EXCEPT ALL SELECT {cols} FROM b.{table})"
        ).fetchone()
        assert n == 0, table
    con.close()
    assert diff["telemetry"][0] == report.telemetry_points and diff["metrics"][0] == report.metric_points


def test_a_bad_metrics_record_among_many_of_its_names_rejects_only_its_line(tmp_path):
    path = layout.rank_file(tmp_path / "r", "seg", 0)
    path.parent.mkdir(parents=True)
    lines = [records.encode({"k": "open", "rank": 0, "world": 1, "t": 1.0})]
    bad = {  # line number -> the record
        11: {"k": "metrics", "names": ["a", "b"], "rows": [[10, 1.0, 1.0, "x"]]},  # text value
        21: {"k": "metrics", "names": ["a", "b"], "rows": [[20, 1.0, 1.0]]},  # a value short
        31: {"k": "metrics", "names": ["a", "b"], "rows": []},  # no rows
        41: {"k": "metrics", "names": ["a", "b"], "rows": [[-1, 1.0, 1.0, 2.0]]},  # a step below 0
    }
    for i in range(1, 60):
        rec = bad.get(i + 1, {"k": "metrics", "names": ["a", "b"], "rows": [[i, float(i), i * 0.5, i * 2.0]]})
        lines.append(orjson.dumps(rec) + b"\n")
    lines.append(orjson.dumps({"k": "metrics", "names": ["a", "b"], "rows": [[2**62 + 1, 9.0, 7.0, 8.0]]}) + b"\n")
    path.write_bytes(b"".join(lines))
    store = open_store(None)
    report = ingest(store, [tmp_path / "r"])
    assert report.malformed == 4
    assert [e[2] for e in report.examples] == sorted(bad)  # each at its own line
    steps = sorted(queries.series(store, "r", "a", which="all").step)
    assert steps == sorted(set(range(1, 60)) - {10, 20, 30, 40}) + [2**62 + 1]  # exact above 2**53


def test_raw_telemetry_costs_a_few_bytes_a_point_in_the_store(tmp_path):
    """The node records of bench_telemetry (8 GPUs x 6 NVML names at 1 Hz, values at trainer.telemetry's
    DECIMALS): stored as series blocks they take ~5 B a point (the exact mJ energy counter is most of it)."""
    from benchmarks.bench_telemetry import GPUS, NAMES, write

    run = tmp_path / "bench"
    write(run, nodes=2, ticks=3600, compact=True)
    points = 2 * GPUS * len(NAMES) * 3600
    with open_store(tmp_path / "s.duckdb", fallback=False) as store:
        assert ingest(store, [run]).telemetry_points == points
        cur = store.cursor()
        cur.execute("CHECKPOINT")
        (block,) = cur.execute("SELECT block_size FROM pragma_database_size()").fetchone()
        raw = (
            "telemetry_blocks"
            if "telemetry_blocks" in {t for (t,) in cur.execute("SHOW TABLES").fetchall()}
            else "telemetry"
        )
        (blocks,) = cur.execute(f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{raw}')").fetchone()
    assert blocks * block / points < 6.0  # narrow rows (schema 4) took ~10 B/point here
