"""Observability must never hurt the training run: a full disk or an impossible path is a warning, not a crash.

The "full disk" is real: the writer process lowers RLIMIT_FSIZE (with SIGXFSZ ignored), so its writes to the
log fail with EFBIG, part-way through a record, exactly like ENOSPC would. Then the limit is raised again
and recording must resume with nothing lost, nothing duplicated and no broken line left behind.
"""

import errno
import json
import warnings

from midflight import logbook
from midflight.logbook.record import layout, records
from midflight.logbook.record.recorder import RecorderWarning
from midflight.logbook.store import memory
from midflight.logbook.store.ingest import ingest

from .proc_helpers import duplicate_metric_keys, metric_points, parse_log, python_ok

FULL_DISK_WRITER = """
    import json, resource, signal, sys, time, warnings
    from midflight import logbook
    from midflight.logbook.record.recorder import RecorderWarning

    run_dir = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out = {"raised": [], "flushes": {}, "slowest_log_s": 0.0}
    step = 0

    def train(n, phase):
        global step
        results = []
        for _ in range(n):
            t = time.perf_counter()
            try:
                run.log({"loss": step * 0.25, "lr": 1e-3}, step=step)
                if step % 10 == 0:
                    run.event("tick", step=step, phase=phase)
            except BaseException as exc:  # must never happen
                out["raised"].append(repr(exc))
            out["slowest_log_s"] = max(out["slowest_log_s"], time.perf_counter() - t)
            step += 1
            if step % 20 == 0:
                try:
                    results.append(run.flush())
                except BaseException as exc:
                    out["raised"].append(repr(exc))
            time.sleep(0.001)
        out["flushes"][phase] = results

    def recorder_warnings():
        return [str(w.message) for w in caught if issubclass(w.category, RecorderWarning)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = logbook.init(run_dir, name="full-disk", segment_id="seg-a", flush_every=0.02)
        train(200, "before")
        out["before"] = (run.write_errors, recorder_warnings())
        limit = run.path.stat().st_size + 1000  # the disk fills up ~1 kB later, in the middle of a record
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        train(400, "outage")
        out["outage"] = (run.write_errors, recorder_warnings(), run.path.stat().st_size, limit)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is freed
        train(200, "after")
        run.finish()
        out["after"] = (run.write_errors, recorder_warnings(), run.dropped_records)
    print(json.dumps(out), flush=True)
"""


def test_full_disk_is_survived_and_nothing_is_lost_or_duplicated(tmp_path):
    run_dir = tmp_path / "run"
    proc = python_ok(FULL_DISK_WRITER, run_dir)
    out = json.loads(proc.lines[-1])

    # The training loop never saw an exception, and log() stayed a queue append.
    assert out["raised"] == []
    assert out["slowest_log_s"] < 0.25
    assert out["before"] == [0, []] and all(out["flushes"]["before"])

    errors, during, size, limit = out["outage"]
    assert errors > 0
    assert not all(out["flushes"]["outage"])  # flush() says so: data is pending
    assert size <= limit
    assert len([w for w in during if f"errno {errno.EFBIG}" in w]) == 1, during  # warned once, not per flush
    assert all(out["flushes"]["after"])
    errors_total, warned, dropped = out["after"]
    assert errors_total >= errors and dropped == 0
    assert any("writing to" in w and "again" in w for w in warned[len(during) :]), warned

    # On disk: every step of all three phases exactly once, no broken line (the partial record was cut back).
    path = layout.rank_file(run_dir, "seg-a", 0)
    recs, bad, tail = parse_log(path)
    assert (bad, tail) == (0, b"")
    points = metric_points(recs)
    assert sorted(points) == sorted([(s, "loss", s * 0.25) for s in range(800)] + [(s, "lr", 1e-3) for s in range(800)])
    ticks = [(r["step"], r["fields"]["phase"]) for r in recs if r["k"] == records.EVENT]
    assert sorted(ticks) == [(s, "before" if s < 200 else "outage" if s < 600 else "after") for s in range(0, 800, 10)]
    close = recs[-1]
    assert close["k"] == records.CLOSE and close["reason"] == "completed" and close["last_step"] == 799
    assert close["write_errors"] == errors_total and close["dropped_records"] == 0

    store = memory()
    report = ingest(store, [run_dir])
    cur = store.cursor()
    assert report.malformed == 0 and report.metric_points == 1600
    assert duplicate_metric_keys(cur) == 0
    assert cur.execute("SELECT write_errors, end_reason FROM rank_logs").fetchone() == (errors_total, "completed")


FULL_AT_START = """
    import resource, signal, sys, warnings
    from midflight import logbook

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    warnings.simplefilter("ignore")
    resource.setrlimit(resource.RLIMIT_FSIZE, (120, hard))  # the disk is (almost) full before the first record
    run = logbook.init(sys.argv[1], name="late-space", config={"lr": 0.1, "model": {"layers": 24}},
                       resume_step=None, reason="first launch", segment_id="seg-a", flush_every=60)
    for s in range(10):
        run.log({"loss": float(s)}, step=s)
    print("during", run.flush(), run.write_errors, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is freed
    for s in range(10, 20):
        run.log({"loss": float(s)}, step=s)
    print("after", run.flush(), flush=True)
    run.finish()
"""


def test_disk_full_at_start_still_ends_with_a_whole_segment_header(tmp_path):
    """The header is written once, atomically: a short write must be retried, not renamed into place."""
    run_dir = tmp_path / "run"
    proc = python_ok(FULL_AT_START, run_dir)
    _, during, errors = proc.lines[0].split()
    assert during == "False" and int(errors) > 0
    assert proc.lines[1] == "after True"
    seg_dir = layout.segment_dir(run_dir, "seg-a")
    assert sorted(p.name for p in seg_dir.iterdir()) == ["rank-00000.jsonl", "segment.json"]
    header = json.loads((seg_dir / "segment.json").read_bytes())  # whole, not cut at 120 bytes
    assert header["config"] == {"lr": 0.1, "model": {"layers": 24}} and header["reason"] == "first launch"
    store = memory()
    report = ingest(store, [run_dir])
    cur = store.cursor()
    assert report.malformed == 0, report.describe()
    assert cur.execute("SELECT has_header, reason FROM segments").fetchone() == (True, "first launch")
    assert [r[0] for r in cur.execute("SELECT step FROM metrics ORDER BY step").fetchall()] == list(range(20))


def test_unmakeable_run_dir_warns_and_recording_resumes_when_it_can(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where a directory should be\n")
    run_dir = blocker / "run"  # mkdir fails with ENOTDIR
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = logbook.init(run_dir, name="nowhere", config={"lr": 0.1}, flush_every=60)
        for s in range(50):
            run.log({"loss": float(s)}, step=s)
        run.event("checkpoint", step=10)
        assert run.flush() is False  # pending, not lost
        assert run.write_errors > 0
        msgs = [str(w.message) for w in caught if issubclass(w.category, RecorderWarning)]
        assert any(f"errno {errno.ENOTDIR}" in m for m in msgs), msgs
        assert blocker.read_text().startswith("a regular file")  # nothing was written into or over it

        blocker.unlink()  # the operator fixes the path: recording resumes, header included
        blocker.mkdir()
        for s in range(50, 100):
            run.log({"loss": float(s)}, step=s)
        assert run.flush() is True
        run.finish()
    assert run.dropped_records == 0
    store = memory()
    report = ingest(store, [run_dir])
    cur = store.cursor()
    assert report.malformed == 0
    assert [r[0] for r in cur.execute("SELECT step FROM metrics ORDER BY step").fetchall()] == list(range(100))
    assert cur.execute("SELECT has_header, config FROM segments").fetchone() == (True, '{"lr": 0.1}')
    assert cur.execute("SELECT count(*) FROM events").fetchone() == (1,)


def test_unmakeable_run_dir_never_raises_even_at_finish(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = logbook.init(blocker / "deep" / "run", resume_step=5, reason="resume", flush_every=0.01)
        for s in range(200):
            run.log({"loss": float(s)}, step=s)
            run.event("tick", step=s)
        run.finish("completed")
    msgs = [str(w.message) for w in caught if issubclass(w.category, RecorderWarning)]
    assert run.write_errors > 0
    assert any("could not write the last" in m for m in msgs), msgs
    assert len(msgs) <= 4, msgs  # once per cause, not once per flush
    assert blocker.read_bytes() == b"x"
