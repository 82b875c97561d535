"""The 2025-01-16 speedrun record's components (issue 14): each a flag of the GPT baseline, default off, all on in
--preset=speedrun_2025 (the speedrun preset until issue 31); --preset=speedrun_2024 keeps the old recipe.

Every component is checked on the CPU against a reference written here from the record's facts (RECORD and the
comments below), not derived from train_gpt: shapes, forward values, gradients against autograd of the reference,
the document / sliding-window masks in both forms, the FP8 head's casts and scales (emulated), the optimizers'
schedules and batching, the data path, and one reduced-size CPU run of --preset=speedrun that learns."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train_gpt as T
from conftest import ROOT, SMALL_VOCAB as VOCAB, step_lines, tiny_config, tiny_model, train_in_process
from conftest import small_vocab_config as cfg, small_vocab_model as mdl
from conftest import DOC_EOT, DOC_VOCAB

EOT = 50256           # the record: GPT-2's <|endoftext|> starts a document
BLOCK = 128           # the record's windows count 128-token blocks
E4M3_MAX, E5M2_MAX = 448.0, 57344.0

# The record's facts (modded-nanogpt, 2025-01-16), written out: what --preset=speedrun must set.
RECORD = dict(
    n_layer=12, n_embd=768, n_head=6, vocab_size=50304,
    seq_len=64 * 1024, batch_size=8, device_batch_size=1,      # 8 GPUs x one 64K-token sequence = 524,288 tokens/step
    steps=1393, lr_schedule="trapezoid", warmup_steps=0, cooldown_frac=0.4, min_lr_frac=0.1,
    embed_lr=0.6, head_lr=0.008, scalar_lr=0.04, muon_lr=0.05, adam_beta1=0.8, adam_beta2=0.95, adam_eps=1e-10,
    muon_momentum=0.95, muon_momentum_warmup=300,
    value_embeds=3, unet_skips=True, x0_mix=True, merged_qkv=True, attn_scale=0.12, rope_half=True, rope_base=1024.0,
    logit_softcap=15.0, logit_softcap_form="sigmoid", skip_attn_layers="7", doc_mask=True, attn_window=1792,
    window_long_layers="0,4,7,11", fp8_head=True, muon_batched=True, fused_adam=True,
)
# The record's components as flags (each: what turns it off again, after --preset=speedrun)
COMPONENTS = {"value_embeds": 0, "unet_skips": False, "x0_mix": False, "merged_qkv": False, "attn_scale": 0.0,
              "rope_half": False, "skip_attn_layers": "", "doc_mask": False, "attn_window": 0, "fp8_head": False,
              "muon_batched": False, "fused_adam": False}

pytestmark = pytest.mark.usefixtures("one_thread")


def rand_idx(b, t, vocab=VOCAB, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


@torch.no_grad()
def randomise(model, seed=1, scale=0.05):
    """Zero-initialised weights (output projections, head) and the record's scalars at their inits make many
    checks vacuous: give the zero ones small random values and move the lambdas / skip weights off their inits."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if not p.any():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if name.endswith("lambdas") or name.endswith("skip_weights"):
            p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))


def doc_tokens(b, t, seed=0, eots=9):
    """(b, t) GPT-2 ids with EOT_TOKEN: row 0 at `eots` random places and at the first token and a block's first;
    the other rows at a block's last token (127) and one random place past 3 blocks, so that blocks 1 and 2 lie
    inside one document (full blocks under the document mask)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, EOT, (b, t), generator=g)
    idx[0, torch.randperm(t, generator=g)[:eots]] = EOT
    idx[0, 0] = EOT                                        # a document starting at the first token
    if t > BLOCK:
        idx[0, BLOCK] = EOT                                # ... at a block's first token
    for r in range(1, b):
        idx[r, min(BLOCK - 1, t - 1)] = EOT                # ... at a block's last token
        if t > 3 * BLOCK + 1:
            idx[r, int(torch.randint(3 * BLOCK + 1, t, (1,), generator=g))] = EOT
    return idx


# ----------------------------------------------------------------------------- references (from the record's facts)

def ref_rms(x, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def ref_inv_freq(head_dim, base, half):
    """half (the record): head_dim/4 angular frequencies (1/base)**linspace(0, 1, head_dim/4), then head_dim/4
    zeros; otherwise the usual base**(-2i/head_dim)."""
    if half:
        n = head_dim // 4
        return [(1 / base) ** (i / (n - 1) if n > 1 else 0.0) for i in range(n)] + [0.0] * n
    return [base ** (-2 * i / head_dim) for i in range(head_dim // 2)]


def ref_rope(x, base, half):
    """(B, T, H, D), the record's rotary: pairs (x[j], x[j + D/2]), y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos."""
    D = x.size(-1)
    f = torch.tensor(ref_inv_freq(D, base, half), dtype=torch.float64)
    ang = torch.arange(x.size(1), dtype=torch.float64)[:, None] * f[None]
    cos, sin = ang.cos()[None, :, None, :].to(x.dtype), ang.sin()[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1)


def ref_softmax_attention(q, k, v, allowed, scale):
    """(B, T, H, D) q, k, v; allowed (B or 1, 1, T, T) bool or None (= causal); explicit masked softmax."""
    Tn = q.size(1)
    if allowed is None:
        allowed = torch.ones(Tn, Tn, dtype=torch.bool).tril()[None, None]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def ref_attention(x, wq, wk, wv, wo, n_head, scale, base, half, ve=None, lambdas=None, allowed=None):
    """The record's attention in float64: q, k, v projections; v = l0*v + l1*ve (l0*v without a table); per-head
    RMS-norm of q and k; rotary; softmax(q.k * scale) under the mask; output projection."""
    x = x.double()
    B, Tn, _ = x.shape
    D = wq.size(0) // n_head
    q, k, v = [(x @ w.double().T).view(B, Tn, n_head, D) for w in (wq, wk, wv)]
    if lambdas is not None:
        lam = lambdas.double()
        v = lam[0] * v + lam[1] * ve.double().view_as(v) if ve is not None else lam[0] * v
    q, k = ref_rope(ref_rms(q), base, half), ref_rope(ref_rms(k), base, half)
    y = ref_softmax_attention(q, k, v, allowed, scale).reshape(B, Tn, n_head * D)
    return y @ wo.double().T


def qkv_weights(attn):
    if hasattr(attn, "qkv_w"):
        return attn.qkv_w[0], attn.qkv_w[1], attn.qkv_w[2]
    return attn.c_q.weight, attn.c_k.weight, attn.c_v.weight


def ref_mask(idx, window=None, doc=True):
    """(B, 1, T, T): key <= query, (document-causal) same document, where EOT starts a document (the EOT itself is
    the new document's first token), (window W) query block - key block < W in 128-token blocks."""
    B, Tn = idx.shape
    out = torch.zeros(B, 1, Tn, Tn, dtype=torch.bool)
    q, k = torch.arange(Tn)[:, None], torch.arange(Tn)[None, :]
    for b in range(B):
        docs, d = [], 0
        for tok in idx[b].tolist():
            d += tok == EOT
            docs.append(d)
        docs = torch.tensor(docs)
        m = k <= q
        if window is not None:
            m = m & (q // BLOCK - k // BLOCK < window)
        if doc:
            m = m & (docs[:, None] == docs[None, :])
        out[b, 0] = m
    return out


def expand_block_mask(bm, B, Tn):
    """A BlockMask at token level, from its block lists: full blocks all True, partial blocks = mask_mod, absent
    blocks False. Also returns the per-block classes {(b, qb, kb): 'full' | 'partial'}."""
    out = torch.zeros(B, 1, Tn, Tn, dtype=torch.bool)
    classes = {}
    nb = (Tn + BLOCK - 1) // BLOCK
    for b in range(B):
        hb = b if bm.kv_num_blocks.size(0) > 1 else 0
        for qb in range(nb):
            full = bm.full_kv_indices[hb, 0, qb, :int(bm.full_kv_num_blocks[hb, 0, qb])].tolist() if bm.full_kv_num_blocks is not None else []
            part = bm.kv_indices[hb, 0, qb, :int(bm.kv_num_blocks[hb, 0, qb])].tolist()
            assert not set(full) & set(part), f"block ({qb}, {set(full) & set(part)}) is both full and partial"
            qs = slice(qb * BLOCK, min((qb + 1) * BLOCK, Tn))
            qpos = torch.arange(qs.start, qs.stop)[:, None]
            for kb in full:
                out[b, 0, qs, kb * BLOCK:(kb + 1) * BLOCK] = True
                classes[b, qb, kb] = "full"
            for kb in part:
                kpos = torch.arange(kb * BLOCK, min((kb + 1) * BLOCK, Tn))[None, :]
                out[b, 0, qs, kpos[0, 0]:kpos[0, -1] + 1] = bm.mask_mod(torch.tensor(b), torch.tensor(0), qpos, kpos)
                classes[b, qb, kb] = "partial"
    return out, classes


def fp8_reference(x, w, g, grad_s):
    """The record's FP8 matmul, emulated: x*2 and w*32 cast to e4m3, out = (x_f8 @ w_f8^T) / (2*32) in bf16;
    backward: the (bf16) gradient times grad_s cast to e5m2, grad_x = g_f8 @ w_f8 / (grad_s*32) in bf16,
    grad_w = g_f8^T @ x_f8 / (grad_s*2) in fp32."""
    x_f8 = (x * 2.0).to(torch.float8_e4m3fn).float()
    w_f8 = (w * 32.0).to(torch.float8_e4m3fn).float()
    out = (x_f8 @ w_f8.T / (2.0 * 32.0)).to(torch.bfloat16)
    g_f8 = (g.to(torch.bfloat16) * grad_s).to(torch.float8_e5m2).float()
    grad_x = (g_f8 @ w_f8 / (grad_s * 32.0)).to(torch.bfloat16)
    grad_w = g_f8.T @ x_f8 / (grad_s * 2.0)
    return out, grad_x, grad_w


def assert_within_bf16_ulp(a, b):
    a, b = a.float(), b.float()
    mag = torch.maximum(a.abs(), b.abs()).clamp_min(2.0 ** -126)
    ulp = 2.0 ** (torch.floor(torch.log2(mag)) - 7)
    assert ((a - b).abs() <= ulp).all(), f"more than 1 bf16 ulp apart: max {(a - b).abs().max():.3g}"


# ----------------------------------------------------------------------------- 1. presets

def test_speedrun_preset_is_the_record():
    c = T.parse_args(["--preset=speedrun_2025"])
    wrong = {k: (getattr(c, k), v) for k, v in RECORD.items() if getattr(c, k) != v}
    assert not wrong, f"--preset=speedrun differs from the record (got, record): {wrong}"
    assert set(COMPONENTS) <= set(T.SPEEDRUN_2025_COMPONENTS), set(COMPONENTS) - set(T.SPEEDRUN_2025_COMPONENTS)
    defaults = T.Hyperparameters()
    for name in T.SPEEDRUN_2025_COMPONENTS:
        assert getattr(c, name) != getattr(defaults, name), f"--preset=speedrun leaves {name} off"
        assert getattr(defaults, name) == COMPONENTS.get(name, getattr(defaults, name)), f"{name} is not off by default"
    # LR: constant, then a linear cooldown over the last 40% down to 0.1x
    assert [T.lr_multiplier(s, c) for s in (0, 835)] == [1.0, 1.0]
    for s in (836, 1000, 1200, 1393):
        w = (1 - s / 1393) / 0.4
        assert T.lr_multiplier(s, c) == pytest.approx(w * 1.0 + (1 - w) * 0.1, abs=1e-12)
    assert T.lr_multiplier(1393, c) == pytest.approx(0.1)


def test_speedrun_2024_has_no_component_on():
    c, d = T.parse_args(["--preset=speedrun_2024"]), T.Hyperparameters()
    on = [name for name in T.SPEEDRUN_2025_COMPONENTS if getattr(c, name) != getattr(d, name)]
    assert not on, f"--preset=speedrun_2024 turns on {on}"
    assert (c.seq_len, c.batch_size, c.n_layer, c.n_embd, c.n_head, c.steps) == (1024, 512, 12, 768, 6, 1750)
    assert (c.muon_momentum_warmup, c.min_lr_frac, c.logit_softcap, c.logit_softcap_form, c.rope_base) == (0, 0.0, 30.0, "tanh", 10000.0)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_each_component_flag_turns_exactly_it_off(name):
    flag = T.SPEEDRUN_2025_COMPONENTS[name]
    base = T.asdict(T.parse_args(["--preset=speedrun_2025"]))
    off = T.asdict(T.parse_args(["--preset=speedrun_2025", flag]))
    changed = {k for k in base if base[k] != off[k]}
    assert changed == {name}, f"{flag} changed {changed}"
    assert off[name] == COMPONENTS[name] == getattr(T.Hyperparameters(), name)


REDUCED = ["--preset=speedrun_2025", "--n_layer=12", "--n_embd=32", "--n_head=2", f"--vocab_size={VOCAB}", "--seq_len=256",
           "--kernels=torch", "--bf16=false", "--no-compile"]


@pytest.mark.parametrize("flag", [None] + [T.SPEEDRUN_2025_COMPONENTS[n] for n in sorted(COMPONENTS)])
def test_speedrun_with_one_component_off_trains_a_step(flag, monkeypatch):
    """The record's 12 layers (so layer 7 and the long layers exist) at width 32: forward, backward and a step of
    both optimizers, with every component on and with each one off. The small vocabulary's EOT is id 5."""
    monkeypatch.setattr(T, "EOT_TOKEN", 5)
    c = T.parse_args(REDUCED + ([flag] if flag else []))
    torch.manual_seed(0)
    m = T.build_model(c)
    randomise(m)
    opts = T.build_optimizers(m, c)
    idx = rand_idx(1, 257, seed=1)
    idx[0, [0, 50, 190]] = 5
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss = m(idx[:, :-1], idx[:, 1:])
    loss.backward()
    for o in opts:
        o.step()
    assert math.isfinite(loss.item())
    moved = [n for n, p in m.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > 0.9 * len(before), f"only {len(moved)} of {len(before)} parameters moved"


# ----------------------------------------------------------------------------- 2. value embeddings

@pytest.mark.parametrize("n_layer,n_ve,tables", [
    (12, 3, [0, 1, 2, None, None, None, None, None, None, 0, 1, 2]),   # the record
    (6, 2, [0, 1, None, None, 0, 1]),
    (2, 1, [0, 0]),
])
def test_value_embeddings_tables_and_layers(n_layer, n_ve, tables):
    m = mdl(f"--n_layer={n_layer}", f"--value_embeds={n_ve}")
    ve = m.arch.value_embeds
    assert len(ve) == n_ve and all(isinstance(e, nn.Embedding) and e.weight.shape == (VOCAB, 64) for e in ve)
    for blk in m.blocks:
        assert blk.attn.lambdas.tolist() == [0.5, 0.5]                   # every layer mixes, with or without a table
    idx = rand_idx(2, 16)
    seen = {}
    hooks = [blk.attn.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(i, a[1]))
             for i, blk in enumerate(m.blocks)]
    m(idx)
    for h in hooks:
        h.remove()
    got = []
    for i in range(n_layer):
        v = seen[i]
        got.append(None if v is None else next(j for j, e in enumerate(ve) if torch.equal(v, e(idx))))
    assert got == tables


def test_value_embeddings_init_and_optimizer_placement():
    c = cfg("--n_layer=6", "--value_embeds=3", "--embed_lr=0.123")
    torch.manual_seed(0)
    m = T.build_model(c)
    for e in m.arch.value_embeds:                                         # ~N(0, 1), each its own draw
        w = e.weight.detach()
        assert abs(w.mean().item()) < 0.02 and abs(w.std().item() - 1) < 0.02
    assert not torch.equal(m.arch.value_embeds[0].weight, m.arch.value_embeds[1].weight)
    adam, muon = T.build_optimizers(m, c)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    for e in m.arch.value_embeds:
        groups = [g for g in adam.param_groups if any(p is e.weight for p in g["params"])]
        assert len(groups) == 1 and groups[0]["lr"] == 0.123
        assert groups[0] is adam.param_groups[0] and any(p is m.wte.weight for p in groups[0]["params"])
        assert id(e.weight) not in muon_ids


@pytest.mark.parametrize("with_table", [True, False])
def test_value_mix_and_lambda_gradients_against_reference(with_table):
    m = mdl("--n_layer=2", "--value_embeds=1", "--seq_len=32")
    randomise(m)
    attn = m.blocks[0].attn
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 32, 64, generator=g)
    ve = torch.randn(2, 32, 64, generator=g) if with_table else None
    r = torch.randn(2, 32, 64, generator=g)
    y = attn(x, ve)
    (y * r).sum().backward()
    got = attn.lambdas.grad.clone()
    attn.zero_grad()
    wq, wk, wv = qkv_weights(attn)
    ref = ref_attention(x, wq, wk, wv, attn.c_proj.weight, 2, 32 ** -0.5, 10000.0, False, ve, attn.lambdas)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    (ref * r.double()).sum().backward()
    torch.testing.assert_close(got, attn.lambdas.grad, rtol=1e-4, atol=1e-6)
    if not with_table:
        assert got[1] == 0


# ----------------------------------------------------------------------------- 3. U-net skips and the x0 mix

def ref_run_blocks(model, x, idx):
    """The record's stream: x0 = x (the normalised embedding); the first L//2 blocks' outputs are stacked; decoder
    block i (0-based among the last L - L//2) first adds skip_weights[i] * the popped encoder output; every block
    starts with x = lambda0*x + lambda1*x0; layer i < N uses table i and layer L-N+i uses table i too."""
    blocks, arch = model.blocks, model.arch
    L, tables = len(blocks), list(arch.value_embeds)
    N, enc = len(tables), L // 2
    x0, skips = x, []
    for i, b in enumerate(blocks):
        if arch.skip_weights is not None and i >= enc:
            x = x + arch.skip_weights[i - enc] * skips.pop()
        if b.lambdas is not None:
            x = b.lambdas[0] * x + b.lambdas[1] * x0
        ve = tables[i](idx) if i < N else tables[i - (L - N)](idx) if i >= L - N else None
        if b.attn is not None:
            x = x + b.attn(b.attn_norm(x), ve, None)
        x = x + b.mlp(b.mlp_norm(x))
        if arch.skip_weights is not None and i < enc:
            skips.append(x)
    return x


@pytest.mark.parametrize("flags", [
    ["--n_layer=4", "--unet_skips", "--x0_mix"],
    ["--n_layer=6", "--unet_skips", "--x0_mix", "--value_embeds=2"],
    ["--n_layer=4", "--unet_skips"],
    ["--n_layer=4", "--x0_mix"],
])
def test_run_blocks_against_reference_loop_and_gradients(flags):
    m = mdl(*flags, "--seq_len=16")
    randomise(m)
    idx = rand_idx(2, 16, seed=2)
    emb = m.wte(idx)
    x = m.arch.embed(emb)
    if "--x0_mix" in flags:                                                # x0 = rms_norm(embedding)
        torch.testing.assert_close(x, ref_rms(emb), rtol=1e-5, atol=1e-6)
    r = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(4))
    scalars = [p for n, p in m.named_parameters() if n.endswith("lambdas") or n.endswith("skip_weights")]
    assert scalars
    out = m.arch.run_blocks(m.blocks, x, idx)
    got = torch.autograd.grad((out * r).sum(), scalars)
    ref = ref_run_blocks(m, m.arch.embed(m.wte(idx)), idx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    want = torch.autograd.grad((ref * r).sum(), scalars)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if m.arch.skip_weights is not None:
        assert m.arch.skip_weights.shape == (len(m.blocks) - len(m.blocks) // 2,)


def test_unet_and_x0_mix_inits():
    m = mdl("--n_layer=4", "--unet_skips", "--x0_mix")
    assert m.arch.skip_weights.tolist() == [1.0, 1.0]
    assert all(b.lambdas.tolist() == [1.0, 0.0] for b in m.blocks)
    randomise(m)                                                           # random projections; lambdas moved ...
    blk = m.blocks[0]
    with torch.no_grad():
        blk.lambdas.copy_(torch.tensor([1.0, 0.0]))                        # ... and back to the init
    g = torch.Generator().manual_seed(5)
    x, x0a, x0b = (torch.randn(2, 16, 64, generator=g) for _ in range(3))
    ya, yb = blk(x, x0a), blk(x, x0b)
    lambdas, blk.lambdas = blk.lambdas, None
    try:
        plain = blk(x)
    finally:
        blk.lambdas = lambdas
    assert torch.equal(ya, yb) and torch.equal(ya, plain), "at init the x0 mix must be the identity on x"


def test_unet_skips_with_an_odd_number_of_layers():
    """The decoder half pops one encoder output per block: an odd depth is rejected before any work."""
    with pytest.raises(T.ConfigError, match="--n_layer=3 must be even"):
        mdl("--n_layer=3", "--unet_skips", "--seq_len=16")


# ----------------------------------------------------------------------------- 4. merged QKV

def test_merged_qkv_equals_separate_projections():
    a = mdl("--n_layer=2", "--seq_len=16")
    randomise(a)
    b = mdl("--n_layer=2", "--seq_len=16", "--merged_qkv", seed=1)
    sa = a.state_dict()
    with torch.no_grad():
        for name, p in b.state_dict().items():
            if name.endswith("qkv_w"):
                pre = name[:-len("qkv_w")]
                assert p.shape == (3, 64, 64)
                p.copy_(torch.stack([sa[pre + f"c_{w}.weight"] for w in "qkv"]))
            else:
                p.copy_(sa[name])
    idx, tgt = rand_idx(2, 16, seed=6), rand_idx(2, 16, seed=7)
    la, lb = a(idx, tgt), b(idx, tgt)
    torch.testing.assert_close(a(idx), b(idx), rtol=1e-5, atol=1e-6)
    la.backward(); lb.backward()
    ga = dict(a.named_parameters())
    for name, p in b.named_parameters():
        if name.endswith("qkv_w"):
            pre = name[:-len("qkv_w")]
            for i, w in enumerate("qkv"):
                torch.testing.assert_close(p.grad[i], ga[pre + f"c_{w}.weight"].grad, rtol=1e-4, atol=1e-7)
        else:
            torch.testing.assert_close(p.grad, ga[name].grad, rtol=1e-4, atol=1e-7)
    c = cfg("--merged_qkv")
    _, muon = T.build_optimizers(b, c)
    assert all(any(p is blk.attn.qkv_w for p in muon.param_groups[0]["params"]) for blk in b.blocks)


@pytest.mark.parametrize("batched", [False, True])
def test_muon_takes_a_3d_weight_as_a_stack_of_matrices(batched):
    g = torch.Generator().manual_seed(8)
    w = torch.randn(3, 32, 64, generator=g)
    grads = [torch.randn(3, 32, 64, generator=g) for _ in range(2)]
    p3 = nn.Parameter(w.clone())
    p2 = [nn.Parameter(w[i].clone()) for i in range(3)]
    o3 = T.Muon([p3], lr=0.05, ns_dtype=torch.float32, batched=batched)
    o2 = T.Muon(p2, lr=0.05, ns_dtype=torch.float32, batched=False)
    for gr in grads:
        p3.grad = gr.clone()
        for i, p in enumerate(p2):
            p.grad = gr[i].clone()
        o3.step(); o2.step()
    for i in range(3):
        torch.testing.assert_close(p3[i].detach(), p2[i].detach(), rtol=0, atol=1e-6)
    assert not torch.equal(p3.detach(), w)


# ----------------------------------------------------------------------------- 5. attention scale and half RoPE

def test_half_rope_frequencies_unrotated_pairs_and_norms():
    D, Tn = 16, 64
    r = T.Rotary(D, Tn, 1024.0, half=True)
    inv = torch.tensor(ref_inv_freq(D, 1024.0, True), dtype=torch.float64)
    assert inv[:4].tolist() == pytest.approx([1.0, 1024 ** (-1 / 3), 1024 ** (-2 / 3), 1 / 1024], rel=1e-12)
    ang = torch.arange(Tn, dtype=torch.float64)[:, None] * inv[None]
    torch.testing.assert_close(r.cos[0, :, 0].double(), ang.cos(), rtol=0, atol=2e-5)
    torch.testing.assert_close(r.sin[0, :, 0].double(), ang.sin(), rtol=0, atol=2e-5)
    x = torch.randn(2, Tn, 3, D, generator=torch.Generator().manual_seed(9))
    y = r(x)
    assert torch.equal(y[..., D // 4:D // 2], x[..., D // 4:D // 2]) and torch.equal(y[..., 3 * D // 4:], x[..., 3 * D // 4:])
    assert not torch.allclose(y[:, 1:, :, :D // 4], x[:, 1:, :, :D // 4])
    pair = lambda t: t[..., :D // 2].pow(2) + t[..., D // 2:].pow(2)
    torch.testing.assert_close(pair(y), pair(x), rtol=1e-5, atol=1e-6)     # every pair keeps its norm
    torch.testing.assert_close(y[:, 0], x[:, 0])                            # position 0 is not rotated
    torch.testing.assert_close(y.double(), ref_rope(x.double(), 1024.0, True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("merged", [False, True])
def test_attention_scale_and_half_rope_against_explicit_softmax(merged):
    flags = ["--attn_scale=0.12", "--rope_half", "--rope_base=1024", "--n_head=2", "--seq_len=32"] + (["--merged_qkv"] if merged else [])
    m = mdl(*flags)
    randomise(m)
    attn = m.blocks[1].attn
    assert attn.softmax_scale == 0.12
    g = torch.Generator().manual_seed(10)
    x, r = torch.randn(2, 32, 64, generator=g), torch.randn(2, 32, 64, generator=g)
    y = attn(x)
    wq, wk, wv = qkv_weights(attn)
    ref = ref_attention(x, wq, wk, wv, attn.c_proj.weight, 2, 0.12, 1024.0, True)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    other = ref_attention(x, wq, wk, wv, attn.c_proj.weight, 2, 32 ** -0.5, 1024.0, True)
    assert (other - ref).abs().max() > 1e-3                                 # the scale matters here
    params = list(attn.parameters())                                      # q, k, v (or qkv_w) and c_proj
    assert len(params) == (2 if merged else 4)
    got = torch.autograd.grad((y * r).sum(), params)
    want = torch.autograd.grad((ref * r.double()).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- 6. soft-cap

def test_sigmoid_softcap():
    m = mdl("--logit_softcap=15", "--logit_softcap_form=sigmoid")
    z = torch.linspace(-200, 200, 4001).view(1, 1, -1)
    out = m.arch.logits(torch.randn(1, 1, 64), lambda h: z)
    torch.testing.assert_close(out, 30 * torch.sigmoid(z / 7.5), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out, 15 * (torch.tanh(z / 15) + 1), rtol=1e-6, atol=1e-5)
    assert out.min() >= 0 and out.max() <= 30
    tanh = mdl("--logit_softcap=15")
    torch.testing.assert_close(tanh.arch.logits(torch.randn(1, 1, 64), lambda h: z), 15 * torch.tanh(z / 15))


# ----------------------------------------------------------------------------- 7. layers without attention

def test_skip_attn_layers():
    plain = mdl("--n_layer=3")
    m = mdl("--n_layer=3", "--skip_attn_layers=1,7,40")                    # 7 and 40 are past n_layer: ignored
    assert [b.attn is None for b in m.blocks] == [False, True, False]
    attn_params = sum(p.numel() for p in plain.blocks[1].attn.parameters())
    assert attn_params == 4 * 64 * 64
    assert sum(p.numel() for p in plain.parameters()) - sum(p.numel() for p in m.parameters()) == attn_params
    randomise(m)
    blk, x = m.blocks[1], torch.randn(2, 16, 64)
    torch.testing.assert_close(blk(x), x + blk.mlp(blk.mlp_norm(x)))        # the block is its MLP alone
    idx = rand_idx(2, 16)
    m(idx, idx).backward()
    ve = mdl("--n_layer=12", "--skip_attn_layers=7", "--value_embeds=3")
    assert ve.blocks[7].attn is None and ve.blocks[6].attn.lambdas is not None


# ----------------------------------------------------------------------------- 8. masks

MASK_CASES = [(t, w, doc) for t in (512, 1024) for w in (None, 1, 2, 3) for doc in (True, False)]


@pytest.mark.parametrize("Tn,window,doc", MASK_CASES)
def test_dense_mask_against_reference(Tn, window, doc):
    idx = doc_tokens(2, Tn, seed=Tn + (window or 0))
    wb = None if window is None else torch.tensor(window, dtype=torch.int32)   # as GPTArch passes it
    ref = ref_mask(idx, window, doc)
    for w in (wb, window):
        dense = T.dense_attention_mask(idx, w, doc)
        assert dense.dtype == torch.bool and dense.shape == ((2, 1, Tn, Tn) if doc else (1, 1, Tn, Tn))
        assert torch.equal(dense.expand_as(ref), ref)


@pytest.mark.parametrize("Tn,window,doc", MASK_CASES)
def test_block_mask_equals_dense_mask(Tn, window, doc):
    idx = doc_tokens(2, Tn, seed=Tn + (window or 0))
    wb = None if window is None else torch.tensor(window, dtype=torch.int32)
    bm = T.block_attention_mask(idx, wb, doc)
    ref = ref_mask(idx, window, doc)
    tokens, classes = expand_block_mask(bm, 2, Tn)
    assert torch.equal(tokens, ref)
    assert torch.equal(tokens, T.dense_attention_mask(idx, wb, doc).expand_as(ref))
    # the block classes are exact: full = all True, partial = some True (not all), absent = none
    blocks = ref.view(2, Tn // BLOCK, BLOCK, Tn // BLOCK, BLOCK)
    any_, all_ = blocks.any(-1).any(2), blocks.all(-1).all(2)
    want = {(b, qb, kb): "full" if all_[b, qb, kb] else "partial"
            for b in range(2) for qb in range(Tn // BLOCK) for kb in range(Tn // BLOCK) if any_[b, qb, kb]}
    assert classes == want
    assert torch.equal(bm.to_dense()[:, 0].bool().expand_as(any_), any_)
    if doc and window != 1:
        assert "full" in classes.values() and sum(v == "partial" for v in classes.values()) > 2 * Tn // BLOCK


def test_block_attention_mask_builds_on_this_torch():
    idx = doc_tokens(2, 256)
    tokens, _ = expand_block_mask(T.block_attention_mask(idx, torch.tensor(2), True), 2, 256)
    assert torch.equal(tokens, ref_mask(idx, 2, True))


def test_short_contexts_take_the_dense_mask():
    """FlexAttention's BlockMask needs whole 128-token blocks (block_attention_mask refuses other lengths); the
    CUDA path builds it only then, and a sampling context of any length takes the dense mask, which has no such limit."""
    idx = doc_tokens(1, 100)
    with pytest.raises(RuntimeError):
        T.block_attention_mask(idx, torch.tensor(2), True)
    assert torch.equal(T.dense_attention_mask(idx, torch.tensor(2), True)[0, 0], ref_mask(idx, 2, True)[0, 0])
    m = mdl("--doc_mask", "--attn_window=256", "--seq_len=128")
    masks = m.arch.attention_masks(idx)  # on a CPU: dense, at any length
    assert all(isinstance(v, torch.Tensor) and v.shape[-1] == 100 for v in masks.values())


@pytest.mark.parametrize("window", [None, 1, 2, 3])
@pytest.mark.parametrize("doc", [True, False])
def test_cpu_attention_path_against_masked_softmax(window, doc):
    idx = doc_tokens(2, 512, seed=11)
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 512, 2, 16, generator=g) for _ in range(3))
    mask = T.dense_attention_mask(idx, None if window is None else torch.tensor(window), doc)
    y = T.attend(q, k, v, mask, 0.12)
    ref = ref_softmax_attention(q.double(), k.double(), v.double(), ref_mask(idx, window, doc), 0.12)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def flex_or_skip(*args, **kw):
    try:
        return T.flex_attention(*args, **kw)
    except Exception as e:  # noqa: BLE001 - FlexAttention's eager CPU support varies by torch version
        pytest.skip(f"flex_attention does not run on this CPU: {type(e).__name__}: {e}")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window", [None, 1, 2, 3])
def test_eager_flex_attention_with_block_mask_matches_dense_path(window):
    idx = doc_tokens(2, 512, seed=13)
    g = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(2, 512, 2, 16, generator=g) for _ in range(3))
    wb = None if window is None else torch.tensor(window)
    y = T.attend(q, k, v, T.dense_attention_mask(idx, wb, True), 0.12)
    bm = T.block_attention_mask(idx, wb, True)
    yf = flex_or_skip(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm, scale=0.12).transpose(1, 2)
    torch.testing.assert_close(yf, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(T.attend(q, k, v, bm, 0.12), y, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_compiled_flex_attention_with_block_mask_matches_dense_path():
    """The CUDA path compiles FlexAttention, which honours the block lists: on a CPU through inductor (~25 s)."""
    idx = doc_tokens(2, 512, seed=15)
    g = torch.Generator().manual_seed(16)
    q, k, v = (torch.randn(2, 2, 512, 16, generator=g) for _ in range(3))
    wb = torch.tensor(2)
    ref = T.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), T.dense_attention_mask(idx, wb, True), 0.12)
    try:
        y = torch.compile(T.flex_attention)(q, k, v, block_mask=T.block_attention_mask(idx, wb, True), scale=0.12)
    except Exception as e:  # noqa: BLE001 - no C++ compiler, or no CPU FlexAttention in this build
        pytest.skip(f"compiled flex_attention does not run on this CPU: {type(e).__name__}: {str(e)[:200]}")
    torch.testing.assert_close(y.transpose(1, 2), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 9. window warm-up

def record_blocks(step, steps):
    """The record: the long window grows from 1 block to 1792 tokens; blocks(step) = max(1, ceil(1728*step/steps/128))."""
    return max(1, math.ceil(1728 * step / steps / 128))


@pytest.mark.parametrize("steps", [1393, 100, 14])
def test_window_warmup_schedule(steps):
    m = mdl("--attn_window=1792", f"--steps={steps}")
    for step in range(steps + 1):
        m.arch.before_step(step)
        assert int(m.arch.window_blocks) == record_blocks(step, steps), step
    assert record_blocks(steps, steps) * BLOCK == 1792


def test_long_and_short_layers_get_their_windows():
    m = mdl("--n_layer=12", "--n_embd=32", "--attn_window=1792", "--window_long_layers=0,4,7,11", "--doc_mask",
            "--steps=14", "--seq_len=768", vocab=50304)
    idx = doc_tokens(1, 768, seed=17, eots=2)
    masks = {}
    hooks = [b.register_forward_pre_hook(lambda mod, a, i=i: masks.__setitem__(i, a[3])) for i, b in enumerate(m.blocks)]
    try:
        for step in (0, 1, 4, 8, 14):
            m.arch.before_step(step)
            W = record_blocks(step, 14)
            m(idx)
            for i in range(12):
                want = W if i in (0, 4, 7, 11) else max(1, W // 2)
                assert torch.equal(masks[i], ref_mask(idx, want, True)), (step, i, want)
    finally:
        for h in hooks:
            h.remove()
    everyone = mdl("--n_layer=3", "--attn_window=256", "--steps=4", "--seq_len=512")  # '' = every layer long
    assert [p.long_window for p in everyone.arch.plan] == [True, True, True]


# ----------------------------------------------------------------------------- 10. FP8 head

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_matmul_against_emulation_and_fp32(dtype):
    g = torch.Generator().manual_seed(18)
    M, K, N = 96, 64, 256                                                  # 96 rows: grad_s is not a power of 2
    x = ref_rms(torch.randn(M, K, generator=g)).to(dtype)                 # the head sees a normalised stream
    w = (torch.rand(N, K, generator=g) * 2 - 1) * 0.1
    gout = (torch.randn(M, N, generator=g) / M).to(torch.bfloat16)       # a mean-reduced loss's scale
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = T.fp8_linear(xr, wr)
    out.backward(gout)
    grad_s = T.fp8_grad_scale(M)
    ref_out, ref_gx, ref_gw = fp8_reference(x.float(), w, gout, grad_s)
    assert out.dtype == torch.bfloat16 and out.shape == (M, N)
    assert xr.grad.dtype == dtype and wr.grad.dtype == torch.float32
    assert_within_bf16_ulp(out, ref_out)
    assert_within_bf16_ulp(xr.grad, ref_gx)
    torch.testing.assert_close(wr.grad, ref_gw, rtol=1e-5, atol=1e-6 * ref_gw.abs().max().item())
    # and close to the exact products, within FP8's error (e4m3: 3 mantissa bits, e5m2: 2)
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()
    xd, wd, gd = x.double(), w.double(), gout.double()
    assert rel(out, xd @ wd.T) < 0.06
    assert rel(xr.grad, gd @ wd) < 0.1
    assert rel(wr.grad, gd.T @ xd) < 0.1


def test_fp8_linear_keeps_leading_dims_and_uses_the_token_count(monkeypatch):
    seen = []
    real = T.fp8_grad_scale
    monkeypatch.setattr(T, "fp8_grad_scale", lambda n: seen.append(n) or real(n))
    x = torch.randn(2, 24, 32, requires_grad=True)
    w = torch.randn(48, 32, requires_grad=True)
    out = T.fp8_linear(x, w)
    assert out.shape == (2, 24, 48)
    out.float().sum().backward()
    assert seen == [48] and x.grad.shape == x.shape and w.grad.shape == w.shape


@pytest.mark.parametrize("n_tokens,vocab", [(128, 1024), (65536, 64)])
def test_fp8_grad_scale_keeps_logit_gradients_in_e5m2_range(n_tokens, vocab):
    assert T.fp8_grad_scale(65536) == 2.0 ** 29                           # the record's constant at its micro-batch
    g = torch.Generator().manual_seed(19)
    logits = torch.randn(n_tokens, vocab, generator=g) * 4
    logits[: n_tokens // 4] *= 8                                          # some very confident rows
    targets = torch.randint(0, vocab, (n_tokens,), generator=g)
    logits.requires_grad_()
    F.cross_entropy(logits, targets).backward()
    s = T.fp8_grad_scale(n_tokens)
    scaled = logits.grad.to(torch.bfloat16) * s
    f8 = scaled.to(torch.float8_e5m2).float()
    assert torch.isfinite(f8).all() and f8.abs().max() <= E5M2_MAX
    assert scaled.float().abs().max() <= 2.0 ** 13 * (1 + 2 ** -7)         # |dL/dz| <= 1/n: headroom of 7x
    # the large gradients (the targets') are in e5m2's normal range, so they keep 2 mantissa bits
    top = scaled.float().gather(1, targets[:, None]).abs()
    big = top > 2.0 ** -14
    assert big.float().mean() > 0.5
    tf8 = f8.gather(1, targets[:, None]).abs()
    assert ((tf8[big] - top[big]).abs() <= 0.125 * top[big]).all()


def test_fp8_head_only_while_training(monkeypatch):
    m = mdl("--fp8_head", "--logit_softcap=15", "--logit_softcap_form=sigmoid", "--seq_len=16")
    randomise(m)
    calls = []
    real = T.fp8_linear
    monkeypatch.setattr(T, "fp8_linear", lambda x, w: calls.append(1) or real(x, w))
    idx = rand_idx(2, 16, seed=20)
    h = m.arch.final_norm(m.arch.run_blocks(m.blocks, m.arch.embed(m.wte(idx)), idx)).detach()
    m.train()
    train_logits = m(idx)
    assert calls == [1]
    ref, _, _ = fp8_reference(h.reshape(-1, 64), m.lm_head.weight.detach(), torch.zeros(32, VOCAB), 1.0)
    torch.testing.assert_close(train_logits, 30 * torch.sigmoid(ref.float().view(2, 16, VOCAB) / 7.5), rtol=1e-5, atol=1e-5)
    m.eval()
    with torch.no_grad():
        eval_logits = m(idx)
    assert calls == [1], "eval must not use the FP8 head"
    torch.testing.assert_close(eval_logits, 30 * torch.sigmoid((h @ m.lm_head.weight.T) / 7.5), rtol=1e-5, atol=1e-5)
    assert not torch.equal(train_logits, eval_logits)
    m.train()
    m(idx, idx).backward()
    assert m.lm_head.weight.grad is not None and torch.isfinite(m.lm_head.weight.grad).all()


def test_fp8_custom_ops_opcheck():
    """torch.library.opcheck on both ops. The checks that compare fp8 tensors (the forward's schema check with
    inputs that need grad and its aot check, the backward's schema check: fp8 inputs) need fp8 arithmetic that
    CPU torch lacks ('mul_cpu_reduced_float' / 'sum_cpu' not implemented for Float8): those run where they can."""
    g = torch.Generator().manual_seed(21)
    x, w = torch.randn(96, 64, generator=g), torch.randn(128, 64, generator=g) * 0.05
    torch.library.opcheck(T._fp8_mm_op, (x, w, 2.0, 32.0))
    torch.library.opcheck(T._fp8_mm_op, (x.clone().requires_grad_(), w.clone().requires_grad_(), 2.0, 32.0),
                          test_utils=("test_autograd_registration", "test_faketensor"))
    _, x_f8, w_f8 = T._fp8_mm_op(x, w, 2.0, 32.0)
    gout = (torch.randn(96, 128, generator=g) / 96).to(torch.bfloat16)
    torch.library.opcheck(T._fp8_mm_bwd_op, (gout, x_f8, w_f8, 2.0, 32.0, T.fp8_grad_scale(96)),
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


# ----------------------------------------------------------------------------- 11. optimizers

def test_muon_momentum_warmup():
    c = cfg("--muon_momentum_warmup=300", "--muon_momentum=0.95")
    for step, want in [(0, 0.85), (30, 0.86), (150, 0.90), (270, 0.94), (300, 0.95), (1000, 0.95)]:
        assert T.muon_momentum(step, c) == pytest.approx(want, abs=1e-12)
    assert all(T.muon_momentum(s, cfg()) == 0.95 for s in (0, 10, 1000))


def test_train_step_sets_muon_momentum_and_lr(tiny_shards, tmp_path):
    c = tiny_config(*tiny_shards, "--muon_momentum_warmup=300", "--steps=10", "--min_lr_frac=0.1", f"--log_dir={tmp_path}/logs",
            f"--checkpoint_dir={tmp_path}/ck", "--val_tokens=64")
    t = T.start(c, T.Dist())
    muon = next(o for o in t.optimizers if isinstance(o, T.Muon))
    seen = []
    real = muon.step
    muon.step = lambda: (seen.append((muon.param_groups[0]["momentum"], muon.param_groups[0]["lr"])), real())[1]
    for step in range(10):
        t.train_step(); t.step += 1
    for step, (mom, lr) in enumerate(seen):
        assert mom == pytest.approx(0.85 + 0.1 * step / 300, abs=1e-12)
        assert lr == pytest.approx(c.muon_lr * T.lr_multiplier(step, c))
    assert seen[-1][1] == pytest.approx(c.muon_lr * (0.1 + 0.9 * (10 - 9) / 4))


def test_batched_muon_equals_unbatched():
    g = torch.Generator().manual_seed(22)
    shapes = [(64, 64)] * 3 + [(32, 64)] * 2 + [(64, 32)] + [(3, 32, 64)] * 2 + [(16, 16)]
    init = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    runs = []
    for batched in (False, True):
        ps = [nn.Parameter(w.clone()) for w in init]
        opt = T.Muon(ps, lr=0.05, momentum=0.9, ns_dtype=torch.float32, batched=batched)
        for gs in grads:
            for p, gr in zip(ps, gs):
                p.grad = gr.clone()
            opt.step()
        runs.append(ps)
    for a, b, w in zip(*runs, init):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
        assert not torch.equal(a.detach(), w)


@pytest.mark.parametrize("flags", [[], ["--optimizer=adam"]])
def test_adam_eps_and_fused_reach_adam(flags):
    # the cpu preset (tiny_config's) has fused Adam on; --no-fused_adam leaves torch its default (None)
    for extra, eps, fused in [([], 1e-10, True), (["--no-fused_adam"], 1e-10, None), (["--adam_eps=1e-8", "--fused_adam"], 1e-8, True)]:
        c = cfg(*flags, *extra)
        torch.manual_seed(0)
        m = T.build_model(c)
        adams = [o for o in T.build_optimizers(m, c) if isinstance(o, torch.optim.Adam)]
        assert adams
        for o in adams:
            assert o.defaults["eps"] == eps and o.defaults["fused"] == fused
            assert all(g["eps"] == eps for g in o.param_groups)
        randomise(m)
        idx = rand_idx(2, 32)
        m(idx, idx).backward()
        for o in adams:
            o.step()                                                       # the fused kernel runs on a CPU too


# ----------------------------------------------------------------------------- 12. data path

def batches(loader, n):
    """n steps of micro-batches, copied out (a pinned loader refills one buffer every step)."""
    return [[(x.clone(), y.clone()) for x, y in loader.next_batch()] for _ in range(n)]


def test_pinned_buffer_path_gives_the_same_batches(tiny_shards):
    files = T.find_shards(tiny_shards[0].split("=", 1)[1], "train_files")
    plain = T.DataLoader(files, 32, 4, 2, 0, 1, pin=False)
    pinned_like = T.DataLoader(files, 32, 4, 2, 0, 1, pin=False)
    pinned_like.pinned = torch.empty(4 * 32 + 1, dtype=torch.int64)        # the pin path's buffer, unpinned
    a, b = batches(plain, 12), batches(pinned_like, 12)                      # 12 steps cross every shard boundary
    assert plain.shard == pinned_like.shard and plain.pos == pinned_like.pos
    for step_a, step_b in zip(a, b):
        for (xa, ya), (xb, yb) in zip(step_a, step_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    (x, _), _ = pinned_like.next_batch()
    base = pinned_like.pinned.data_ptr()
    assert base <= x.data_ptr() < base + pinned_like.pinned.numel() * 8, "the batch is not served from the buffer"


def test_real_pinned_loader_gives_the_same_batches(tiny_shards):
    files = T.find_shards(tiny_shards[0].split("=", 1)[1], "train_files")
    try:
        pinned = T.DataLoader(files, 32, 4, 2, 0, 1, pin=True)
    except RuntimeError as e:
        if "pin" in str(e).lower():
            pytest.skip(f"no pinned memory on this machine: {e}")
        raise
    assert pinned.pinned.is_pinned()
    a, b = batches(T.DataLoader(files, 32, 4, 2, 0, 1, pin=False), 12), batches(pinned, 12)
    assert all(torch.equal(p, q) for sa, sb in zip(a, b) for (xa, ya), (xb, yb) in zip(sa, sb) for p, q in ((xa, xb), (ya, yb)))


# ----------------------------------------------------------------------------- 13. a reduced --preset=speedrun run that learns

RUN_VOCAB, RUN_EOT = DOC_VOCAB, DOC_EOT  # conftest's documents_shards


@pytest.fixture(scope="module")
def speedrun_shards(documents_shards):
    return documents_shards


@pytest.mark.slow
def test_reduced_speedrun_preset_learns(speedrun_shards, monkeypatch):
    """--preset=speedrun with every component on, at 8 layers x 64 (so layer 7 has no attention and the long layers
    0, 4, 7 exist), seq 256, 20 steps, through the real train loop. document_ids looks for EOT_TOKEN (50256), which
    a 1,024-token vocabulary cannot hold: the run sets it to the small vocabulary's EOT id, so documents are real."""
    d = speedrun_shards
    monkeypatch.setattr(T, "EOT_TOKEN", RUN_EOT)
    masks = []
    real_dense = T.dense_attention_mask
    monkeypatch.setattr(T, "dense_attention_mask", lambda idx, w=None, doc=True, *rest: masks.append((None if w is None else int(w), doc)) or real_dense(idx, w, doc, *rest))
    c = T.parse_args(["--preset=speedrun_2025", "--n_layer=8", "--n_embd=64", "--n_head=2", f"--vocab_size={RUN_VOCAB}",
                      "--seq_len=256", "--batch_size=8", "--device_batch_size=4", "--steps=20", "--val_every=10",
                      "--val_tokens=4096", "--no-compile", "--kernels=torch", "--sample_tokens=0",
                      f"--train_files={d}/sr_train_*.bin", f"--val_files={d}/sr_val_*.bin",
                      f"--log_dir={d}/logs", "--run_name=speedrun_cpu", f"--checkpoint_dir={d}/ck"])
    assert train_in_process(c) == 0
    (log,) = (d / "logs").glob("speedrun_cpu_*.txt")
    text = log.read_text()
    config = json.loads(next(line for line in text.splitlines() if line.startswith("config: "))[len("config: "):])
    for name, on in RECORD.items():
        if name in COMPONENTS or name in ("logit_softcap", "logit_softcap_form", "rope_base", "window_long_layers", "muon_momentum_warmup", "min_lr_frac"):
            assert config[name] == on, f"config line: {name}={config[name]!r}, the record's is {on!r}"
    lines = step_lines(text)
    train = [loss for _, loss in sorted(lines["train"].items())]
    val = {s: loss for s, (loss, _) in lines["val"].items()}
    assert len(train) == 20 and all(np.isfinite(train)), train
    assert sorted(val) == [0, 10, 20] and all(np.isfinite(list(val.values()))), val
    assert val[0] == pytest.approx(math.log(RUN_VOCAB), abs=0.01)            # zero head: uniform logits
    assert val[20] < val[10] < val[0] - 1.0, f"no clear fall: {val}"
    windows = {int(w) for w, _ in masks}                                   # long and short layers, warming up
    assert {1, 2, 7, 14} <= windows and windows <= set(range(1, 15)), windows
    assert all(doc for _, doc in masks)


# ----------------------------------------------------------------------------- 14. every arch under the speedrun preset (issue 22)

@pytest.mark.parametrize("arch", ["ngpt", "angpt"])
def test_normalised_archs_take_the_records_attention_pattern(arch, monkeypatch):
    """nGPT / anGPT under the record's document mask and windows: a token's output depends only on its own document
    (changing an earlier document changes nothing after the EOT), layer 7 has no attention, and a merged QKV's rows
    are kept on (nGPT) or inside (anGPT) the unit sphere after a step, as separate q, k, v rows are."""
    monkeypatch.setattr(T, "EOT_TOKEN", 5)
    c = T.parse_args(REDUCED + [f"--arch={arch}", "--n_layer=8", "--n_embd=64", "--optimizer=adam"], cuda_available=True)
    assert c.doc_mask and c.attn_window and c.merged_qkv and c.skip_attn_layers == "7"
    torch.manual_seed(0)
    m = T.build_model(c)
    m.arch.before_step(c.steps // 2)
    assert [b.attn is None for b in m.blocks] == [i == 7 for i in range(8)]
    idx = rand_idx(1, 256, seed=3)
    idx[0, 100] = 5                                      # a document starts at token 100
    other = idx.clone()
    other[0, :100] = rand_idx(1, 100, seed=4)[0]         # a different first document
    with torch.no_grad():
        a, b = m(idx), m(other)
    assert torch.allclose(a[0, 100:], b[0, 100:], atol=1e-5) and not torch.allclose(a[0, :100], b[0, :100])
    (opt,) = T.build_optimizers(m, c)
    m(idx[:, :-1], idx[:, 1:]).backward()
    opt.step()
    m.after_step(0)
    norms = torch.cat([b.attn.qkv_w.norm(dim=-1).flatten() for b in m.blocks if b.attn is not None])
    if arch == "ngpt":
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    else:
        assert norms.max() <= 1 + 1e-5


@pytest.mark.parametrize("flags", [["--arch=ngpt", "--ngpt_alpha_init=0.15"], ["--arch=angpt"], ["--norm=dyt"]])
def test_every_arch_trains_under_the_speedrun_preset(flags, speedrun_shards, monkeypatch):
    """Issue 22's first command: `./run.sh --arch=ngpt ...` on a GPU node is --preset=speedrun. Here at 8 layers x 64,
    seq 256, 6 steps through the real train loop: it starts, trains, and the log names what the preset dropped."""
    d = speedrun_shards
    monkeypatch.setattr(T, "EOT_TOKEN", RUN_EOT)
    name = "sr_" + flags[0].split("=")[1]
    c = T.parse_args(["--preset=speedrun_2025", "--n_layer=8", "--n_embd=64", "--n_head=2", f"--vocab_size={RUN_VOCAB}", "--seq_len=256",
                      "--batch_size=4", "--device_batch_size=4", "--steps=6", "--val_every=6", "--val_tokens=2048",
                      "--no-compile", "--kernels=torch", "--sample_tokens=0", "--bf16=false", *flags,
                      f"--train_files={d}/sr_train_*.bin", f"--val_files={d}/sr_val_*.bin",
                      f"--log_dir={d}/logs", f"--run_name={name}", f"--checkpoint_dir={d}/ck"], cuda_available=True)
    assert train_in_process(c) == 0
    (log,) = (d / "logs").glob(f"{name}_*.txt")
    text = log.read_text()
    lines = step_lines(text)
    assert len(lines["train"]) == 6 and all(np.isfinite(list(lines["train"].values())))
    assert lines["val"][6][0] < lines["val"][0][0], lines["val"]
    dropped = [l for l in text.splitlines() if l.startswith("preset speedrun_2025: not applied")]
    if c.arch == "gpt":
        assert dropped == []
    else:
        assert dropped == [f"preset speedrun_2025: not applied to --arch={c.arch} (they act on GPT's residual stream or logits): "
                           "--value_embeds=3 --unet_skips --x0_mix --attn_scale=0.12 --logit_softcap=15.0 --logit_softcap_form=sigmoid"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ngpt", "angpt"])
def test_normalised_archs_train_under_the_speedrun_preset_at_full_width(arch, speedrun_shards, monkeypatch):
    """The same at the record's width: 768 wide, d_ff 3072, 6 heads x 128, 8 layers (so layer 7 has no attention and
    layers 0, 4, 7 are long), with the document mask, windows, merged QKV, half RoPE and the FP8 head on: 4 steps of
    2 x 256 tokens, finite, val (1,024 tokens) falls. anGPT's FP8 head without its s_z scaling (logits = s_z x
    fp8(x, W)) fails here; the nu-factor width bug does not (4 steps): tests/test_full_width.py catches that one."""
    d = speedrun_shards
    monkeypatch.setattr(T, "EOT_TOKEN", RUN_EOT)
    name = f"sr768_{arch}"
    c = T.parse_args(["--preset=speedrun_2025", "--n_layer=8", "--n_embd=768", "--n_head=6", f"--vocab_size={RUN_VOCAB}", "--seq_len=256",
                      "--batch_size=2", "--device_batch_size=2", "--steps=4", "--val_every=4", "--val_tokens=1024",
                      "--no-compile", "--kernels=torch", "--sample_tokens=0", "--bf16=false", f"--arch={arch}",
                      f"--train_files={d}/sr_train_*.bin", f"--val_files={d}/sr_val_*.bin",
                      f"--log_dir={d}/logs", f"--run_name={name}", f"--checkpoint_dir={d}/ck"], cuda_available=True)
    assert (c.n_embd // c.n_head, int(c.mlp_ratio * c.n_embd)) == (128, 3072)
    assert c.doc_mask and c.attn_window and c.merged_qkv and c.rope_half and c.fp8_head and c.skip_attn_layers == "7"
    assert train_in_process(c) == 0
    (log,) = (d / "logs").glob(f"{name}_*.txt")
    lines = step_lines(log.read_text())
    assert len(lines["train"]) == 4 and all(np.isfinite(list(lines["train"].values()))), lines["train"]
    assert lines["val"][4][0] < lines["val"][0][0] - 0.1, lines["val"]


@pytest.mark.parametrize("arch", ["ngpt", "angpt"])
def test_fp8_head_of_the_normalised_archs_keeps_its_gradients_in_range(arch):
    """nGPT / anGPT scale their logits by s_z (anGPT's starts at 15): through the FP8 head unchanged, the logit
    gradient would be s_z times GPT's and overflow e5m2 (NaN at the first step; this test found it). s_z goes into
    the weight and the unit stream is scaled by sqrt(d): logits as without FP8 (within its precision), finite grads."""
    m = mdl(f"--arch={arch}", "--fp8_head", "--optimizer=adam")
    with torch.no_grad():
        m.arch.s_z.s_hat.mul_(2.0)                       # s_z beyond its init, as training makes it
    idx = rand_idx(2, 32, seed=5)
    m.eval()
    with torch.no_grad():
        exact = m(idx).float()
    m.train()
    fp8 = m(idx).float()
    assert (fp8 - exact).norm() / exact.norm() < 0.1
    m(idx[:, :-1], idx[:, 1:]).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.arch.s_z.s_hat.grad.abs().sum() > 0
