"""The trainer's parts on their own: data, schedule, checkpoints, precision options, and the GPU-only paths."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from midflight.trainer.checkpoint import COMPLETE, Checkpointer
from midflight.trainer.data import TokenData, builtin_corpus
from midflight.trainer.faults import parse_injections
from midflight.trainer.model import OPTConfig, build, param_groups
from midflight.trainer.schedule import lr_at

from .helpers import ROOT, Recorded, child_env, train


def test_token_file_batches_are_deterministic_and_sliced_by_rank(tmp_path):
    tokens = np.arange(10_000, dtype=np.uint16) % 5000
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    data = TokenData.open(str(path), dtype="uint16", vocab_size=5000, seq_len=16, batch_size=2, seed=7)
    x, y = data.batch(3)
    assert x.shape == (2, 16) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(data.batch(3)[0], x)  # a pure function of (seed, index)
    whole = TokenData.open(str(path), dtype="uint16", vocab_size=5000, seq_len=16, batch_size=4, seed=7)
    both = torch.cat([data.batch(3, rank=0, world=2)[0], data.batch(3, rank=1, world=2)[0]])
    assert torch.equal(whole.batch(3)[0], both)  # N ranks with slices see what one process with all sees
    small = TokenData.open(str(path), dtype="uint16", vocab_size=100, seq_len=16, batch_size=2, seed=7)
    with pytest.raises(ValueError, match="beyond the model's vocab_size 100"):
        small.batch(0)
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a multiple of 2 bytes"):
        TokenData.open(str(tmp_path / "odd.bin"), dtype="uint16", vocab_size=10, seq_len=4, batch_size=1, seed=0)


def test_builtin_corpus_is_offline_text():
    corpus = builtin_corpus(1 << 20)
    assert len(corpus) == 1 << 20 and b"def " in corpus.tobytes()


def test_opt_schedule():
    kw = {"peak": 1.0, "warmup": 10, "decay": 90, "min_ratio": 0.1}
    assert lr_at(5, **kw) == 0.5 and lr_at(10, **kw) == 1.0
    assert lr_at(55, **kw) == pytest.approx(0.55) and lr_at(100, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1) and lr_at(55, **kw, multiplier=0.5) == pytest.approx(0.275)


def test_injection_specs():
    (a, b) = parse_injections(["spike@5", "slow-rank@3-9"])
    assert (a.kind, a.first, a.last, b.first, b.last) == ("spike", 5, 5, 3, 9)
    for bad in ["spike", "spike@x", "boom@3", "crash@0", "slow-rank@9-3"]:
        with pytest.raises(ValueError):
            parse_injections([bad])


def test_checkpoints_are_complete_or_ignored_and_pruned(tmp_path):
    model = build(OPTConfig(n_layer=1, n_head=2, d_model=16, vocab_size=64, max_seq_len=8))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    ckpt = Checkpointer(tmp_path, keep_latest=2, rank=0)
    for step in (10, 20, 30):
        ckpt.save(step, model, opt, {"step": step})
    assert ckpt.steps() == [20, 30]  # keep_latest
    (tmp_path / "step-00000040").mkdir()  # a save that died before its marker
    (tmp_path / "step-00000050.partial").mkdir()
    assert ckpt.latest() == 30
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert ckpt.load(30, model, opt) == {"step": 30}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    moved = ckpt.supersede_after(20)  # a rewind to 20 abandons the branch that saved 30: kept aside, never reused
    assert len(moved) == 1 and moved[0].startswith("superseded/step-00000030-")
    assert ckpt.steps() == [20] and (tmp_path / "step-00000020" / COMPLETE).is_file()
    with pytest.raises(ValueError, match="keep_latest must be >= 2"):
        Checkpointer(tmp_path, keep_latest=1, rank=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_activation_checkpointing_train(tmp_path, precision):
    train(
        tmp_path / "run",
        "--steps=30",
        f"--precision={precision}",
        "--parallel.activation_checkpointing=true",
        "--telemetry.enabled=false",
    )
    loss = Recorded(tmp_path / "run").metric("loss")
    assert loss[30] < loss[1] - 0.5
    assert (len(loss), precision == "fp16") == (30, "loss_scale" in _names(tmp_path / "run"))


def _names(run_dir):
    rec = Recorded(run_dir)
    from midflight.logbook.store import queries

    return queries.metric_names(rec.store, rec.run)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fairscale FSDP and NVML need a CUDA GPU")
@pytest.mark.parametrize("fsdp", ["fsdp2", "fairscale"])
def test_gpu_fp16_opt125m_with_nvml_telemetry(tmp_path, fsdp):
    """On a GPU machine: OPT-125M in fp16 on both FSDP engines, with real NVML telemetry and energy."""
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "midflight.trainer",
         "--run-dir", str(tmp_path / "run"), "--model", "125m", "--device", "cuda", "--precision", "fp16",
         "--fsdp", fsdp, "--steps", "30", "--data.seq_len=512", "--telemetry.hz=10", "--checkpoint.every=15"],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    rec = Recorded(tmp_path / "run")
    assert rec.metric("loss")[30] < rec.metric("loss")[1]
    energy = (
        rec.store.cursor()
        .execute("SELECT max(value) FROM telemetry WHERE device = 'gpu0' AND name = 'energy_j'")
        .fetchone()[0]
    )
    assert energy and energy > 0
    assert "mfu" in _names(tmp_path / "run")


def test_presets_are_listed_with_their_sizes():
    out = subprocess.run(
        [sys.executable, "-m", "midflight.trainer", "--presets"],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    assert out.returncode == 0
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert set(rows) == {"tiny", "125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b", "175b"}
    assert "174,604,443,648" in rows["175b"] and "125,237,760" in rows["125m"]


def test_meta_init_needs_a_sharded_model(tmp_path):
    out = train(tmp_path / "run", "--steps=2", "--model.meta_init=on", check=False)
    assert out.returncode == 2 and "model.meta_init=on needs --fsdp fsdp2 under torchrun" in out.stderr


@pytest.mark.slow
def test_meta_init_builds_shards_and_trains_under_fsdp2(tmp_path):
    """The path of the big presets, on the tiny one: meta device -> fully_shard -> to_empty -> init per shard."""
    train(tmp_path / "run", "--steps=20", "--model.meta_init=on", "--telemetry.enabled=false", nproc=2)
    loss = Recorded(tmp_path / "run").metric("loss")
    assert loss[20] < loss[1] - 0.5
