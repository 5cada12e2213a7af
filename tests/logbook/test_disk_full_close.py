"""A segment that ends while its disk is full still gets its close record, once space returns.

Without it the run reads as "running" and then "unknown" forever, though the trainer ended cleanly
(issue 14: the trainer's full-disk crash lost its crash record this way). The disk is a real, small
tmpfs filled by a filler file; the test skips where mount is not permitted (the trainer's full-disk
test, tests/trainer/test_full_disk.py, then runs on an injected ENOSPC instead).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from midflight import logbook
from midflight.logbook.record import layout, records
from midflight.logbook.store import memory, queries
from midflight.logbook.store.ingest import ingest

from .proc_helpers import metric_points, parse_log, python

WRITER = """
    import contextlib, json, os, sys, warnings
    from midflight import logbook

    warnings.simplefilter("always")  # every recorder warning on stderr at once: the test reads them
    mount, wait = sys.argv[1], sys.argv[2]
    kw = {} if wait == "default" else {"finish_wait_s": float(wait)}
    run = logbook.init(os.path.join(mount, "run"), name="full", segment_id="seg-a", flush_every=0.05, **kw)
    for s in range(100):
        run.log({"loss": s * 0.5}, step=s)
    assert run.flush()
    fd = os.open(os.path.join(mount, "filler.bin"), os.O_WRONLY | os.O_CREAT)  # something else fills the disk
    for chunk in (1 << 20, 1 << 12, 1):  # MiB, then KiB, then bytes: until not one more byte fits
        with contextlib.suppress(OSError):  # ENOSPC ends each pass: that is the point
            while True:
                os.write(fd, b"\\0" * chunk)
    os.close(fd)
    for s in range(100, 200):
        run.log({"loss": s * 0.5}, step=s)
        run.event("tick", step=s)
    print("full", run.flush(), flush=True)
    run.finish()
    print(json.dumps({"write_errors": run.write_errors, "dropped": run.dropped_records}), flush=True)
"""


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    except OSError as exc:
        pytest.skip(f"no tmpfs for a real full disk: {exc}")
    if done.returncode != 0:
        pytest.skip(f"tmpfs mount not permitted: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _wait_for(proc, text: str) -> bool:
    """True once `text` is on the child's stderr; False if the child exits first (the harness never hangs)."""
    while text not in proc.stderr:
        if proc.p.poll() is not None:
            return text in proc.stderr
        time.sleep(0.05)
    return True


def test_close_record_is_written_when_space_returns(tmpfs):
    proc = python(WRITER, tmpfs, "default")
    try:
        proc.expect("full")
        assert proc.lines[-1] == "full False"  # the disk really refused the records
        waited = _wait_for(proc, "waiting up to")
        (tmpfs / "filler.bin").unlink()  # space returns
        assert proc.wait(120) == 0, proc.stderr
        err = proc.stderr
    finally:
        proc.close()
    assert waited, err  # finish() said it was waiting for space
    out = json.loads(proc.lines[-1])
    assert out["write_errors"] > 0 and out["dropped"] == 0

    recs, bad, tail = parse_log(layout.rank_file(tmpfs / "run", "seg-a", 0))
    assert (bad, tail) == (0, b"")
    assert sorted(s for s, name, _ in metric_points(recs)) == list(range(200))
    close = recs[-1]
    assert close["k"] == records.CLOSE and close["reason"] == "completed" and close["last_step"] == 199
    assert 1 <= close["write_errors"] <= out["write_errors"]  # counted when the close was encoded

    store = memory()
    ingest(store, [tmpfs / "run"])
    (run,) = queries.run_ids(store)
    assert queries.run_status(store, run) == "finished"


def test_finish_gives_up_when_space_never_returns(tmpfs):
    proc = python(WRITER, tmpfs, "0.5")
    try:
        assert proc.wait(120) == 0, proc.stderr
        err = proc.stderr
    finally:
        proc.close()
    assert "waiting up to 0.5 s" in err
    assert "could not write the last" in err  # said plainly: the end of the segment is not on disk
    recs, _, _ = parse_log(layout.rank_file(tmpfs / "run", "seg-a", 0))
    assert recs[-1]["k"] != records.CLOSE


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_finish_wait_must_be_a_finite_number_of_seconds(tmp_path, bad):
    with pytest.raises(ValueError, match="finish_wait_s"):
        logbook.init(tmp_path / "run", finish_wait_s=bad)
