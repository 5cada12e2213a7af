"""Exactly-once ingest: SIGKILL the ingester mid-way, again and again; the end result equals one clean ingest.

The run has ~310k metric points in three rank logs (two segments, two ranks), events and annotations.
The killed ingester is a real process using a 64 KiB chunk, so the ~4 MB of logs take ~60 transactions
and a random kill lands between, or inside, any of them. Between kills the test only reads the store
read-only, so recovering from the WAL a kill left behind is the next ingester's job.
"""

import os
import random
import shutil
import time

import duckdb
import pytest

from midflight import logbook
from midflight.logbook.record import layout
from midflight.logbook.store import open_store
from midflight.logbook.store.ingest import ingest

from .proc_helpers import (
    STORE_TABLES,
    cli,
    duplicate_metric_keys,
    metric_points,
    parse_bytes,
    parse_log,
    python,
    store_snapshot_diff,
)

CHUNK = 64 * 1024

INGESTER = """
    import sys
    from midflight.logbook.record import records
    from midflight.logbook.store.ingest import ingest
    from midflight.logbook.store import open_store

    read = records.read_complete

    def reading(path, offset, limit):  # observation only: every read after the first follows a commit
        print("read", offset, flush=True)
        return read(path, offset, limit)

    records.read_complete = reading
    store = open_store(sys.argv[2], fallback=False)
    print("ready", flush=True)
    report = ingest(store, [sys.argv[1]], chunk_bytes=int(sys.argv[3]))
    store.close()
    print("done", report.records, report.malformed, flush=True)
"""


def _record(run_dir, *, segment_id, steps, names, rank=0, resume_step=None, events_every=100):
    """Write one rank's log with the Recorder: ~50 steps per line, like a real run flushing twice a second."""
    env = {"RANK": str(rank), "WORLD_SIZE": "2" if rank else "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the Recorder reads its rank from torchrun's variables
    try:
        run = logbook.init(
            run_dir, name="big", segment_id=segment_id, resume_step=resume_step, config={"lr": 3e-4}, flush_every=60
        )
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    for s in steps:
        run.log({n: s * 0.001 + j + rank for j, n in enumerate(names)}, step=s)
        if s % events_every == 0:
            run.event("checkpoint", step=s, path=f"ckpt/{s}")
        if s % 50 == 49:
            run.flush()
    run.finish()


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("exactly_once") / "run"
    names10 = [f"metric/{j}" for j in range(10)]
    _record(run_dir, segment_id="seg-a", steps=range(15000), names=names10)
    _record(run_dir, segment_id="seg-a", steps=range(15000), names=names10[:4], rank=1)
    _record(run_dir, segment_id="seg-b", steps=range(10001, 20000), names=names10, resume_step=10000)
    logbook.annotate(run_dir, step=9000, text="loss spike", kind="note")
    logbook.annotate(run_dir, step=12000, text="lr lowered", kind="note")
    points = sum(
        len(metric_points(parse_log(p)[0])) for p in layout.run_files(run_dir)[1] if layout.rank_of(p) is not None
    )
    assert points == 15000 * 14 + 9999 * 10
    return run_dir


@pytest.fixture(scope="module")
def clean_store(big_run, tmp_path_factory):
    """The reference: one uninterrupted in-process ingest (default chunk size) into a fresh store."""
    path = tmp_path_factory.mktemp("clean") / "clean.duckdb"
    with open_store(path, fallback=False) as store:
        t0 = time.monotonic()
        report = ingest(store, [big_run])
        elapsed = time.monotonic() - t0
        cur = store.cursor()
        assert report.malformed == 0
        assert cur.execute("SELECT count(*) FROM metrics").fetchone()[0] == report.metric_points == 309990
        assert duplicate_metric_keys(cur) == 0
    return path, elapsed


def _assert_same_as_clean(path, clean):
    diff = store_snapshot_diff(path, clean, STORE_TABLES)
    assert all(only_a == only_b == 0 for _, only_a, only_b in diff.values()), diff
    assert diff["metrics"][0] == 309990 and diff["events"][0] == 150 + 150 + 99 and diff["annotation_ops"][0] == 2


def _committed_state(path):
    """After a kill: per log file, the committed offset, and the metric rows per rank log.

    Read-only: DuckDB replays the WAL in memory and leaves the files as the kill left them.
    """
    con = duckdb.connect(str(path), read_only=True)
    try:
        offsets = dict(con.execute("SELECT rel_path, byte_offset FROM ingest_files").fetchall())
        rows = {
            (seg, rank): n
            for seg, rank, n in con.execute("SELECT segment_id, rank, count(*) FROM metrics GROUP BY ALL").fetchall()
        }
        dups = duplicate_metric_keys(con)
    finally:
        con.close()
    return offsets, rows, dups


def _points_before(path, offset):
    """Metric points in the lines of `path` before `offset`, which must sit on a line boundary."""
    recs, bad, tail = parse_bytes(path.read_bytes()[:offset])
    assert bad == 0 and tail == b"", f"committed offset {offset} of {path.name} is not on a line boundary"
    return len(metric_points(recs))


def test_sigkilled_ingest_resumes_to_exactly_the_clean_result(big_run, clean_store, tmp_path):
    clean, clean_seconds = clean_store
    path = tmp_path / "store.duckdb"
    rng = random.Random(11)
    logs = layout.run_files(big_run)[1]
    total = sum(p.stat().st_size for p in logs)
    kills = progressed = partial = 0
    prev_done = 0
    for _ in range(8):
        proc = python(INGESTER, big_run, path, CHUNK)
        try:
            proc.expect("ready", timeout=60)
            # Kill at a random point of the work, not of the clock: after 1 to 3 commits of this process
            # (each read after the first follows one), somewhere inside the next chunk's parse, insert and
            # commit. A fixed delay measured nothing on a slow or busy machine: 0.1-0.4 s after "ready"
            # often came before the first commit, and the test failed for want of progress.
            for _ in range(rng.randint(2, 4)):
                proc.expect("read", timeout=120)
            time.sleep(rng.uniform(0.0, 0.3))
            kills += proc.sigkill()
        finally:
            proc.close()
        offsets, rows, dups = _committed_state(path)
        assert dups == 0
        done = sum(offsets.values())
        assert done >= prev_done  # a commit is never undone
        progressed += done > prev_done
        partial += 0 < done < total
        prev_done = done
        # The rows of a file and its offset were committed together: rows == points in the lines before it.
        for p in logs:
            if layout.rank_of(p) is not None:
                rel = p.relative_to(big_run).as_posix()
                expected = _points_before(p, offsets.get(rel, 0))
                assert rows.get((p.parent.name, layout.rank_of(p)), 0) == expected, (rel, offsets.get(rel))
    assert kills >= 5, f"only {kills} of 8 ingests were still running when killed"
    assert progressed >= 4 and partial >= 4, (progressed, partial)

    out = cli("ingest", big_run, "--store", path, "-q")  # the user finishes the job
    assert out.returncode == 0, out.stderr
    assert "malformed" not in out.stdout
    _assert_same_as_clean(path, clean)
    print(f"{kills} kills, {progressed} made progress, {partial} left it part-done; clean {clean_seconds:.2f}s")


def test_ingest_twice_and_rebuild_give_the_same_store(big_run, clean_store, tmp_path):
    clean, _ = clean_store
    path = tmp_path / "store.duckdb"
    sealed_parquet = big_run / layout.STORE_DIR / "parquet"
    shutil.rmtree(sealed_parquet, ignore_errors=True)  # what an earlier CLI ingest sealed: derived data too
    first = cli("ingest", big_run, "--store", path, "-q")
    assert first.returncode == 0, first.stderr
    assert "(309,990 metric points" in first.stdout and "malformed" not in first.stdout
    assert "sealed 2 segments as Parquet" in first.stdout  # both segments are closed and read to their end
    again = cli("ingest", big_run, "--store", path, "-q")
    assert again.returncode == 0 and again.stdout.startswith("ingested 0 records"), again.stdout
    _assert_same_as_clean(path, clean)

    # The store (and the sealed Parquet) are derived data: delete them and rebuild the store from the logs.
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(sealed_parquet)
    with open_store(path, fallback=False) as store:
        report = ingest(store, [big_run], chunk_bytes=CHUNK)
        assert (report.metric_points, report.malformed) == (309990, 0)
        assert ingest(store, [big_run]).records == 0
    _assert_same_as_clean(path, clean)

    # Also from a copy of the run in another place, sealed Parquet and all: same rows (only runs.path differs),
    # with the sealed segments read from the copy's Parquet.
    assert cli("ingest", big_run, "--store", tmp_path / "reseal.duckdb", "-q").returncode == 0
    moved = tmp_path / "elsewhere" / big_run.name
    shutil.copytree(big_run, moved, copy_function=shutil.copy2)
    with open_store(tmp_path / "moved.duckdb", fallback=False) as store:
        assert sorted(ingest(store, [moved]).from_parquet) == [("run", "seg-a"), ("run", "seg-b")]
    tables = ("metrics", "metric_tiles", "events", "telemetry", "segments", "rank_logs", "annotation_ops")
    diff = store_snapshot_diff(tmp_path / "moved.duckdb", clean, tables)
    assert all(a == b == 0 for _, a, b in diff.values()), diff
