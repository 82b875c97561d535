"""Triton kernels against their torch references (Triton's interpreter on CPU), custom-op registration, the
kernel choice (T.Ops, held by each model), and ahead-of-time compilation of every kernel for Hopper (sm_90)
without a GPU."""
import os, sys, zlib, inspect, subprocess, textwrap
import pytest
import torch

pytest.importorskip("triton")
import train_gpt as T
from conftest import ROOT, tiny_model, tokens

CPU_TILE = T.INTERPRET_TILE  # elements per tile the interpreter uses by default (big: its cost is per program)

@pytest.fixture(autouse=True)
def gpu_tiling(monkeypatch):
    """Launch with the GPU's tile sizes under the interpreter too: several tiles per launch, masked tails, backward
    programs looping over tiles. Tests of the CPU's own tiling put it back."""
    monkeypatch.setattr(T, "INTERPRET_TILE", 0)
SKIP_TOL = 0.05
SHAPES = [(1, 96), (2, 3, 200), (9, 1024), (37, 64), (2, 8192)]  # single row; 3-D, non-power-of-two; tiles looping per program; stacked narrow rows; the widest supported
DTYPES = [torch.float32, torch.bfloat16]

def make_inputs(op, shape, dtype, variant):
    """Activations in `dtype`, parameters in fp32 (as the model keeps them)."""
    g = torch.Generator().manual_seed(zlib.crc32(repr((op, shape, variant)).encode()))
    d = shape[-1]
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale
    x = rnd(*shape).to(dtype)
    if op == "rms_norm":
        return (x, rnd(d) if variant.get("weight") else None), {}
    if op == "l2_norm":
        return (x,), {}
    h = rnd(*shape)
    if op == "ngpt_update":
        h = (h / h.norm(dim=-1, keepdim=True)).to(dtype)  # the nGPT residual stream is unit-norm
        alpha = torch.rand(d, generator=g) * 0.4 + 0.05
        return (h, x, alpha, rnd(d) if variant.get("gate") else None), dict(residual=variant["residual"])
    if op == "angpt_update":
        return (h.to(dtype), x, torch.rand(d, generator=g)), {}
    if op == "dyt":
        return (x, torch.tensor([0.7]), 1 + rnd(d, scale=0.3), rnd(d, scale=0.3) if variant.get("bias") else None), {}
    raise ValueError(op)

def run(fn, args, kwargs, dy):
    """Forward and backward of fn on fresh leaf copies: (output, grads of every tensor argument)."""
    leaves = [a.detach().clone().requires_grad_() if torch.is_tensor(a) else a for a in args]
    y = fn(*leaves, **kwargs)
    y.backward(dy)
    return y.detach(), [a.grad for a in leaves if torch.is_tensor(a)]

def compare(name, args, kwargs=None, seed=0):
    kwargs = kwargs or {}
    ref, tri = getattr(T, name + "_ref"), getattr(T, name + "_triton")
    y_ref = ref(*args, **kwargs)
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(seed)).to(y_ref.dtype)
    (y1, g1), (y2, g2) = run(ref, args, kwargs, dy), run(tri, args, kwargs, dy)
    assert y2.dtype == y1.dtype and y2.shape == y1.shape
    close(y2, y1, "output")
    for i, (a, b) in enumerate(zip(g2, g1)):
        assert (a is None) == (b is None), f"grad {i}: presence differs"
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, f"grad {i}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
            close(a, b, f"grad of argument {i}")
    return (y1, g1), (y2, g2)

def close(actual, expected, what):
    """fp32: ~1e-5 relative to the tensor's scale (parameter grads are sums over rows). bf16: a bf16 ulp or two
    (the interpreter truncates on fp32 -> bf16 stores where torch rounds)."""
    scale = max(1.0, expected.float().abs().max().item())
    if actual.dtype == torch.bfloat16:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=1.6e-2, atol=1e-2 * scale, msg=lambda m: f"{what}: {m}")
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2e-5 * scale, msg=lambda m: f"{what}: {m}")

VARIANTS = [
    ("rms_norm", {}), ("rms_norm", dict(weight=True)),
    ("l2_norm", {}),
    ("ngpt_update", dict(residual="lerp")), ("ngpt_update", dict(residual="lerp", gate=True)),
    ("ngpt_update", dict(residual="add")), ("ngpt_update", dict(residual="add", gate=True)),
    ("angpt_update", {}),
    ("dyt", {}), ("dyt", dict(bias=True)),
]

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op,variant", VARIANTS, ids=[f"{o}-{'-'.join(f'{k}={v}' for k, v in v.items()) or 'plain'}" for o, v in VARIANTS])
def test_matches_reference(op, variant, shape, dtype):
    args, kwargs = make_inputs(op, shape, dtype, variant)
    compare(op, args, kwargs)

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_with_cpu_tiling(dtype, monkeypatch):
    monkeypatch.setattr(T, "INTERPRET_TILE", CPU_TILE)
    for op, variant in VARIANTS:
        args, kwargs = make_inputs(op, (2, 3, 200), dtype, variant)
        compare(op, args, kwargs)

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight", [False, True])
def test_rms_norm_skip_rule(weight, dtype):
    """Rows at unit rms come back (and pass gradients) unchanged; the others are normalised."""
    x = torch.randn(2, 5, 200)
    x[:, ::2] /= x[:, ::2].pow(2).mean(-1, keepdim=True).sqrt()  # even rows: rms == 1 -> skipped
    x[:, 1::2] *= 3.0                                               # odd rows: rms ~ 3 -> normalised
    x = x.to(dtype)
    w, dy = (torch.randn(200) if weight else None), torch.randn(x.shape).to(dtype)
    y, (dx, *_) = run(T.rms_norm_triton, (x, w), dict(skip_tol=SKIP_TOL), dy)
    assert torch.equal(y[:, ::2], x[:, ::2]) and torch.equal(dx[:, ::2], dy[:, ::2])
    assert not torch.allclose(y[:, 1::2].float(), x[:, 1::2].float(), atol=0.1)
    compare("rms_norm", (x, w), dict(skip_tol=SKIP_TOL))

def test_strided_and_broadcast_inputs():
    """Row-strided views run in place, column-strided ones are copied; 1-element alpha/gate broadcast."""
    base = torch.randn(6, 300)
    h, x = base[:, :200], torch.randn(200, 6).t()  # row stride 300; column stride 6
    compare("ngpt_update", (h, x, torch.rand(200) * 0.3, torch.randn(200)))
    compare("ngpt_update", (h, x, torch.tensor([0.2]), torch.randn(1)), dict(residual="add"))
    compare("angpt_update", (h, x, torch.tensor([0.3])))
    compare("rms_norm", (x, torch.randn(200)))

def test_empty_rows():
    """Zero rows (e.g. every token skipped the MLP) give empty outputs and zero parameter grads."""
    x, w = torch.randn(0, 64), torch.randn(64, requires_grad=True)
    y = T.rms_norm_triton(x, w)
    y.sum().backward()
    assert y.shape == (0, 64) and torch.equal(w.grad, torch.zeros(64))

def test_custom_ops_pass_opcheck():
    """Schemas, fake (meta) implementations and autograd registration are consistent: what torch.compile relies on."""
    x, h, w, g = torch.randn(2, 3, 96), torch.randn(2, 3, 96), torch.randn(96), torch.randn(96)
    alpha, stats1 = torch.rand(96) * 0.3, T._rms_norm_op(x, w, 1e-6, 0.1)[1]
    ng_stats = T._ngpt_update_op(h, x, alpha, g, "lerp")[1]
    grad = lambda *ts: tuple(t.clone().requires_grad_() for t in ts)
    cases = [
        (T._rms_norm_op, (*grad(x, w), 1e-6, 0.1)), (T._rms_norm_op, (*grad(x), None, 1e-6, 0.0)),
        (T._rms_norm_bwd_op, (h, x, w, stats1, 0.1)),
        (T._l2_norm_op, (*grad(x), 1e-12)), (T._l2_norm_bwd_op, (h, x, T._l2_norm_op(x, 1e-12)[1])),
        (T._ngpt_update_op, (*grad(h, x, alpha, g), "lerp")), (T._ngpt_update_op, (*grad(h, x, alpha), None, "add")),
        (T._ngpt_update_bwd_op, (h, h, x, alpha, g, ng_stats, "lerp")),
        (T._angpt_update_op, grad(h, x, alpha)), (T._angpt_update_bwd_op, (x, h, x, alpha)),
        (T._dyt_op, grad(x, torch.tensor([0.5]), w, g)), (T._dyt_op, (*grad(x, torch.tensor([0.5]), w), None)),
        (T._dyt_bwd_op, (h, x, torch.tensor([0.5]), w, g)),
    ]
    assert {op._qualname for op, _ in cases} == {f"train_gpt::{n}{s}" for n in T.OPS for s in ("", "_bwd")}  # every op, both passes
    for op, args in cases:
        torch.library.opcheck(op, args)

def test_torch_compile_fullgraph():
    """All five ops in one graph under torch.compile(fullgraph=True) (aot_eager: inductor's CPU codegen adds nothing here)."""
    def chain(ops, x, h, w, g, a):
        y = ops["rms_norm"](x, w, skip_tol=0.0)
        y = ops["ngpt_update"](ops["l2_norm"](h), y, a, g)
        y = ops["angpt_update"](y, x, a)
        return ops["dyt"](y, a[:1], w, g)
    ref = {n: r for n, (r, _) in T.OPS.items()}
    tri = {n: t for n, (_, t) in T.OPS.items()}
    args = (torch.randn(4, 96), torch.randn(4, 96), torch.randn(96), torch.randn(96), torch.rand(96) * 0.3)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: chain(tri, *a), fullgraph=True, backend="aot_eager")
    dy = torch.randn(4, 96)
    y1, g1 = run(compiled, args, {}, dy)
    y2, g2 = run(lambda *a: chain(ref, *a), args, {}, dy)
    close(y1, y2, "output")
    for a, b in zip(g1, g2):
        close(a, b, "grad")

OP_NAMES = ["rms_norm", "l2_norm", "ngpt_update", "angpt_update", "dyt"]

def test_ops_table_and_choice():
    """OPS pairs each op's reference with its Triton op (same signature: the model calls ops.<name> the same way
    whichever is in use); Ops picks one set per --kernels."""
    assert list(T.OPS) == OP_NAMES
    for n, (ref, tri) in T.OPS.items():
        assert ref is getattr(T, n + "_ref") and tri is getattr(T, n + "_triton"), n
        assert inspect.signature(tri) == inspect.signature(ref), n
    for mode, device in (("torch", "cpu"), ("torch", torch.device("cuda")), ("auto", "cpu"), ("auto", torch.device("cpu"))):
        ops = T.Ops(mode, device)
        assert ops.name == "torch" and repr(ops) == "Ops('torch')", (mode, device)
        assert all(getattr(ops, n) is T.OPS[n][0] for n in OP_NAMES), (mode, device)
    assert T.Ops().name == "torch"  # the default
    for ops in (T.Ops("triton", "cpu"), T.Ops("auto", "cuda")):  # triton forces it; auto takes it on CUDA
        assert ops.name == "triton" and all(getattr(ops, n) is T.OPS[n][1] for n in OP_NAMES)
    for bad in ("cuda", "Triton", ""):
        with pytest.raises(ValueError, match="choose one of 'auto', 'triton', 'torch'"):
            T.Ops(bad, "cpu")

def spy(ops, calls):
    """ops with every op recording (name, implementation) in `calls` when called."""
    for n in OP_NAMES:
        fn = getattr(ops, n)
        setattr(ops, n, lambda *a, _n=n, _fn=fn, **k: (calls.append((_n, _fn)), _fn(*a, **k))[1])
    return ops

@pytest.mark.parametrize("arch, used", [("gpt", {"rms_norm"}), ("ngpt", {"l2_norm", "ngpt_update"}),
                                        ("angpt", {"l2_norm", "angpt_update"})])
def test_models_hold_their_own_ops(arch, used, triton_ops):
    """The kernel choice travels with the model, not through a global: a Triton model and a torch model live side by
    side, each forward calls only its own model's ops, and both compute the same thing."""
    torch_calls, triton_calls = [], []
    m_torch = tiny_model(f"--arch={arch}", "--n_layer=1", ops=spy(T.Ops("torch"), torch_calls))
    m_triton = tiny_model(f"--arch={arch}", "--n_layer=1", ops=spy(triton_ops, triton_calls))
    assert tiny_model("--n_layer=1").ops.name == "torch"  # building the Triton model changed no default
    for m in (m_torch, m_triton):
        holders = [mod for mod in m.modules() if hasattr(mod, "ops")]
        assert len(holders) > 3 and all(mod.ops is m.ops for mod in holders)  # one Ops object per model, shared by its modules
    with torch.no_grad():  # the same non-trivial weights in both (the baseline's zero head would make any output 0)
        for p in m_torch.parameters():
            p.add_(0.02 * torch.randn_like(p))
    m_triton.load_state_dict(m_torch.state_dict())
    x, _ = tokens(2, 16, seed=1)
    y_triton = m_triton(x)
    assert triton_calls and not torch_calls
    n_triton = len(triton_calls)
    y_torch = m_torch(x)
    assert torch_calls and len(triton_calls) == n_triton
    n_torch = len(torch_calls)
    m_triton(x)  # the torch model's forward in between changed nothing for the Triton model
    assert len(triton_calls) == 2 * n_triton and len(torch_calls) == n_torch
    assert {n for n, _ in torch_calls} == {n for n, _ in triton_calls} == used
    assert all(fn is T.OPS[n][0] for n, fn in torch_calls) and all(fn is T.OPS[n][1] for n, fn in triton_calls)
    torch.testing.assert_close(y_triton, y_torch, rtol=1e-4, atol=1e-4)

def _python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)

def test_without_triton():
    """train_gpt imports and runs the references without triton (a model included); asking for Triton says what is missing."""
    r = _python("""
        import sys; sys.modules["triton"] = None  # import triton -> ImportError
        import torch, train_gpt as T
        assert T.Ops("auto", "cuda").name == "torch"
        print(T.Ops("torch").rms_norm(torch.randn(2, 8)).shape)
        c = T.parse_args(["--preset=cpu", "--arch=ngpt", "--n_layer=1", "--n_embd=32", "--n_head=2", "--vocab_size=64"])
        print("loss", T.build_model(c, T.Ops(c.kernels, "cpu"))(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)).item())
        try: T.Ops("triton", "cpu")
        except RuntimeError as e: print("ERR", e)
    """)
    assert r.returncode == 0, r.stderr
    assert "torch.Size([2, 8])" in r.stdout and "loss " in r.stdout, r.stdout
    assert "ERR --kernels=triton needs the triton package" in r.stdout, r.stdout

def test_triton_on_cpu_needs_the_interpreter():
    """Without TRITON_INTERPRET=1 at import, Triton on a CPU cannot run: Ops says how to fix it."""
    r = _python("""
        import train_gpt as T
        try: T.Ops("triton", "cpu")
        except RuntimeError as e: print("ERR", e)
        print(T.Ops("auto", "cpu").name)
    """, TRITON_INTERPRET="0")
    assert r.returncode == 0, r.stderr
    assert "ERR --kernels=triton on a CPU runs in Triton's interpreter" in r.stdout and "TRITON_INTERPRET=1" in r.stdout, r.stdout
    assert r.stdout.splitlines()[-1] == "torch"

AOT_WIDTHS = [16, 32, 64, 96, 128, 200, 256, 512, 768, 1024, 2048, 3072, 4096, 8192]  # head dims, test shapes, model widths (MLP 4x included)
# fp32 activations (a --no-bf16 GPU run) at the head dim and the one-row tiles, where warps and registers grow with the
# width (the one spill is there); the stacked narrow tiles hold as many elements a thread as bf16's, which are compiled
AOT_FP32_WIDTHS = [128, 768, 2048, 3072, 8192]

@pytest.mark.slow
def test_kernels_compile_for_hopper(tmp_path):
    """Every kernel, for every tile it is launched with at these widths in bf16 (fp32 activations: at AOT_FP32_WIDTHS)
    (constexpr flags all on; every flag combination at one width), compiles to PTX and a cubin for sm_90 with the
    options it is launched with (num_warps, enable_fp_fusion), and ptxas reports no register spills (one known
    exception, the fp32 nGPT backward at width 8192, beyond any model width we run). Runs in a
    subprocess: under TRITON_INTERPRET=1 @triton.jit makes interpreted functions, which cannot be compiled."""
    r = _python(f"""
        import sys, triton, train_gpt as T
        sys.path.insert(0, "tests")
        import bench_kernels as B
        kernels = {{k: v for k, v in vars(T).items() if k.endswith("_kernel")}}
        assert sorted(kernels) == sorted(f"_{{op}}_{{p}}_kernel" for op in T.OPS for p in ("fwd", "bwd")), sorted(kernels)
        assert all(isinstance(k, triton.runtime.JITFunction) for k in kernels.values()), kernels
        n, names = 0, set()
        for name, act, consts, warps, k in B.hopper_compile({AOT_WIDTHS}, every_flag_at=1024, fp32_widths={AOT_FP32_WIDTHS}):
            assert ".target sm_90" in k.asm["ptx"] and len(k.asm["cubin"]) > 1000, (name, consts)
            regs, spill_st, spill_ld = B.ptxas_resources(k.asm["ptx"])
            known = name == "_ngpt_update_bwd_kernel" and act == "*fp32" and consts["BLOCK_N"] == 8192  # 20 B: see T._blocks
            assert regs <= 255 and (known or spill_st == spill_ld == 0), (name, act, consts, warps, regs, spill_st, spill_ld)
            n += 1; names.add(name)
        assert names == set(kernels), names
        print("compiled", n)
    """, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr[-4000:]
    assert "compiled" in r.stdout

MODEL_CONFIGS = {  # every architecture path that calls a kernel
    "gpt-rmsnorm": [], "gpt-dyt": ["--norm=dyt"], "gpt-norm_skip_tol": ["--norm_skip_tol=0.1"],
    "ngpt": ["--arch=ngpt"], "ngpt-gated-add": ["--arch=ngpt", "--ngpt_gated_residual", "--ngpt_residual=add"],
    "ngpt-scalar_alpha": ["--arch=ngpt", "--ngpt_scalar_alpha"], "angpt": ["--arch=angpt"],
}

@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_triton_matches_torch(name, monkeypatch):
    """A one-layer model gives the same loss and parameter gradients with --kernels=triton as the same model (same
    weights) with --kernels=torch (fp32)."""
    monkeypatch.setattr(T, "INTERPRET_TILE", CPU_TILE)  # as `python train_gpt.py --kernels=triton` runs on a CPU
    flags = ["--n_layer=1", "--vocab_size=1024", "--kernels=triton", *MODEL_CONFIGS[name]]
    triton_ops = T.Ops(T.parse_args(["--preset=cpu", *flags]).kernels, "cpu")  # what the CLI's flag selects
    assert triton_ops.name == "triton"
    m_triton, m_torch = tiny_model(*flags, ops=triton_ops), tiny_model(*flags, ops=T.Ops("torch"))
    assert m_triton.ops is triton_ops and m_torch.ops.name == "torch"
    with torch.no_grad():  # zero-initialised projections and gates would leave most gradients at exactly 0
        for p in m_triton.parameters():
            p.add_(0.02 * torch.randn_like(p))
    m_torch.load_state_dict(m_triton.state_dict())
    idx, targets = tokens(2, 16, vocab=1024, seed=1)
    def loss_and_grads(model):
        with model.probe.measure() as values:
            loss = model(idx, targets)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, values
    loss_t, grads_t, probed = loss_and_grads(m_triton)
    loss_r, grads_r, _ = loss_and_grads(m_torch)
    if "--norm_skip_tol=0.1" in flags:  # the rule must have both skipped and normalised tokens here
        assert any(0 < f < 1 for f in probed["norm_skip_frac"]), probed["norm_skip_frac"]
    torch.testing.assert_close(loss_t, loss_r, rtol=1e-5, atol=1e-5)
    assert grads_t.keys() == grads_r.keys() and len(grads_r) == len(list(m_torch.parameters()))
    for n in grads_r:
        close(grads_t[n], grads_r[n], f"grad of {n}")


def test_auto_under_compile_keeps_triton_only_where_it_beat_inductor(monkeypatch):
    """--kernels=auto on CUDA: every op Triton when eager; under torch.compile only TRITON_UNDER_COMPILE (the
    others go to inductor's fusion of the reference). --kernels=triton forces every op either way."""
    monkeypatch.setattr(T, "_INTERPRETED", True)  # no GPU here: let the CUDA branch pick without launching anything
    eager, compiled, forced = T.Ops("auto", "cuda"), T.Ops("auto", "cuda", compiled=True), T.Ops("triton", "cuda", compiled=True)
    assert eager.name == "triton" and forced.name == "triton" and compiled.name == "mixed"
    for op, (reference, fused) in T.OPS.items():
        assert getattr(eager, op) is fused and getattr(forced, op) is fused
        assert getattr(compiled, op) is (fused if op in T.TRITON_UNDER_COMPILE else reference), op
    assert compiled.triton_ops == sorted(T.TRITON_UNDER_COMPILE) and "mixed" in repr(compiled)
    assert T.Ops("auto", "cpu", compiled=True).name == "torch"
