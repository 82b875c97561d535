"""anGPT (--arch=angpt, arXiv 2505.22014), DyT (--norm=dyt, Zhu et al. 2025) and the seed-000 hypotheses
(--norm_skip_tol, --qkv_head_dim, --mlp_skip_threshold) on the GPT baseline.

anGPT's factors are tested as the SPEC says, empirically: at init, with unit-norm random inputs, every
nu-scaled output has mean norm within 10% of 1 (d = 256, so that norms concentrate)."""
import math

import pytest
import torch
import torch.nn.functional as F

import train_gpt as T
from conftest import tiny_config, tiny_model, tokens, train_in_process

TORCH_OPS = T.Ops("torch")
_C = tiny_config()
D, H, L = _C.n_embd, _C.n_head, _C.n_layer
HD = D // H


def unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True)


def weight_matrices(model):
    """(name, weight) of every Linear and Embedding: the matrices anGPT constrains row by row."""
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
            yield name + ".weight", mod.weight


# ============================================================================= anGPT

D_BIG, H_BIG, N = 256, 4, 384


@pytest.fixture(scope="module", params=["relu2", "swiglu", "silu"])
def angpt_big(request):
    return tiny_model("--arch=angpt", "--n_layer=1", f"--n_embd={D_BIG}", f"--n_head={H_BIG}", f"--mlp={request.param}")


def mean_norm(t):
    return t.norm(dim=-1).mean().item()


def assert_unit_mean(t, what):
    n = mean_norm(t)
    assert abs(n - 1) < 0.1, f"{what}: mean norm {n:.3f}, not within 10% of 1"


@torch.no_grad()
def test_angpt_nu_factors_give_unit_norms_at_init(angpt_big):
    m = angpt_big
    b = m.blocks[0]
    at, mlp = b.attn, b.mlp
    d, hd, hidden = D_BIG, D_BIG // H_BIG, mlp.hidden
    # the constants are the SPEC's
    assert at.v_scale == pytest.approx(math.sqrt(d / hd)) and at.out_scale == pytest.approx(math.sqrt(hd / d))
    assert mlp.up_scale == pytest.approx(math.sqrt(d / hidden)) and mlp.down_scale == pytest.approx(math.sqrt(hidden / d))
    assert mlp.act_scale == pytest.approx(m.arch.nu_act if mlp.kind == "swiglu" else m.arch.nu_act / math.sqrt(hidden))
    x = unit(N, d, seed=1)
    nu_qkv = at.v_scale
    for name, lin in (("q", at.c_q), ("k", at.c_k), ("v", at.c_v)):
        assert_unit_mean((lin(x) * nu_qkv).view(N, H_BIG, hd), f"per-head {name} * nu_qkv")
    heads = unit(N, H_BIG, hd, seed=2).reshape(N, H_BIG * hd)       # unit-norm value per head
    assert_unit_mean(at.c_proj(heads) * at.out_scale, "attention out * nu_p")
    u = mlp.c_fc(x) * mlp.up_scale
    for i, part in enumerate(u.chunk(2, dim=-1) if mlp.kind == "swiglu" else (u,)):
        assert_unit_mean(part, f"up * nu_up (part {i})")
    assert_unit_mean(mlp.act(u) * mlp.act_scale, f"{mlp.kind} activation * nu_act")
    assert_unit_mean(mlp.c_proj(unit(N, hidden, seed=3)) * mlp.down_scale, "down * nu_down")
    # and the MLP as the block runs it, end to end
    assert_unit_mean(mlp(x), "MLP(x)")


def test_angpt_rows_start_normalised(angpt_big):
    for name, w in weight_matrices(angpt_big):
        n = w.detach().norm(dim=1)
        torch.testing.assert_close(n, torch.ones_like(n), atol=1e-5, rtol=0, msg=f"{name}: rows must start at norm 1")


@torch.no_grad()
@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.5, 0.8])
def test_angpt_residual_keeps_unit_norm(alpha):
    h, x = unit(N, D_BIG, seed=4), unit(N, D_BIG, seed=5)
    out = T.angpt_update_ref(h, x, torch.full((D_BIG,), alpha))
    assert_unit_mean(out, f"nu(alpha)(h + alpha(x - h)), alpha={alpha}")
    assert abs(mean_norm(out) - 1) < 0.02  # with d=256 the concentration is much tighter than 10%


def test_angpt_nu_alpha_is_exact():
    g = torch.Generator().manual_seed(0)
    h, x = torch.randn(4, 7, 64, generator=g), torch.randn(4, 7, 64, generator=g)
    alpha = torch.rand(64, generator=g) * 1.5 - 0.2
    nu = 1 / torch.sqrt(alpha ** 2 + (1 - alpha) ** 2)
    torch.testing.assert_close(T.angpt_update_ref(h, x, alpha), nu * (h + alpha * (x - h)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(TORCH_OPS.angpt_update(h, x, alpha), nu * (h + alpha * (x - h)), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["silu", "relu2", "swiglu", "gelu"])
def test_angpt_activation_nu_is_a_stable_estimate(kind):
    """nu_act per coordinate at pre-activation std sigma: reproducible, and exact where a closed form exists."""
    values = [T.angpt_activation_nu(kind, 0.5, 1 << 20, seed=s) for s in range(4)]
    spread = (max(values) - min(values)) / min(values)
    assert spread < 0.01, f"{kind}: estimates {values} spread {spread:.1%}"
    assert T.angpt_activation_nu(kind, 0.5, 1 << 20, seed=0) == values[0]  # deterministic
    if kind == "relu2":  # E[relu(z)^4] = 3 sigma^4 / 2
        assert values[0] == pytest.approx(1 / (0.25 * math.sqrt(1.5)), rel=0.01)
    if kind in ("silu", "swiglu"):  # the paper's 3.74 for SiLU holds at sigma = 0.5 = nu_up (not at unit-norm inputs: 2.00)
        assert values[0] == pytest.approx(3.74, rel=0.01)
        assert T.angpt_activation_nu(kind, 0.01, 1 << 20) * 0.01 == pytest.approx(2.0, rel=0.01)  # silu(z) ~ z/2 near 0


@torch.no_grad()
@pytest.mark.parametrize("kind", ["relu2", "swiglu"])
def test_angpt_activation_sees_the_papers_input_scale(kind):
    """At width 768 (d_ff 3072) the activation's input has per-coordinate std nu_up, the logged nu_act is O(1)
    (the first version's unit-norm definition gave 45 for ReLU^2 and 90 for SwiGLU here) and the MLP output norm is 1."""
    m = tiny_model("--arch=angpt", "--n_layer=1", "--n_embd=768", "--n_head=6", f"--mlp={kind}")
    mlp = m.blocks[0].mlp
    assert 1 < m.arch.nu_act < 6, m.arch.nu_act
    assert f"nu_act:{m.arch.nu_act:.4f}" in m.arch.summary()
    x = unit(512, 768, seed=1)
    u = mlp.c_fc(x) * mlp.up_scale
    pre = (u.chunk(2, dim=-1)[1] if kind == "swiglu" else u) * mlp.act_in_scale
    assert pre.std().item() == pytest.approx(m.arch.nu_up, rel=0.05)
    assert_unit_mean(mlp(x), f"{kind} MLP at width 768")


def ref_angpt_block(block, h, alpha_init, norm="input"):
    """anGPT block from the paper: exact QK-norm (s_qk * q/||q||, softmax scale sqrt(d_h)), nu factors on v, the
    attention output, up, activation and down; h = nu(a)(h + a(f(n(h)) - h)), nu(a) = 1/sqrt(a^2 + (1-a)^2),
    with --angpt_norm's exact l2 norm of each sub-layer's input (f(n(h)), the default) or output (n(f(h)))."""
    B, Tn, d = h.shape
    at, mlp = block.attn, block.mlp
    nh, hd = at.n_head, at.head_dim
    n_in, n_out = ((lambda x: F.normalize(x, dim=-1)) if norm == where else (lambda x: x) for where in ("input", "output"))
    x = n_in(h)
    q, k, v = (lin(x).view(B, Tn, nh, hd) for lin in (at.c_q, at.c_k, at.c_v))
    q, k = at.rotary(q), at.rotary(k)
    s_qk = (at.s_qk.s_hat * (1.0 / d ** -0.5)).reshape(nh, hd)
    q, k = s_qk * F.normalize(q, dim=-1), s_qk * F.normalize(k, dim=-1)
    v = v * math.sqrt(d / hd)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * math.sqrt(hd)
    scores = scores.masked_fill(~torch.ones(Tn, Tn, dtype=torch.bool).tril(), float("-inf"))
    y = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v).reshape(B, Tn, nh * hd)
    attn = at.c_proj(y) * math.sqrt(hd / d)

    def lerp(h, x, a):
        return (h + a * (x - h)) / torch.sqrt(a ** 2 + (1 - a) ** 2)
    a_A = (block.alpha_attn.s_hat * (alpha_init / d ** -0.5)).abs()
    a_M = (block.alpha_mlp.s_hat * (alpha_init / d ** -0.5)).abs()
    h = lerp(h, n_out(attn), a_A)
    u = mlp.c_fc(n_in(h)) * math.sqrt(d / mlp.hidden)                      # unit norm over d_ff coordinates
    act = torch.relu(math.sqrt(d) * u) ** 2 * block_nu_act(block) / math.sqrt(mlp.hidden)  # at std nu_up, back to unit norm
    return lerp(h, n_out(mlp.c_proj(act) * math.sqrt(mlp.hidden / d)), a_M)


def block_nu_act(block):
    """nu_act for the block's MLP, recomputed from its definition (relu2: per coordinate at std nu_up)."""
    return T.angpt_activation_nu("relu2", math.sqrt(block.mlp.c_fc.in_features / block.mlp.hidden), 1 << 20)


@pytest.mark.parametrize("norm", ["input", "output", "none"])
@torch.no_grad()
def test_angpt_block_matches_paper_equations(norm):
    m = tiny_model("--arch=angpt", f"--angpt_norm={norm}")
    block = m.blocks[0]
    g = torch.Generator().manual_seed(0)
    for p in (block.alpha_attn.s_hat, block.alpha_mlp.s_hat, block.attn.s_qk.s_hat):
        p.copy_(p.abs().mean() * (0.5 + torch.rand(p.shape, generator=g)))
    h = 1.5 * unit(2, 16, D, seed=2)  # off the unit sphere, as a deep stream is: the exact norm shows
    torch.testing.assert_close(block(h), ref_angpt_block(block, h, 0.05, norm), atol=1e-5, rtol=1e-5)
    for other in {"input", "output", "none"} - {norm}:  # the three places differ on this stream
        assert not torch.allclose(block(h), ref_angpt_block(block, h, 0.05, other), atol=1e-3)


@torch.no_grad()
def test_angpt_norm_input_normalises_the_head_input():
    """--angpt_norm=input (the default): the logits are those of the normalised last stream (a stream of norm 3,
    what depth builds at 12 x 768, gives its unit direction's logits); the flag is anGPT's alone."""
    m = tiny_model("--arch=angpt")
    h = 3 * unit(2, 16, D, seed=2)
    torch.testing.assert_close(m.arch.logits(h, m.lm_head), m.arch.logits(F.normalize(h, dim=-1), m.lm_head))
    for norm in ("output", "none"):  # the stream is (near) unit there: its norm reaches the logits
        plain = tiny_model("--arch=angpt", f"--angpt_norm={norm}")
        assert not torch.allclose(plain.arch.logits(h, plain.lm_head), plain.arch.logits(F.normalize(h, dim=-1), plain.lm_head))
    with pytest.raises(T.ConfigError, match="--angpt_norm only applies to --arch=angpt"):
        tiny_config("--angpt_norm=none")


def test_angpt_rows_bounded_after_train_steps(tmp_path, monkeypatch, tiny_shards):
    """The real train loop: after each step every row of every weight matrix has norm <= 1."""
    saved = {}

    def capture(path, state, keep, log):
        saved[state["step"]] = {k: v.detach().clone() for k, v in state["model"].items() if k.endswith(".weight") and v.ndim == 2}
    monkeypatch.setattr(T, "save_checkpoint", capture)
    a = tiny_config("--arch=angpt", *tiny_shards, "--steps=2", "--val_every=2", "--val_tokens=32", "--sample_tokens=0",
                    "--save_every=1", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck")
    assert train_in_process(a) == 0
    assert sorted(saved) == [1, 2]
    for step, state in saved.items():
        for k, w in state.items():
            assert w.norm(dim=1).max() <= 1 + 1e-5, f"step {step} {k}: row norm {w.norm(dim=1).max():.4f} > 1"


@torch.no_grad()
def test_angpt_projection_clamps_rows_to_unit_ball():
    m = tiny_model("--arch=angpt")
    w = m.blocks[0].attn.c_q.weight
    head = m.lm_head.weight
    w[0] = w[0] / w[0].norm() * 3.0       # pushed out of the ball
    w[1] = w[1] / w[1].norm() * 0.5       # inside: must stay as it is
    head[7] *= 4.0
    row1 = w[1].clone()
    m.after_step(0)
    assert w[0].norm().item() == pytest.approx(1.0, abs=1e-6)
    assert head[7].norm().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(w[1], row1)  # ||w|| <= 1 is a constraint, not a normalisation
    for name, p in weight_matrices(m):
        assert p.norm(dim=1).max() <= 1 + 1e-6, name


def test_angpt_scalars_start_at_init():
    m = tiny_model("--arch=angpt")
    for name, mod in m.named_modules():
        if isinstance(mod, T.Scalars):
            init = {"alpha_attn": 0.05, "alpha_mlp": 0.05, "s_qk": 1.0, "s_z": 15.0}[name.rsplit(".", 1)[-1]]
            torch.testing.assert_close(mod().detach(), torch.full_like(mod.s_hat, init), msg=name)


def test_angpt_loss_finite_and_gradients():
    m = tiny_model("--arch=angpt")
    x, y = tokens()
    loss = m(x, y)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


# ============================================================================= DyT

def test_dyt_forward_is_w_tanh_alpha_x_plus_b():
    g = torch.Generator().manual_seed(0)
    n = T.Norm("dyt", 16, TORCH_OPS, dyt_alpha=0.7)
    assert n.alpha.shape == (1,)
    torch.testing.assert_close(n.weight.detach(), torch.ones(16)); torch.testing.assert_close(n.bias.detach(), torch.zeros(16))
    with torch.no_grad():
        n.weight.copy_(torch.randn(16, generator=g)); n.bias.copy_(torch.randn(16, generator=g))
    x = torch.randn(3, 5, 16, generator=g) * 3
    want = n.weight * torch.tanh(n.alpha * x) + n.bias
    torch.testing.assert_close(n(x), want, atol=1e-6, rtol=1e-6)
    assert (n(x) - x).abs().max() > 0.1


def test_dyt_gradients_match_autograd_of_the_expression():
    g = torch.Generator().manual_seed(1)
    n = T.Norm("dyt", 16, TORCH_OPS, dyt_alpha=0.6)
    with torch.no_grad():
        n.weight.copy_(torch.randn(16, generator=g)); n.bias.copy_(torch.randn(16, generator=g))
    x = (torch.randn(4, 8, 16, generator=g) * 2).requires_grad_()
    gy = torch.randn(4, 8, 16, generator=g)
    n(x).backward(gy)
    got = [x.grad.clone(), n.alpha.grad.clone(), n.weight.grad.clone(), n.bias.grad.clone()]
    x2 = x.detach().clone().requires_grad_()
    al, w, b = (p.detach().clone().requires_grad_() for p in (n.alpha, n.weight, n.bias))
    (w * torch.tanh(al * x2) + b).backward(gy)
    for name, a_, b_ in zip(("x", "alpha", "weight", "bias"), got, [x2.grad, al.grad, w.grad, b.grad]):
        torch.testing.assert_close(a_, b_, atol=1e-5, rtol=1e-5, msg=name)
    # and the closed form: d/dx = g * w * alpha * (1 - tanh^2)
    t = torch.tanh(n.alpha.detach() * x.detach())
    torch.testing.assert_close(got[0], gy * n.weight.detach() * n.alpha.detach() * (1 - t * t), atol=1e-5, rtol=1e-5)


def test_dyt_model_has_no_other_norm(monkeypatch):
    m = tiny_model("--norm=dyt")
    norms = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, T.Norm)]
    assert len(norms) == 4 * L + 1  # per block: attn, mlp, q, k; plus the final norm
    assert all(mod.kind == "dyt" for _, mod in norms), [(n, mod.kind) for n, mod in norms if mod.kind != "dyt"]
    assert not any(isinstance(mod, (torch.nn.LayerNorm, torch.nn.RMSNorm)) for mod in m.modules())
    for fn in ("rms_norm", "l2_norm"):
        monkeypatch.setattr(m.ops, fn, lambda *a, **k: (_ for _ in ()).throw(AssertionError("a norm ran in a DyT model")))
    monkeypatch.setattr(F, "layer_norm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("layer_norm ran")))
    monkeypatch.setattr(F, "rms_norm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rms_norm ran")))
    x, y = tokens()
    assert torch.isfinite(m(x, y))


def test_dyt_no_qk_keeps_rmsnorm_on_q_k():
    m = tiny_model("--norm=dyt", "--no-dyt_qk")
    for n, mod in m.named_modules():
        if isinstance(mod, T.Norm):
            assert mod.kind == ("rmsnorm" if n.endswith(("q_norm", "k_norm")) else "dyt"), (n, mod.kind)


@pytest.mark.parametrize("flags,expect", [
    ([], (0.8, 0.2, 0.2)),
    (["--dyt_alpha_attn=0.5", "--dyt_alpha_mlp=0.3", "--dyt_alpha_final=0.1"], (0.5, 0.3, 0.1))])
def test_dyt_alpha_inits_per_site(flags, expect):
    m = tiny_model("--norm=dyt", *flags)
    attn, mlp, final = expect
    for b in m.blocks:
        assert b.attn_norm.alpha.item() == pytest.approx(attn)
        assert b.mlp_norm.alpha.item() == pytest.approx(mlp)
        assert b.attn_norm.alpha.requires_grad
    assert m.arch.final_norm.alpha.item() == pytest.approx(final)


def test_dyt_embed_scale():
    assert tiny_model("--norm=dyt").arch.embed_scale is None
    m = tiny_model("--norm=dyt", "--dyt_embed_scale")
    scale = m.arch.embed_scale
    assert isinstance(scale, torch.nn.Parameter) and scale.requires_grad
    torch.testing.assert_close(scale.detach(), torch.tensor([math.sqrt(D)]))
    with torch.no_grad():  # the GPT head starts at zero, which would zero every gradient upstream
        m.lm_head.weight.normal_(0, 0.1)
    seen = []
    hook = m.blocks[0].register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    x, y = tokens()
    loss = m(x, y)
    hook.remove()
    torch.testing.assert_close(seen[0], m.wte(x) * math.sqrt(D))
    loss.backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    opts = T.build_optimizers(m, tiny_config("--norm=dyt", "--dyt_embed_scale"))
    assert any(p is scale for o in opts for g in o.param_groups for p in g["params"])


# ============================================================================= norm_skip_tol

def _rows_with_rms(rms_values, d=64, seed=0):
    x = unit(len(rms_values), d, seed=seed) * math.sqrt(d)            # rms exactly 1
    return x * torch.tensor(rms_values)[:, None]


@pytest.mark.parametrize("tol", [0.1, 0.3])
def test_norm_skip_tol_rows(tol):
    rms = [1.0, 1.05, 0.93, 1.2, 0.5, 2.0, 1.25, 0.72]
    x = _rows_with_rms(rms)
    probe = T.Probe()
    n = T.Norm("rmsnorm", 64, TORCH_OPS, probe, skip_tol=tol)
    y = n(x)
    full = F.rms_norm(x, (64,), eps=1e-6)
    for i, r in enumerate(rms):
        if abs(r - 1) < tol:
            torch.testing.assert_close(y[i], x[i], atol=0, rtol=0, msg=f"row rms {r} must come back unchanged")
        else:
            torch.testing.assert_close(y[i], full[i], atol=1e-6, rtol=1e-6, msg=f"row rms {r} must be normalised")
    assert sum(abs(r - 1) < tol for r in rms) not in (0, len(rms))
    with probe.measure() as s:
        n(x)
    assert s["norm_skip_frac"] == [pytest.approx(sum(abs(r - 1) < tol for r in rms) / len(rms))]


def test_norm_skip_tol_zero_is_rmsnorm():
    x = _rows_with_rms([1.0, 1.01, 0.99, 3.0, 0.2]) + 0.01
    torch.testing.assert_close(T.Norm("rmsnorm", 64, TORCH_OPS, skip_tol=0.0)(x), F.rms_norm(x, (64,), eps=1e-6), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(T.rms_norm_ref(x), F.rms_norm(x, (64,), eps=1e-6), atol=1e-6, rtol=1e-6)


def test_norm_skip_tol_reaches_the_block_norms():
    m = tiny_model("--norm_skip_tol=0.1")
    for b in m.blocks:
        assert b.attn_norm.skip_tol == 0.1 and b.mlp_norm.skip_tol == 0.1
    x, _ = tokens()
    with m.probe.measure() as s:
        m(x)
    assert len(s["norm_skip_frac"]) == 2 * L and all(0 <= v <= 1 for v in s["norm_skip_frac"])


# ============================================================================= qkv_head_dim

def test_qkv_head_dim_shapes_and_counts():
    base, low = tiny_model(), tiny_model("--qkv_head_dim=16")
    for b in low.blocks:
        for lin in (b.attn.c_q, b.attn.c_k, b.attn.c_v):
            assert tuple(lin.weight.shape) == (H * 16, D)
        assert tuple(b.attn.c_proj.weight.shape) == (D, H * 16)
        assert b.attn.head_dim == 16
    count = lambda m: sum(p.numel() for p in m.parameters())
    # per layer: 4 matrices of D x D become 4 of D x (H * 16)
    assert count(base) - count(low) == L * 4 * (D * D - D * H * 16)
    x, y = tokens()
    assert torch.isfinite(low(x, y))


def test_qkv_head_dim_equal_to_head_dim_is_the_baseline():
    x, y = tokens()
    base, same = tiny_model(seed=3), tiny_model(f"--qkv_head_dim={HD}", seed=3)
    with torch.no_grad():  # output projections are zero at init: give them weights so attention matters
        for m in (base, same):
            torch.manual_seed(5)
            for b in m.blocks:
                b.attn.c_proj.weight.normal_(0, 0.1); b.mlp.c_proj.weight.normal_(0, 0.1)
            m.lm_head.weight.normal_(0, 0.1)
        assert base(x, y).item() == same(x, y).item()


# ============================================================================= mlp_skip_threshold

@torch.no_grad()
def test_mlp_skip_threshold_skips_low_rms_tokens():
    m = tiny_model()
    torch.manual_seed(1)
    for b in m.blocks:  # non-zero output projections so both the attention and the MLP do something
        b.attn.c_proj.weight.normal_(0, 0.05); b.mlp.c_proj.weight.normal_(0, 0.05)
    block = m.blocks[0]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 32, D, generator=g) * torch.rand(2, 32, 1, generator=g) * 0.6
    x_attn = x + block.attn(block.attn_norm(x))                        # the residual after attention
    dense = x_attn + block.mlp(block.mlp_norm(x_attn))
    rms = x_attn.pow(2).mean(-1).sqrt()
    threshold = rms.flatten().median().item()
    skip = rms < threshold
    assert 0 < skip.sum() < skip.numel()
    block.mlp_skip_threshold = threshold
    rows = []
    hook = block.mlp.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].reshape(-1, D).shape[0]))
    with m.probe.measure() as s:
        out = block(x)
    hook.remove()
    torch.testing.assert_close(out[skip], x_attn[skip], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[~skip], dense[~skip], atol=1e-5, rtol=1e-5)
    assert (dense[skip] - x_attn[skip]).abs().max() > 1e-4  # the MLP would have changed the skipped tokens
    assert rows == [int((~skip).sum())]                     # the MLP ran on the kept rows only
    assert s["mlp_rows"] == [int((~skip).sum())]
    assert s["mlp_skip_frac"] == [pytest.approx(skip.float().mean().item())]


def test_mlp_skip_threshold_flag_and_stats():
    m = tiny_model("--mlp_skip_threshold=0.15")
    assert all(b.mlp_skip_threshold == 0.15 for b in m.blocks)
    x, y = tokens()
    with m.probe.measure() as s:
        loss = m(x, y)
    assert torch.isfinite(loss)
    assert len(s["mlp_skip_frac"]) == L and all(0 <= v <= 1 for v in s["mlp_skip_frac"])
    loss.backward()
    assert tiny_model().blocks[0].mlp_skip_threshold == 0
