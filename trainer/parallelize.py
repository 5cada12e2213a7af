"""How the model is spread over ranks: torch FSDP2, fairscale FSDP, or not at all.

The model itself knows nothing of this (trainer/model.py never imports torch.distributed).
Mixed precision is done the same way on every backend, with torch.autocast around the
forward pass (see trainer/precision.py), so the three backends compute the same numbers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def parallelize(model: nn.Module, *, fsdp: str, device: torch.device, activation_checkpointing: bool) -> nn.Module:
    """Wrap each block, then the root. `fsdp` is fsdp2 | fairscale | none (plain, or DDP with several ranks)."""
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(model.blocks):
            model.blocks[i] = checkpoint_wrapper(block)  # recompute the block in backward: memory for compute
    if not dist.is_initialized():
        return model.to(device)
    if fsdp == "none":  # every rank holds the whole model; gradients are averaged (DDP), or the ranks would drift
        model.to(device)
        if dist.get_world_size() == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if fsdp == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # explicit: CPU needs a CPU mesh
        if not next(model.parameters()).is_meta:  # a meta model is sharded first and materialised by the caller
            model.to(device)
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # embeddings (tied with the output projection), final LayerNorm
        return model
    if fsdp == "fairscale":
        if device.type != "cuda":
            raise ValueError("fairscale FSDP needs CUDA: it does not run on CPU")
        from fairscale.nn.data_parallel import FullyShardedDataParallel as FairscaleFSDP

        model.to(device)
        # mixed_precision=False: autocast does the fp16 compute, so gradients stay fp32 for AdamW and
        # torch's GradScaler (fairscale's own mixed precision leaves fp16 gradients both refuse).
        for i, block in enumerate(model.blocks):
            model.blocks[i] = FairscaleFSDP(block, mixed_precision=False)
        return FairscaleFSDP(model, mixed_precision=False)
    raise ValueError(f"unknown parallel.fsdp {fsdp!r}")


def is_sharded(model: nn.Module) -> bool:
    return dist.is_initialized() and any(_local(p) is not p for p in model.parameters()) or _is_fairscale(model)


def _is_fairscale(model: nn.Module) -> bool:
    return type(model).__module__.startswith("fairscale")


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm`; returns the global grad norm before clipping, as a 0-d tensor on every rank."""
    if _is_fairscale(model):
        return model.clip_grad_norm_(max_norm)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 returns a DTensor


def param_norm(model: nn.Module) -> torch.Tensor:
    """Global L2 norm of the weights (a collective when sharded: call it on every rank)."""
    local = [_local(p.detach()).float() for p in model.parameters()]
    sq = torch.stack([t.pow(2).sum() for t in local]).sum() if local else torch.zeros(())
    if is_sharded(model):
        dist.all_reduce(sq)  # shards are disjoint: the sum of squares adds up
    return sq.sqrt()
