"""The current record's model (issue 31), each piece on its own at a tiny size against its equations: the layer plan,
paired-head attention, the key offset, XSA, DC-MHA, the gates' layout, smear, the bigram hash, gated value embeddings,
a block's residual lambdas with the x0 / bigram injection, MUDD, the FP8 MLP; the presets; then every arch under
--preset=speedrun_cpu and at the record's width. tests/peer_check.py checks the same pieces against the record's own
code (test_peer_check.py runs it when ../shared/peer/record_2026-08 is there)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_gpt as T
from conftest import DOC_EOT, DOC_VOCAB, parameter_count, step_lines, tiny_config, train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


RECORD_LISTS = ["--skip_attn_layers=6", "--window_long_layers=3,10", "--paired_head_layers=0,2,5,9", "--xsa_layers=1,3,4,7",
                "--attn_gate_layers=3,10", "--dc_layers=10", "--value_embed_layers=1,2,8,9,10", "--saved_layer=7",
                "--skip_connection=3:6", "--mudd", "--mudd_gates", "--key_offset", "--rope_half"]


# ----------------------------------------------------------------------------- the plan, the presets

def test_speedrun_is_the_current_record_and_its_plan():
    c = T.parse_args([], cuda_available=True)
    assert c.preset == "speedrun" and (c.n_layer, c.n_embd, c.n_head, c.steps, c.val_every, c.val_tokens) == (11, 768, 6, 1285, 250, 10485760)
    plan = T.layer_plan(c)
    text = "\n".join(map(str, plan))
    assert "layer 6: no attention, adds h3" in text and "layer 3: long, key offset, xsa, gate, saved" in text
    assert "layer 10: long, key offset, gate, dc, ve4, reads saved, mudd" in text and "layer 9: short, paired, ve3, reads saved" in text
    old = T.parse_args(["--preset=speedrun_2025"], cuda_available=True)
    assert (old.n_layer, old.steps, old.value_embeds, old.attn_window) == (12, 1393, 3, 1792)


def test_parameter_count_is_the_records_less_its_padding():
    """The record's parameters (its banks, L1208ff) hold padding ours has not: a 12th MLP layer (8-way sharding), layer 6's
    attention lambdas, the 5th value gate, layer 10's residual lambdas (MUDD gives those), the first gate MLP's 15 and
    the final MUDD mix's 9 unused outputs (64 weights and a bias each). Ours has exactly the rest."""
    d, V = 768, 50304
    record = dict(embed=V * d, lm_head=d * V, value_embeds=5 * V * d, bigram=377280 * d, qk_bank=60 * 256 * d, vo_bank=20 * d * d,
                  mlp_bank=12 * 2 * 3072 * d, scalars=24, ve_gate_bank=5 * 6 * 12, smear_gate=12, lambdas=2 * 11 * 2,
                  mudd=2 * 64 * d + 2 * 14 * 64 + 2 * 14, mudd_gates=2 * 64 * d + 2 * 41 * 64 + 2 * 41 + 1)
    padding = 2 * 3072 * d + 2 + 6 * 12 + 4 + 15 * 65 + 9 * 65
    c = T.parse_args(["--compile=false"], cuda_available=True)
    assert parameter_count(c) == sum(record.values()) - padding
    assert sum(record.values()) == 640_605_607  # 640.6M, as the record's model on this CPU counts (tests/peer_record.py)


@pytest.mark.parametrize("flags, why", [(["--paired_head_layers=1", "--xsa_layers=1"], "paired heads and XSA"),
                                        (["--mudd"], "give --saved_layer"), (["--key_offset"], "needs --rope_half"),
                                        (["--skip_connection=3"], "FROM:TO"), (["--value_embeds=3", "--smear"], "two different residual streams"),
                                        (["--backout=-0.5"], "give --saved_layer")])
def test_bad_model_flags_are_one_line(flags, why):
    with pytest.raises(T.ConfigError, match=why):
        tiny_config(*flags)


# ----------------------------------------------------------------------------- attention pieces

def attention_pair(**kw):
    """Our Attention at 4 heads x 16 with half RoPE, and its inputs."""
    rot = T.Rotary(16, 64, 1024.0, half=True)
    plan = T.LayerPlan(0, **kw)
    torch.manual_seed(0)
    a = T.Attention(32, 4, 16, T.Ops("torch"), rotary=rot, merged_qkv=True, plan=plan, softmax_scale=0.1)
    torch.nn.init.normal_(a.qkv_w, std=0.2); torch.nn.init.normal_(a.c_proj.weight, std=0.2)
    return a, rand(1, 12, 32, seed=1)


def reference_qkv(a, x):
    q, k, v = F.linear(x, a.qkv_w.flatten(0, 1)).view(1, x.size(1), 12, 16).chunk(3, dim=-2)
    return a.q_norm(q), a.k_norm(k), v


def rope_at(x, positions, rot):
    """RoPE of x (D,) at one position: pairs (j, j + D/2) at frequency j."""
    f = rot.inv_freq * positions
    x1, x2 = x.chunk(2)
    return torch.cat([x1 * f.cos() + x2 * f.sin(), x2 * f.cos() - x1 * f.sin()])


def test_paired_heads_against_the_records_layout():
    """Head h of token t is rotated at position 2t + h % 2, then slot s of position 2t + j holds head j * H/2 + s: each slot
    attends causally over 2T positions (heads (0, 2) and (1, 3) here), then the outputs go back."""
    a, x = attention_pair(paired=True)
    q, k, v = reference_qkv(a, x)
    T_, H = x.size(1), 4
    rq = torch.stack([torch.stack([rope_at(q[0, t, h], 2 * t + h % 2, a.rotary) for h in range(H)]) for t in range(T_)])
    rk = torch.stack([torch.stack([rope_at(k[0, t, h], 2 * t + h % 2, a.rotary) for h in range(H)]) for t in range(T_)])
    y = torch.zeros(T_, H, 16)
    for slot in range(H // 2):
        seq = [(t, j * H // 2 + slot) for t in range(T_) for j in range(2)]  # position 2t + j
        Q = torch.stack([rq[t, h] for t, h in seq]); K = torch.stack([rk[t, h] for t, h in seq]); Vv = torch.stack([v[0, t, h] for t, h in seq])
        att = (Q @ K.T * 0.1).masked_fill(torch.ones(len(seq), len(seq)).triu(1).bool(), float("-inf")).softmax(-1) @ Vv
        for p, (t, h) in enumerate(seq):
            y[t, h] = att[p]
    want = a.c_proj(y.reshape(1, T_, 64))
    assert torch.allclose(a(x, mask=None), want, atol=1e-5)


def test_key_offset_shifts_the_unrotated_half_of_the_keys():
    a, x = attention_pair(key_offset=True)
    unrot = a.rotary.unrotated_dims()
    assert unrot.tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4  # half RoPE: each half's last quarter
    q, k, v = reference_qkv(a, x)
    q, k = a.rotary(q), a.rotary(k)
    shifted = k.clone()
    shifted[:, 1:, :, unrot] = k[:, :-1, :, unrot]
    y = F.scaled_dot_product_attention(q.transpose(1, 2), shifted.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=0.1)
    assert torch.allclose(a(x), a.c_proj(y.transpose(1, 2).reshape(1, 12, 64)), atol=1e-5)


def test_xsa_removes_the_heads_component_along_its_value():
    y, v, alpha = rand(2, 5, 3, 8, seed=2), rand(2, 5, 3, 8, seed=3), rand(2, 5, 3, seed=4)
    out = T.xsa(y, v, alpha)
    for b, t, h in [(0, 0, 0), (1, 4, 2)]:
        u = v[b, t, h]
        assert torch.allclose(out[b, t, h], y[b, t, h] - torch.tanh(alpha[b, t, h]) * (y[b, t, h] @ u) / (u @ u) * u, atol=1e-6)
    full = T.xsa(y, v, torch.full((3,), 20.0))  # tanh -> 1: the whole component goes
    assert torch.allclose((full * v).sum(-1), torch.zeros(2, 5, 3), atol=1e-5)


def test_dc_correction_against_a_loop():
    B, T_, H, D, W = 1, 300, 3, 8, 5
    q, k, v = rand(B, T_, H, D, seed=5), rand(B, T_, H, D, seed=6), rand(B, T_, H, D, seed=7)
    w1, w2 = rand(B, T_, H, seed=8), rand(B, T_, H, seed=9)
    docs = torch.zeros(B, T_, dtype=torch.long)
    docs[:, 140:] = 1
    out = T.dc_correction(q, k, v, w1, w2, 0.3, W, docs)
    w1n = w1 / w1.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    for t in (0, 3, 139, 140, 141, 200, 299):
        keys = [s for s in range(max(0, t - W + 1), t + 1) if docs[0, s] == docs[0, t]]
        probs = [torch.softmax(torch.stack([q[0, t, h] @ k[0, s, h] * 0.3 for s in keys]), 0) for h in range(H)]
        a = sum(w1n[0, t, h] * probs[h] for h in range(H))
        for h in range(H):
            want = w2[0, t, h] * sum(a[i] * v[0, s, h] for i, s in enumerate(keys))
            assert torch.allclose(out[0, t, h], want, atol=1e-5), (t, h)


# ----------------------------------------------------------------------------- stream pieces

def test_gate_layouts_are_the_records():
    """The record's gate MLPs: 26 outputs at x0 (XSA 1, 3; gate 3; x0/bigram of 0-3) and 41 at layer 4's input (XSA 4, 7;
    gate 10; x0/bigram of 4, 5, 7, 8, 9; skip; DC's two weights), with their initial values."""
    c = T.parse_args([], cuda_available=True)
    g = T.Gates(c, T.layer_plan(c))
    pre, post = g.layouts
    assert sum(w for *_, w in pre) == 26 and sum(w for *_, w in post) == 41
    assert pre[:3] == [(1, "xsa", 6), (3, "xsa", 6), (3, "attn_gate", 6)] and pre[3:5] == [(0, "x0", 1), (0, "bigram", 1)]
    assert post[-3:] == [(6, "skip", 1), (10, "dc_w1", 6), (10, "dc_w2", 6)]
    out = g.mlps[1](rand(1, 2, 768))
    assert torch.allclose(out[0, 0, 12:18], torch.full((6,), 0.25)) and torch.allclose(out[0, 0, 28], torch.tensor(0.5))


def test_smear_and_bigram_hash():
    c = tiny_config("--smear", "--bigram_vocab=101", "--residual_lambdas")
    m = T.build_model(c)
    with torch.no_grad():
        m.arch.smear_gate.normal_(); m.arch.smear_lambda.fill_(0.7)
    x = rand(1, 6, 64)
    g = 0.7 * torch.sigmoid(x[0, 1:, :12] @ m.arch.smear_gate)
    want = torch.cat([x[0, :1], x[0, 1:] + g[:, None] * x[0, :-1]])
    want = want / want.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    assert torch.allclose(m.arch.embed(x)[0], want, atol=1e-5)
    idx = torch.tensor([[5, 9, 11, 2]])
    h = T.bigram_hash(idx, 101)
    to32 = lambda v: (v + 2 ** 31) % 2 ** 32 - 2 ** 31
    assert h[0, 0] == 100 and h[0, 1] == (to32(36313 * 9) ^ to32(27191 * 100)) % 100  # position 1 hashes the reserved index
    assert h[0, 3] == ((36313 * 2) ^ (27191 * 11)) % 100
    assert T.bigram_sign_index(idx, 8).tolist() == [[0, (5 ^ 9) % 8, (9 ^ 11) % 8, (11 ^ 2) % 8]]


def test_block_residual_lambdas_gated_value_embedding_and_injection():
    """One block of the record's stream: x <- a x + b attn(norm(x)) + g x0 + g' bigram with v += 2 sigmoid(W [h[:6], ve[:6]]) ve
    per head, then x <- a' x + b' mlp(norm(x))."""
    c = tiny_config("--residual_lambdas", "--bigram_vocab=64", "--value_embed_layers=1", "--n_layer=2", "--merged_qkv")
    torch.manual_seed(0)
    m = T.build_model(c)
    block = m.blocks[1]
    with torch.no_grad():
        for p in block.parameters(): p.add_(torch.randn_like(p) * 0.1)
    x, x0, bigram, ve = rand(1, 8, 64, seed=1), rand(1, 8, 64, seed=2), rand(1, 8, 64, seed=3), rand(1, 8, 64, seed=4)
    s = T.Stream(x0, bigram, None, [ve])
    s.saved_layer = -1
    s.gates = {(1, "x0"): torch.tensor([0.3]), (1, "bigram"): torch.tensor([0.2])}
    out = block(x, mask=None, stream=s)
    h = block.attn_norm(x)
    gate = 2 * torch.sigmoid(torch.cat([h[..., :6], ve[..., :6]], -1) @ block.ve_gate.T)
    y = block.attn(h, aux_v=gate[..., None] * ve.view(1, 8, 2, 32))
    a, b = block.resid_lambdas, block.post_lambdas
    x1 = a[0] * x + b[0] * y + 0.3 * x0 + 0.2 * bigram
    assert torch.allclose(out, a[1] * x1 + b[1] * block.mlp(block.mlp_norm(x1)), atol=1e-5)


def test_mudd_starts_as_the_plain_stream_and_the_backout():
    """At init MUDD's coefficients are its biases x 0.1: the last layer's lambdas sqrt(1.1) and 1, value lanes 2, bigram
    0.05; the final mix subtracts 0.5 h_saved (--backout) and nothing else."""
    mudd = T.Mudd(T.parse_args([], cuda_available=True))
    x = rand(1, 3, 768)
    layer, final = mudd.layer(x)[0, 0], mudd.final(x)[0, 0]
    assert torch.allclose(layer, torch.tensor([0, 0, 0, 0, 0, 0, 2, 2, 1.1 ** 0.5, 1, 0, 0.05, 1.1 ** 0.5, 1]), atol=1e-6)
    assert torch.allclose(final, torch.tensor([0, -0.5, 0, 0, 0]), atol=1e-6)


# ----------------------------------------------------------------------------- FP8 MLP

def test_fp8_mlp_forward_is_e4m3_with_a_delayed_down_scale_and_a_full_precision_backward():
    mlp = T.MLP(64, 256, "relu2", fp8=True)
    torch.nn.init.normal_(mlp.c_proj.weight, std=0.05)
    x = rand(2, 5, 64, seed=11).requires_grad_(True)
    q = lambda t, amax: ((t * 448 / amax).clamp(-448, 448).to(torch.float8_e4m3fn).float() * amax / 448)
    y = mlp(x)
    u = q(x.detach(), x.abs().max()) @ q(mlp.c_fc.weight.detach(), mlp.c_fc.weight.abs().max()).T
    act = F.relu(u).square()
    want = q(act, act.abs().max()) @ q(mlp.c_proj.weight.detach(), mlp.c_proj.weight.abs().max()).T  # first step: bootstrapped
    assert torch.allclose(y, want, atol=1e-4)
    assert mlp.down_amax == act.abs().max()
    a, w = rand(6, 64, seed=12).requires_grad_(True), rand(32, 64, seed=13).requires_grad_(True)  # each matmul's backward:
    g = rand(6, 32, seed=14)                                                                     # the unquantized product's
    T.fp8_forward_linear(a, w, a.detach().abs().amax(), w.detach().abs().amax()).backward(g)
    assert torch.allclose(a.grad, g @ w.detach(), atol=1e-5) and torch.allclose(w.grad, g.T @ a.detach(), atol=1e-5)
    y2 = mlp(x.detach())  # the next step's down projection uses the last amax x 1.8
    u2 = q(x.detach(), x.abs().max()) @ q(mlp.c_fc.weight.detach(), mlp.c_fc.weight.abs().max()).T
    act2 = F.relu(u2).square()
    assert torch.allclose(y2, q(act2, act.abs().max() * 1.8) @ q(mlp.c_proj.weight.detach(), mlp.c_proj.weight.abs().max()).T, atol=1e-4)


# ----------------------------------------------------------------------------- every arch under the preset

def cpu_run(d, name, flags, steps=16):
    c = T.parse_args(["--preset=speedrun_cpu", f"--vocab_size={DOC_VOCAB}", f"--steps={steps}", f"--val_every={steps // 2}",
                      "--val_tokens=3072", "--sample_tokens=0", "--bf16=false",
                      "--stages=256x128 w1/2 lr1 mtp1,.5,.25>1,.5,0 pre.25; 512x256 w1/3 lr1.52 mtp1,.5>1,0 pre.25>0; +2 512x256 w2/4",
                      "--seq_len=512", "--val_seq_len=512", "--final_window=5",
                      f"--train_files={d}/sr_train_*.bin", f"--val_files={d}/sr_val_*.bin", f"--log_dir={d}/logs",
                      f"--run_name={name}", f"--checkpoint_dir={d}/ck", *flags]
                     + ([] if any(f.startswith("--arch=") for f in flags) else ["--bigram_vocab=512"]))  # GPT's table, smaller
    assert train_in_process(c) == 0
    (log,) = (d / "logs").glob(f"{name}_*.txt")
    return c, log.read_text()


@pytest.mark.parametrize("flags", [[], ["--arch=ngpt"], ["--arch=angpt"], ["--norm=dyt"]])
def test_every_arch_learns_under_speedrun_cpu(flags, documents_shards, monkeypatch):
    """--preset=speedrun_cpu (every piece on, 6 x 256) at a 1,024-token vocabulary, 16 steps of 2 shrunk stages: each arch
    starts, prints its layer plan, says in one line what of the preset it does not take, and learns."""
    monkeypatch.setattr(T, "EOT_TOKEN", DOC_EOT)
    name = "cpu_" + (flags[0].split("=")[1] if flags else "gpt")
    c, text = cpu_run(documents_shards, name, flags)
    assert "layer 3: no attention" in text and "layer 5: long, key offset" in text
    val = {s: v for s, (v, _) in step_lines(text)["val"].items()}
    assert sorted(val) == [0, 8, 16] and all(np.isfinite(list(val.values())))
    assert val[16] < val[8] < val[0] - 0.3, val  # nGPT and anGPT at their default Adam lr fall slowest (~0.5 here)
    dropped = [l for l in text.splitlines() if l.startswith("preset speedrun_cpu: not applied")]
    if c.arch == "gpt":
        assert dropped == [] and "layer 5: long, key offset, gate, dc, ve2, reads saved, mudd" in text and "adds h1" in text
    else:
        assert len(dropped) == 1 and "--mudd" in dropped[0] and "--smear" in dropped[0]
        assert "layer 5: long, key offset, ve2" not in text  # GPT's stream pieces are not in its plan
