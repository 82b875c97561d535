"""The current record's training recipe (issue 30), each piece on its own at a tiny size against its equations:
Polar Express, NorMuon, cautious weight decay, the record's Muon groups, the record's Adam and its table, Adam every
other step, the momentum schedule, the staged schedule, YaRN, BOS-aligned batches, the MTP / prefix loss and the prefix
table, the shifted soft-cap, tie-then-untie and the record's init; then a run with every piece on that learns and
resumes exactly. tests/peer_check.py compares the same pieces with the record's own code."""
import json
import math
import re

import numpy as np
import pytest
import torch

import train_gpt as T
from conftest import DOC_EOT, DOC_VOCAB, step_lines, tiny_config, train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

# the record's schedule at our flags (its TRAINING_STAGES, L1960): what --preset=speedrun gives
RECORD_STAGES = ("131072x896 w1/3 lr1 mtp1,.5,.25>1,.5,0 pre.25; 262144x2048 w3/7 lr1.52 mtp1,.5>1,0 pre.25>0; "
                 "393216x2048 w5/11 lr1.73; +15 393216x2048 w6/13")
RECORD_SCHEDULE = [f"--stages={RECORD_STAGES}", "--batch_size=8", "--seq_len=49152", "--steps=1285", "--mtp", "--prefix_loss",
                   "--final_window=20", "--muon_momentum_warmup=300", "--muon_momentum_cooldown=50", "--cooldown_frac=0.6",
                   "--min_lr_frac=0.15", "--untie_frac=0.6666666666666666", "--adam_every=2", "--val_tokens=0"]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- Muon: Polar Express, NorMuon, cautious WD, groups

@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (3, 16, 32)])
def test_polar_express_is_its_equations_and_orthogonalises(shape):
    G = rand(*shape)
    X = G.double() / (G.double().norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    for a, b, c in T.POLAR_EXPRESS_COEFFS:  # written out once, in the wide orientation (a tall X gives the transpose)
        Xw = X.mT if shape[-2] > shape[-1] else X
        A = Xw @ Xw.mT
        Xw = a * Xw + (b * A + c * A @ A) @ Xw
        X = Xw.mT if shape[-2] > shape[-1] else Xw
    out = T.polar_express(G, dtype=torch.float32)
    assert out.shape == G.shape and torch.allclose(out.double(), X, atol=1e-4)
    s = torch.linalg.svdvals(out.double())
    assert s.min() > 0.6 and s.max() < 1.25, s  # Polar Express's band around 1 after 5 steps


def test_normuon_rescale_equations():
    v, buf = rand(2, 6, 4), torch.zeros(2, 6, 1)  # rows >= cols: one statistic per row
    out = T.normuon_rescale(v.clone(), buf, beta2=0.9)
    mean_sq = v.square().mean(-1, keepdim=True)
    assert torch.allclose(buf, 0.1 * mean_sq)
    scaled = v / (0.1 * mean_sq).sqrt()
    want = scaled * (v.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True))
    assert torch.allclose(out, want, atol=1e-5)
    assert torch.allclose(out.norm(dim=(-2, -1)), v.norm(dim=(-2, -1)), atol=1e-5)  # the Frobenius norm is kept
    wide, wbuf = rand(1, 3, 8, seed=1), torch.zeros(1, 1, 8)  # rows < cols: one per column
    T.normuon_rescale(wide.clone(), wbuf, 0.9)
    assert torch.allclose(wbuf, 0.1 * wide.square().mean(-2, keepdim=True))


@pytest.mark.parametrize("ortho", ["newton_schulz", "polar_express"])
def test_muon_cautious_weight_decay_and_normuon_step(ortho):
    """One step by hand: u = Nesterov momentum, v = ortho(u) rescaled by NorMuon, p -= wd*lr*lr_eff*p where v*p >= 0,
    p -= lr_eff*v, lr_eff = lr * sqrt(max(1, rows/cols))."""
    p0, g = rand(32, 16, seed=2), rand(32, 16, seed=3)
    p = torch.nn.Parameter(p0.clone())
    p.grad = g.clone()
    opt = T.Muon([p], lr=0.05, momentum=0.9, ns_dtype=torch.float32, ortho=ortho, normuon_beta2=0.9, weight_decay=1.2)
    opt.step()
    u = g.lerp(g * 0.1, 0.9)  # buffer = 0.1 g after one lerp from 0; Nesterov: g.lerp(buf, 0.9)
    fn = T.polar_express if ortho == "polar_express" else T.zeropower_via_newtonschulz5
    v = T.normuon_rescale(fn(u[None], 5, torch.float32), torch.zeros(1, 32, 1), 0.9)[0]
    lr = 0.05 * 2 ** 0.5
    want = p0 - p0 * ((v * p0) >= 0) * (1.2 * 0.05 * lr) - v * lr
    assert torch.allclose(p.data, want, atol=1e-6)
    assert set(opt.state[p]) == {"momentum_buffer", "second_moment"}


def test_record_muon_groups_orthogonalise_q_and_k_per_head_pair():
    """--muon_groups=record on a merged QKV (3, H*D, d): Q and K in (2D, d) blocks per pair of heads, V whole; the MLP's
    matrices at sqrt(hidden/d), the down projection x2: the update equals orthogonalising those blocks one by one."""
    c = tiny_config("--n_embd=64", "--n_head=4", "--merged_qkv", "--muon_groups=record", "--n_layer=1")
    torch.manual_seed(0)
    m = T.build_model(c)
    T.record_muon_blocks(m, c)
    attn, mlp = m.blocks[0].attn, m.blocks[0].mlp
    (q_blocks, v_block) = attn.qkv_w.muon_blocks
    assert q_blocks[1] == (4, 32, 64) and v_block[1] == (1, 64, 64)          # 2 pairs each of Q and K; V whole
    assert mlp.c_fc.weight.muon_blocks[0][2] == 2.0 and mlp.c_proj.weight.muon_blocks[0][2] == 4.0
    w = attn.qkv_w
    w.grad = rand(*w.shape, seed=5)
    before = w.detach().clone()
    T.Muon([w], lr=0.1, momentum=0.0, nesterov=False, ns_dtype=torch.float32).step()
    g = w.grad
    want = torch.cat([torch.stack([T.zeropower_via_newtonschulz5(g[j, 32 * i:32 * (i + 1)], 5, torch.float32) for i in range(2)]).reshape(64, 64)[None]
                      for j in range(2)] + [T.zeropower_via_newtonschulz5(g[2], 5, torch.float32)[None]])
    assert torch.allclose(before - w.detach(), 0.1 * want, atol=1e-6)


# ----------------------------------------------------------------------------- Adam: the record's form, its table, every other step

def test_record_adam_step_and_cautious_decay():
    p0, g = rand(5, 3, seed=6), rand(5, 3, seed=7)
    p = torch.nn.Parameter(p0.clone())
    opt = T.Adam([p], lr=0.01, betas=(0.5, 0.95), eps=1e-10, weight_decay=150.0)
    for t in (1, 2):
        p.grad = g * t
        opt.step()
    m = 0.5 * (0.5 * g) + 0.5 * (2 * g)            # two steps of the EMAs from 0
    v = 0.95 * (0.05 * g * g) + 0.05 * (4 * g * g)
    p1 = p0 - (0.5 * g / ((0.05 * g * g).sqrt() + 1e-10) * (0.01 * 0.05 ** 0.5 / 0.5))  # step 1
    p1 = p1 - 0.01 ** 2 * 150 * p0 * ((p0 - p1) * p0 > 0)                              # its decay, where update*p > 0
    u2 = m / (v.sqrt() + 1e-10) * (0.01 * (1 - 0.95 ** 2) ** 0.5 / (1 - 0.5 ** 2))
    want = p1 - u2 - 0.01 ** 2 * 150 * p1 * ((u2 * p1) > 0)
    assert torch.allclose(p.data, want, atol=1e-6)


def test_adam_table_groups_every_kind_at_its_lr_betas_and_decay():
    c = tiny_config("--adam_table=record", "--adam_wd=0.005", "--adam_table_lr=0.008", "--lr_scale=2", "--untie_frac=0.5", "--x0_mix")
    m = T.build_model(c)
    adam, muon = T.build_optimizers(m, c)
    assert isinstance(adam, T.Adam) and isinstance(muon, T.Muon)
    by_kind = {g["kind"]: g for g in adam.param_groups}
    assert set(by_kind) == {"embed", "head", "scalar"}
    for kind, (mult, betas, wd_mult) in T.ADAM_TABLE.items():
        if kind in by_kind:
            g = by_kind[kind]
            assert (g["lr"], g["betas"], g["weight_decay"]) == (pytest.approx(0.016 * mult), betas, pytest.approx(0.005 * wd_mult))
    assert by_kind["embed"]["params"] == [m.wte.weight] and by_kind["head"]["params"] == [m.lm_head.weight]


def test_adam_steps_on_odd_steps_on_the_summed_gradients():
    """--adam_every=2: the Adam beside Muon steps after steps 1, 3, ... on the two steps' gradients summed; Muon every step."""
    c = tiny_config("--adam_every=2", "--vocab_size=128", "--steps=4", "--init=record")  # no zero head: every weight has a gradient
    torch.manual_seed(0)
    m = T.build_model(c)
    opts = T.build_optimizers(m, c)
    head, hidden = m.lm_head.weight, m.blocks[0].attn.c_q.weight
    x = torch.randint(0, 128, (2, 16))
    grads = []
    for step in range(4):
        h0, w0 = head.detach().clone(), hidden.detach().clone()
        m(x, x).backward()
        grads.append(head.grad.clone())
        T.optimizer_step(m, opts, c, step)
        assert torch.equal(head, h0) == (step % 2 == 0), step      # the head moves on odd steps only
        assert not torch.equal(hidden, w0), step                    # Muon every step
        if step % 2 == 0:
            assert torch.equal(head.grad, grads[-1])                # kept for the next step
            grads[-1] = None
    (adam,) = [o for o in opts if not isinstance(o, T.Muon)]
    assert adam.state[head]["step"] == 2


# ----------------------------------------------------------------------------- the staged schedule, momentum, YaRN

def test_record_schedule_at_its_boundaries():
    s = T.Schedule(tiny_config(*RECORD_SCHEDULE))
    assert s.bounds == [(0, 423), (423, 847), (847, 1270), (1270, 1285)] and s.scheduled == 1270 and s.untie_step == 847
    p = s[0]
    assert (p.tokens, p.row_len, p.doc_len, p.windows, p.lr, p.momentum, p.mtp, p.prefix, p.adam) == \
        (131072, 16384, 896, (1, 3), 1.0, 0.85, (1.0, 0.5, 0.25), 0.25, False)
    assert s[1].adam and s[150].momentum == pytest.approx(0.90) and s[300].momentum == 0.95
    assert s[423].windows == (3, 7) and s[423].lr == 1.52 and s[423].mtp == (1.0, 0.5) and s[423].row_len == 32768
    assert s[635].mtp[1] == pytest.approx(0.5 * (1 - 212 / 424)) and s[635].prefix == pytest.approx(0.25 * (1 - 212 / 424))
    assert s[508].lr == 1.52                                                # the cooldown starts at int(1270 * 0.4)
    assert s[846].lr == pytest.approx(1.52 * (1 - 338 / 762) + 0.15 * 338 / 762)
    assert s[847].mtp == (1.0,) and s[847].prefix == 0 and s[847].tokens == 393216
    assert s[1270].lr == 0.15 and s[1270].windows == (6, 13) and s[1284].lr == 0.15
    assert s[1240].momentum == pytest.approx(0.95 - 0.1 * 5 / 50) and s[1285].momentum == pytest.approx(0.85)
    assert s[1285].windows == (6, 20)                                       # the final validation's long window
    assert s.yarn_windows(1285) == [384, 896, 1408, 1664]                  # ... without YaRN for it
    text = "\n".join(s.describe())
    assert "steps 423-846: 262144x2048 w3/7 lr1.52 mtp1,0.5>1,0 pre0.25>0" in text and "untie embedding and head after step 847" in text


@pytest.mark.parametrize("text, why", [("512", "TOKENSxSEQ"), ("512x64 q3", "none of w, lr"), ("512x64 mtp1,2>1", "one length"),
                                       ("+2 512x64; 512x64", "extension stages come last"), ("512x64 wa/b", "does not parse")])
def test_bad_stages_are_one_line_naming_the_stage(text, why):
    with pytest.raises(T.ConfigError, match="--stages: stage") as e:
        tiny_config(f"--stages={text}")
    assert why in str(e.value)


@pytest.mark.parametrize("flags, why", [(["--mtp"], "--mtp takes"), (["--stages=128x32", "--attn_window=128"], "two window schedules"),
                                        (["--stages=130x32"], "split into --batch_size=4 rows"),
                                        (["--stages=128x32", "--yarn"], "windows in every stage"),
                                        (["--untie_frac=0.5", "--tie_embeddings"], "give one")])
def test_recipe_flags_are_checked_before_any_work(flags, why):
    with pytest.raises(T.ConfigError, match=why):
        tiny_config(*flags)


def test_yarn_frequencies_and_scale():
    r = T.Rotary(128, 64, 1024.0, half=True)
    f0 = r.inv_freq.clone()
    r.yarn_to([384, 896])
    turns = 384 * f0 / (2 * math.pi)
    ramp = ((turns - 1) / 31).clamp(0, 1)
    assert torch.allclose(r.inv_freq, f0 * (384 / 896 + ramp * (1 - 384 / 896)))
    assert r.inv_freq[32:].abs().max() == 0 and r.scale_mult == pytest.approx(1 + 0.2 * math.log(896 / 384))
    assert torch.allclose(r.cos[0, 5, 0], torch.cos(5 * r.inv_freq))
    r.yarn_to([384, 896, 1408])
    again = T.Rotary(128, 64, 1024.0, half=True)
    again.yarn_to([384, 896, 1408])                       # the state is a function of the chain: resume-safe
    assert torch.equal(again.inv_freq, r.inv_freq) and again.scale_mult == r.scale_mult
    r.yarn_to([384])
    assert torch.equal(r.inv_freq, f0) and r.scale_mult == 1.0


def test_per_token_windows():
    idx = torch.zeros(1, 512, dtype=torch.long)
    m = T.dense_attention_mask(idx, torch.tensor(1), doc_mask=False, per_token=True)[0, 0]
    q = torch.arange(512)
    assert torch.equal(m.sum(-1), torch.clamp(q + 1, max=129))           # a query sees itself and the 128 tokens before it
    blocks = T.dense_attention_mask(idx, torch.tensor(1), doc_mask=False)[0, 0]
    assert torch.equal(blocks.sum(-1), q % 128 + 1)                      # per block: its own block only


# ----------------------------------------------------------------------------- data: BOS-aligned rows

@pytest.fixture(scope="module")
def doc_shards(tmp_path_factory):
    """Two shards of position-coded documents (EOT then its tokens) of lengths 3..60."""
    d = tmp_path_factory.mktemp("bos")
    rng = np.random.default_rng(0)
    for k in range(2):
        parts, pos = [], 0
        while pos < 2000:
            n = int(rng.integers(3, 60))
            parts.append(np.concatenate([[T.EOT_TOKEN], 1000 * (k + 1) + np.arange(pos, pos + n - 1) % 997]))
            pos += n
        T.write_shard(str(d / f"bos_train_{k:06d}.bin"), np.concatenate(parts))
    return sorted(str(p) for p in d.glob("bos_train_*.bin"))


def test_bos_rows_start_at_documents_cut_at_the_cap(doc_shards):
    tokens = np.asarray(T.read_shard(doc_shards[0]))
    starts = np.flatnonzero(tokens == T.EOT_TOKEN)
    loader = T.DataLoader(doc_shards, 64, 4, 4, 0, 1, bos_align=True)
    (x, y), = loader.next_batch(64, 20)
    assert x.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1]) and (x[:, 0] == T.EOT_TOKEN).all()
    i, row = 0, []
    for r in range(4):                                   # rebuild the rows from the document starts
        have, pieces = 0, []
        while have <= 64:
            s = starts[i]; i += 1
            e = min(starts[i], s + 20, s + 64 - have + 1)
            pieces.append(tokens[s:e]); have += e - s
        full = np.concatenate(pieces)
        assert full.tolist() == x[r].tolist() + [int(y[r, -1])], r
        assert all(len(p) <= 20 for p in pieces)
    assert loader.pos == i


def test_bos_loader_resumes_exactly_and_splits_over_ranks(doc_shards):
    sizes = [(32, 10), (64, 20), (64, 20), (128, 30)] * 6        # rows grow by stage; the stream crosses both shards
    ref = T.DataLoader(doc_shards, 128, 4, 2, 0, 1, bos_align=True)
    stream, shards = [], []
    for s in sizes:
        stream.append(torch.cat([x for x, _ in ref.next_batch(*s)])); shards.append(ref.shard)
    assert [k for i, k in enumerate(shards) if i == 0 or shards[i - 1] != k][:3] == [0, 1, 0]  # through shard 1 and round again
    a = T.DataLoader(doc_shards, 128, 4, 2, 0, 1, bos_align=True)
    for s in sizes[:9]:
        a.next_batch(*s)
    b = T.DataLoader(doc_shards, 128, 4, 2, 0, 1, bos_align=True)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for k, s in enumerate(sizes[9:], start=9):
        assert torch.equal(torch.cat([x for x, _ in b.next_batch(*s)]), stream[k]), k
    ranks = [T.DataLoader(doc_shards, 128, 4, 1, r, 2, bos_align=True) for r in range(2)]
    for k, s in enumerate(sizes[:6]):
        per = [l.next_batch(*s) for l in ranks]
        assert torch.equal(torch.cat([per[r][m][0] for m in range(2) for r in range(2)]), stream[k])


# ----------------------------------------------------------------------------- losses: MTP, prefix, the shifted soft-cap

def test_multi_token_and_prefix_loss_against_loops():
    B, Tn, V = 2, 7, 11
    z, y = rand(B, Tn, V, seed=8), torch.randint(0, V, (B, Tn), generator=torch.Generator().manual_seed(9))
    pre = torch.randint(-1, V, (B, Tn), generator=torch.Generator().manual_seed(10))
    w = torch.tensor([1.0, 0.5, 0.25])
    ce = lambda t, target: -torch.log_softmax(z[t[0], t[1]], -1)[target]
    want = 0
    for b in range(B):
        for t in range(Tn):
            want = want + sum(w[k] * ce((b, t), y[b, t + k]) for k in range(3) if t + k < Tn)
            want = want + (0.25 * ce((b, t), pre[b, t]) if pre[b, t] >= 0 else 0)
    got = T.multi_token_cross_entropy(z, y, w, pre, torch.tensor(0.25), reduction="sum")
    assert torch.allclose(got, want) and torch.allclose(T.multi_token_cross_entropy(z, y, w, pre, torch.tensor(0.25)), want / (B * Tn))


def test_prefix_table():
    ranks = T.gpt2_ranks()
    table = T.build_prefix_table(50304, ranks)
    enc = T.gpt2_encoding()
    tid = lambda s: enc.encode_single_token(s.encode())
    assert table[tid(" Hello")] == tid(" Hell") and table[tid("a")] == -1        # a single byte has no proper prefix
    assert table[T.EOT_TOKEN] == -1 and (table[50257:] == -1).all()
    valid = table >= 0
    for t in torch.nonzero(valid).flatten()[::997].tolist():                       # the longest proper prefix that is a token
        token, prefix = enc.decode_single_token_bytes(t), enc.decode_single_token_bytes(int(table[t]))
        assert token.startswith(prefix) and len(prefix) < len(token)
        assert not any(token[:k] in ranks for k in range(len(prefix) + 1, len(token)))


def test_shifted_softcap():
    c = tiny_config("--logit_softcap=23", "--logit_softcap_form=shifted", "--vocab_size=64")
    m = T.build_model(c).eval()
    x = rand(1, 3, 64)
    z = m.lm_head(m.arch.final_norm(x)).float()
    assert torch.allclose(m.arch.logits(x, m.lm_head), 23 * torch.sigmoid((z + 5) / 7.5))


# ----------------------------------------------------------------------------- tie then untie, init

def test_tied_until_the_untie_step_then_apart_with_the_heads_adam_state():
    c = tiny_config("--untie_frac=0.5", "--steps=6", "--vocab_size=128", "--init=record", "--adam_table=record")
    torch.manual_seed(0)
    m = T.build_model(c)
    assert torch.equal(m.wte.weight, m.lm_head.weight) and m.wte.weight is not m.lm_head.weight
    assert m.lm_head.weight.std().item() == pytest.approx(0.005, rel=0.05)
    opts = T.build_optimizers(m, c)
    assert m.arch.schedule.untie_step == 3
    adam = opts[0]
    x = torch.randint(0, 128, (2, 16))
    for step in range(6):
        m(x, x).backward()
        T.optimizer_step(m, opts, c, step)
        assert torch.equal(m.wte.weight, m.lm_head.weight) == (step <= 3), step
        if step == 3:
            assert all(torch.equal(adam.state[m.wte.weight][k], adam.state[m.lm_head.weight][k]) for k in ("exp_avg", "exp_avg_sq"))
    assert adam.state[m.wte.weight]["step"] == 4 + 2                     # the head's 4 steps, carried over (bias correction), + 2


def test_record_init():
    c = tiny_config("--init=record", "--n_embd=64")
    m = T.build_model(c)
    o = m.blocks[0].attn.c_proj.weight
    assert o.abs().max() > 0 and o.std().item() == pytest.approx(0.5 / 64 ** 0.5, rel=0.15)
    assert m.blocks[0].mlp.c_proj.weight.abs().max() == 0


# ----------------------------------------------------------------------------- every piece on: a run that learns and resumes

RECIPE = ["--stages=512x64 w1/2 lr1 mtp1,.5,.25>1,.5,0 pre.25; 1024x128 w1/2 lr1.5 mtp1,.5>1,0 pre.25>0; +4 1024x128 w2/3",
          "--bos_align", "--mtp", "--prefix_loss", "--final_window=4", "--yarn", "--muon_ortho=polar_express", "--normuon_beta2=0.9",
          "--muon_wd=1.2", "--muon_groups=record", "--muon_momentum_warmup=10", "--muon_momentum_cooldown=5", "--adam_table=record",
          "--adam_wd=0.005", "--adam_every=2", "--cooldown_frac=0.6", "--min_lr_frac=0.15", "--doc_mask", "--rope_half",
          "--rope_base=1024", "--merged_qkv"]
GPT_ONLY = ["--untie_frac=0.66", "--init=record", "--logit_softcap=23", "--logit_softcap_form=shifted", "--attn_scale=0.1"]


def recipe_run(d, name, flags, steps=24, **extra):
    c = T.parse_args(["--preset=cpu", "--n_layer=2", "--n_embd=64", "--n_head=2", f"--vocab_size={DOC_VOCAB}", "--seq_len=256",
                      "--batch_size=4", "--device_batch_size=2", f"--steps={steps}", "--val_every=8", "--val_tokens=2048",
                      "--sample_tokens=0", "--kernels=torch", "--bf16=false", f"--train_files={d}/sr_train_*.bin",
                      f"--val_files={d}/sr_val_*.bin", f"--log_dir={d}/logs", f"--run_name={name}", f"--checkpoint_dir={d}/ck"]
                     + RECIPE + flags + [f"--{k}={v}" for k, v in extra.items()])
    return c, train_in_process(c)


@pytest.mark.parametrize("arch", ["gpt", "ngpt", "angpt", "dyt"])
def test_every_piece_on_learns_under_each_arch(arch, documents_shards, monkeypatch):
    """Every recipe piece on at 2 x 64 (the GPT-only ones for GPT and DyT; nGPT / anGPT with Muon, so that the
    optimizer pieces act), 24 steps of 3 stages: finite, the val loss falls, the log prints the stage table."""
    monkeypatch.setattr(T, "EOT_TOKEN", DOC_EOT)
    flags = {"gpt": GPT_ONLY, "dyt": GPT_ONLY + ["--norm=dyt"], "ngpt": ["--arch=ngpt", "--optimizer=muon"],
             "angpt": ["--arch=angpt", "--optimizer=muon"]}[arch]
    c, rc = recipe_run(documents_shards, f"recipe_{arch}", flags)
    assert rc == 0
    (log,) = (documents_shards / "logs").glob(f"recipe_{arch}_*.txt")
    text = log.read_text()
    assert "steps 10-19: 1024x128 w1/2 lr1.5 mtp1,0.5>1,0 pre0.25>0" in text
    val = {s: v for s, (v, _) in step_lines(text)["val"].items()}
    assert sorted(val) == [0, 8, 16, 24] and all(np.isfinite(list(val.values())))
    assert val[24] < val[0] - 1.0, val


def test_every_piece_on_resumes_exactly(documents_shards, monkeypatch):
    """Resumed from its step-12 checkpoint (inside stage 2, after the tokens per step doubled and YaRN moved, before the
    untie at 15), a run appends steps 13-20 to its log: the same train and val losses as the first time (fp32, exact)."""
    monkeypatch.setattr(T, "EOT_TOKEN", DOC_EOT)
    d = documents_shards
    assert recipe_run(d, "again", GPT_ONLY, steps=20, save_every=12)[1] == 0
    assert recipe_run(d, "again", GPT_ONLY, steps=20, resume=str(d / "ck" / "again_step12.pt"))[1] == 0
    first, resumed = next((d / "logs").glob("again_*.txt")).read_text().split("\nresumed from ")
    after12 = lambda text: [l for l in re.findall(r"^step:(\d+)/20 (train_loss|val_loss):(\S+)", text, re.M) if int(l[0]) > 12]
    assert len(after12(resumed)) == 8 + 2 and after12(resumed) == after12(first)
