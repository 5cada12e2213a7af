"""The OPT decoder (Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models").

A decoder-only, pre-LayerNorm transformer with learned positions, ReLU MLPs and input/output
embeddings shared, plus the paper's Table 1 model sizes and recipes as presets. Parallelism
(FSDP) is applied from outside: this module never imports torch.distributed, and keeps the
blocks in `OPT.blocks` so the wrapper can shard each one.

    model = build(preset("125m").arch)                      # real weights on the CPU
    model = on_meta(cfg); model.to_empty(device="cuda"); model.init_weights()  # big models
    logits, loss, actv_norm = model(idx, targets)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

INIT_STD = 0.006  # metaseq's init std for every weight matrix and embedding of OPT


@dataclass(frozen=True)
class OPTConfig:
    n_layer: int  # transformer blocks
    n_head: int  # attention heads per block; head size is d_model // n_head
    d_model: int  # width of the residual stream (and of the embeddings)
    d_ffn: int | None = None  # hidden width of the MLP; None means 4 * d_model
    vocab_size: int = 50272  # tokens; OPT's GPT-2 BPE vocabulary padded to a multiple of 8
    max_seq_len: int = 2048  # positions with a learned embedding: the longest sequence in tokens
    dropout: float = 0.1  # probability, on attention weights and both residual branches, not embeddings

    def __post_init__(self):
        if self.d_ffn is None:
            object.__setattr__(self, "d_ffn", 4 * self.d_model)  # frozen: set through the back door
        for name in ("n_layer", "n_head", "d_model", "d_ffn", "vocab_size", "max_seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"model.{name} must be a positive integer, not {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ValueError(f"model.dropout must be a probability in [0, 1), not {d!r}")


@dataclass(frozen=True)
class Preset:
    arch: OPTConfig
    peak_lr: float  # the learning rate at the end of warm-up
    batch_tokens: int  # tokens per optimizer step
    warmup_steps: int  # optimizer steps of linear warm-up from 0 to peak_lr
    source: str  # where these numbers come from


def _paper(n_layer: int, n_head: int, d_model: int, peak_lr: float, batch_tokens: int) -> Preset:
    # Warm-up: "over the first 2000 steps" for 175B, "over 375M tokens" for the smaller models.
    warmup = 2000 if d_model == 12288 else round(375e6 / batch_tokens)
    return Preset(OPTConfig(n_layer, n_head, d_model), peak_lr, batch_tokens, warmup, "OPT paper Table 1")


# Table 1 gives batch sizes in millions of tokens; we read 0.5M as 2**19, 1M as 2**20, 2M as 2**21 and
# 4M as 2**22, which are whole numbers of 2048-token sequences (256, 512, 1024, 2048 of them).
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        OPTConfig(n_layer=2, n_head=4, d_model=64, d_ffn=256, vocab_size=256, max_seq_len=128),  # byte tokens
        peak_lr=1e-3,
        batch_tokens=8 * 64,
        warmup_steps=20,
        source="midflight: trains in seconds on a CPU",
    ),
    "125m": _paper(12, 12, 768, 6.0e-4, 2**19),
    "350m": _paper(24, 16, 1024, 3.0e-4, 2**19),
    "1.3b": _paper(24, 32, 2048, 2.0e-4, 2**20),
    "2.7b": _paper(32, 32, 2560, 1.6e-4, 2**20),
    "6.7b": _paper(32, 32, 4096, 1.2e-4, 2**21),
    "13b": _paper(40, 40, 5120, 1.0e-4, 2**22),
    "30b": _paper(48, 56, 7168, 1.0e-4, 2**22),
    "66b": _paper(64, 72, 9216, 0.8e-4, 2**21),
    "175b": _paper(96, 96, 12288, 1.2e-4, 2**21),
}


def preset(name: str) -> Preset:
    """The preset called `name` (e.g. "125m"); ValueError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; one of: {', '.join(PRESETS)}")
    return PRESETS[name]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # q, k, v for all heads in one matmul
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        # The fused kernel applies the 1/sqrt(hs) scale, the causal mask and attention dropout.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ffn)
        self.fc2 = nn.Linear(cfg.d_ffn, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))  # OPT uses ReLU, not GELU


class Block(nn.Module):
    """Pre-LayerNorm block: normalise, transform, drop out, add back to the residual stream."""

    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x


class OPT(nn.Module):
    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # No lm_head module: the output projection reuses wte.weight in forward(), so the tie cannot be
        # broken by to_empty() or by a wrapper that replaces parameters, and the weight is counted once.
        if self.wte.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """metaseq's init; call it after `to_empty(device=...)` when the model was built on the meta device."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Each block adds two branches to the residual stream; scaling the layers that write into it keeps
        # its variance at init independent of depth (GPT-2, Megatron).
        out_std = INIT_STD / math.sqrt(2 * self.cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=out_std)
            nn.init.normal_(block.mlp.fc2.weight, mean=0.0, std=out_std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """idx, targets: (B, T) int64 token ids. Returns (logits, loss, actv_norm).

        logits: (B, T, vocab_size), in the autocast dtype under autocast.
        loss: mean cross-entropy over tokens in nats, computed on float32 logits; None without targets.
        actv_norm: detached 0-d float32 tensor, the mean over all B*T tokens of the L2 norm of the final
            hidden state before ln_f (the analogue of metaseq's actv_norm; it grows before a divergence).
        """
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model.max_seq_len ({self.cfg.max_seq_len})")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C); no dropout on embeddings, as in the paper
        for block in self.blocks:
            x = block(x)
        actv_norm = x.detach().float().norm(dim=-1).mean()  # () float32
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, vocab): output projection tied to wte
        loss = None
        if targets is not None:
            # float32 logits: a softmax over 50k entries in bf16/fp16 loses the small probabilities.
            loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T))
        return logits, loss, actv_norm


def num_params(model_or_cfg: nn.Module | OPTConfig) -> int:
    """Parameters, the tied embedding counted once; a config is counted without building a model."""
    if isinstance(model_or_cfg, nn.Module):
        return sum(p.numel() for p in model_or_cfg.parameters())  # parameters() yields a shared one once
    c = model_or_cfg
    d, f = c.d_model, c.d_ffn
    per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)  # 2 LayerNorms, attn, mlp
    return c.vocab_size * d + c.max_seq_len * d + c.n_layer * per_block + 2 * d  # + ln_f


def flops_per_token(cfg: OPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 N + 12 L d T, the estimate of the PaLM paper's appendix B.

    N is the parameter count without the positional embedding (a lookup, not a matmul); the second term is
    the attention scores and their weighted sum, which depend on the sequence length T.
    """
    n = num_params(cfg) - cfg.max_seq_len * cfg.d_model
    return float(6 * n + 12 * cfg.n_layer * cfg.d_model * seq_len)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and embeddings (>= 2-D), none on biases and LayerNorm (nanoGPT).

    OPT trained with AdamW and weight decay 0.1.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # each shared parameter once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build(cfg: OPTConfig, device: str | torch.device = "cpu") -> OPT:
    """An initialised model, its weights created directly on `device`."""
    with torch.device(device):
        return OPT(cfg)


def on_meta(cfg: OPTConfig) -> OPT:
    """The model on the meta device: shapes, no memory. Then `to_empty(device=...)` and `init_weights()`."""
    return build(cfg, "meta")
