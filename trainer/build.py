"""Assemble one segment (one launch, or one leg after a rewind): where it starts, its parts, its recorder.

A segment starts fresh, from `--resume`, after torchrun restarted a crashed job
(TORCHELASTIC_RESTART_COUNT > 0: resume from the latest complete checkpoint and
say why the last segment ended), or after a rewind intervention.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from midflight import logbook
from midflight.logbook.record import segments
from midflight.logbook.record.dist import DistInfo, detect

from .checkpoint import Checkpointer
from .config import TrainConfig, set_value
from .data import TokenData
from .faults import Faults
from .model import OPT, PRESETS, flops_per_token, num_params, on_meta, param_groups, preset
from .parallelize import parallelize
from .precision import Precision
from .trainer import Outcome, Parts, Trainer, apply_optimizer_knobs, set_knob

# Dense bf16/fp16 tensor-core peaks per device, for the MFU estimate (override with --log.peak_tflops).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A10G": 125.0, "L4": 121.0, "V100": 125.0}


@dataclass
class Start:
    resume_step: int | None = None  # None: a fresh start
    reason: str | None = None
    changes: dict = field(default_factory=dict)
    load: bool = False  # load the checkpoint of resume_step (False: a restart with no checkpoint yet)
    carry: dict = field(default_factory=dict)  # knobs in force when a rewind was asked for: {config key: value}


def preset_table() -> str:
    """Every preset with its parameter count, counted from the architecture (no weights are allocated)."""
    lines = [
        f"{'preset':>7} {'layers':>6} {'heads':>5} {'d_model':>7} {'parameters':>17} {'peak LR':>8} "
        f"{'batch tokens':>12} {'warm-up':>7}  source"
    ]
    for name, p in PRESETS.items():
        a = p.arch
        lines.append(
            f"{name:>7} {a.n_layer:>6} {a.n_head:>5} {a.d_model:>7} {num_params(a):>17,} "
            f"{p.peak_lr:>8.1e} {p.batch_tokens:>12,} {p.warmup_steps:>7}  {p.source}"
        )
    return "\n".join(lines)


def checkpoint_root(cfg: TrainConfig) -> Path:
    return Path(cfg.run_dir) / "checkpoints"


def first_start(cfg: TrainConfig, resume: str | None, changes: dict) -> Start:
    ckpt_steps = Checkpointer(checkpoint_root(cfg), keep_latest=2, rank=0).steps()
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts > 0:
        prev = segments.latest(Path(cfg.run_dir))
        cause = segments.describe_end(Path(cfg.run_dir), prev) if prev else "no earlier segment"
        step = ckpt_steps[-1] if ckpt_steps else None
        where = f"from the checkpoint of step {step}" if step is not None else "from scratch (no checkpoint yet)"
        reason = f"automatic restart {restarts} (torchrun) {where} after {cause}"
        return Start(step if step is not None else 0, reason, {}, load=step is not None)
    if resume is not None:
        step = ckpt_steps[-1] if (resume == "latest" and ckpt_steps) else (None if resume == "latest" else int(resume))
        if step is None or step not in ckpt_steps:
            raise ValueError(
                f"no complete checkpoint to resume from {step if step is not None else ''} in "
                f"{checkpoint_root(cfg)}; available: {ckpt_steps or 'none'}"
            )
        return Start(step, f"resumed from step {step} (--resume)" + describe_changes(changes), changes, load=True)
    if ckpt_steps:
        raise ValueError(
            f"{cfg.run_dir} already has checkpoints (steps {ckpt_steps}); pass --resume to continue it, "
            "or choose a new --run-dir"
        )
    return Start()


def describe_changes(changes: dict) -> str:
    return "; " + ", ".join(f"{k} -> {v}" for k, v in changes.items()) if changes else ""


def resolve_preset(cfg: TrainConfig) -> TrainConfig:
    """The config with the preset's defaults filled in (peak LR, warm-up, sequence length), as recorded."""
    cfg = copy.deepcopy(cfg)
    p = preset(cfg.model.preset)
    if cfg.optim.lr == 0:
        cfg.optim.lr = p.peak_lr
    if cfg.optim.warmup_steps < 0:
        cfg.optim.warmup_steps = min(p.warmup_steps, cfg.steps)
    if cfg.data.seq_len == 0:
        cfg.data.seq_len = p.arch.max_seq_len
    if cfg.data.seq_len > p.arch.max_seq_len:
        raise ValueError(
            f"data.seq_len {cfg.data.seq_len} exceeds the {cfg.model.preset} model's {p.arch.max_seq_len} positions"
        )
    if not cfg.name:
        cfg.name = Path(cfg.run_dir).resolve().name
    return cfg


def init_distributed(device: str) -> DistInfo:
    """Join torchrun's process group (gloo on CPU, NCCL on GPU); a plain `python -m midflight.trainer` is one rank."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one store across restarts, and the ranks of a restarted job can read the
            # dead job's addresses from it ("Connection refused" in gloo's connectFullMesh). A prefix per
            # restart attempt keeps each generation's keys apart.
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(
                backend, store=dist.PrefixStore(f"midflight/attempt-{attempt}", store), rank=rank, world_size=world
            )
        else:
            dist.init_process_group(backend)
    return detect()


def run_segment(base: TrainConfig, info: DistInfo, start: Start, *, telemetry: bool = True) -> Start | None:
    """Train one segment; returns where the next one starts (after a rewind), or None when the run is done."""
    cfg = resolve_preset(base)
    device = torch.device(cfg.device, info.local_rank if cfg.device == "cuda" else None)
    ckpt = Checkpointer(checkpoint_root(cfg), keep_latest=cfg.checkpoint.keep_latest, rank=info.rank)
    superseded = []
    if start.resume_step is not None and info.is_main:
        superseded = ckpt.supersede_after(start.resume_step)  # an abandoned branch's checkpoints are kept aside
    if dist.is_initialized():
        dist.barrier()

    torch.manual_seed(cfg.seed)  # same init on every rank, before sharding
    arch = dataclasses.replace(preset(cfg.model.preset).arch, dropout=cfg.model.dropout)
    meta = _meta_init(cfg, arch)
    model = parallelize(
        on_meta(arch) if meta else OPT(arch),
        fsdp=cfg.parallel.fsdp,
        device=device,
        activation_checkpointing=cfg.parallel.activation_checkpointing,
    )
    if meta:  # each rank allocates and initialises only its own shards
        model.to_empty(device=device)
        model.init_weights()
    groups = param_groups(model, cfg.optim.weight_decay)
    groups[0]["decay"], groups[1]["decay"] = True, False
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    precision = Precision(
        cfg.precision.dtype,
        device_type=device.type,
        init_scale=cfg.precision.init_scale,
        growth_interval=cfg.precision.growth_interval,
        floor=cfg.precision.scale_floor,
    )

    t_load = time.perf_counter()
    state = ckpt.load(start.resume_step, model, optimizer) if start.load else {}
    load_s = time.perf_counter() - t_load if start.load else None  # the goodput ledger's checkpoint load time
    # Knobs an intervention set before this checkpoint; after a rewind, those in force when it was asked for
    # (a rewind rolls back weights, optimizer, data and loss scale, not the operator's decisions).
    changed = {**state.get("changed", {}), **start.carry}
    for key, value in changed.items():
        set_value(cfg, key, value)
    skip = 0
    for name, value in start.changes.items():
        if name == "skip_batches":
            skip += int(value)
        else:
            changed[set_knob(cfg, name, value)] = value
    apply_optimizer_knobs(cfg, optimizer)
    precision.floor = cfg.precision.scale_floor
    precision.load_state_dict(state.get("scaler", {}))

    data = TokenData.open(
        cfg.data.path,
        dtype=cfg.data.dtype,
        vocab_size=arch.vocab_size,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.data.batch_size,
        seed=cfg.data.seed,
    )
    faults = Faults(
        cfg.inject,
        ckpt_dir=ckpt.root,
        rank=info.rank,
        world=info.world_size,
        spike_lr_factor=cfg.faults.spike_lr_factor,
        slow_s=cfg.faults.slow_rank_s,
    )
    if cfg.log.enabled:
        run = logbook.init(
            cfg.run_dir, name=cfg.name, config=cfg.to_dict(), resume_step=start.resume_step, reason=start.reason
        )
    else:
        run = NullRun()
    n_params = num_params(arch)
    engine = f"{cfg.parallel.fsdp} over {info.world_size} rank(s)" if dist.is_initialized() else "one process"
    if cfg.parallel.fsdp == "none" and info.world_size > 1:
        engine = f"DDP over {info.world_size} ranks (--fsdp none)"
    if info.is_main and cfg.log.print_every:
        how = start.reason or "fresh start"
        print(f"midflight: {cfg.name} segment {run.segment_id} ({how}); logbook in {cfg.run_dir}", flush=True)
        print(
            f"model: OPT {cfg.model.preset}, {n_params:,} parameters; {engine} on {cfg.device}, "
            f"{cfg.precision.dtype}; data: {data.source}",
            flush=True,
        )
    with run:
        if info.is_main:
            run.event(
                "model",
                preset=cfg.model.preset,
                params=n_params,
                flops_per_token=flops_per_token(arch, cfg.data.seq_len),
                world_size=info.world_size,
                data=data.source,
            )
        if start.resume_step is not None and info.is_main:
            run.event(
                "restart",
                step=start.resume_step,
                checkpoint=str(ckpt.path(start.resume_step)) if start.load else None,
                reason=start.reason,
                changes=start.changes,
                superseded_checkpoints=superseded,
                load_seconds=None if load_s is None else round(load_s, 3),
            )
        parts = Parts(
            cfg=cfg,
            model=model,
            optimizer=optimizer,
            precision=precision,
            data=data,
            checkpointer=ckpt,
            faults=faults,
            run=run,
            device=device,
            rank=info.rank,
            world=info.world_size,
            flops_per_token=flops_per_token(arch, cfg.data.seq_len),
            peak_flops=peak_flops(cfg, device),
        )
        trainer = Trainer(
            parts,
            step=state.get("step", start.resume_step or 0),
            batch_index=state.get("batch_index", 0) + skip,
            tokens=state.get("tokens"),
            changed=changed,
        )
        sampler = _start_telemetry(cfg, info, run, device, lambda: trainer.step) if telemetry else None
        try:
            outcome: Outcome = trainer.train()
        finally:
            if sampler is not None:
                sampler.stop()
        if outcome.reason != "completed":
            run.finish(outcome.reason)
    if outcome.reason == "rewound":
        why = outcome.why + describe_changes(outcome.changes)
        return Start(outcome.resume_step, why, outcome.changes, load=True, carry=trainer.changed)
    return None


class NullRun:
    """A recorder that records nothing: the `--log.enabled=false` baseline for measuring what recording costs."""

    segment_id = "unrecorded"

    def log(self, metrics, step=None) -> None:
        return None

    def event(self, kind, step=None, **fields) -> None:
        return None

    def telemetry(self, values, device, step=None) -> None:
        return None

    def finish(self, reason="completed", **kw) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _meta_init(cfg: TrainConfig, arch) -> bool:
    """Big models are never materialised whole on one rank: built on the meta device, sharded, then initialised."""
    sharded = cfg.parallel.fsdp == "fsdp2" and dist.is_initialized()
    if cfg.model.meta_init == "on" and not sharded:
        raise ValueError("model.meta_init=on needs --fsdp fsdp2 under torchrun (a sharded model)")
    return cfg.model.meta_init == "on" or (cfg.model.meta_init == "auto" and sharded and num_params(arch) > 2e9)


def peak_flops(cfg: TrainConfig, device: torch.device) -> float:
    if cfg.log.peak_tflops:
        return cfg.log.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return 0.0  # unknown (every CPU): no MFU rather than a made-up one


def _start_telemetry(cfg: TrainConfig, info: DistInfo, run, device: torch.device, step_fn):
    if not (cfg.telemetry.enabled and cfg.log.enabled) or info.local_rank != 0:  # one sampler per node
        return None
    from .telemetry import TelemetrySampler

    kind = cfg.telemetry.devices
    sampler = TelemetrySampler(
        run=run,
        hz=cfg.telemetry.hz,
        device_type="cuda" if kind == "gpu" or (kind == "auto" and device.type == "cuda") else "cpu",
        step_fn=step_fn,
        cpu_tdp_w=cfg.telemetry.cpu_tdp_w or None,
    )
    sampler.start()
    return sampler
