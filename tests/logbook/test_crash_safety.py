"""SIGKILL a writing process at random moments: everything it knew was flushed survives, exactly once.

The writer is a real `python -c` process using the Recorder with a 10 ms background flush. After every
`run.flush()` that returns True it prints `flushed <last step>`: the side channel that says which steps
it believes are on disk. The test kills it with SIGKILL, ingests the log into an on-disk DuckDB store and
checks the promise of records.py / ingest.py against that side channel and against the bytes on disk.
"""

import random
import time

from midflight import logbook
from midflight.logbook.record import layout, records
from midflight.logbook.store import open_store
from midflight.logbook.store.ingest import ingest

from .proc_helpers import duplicate_metric_keys, metric_points, parse_log, python, python_ok

NAMES = 20  # metric names per step; values are step * 0.5 + j, so every value is checkable
BATCH = 25  # steps between explicit flushes

WRITER = """
    import sys, time
    from midflight import logbook

    run_dir, seg, start, n_names, batch, ticks = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
    names = [f"m{j:02d}" for j in range(n_names)]
    run = logbook.init(run_dir, name="crash", segment_id=seg, flush_every=0.01)
    print("ready", flush=True)
    step = start
    while True:
        for _ in range(batch):
            run.log({n: step * 0.5 + j for j, n in enumerate(names)}, step=step)
            step += 1
        if ticks:
            run.event("tick", step=step - 1)
        if run.flush():  # True: everything logged so far has been written
            sys.stdout.write(f"flushed {step - 1}\\n")
            sys.stdout.flush()
        time.sleep(0.002)  # a (very fast) training step
"""


def _kill_writer_at_random(rng, run_dir, seg, start, ticks):
    """Start a writer and SIGKILL it at a random moment.

    Returns (was it still running, the last step it reported flushed or -1, its stderr).
    """
    proc = python(WRITER, run_dir, seg, start, NAMES, BATCH, int(ticks))
    try:
        if rng.random() < 0.2:  # sometimes during start-up: imports, header, open record
            time.sleep(rng.uniform(0.0, 0.15))
        else:
            proc.expect("ready", timeout=30)
            time.sleep(rng.uniform(0.02, 0.4))
        killed = proc.sigkill()
        flushed = [int(line.split()[1]) for line in proc.lines if line.startswith("flushed ")]
        assert flushed == sorted(flushed)
        return killed, (flushed[-1] if flushed else -1), proc.stderr
    finally:
        proc.close()


def _tear(rng, path):
    """Append what a kill inside write() leaves behind (rare by chance, so made here): a record's first bytes."""
    line = records.encode({"k": "metrics", "names": ["m00"], "rows": [[10**6, 0.0, 0.0]]})
    with open(path, "ab") as f:
        f.write(line[: rng.randrange(1, len(line) - 1)])  # never a whole JSON object


def _expected_value(step, name):
    return step * 0.5 + int(name[1:])


def test_sigkilled_writer_keeps_every_reported_flush_exactly_once(tmp_path):
    rng = random.Random(20261125)
    run_dir = tmp_path / "run"
    store = open_store(tmp_path / "store.duckdb", fallback=False)
    kills = reported = torn_seen = 0
    for i in range(16):
        seg = f"seg-{i:03d}"
        killed, flushed, err = _kill_writer_at_random(rng, run_dir, seg, 0, ticks=True)
        assert "Traceback" not in err, err
        kills += killed
        reported += flushed >= 0
        path = layout.rank_file(run_dir, seg, 0)
        if path.exists() and path.read_bytes().endswith(b"\n") and rng.random() < 0.3:
            _tear(rng, path)

        report = ingest(store, [run_dir])
        assert report.malformed == 0, report.describe()  # a torn tail is left alone, never counted
        cur = store.cursor()
        if not path.exists():  # killed before the open record reached the disk
            assert flushed < 0
            continue

        # The store holds exactly the complete lines on disk; a torn tail is not consumed.
        recs, bad, tail = parse_log(path)
        assert bad == 0
        torn_seen += bool(tail)
        offset = cur.execute(
            "SELECT byte_offset, malformed FROM ingest_files WHERE rel_path = ?", [path.relative_to(run_dir).as_posix()]
        ).fetchone()
        assert offset == (path.stat().st_size - len(tail), 0)
        on_disk = sorted(metric_points(recs))
        stored = cur.execute(
            "SELECT step, name, value FROM metrics WHERE segment_id = ? ORDER BY step, name", [seg]
        ).fetchall()
        assert stored == on_disk

        # Every step the writer reported flushed is there, once, with every name and the right value;
        # the steps form a gap-free prefix (the writer appends in order; only the tail can be lost).
        steps = sorted({s for s, _, _ in stored})
        assert steps == list(range(len(steps)))
        assert len(stored) == len(steps) * NAMES
        assert (steps[-1] if steps else -1) >= flushed
        assert all(v == _expected_value(s, n) for s, n, v in stored)
        ticks = [
            r[0]
            for r in cur.execute(
                "SELECT step FROM events WHERE segment_id = ? AND kind = 'tick' ORDER BY step", [seg]
            ).fetchall()
        ]
        assert len(ticks) == len(set(ticks))
        assert set(range(BATCH - 1, flushed + 1, BATCH)) <= set(ticks)
        assert all(t % BATCH == BATCH - 1 for t in ticks)
        # No close record: the segment reads as died-without-a-word, not as completed.
        assert cur.execute("SELECT end_reason FROM rank_logs WHERE segment_id = ?", [seg]).fetchone() == (None,)

    assert duplicate_metric_keys(store.cursor()) == 0
    store.close()
    assert kills >= 14  # the writer was really running when it was killed
    assert torn_seen >= 1  # the skip-the-torn-tail path really ran
    assert reported >= 8, "too few kills landed after a reported flush for the test to mean anything"
    print(f"{kills} kills, {reported} after a reported flush, {torn_seen} torn tails seen")


def test_relaunch_after_sigkill_appends_to_the_same_log_without_loss_or_duplicates(tmp_path):
    """Kill, relaunch with the same segment id from the last step on disk, repeat: one gap-free log."""
    rng = random.Random(7)
    run_dir = tmp_path / "run"
    seg = "seg-same"
    path = layout.rank_file(run_dir, seg, 0)
    rel = path.relative_to(run_dir).as_posix()
    store = open_store(tmp_path / "store.duckdb", fallback=False)
    fragments: set[int] = set()  # where each torn (unparseable) tail began
    next_step = kills = injected = 0
    max_flushed = -1
    for _ in range(12):
        killed, flushed, err = _kill_writer_at_random(rng, run_dir, seg, next_step, ticks=False)
        assert "Traceback" not in err, err
        kills += killed
        max_flushed = max(max_flushed, flushed)
        if path.exists() and path.read_bytes().endswith(b"\n") and rng.random() < 0.4:
            _tear(rng, path)
            injected += 1
        report = ingest(store, [run_dir])
        assert report.malformed <= 1  # at most the one fragment this relaunch had to terminate
        if not path.exists():
            continue
        recs, bad, tail = parse_log(path)
        end = path.stat().st_size - len(tail)
        if tail:  # even a record cut just before its newline: incomplete, so never data (records.py)
            fragments.add(end)
        # Each fragment a relaunch terminated is exactly one malformed line, counted once, never more.
        terminated = {o for o in fragments if o < end}
        cur = store.cursor()
        assert cur.execute("SELECT byte_offset, malformed FROM ingest_files WHERE rel_path = ?", [rel]).fetchone() == (
            end,
            bad,
        )
        assert bad == len(terminated) <= kills
        stored = cur.execute("SELECT step, name, value FROM metrics ORDER BY step, name").fetchall()
        assert stored == sorted(metric_points(recs))
        steps = sorted({s for s, _, _ in stored})
        assert steps == list(range(len(steps)))  # no gap, no duplicate across all relaunches
        assert len(stored) == len(steps) * NAMES
        assert steps and steps[-1] >= max_flushed
        assert all(v == _expected_value(s, n) for s, n, v in stored)
        next_step = steps[-1] + 1  # resume after the last complete record, as a restart from disk would
    assert len(terminated) >= 1 and injected >= 2
    store.close()
    assert kills >= 10 and max_flushed > 0


def test_torn_last_line_is_skipped_by_readers_until_it_is_completed(tmp_path):
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, name="torn", segment_id="seg-a", flush_every=60) as run:
        for s in range(3):
            run.log({"loss": float(s)}, step=s)
    path = layout.rank_file(run_dir, "seg-a", 0)
    whole = path.stat().st_size
    line = records.encode({"k": "metrics", "names": ["loss", "acc"], "rows": [[3, 1.5, 2.5, 0.75]]})
    with open(path, "ab") as f:
        f.write(line[:25])  # a writer died mid-record

    # Readers: the fragment is neither returned nor consumed.
    assert [r["k"] for r in records.iter_records(path)] == ["open", "metrics", "close"]
    data, offset = records.read_complete(path, 0, 1 << 20)
    assert (len(data), offset) == (whole, whole)
    assert records.read_complete(path, whole, 1 << 20) == (b"", whole)
    off = 0
    while True:  # tiny chunks walk whole lines and stop before the fragment
        chunk, new = records.read_complete(path, off, 7)
        if new == off:
            break
        assert chunk.endswith(b"\n") and new == off + len(chunk)
        off = new
    assert off == whole

    store = open_store(tmp_path / "store.duckdb", fallback=False)
    report = ingest(store, [run_dir])
    cur = store.cursor()
    assert report.malformed == 0
    assert cur.execute("SELECT step, name, value FROM metrics ORDER BY step").fetchall() == [
        (0, "loss", 0.0),
        (1, "loss", 1.0),
        (2, "loss", 2.0),
    ]
    assert cur.execute("SELECT byte_offset FROM ingest_files WHERE rel_path LIKE '%rank-00000.jsonl'").fetchone() == (
        whole,
    )
    assert ingest(store, [run_dir]).records == 0  # still waiting for the rest of the line

    with open(path, "ab") as f:  # the rest of the line arrives (in two pieces)
        f.write(line[25:-3])
    assert ingest(store, [run_dir]).records == 0
    with open(path, "ab") as f:
        f.write(line[-3:])
    report = ingest(store, [run_dir])
    assert (report.records, report.metric_points, report.malformed) == (1, 2, 0)
    assert ingest(store, [run_dir]).records == 0
    rows = cur.execute("SELECT step, name, value FROM metrics WHERE step = 3 ORDER BY name").fetchall()
    assert rows == [(3, "acc", 0.75), (3, "loss", 2.5)]
    assert duplicate_metric_keys(cur) == 0
    assert cur.execute("SELECT last_step FROM rank_logs").fetchone() == (3,)
    store.close()


DIES_AFTER_FIVE = """
    import os, sys
    from midflight import logbook

    run = logbook.init(sys.argv[1], name="cut", segment_id="seg-a", flush_every=60)
    for s in range(5):
        run.log({"loss": float(s)}, step=s)
        run.flush()  # one record per step
    os._exit(0)  # dies without a close record
"""


def test_a_record_cut_just_before_its_newline_stays_torn_after_a_relaunch(tmp_path):
    """records.py: a record is complete exactly when its newline is on disk. A relaunch must not complete it."""
    run_dir = tmp_path / "run"
    python_ok(DIES_AFTER_FIVE, run_dir)
    path = layout.rank_file(run_dir, "seg-a", 0)
    data = path.read_bytes()
    path.write_bytes(data[:-1])  # the kill landed inside the last write(): all of step 4's record but its newline
    store = open_store(tmp_path / "store.duckdb", fallback=False)
    ingest(store, [run_dir])
    cur = store.cursor()
    assert cur.execute("SELECT max(step) FROM metrics").fetchone() == (3,)  # step 4 is not complete

    # The relaunch resumes after the last complete step, so it logs step 4 again.
    with logbook.init(run_dir, name="cut", segment_id="seg-a", flush_every=60) as run:
        for s in (4, 5):
            run.log({"loss": float(s)}, step=s)
    report = ingest(store, [run_dir])
    assert cur.execute("SELECT step, count(*) FROM metrics GROUP BY step ORDER BY step").fetchall() == [
        (s, 1) for s in range(6)
    ]
    assert report.malformed == 1  # the cut record, counted once as what it is: torn
    store.close()
