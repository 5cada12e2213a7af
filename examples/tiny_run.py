"""A real, tiny PyTorch training run recorded with the logbook Recorder API.

It trains a byte-level MLP language model on the Python standard library's own
source (bytes every machine has) and lives through what big runs live through:
an LR mistake causes a loss spike, the job then crashes, and it is rolled back
to the last good checkpoint with a lower LR and a tighter clip. The logbook
turns that into two segments, a restart lineage and a config diff.

    python examples/tiny_run.py runs/demo && midflight summary runs/demo
"""

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from midflight import logbook

CONTEXT, BATCH = 16, 64


def corpus(max_bytes: int = 4 << 20) -> torch.Tensor:
    src = Path(os.__file__).parent
    chunks, total = [], 0
    for path in sorted(src.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).long()


class ByteMLP(nn.Module):
    def __init__(self, d: int = 64, hidden: int = 256):
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.mlp = nn.Sequential(nn.Linear(CONTEXT * d, hidden), nn.ReLU(), nn.Linear(hidden, 256))

    def forward(self, x):  # x: (B, CONTEXT) bytes -> logits (B, 256)
        return self.mlp(self.emb(x).flatten(1))


def batch(data: torch.Tensor, step: int, seed: int):
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # deterministic: a resume replays the same data
    ix = torch.randint(len(data) - CONTEXT - 1, (BATCH,), generator=g)
    x = torch.stack([data[i : i + CONTEXT] for i in ix])
    return x, data[ix + CONTEXT]


def train(
    run_dir: Path,
    data,
    *,
    start: int,
    end: int,
    lr: float,
    clip: float,
    resume_step=None,
    reason=None,
    spike_at=None,
    crash_at=None,
):
    torch.manual_seed(0)
    model = ByteMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    if resume_step is not None:
        ckpt = torch.load(run_dir / "ckpt" / f"step-{resume_step}.pt")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        for group in opt.param_groups:
            group["lr"] = lr
    config = {"lr": lr, "clip": clip, "batch": BATCH, "context": CONTEXT, "betas": [0.9, 0.95], "weight_decay": 0.1}
    with logbook.init(run_dir, name="tiny byte-MLP", config=config, resume_step=resume_step, reason=reason) as run:
        if resume_step is not None:
            run.event("restart", step=resume_step, checkpoint=f"ckpt/step-{resume_step}.pt", reason=reason)
        for step in range(start, end + 1):
            t0 = time.perf_counter()
            if step == spike_at:  # the mistake: a 40x LR typo, as a person might make mid-flight
                for group in opt.param_groups:
                    group["lr"] = lr * 40
                run.event("lr_change", step=step, old=lr, new=lr * 40)
            x, y = batch(data, step, seed=1)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            dt = time.perf_counter() - t0
            run.log(
                {
                    "loss": loss.detach(),
                    "ppl": loss.detach().exp(),
                    "grad_norm": grad_norm,
                    "clipped": float(grad_norm > clip),
                    "lr": opt.param_groups[0]["lr"],
                    "tokens": step * BATCH,
                    # midflight's name, in seconds: the ETA, the step-time chart and straggler detection read it
                    # (a loop that logs `step_time_ms` or `iter_time_ms` is recognised too: logbook/roles.py)
                    "step_time_s": dt,
                    "tokens_per_s": BATCH / dt,
                },
                step=step,
            )
            if step % 100 == 0:
                (run_dir / "ckpt").mkdir(parents=True, exist_ok=True)
                torch.save(
                    {"model": model.state_dict(), "opt": opt.state_dict(), "step": step},
                    run_dir / "ckpt" / f"step-{step}.pt",
                )
                run.event("checkpoint", step=step, path=f"ckpt/step-{step}.pt")
            if step == crash_at:
                raise RuntimeError("NCCL watchdog timeout (simulated): rank 0 lost its peer")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args()
    data = corpus()
    print(f"training on {len(data):,} bytes of the Python standard library -> {args.run_dir}")
    try:
        train(
            args.run_dir,
            data,
            start=1,
            end=args.steps,
            lr=3e-3,
            clip=1.0,
            spike_at=args.steps // 2,
            crash_at=args.steps // 2 + 50,
        )
    except RuntimeError as exc:
        print(f"segment 1 crashed: {exc}")
    logbook.annotate(args.run_dir, step=args.steps // 2, kind="lr", text="LR typo: 40x peak; loss spiked")
    resume = (args.steps // 2 // 100) * 100 - 100 if args.steps >= 300 else 0
    train(
        args.run_dir,
        data,
        start=resume + 1,
        end=args.steps,
        lr=1.5e-3,
        clip=0.3,
        resume_step=resume,
        reason="rollback after the LR spike and crash; lr 3e-3 -> 1.5e-3, clip 1.0 -> 0.3",
    )
    print("segment 2 completed")


if __name__ == "__main__":
    main()
