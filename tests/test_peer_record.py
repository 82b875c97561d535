"""Cheap checks that tests/peer_record.py loads the record (#89) on a CPU and that each exposed function runs and
computes what it says (skipped where the record's folder is absent). The whole-model forward/backward is marked slow
(~30-45 s); a training step and the check against the record's compiled optimizer kernel also need
PEER_RECORD_HEAVY=1 (Polar Express over the full banks and an inductor compile cost a minute more on 2 cores)."""
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_record as P  # noqa: E402

pytestmark = pytest.mark.skipif(not P.available(), reason="the record's folder (PEER_RECORD) is absent")


@pytest.fixture(scope="module")
def rec():
    return P.load()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_load_patch_is_small_marked_and_leaves_no_trace(rec):
    diff = P.DIFF.read_text().splitlines()
    changed = [l for l in diff if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    added = [l for l in changed if l.startswith("+")]
    assert len(added) <= 20 and all("# PEER CPU" in l for l in added)
    assert rec.PEER_CPU and rec.world_size == 1 and rec.grad_accum_steps == 8 and rec.grad_scale == 0.125
    assert rec.device == torch.device("cpu") and not torch.distributed.is_initialized()
    assert (rec.PEER_TMPDIR / "train_gpt.py").read_text().count("# PEER CPU") == len(added)
    for name in ("kernels", "triton_kernels", "dc_triton_kernels"):
        assert name not in sys.modules or not str(getattr(sys.modules[name], "__file__", "")).startswith(str(rec.PEER_TMPDIR))
    assert "triton_kernels" in rec.code and rec.XXT is P.XXT and rec.flash_attn_interface.flash_attn_varlen_func is P.flash_attn_varlen_func
    assert P.load() is rec


@pytest.fixture(scope="module")
def real_kernels():
    """The record's triton_kernels.py up to its CUDA CE section (L906), run by Triton's interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1")
    path = P.record_path() / "triton_kernels.py"
    src = path.read_text()
    mod = types.ModuleType("peer_record_real_triton_kernels")
    mod.__file__ = str(path)
    exec(compile(src[:src.index("CE_KERNEL_BLOCK_SIZE = 256")], str(path), "exec"), mod.__dict__)
    return mod


def test_standins_match_the_real_triton_kernels_in_fp32(real_kernels):
    g = gen()
    A, B = torch.randn(2, 40, 72, generator=g), torch.randn(2, 72, 40, generator=g)
    for fn, x, m in ((P.XXT, A, 40), (P.XTX, B, 40)):
        o1, o2 = torch.empty(2, m, m), torch.empty(2, m, m)
        getattr(real_kernels, fn.__name__)(x, o1)
        fn(x, o2)
        assert torch.equal(o1, o2)
    S = o2.clone()
    o1, o2 = torch.empty_like(S), torch.empty_like(S)
    real_kernels.ba_plus_cAA(S, alpha=0.5, beta=-2.0, out=o1)
    P.ba_plus_cAA(S, alpha=0.5, beta=-2.0, out=o2)
    assert torch.equal(o1, o2)
    pa, s1, s2 = torch.rand(3, 132, generator=g), torch.ones(4), torch.ones(4)
    real_kernels.reduce_mlp_activation_scales(pa, s1, headroom=1.8)
    P.reduce_mlp_activation_scales(pa, s2, headroom=1.8)
    assert torch.equal(s1, s2)
    W = torch.randn(2, 128, 64, generator=g) * 0.01
    outs = []
    for fn in (real_kernels.quantize_transpose_mlp_down_weights, P.quantize_transpose_mlp_down_weights):
        st, nxt, used = torch.empty(2, 64, 128, dtype=torch.float8_e4m3fn), torch.tensor([1e-4, 5e-5]), torch.zeros(2)
        fn(W, st, nxt, used, torch.empty(2, 2))
        outs.append((nxt, used))   # the e4m3 store itself: Triton 3.9's interpreter converts to fp8 wrongly
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    s = torch.randn(33, 70, generator=g)
    d1, d2 = torch.ones(70, 33), torch.ones(70, 33)
    real_kernels.transpose_add(s, d1)
    P.transpose_add(s, d2)
    assert torch.equal(d1, d2)


def test_polar_express_plain_and_fused_momentum():
    g = gen(1)
    G = torch.randn(3, 48, 80, generator=g)
    X16, X32 = P.polar_express(G), P.polar_express(G, dtype=torch.float32)
    assert X16.dtype == torch.float32 and torch.equal(X16, X16.bfloat16().float())
    assert (X16 - X32).abs().max() < 0.03
    sv = torch.linalg.svdvals(X32)
    assert sv.min() > 0.7 and sv.max() < 1.25          # Polar Express's cushioned 5 steps: singular values ~1
    X0, buf0, g0 = P.polar_express(G, momentum=0.0, buffer=torch.randn(3, 48, 80, generator=g), dtype=torch.float32)
    assert torch.equal(X0, X32) and torch.equal(buf0, G) and torch.equal(g0, G)
    ones = torch.ones(3, 48, 80)
    Xm, buf, gn = P.polar_express(G, momentum=0.9, buffer=ones, dtype=torch.float32)
    assert torch.allclose(buf, ones.lerp(G, 0.1)) and torch.allclose(gn, G.lerp(buf, 0.9))
    assert torch.equal(Xm, P.polar_express(gn, dtype=torch.float32))
    tall = P.polar_express(torch.randn(1200, 64, generator=g), dtype=torch.float32)   # XTX path, split_baddbmm
    assert tall.shape == (1200, 64) and torch.linalg.svdvals(tall).min() > 0.7


def _banks(g):
    return dict(qk_bank=torch.randn(4, 16, 32, generator=g) * 0.1, vo_bank=torch.randn(2, 32, 32, generator=g) * 0.1,
                mlp_bank=torch.randn(2, 2, 64, 32, generator=g) * 0.1)


def test_normuon_step_bf16_mantissa_equals_fp32_storage_and_continues():
    g = gen(2)
    params = _banks(g)
    grads = [{k: torch.randn(v.shape, generator=g).bfloat16().float() for k, v in params.items()} for _ in range(2)]
    o16, st = P.normuon_step(params, grads, steps=2)
    o32, _ = P.normuon_step(params, grads, steps=2, storage="fp32")
    for k in params:
        assert torch.equal(o16[k], o32[k]) and o16[k].shape == params[k].shape
        assert 0 < (o16[k] - params[k]).abs().max() < 0.2
    cfg = st.configs()
    assert cfg["qk_bank"].lr_mul == 1.0 and cfg["mlp_bank"].lr_mul == pytest.approx(2 ** 0.5)   # sqrt(64 / 32)
    assert cfg["mlp_bank"].per_matrix_lr_mul == [1.0, 2.0, 1.0, 2.0]                           # c_proj 2x
    o1, st1 = P.normuon_step(params, grads[0])
    o2, _ = P.normuon_step(o1, grads[1], state=st1)
    assert all(torch.equal(o2[k], o16[k]) for k in params)
    assert st1.buffers()["mlp_bank"]["second_momentum_buffer"].shape == (4, 64, 1)


def test_cautious_update_restatement_is_the_fp32_formula():
    g = gen(3)
    x = torch.randn(64, 48, generator=g)
    hi, lo = P.split_f32(x)
    assert torch.equal(P.join_f32(hi, lo), x) and torch.equal(hi, x.view(torch.int32).bitwise_and(-65536).view(torch.float32).bfloat16())
    grad = torch.randn(64, 48, generator=g)
    wd, lr = torch.tensor(1.2 * 0.023), torch.tensor(0.023 * 2)
    p, m = hi.clone().view(torch.uint16), lo.clone()
    P.cautious_wd_and_update_inplace(p, m, grad, wd, lr)
    expect = x - x * ((grad * x) >= 0) * wd * lr - grad * lr
    assert torch.equal(P.join_f32(p.view(torch.bfloat16), m), expect)
    x32 = x.clone()
    P.cautious_wd_and_update_inplace(x32.view(torch.uint16), torch.zeros(64, 48, dtype=torch.uint16), grad, wd, lr)
    assert torch.equal(x32, expect)


def test_adam_step_formula_cautious_decay_and_tying():
    g = gen(4)
    ps = dict(scalars=torch.randn(24, generator=g), lm_head=torch.randn(8, 16, generator=g),
              embed=torch.randn(16, 8, generator=g), bigram_embed=torch.randn(10, 8, generator=g))
    gs = {k: torch.randn(v.shape, generator=g) for k, v in ps.items()}
    out, st = P.adam_step(ps, gs, lr=0.008, step_index=1)
    for label, lr_mul, wd_mul, (b1, b2) in (("scalars", 5.0, 0.0, (0.9, 0.99)), ("bigram_embed", 75.0, 5.0, (0.75, 0.95))):
        lr, gr, p = 0.008 * lr_mul, gs[label], ps[label]
        upd = (1 - b1) * gr / (((1 - b2) * gr * gr).sqrt() + 1e-10) * (lr * (1 - b2) ** 0.5 / (1 - b1))
        upd = upd + p * ((upd * p) > 0) * (lr * lr * 0.005 * wd_mul)
        assert torch.allclose(out[label], p - upd, rtol=0, atol=1e-6)
    assert torch.equal(out["embed"], out["lm_head"].T) and not torch.equal(out["lm_head"], ps["lm_head"])
    assert st.buffers()["scalars"]["step"] == 1


def test_schedule_matches_the_record_run():
    S = P.schedule()
    rows = S["steps"]
    assert len(rows) == 1286 and S["total_steps"] == 1285 and S["split_step"] == 847
    assert S["boundaries"] == [(0, 423), (423, 847), (847, 1270), (1270, 1285)] and S["cooldown_start"] == 508
    assert [r["step"] for r in rows if r["yarn"]] == [423, 847, 1270] == S["transition_steps"]
    assert [r["yarn"] for r in rows if r["yarn"]] == [(384, 896), (896, 1408), (1408, 1664)]
    assert [r["step"] for r in rows if r["loader_send"]] == [423, 847]
    r0, r423, r1285 = rows[0], rows[423], rows[1285]
    assert (r0["tokens_per_step"], r0["micro_batch_tokens"], r0["train_max_seq_len"], r0["ws_short_tokens"], r0["ws_long_tokens"]) == (131072, 16384, 896, 128, 384)
    assert r0["mtp_weights"] == [1.0, 0.5, 0.25] and r0["prefix_weight"] == 0.25 and r0["muon_momentum"] == 0.85 and not r0["adam"]
    assert r423["lr"] == 1.52 and r423["mtp_weights"] == [1.0, 0.5] and r423["adam"]
    assert rows[847]["split"] and rows[847]["adam"] and rows[847]["mtp_weights"] == [1.0]
    assert rows[1269]["lr"] == pytest.approx(1.73 * (1 - 761 / 762) + 0.15 * 761 / 762)
    assert r1285["final"] and r1285["ws_long"] == 20 and r1285["yarn"] is None and r1285["attn_scale"] == rows[1270]["attn_scale"]
    assert r1285["muon_momentum"] == pytest.approx(0.85) and rows[1235]["muon_momentum"] == 0.95
    assert sum(r["adam"] for r in rows[:-1]) == 642 and [r["step"] for r in rows if r["validation"]] == [0, 250, 500, 750, 1000, 1250, 1285]
    assert len(P.schedule(5)["steps"]) == 5


def test_yarn_states():
    Y = P.yarn_states(n_positions=4)
    un = [y for y in Y if not y["paired"]]
    assert [y["window_blocks"] for y in un] == [3, 7, 11, 13, 20] and [y["applied_by_record"] for y in un] == [True] * 4 + [False]
    scales = [0.1]
    for a, b in ((3, 7), (7, 11), (11, 13), (13, 20)):
        scales.append(scales[-1] * (0.2 * math.log(b / a) + 1))
    assert [y["attn_scale"] for y in un] == pytest.approx(scales) and un[3]["attn_scale"] == pytest.approx(0.13178, abs=1e-5)
    f = un[0]["angular_freq"]
    assert f.shape == (128,) and torch.all(f[64:] == 0) and torch.equal(f[0:64:2], f[1:64:2])
    theta = torch.arange(4.0)[:, None] * f
    assert torch.equal(un[0]["factor1"], theta.cos().bfloat16().float())
    assert torch.equal(un[0]["factor2"][:, 1::2], -theta.sin().bfloat16().float()[:, 1::2])
    pa = [y for y in Y if y["paired"]]
    assert pa[0]["factor1"].shape == (4, 256) and torch.equal(pa[0]["factor1"][1, 128:], (3 * f).cos().bfloat16().float())
    assert torch.equal(pa[2]["angular_freq"], un[2]["angular_freq"])


def test_bos_batches_follow_the_stage_schedule():
    bb = P.bos_batches(steps=[0, 423, 847], micro_batches=2)
    assert [(b["step"], b["num_tokens"], b["max_seq_len"], len(b["cum_seqlens"])) for b in bb] == \
        [(0, 16384, 896, 64)] * 2 + [(423, 32768, 2048, 96)] * 2 + [(847, 49152, 2048, 128)] * 2
    for b in bb:
        n, cs = b["num_tokens"], b["cum_seqlens"]
        assert b["inputs"].dtype == torch.int32 and b["targets"].dtype == torch.int64 and cs.dtype == torch.int32
        assert b["inputs"].shape == b["targets"].shape == b["bigram_inputs"].shape == (n,)
        assert cs[0] == 0 and cs[-1] == n and torch.all(cs[1:] >= cs[:-1])
        starts = cs[:-1][cs[1:] > cs[:-1]].long()
        assert torch.all(b["inputs"][starts] == 50256) and (cs[1:] - cs[:-1]).max() <= b["max_seq_len"]
        assert torch.equal(b["bigram_inputs"], P.bigram_hash(b["inputs"]))
    assert torch.equal(bb[0]["targets"][:-1], bb[0]["inputs"][1:].long())
    c = P.cut_batch(bb[2], 100)
    assert c["cum_seqlens"].max() == 100 and torch.equal(c["bigram_inputs"], P.bigram_hash(c["inputs"]))


def test_prefix_table_and_bigram_hash():
    pt = P.prefix_table()
    assert pt.shape == (50304,) and pt.dtype == torch.int64 and int((pt >= 0).sum()) == 50000 and torch.all(pt[50256:] == -1)
    enc = P.get_encoding("gpt2")
    for t in (262, 1169, 13534, 30000, 50000):
        if pt[t] >= 0:
            a, b = enc.decode_single_token_bytes(int(pt[t])), enc.decode_single_token_bytes(t)
            assert b.startswith(a) and len(a) < len(b)
    x = torch.tensor([50256, 10, 20, 30, 50255])
    h = P.bigram_hash(x)
    assert h.dtype == torch.int32 and h[0] == 377279
    assert h[2:].tolist() == [((36313 * int(c)) ^ (27191 * int(p))) % 377279 for p, c in zip(x[1:-1], x[2:])]
    wrapped = (27191 * 377279 + 2 ** 31) % 2 ** 32 - 2 ** 31            # position 1 hashes with R-1 as its previous token
    assert h[1] == ((36313 * 10) ^ wrapped) % 377279
    assert P.bigram_hash(x, bigram_rows=1000)[0] == 999


def test_mtp_prefix_loss_matches_autograd_except_the_normaliser_quirk():
    g = gen(5)
    n, D, V = 12, 16, 50304
    x, W = torch.randn(n, D, generator=g), torch.randn(D, V, generator=g) * 0.5
    tg = torch.randint(0, 50257, (n,), generator=g)
    tg[3] = tg[4]
    pt = P.prefix_table()[tg]
    pt[0] = -1
    mw = torch.tensor([1.0, 0.5, 0.25])
    r = P.mtp_prefix_loss(x, W, tg, mw, pt, 0.25)
    xr, Wr = x.clone().requires_grad_(), W.clone().requires_grad_()
    z = 23 * torch.sigmoid((xr @ Wr + 5) / 7.5)
    lse, rows = torch.logsumexp(z, 1), torch.arange(n)
    L = torch.zeros(n)
    for k in range(3):
        ok = rows + k < n
        L = L + torch.where(ok, mw[k] * (lse - z[rows, tg[(rows + k).clamp_max(n - 1)]]), torch.tensor(0.0))
    L = L + torch.where(pt >= 0, 0.25 * (lse - z[rows, pt.clamp_min(0)]), torch.tensor(0.0))
    (L.sum() * 0.125).backward()
    assert torch.allclose(r["losses"], L.detach(), atol=1e-4)
    err = (xr.grad - r["grad_x"]).abs().amax(dim=1)
    assert err[:-2].max() < 1e-6 and err[-2:].min() > 1e-4          # S_w counts the weights past the batch
    r8 = P.mtp_prefix_loss(x, W, tg, mw, pt, 0.25, fp8=True)
    assert r8["grad_x"].dtype == torch.float32 and (r8["losses"] - r["losses"]).abs().max() < 1.0
    assert r8["grad_w"].shape == (D, V) and torch.isfinite(r8["grad_w"]).all()


def test_fa3_standin_window_is_inclusive_and_document_causal():
    g = gen(6)
    T, H, D, w = 40, 3, 8, 5
    q, k, v = (torch.randn(T, H, D, generator=g) for _ in range(3))
    cu = torch.tensor([0, 13, 30, 40, 40, 40], dtype=torch.int32)
    o = P.flash_attn_varlen_func(q, k, v, cu, cu, 40, 40, softmax_scale=0.3, causal=True, window_size=(w, 0), block=16)
    doc = P._doc_ids(cu, T)
    for i in range(T):
        js = [j for j in range(T) if doc[j] == doc[i] and i - w <= j <= i]
        ref = torch.einsum("hj,jhd->hd", (torch.einsum("hd,jhd->hj", q[i], k[js]) * 0.3).softmax(-1), v[js])
        assert torch.allclose(o[i], ref, atol=1e-5)
    assert len([j for j in range(T) if doc[j] == doc[20] and 20 - w <= j <= 20]) == w + 1


def test_dc_standin_matches_a_naive_loop():
    g = gen(7)
    T, H, D = 260, 6, 128
    q, k, v = (torch.randn(1, T, H, D, generator=g) * 0.3 for _ in range(3))
    base, w1, w2 = torch.randn(T, H, D, generator=g), torch.randn(1, T, H, generator=g), torch.randn(1, T, H, generator=g)
    cu = torch.tensor([0, 150, 260, 260], dtype=torch.int32)
    o = P.dc_attention_postonly_nodd_correction_add_base_triton(base, q, k, v, (w1, w2), None, scaling=0.12, window=112,
                                                               seq_lens=cu, block=64)
    doc = P._doc_ids(cu, T)
    for i in (0, 5, 111, 112, 149, 150, 151, 259):
        js = [j for j in range(T) if doc[j] == doc[i] and 0 <= i - j < 112]
        probs = (torch.einsum("hd,jhd->hj", q[0, i], k[0, js]) * 0.12).softmax(-1)
        a = (w1[0, i][:, None] * probs).sum(0)
        ref = base[i] + w2[0, i][:, None] * torch.einsum("j,jhd->hd", a, v[0, js])
        assert torch.allclose(o[i], ref, atol=1e-5)


heavy = pytest.mark.skipif(os.environ.get("PEER_RECORD_HEAVY") != "1",
                           reason="30-65 s more on 2 shared cores: set PEER_RECORD_HEAVY=1")


@pytest.mark.slow
@heavy
def test_cautious_update_restatement_is_bit_identical_to_the_compiled_original():
    rec = P.load(eager=False)   # the record's functions as it ships them (inductor compiles this one on a CPU: ~25 s)
    orig = rec.NorMuonAndAdam.__dict__["_cautious_wd_and_update_inplace"].__func__
    g = gen(8)
    x, grad = torch.randn(3, 64, 96, generator=g), torch.randn(3, 64, 96, generator=g)
    hi, lo = P.split_f32(x)
    wd, lr = torch.tensor(1.2 * 0.023), torch.tensor(0.046)
    (p1, m1), (p2, m2) = (hi.clone().view(torch.uint16), lo.clone()), (hi.clone().view(torch.uint16), lo.clone())
    orig(p1, m1, grad, wd, lr)
    P.cautious_wd_and_update_inplace(p2, m2, grad, wd, lr)
    assert torch.equal(p1, p2) and torch.equal(m1, m2)


# ------------------------------------ whole model (slow: the record's GPT with 1,024 bigram rows, 352M parameters)

@pytest.fixture(scope="module")
def model():
    m = P.build_model(0, bigram_rows=1024)
    yield m
    del m


@pytest.mark.slow
def test_full_model_forward_backward_and_layout(model):
    b = P.cut_batch(P.bos_batches(steps=[0], micro_batches=1, bigram_rows=1024)[0], 128)
    r = P.forward_backward(model, b["inputs"], b["targets"], b["cum_seqlens"], b["bigram_inputs"], schedule_step=0)
    assert r["per_token"].shape == (128,) and math.isfinite(r["loss"]) and r["loss"] == pytest.approx(r["loss_sum"] / 8)
    assert 1.5 * math.log(50304) < r["per_token"].mean() < 2.5 * math.log(50304)   # MTP 1 + .5 + .25, prefix .25
    names = dict(model.named_parameters())
    assert set(r["grads"]) == set(names) and all(p.grad is None for p in model.parameters())
    assert all(torch.isfinite(g).all() for g in r["grads"].values() if g is not None)
    assert r["grads"]["qk_bank"].abs().sum() > 0 and r["grads"]["ve_gate_bank"][4].abs().sum() == 0
    assert (model.qk_bank.shape, model.vo_bank.shape, model.mlp_bank.shape, model.scalars.shape) == \
        ((60, 256, 768), (20, 768, 768), (12, 2, 3072, 768), (24,))
    L = P.layer_weights(model)
    assert "layers.6.attn.q" not in L and L["layers.7.attn.q"].data_ptr() == model.qk_bank[36].data_ptr()
    assert L["layers.3.mlp.c_proj"].shape == (768, 3072) and torch.equal(L["lm_head"], model.lm_head.weight.T)


@pytest.mark.slow
@heavy
def test_full_model_one_training_step(model):
    b = P.cut_batch(P.bos_batches(steps=[0], micro_batches=1, bigram_rows=1024)[0], 64)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if k in ("qk_bank", "mlp_bank", "scalars")}
    r = P.train_steps(model, [[b]], n=1, start_step=0, pe_dtype=torch.float32)   # step 0: NorMuon only (Adam: odd)
    assert len(r["losses"]) == 1 and math.isfinite(r["losses"][0])
    assert not torch.equal(r["params"]["qk_bank"], before["qk_bank"]) and not torch.equal(r["params"]["mlp_bank"], before["mlp_bank"])
    assert torch.equal(r["params"]["scalars"], before["scalars"]) and model.scalars.grad is not None   # kept for step 1
