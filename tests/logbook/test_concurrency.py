"""Two processes at once: a live writer and a following ingester; a follower and a second reader.

(a) a writer process flushes batches with the Recorder while a follower process (`open_store` +
    `Follower`, inotify) holds the on-disk store; every flushed batch must be queryable in the store
    within 1 s of `run.flush()` returning, and never half a batch.
(b) while `midflight ingest RUN --follow` holds the store read-write, `midflight
    summary RUN --json --store SAME` still answers correctly, from a private in-memory store, and says so.
"""

import json
import re
import signal
import subprocess
import sys

import pytest

from midflight import logbook
from midflight.logbook.record import layout
from midflight.logbook.store import StoreWarning, open_store, queries

from .proc_helpers import Proc, child_env, cli, python

FOLLOWER = """
    import sys, time
    from midflight.logbook.store.follow import Follower
    from midflight.logbook.store import open_store

    run_dir, store_path, target, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    store = open_store(store_path, fallback=False)
    follower = Follower(store, run_dir).start()
    print("ready", follower.poll, flush=True)
    last, deadline = -1, time.time() + 60
    while time.time() < deadline:
        cur = store.cursor()
        n = cur.execute("SELECT count(*) FROM metrics").fetchone()[0]
        cur.close()
        if n != last:
            print(f"seen {time.time():.6f} {n}", flush=True)
            last = n
            if n >= target:
                break
        time.sleep(0.005)
    if idle:  # nothing changes from here on: how much work does the follower do?
        ingests, cpu = follower.ingests, time.process_time()
        time.sleep(idle)
        print(f"idle {follower.ingests - ingests} {time.process_time() - cpu:.3f}", flush=True)
    follower.stop()
    store.close()
    print("stopped", flush=True)
"""

WRITER = """
    import sys, time
    from midflight import logbook

    run_dir, batches, per, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    run = logbook.init(run_dir, name="live", segment_id="seg-live", flush_every=60)  # only explicit flushes
    print("inited", flush=True)
    sys.stdin.readline()  # go
    step = 0
    for b in range(batches):
        for _ in range(per):
            run.log({"loss": 1.0 / (step + 1), "lr": 1e-3, "grad_norm": 0.5}, step=step)
            step += 1
        ok = run.flush()
        print(f"flushed {time.time():.6f} {step} {ok}", flush=True)
        time.sleep(gap * (0.5 + (b % 3) / 2))  # 0.5x, 1x, 1.5x: do not beat in step with the debounce
    run.finish()
    print("finished", flush=True)
"""

NAMES = 3


def test_follower_sees_each_flushed_batch_within_a_second(tmp_path):
    run_dir = tmp_path / "run"
    store_path = layout.default_store_path(run_dir)  # where `midflight ingest --follow` keeps it
    batches, per = 12, 40
    writer = python(WRITER, run_dir, batches, per, 0.2, stdin=True)
    follower = None
    try:
        writer.expect("inited")
        follower = python(FOLLOWER, run_dir, store_path, batches * per * NAMES, 0)
        follower.expect("ready")
        writer.send("go\n")
        writer.expect("finished", timeout=60)
        assert writer.wait(30) == 0, writer.stderr
        follower.expect("stopped", timeout=30)
        assert follower.wait(30) == 0, follower.stderr
    finally:
        writer.close()
        if follower is not None:
            follower.close()

    flushes = [line.split() for line in writer.lines if line.startswith("flushed ")]
    assert len(flushes) == batches and all(ok == "True" for *_, ok in flushes)
    seen = [(float(t), int(n)) for _, t, n in (line.split() for line in follower.lines if line.startswith("seen "))]
    assert seen[-1][1] == batches * per * NAMES
    # A batch is one record line, ingested in one transaction: the follower never sees part of one.
    assert all(n % (per * NAMES) == 0 for _, n in seen), seen
    lags = []
    for _, t_flush, steps, _ in flushes:
        rows = int(steps) * NAMES
        t_seen = next(t for t, n in seen if n >= rows)
        lags.append(t_seen - float(t_flush))
    assert max(lags) < 1.0, [round(x, 3) for x in lags]
    print(f"flush -> visible lag: max {max(lags) * 1000:.0f} ms, mean {sum(lags) / len(lags) * 1000:.0f} ms")


def test_idle_follower_stays_idle(tmp_path):
    """Once the run goes quiet the follower must go quiet too: its own reads of the logs are not changes."""
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, name="idle", flush_every=60) as run:
        for s in range(100):
            run.log({"loss": 1.0}, step=s)
    follower = python(FOLLOWER, run_dir, tmp_path / "store.duckdb", 101, 2.0)
    try:
        follower.expect("ready")
        with logbook.init(run_dir, name="idle", resume_step=99, flush_every=60) as run:  # one change, then quiet
            run.log({"loss": 0.5}, step=100)
        line = follower.expect("idle ", timeout=30)
        assert follower.wait(30) == 0, follower.stderr
    finally:
        follower.close()
    _, ingests, cpu = line.split()
    # Over 2 s with a 2 s safety rescan, one or two ingests are expected; more is a busy loop.
    assert int(ingests) <= 2, f"{ingests} ingests and {cpu}s of CPU in 2 s of an idle run"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_follower_stops_cleanly_on_sigterm_and_sigint_even_if_started_ignoring_sigint(tmp_path, sig):
    """A follower started in the background by a non-interactive shell inherits SIGINT ignored, and a
    service manager stops it with SIGTERM: either way it stops, and says nothing is wrong."""
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, name="bg", config={}) as run:
        run.log({"loss": 1.0}, step=1)
    args = [sys.executable, "-m", "midflight.logbook", "ingest", run_dir, "--follow", "-q"]
    ignoring = subprocess.Popen(  # started the way `cmd &` starts it in a script: SIGINT ignored
        args,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert ignoring.stdout.readline().startswith("ingested 3 records")
        assert ignoring.stdout.readline().startswith("following")
        ignoring.send_signal(sig)
        assert ignoring.wait(30) == 0
    finally:
        ignoring.kill()
        ignoring.wait()


def test_second_process_reads_a_locked_store_through_a_private_copy(tmp_path):
    run_dir = tmp_path / "run"
    with logbook.init(run_dir, name="locked", config={"lr": 1e-3}) as run:
        for s in range(500):
            run.log({"loss": 2.0 - s / 1000}, step=s)
        run.event("checkpoint", step=400)
    store_path = layout.default_store_path(run_dir)

    holder = Proc(
        [sys.executable, "-m", "midflight.logbook", "ingest", run_dir, "--follow", "--rescan", "0.5", "-q"],
        env=child_env(),
    )
    try:
        holder.expect("following", timeout=60)  # A owns the store file now
        out = cli("summary", run_dir, "--json", "--store", store_path)
        assert out.returncode == 0, out.stderr
        s = json.loads(out.stdout)
        assert (s["run"], s["status"], s["last_step"], s["effective_steps"]) == ("run", "finished", 499, 500)
        assert s["events"] == {"checkpoint": 1} and s["metrics"] == ["loss"]
        assert "note:" in out.stderr and "held by another process" in out.stderr
        assert "private in-memory store" in out.stderr

        # A is unharmed and still following: a new segment shows up in its output.
        with logbook.init(run_dir, name="locked", resume_step=400, reason="lower lr") as run:
            for s in range(401, 601):
                run.log({"loss": 1.0}, step=s)
        points = 0
        while points < 200:  # A prints "HH:MM:SS +N records (P points)" after each ingest that added records
            line = holder.expect(r"\d\d:\d\d:\d\d \+", timeout=10)
            points += int(re.search(r"\(([\d,]+) points\)", line).group(1).replace(",", ""))
        assert points == 200 and holder.p.poll() is None
        later = cli("summary", run_dir, "--json", "--store", store_path)  # still locked: private again
        assert later.returncode == 0 and "held by another process" in later.stderr
        assert json.loads(later.stdout)["last_step"] == 600
        holder.p.send_signal(signal.SIGINT)
        assert holder.wait(30) == 0, holder.stderr
    finally:
        holder.close()

    # With A gone, the store file itself answers, and agrees with what B computed privately.
    with open_store(store_path, fallback=False) as store:
        assert not store.private
        assert store.cursor().execute("SELECT max(step), count(*) FROM metrics").fetchone() == (600, 700)
    final = cli("summary", run_dir, "--json", "--store", store_path)
    assert final.returncode == 0 and "note:" not in final.stderr
    assert json.loads(final.stdout) == json.loads(later.stdout)


def test_a_damaged_store_file_is_rebuilt_from_the_logs(tmp_path):
    run_dir = tmp_path / "run"
    with logbook.init(run_dir) as run:
        run.log({"loss": 1.0}, step=1)
    store_path = tmp_path / "store.duckdb"
    store_path.write_bytes(b"not a database at all" * 100)
    with pytest.warns(StoreWarning, match="damaged"):
        store, report = logbook.open_run(run_dir, store_path)
    assert not store.private and queries.series(store, "run", "loss")["value"].tolist() == [1.0]
    store.close()
