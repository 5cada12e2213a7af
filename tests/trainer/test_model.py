"""trainer/model.py: the OPT decoder, its presets and helpers (CPU, a few seconds)."""

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from midflight.trainer import model as M
from midflight.trainer.model import OPT, OPTConfig, build, flops_per_token, num_params, on_meta, param_groups, preset

# OPT paper Table 1: name -> (layers, heads, d_model, peak lr, batch size in millions of tokens)
TABLE_1 = {
    "125m": (12, 12, 768, 6.0e-4, 0.5),
    "350m": (24, 16, 1024, 3.0e-4, 0.5),
    "1.3b": (24, 32, 2048, 2.0e-4, 1),
    "2.7b": (32, 32, 2560, 1.6e-4, 1),
    "6.7b": (32, 32, 4096, 1.2e-4, 2),
    "13b": (40, 40, 5120, 1.0e-4, 4),
    "30b": (48, 56, 7168, 1.0e-4, 4),
    "66b": (64, 72, 9216, 0.8e-4, 2),
    "175b": (96, 96, 12288, 1.2e-4, 2),
}


def nominal_size(name: str) -> float:
    return float(name[:-1]) * {"m": 1e6, "b": 1e9}[name[-1]]


def small_cfg(**kw) -> OPTConfig:
    return OPTConfig(**{"n_layer": 2, "n_head": 4, "d_model": 64, "vocab_size": 256, "max_seq_len": 64, **kw})


def test_presets_cover_table_1():
    assert set(M.PRESETS) == {"tiny", *TABLE_1}


@pytest.mark.parametrize("name", list(M.PRESETS))
def test_preset_builds_on_meta_with_the_right_size(name):
    p = preset(name)
    model = on_meta(p.arch)
    assert all(t.device.type == "meta" for t in model.parameters())
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == p.arch.n_layer
    n = num_params(model)
    assert n == num_params(p.arch)  # the closed form agrees with the module
    if name == "tiny":
        assert n < 1_000_000 and p.arch.vocab_size == 256
        return
    assert abs(n - nominal_size(name)) / nominal_size(name) < 0.03, f"{name}: {n:,} parameters"


@pytest.mark.parametrize("name", list(TABLE_1))
def test_preset_recipe_matches_the_paper(name):
    L, H, d, lr, batch_m = TABLE_1[name]
    p = preset(name)
    a = p.arch
    assert (a.n_layer, a.n_head, a.d_model, a.d_ffn) == (L, H, d, 4 * d)
    assert (a.vocab_size, a.max_seq_len, a.dropout) == (50272, 2048, 0.1)
    assert p.peak_lr == pytest.approx(lr)
    assert p.batch_tokens == round(batch_m * 2**20)
    assert p.warmup_steps == (2000 if name == "175b" else round(375e6 / p.batch_tokens))
    assert "Table 1" in p.source


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        preset("7b")
    assert "'7b'" in str(err.value)
    for name in M.PRESETS:
        assert name in str(err.value)


def test_config_defaults_and_frozen():
    cfg = OPTConfig(n_layer=2, n_head=4, d_model=64)
    assert (cfg.d_ffn, cfg.vocab_size, cfg.max_seq_len, cfg.dropout) == (256, 50272, 2048, 0.1)
    assert OPTConfig(n_layer=2, n_head=4, d_model=64, d_ffn=100).d_ffn == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layer = 3


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"n_head": 7, "d_model": 768}, "model.d_model (768) must be divisible by model.n_head (7)"),
        ({"n_layer": 0}, "model.n_layer"),
        ({"n_head": -4}, "model.n_head"),
        ({"d_model": 0}, "model.d_model"),
        ({"d_ffn": 0}, "model.d_ffn"),
        ({"vocab_size": 0}, "model.vocab_size"),
        ({"max_seq_len": -1}, "model.max_seq_len"),
        ({"n_layer": 2.0}, "model.n_layer"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"dropout": -0.1}, "model.dropout"),
    ],
)
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        small_cfg(**kw)


@pytest.mark.parametrize("how", ["build", "meta"])
def test_init_stds(how):
    torch.manual_seed(0)
    cfg = small_cfg(n_layer=8, d_model=256, n_head=4, vocab_size=1024)
    if how == "build":
        model = build(cfg)
    else:  # the FSDP path: shapes on meta, storage allocated, then initialised
        model = on_meta(cfg)
        model.to_empty(device="cpu")
        model.init_weights()
    out_std = 0.006 / math.sqrt(2 * cfg.n_layer)
    for block in model.blocks:
        assert block.mlp.fc1.weight.std().item() == pytest.approx(0.006, rel=0.03)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.006, rel=0.03)
        assert block.attn.out_proj.weight.std().item() == pytest.approx(out_std, rel=0.03)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(out_std, rel=0.03)
        for ln in (block.ln_1, block.ln_2):
            assert torch.equal(ln.weight, torch.ones_like(ln.weight))
    assert model.wte.weight.std().item() == pytest.approx(0.006, rel=0.03)
    assert model.wpe.weight.std().item() == pytest.approx(0.006, rel=0.03)
    assert model.wte.weight.mean().abs().item() < 1e-4
    assert torch.equal(model.ln_f.weight, torch.ones_like(model.ln_f.weight))
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    idx, targets = torch.randint(0, cfg.vocab_size, (2, 2, 16))
    _, loss, _ = model(idx, targets)
    assert loss.item() == pytest.approx(math.log(cfg.vocab_size), rel=0.05)  # near-uniform predictions at init


def test_causal():
    torch.manual_seed(0)
    model = build(preset("tiny").arch).eval()
    idx = torch.randint(0, 256, (2, 32))
    changed = idx.clone()
    changed[:, 20] = (idx[:, 20] + 1) % 256
    with torch.no_grad():
        a, _, _ = model(idx)
        b, _, _ = model(changed)
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 20:], b[:, 20:], atol=1e-6, rtol=0)  # the change is visible from there on


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = build(small_cfg(dropout=0.5))
    idx = torch.randint(0, 256, (2, 16))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])


def test_output_projection_is_tied_to_the_token_embedding():
    torch.manual_seed(0)
    model = build(small_cfg(vocab_size=300)).eval()  # a vocab_size no other weight has as a dimension
    shape = model.wte.weight.shape
    assert [n for n, p in model.named_parameters() if p.shape == shape] == ["wte.weight"]
    idx = torch.randint(0, 100, (1, 8))  # token 200 never appears in the input
    with torch.no_grad():
        before, _, _ = model(idx)
        model.wte.weight[200] += 1.0
        after, _, _ = model(idx)
    assert not torch.allclose(before[..., 200], after[..., 200])
    assert torch.equal(before[..., :200], after[..., :200])


def test_forward_shapes_loss_and_actv_norm():
    torch.manual_seed(0)
    model = build(small_cfg()).eval()
    idx = torch.randint(0, 256, (3, 10))
    captured = {}
    model.blocks[-1].register_forward_hook(lambda m, i, o: captured.update(h=o))
    logits, loss, actv_norm = model(idx, idx)
    assert logits.shape == (3, 10, 256)
    expected_loss = torch.nn.functional.cross_entropy(logits.view(-1, 256), idx.view(-1))
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert actv_norm.shape == () and actv_norm.dtype == torch.float32 and not actv_norm.requires_grad
    assert actv_norm.item() == pytest.approx(captured["h"].norm(dim=-1).mean().item(), rel=1e-6)
    logits, loss, _ = model(idx)
    assert loss is None


def test_too_long_sequence_is_a_clear_error():
    model = build(small_cfg(max_seq_len=16))
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly max_seq_len is fine
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast(dtype):
    torch.manual_seed(0)
    model = build(preset("tiny").arch)
    idx, targets = torch.randint(0, 256, (2, 4, 64))
    with torch.autocast("cpu", dtype=dtype):
        logits, loss, actv_norm = model(idx, targets)
    assert logits.dtype == dtype  # the matmuls really ran in low precision
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log(256), rel=0.05)
    assert actv_norm.dtype == torch.float32 and torch.isfinite(actv_norm)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_tiny_model_learns():
    torch.manual_seed(0)
    p = preset("tiny")
    model = build(p.arch)
    data = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 20))
    starts = range(0, 8 * 40, 40)
    x = torch.stack([data[i : i + 64] for i in starts])  # (8, 64): batch_tokens of the preset
    y = torch.stack([data[i + 1 : i + 65] for i in starts])
    assert x.numel() == p.batch_tokens
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=p.peak_lr)
    losses = []
    for _ in range(60):
        _, loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(256), rel=0.05)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_flops_per_token():
    cfg = preset("125m").arch
    model = on_meta(cfg)
    n = sum(p.numel() for name, p in model.named_parameters() if name != "wpe.weight")
    assert flops_per_token(cfg, 2048) == 6 * n + 12 * 12 * 768 * 2048
    assert flops_per_token(cfg, 1024) - flops_per_token(cfg, 0) == 12 * 12 * 768 * 1024
    big = preset("175b").arch  # ~6 x 175e9 plus a few percent for attention at 2048 tokens
    assert 6 * 170e9 < flops_per_token(big, 2048) < 6 * 185e9


def test_param_groups_partition_the_parameters():
    model = build(preset("tiny").arch)
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids))  # nothing twice, the tied embedding included
    assert set(ids) == {id(p) for p in model.parameters()}
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == num_params(model)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        is_norm_or_bias = name.endswith("bias") or ".ln_" in name or name.startswith("ln_f")
        assert (id(p) in no_decay_ids) == is_norm_or_bias, name
    assert any(p is model.wte.weight for p in decay["params"])


def test_model_does_not_import_torch_distributed():
    tree = ast.parse(Path(M.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m.startswith("torch.distributed")]
    assert isinstance(build(small_cfg()), OPT)


def test_forward_matches_a_written_out_reference():
    """Pre-LN blocks, causal softmax attention, ReLU MLP, final LayerNorm, tied output: spelled out by hand."""
    torch.manual_seed(0)
    cfg = small_cfg()
    model = build(cfg).eval()
    for p in model.parameters():  # non-trivial LayerNorm and bias values, so using them wrongly shows
        torch.nn.init.normal_(p, std=0.3)
    idx = torch.randint(0, 256, (2, 12))
    B, T, C, nh = 2, 12, cfg.d_model, cfg.n_head
    x = model.wte.weight[idx] + model.wpe.weight[:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for blk in model.blocks:
        h = torch.nn.functional.layer_norm(x, (C,), blk.ln_1.weight, blk.ln_1.bias)
        q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(C, dim=-1)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2) / math.sqrt(C // nh)).masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        h = torch.nn.functional.layer_norm(x, (C,), blk.ln_2.weight, blk.ln_2.bias)
        h = torch.relu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
        x = x + h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    expected = torch.nn.functional.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias) @ model.wte.weight.T
    with torch.no_grad():
        logits, _, actv_norm = model(idx)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert actv_norm.item() == pytest.approx(x.norm(dim=-1).mean().item(), rel=1e-5)


def test_no_dropout_on_embeddings():
    torch.manual_seed(0)
    model = build(small_cfg(dropout=0.5)).train()
    idx = torch.randint(0, 256, (2, 12))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model(idx)
    torch.testing.assert_close(seen["x"], model.wte(idx) + model.wpe(torch.arange(12)), atol=0, rtol=0)
