"""Real torch.distributed (gloo, 2 processes under torchrun): ranks share one segment, each writes its own log."""

import subprocess
import sys
import textwrap
import threading

import logbook
from logbook.store import memory, queries
from logbook.store.ingest import ingest

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    import logbook
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with logbook.init(sys.argv[1], name="ddp", config={"world": dist.get_world_size()}) as run:
        for step in range(1, 21):
            t = torch.tensor([float(step * (rank + 1))])
            dist.all_reduce(t)
            run.log({"loss": 1.0 / step, "step_time_ms": 10.0 + rank, "allreduce": t[0]}, step=step)
    dist.destroy_process_group()
""")


def test_two_ranks_under_torchrun_share_a_segment(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seg_dirs = list((tmp_path / "run" / "segments").iterdir())
    assert len(seg_dirs) == 1
    store = memory()
    ingest(store, [tmp_path / "run"])
    segs = queries.segments(store, "run")
    assert segs["ranks"].tolist() == [2] and segs["end_reason"].tolist() == ["completed"]
    per_rank = {r: queries.series(store, "run", "step_time_ms", rank=r)["value"].unique().tolist() for r in (0, 1)}
    assert per_rank == {0: [10.0], 1: [11.0]}  # a slow rank stays visible
    reduced = queries.series(store, "run", "allreduce", rank=1)["value"].tolist()
    assert reduced == [3.0 * s for s in range(1, 21)]


def test_threads_each_with_their_own_cursor_get_right_answers(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        for s in range(5000):
            run.log({"a": float(s), "b": float(-s)}, step=s)
    store = memory()
    ingest(store, [tmp_path / "run"])
    errors = []

    def worker(name, sign):
        for _ in range(30):
            df = queries.series(store, "run", name, x_range=(100, 199))
            if df["value"].tolist() != [sign * float(s) for s in range(100, 200)]:
                errors.append(name)

    threads = [threading.Thread(target=worker, args=(n, sg)) for n, sg in [("a", 1), ("b", -1)] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
