"""Sealed segments as Parquet: written once, read by every later reader instead of the logs, exactly the same data.

Real runs written by the Recorder, real DuckDB stores on disk, real reader subprocesses. The reference
is always a store built from the JSON logs alone (`ingest`, which does not seal); a store that took
sealed segments from their Parquet must equal it table by table (multiset comparison, NaN included).
"""

from __future__ import annotations

import json
import os
import shutil

import duckdb
import pyarrow.parquet as pq
import pytest

from midflight import logbook
from midflight.logbook.record import layout
from midflight.logbook.store import open_store, queries, sealed
from midflight.logbook.store.ingest import ingest

from .proc_helpers import STORE_TABLES, parse_log, python, store_snapshot_diff


def _record(run_dir, segment_id, rank, world, steps, *, resume_step=None, nan_at=None):
    saved = {v: os.environ.get(v) for v in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))  # the Recorder reads torchrun's variables
    try:
        run = logbook.init(run_dir, name="sealed", segment_id=segment_id, resume_step=resume_step, flush_every=60)
    finally:
        for v, old in saved.items():
            os.environ.pop(v) if old is None else os.environ.__setitem__(v, old)
    for s in steps:
        values = {"step_time_s": 1.0 + 0.01 * rank + 0.001 * (s % 7)}
        if rank == 0:
            values["loss"] = float("nan") if s == nan_at else 3.0 / (1 + s)
            values["lr"] = 1e-3
        run.log(values, step=s)
        if s % 40 == 0:
            run.event("checkpoint", step=s, path=f"ckpt/{s}")
            run.telemetry({"util": 90.0 - rank, "power_w": 300.0 + s}, device=f"gpu{rank}")
        if s % 50 == 49:
            run.flush()
    run.finish()


def _drop_close(path):
    """Cut the close record off a rank log: the segment is still running, or died without a word."""
    lines = path.read_bytes().splitlines(keepends=True)
    assert b'"k":"close"' in lines[-1].replace(b" ", b"")
    path.write_bytes(b"".join(lines[:-1]))


def _make_fleet(root):
    a, b = root / "run-a", root / "run-b"
    for rank in range(2):
        _record(a, "seg-0", rank, 2, range(0, 330), nan_at=100)
        _record(a, "seg-1", rank, 2, range(300, 620), resume_step=300)
    with open(layout.rank_file(a, "seg-1", 1), "ab") as f:
        f.write(b"this line is not a record\n")  # a malformed line in a sealed segment is kept as a problem
    logbook.annotate(a, step=120, text="loss went NaN", kind="note")
    _record(b, "seg-0", 0, 1, range(0, 200))
    _record(b, "seg-live", 0, 1, range(150, 260), resume_step=150)
    _drop_close(layout.rank_file(b, "seg-live", 0))
    return [a, b]


SEALED = [("run-a", "seg-0"), ("run-a", "seg-1"), ("run-b", "seg-0")]


@pytest.fixture()
def fleet(tmp_path):
    root = tmp_path / "fleet"
    runs = _make_fleet(root)
    ref = tmp_path / "ref.duckdb"
    with open_store(ref, fallback=False) as store:
        report = ingest(store, runs)  # the logs alone: no Parquet is read or written
        assert report.from_parquet == [] and report.sealed == []
    assert not (runs[0] / ".midflight").exists()
    return root, runs, ref


def _seal(root, tmp_path):
    store, report = logbook.open_run(root, store_path=tmp_path / "sealer.duckdb")
    store.close()
    return report


def test_a_store_that_reads_sealed_parquet_equals_one_built_from_the_logs(fleet, tmp_path):
    root, runs, ref = fleet
    report = _seal(root, tmp_path)
    assert sorted(report.sealed) == SEALED  # the live segment (no close record) is not sealed
    assert report.errors == []
    with open_store(tmp_path / "reader.duckdb", fallback=False) as store:
        again = ingest(store, runs)
        assert sorted(again.from_parquet) == SEALED
        live = parse_log(layout.rank_file(runs[1], "seg-live", 0))[0]
        # the only logs parsed: the live segment's and run-a's annotations (run-level, never sealed)
        assert (again.files, again.records) == (2, len(live) + 1)
        cur = store.cursor()
        assert cur.execute("SELECT count(*) FROM metrics WHERE isnan(value)").fetchone()[0] == 1
    diff = store_snapshot_diff(ref, tmp_path / "reader.duckdb", STORE_TABLES)
    assert all(only_a == only_b == 0 for _, only_a, only_b in diff.values()), diff
    assert diff["metrics"][0] == 330 * 4 + 320 * 4 + 200 * 3 + 110 * 3
    # the malformed line stays a reported problem, from the manifest
    with open_store(tmp_path / "reader.duckdb", fallback=False) as store:
        problems = queries.ingest_problems(store, "run-a")
        assert [(p["file"], p["malformed"]) for p in problems] == [("segments/seg-1/rank-00001.jsonl", 1)]
        assert "not a record" in problems[0]["examples"][0][2]


READER = """
    import json, sys, warnings
    from midflight import logbook
    from midflight.logbook.store import queries

    warnings.simplefilter("ignore")
    store, report = logbook.open_run(sys.argv[1])
    out = {"note": store.note, "from_parquet": sorted(map(list, getattr(report, "from_parquet", [])))}
    for run in ("run-a", "run-b"):
        s = queries.series(store, run, "loss", which="all")
        out[run] = [[r.segment_id, int(r.step), None if r.value != r.value else r.value] for r in s.itertuples()]
    print("answer", json.dumps(out, sort_keys=True), flush=True)
"""


def _answer(store):
    out = {}
    for run in ("run-a", "run-b"):
        s = queries.series(store, run, "loss", which="all")
        out[run] = [[r.segment_id, int(r.step), None if r.value != r.value else r.value] for r in s.itertuples()]
    return out


def test_concurrent_readers_take_sealed_segments_from_parquet_not_from_the_logs(fleet, tmp_path):
    root, runs, _ = fleet
    owner, report = logbook.open_run(root)  # the folder's own store, held read-write for the whole test
    try:
        assert sorted(report.sealed) == SEALED
        expected = _answer(owner)
        assert len(expected["run-a"]) == 330 + 320 and len(expected["run-b"]) == 200 + 110
        # Prove the readers do not parse the sealed logs: blank every byte of them, keeping their sizes
        # (the logs are append-only, so a sealed log's size is its identity). A reader that re-read
        # them would find only malformed lines and lose every sealed point.
        for run, seg in SEALED:
            for path in (root / run / "segments" / seg).glob("rank-*.jsonl"):
                data = path.read_bytes()
                path.write_bytes(bytes(b if b == 0x0A else 0x78 for b in data))
                os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
        readers = [python(READER, root) for _ in range(2)]  # two at once, each with a private store
        answers = [json.loads(r.expect("answer", timeout=120).split(" ", 1)[1]) for r in readers]
        for r in readers:
            assert r.wait() == 0, r.stderr
        for got in answers:
            assert "held by another process" in got.pop("note")
            assert got.pop("from_parquet") == [list(k) for k in SEALED]
            assert got == expected
    finally:
        owner.close()


def test_a_segment_that_grew_after_sealing_is_read_from_its_logs_and_sealed_again(fleet, tmp_path):
    root, runs, _ = fleet
    _seal(root, tmp_path)
    # a relaunch with an identical torchrun environment appends to the same segment's log
    _record(runs[1], "seg-0", 0, 1, range(200, 230))
    with open_store(None) as store:
        report = ingest(store, runs)
        assert ("run-b", "seg-0") not in report.from_parquet and ("run-a", "seg-0") in report.from_parquet
        assert queries.series(store, "run-b", "loss", which="all")["step"].max() == 259  # the live segment's
        steps = queries.series(store, "run-b", "loss", which="all").query("segment_id == 'seg-0'")["step"]
        assert steps.max() == 229
    report = _seal(root, tmp_path)
    assert report.sealed == [("run-b", "seg-0")]  # written again, with the appended steps
    with open_store(None) as store:
        report = ingest(store, runs)
        assert sorted(report.from_parquet) == SEALED
        steps = queries.series(store, "run-b", "loss", which="all").query("segment_id == 'seg-0'")["step"]
        assert steps.max() == 229 and len(steps) == 230


def test_unusable_parquet_or_manifest_falls_back_to_the_logs(fleet, tmp_path):
    root, runs, ref = fleet
    _seal(root, tmp_path)
    base = root / "run-a" / ".midflight" / "parquet" / "v1"
    # a cut part file: DuckDB cannot read it; reported, and the segment's logs are read instead
    part = base / "table=metrics" / "segment=seg-0" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    # another segment's part in place of this one's: its row count disagrees with the manifest
    events = "table=events/segment={}/part-0.parquet"
    shutil.copy(base / events.format("seg-0"), base / events.format("seg-1"))
    # a hostile manifest: the wrong types, a path outside the segment
    manifest = root / "run-b" / ".midflight" / "parquet" / "v1" / "_sealed" / "seg-0.json"
    data = json.loads(manifest.read_text())
    data["files"][0]["path"] = "../../etc/passwd"
    manifest.write_text(json.dumps(data))
    with open_store(tmp_path / "fallback.duckdb", fallback=False) as store:
        report = ingest(store, runs)
        assert report.from_parquet == []
        problems = sorted(e.split("segment ")[1].split(" ")[0] for e in report.errors if "not usable" in e)
        assert problems == ["seg-0", "seg-1"], report.errors  # the hostile manifest is ignored, not reported
    diff = store_snapshot_diff(ref, tmp_path / "fallback.duckdb", STORE_TABLES)
    assert all(only_a == only_b == 0 for _, only_a, only_b in diff.values()), diff


def test_the_layout_is_the_documented_interface(fleet, tmp_path):
    root, runs, _ = fleet
    _seal(root, tmp_path)
    base = root / "run-a" / ".midflight" / "parquet" / "v1"
    kinds = sorted(p.name for p in base.iterdir())
    assert kinds == [
        "_sealed",
        "table=events",
        "table=metric_tiles",
        "table=metrics",
        "table=rank_logs",
        "table=segments",
        "table=telemetry",
        "table=telemetry_tiles",
    ]
    assert not [p for p in root.rglob("*.tmp")]  # every temporary file was renamed into place
    metrics = base / "table=metrics" / "segment=seg-1" / "part-0.parquet"
    f = pq.ParquetFile(metrics)
    assert f.schema_arrow.metadata[b"midflight.format"] == b"1"
    assert {str(t) for t in f.schema_arrow.types} >= {"string", "int32", "int64", "double"}
    assert f.schema_arrow.names == ["run_id", "segment_id", "rank", "step", "name", "value", "wall_time"]
    meta = f.metadata
    assert all(
        meta.row_group(g).column(c).compression == "ZSTD"
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    )
    table = f.read().to_pandas()
    assert table.equals(table.sort_values(["name", "rank", "step", "wall_time"], ignore_index=True))
    # Hive partitioning: DuckDB (and Spark, Dask, pyarrow) derive `segment` from the directory names
    con = duckdb.connect()
    rows = con.execute(
        "SELECT DISTINCT segment::VARCHAR, segment_id FROM read_parquet(?, hive_partitioning = true) ORDER BY 1",
        [str(base / "table=metrics" / "*" / "*.parquet")],
    ).fetchall()
    assert rows == [("seg-0", "seg-0"), ("seg-1", "seg-1")]
    # no partition key shadows a column: the events' own `kind` survives a Hive-partitioned read
    kinds = con.execute(
        "SELECT DISTINCT kind FROM read_parquet(?, hive_partitioning = true)",
        [str(base / "table=events" / "*" / "*.parquet")],
    ).fetchall()
    assert kinds == [("checkpoint",)]
    manifest = json.loads((base / "_sealed" / "seg-1.json").read_text())
    assert manifest["format"] == 1 and manifest["parts"]["metrics"]["rows"] == f.metadata.num_rows
    assert [x["path"] for x in manifest["files"]] == [
        "segments/seg-1/rank-00000.jsonl",
        "segments/seg-1/rank-00001.jsonl",
    ]


def test_segment_ids_that_differ_only_where_sql_like_has_a_wildcard(tmp_path):
    """'_' matches any character in LIKE: segment a_b must not take in the files of segment a-b."""
    run_dir = tmp_path / "runs" / "run"
    _record(run_dir, "a_b", 0, 1, range(0, 120))
    _record(run_dir, "a-b", 0, 1, range(100, 180), resume_step=100)
    _drop_close(layout.rank_file(run_dir, "a-b", 0))  # a-b still running: not sealed
    report = _seal(run_dir, tmp_path)
    assert report.sealed == [("run", "a_b")]
    manifest = json.loads((run_dir / ".midflight/parquet/v1/_sealed/a_b.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["segments/a_b/rank-00000.jsonl"]
    with open_store(None) as store:
        assert ingest(store, [run_dir]).from_parquet == [("run", "a_b")]
        loss = queries.series(store, "run", "loss", which="all")
        assert sorted(loss.groupby("segment_id").size().items()) == [("a-b", 80), ("a_b", 120)]


def test_a_follower_pass_with_nothing_new_neither_seals_nor_reads_manifests(fleet, tmp_path, monkeypatch):
    """The Parquet side of an ingest pass costs nothing when no log changed (a dashboard follows every
    second): no manifest is read and nothing is sealed again. A store's first pass over a run still looks at
    every segment, so it seals what an earlier process left unsealed."""
    root, runs, _ = fleet
    with open_store(None) as store:
        first = ingest(store, runs, seal=True)  # the first pass: every sealed segment is written
        assert sorted(first.sealed) == SEALED
        for run in runs:  # remove what it wrote: a pass that looked would write it again
            shutil.rmtree(run / ".midflight")
        calls = []
        for name in ("read_manifest", "sealed_segments"):  # count the real functions' calls
            real = getattr(sealed, name)
            monkeypatch.setattr(sealed, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
        again = ingest(store, runs, seal=True)
        assert again.sealed == [] and again.files == 0 and again.errors == []
        assert calls == []  # no manifest read, no sealed-segment query: the pass found nothing new
        assert not (runs[0] / ".midflight").exists()
        _record(runs[1], "seg-0", 0, 1, range(200, 210))  # one segment's log grows: that segment alone
        grown = ingest(store, runs, seal=True)
        assert grown.sealed == [("run-b", "seg-0")] and not (runs[0] / ".midflight").exists()
    with open_store(None) as store:  # a new store's first pass seals the rest
        assert sorted(ingest(store, runs, seal=True).sealed) == [("run-a", "seg-0"), ("run-a", "seg-1")]
