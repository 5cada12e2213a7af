"""Real torch.distributed (gloo, 2 processes under torchrun): ranks share one segment, each writes its own log."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from midflight import logbook
from midflight.logbook.store import memory, queries
from midflight.logbook.store.ingest import ingest

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from midflight import logbook
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


SUBSET = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    import midflight
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    who = {int(r) for r in sys.argv[2].split(",")}
    for launch in range(2):  # two inits in one process: each is its own segment, agreed in order
        run = midflight.init(sys.argv[1], name="subset", resume_step=5 if launch else None) if rank in who else None
        for step in range(1, 6):
            t = torch.tensor([1.0])
            dist.all_reduce(t)  # a collective right after init: it hangs if init was one that not every rank joined
            if run is not None:
                run.log({"loss": 1.0 / step, "world": t[0]}, step=step + 10 * launch)
        if run is not None:
            run.finish()
    dist.barrier()
    dist.destroy_process_group()
""")


@pytest.mark.slow
@pytest.mark.parametrize("who", ["0", "1", "0,1"])
def test_init_on_any_subset_of_ranks_never_blocks(tmp_path, who):
    """W&B's habit (init on rank 0 only), Lightning's and Accelerate's: the job runs on, and ranks that do call
    init share one segment per launch. The rank-1-only case waits for rank 0's id a bounded time, then derives
    it from the launch."""
    script = tmp_path / "train.py"
    script.write_text(SUBSET)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    env = {**os.environ, "MIDFLIGHT_AGREE_WAIT_S": "2"}  # rank 1 alone waits this long for rank 0, twice
    out = subprocess.run([*cmd, str(tmp_path / "run"), who], capture_output=True, text=True, timeout=170, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    store = memory()
    ingest(store, [tmp_path / "run"])
    segs = queries.segments(store, "run")
    assert len(segs) == 2 and segs["end_reason"].tolist() == ["completed", "completed"]
    assert segs["ranks"].tolist() == [len(who.split(","))] * 2
    rank = int(who.split(",")[-1])
    assert queries.series(store, "run", "world", rank=rank)["value"].tolist() == [2.0] * 10
