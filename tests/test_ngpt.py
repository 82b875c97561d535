"""nGPT (--arch=ngpt, Loshchilov et al. 2024) and the seed 001/003 hypotheses behind its flags.

Everything runs on conftest's tiny fp32 models. The key test (test_block_matches_paper_equations) re-implements
one nGPT block from the paper's equations, by hand, and compares it with NGPTBlock; the projection tests drive
the real train loop (train_gpt.train) on conftest's tiny shards."""
import math

import pytest
import torch

import train_gpt as T
from conftest import tiny_config, tiny_model, tokens, train_in_process

NGPT = "--arch=ngpt"
_C = tiny_config(NGPT)
D, H, L = _C.n_embd, _C.n_head, _C.n_layer
HD = D // H


def ngpt(*flags, seed=0):
    return tiny_model(NGPT, *flags, seed=seed)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


def expected_multipliers(schedule, n):
    """The seed-001 per-layer multipliers, written from the SPEC's formulas."""
    out = []
    for l in range(n):
        f = l / (n - 1)
        out.append({"uniform": 1.0, "linear": 0.7 + 0.6 * f, "upsidedown_u": 0.7 + 0.6 * math.sin(math.pi * f),
                    "downsideup_u": 1.3 - 0.6 * math.sin(math.pi * f)}[schedule])
    return out


def embedding_norms(name, w):
    """Norms of a matrix's vectors along the embedding dim: rows of wte, lm_head, c_q/c_k/c_v, mlp.c_fc;
    columns of attn.c_proj and mlp.c_proj."""
    if name.endswith("c_proj.weight"):
        assert w.shape[0] == D, name
        return w.norm(dim=0)
    assert w.shape[-1] == D, name
    return w.norm(dim=1)


MATRICES = ["wte.weight", "lm_head.weight"] + [f"blocks.{l}.{m}.weight" for l in range(L) for m in
            ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


# ----------------------------------------------------------------------------- projection in the real loop

def run_train(tmp_path, monkeypatch, shards, *extra, steps):
    """Runs train_gpt.train() for `steps` steps with --save_every=1 and returns {step: {matrix: tensor}}: the
    checkpointed model after each step (save_checkpoint is intercepted so that no checkpoint files are written)."""
    saved = {}

    def capture(path, state, keep, log):
        saved[state["step"]] = {k: state["model"][k].detach().clone() for k in MATRICES}
    monkeypatch.setattr(T, "save_checkpoint", capture)
    a = tiny_config(NGPT, *shards, f"--steps={steps}", f"--val_every={steps}", "--val_tokens=32", "--sample_tokens=0",
                    "--save_every=1", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ckpt", *extra)
    assert train_in_process(a) == 0
    assert sorted(saved) == list(range(1, steps + 1))
    return saved


def max_dev(state, radius):
    return max((embedding_norms(k, w) - radius).abs().max().item() for k, w in state.items())


def test_init_matrices_are_unit_along_embedding_dim():
    m = ngpt()
    params = dict(m.named_parameters())
    for k in MATRICES:
        n = embedding_norms(k, params[k].detach())
        torch.testing.assert_close(n, torch.ones_like(n), atol=1e-5, rtol=0, msg=k)


def test_projection_after_every_step_in_train_loop(tmp_path, monkeypatch, tiny_shards):
    saved = run_train(tmp_path, monkeypatch, tiny_shards, steps=2)
    for step, state in saved.items():
        for k, w in state.items():
            n = embedding_norms(k, w)
            torch.testing.assert_close(n, torch.ones_like(n), atol=1e-5, rtol=0, msg=f"step {step} {k}")
    # the weights did move (so unit norms are the projection's doing, not an optimizer that did nothing)
    assert (saved[2]["blocks.0.attn.c_q.weight"] - saved[1]["blocks.0.attn.c_q.weight"]).abs().max() > 1e-4


def test_progressive_radius(tmp_path, monkeypatch, tiny_shards):
    steps = 4
    saved = run_train(tmp_path, monkeypatch, tiny_shards, "--ngpt_radius=0.95", steps=steps)
    for step, state in saved.items():
        r = 1 + (0.95 - 1) * step / steps
        for k, w in state.items():
            n = embedding_norms(k, w)
            torch.testing.assert_close(n, torch.full_like(n, r), atol=1e-5, rtol=0, msg=f"step {step} {k} radius {r}")


def test_lazy_projection_every_k_steps(tmp_path, monkeypatch, tiny_shards):
    saved = run_train(tmp_path, monkeypatch, tiny_shards, "--ngpt_proj_every=3", steps=6)
    for step, state in saved.items():
        dev = max_dev(state, 1.0)
        if step % 3 == 0:
            assert dev < 1e-5, f"step {step}: projected steps must be back on the sphere (max |norm-1| {dev:.2e})"
        else:
            assert dev > 1e-4, f"step {step}: not a projection step, yet every norm is 1 (max |norm-1| {dev:.2e})"


def test_lazy_projection_with_radius(tmp_path, monkeypatch, tiny_shards):
    saved = run_train(tmp_path, monkeypatch, tiny_shards, "--ngpt_proj_every=2", "--ngpt_radius=0.9", steps=4)
    for step in (2, 4):
        assert max_dev(saved[step], 1 + (0.9 - 1) * step / 4) < 1e-5, step
    assert max_dev(saved[1], 1.0) > 1e-4 and max_dev(saved[3], 0.95) > 1e-4


# ----------------------------------------------------------------------------- hidden states

@pytest.mark.parametrize("flags", [[], ["--ngpt_residual=add"], ["--ngpt_gated_residual"], ["--no-ngpt_qk_norm"]],
                         ids=["lerp", "add", "gated", "no_qk_norm"])
def test_hidden_states_unit_after_every_block(flags):
    m = ngpt(*flags)
    with torch.no_grad():  # move the scalars off their init so the check is not about a special point
        for b in m.blocks:
            b.alpha_attn.s_hat.mul_(5.0); b.alpha_mlp.s_hat.mul_(-3.0)
    outs = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: outs.append((inp[0], out))) for b in m.blocks]
    x, _ = tokens()
    with torch.no_grad(), m.probe.measure() as values:
        m(x)
    for h in hooks: h.remove()
    assert len(outs) == L
    assert values["hidden_norm"] == [pytest.approx(1.0, abs=1e-5)]  # what the log reports: the stream the head sees
    for l, (inp, out) in enumerate(outs):
        for name, t in (("input", inp), ("output", out)):
            n = t.norm(dim=-1)
            torch.testing.assert_close(n, torch.ones_like(n), atol=1e-5, rtol=0, msg=f"block {l} {name}")


# ----------------------------------------------------------------------------- alpha, gates, scalars

@pytest.mark.parametrize("schedule", ["uniform", "linear", "upsidedown_u", "downsideup_u"])
def test_alpha_schedule_multipliers(schedule):
    n = 5  # interior layers, so that the U shapes are not degenerate
    m = ngpt(f"--ngpt_alpha_schedule={schedule}", f"--n_layer={n}", "--ngpt_alpha_init=0.15")
    for l, (b, mult) in enumerate(zip(m.blocks, expected_multipliers(schedule, n))):
        aa, am = b.alphas()
        assert aa.shape == am.shape == (D,)
        torch.testing.assert_close(aa, torch.full((D,), 0.15 * mult), atol=1e-6, rtol=0, msg=f"{schedule} layer {l}")
        torch.testing.assert_close(am, torch.full((D,), 0.15 * mult), atol=1e-6, rtol=0, msg=f"{schedule} layer {l}")
    if schedule != "uniform":  # the schedule really differs across depth
        assert len({round(float(b.alphas()[0][0].detach()), 6) for b in m.blocks}) > 1


def test_alpha_defaults_and_asymmetric():
    m = ngpt()
    for b in m.blocks:
        torch.testing.assert_close(b.alphas()[0], torch.full((D,), 0.05))
        torch.testing.assert_close(b.alphas()[1], torch.full((D,), 0.05))
    m = ngpt("--ngpt_alpha_attn_init=0.2", "--ngpt_alpha_mlp_init=0.35", "--ngpt_alpha_schedule=linear", "--n_layer=3")
    for b, mult in zip(m.blocks, expected_multipliers("linear", 3)):
        torch.testing.assert_close(b.alphas()[0], torch.full((D,), 0.2 * mult))
        torch.testing.assert_close(b.alphas()[1], torch.full((D,), 0.35 * mult))
    assert dict(m.named_parameters())["blocks.0.alpha_attn.s_hat"].shape == (D,)  # a vector by default


def test_scalar_alpha_is_one_per_sublayer():
    m = ngpt("--ngpt_scalar_alpha", "--ngpt_alpha_init=0.28")
    alpha_params = {k: p for k, p in m.named_parameters() if ".alpha_" in k}
    assert len(alpha_params) == 2 * L
    for k, p in alpha_params.items():
        assert p.numel() == 1 and p.requires_grad, k
    for b in m.blocks:
        torch.testing.assert_close(b.alphas()[0], torch.full((D,), 0.28))
    # the one scalar really is the alpha used: changing it changes every channel's update
    b = m.blocks[0]
    with torch.no_grad():
        b.alpha_attn.s_hat.mul_(2)
    torch.testing.assert_close(b.alphas()[0], torch.full((D,), 0.56))


def test_gate_starts_at_half_and_scales_alpha():
    m = ngpt("--ngpt_gated_residual")
    for b in m.blocks:
        for g in (b.gate_attn, b.gate_mlp):
            assert g is not None and g.shape == (D,) and g.requires_grad
            torch.testing.assert_close(torch.sigmoid(g), torch.full((D,), 0.5))
    # at init the gated block is the ungated block with alpha halved
    plain = ngpt("--ngpt_alpha_init=0.025")
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if "gate" not in k and "alpha" not in k}, strict=False)
    h = unit(2, 8, D)
    with torch.no_grad():
        torch.testing.assert_close(m.blocks[0](h), plain.blocks[0](h), atol=1e-6, rtol=0)
    assert ngpt().blocks[0].gate_attn is None  # off by default


def test_scalars_reparameterisation():
    s = T.Scalars((3,), 0.05, 0.125)
    torch.testing.assert_close(s.s_hat.detach(), torch.full((3,), 0.125))  # stored s_hat starts at the scale
    torch.testing.assert_close(s().detach(), torch.full((3,), 0.05))       # effective value = init
    s().sum().backward()
    torch.testing.assert_close(s.s_hat.grad, torch.full((3,), 0.05 / 0.125))  # d s / d s_hat = init / scale
    with torch.no_grad():
        s.s_hat.fill_(0.25)
    torch.testing.assert_close(s().detach(), torch.full((3,), 0.1))
    frozen = T.Scalars((1,), 10.0, 0.125, trainable=False)
    assert not frozen.s_hat.requires_grad
    torch.testing.assert_close(frozen().detach(), torch.tensor([10.0]))


def test_every_scalar_in_model_starts_at_its_init():
    """Each reparameterised scalar of an nGPT model has stored s_hat = scale and effective value = init:
    alpha (0.05, 1/sqrt d), s_qk (1, 1/sqrt d), s_u (1, 1), s_z (1, 1/sqrt d)."""
    m = ngpt()
    expect = {"alpha_attn": (0.05, D ** -0.5), "alpha_mlp": (0.05, D ** -0.5), "s_qk": (1.0, D ** -0.5),
              "s_uv": (1.0, 1.0), "s_z": (1.0, D ** -0.5)}
    found = set()
    for name, mod in m.named_modules():
        if isinstance(mod, T.Scalars):
            key = name.rsplit(".", 1)[-1]
            init, scale = expect[key]
            found.add(key)
            torch.testing.assert_close(mod.s_hat.detach(), torch.full_like(mod.s_hat, scale), msg=f"{name}.s_hat")
            torch.testing.assert_close(mod().detach(), torch.full_like(mod.s_hat, init), msg=f"{name} effective")
    assert found == set(expect)


def test_scalars_are_optimised_as_scalars_with_muon():
    """--optimizer=muon: Muon is for hidden weight matrices; every reparameterised scalar goes to Adam."""
    a, m = tiny_config(NGPT, "--optimizer=muon"), ngpt("--optimizer=muon")
    names = {id(p): n for n, p in m.named_parameters()}
    opts = T.build_optimizers(m, a)
    muon = [names[id(p)] for o in opts if isinstance(o, T.Muon) for g in o.param_groups for p in g["params"]]
    assert muon and all(n.endswith(".weight") for n in muon), f"scalars given to Muon: {[n for n in muon if not n.endswith('.weight')]}"
    covered = [names[id(p)] for o in opts for g in o.param_groups for p in g["params"]]
    assert sorted(covered) == sorted(n for n, p in m.named_parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- logit scale

@pytest.mark.parametrize("mode,shape", [("vocab", (50304,)), ("scalar", (1,)), ("fixed", (1,))])
def test_logit_scale_modes(mode, shape):
    flags = ("--ngpt_logit_scale=10", f"--ngpt_logit_scale_mode={mode}")
    a, m = tiny_config(NGPT, *flags), ngpt(*flags)
    s_z = m.arch.s_z
    assert s_z.s_hat.shape == shape
    torch.testing.assert_close(s_z().detach(), torch.full(shape, 10.0))
    assert s_z.s_hat.requires_grad == (mode != "fixed")
    # logits = s_z * (W_head h), h the last block's (unit) output, no final norm
    last = []
    hook = m.blocks[-1].register_forward_hook(lambda mod, inp, out: last.append(out))
    x, y = tokens()
    logits = m(x)
    hook.remove()
    torch.testing.assert_close(logits, 10.0 * (last[0] @ m.lm_head.weight.T), atol=1e-5, rtol=1e-5)
    # one real optimizer step: trained modes move s_z, fixed does not
    opts = T.build_optimizers(m, a)
    in_opt = any(p is s_z.s_hat for o in opts for g in o.param_groups for p in g["params"])
    assert in_opt == (mode != "fixed")
    before = s_z.s_hat.detach().clone()
    m(x, y).backward()
    for o in opts: o.step()
    m.zero_grad(set_to_none=True)
    m.after_step(0)
    changed = (s_z.s_hat.detach() - before).abs().max().item()
    if mode == "fixed":
        assert changed == 0 and s_z.s_hat.grad is None
        torch.testing.assert_close(s_z().detach(), torch.full(shape, 10.0))
    else:
        assert changed > 1e-6


# ----------------------------------------------------------------------------- q/k normalisation

def test_no_qk_norm_removes_normalisation():
    on, off = ngpt(), ngpt("--no-ngpt_qk_norm")
    assert hasattr(on.blocks[0].attn, "s_qk") and on.blocks[0].attn.qk == "l2"
    assert not any("s_qk" in k for k, _ in off.named_parameters())
    h = unit(2, 16, D)
    with torch.no_grad():
        for m, invariant in ((on, True), (off, False)):
            attn = m.blocks[0].attn
            y0 = attn(h)
            attn.c_q.weight.mul_(3.0); attn.c_k.weight.mul_(0.5)
            y1 = attn(h)
            if invariant:  # q and k are normalised: their scale cannot matter
                torch.testing.assert_close(y0, y1, atol=1e-5, rtol=0)
            else:
                assert (y0 - y1).abs().max() > 1e-3


# ----------------------------------------------------------------------------- THE KEY TEST

def l2n(x):
    return x / x.norm(dim=-1, keepdim=True)


def rope(x, base=10000.0):
    """RoPE on (B, T, H, D), modded-nanogpt's half-split layout: the pair (x[i], x[i + D/2]) as the complex number
    x[i] + j x[i+D/2], multiplied by exp(-j t theta_i), theta_i = base^(-2i/D)."""
    B, Tn, Hn, Dh = x.shape
    theta = base ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    angle = torch.arange(Tn, dtype=torch.float64)[:, None] * theta[None, :]          # (T, D/2)
    z = torch.complex(x[..., : Dh // 2].double(), x[..., Dh // 2:].double())
    z = z * torch.polar(torch.ones_like(angle), -angle)[None, :, None, :]
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def ref_attention(h, W_q, W_k, W_v, W_o, n_head, s_qk=None):
    """nGPT attention: q, k = s_qk * norm(q, k) per head after RoPE, softmax scale sqrt(d_head)
    (without q/k normalisation: the usual 1/sqrt(d_head))."""
    B, Tn, _ = h.shape
    q, k, v = (h @ W.T for W in (W_q, W_k, W_v))
    q, k, v = (t.view(B, Tn, n_head, -1) for t in (q, k, v))
    hd = q.shape[-1]
    q, k = rope(q), rope(k)
    if s_qk is not None:
        q, k = s_qk * l2n(q), s_qk * l2n(k)
        scale = math.sqrt(hd)
    else:
        scale = 1 / math.sqrt(hd)
    out = torch.empty_like(v)
    mask = torch.ones(Tn, Tn).tril().bool()
    for b in range(B):
        for i in range(n_head):
            scores = (q[b, :, i] @ k[b, :, i].T) * scale
            scores = scores.masked_fill(~mask, float("-inf"))
            out[b, :, i] = torch.softmax(scores, dim=-1) @ v[b, :, i]
    return out.reshape(B, Tn, -1) @ W_o.T


def ref_mlp(h, W_fc, W_p, s_uv, kind):
    """u scaled by s_u * sqrt(d) (and v by s_v * sqrt(d) for SwiGLU)."""
    u = (h @ W_fc.T) * (s_uv * math.sqrt(h.shape[-1]))
    if kind == "swiglu":
        u, v = u.chunk(2, dim=-1)
        a = u * (v * torch.sigmoid(v))
    else:
        a = torch.relu(u) ** 2
    return a @ W_p.T


def ref_block(block, h, *, alpha_init, residual, gated, qk_norm, mlp):
    """h_A = norm(Attn(h)); h = norm(h + a_A (h_A - h)) (lerp) or norm(h + a_A Attn(h)) (the seeds' add);
    a = |alpha_hat * init / (1/sqrt d)| (* sigmoid(gate)); then the same for the MLP."""
    d = h.shape[-1]
    at, mp = block.attn, block.mlp
    s_qk = (at.s_qk.s_hat * (1.0 / d ** -0.5)).reshape(H, HD) if qk_norm else None  # one per head channel
    s_uv = mp.s_uv.s_hat * (1.0 / 1.0)
    a_A = (block.alpha_attn.s_hat * (alpha_init / d ** -0.5)).abs()
    a_M = (block.alpha_mlp.s_hat * (alpha_init / d ** -0.5)).abs()
    if gated:
        a_A, a_M = a_A * torch.sigmoid(block.gate_attn), a_M * torch.sigmoid(block.gate_mlp)

    def update(h, f, a):
        return l2n(h + a * (l2n(f) - h)) if residual == "lerp" else l2n(h + a * f)
    h = update(h, ref_attention(h, at.c_q.weight, at.c_k.weight, at.c_v.weight, at.c_proj.weight, H, s_qk), a_A)
    return update(h, ref_mlp(h, mp.c_fc.weight, mp.c_proj.weight, s_uv, mlp), a_M)


@pytest.mark.parametrize("residual,gated,qk_norm,mlp", [
    ("lerp", False, True, "relu2"), ("add", False, True, "relu2"), ("lerp", True, True, "relu2"),
    ("add", True, True, "relu2"), ("lerp", False, False, "relu2"), ("lerp", False, True, "swiglu")],
    ids=["lerp", "add", "gated_lerp", "gated_add", "no_qk_norm", "swiglu"])
def test_block_matches_paper_equations(residual, gated, qk_norm, mlp):
    flags = [f"--ngpt_residual={residual}", "--ngpt_alpha_init=0.15", f"--mlp={mlp}"]
    flags += ["--ngpt_gated_residual"] if gated else []
    flags += [] if qk_norm else ["--no-ngpt_qk_norm"]
    m = ngpt(*flags)
    block = m.blocks[1]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every learned scalar away from its init (signs included), so each one is checked
        for p in (block.alpha_attn.s_hat, block.alpha_mlp.s_hat, block.mlp.s_uv.s_hat) + ((block.attn.s_qk.s_hat,) if qk_norm else ()):
            p.copy_(p.abs().mean() * (0.5 + torch.rand(p.shape, generator=g)) * torch.where(torch.rand(p.shape, generator=g) < 0.2, -1.0, 1.0))
        if gated:
            block.gate_attn.copy_(torch.randn(D, generator=g)); block.gate_mlp.copy_(torch.randn(D, generator=g))
    h = unit(2, 16, D, seed=3)
    with torch.no_grad():
        got = block(h)
        want = ref_block(block, h, alpha_init=0.15, residual=residual, gated=gated, qk_norm=qk_norm, mlp=mlp)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - h).abs().max() > 1e-3  # the block did something


# ----------------------------------------------------------------------------- the whole model

def test_full_model_loss_finite_and_all_params_get_gradients():
    m = ngpt("--ngpt_gated_residual", "--ngpt_logit_scale=10")
    x, y = tokens()
    loss = m(x, y)
    assert torch.isfinite(loss) and 9.0 < loss.item() < 13.0, loss.item()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


@torch.no_grad()
def test_weight_norm_ball_clamps_only_long_vectors():
    """Report 002's ablation --ngpt_weight_norm=ball: init on the sphere as the paper's nGPT, then after each step
    only the vectors longer than the radius come back to it (||w|| <= 1); sphere (the default) renormalises all."""
    for mode in ("sphere", "ball"):
        m = ngpt(f"--ngpt_weight_norm={mode}")
        for w, dim in m.arch.matrices_along_embedding(m):
            torch.testing.assert_close(w.norm(dim=dim), torch.ones_like(w.norm(dim=dim)))  # the init is the same
        w = m.blocks[0].attn.c_q.weight  # rows along the embedding dim
        w[0] *= 0.5; w[1] *= 3.0
        short = w[0].clone()
        m.after_step(0)
        assert w[1].norm().item() == pytest.approx(1.0, abs=1e-5)
        if mode == "ball":
            torch.testing.assert_close(w[0], short)  # a constraint, not a normalisation
        else:
            assert w[0].norm().item() == pytest.approx(1.0, abs=1e-5)
        for w, dim in m.arch.matrices_along_embedding(m):
            assert w.norm(dim=dim).max() <= 1 + 1e-5


def test_weight_norm_is_an_ngpt_flag():
    with pytest.raises(T.ConfigError, match="--ngpt_weight_norm only applies to --arch=ngpt"):
        tiny_config("--arch=angpt", "--ngpt_weight_norm=ball")
