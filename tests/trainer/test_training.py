"""The real trainer end to end on CPU: learning, FSDP2 over 2 gloo ranks, exact resume, crashes and restarts."""

import math
import os
import re
import signal
from pathlib import Path

import pytest

from midflight.logbook.report import goodput
from midflight.logbook.store import queries

from .helpers import ROOT, Proc, Recorded, child_env, train, trainer_cmd


def test_tiny_model_learns_and_records_every_step(tmp_path):
    out = train(tmp_path / "run", "--steps", 60)
    rec = Recorded(tmp_path / "run")
    loss = rec.metric("loss")
    assert sorted(loss) == list(range(1, 61))
    first, last = sum(loss[s] for s in range(1, 6)) / 5, sum(loss[s] for s in range(56, 61)) / 5
    assert last < first - 0.7, (first, last)  # bytes start at ln(256) = 5.5 nats
    assert math.isclose(rec.metric("ppl")[60], math.exp(loss[60]), rel_tol=1e-6)
    lr = rec.metric("lr")
    assert lr[10] == pytest.approx(1e-3 * 10 / 20) and lr[20] == pytest.approx(1e-3)  # warm-up to the peak
    assert lr[60] == pytest.approx(1e-4)  # linear decay to 10% of the peak
    tokens = rec.metric("tokens")
    assert tokens[60] == 60 * 8 * 64
    assert set(rec.metric("clipped").values()) <= {0.0, 1.0} and rec.metric("clip")[1] == 1.0
    pnorm = rec.metric("param_norm")  # a full pass over the weights every log.param_norm_every (50) steps
    assert pnorm.keys() == {50} and math.isfinite(pnorm[50]) and pnorm[50] > 0, pnorm
    assert rec.metric("mem_rss_gib").keys() == {50}  # recorded with it (on CPU: the process RSS)
    (seg,) = rec.segments().itertuples()
    assert seg.end_reason == "completed"
    assert "step 60/60 | loss" in out.stdout  # progress for a person watching
    telemetry = rec.store.cursor().execute("SELECT count(*) FROM telemetry WHERE device = 'cpu'").fetchone()[0]
    assert telemetry >= 1


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "none"])  # none with 2 ranks is DDP
def test_two_ranks_match_one_process(tmp_path, engine):
    common = ["--steps", 3, "--model.dropout=0", "--telemetry.enabled=false", "--checkpoint.every=0"]
    train(tmp_path / "single", *common, "--data.batch_size=8")
    train(tmp_path / "fsdp", *common, "--data.batch_size=4", "--fsdp", engine, nproc=2)
    single, fsdp = Recorded(tmp_path / "single"), Recorded(tmp_path / "fsdp")
    for name in ("loss", "grad_norm", "actv_norm"):
        a, b = single.metric(name), fsdp.metric(name)
        assert a.keys() == b.keys() == {1, 2, 3}
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=2e-4), (name, step)
    # each rank records its own step time, so a straggler shows
    assert fsdp.metric("step_time_s", rank=1).keys() == {1, 2, 3}
    assert fsdp.segments().iloc[0].ranks == 2


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    common = ["--steps", 30, "--checkpoint.every=10", "--telemetry.enabled=false"]  # dropout on: RNG is restored
    train(tmp_path / "straight", *common)
    crashed = train(tmp_path / "resumed", *common, "--inject", "crash@24", check=False)
    assert crashed.returncode != 0 and "injected crash at step 24" in crashed.stderr
    fresh_again = train(tmp_path / "resumed", *common, check=False)
    assert fresh_again.returncode == 2 and "already has checkpoints" in fresh_again.stderr
    train(tmp_path / "resumed", *common, "--resume")
    a, b = Recorded(tmp_path / "straight"), Recorded(tmp_path / "resumed")
    la, lb = a.metric("loss"), b.metric("loss")
    assert lb.keys() == la.keys() == set(range(1, 31))
    for step in range(21, 31):  # replayed from the checkpoint of step 20
        assert lb[step] == pytest.approx(la[step], rel=1e-6, abs=1e-7), step
    segs = b.segments()
    assert list(segs.end_reason) == ["crashed", "completed"]
    assert segs.iloc[1].resume_step == 20 and segs.iloc[1].parent_id == segs.iloc[0].segment_id
    assert "--resume" in segs.iloc[1].reason


@pytest.mark.slow
def test_crash_restarts_automatically_under_torchrun(tmp_path):
    train(
        tmp_path / "run",
        "--steps",
        40,
        "--checkpoint.every=10",
        "--inject",
        "crash@25",
        "--inject",
        "slow-rank@30-34",
        "--faults.slow_rank_s=0.25",
        nproc=2,
        max_restarts=1,
    )
    rec = Recorded(tmp_path / "run")
    segs = rec.segments()
    assert len(segs) == 2
    first, second = segs.iloc[0], segs.iloc[1]
    assert first.end_reason == "crashed" and second.end_reason == "completed"
    assert second.parent_id == first.segment_id and second.resume_step == 20
    assert "automatic restart 1" in second.reason and "injected crash at step 25" in second.reason
    assert "injected crash at step 25" in first.error  # the rank that crashed first is the cause
    # both launches are on the effective path: the crashed one holds steps 1..20, its restart 21..40
    assert list(segs.effective) == [True, True]
    loss = queries.series(rec.store, rec.run, "loss")
    by_segment = loss.groupby("segment_id")["step"].apply(list).to_dict()
    assert by_segment == {first.segment_id: list(range(1, 21)), second.segment_id: list(range(21, 41))}
    assert max(rec.metric("loss")) == 40
    assert rec.metric("loss", which="superseded").keys() == set(range(21, 25))  # replayed after the restart
    restart = rec.events("restart")
    assert restart and restart[0][0] == 20
    # the straggler: rank 1's step time jumps by the injected 250 ms at steps 30-34
    slow = rec.metric("step_time_s", rank=1)
    stalled = min(slow[s] for s in range(30, 35))
    normal = sorted(slow[s] for s in range(35, 41))[3]
    # against the rank's own normal steps, not a wall-clock bound that a busy machine's normal steps exceed
    assert stalled >= 0.25 and stalled - normal >= 0.1
    # the goodput ledger of these real processes: the restart loaded its checkpoint in a recorded time, the
    # straggler's 5 x 250 ms shows as straggler loss (rank 1's compute_s over the median of the two), the
    # replayed steps 21..25 as waste, and the parts add up to the run's wall-clock time
    assert restart[0][1]["load_seconds"] > 0
    g = goodput.ledger(rec.store, rec.run)
    cats = g["categories"]
    # (each slowed step adds half its 250 ms over the median of two ranks; a busy machine blurs some of them)
    assert cats["straggler"]["s"] >= 0.1 and cats["straggler"]["estimated"]
    assert cats["checkpoint"]["s"] > restart[0][1]["load_seconds"]  # the load plus four saves
    assert cats["wasted"]["s"] > 0 and cats["downtime"]["s"] > 0 and cats["productive"]["s"] > 0
    assert g["wall_s"] == pytest.approx(sum(c["s"] for c in cats.values()))
    assert g["wall_s"] == pytest.approx(segs.end_time.max() - segs.start_time.min(), rel=0.01)


def _rank_pid(run_dir, rank: int) -> int | None:
    """The pid of the trainer process of `rank` writing into `run_dir` (read from /proc, as an operator would)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(run_dir).encode() in cmd and b"midflight.trainer" in cmd and f"RANK={rank}".encode() in env:
            if b"torch.distributed.run" not in cmd:
                return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_is_restarted_and_named_in_the_lineage(tmp_path):
    """Like a GPU lost to an ECC error: rank 1 dies by SIGKILL, with no chance to write anything."""
    run_dir = tmp_path / "run"
    # slow from step 41 to 120 (8 s at least): the kill after step 40 lands mid-run however late the line
    # arrives or the pid scan takes on a busy machine; then fast to 300 (a kill after the end was a flake)
    cmd = trainer_cmd(run_dir, "--steps=300", "--checkpoint.every=10", "--inject=slow-rank@41-120",
                      "--faults.slow_rank_s=0.1", "--telemetry.enabled=false", nproc=2, max_restarts=1)  # fmt: skip
    proc = Proc(cmd, env=child_env(OMP_NUM_THREADS="1"), cwd=ROOT)
    try:
        proc.expect("step 40/", timeout=120)
        pid = _rank_pid(run_dir, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(240) == 0, proc.stderr[-3000:]
    finally:
        proc.close()
    segs = Recorded(run_dir).segments()
    assert len(segs) == 2 and segs.iloc[1].end_reason == "completed"
    first, second = segs.iloc[0], segs.iloc[1]
    assert first.end_reason in ("crashed", "unknown")  # rank 0 dies of the lost peer (or is stopped by torchrun)
    assert second.resume_step >= 30 and second.resume_step % 10 == 0  # the newest complete checkpoint
    assert "automatic restart 1" in second.reason
    assert re.search(r"rank\(s\) (0, )?1 ended without a close record", second.reason), second.reason
