"""The RECORD side of the peer check: modded-nanogpt's record #89 `train_gpt.py`, run on a CPU with a small patch,
its computations exposed as plain functions of CPU tensors (the other side, our trainer, is compared in
tests/peer_check.py).

Source: `/work/shared/peer/record_2026-08/` (modded-nanogpt at f411b3d3, 2026-08-01; see its README.md), or a
folder named by `PEER_RECORD` or by `load(path)` (a folder holding the record's `train_gpt.py`, e.g. a modded-nanogpt
checkout's root). Nothing of the record is copied here: `load` reads the record's own file, applies
`tests/peer_record.diff` (every changed line marked `# PEER CPU`, a no-op where CUDA exists) and executes its text up to
the `# int main` banner (L2204) as a module. Line numbers "Lnnn" below are the unmodified `train_gpt.py`'s;
"tk:Lnnn" is `triton_kernels.py`, "dc:Lnnn" `dc_triton_kernels.py`.

API (all CPU; tensors in, tensors/Python values out; fp32 unless stated)
    load(path=None, eager=True) -> module        the record's module (cached per path)
    record_tables() -> dict                       the record's optimizer table, orders and defaults (L2026-2088)
    polar_express(G, momentum=None, buffer=None, dtype=bf16, split_baddbmm=None)
        -> X (fp32 copy of the record's output)              with momentum=None: the plain orthogonalisation
        -> (X, new_buffer, g_nesterov) with a momentum        the fused Nesterov + Polar Express step (L176-255)
    normuon_step(params, grads, lr=.023, wd=1.2, momentum=.95, beta2=.9, steps=1, state=None, storage="bf16",
        pe_dtype=bf16) -> (params fp32, NorMuonState)   NorMuonAndAdam over qk_bank / vo_bank / mlp_bank (L374-949)
    adam_step(params, grads, table_entries=None, lr=.008, step_index=1, state=None, split_embed=False)
        -> (params fp32, AdamState)               NorMuonAndAdam's Adam (L828-866), cautious wd, per-label muls
    schedule(n_steps=None) -> dict                every step 0..1285 from TrainingSchedule / TrainingManager
    yarn_states(n_positions=4) -> list[dict]      Yarn after each long-window change 3->7->11->13(->20)
    make_shards(out_dir=None, n_shards=4) -> glob; bos_batches(train_glob=None, steps=(0,), micro_batches=None,
        bigram_rows=None) -> list[dict]           distributed_data_generator (L1796-1877) driven like L2280-2294
    cut_batch(batch, n_tokens) -> dict            a micro-batch's first n tokens (cum_seqlens clipped)
    prefix_table() -> int64 (50304,)              build_prefix_table(50304) (L1175-1198)
    mtp_prefix_loss(x, lm_head_weight, targets, mtp_weights, prefix_targets, prefix_weight, fp8=False,
        grad_scale=None) -> dict(losses, grad_x, grad_w)     FusedSoftcappedCrossEntropy (stand-in, below)
    bigram_hash(tokens, bigram_rows=None) -> int32           get_bigram_hash (L1779-1794)
    build_model(seed=0, bigram_rows=None, max_seq_len=32768, record_bf16=False) -> the record's GPT (train mode)
    forward_backward(model, inputs, targets, cum_seqlens, bigram_inputs, schedule_step=0, fp8=False) -> dict
    forward_eval(model, inputs, targets, cum_seqlens, bigram_inputs, schedule_step=None) -> per-token losses
    train_steps(model, batches, n=3, start_step=0, fp8=False, pe_dtype=bf16) -> dict(losses, params, manager)
    banks(model) -> dict of raw parameters;  layer_weights(model) -> per-layer matrices (mapping below)

Parameter banks of the record's GPT (L1208-1484, used in forward L1486-1693), for the world of one used here
(11 layers, d=768, 6 heads x 128, vocab padded to V=50304). "F.linear layout" = (out_features, in_features).
    qk_bank (60, 256, 768)   [64 groups on 8 GPUs: next_multiple_of_n(60, world_size), the extra ones zero/inert]
        attention layer a (a = i for layers i=0..5, a = i-1 for i=7..10; layer 6 has no attention) owns groups
        6a..6a+5; group 6a+j, j=0,1,2 = Q rows of heads 2j, 2j+1; j=3,4,5 = K rows of heads 2(j-3), 2(j-3)+1
        (F.linear layout, 128 rows per head). So W_q(layer) = qk_bank[6a:6a+3].reshape(768, 768),
        W_k = qk_bank[6a+3:6a+6].reshape(768, 768). Each group is one NorMuon matrix (256 x 768).
    vo_bank (20, 768, 768)   [24 on 8 GPUs]: vo_bank[2a] = W_v, vo_bank[2a+1] = W_o, both F.linear layout
        (O maps the head-concatenated 768 to the model dim). q, k, v use sa_lambda0 * W, o uses sa_lambda1 * W_o.
    mlp_bank (12, 2, 3072, 768): mlp_bank[i, 0] = c_fc in F.linear layout (pre = x @ c_fc.T);
        mlp_bank[i, 1] = c_proj STORED TRANSPOSED, (hidden, model) = (in, out): out = relu(pre)^2 @ mlp_bank[i, 1]
        (its F.linear weight is mlp_bank[i, 1].T). Layer 11 is padding: never used in the forward (its c_fc is
        uniform-initialised and decays under cautious wd, its c_proj stays 0). NorMuon sees reshape (24, 3072, 768):
        matrix 2i = c_fc, 2i+1 = c_proj.
    scalars (24,)  [pad (-24) % world = 0 on 1 and 8 GPUs]: scalars[2i] = sa_lambda0 of layer i (scales W_q, W_k,
        W_v; init 0.5), scalars[2i+1] = sa_lambda1 (scales W_o; init 1.0); layer 6's pair is unused;
        scalars[22] = smear_lambda (init 0), scalars[23] = skip_lambda (init -1.5; sigmoid gates layer 6's skip).
    value_embeds (5*V, 768): 5 tables, table t = rows t*V..(t+1)*V; layer 1 uses table 0, layer 2 table 1,
        layers 8, 9, 10 tables 2, 3, 4; the post-loop MUDD mixes table 0 again ("ve_bank0").
    ve_gate_bank (5, 6, 12): gate of layers 1, 2, 8, 9 = ve_gate_bank[0..3] (F.linear layout: 6 heads x 12 inputs
        = attn_in_normed[:6] ++ ve[:6]; gate = 2 sigmoid(.)); ve_gate_bank[4] is never used (layer 10's value gate
        comes from MUDD coefficients 6, 7) -- it gets no gradient.
    smear_gate.weight (1, 12): smear_lambda * sigmoid(x[t, :12] @ w) * x[t-1] added to x[t] (t >= 1).
    embed.weight (V, 768); lm_head.weight (768, V) = (in, out): logits = x @ lm_head.weight. Tied until the split step
        (847): the optimizer adds embed.grad.T into lm_head.grad and copies lm_head.T into embed after each Adam step.
    bigram_embed.weight (bigram_vocab_size = 377,280, 768) (here `bigram_rows` if given), indexed by
        get_bigram_hash; each row is multiplied by bigram_sign_table[(tok[t-1] ^ tok[t]) % 8192] (a +-1 bf16
        buffer (8192, 768), random at init; sign index 0 at t=0).
    post_lambdas (11, 2), resid_lambdas (11, 2): [:, 0] attention, [:, 1] MLP: x = resid*x + post*sublayer(...)
        (both cast to bf16 in the forward, L1509-1512). Unused: [6, 0] (no attention) and row 10 (layer 10 takes
        its four lambdas from MUDD coefficients 8, 9, 12, 13).
    mudd_w1 (2, 64, 768), mudd_w2 (2, 14, 64), mudd_b2 (2, 14): MUDD block 0 at the start of layer 10 (14 coefs,
        see GPT.init_mudd's docstring), block 1 after the loop (5 coefs: rows 0..4 of w2[1], b2[1]);
        coef = (gelu(x @ w1.T) @ w2.T + b2) * 0.1.
    mudd_gate_w1 (2, 64, 768), mudd_gate_w2 (2, 41, 64), mudd_gate_b2 (2, 41), _mudd_gate_scale (): gate block 0 on
        x0 (26 coefs: xsa alpha of layers 1, 3; attn gate of layer 3; x0/bigram gates of layers 0..3), block 1 on x
        before layer 4 (41 coefs: xsa alpha of 4, 7; attn gate of 10; x0/bigram gates of 4, 5, 7, 8, 9; skip gate;
        DC weights of layer 10); gate = (gelu(x @ w1.T) @ w2.T + b2) * _mudd_gate_scale.
    Layer topology: paired-head attention in layers 0, 2, 5, 9; window ws_long in layers 3 and 10 (which also get
    the key offset), ws_short elsewhere; layer 6 = skip connection from layer 3's output; XSA in 1, 3, 4, 7;
    attention output gates in 3, 10; DC correction in 10.

Stand-ins (the record needs CUDA for these; each is a torch restatement written here)
    FA3 varlen (L1069, model hub): SDPA with a boolean mask = same document (from cu_seqlens) & causal & window,
        per block of queries. window_size=(w, 0): FA3's documented convention (Dao-AILab flash-attention,
        hopper/flash_attn_interface.py, flash_attn_func docstring: "Query at position i will only attend to keys
        between [i + seqlen_k - seqlen_q - window_size[0], i + seqlen_k - seqlen_q + window_size[1]] inclusive")
        is INCLUSIVE: keys at distance 0..w, i.e. w+1 keys. (The DC kernel's own window, 112, is exclusive:
        distance 0..111, dc:L302-320.)
    triton_kernels: XXT / XTX / ba_plus_cAA (tk:L34-399): fp32 matmul of the (bf16) inputs, one rounding to the
        output dtype, mirrored from the lower triangle (LOWER_UPPER=1) as the kernels do; tested against the real
        kernels under TRITON_INTERPRET in fp32. transpose_add / transpose_copy (tk:L788-903): dst += / = src.T.
        FusedLinearReLUSquareFunction (tk:L402-729): fp32 `relu(x @ W1.T)^2 @ W2`, backward dW2 = post.T @ g,
        dpre = 2 (g @ W2.T) sqrt(post), dW1 = dpre.T @ x, dx = dpre @ W1 (tk:L720-729). With FP8 (the record's
        training default): x_f8 / W1_f8 / dequant scale as given by the forward (L1644-1660), the kernel's bf16
        rounding of pre and post, post -> e4m3 with min(post / act_scale, 448), partial amax = max(post),
        down projection = fp32 product of the dequantised e4m3 operands times both scales, rounded to bf16
        (emulating torch._scaled_mm); the backward stays unquantised as in the record. quantize_transpose_mlp_down_
        weights / reduce_mlp_activation_scales (tk:L502-785): clamp(W / next_scale, +-448) -> e4m3, transposed;
        used = next; next = max(amax, 1e-12) * headroom / 448.
        FusedSoftcappedCrossEntropy (tk:L906-1292, CUDA C ce_fwd_bwd_kernel): see mtp_prefix_loss. Restated
        faithfully: logits z = 23 sigmoid((l + 5) / 7.5); per row i: sum_k w_k (lse - z[t_{i+k}]) over k with
        i+k < n, plus prefix_weight (lse - z[prefix_t_i]) where prefix_t_i is valid; the backward IGNORES the
        incoming gradient and bakes in grad_scale (the record's loss is sum(per_token) * grad_scale, L2360);
        the softmax normaliser S_w = sum of ALL n_predict MTP weights (+ prefix weight if valid), even for the last
        rows whose later targets fall past the batch (so the last n_predict-1 rows' gradients differ from
        autograd's). FP8 (always on in the record's CE): x / W -> e4m3 with x_s = 100/448, w_s = 1.6/448, logits
        in bf16, sigmoids stored in bf16, d(logit) -> e5m2 (saturating, as cvt.rn.satfinite) with grad_s =
        grad_scale * 0.75 / 448, grad_x in bf16, grad_w fp32. fp8=False (default here) computes all of it in fp32.
    dc_triton_kernels.dc_attention_postonly_nodd_correction_add_base_triton (dc:L1266): the trimmed file ships no
        torch reference; restated from the forward kernel dc:L253-440: per query t, keys s with 0 <= t-s < 112 in
        t's document; P_h = softmax(scaling q_h.k_h); a = sum_h w1[t,h] P_h; out[t,h] = base[t,h] +
        w2[t,h] sum_s a[t,s] v_h[s]. Its backward is autograd's (the record's Triton backward, dc:L489-896, is the
        analytic gradient of that forward; not run here).
    kernels.get_kernel (model hub), tiktoken.get_encoding("gpt2") (network) -> our train_gpt.gpt2_encoding().
    NorMuonAndAdam._cautious_wd_and_update_inplace (L915-933): uint32 shifts have no eager CPU kernel; restated
        bit for bit with int64 arithmetic. It also accepts fp32 parameter storage (the caller views an fp32 tensor
        as uint16, so its last dim is twice the mantissa's): then the same fp32 formula updates the fp32 values
        directly, which is what the bf16 + mantissa pair represents exactly.
    The other @torch.compile functions (polar_express, _adam_update_step, _apply_normuon_variance_reduction) run
        eagerly (their originals unwrapped); nothing is compiled.

Cost on this 2-core CPU (shared, load 5-7), wall time and process peak RSS: load 4-11 s (torch.compile's imports),
0.5 GB; schedule / yarn_states / prefix_table / bos_batches / bigram_hash < 0.5 s each; mtp_prefix_loss on 1,024 rows
5.5 s, 2.7 GB; polar_express on the full mlp_bank 26 s (bf16) / 13 s (fp32); normuon_step on all three full banks 70 s
(bf16) / 35 s (fp32), 4.4 GB; build_model 5-11 s, 3.5 GB full (640.6M parameters) / 2.4 GB with bigram_rows=1024;
forward_backward on 1,024 tokens 36 s, 7.3 GB (full rows); on 128 tokens 11-16 s, 4.0 GB (1,024 bigram rows);
train_steps ~30-60 s a step (Polar Express over the banks dominates), 8.4-8.9 GB with bigram_rows <= 50,304; with the
full 377,280 rows Adam's state and eager temporaries would add ~8 GB (> 12 GB): pass bigram_rows for train_steps.
Run one whole-model process at a time.

Precision: fp32 master weights everywhere by default (the record casts most weights to bf16 at L2242-2254 and keeps
NorMuon banks as bf16 + a uint16 mantissa; `build_model(record_bf16=True)` applies those casts). bf16 is forced by the
record's code in: polar_express (X = g.bfloat16(), L194; `dtype=` here switches it via the diff's PEER_PE_DTYPE),
the Yarn cos/sin tables (bf16 buffers, L1005-1051), the resid/post lambdas (.bfloat16(), L1509-1512), the bigram sign
table (exact +-1), and the init of lm_head / embed / value_embeds (drawn in bf16, L1224-1231, L1261).

Quirks of the record (reproduced here; a port must reproduce them or decide not to)
  - Paired-head layers (0, 2, 5, 9, L1118-1136): after RoPE on the (T, 3, 256) view, q/k/v are reinterpreted by a
    memory view as a 2T stream of 3 slots: slot j = head j at stream position 2t and head j+3 at 2t+1, so the pairs
    are heads (0,3), (1,4), (2,5), not adjacent ones. RoPE gives head 2p the angle of position 2t and head 2p+1 that
    of 2t+1, so slots 0 and 2 carry their stream positions but slot 1 (heads 1, 4) has them swapped (head 1 at
    2t rotated as 2t+1). Documents (2 x cu_seqlens) and the window (bm_size stream positions ~ bm_size/2 tokens)
    are in stream units.
  - The final validation uses a 20-block long window without YaRN (attn_scale and frequencies stay those of 13).
  - Adam steps on odd steps only, and the even step's Adam grads are not cleared (L819-823): Adam gets the sum of
    two steps' gradients; its t counts Adam steps. While tied, embed.grad.T is added to lm_head.grad.
  - Decay is quadratic in lr: Adam lr_eff^2 * wd * wd_mul with mask update*p > 0; NorMuon lr * lr_eff * wd with
    mask v*p >= 0 (v = the orthogonalised, variance-normalised update; a zero update decays).
  - NorMuon lr_mul from the stored layout: c_fc and c_proj are both (3072, 768) -> sqrt(4) = 2, and c_proj x2 ->
    c_fc 2x, c_proj 4x the base lr; qk groups and vo 1x.
  - Unused parameters: mlp_bank[11] (padding layer; its uniform c_fc decays under NorMuon), ve_gate_bank[4],
    resid/post_lambdas[10] and [6, 0] get zero gradients.
  - CE: the backward ignores the incoming gradient (grad_scale baked in); S_w counts MTP weights past the batch end;
    MTP targets and prefix targets ignore document boundaries (so do the smear, the key offset and the bigram hash).
    The record's FusedSoftcappedCrossEntropy.backward returns 9 gradients for 10 inputs: eager autograd rejects
    that ("incorrect number of gradients"); it runs only under torch.compile.
  - get_bigram_hash hashes position 1 with R-1 as its previous token (see bigram_hash).
  - get_lr jumps at stage boundaries (1.0 -> 1.52 at 423; 0.912 -> 1.027 at 847, inside the cooldown).
  - polar_express lerps the Nesterov mix into the gradient tensor in place (param.grad when it is fp32).
  - The bf16 weight the record's forward sees is the truncation (high 16 bits), not the rounding, of the fp32
    master value kept by the mantissa.
  - The loader truncates documents to max_seq_len; when documents fill a batch exactly, cu_seqlens gets an empty
    last document (the +1 target token's document shrinks to 0).
  - MLP FP8 uses delayed scales: activations quantised with the previous forward's amax * 1.8 / 448 (1.0 before
    the first), down-projection weights with the previous refresh's amax * 1.12 / 448.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import importlib.util
import math
import os
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DIFF = HERE / "peer_record.diff"
DEFAULT_PATH = next((p for p in (REPO.parent / "shared" / "peer" / "record_2026-08", Path("/work/shared/peer/record_2026-08"))
                     if (p / "train_gpt.py").is_file()), REPO.parent / "shared" / "peer" / "record_2026-08")  # ../shared beside the repo
BANNER = "# int main"
V_PAD = 50304                      # the record's padded vocabulary (next_multiple_of_n(50257, 128))
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
E5M2_MAX = 57344.0                 # cvt.rn.satfinite.e5m2 saturates here


class _Settings:
    """Switches the stand-ins read at call time (set through the functions' fp8= arguments)."""
    ce_fp8 = False                 # FusedSoftcappedCrossEntropy: emulate its FP8 (the record always uses FP8)


_SET = _Settings()


# ----------------------------------------------------------------------------------------------------------------
# Loading

def record_path(path=None) -> Path:
    """The folder holding the record's train_gpt.py: `path`, else $PEER_RECORD, else DEFAULT_PATH (relative paths are
    resolved against the working directory; a path to the file itself or to a modded-nanogpt checkout works too)."""
    p = Path(path or os.environ.get("PEER_RECORD") or DEFAULT_PATH).expanduser().resolve()
    if p.is_file():
        p = p.parent
    if not (p / "train_gpt.py").is_file():
        raise FileNotFoundError(f"{p}: no train_gpt.py (set PEER_RECORD to the record's folder)")
    return p


def available(path=None) -> bool:
    try:
        record_path(path)
        return True
    except FileNotFoundError:
        return False


def apply_unified_diff(text: str, diff: str) -> str:
    """Applies a `diff -u` of one file to `text`; every hunk's old lines must match exactly where it says."""
    lines = text.split("\n")
    out, pos = [], 0
    hunks = re.split(r"(?m)^(@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@.*)$", diff)
    for header, body in zip(hunks[1::2], hunks[2::2]):
        start = int(re.match(r"@@ -(\d+)", header).group(1)) - 1
        old, new = [], []
        for ln in body.split("\n")[1:]:
            if ln == "" or ln.startswith("\\"):
                continue  # diff -u writes " " for an empty context line; "" is the text's end
            if ln[0] == " ":
                old.append(ln[1:]); new.append(ln[1:])
            elif ln[0] == "-":
                old.append(ln[1:])
            elif ln[0] == "+":
                new.append(ln[1:])
        if lines[start:start + len(old)] != old:
            raise ValueError(f"{DIFF.name}: hunk {header!r} does not match the record's train_gpt.py "
                             "(is it the file the diff was made against, modded-nanogpt f411b3d3?)")
        out += lines[pos:start] + new
        pos = start + len(old)
    return "\n".join(out + lines[pos:])


_LOADED: dict = {}
_TMPDIRS: list = []
atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _TMPDIRS])

_SHIMS = {
    "kernels.py": "get_kernel",
    "triton_kernels.py": "XXT, XTX, ba_plus_cAA, FusedLinearReLUSquareFunction, FusedSoftcappedCrossEntropy, "
                         "quantize_transpose_mlp_down_weights, reduce_mlp_activation_scales, transpose_add, transpose_copy",
    "dc_triton_kernels.py": "dc_attention_postonly_nodd_correction_add_base_triton",
    "tiktoken.py": "get_encoding",
}


@functools.lru_cache(maxsize=None)
def _gpt2_encoding():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import train_gpt as T
    return T.gpt2_encoding()


def get_encoding(name):
    """tiktoken.get_encoding stand-in: "gpt2" is our local encoding (the record's would download it)."""
    if name == "gpt2":
        return _gpt2_encoding()
    import tiktoken
    return tiktoken.get_encoding(name)


def get_kernel(repo_id, version=None, **_):
    """kernels.get_kernel stand-in: only the record's FA3 is asked for (L1069)."""
    assert "flash-attn3" in repo_id, repo_id
    return types.SimpleNamespace(flash_attn_interface=types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func))


def _unwrap(fn):
    return getattr(fn, "_torchdynamo_orig_callable", fn)


def load(path=None, eager=True):
    """The record's train_gpt.py, patched by tests/peer_record.diff and executed up to `# int main` (L2204) as a module
    (cached per folder). Writes the patched file and the stand-in modules (kernels, triton_kernels, dc_triton_kernels,
    tiktoken: thin shims onto this module's restatements) into a temp dir, runs the text as a world of one (RANK=0,
    WORLD_SIZE=1, LOCAL_RANK=0, no process group) with those shims in sys.modules, then restores sys.modules, sys.argv
    and the environment. With eager=True (default) the record's @torch.compile functions are replaced by their eager
    originals and _cautious_wd_and_update_inplace by a restatement (uint32 shifts have no eager CPU kernel)."""
    folder = record_path(path)
    key = (str(folder), eager)
    if key in _LOADED:
        return _LOADED[key]
    text = (folder / "train_gpt.py").read_text()
    patched = apply_unified_diff(text, DIFF.read_text())
    lines = patched.split("\n")
    head = "\n".join(lines[:lines.index(BANNER)]) + "\n"
    tmp = Path(tempfile.mkdtemp(prefix="peer_record_"))
    _TMPDIRS.append(tmp)
    (tmp / "train_gpt.py").write_text(patched)
    shims = {}
    for fname, names in _SHIMS.items():
        (tmp / fname).write_text(f"# PEER CPU stand-in for the record's {fname[:-3]}: torch restatements in {__file__}\n"
                                 f"import sys as _sys\n_peer = _sys.modules[{__name__!r}]\n"
                                 + "".join(f"{n} = _peer.{n}\n" for n in names.split(", ")))
        spec = importlib.util.spec_from_file_location(fname[:-3], tmp / fname)
        shims[fname[:-3]] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shims[fname[:-3]])
    _gpt2_encoding()  # before tiktoken is shadowed
    name = f"peer_record_train_gpt_{len(_LOADED)}"
    mod = types.ModuleType(name)
    mod.__file__ = str(tmp / "train_gpt.py")
    saved_mods = {k: sys.modules.get(k) for k in shims}
    env_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PYTORCH_ALLOC_CONF")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    saved_argv0 = sys.argv[0] if sys.argv else None
    try:
        sys.modules.update(shims)
        sys.modules[name] = mod
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        if sys.argv:
            sys.argv[0] = str(tmp / "train_gpt.py")
        else:
            sys.argv.append(str(tmp / "train_gpt.py"))
        exec(compile(head, mod.__file__, "exec"), mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        for k, v in saved_mods.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_argv0 is not None:
            sys.argv[0] = saved_argv0
    assert mod.PEER_CPU and mod.world_size == 1 and mod.grad_accum_steps == 8
    if eager:
        mod.polar_express = _unwrap(mod.polar_express)
        mod.sparse_comms_share_gradients = _unwrap(mod.sparse_comms_share_gradients)
        opt = mod.NorMuonAndAdam
        for k in ("_adam_update_step", "_apply_normuon_variance_reduction"):
            setattr(opt, k, staticmethod(_unwrap(opt.__dict__[k].__func__)))
        opt._cautious_wd_and_update_inplace = staticmethod(cautious_wd_and_update_inplace)
    mod.PEER_TMPDIR = tmp
    _LOADED[key] = mod
    return mod


class _CaptureOptimizer:
    """Takes NorMuonAndAdam's place while a TrainingManager is built only to drive the schedule: it keeps the
    arguments (the record's param_table, orders and defaults) and allocates no state."""
    def __init__(self, named_params, param_table, scatter_order, work_order, adam_defaults, normuon_defaults):
        self.kwargs = dict(param_table=copy.deepcopy(param_table), scatter_order=list(scatter_order),
                           work_order=list(work_order), adam_defaults=dict(adam_defaults),
                           normuon_defaults=dict(normuon_defaults))

    def reset(self):
        pass

    def load_state_dict(self, state):
        pass

    def state_dict(self):
        return {}


@contextlib.contextmanager
def _swapped(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _yarn_host(rec, max_seq_len=8):
    """A model stand-in with what TrainingManager touches: the two Yarn objects and named_parameters()."""
    return types.SimpleNamespace(yarn=rec.Yarn(128, max_seq_len), yarn_paired_head=rec.Yarn(128, max_seq_len, paired=True),
                                 named_parameters=lambda: iter(()))


def _manager(rec, model=None):
    """A real TrainingManager (L2009) over `model` (or a Yarn-only stand-in) whose optimizer is _CaptureOptimizer:
    advance_schedule / reset / apply_final_ws_ext / get_forward_args run as the record's code."""
    tm = rec.TrainingManager.__new__(rec.TrainingManager)
    with _swapped(rec, "NorMuonAndAdam", _CaptureOptimizer):
        rec.TrainingManager.__init__(tm, model if model is not None else _yarn_host(rec))
    return tm


def _advance_to(rec, tm, step):
    """Replays advance_schedule for steps 0..step (YaRN applied at each long-window change, as in training), then
    apply_final_ws_ext at the last step (L2324-2326)."""
    for s in range(step + 1):
        tm.advance_schedule(s)
    if step == rec.training_schedule.total_steps:
        tm.apply_final_ws_ext()


def record_tables(path=None) -> dict:
    """The record's optimizer configuration as TrainingManager builds it (L2026-2088): param_table, scatter_order,
    work_order, adam_defaults, normuon_defaults; plus block_size and split_step."""
    rec = load(path)
    tm = _manager(rec)
    return dict(tm.optimizer.kwargs, block_size=tm.block_size, split_step=tm.split_step)


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins: FA3 (model hub)

def _doc_ids(cu_seqlens, n):
    """Document index of each of n positions from cumulative lengths (padded with repeats, as the loader pads them)."""
    cu = cu_seqlens.to(torch.int64).cpu()
    return torch.searchsorted(cu, torch.arange(n), right=True) - 1


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, seqused_q=None,
                           seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                           v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                           pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False, block=512):
    """FA3's varlen attention (as called at L1139-1141) restated with SDPA: q, k, v (total, H, D); a query at i sees
    key j iff same document, (causal) j <= i, and i - window_size[0] <= j <= i + window_size[1] (inclusive, FA3's
    convention; -1 = unbounded). Queries go in blocks of `block` against the keys their window can reach."""
    assert torch.equal(cu_seqlens_q.cpu(), cu_seqlens_k.cpu()) and q.shape[0] == k.shape[0]
    assert seqused_q is None and seqused_k is None and qv is None and softcap == 0.0 and attention_chunk == 0
    assert not return_attn_probs
    n, H, D = q.shape
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    left, right = window_size
    if causal:
        right = 0
    doc = _doc_ids(cu_seqlens_q, n).to(q.device)
    pos = torch.arange(n, device=q.device)
    outs = []
    for s in range(0, n, block):
        e = min(n, s + block)
        ks = 0 if left < 0 else max(0, s - left)
        ke = n if right < 0 else min(n, e + right)
        qi, kj = pos[s:e, None], pos[None, ks:ke]
        m = doc[s:e, None] == doc[None, ks:ke]
        if left >= 0:
            m = m & (kj >= qi - left)
        if right >= 0:
            m = m & (kj <= qi + right)
        o = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[ks:ke].transpose(0, 1), v[ks:ke].transpose(0, 1),
                                           attn_mask=m, scale=scale)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins: triton_kernels.py

def _sym_lower(M):
    return torch.tril(M) + torch.tril(M, -1).mT


def XXT(A, out):
    """tk:L100-141: out = A @ A.mT (fp32 accumulation, one rounding to out's dtype), mirrored from the lower triangle."""
    Af = A.float()
    out.copy_(_sym_lower(Af @ Af.mT))
    return out


def XTX(A, out):
    """tk:L227-278: out = A.mT @ A, as XXT."""
    Af = A.float()
    out.copy_(_sym_lower(Af.mT @ Af))
    return out


def ba_plus_cAA(A, alpha, beta, out):
    """tk:L358-399: out = alpha * A @ A.mT + beta * A (the kernel scales the fp32 accumulator, adds beta*A, rounds once)."""
    Af = A.float()
    out.copy_(_sym_lower((Af @ Af.mT) * alpha + Af * beta))
    return out


def transpose_copy(src, dst):
    """tk:L819-847: dst = src.T."""
    dst.copy_(src.T)


def transpose_add(src, dst):
    """tk:L880-903: dst += src.T."""
    dst.add_(src.T)


def _scaled_mm(a_f8, b_f8, scale_a, scale_b, out_dtype):
    """torch._scaled_mm emulated: fp32 product of the dequantised-free fp8 values, times both scales, rounded once."""
    return ((a_f8.float() @ b_f8.float()) * (float(scale_a) * float(scale_b))).to(out_dtype)


def _f(t):
    return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)


class FusedLinearReLUSquareFunction(torch.autograd.Function):
    """tk:L667-729: relu(x @ W1.T)^2 @ W2 (W2 = c_proj stored (hidden, model)). FP8 arguments as the model passes them
    (L1644-1665); see the module docstring for what is emulated."""

    @staticmethod
    def forward(ctx, x, W1, W2, W1_f8=None, dequant_scale=None, x_f8=None, W2_f8=None, W2_scale=None,
                activation_scale=None, partial_amax=None):
        x_flat = x.reshape(-1, x.shape[-1])
        if W1_f8 is not None:
            # tk:L443, L455-461: fp8 x fp8 accumulated in fp32, times the dequant scale, rounded to bf16 (dtype =
            # tl.bfloat16), relu^2 in bf16
            pre = ((x_f8.reshape(-1, x_f8.shape[-1]).float() @ W1_f8.float().T) * _f(dequant_scale)).bfloat16()
            post = (torch.relu(pre) * torch.relu(pre)).to(x.dtype)
        else:
            pre = x_flat @ W1.to(x.dtype).T
            post = torch.relu(pre).square()
        if W2_f8 is not None:
            inv = 1.0 / torch.tensor(_f(activation_scale), dtype=torch.float32)
            post_f8 = torch.clamp_max(post.float() * inv, 448.0).to(E4M3)             # tk:L463-465
            partial_amax.fill_(post.float().max())                                    # tk:L466-470, L499
            x3 = _scaled_mm(post_f8, W2_f8, _f(activation_scale), _f(W2_scale), torch.bfloat16).to(x.dtype)
        else:
            x3 = post @ W2.to(post.dtype)
        ctx.save_for_backward(x, W1, W2, post)
        return x3.view(*x.shape[:-1], x3.shape[-1])

    @staticmethod
    def backward(ctx, grad_output):
        x, W1, W2, post = ctx.saved_tensors
        g = grad_output.reshape(-1, grad_output.shape[-1])
        dt = g.dtype
        dW2 = post.to(dt).T @ g
        dpre = 2 * (g @ W2.to(dt).T) * torch.sqrt(post.to(dt))
        x_flat = x.reshape(-1, x.shape[-1]).to(dt)
        dW1 = dpre.T @ x_flat
        dx = dpre @ W1.to(dt)
        return (dx.view(x.shape).to(x.dtype), dW1.to(W1.dtype), dW2.to(W2.dtype), None, None, None, None, None, None, None)


def reduce_mlp_activation_scales(partial_amax, scales, headroom=1.25):
    """tk:L732-745: scales[l] = max(max_j partial_amax[l, j], 1e-12) * headroom / 448 for each row l."""
    n = partial_amax.shape[0]
    scales[:n] = partial_amax.amax(dim=1).clamp_min(1e-12) * (headroom / 448.0)


def quantize_transpose_mlp_down_weights(weights, output_storage, next_scales, used_scales, partial_amax, headroom=1.12):
    """tk:L748-785 (kernel tk:L522-567): e4m3(clamp(W / next_scale, +-448)) stored transposed; used_scales = next_scales;
    then next_scales = max(amax|W|, 1e-12) * headroom / 448 (delayed scaling: this call quantised with the old one)."""
    L = weights.shape[0]
    w = weights.float()
    q = (w / next_scales[:L].view(L, 1, 1)).clamp(-448.0, 448.0)
    output_storage.copy_(q.transpose(1, 2).to(E4M3))
    partial_amax.copy_(w.abs().amax(dim=(1, 2))[:, None].expand_as(partial_amax))
    used_scales[:L].copy_(next_scales[:L])
    reduce_mlp_activation_scales(partial_amax, next_scales, headroom=headroom)


def _ce_rows(logits, targets, mtp_weights, prefix_targets, prefix_weight, A, B, C, grad_s, grad_scale, fp8, r0, r1):
    """CE_KERNEL_SOURCE (tk:L914-1179) for rows r0..r1: per-row losses and d(loss)/d(logits) as the kernel writes them
    (in fp8 mode: in units of grad_s, e5m2; else the true gradient in fp32)."""
    n, V = logits.shape[0], logits.shape[1]
    u = logits[r0:r1].float()
    s = torch.sigmoid(u * (1 / C) + B * (1 / C))                       # tk:L1004-1005 (tmp * inv_C + B_div_C)
    if fp8:
        s = s.bfloat16().float()                                          # smem holds bf16 sigmoids (tk:L1005)
    z = A * s
    m = z.max(dim=1, keepdim=True).values                                 # tk:L1007-1064
    lse = (m + torch.log(torch.exp(z - m).sum(dim=1, keepdim=True)))[:, 0]
    rows = torch.arange(r0, r1)
    losses = torch.zeros(r1 - r0, dtype=torch.float32)
    term2 = torch.zeros_like(z)
    pt = prefix_targets[r0:r1].to(torch.int64).cpu()
    pv = (pt >= 0) & (pt < V)
    pw = float(prefix_weight.reshape(-1)[0])
    S_w = torch.where(pv, torch.tensor(pw), torch.tensor(0.0))                # tk:L1094
    w = mtp_weights.float().cpu()
    for k in range(w.numel()):                                            # tk:L1070-1083
        idx = rows + k
        inb = idx < n
        t = torch.full_like(rows, -1)
        t[inb] = targets.to(torch.int64).cpu()[idx[inb]]
        ok = inb & (t >= 0) & (t < V)
        tc = t.clamp(0, V - 1)[:, None]
        zt = z.gather(1, tc)[:, 0]
        losses = losses + torch.where(ok, w[k] * (lse - zt), torch.tensor(0.0))
        term2.scatter_add_(1, tc, torch.where(ok, w[k], torch.tensor(0.0))[:, None])   # tk:L1150-1157
        S_w = S_w + w[k]                                                  # tk:L1096-1098: every k, even past the batch
    pc = pt.clamp(0, V - 1)[:, None]
    losses = losses + torch.where(pv, pw * (lse - z.gather(1, pc)[:, 0]), torch.tensor(0.0))   # tk:L1085-1088
    term2.scatter_add_(1, pc, torch.where(pv, torch.tensor(pw), torch.tensor(0.0))[:, None])  # tk:L1159-1161
    p = torch.exp(z - lse[:, None])
    grad_z = S_w[:, None] * p - term2
    if fp8:
        g = grad_scale * (1.0 / C * A) * (1.0 / grad_s) * grad_z * s * (1.0 - s)   # tk:L1117-1118, L1164-1165
        g = g.clamp(-E5M2_MAX, E5M2_MAX).to(E5M2)                          # cvt.rn.satfinite.e5m2x2
    else:
        g = grad_scale * (1.0 / C * A) * grad_z * s * (1.0 - s)
    return losses, g


class FusedSoftcappedCrossEntropy(torch.autograd.Function):
    """tk:L1208-1292 with the CUDA kernel restated (see _ce_rows and the module docstring). FP8 emulation follows
    _SET.ce_fp8 (the record has no switch: its CE is always FP8)."""

    @staticmethod
    def forward(ctx, x, targets, mtp_weights, prefix_targets, prefix_weight, lm_head_weight, x_s, w_s, grad_s,
                grad_scale, A=23.0, B=5.0, C=7.5, row_block=2048):
        fp8 = _SET.ce_fp8
        if fp8:
            x_f8, w_f8 = x.div(x_s).to(E4M3), lm_head_weight.div(w_s).to(E4M3)   # tk:L1212-1213
            logits = _scaled_mm(x_f8, w_f8, x_s, w_s, torch.bfloat16)            # tk:L1217-1224
        else:
            x_f8 = w_f8 = None
            logits = x.float() @ lm_head_weight.float()
        n = logits.shape[0]
        if mtp_weights is None:
            mtp_weights = torch.tensor([1.0])
        if prefix_targets is None:
            prefix_targets = torch.full((n,), -1, dtype=torch.int64)
        if prefix_weight is None:
            prefix_weight = torch.zeros(1)
        losses, grads = [], []
        for r0 in range(0, n, row_block):
            l, g = _ce_rows(logits, targets, mtp_weights, prefix_targets, prefix_weight, A, B, C, grad_s, grad_scale,
                            fp8, r0, min(n, r0 + row_block))
            losses.append(l)
            grads.append(g)
        grad_input = torch.cat(grads)
        ctx.fp8 = fp8
        ctx.scales = (x_s, w_s, grad_s)
        ctx.save_for_backward(x, lm_head_weight, grad_input, *([x_f8, w_f8] if fp8 else []))
        return torch.cat(losses).to(x.device)

    @staticmethod
    def backward(ctx, grad_output):  # grad_output is ignored, as in the record (tk:L1256-1292)
        x_s, w_s, grad_s = ctx.scales
        if ctx.fp8:
            x, W, G, x_f8, w_f8 = ctx.saved_tensors
            grad_x = _scaled_mm(G, w_f8.T, grad_s, w_s, torch.bfloat16)          # tk:L1268-1275
            grad_w = _scaled_mm(x_f8.T, G, x_s, grad_s, torch.float32)           # tk:L1283-1290
        else:
            x, W, G = ctx.saved_tensors
            grad_x = G @ W.float().T
            grad_w = x.float().T @ G
        return (grad_x.to(x.dtype), None, None, None, None, grad_w.to(W.dtype), None, None, None, None, None, None,
                None, None)


# ----------------------------------------------------------------------------------------------------------------
# Stand-in: dc_triton_kernels.py

def dc_attention_postonly_nodd_correction_add_base_triton(base_out, q, k, v, dc_weights, softmax_lse, scaling,
                                                          window=None, seq_lens=None, block_m=16, block_n=32,
                                                          block=256):
    """dc:L1266 restated from its forward kernel (dc:L253-440): base + w2[t,h] * sum_s (sum_h' w1[t,h'] P_h'[t,s]) v_h[s],
    keys 0 <= t-s < window in t's document, P_h = softmax(scaling q_h . k_h). Autograd gives the backward."""
    post_w1, post_w2 = dc_weights
    B, T, H, D = q.shape
    window = 112 if window is None else int(window)
    assert B == 1 and softmax_lse is None and 0 < window <= 128
    assert base_out.shape in ((T, H, D), (B, T, H, D))
    if seq_lens is None:
        seq_lens = torch.tensor([0, T], dtype=torch.int32)
    doc = _doc_ids(seq_lens, T).to(q.device)
    pos = torch.arange(T, device=q.device)
    base = base_out.reshape(T, H, D)
    outs = []
    for s in range(0, T, block):
        e = min(T, s + block)
        ks = max(0, s - window + 1)
        rel = pos[s:e, None] - pos[None, ks:e]
        valid = (rel >= 0) & (rel < window) & (doc[s:e, None] == doc[None, ks:e])
        scores = torch.einsum("nhd,mhd->hnm", q[0, s:e].float(), k[0, ks:e].float()) * scaling
        probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
        a = torch.einsum("nh,hnm->nm", post_w1[0, s:e].float(), probs)
        cw = (post_w2[0, s:e].float().T[:, :, None] * a[None]).to(v.dtype)    # dc:L235-236: corr_weight.to(v.dtype)
        corr = torch.einsum("hnm,mhd->nhd", cw, v[0, ks:e]).float()
        outs.append((corr + base[s:e].float()).to(base.dtype))
    return torch.cat(outs).view(base_out.shape)


# ----------------------------------------------------------------------------------------------------------------
# Stand-in: NorMuonAndAdam._cautious_wd_and_update_inplace (L915-933)

def _bits_to_f32(raw64):
    raw64 = raw64 & 0xFFFFFFFF
    return torch.where(raw64 >= 2 ** 31, raw64 - 2 ** 32, raw64).to(torch.int32).view(torch.float32)


def _f32_to_bits(x):
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def cautious_wd_and_update_inplace(p, mantissa, grad, wd_tensor, lr_tensor):
    """L915-933 without uint32 shifts: p (uint16 view of the bf16 parameter) and mantissa form the fp32 value
    (p << 16 | mantissa); p -= p * [grad * p >= 0] * wd * lr + grad * lr in fp32; the high/low halves go back.
    Also fp32 storage: if p's last dim is twice the mantissa's, p is an fp32 tensor viewed as uint16 and is updated
    with the same fp32 formula (the mantissa is unused)."""
    assert p.dtype == mantissa.dtype == torch.uint16
    grad = grad.float()
    wd_factor = wd_tensor.to(torch.float32)
    lr_factor = lr_tensor.to(torch.float32)
    fp32_storage = p.shape != mantissa.shape
    if fp32_storage:
        assert p.shape[:-1] == mantissa.shape[:-1] and p.shape[-1] == 2 * mantissa.shape[-1]
        p_precise = p.view(torch.float32)
    else:
        p_precise = _bits_to_f32((p.to(torch.int64) << 16) | mantissa.to(torch.int64))
    mask = (grad * p_precise) >= 0
    new = p_precise - (p_precise * mask * wd_factor * lr_factor) - (grad * lr_factor)
    if fp32_storage:
        p_precise.copy_(new)
    else:
        bits = _f32_to_bits(new)
        p.copy_((bits >> 16).to(torch.uint16))
        mantissa.copy_((bits & 0xFFFF).to(torch.uint16))


def split_f32(x):
    """fp32 -> (bf16 high half, uint16 mantissa): the record's (parameter, mantissa) pair that represents x exactly."""
    bits = _f32_to_bits(x.float())
    return (bits >> 16).to(torch.uint16).view(torch.bfloat16), (bits & 0xFFFF).to(torch.uint16)


def join_f32(hi_bf16, mantissa):
    """(bf16, uint16 mantissa) -> the fp32 value the record's optimizer works on (L926-927)."""
    return _bits_to_f32((hi_bf16.contiguous().view(torch.uint16).to(torch.int64) << 16) | mantissa.to(torch.int64))


# ----------------------------------------------------------------------------------------------------------------
# Optimizer pieces

@contextlib.contextmanager
def _pe_dtype(rec, dtype):
    old = rec.PEER_PE_DTYPE
    rec.PEER_PE_DTYPE = dtype
    try:
        yield
    finally:
        rec.PEER_PE_DTYPE = old


def polar_express(G, momentum=None, buffer=None, dtype=torch.bfloat16, split_baddbmm=None):
    """The record's polar_express (L176-255) on a matrix or a stack (..., m, n), eagerly.
    momentum=None: the plain orthogonalisation (momentum 0: buffer.lerp_(G, 1) = G, then G.lerp_(buffer, 0) = G, for
    any buffer) -> X. With a momentum (and a buffer, default zeros): the fused Nesterov step buffer <- lerp(buffer, G,
    1-m), g <- lerp(G, buffer, m), then Polar Express of g -> (X, new_buffer, g). dtype: the record's bf16 (L194), or
    torch.float32 for exact fp32 checks. split_baddbmm defaults to the record's rule (rows > 1024, L881).
    X is returned as fp32 (exactly the record's bf16 values when dtype is bf16). Inputs are not modified."""
    rec = load()
    g = G.detach().float().clone()
    buf = torch.zeros_like(g) if buffer is None else buffer.detach().float().clone()
    m = torch.tensor(0.0 if momentum is None else float(momentum), dtype=torch.float32)
    split = g.shape[-2] > 1024 if split_baddbmm is None else split_baddbmm
    with _pe_dtype(rec, dtype):
        X = rec.polar_express(g, buf, m, split_baddbmm=split)
    X = X.float().clone()
    return X if momentum is None else (X, buf, g)


def _bank_reshape(label, shape):
    if label == "mlp_bank":
        return (shape[0] * shape[1], *shape[2:]) if len(shape) == 4 else tuple(shape)
    return tuple(shape)


class NorMuonState:
    """normuon_step's state: the record's NorMuonAndAdam (`opt`), its parameters by label and the storage mode."""
    def __init__(self, opt, params, storage):
        self.opt, self.params, self.storage = opt, params, storage

    def buffers(self):
        """{label: {momentum_buffer, second_momentum_buffer, mantissa}} (the record's state tensors, live)."""
        return {l: self.opt.param_states[p] for l, p in self.params.items()}

    def configs(self):
        return {l: self.opt.param_cfgs[p] for l, p in self.params.items()}


def normuon_step(params: dict, grads, lr=0.023, wd=1.2, momentum=0.95, beta2=0.9, steps=1, state=None,
                 storage="bf16", pe_dtype=torch.bfloat16):
    """NorMuon as the record runs it (NorMuonAndAdam.step -> _normuon_update, L724-949) on banks by label
    (qk_bank / vo_bank / mlp_bank with the record's shapes or any smaller ones of the same rank; mlp_bank
    (L, 2, hidden, dim) is reshaped to (2L, hidden, dim), its odd matrices (c_proj) get 2x lr, L512-521).
    lr = the base lr (0.023 x get_lr(step) in training); effective lr = lr * max(1, rows/cols)^0.5 [* 2 for c_proj];
    decay: p -= p * [g*p >= 0] * wd * lr * lr_eff (quadratic in lr). grads: a dict, or a list of `steps` dicts.
    storage="bf16": the record's bf16 parameter + uint16 mantissa (the fp32 input is split exactly; grads are cast to
    bf16 like the record's bf16 model's); "fp32": fp32 parameters and grads (the same fp32 arithmetic without the
    grad rounding). Returns ({label: fp32 params}, NorMuonState); pass the state back to continue."""
    rec = load()
    tables = record_tables()
    gdtype = torch.bfloat16 if storage == "bf16" else torch.float32
    if state is None:
        ps = {}
        for label, t in params.items():
            assert tables["param_table"][label]["optim"] == "normuon", label
            p = nn.Parameter(torch.zeros(t.shape, dtype=gdtype))
            p.label, p.reshape = label, _bank_reshape(label, t.shape)
            ps[label] = p
        nd = dict(tables["normuon_defaults"], lr=lr, weight_decay=wd, momentum=momentum, beta2=beta2)
        opt = rec.NorMuonAndAdam(list(ps.items()), param_table={l: tables["param_table"][l] for l in ps},
                                 scatter_order=list(ps), work_order=[l for l in tables["work_order"] if l in ps],
                                 adam_defaults=tables["adam_defaults"], normuon_defaults=nd)
        state = NorMuonState(opt, ps, storage)
    opt, ps = state.opt, state.params
    with torch.no_grad():
        for label, t in params.items():
            p = ps[label]
            if state.storage == "bf16":
                hi, lo = split_f32(t)
                p.data.copy_(hi)
                opt.param_states[p]["mantissa"].copy_(lo.view(p.reshape))
            else:
                p.data.copy_(t.float())
    for cfg in opt.param_cfgs.values():
        cfg.lr, cfg.weight_decay, cfg.momentum, cfg.beta2 = lr, wd, momentum, beta2
    for s in range(steps):
        g = grads[s] if isinstance(grads, (list, tuple)) else grads
        for label, p in ps.items():
            p.grad = g[label].detach().to(p.dtype, copy=True)   # polar_express lerps into it in place
        with _pe_dtype(rec, pe_dtype):
            opt.step(do_adam=False)
    out = {}
    for label, p in ps.items():
        if state.storage == "bf16":
            out[label] = join_f32(p.data, opt.param_states[p]["mantissa"].view(p.shape))
        else:
            out[label] = p.data.clone()
    return out, state


class AdamState:
    """adam_step's state: the record's NorMuonAndAdam (`opt`) and its parameters by label."""
    def __init__(self, opt, params):
        self.opt, self.params = opt, params

    def buffers(self):
        return {l: self.opt.param_states[p] for l, p in self.params.items()}


def adam_step(params: dict, grads: dict, table_entries=None, lr=0.008, step_index=1, state=None, split_embed=False,
              eps=None, weight_decay=None):
    """The record's Adam (NorMuonAndAdam._adam_update / _adam_update_step, L828-866) through NorMuonAndAdam.step on
    fp32 parameters by label. table_entries: {label: entry} overriding the record's param_table (L2026-2050)
    (adam_betas, lr_mul, wd_mul). lr: the base lr (0.008 x get_lr(step) in training): lr_eff = lr * lr_mul,
    step_size = lr_eff * sqrt(1-b2^t) / (1-b1^t), update = m / (sqrt(v) + eps) * step_size, cautious decay
    update += p * [update * p > 0] * lr_eff^2 * wd * wd_mul (L845: quadratic in lr), p -= update.
    step_index: Adam's t for this call (a fresh state starts at step_index - 1). With both "lm_head" and "embed" and
    split_embed False, the tied rule applies (lm_head.grad += embed.grad.T; embed = lm_head.T afterwards; "embed"
    alone is skipped while tied). Returns ({label: fp32 params}, AdamState)."""
    rec = load()
    tables = record_tables()
    if state is None:
        table, ps = {}, {}
        for label, t in params.items():
            entry = dict(tables["param_table"].get(label, {}))
            entry.update((table_entries or {}).get(label, {}))
            entry.setdefault("optim", "adam")
            entry.setdefault("comms", "replicated")
            assert entry["optim"] == "adam" and entry.get("adam_betas"), (label, entry)
            table[label] = entry
            p = nn.Parameter(torch.zeros(t.shape, dtype=torch.float32))
            p.label = label
            ps[label] = p
        ad = dict(tables["adam_defaults"])
        if eps is not None:
            ad["eps"] = eps
        if weight_decay is not None:
            ad["weight_decay"] = weight_decay
        opt = rec.NorMuonAndAdam(list(ps.items()), param_table=table, scatter_order=list(ps),
                                 work_order=[l for l in tables["work_order"] if l in ps] + [l for l in ps if l not in tables["work_order"]],
                                 adam_defaults=ad, normuon_defaults=tables["normuon_defaults"])
        for p in ps.values():
            opt.param_states[p]["step"] = step_index - 1
        opt.split_embed = split_embed
        state = AdamState(opt, ps)
    opt, ps = state.opt, state.params
    with torch.no_grad():
        for label, t in params.items():
            ps[label].data.copy_(t.float())
    for cfg in opt.param_cfgs.values():
        cfg.lr = lr
    for label, p in ps.items():
        p.grad = grads[label].detach().float().clone() if label in grads else None   # a copy: the tied rule adds into lm_head's
    opt.step(do_adam=True)
    return {l: p.data.clone() for l, p in ps.items()}, state


# ----------------------------------------------------------------------------------------------------------------
# Schedules

def schedule(n_steps=None) -> dict:
    """Every step 0..total_steps (1,270 scheduled + 15 extension + the final validation step = 1,286 rows; the first
    n_steps rows if given) as the record's TrainingManager sees it (advance_schedule L2111-2129, get_forward_args
    L2095-2102, TrainingSchedule L1920-1976, get_muon_momentum L1995-2007; the final step's apply_final_ws_ext
    L2324-2326). Each row: step, stage, tokens_per_step (global batch), micro_batch_tokens (per forward on one GPU:
    /8), train_max_seq_len, ws_short/ws_long in blocks and *_tokens (x128, FA3 window_size[0]), lr (get_lr: the
    multiplier of the base lrs), muon_momentum, mtp_weights, prefix_weight, adam (odd steps), split (the untie step),
    loader_send (the generator's .send args when batch or seq len change), yarn ((old, new) window tokens when YaRN
    is applied at this step), attn_scale (after it), validation, final. Note: the final step's long window of
    ws_post_yarn_ext (20) blocks is set WITHOUT a YaRN update (apply_final_ws_ext only sets ws_long)."""
    rec = load()
    ts = rec.training_schedule
    tm = _manager(rec)
    rows = []
    last = ts.total_steps if n_steps is None else min(ts.total_steps, n_steps - 1)
    for step in range(last + 1):
        old_long = tm.ws_long
        tm.advance_schedule(step)
        yarn = (old_long * tm.block_size, tm.ws_long * tm.block_size) if tm.ws_long != old_long else None
        final = step == ts.total_steps
        if final:
            tm.apply_final_ws_ext()
        fa = tm.get_forward_args()
        stage = next(i for i, s in enumerate(ts.stages) if s is ts.lookup(step)[0])
        rows.append(dict(
            step=step, stage=stage, tokens_per_step=tm.batch_size, micro_batch_tokens=tm.batch_size // rec.grad_accum_steps,
            train_max_seq_len=tm.train_max_seq_len, ws_short=tm.ws_short, ws_long=tm.ws_long,
            ws_short_tokens=fa.ws_short, ws_long_tokens=fa.ws_long, lr=ts.get_lr(step),
            muon_momentum=rec.get_muon_momentum(step), mtp_weights=[float(w) for w in fa.mtp_weights],
            prefix_weight=float(fa.prefix_weight.reshape(-1)[0]), adam=tm._is_adam_step(step),
            split=step == tm.split_step, loader_send=tm.train_loader_send_args, yarn=yarn,
            attn_scale=tm.model.yarn.attn_scale,
            validation=final or (rec.args.val_loss_every > 0 and step % rec.args.val_loss_every == 0), final=final))
    return dict(steps=rows, total_steps=ts.total_steps, scheduled_iterations=ts.scheduled_iterations,
                boundaries=list(ts.boundaries), split_step=ts.split_step,
                cooldown_start=int(ts.scheduled_iterations * (1 - ts.cooldown_frac)), cooldown_frac=ts.cooldown_frac,
                ws_post_yarn_ext=ts.ws_post_yarn_ext, block_size=tm.block_size, grad_accum_steps=rec.grad_accum_steps,
                grad_scale=rec.grad_scale, transition_steps=tm.get_transition_steps(),
                base_lr=dict(adam=record_tables()["adam_defaults"]["lr"], normuon=record_tables()["normuon_defaults"]["lr"]))


def yarn_states(n_positions=4) -> list:
    """The record's Yarn (L988-1051) for the unpaired and the paired-head tables: after reset (window 3 blocks) and
    after each long-window change of the schedule (3 -> 7 -> 11 -> 13 blocks, applied by advance_schedule), then
    13 -> 20 (ws_post_yarn_ext) -- which the record does NOT apply (applied_by_record False; see schedule()).
    Each: paired, window_blocks, window_tokens, angular_freq (fp32, head_dim wide), factor1/factor2 for the first
    n_positions (bf16 in the record, returned as fp32; paired: 2*head_dim wide, even/odd positions), attn_scale."""
    rec = load()
    stages = rec.training_schedule.stages
    longs = [stages[0].window_sizes[1]]
    for s in stages[1:]:
        if s.window_sizes[1] != longs[-1]:
            longs.append(s.window_sizes[1])
    changes = [(a, b, True) for a, b in zip(longs, longs[1:])] + [(longs[-1], rec.training_schedule.ws_post_yarn_ext, False)]
    out = []
    for paired in (False, True):
        y = rec.Yarn(128, max(1, math.ceil(n_positions / 2)), paired=paired)

        def snap(w, applied):
            out.append(dict(paired=paired, window_blocks=w, window_tokens=w * 128, applied_by_record=applied,
                            angular_freq=y.angular_freq.detach().clone().float(),
                            factor1=y.factor1[:n_positions].float().clone(), factor2=y.factor2[:n_positions].float().clone(),
                            attn_scale=y.attn_scale))
        snap(longs[0], True)
        for a, b, applied in changes:
            y.apply(a * 128, b * 128)
            snap(b, applied)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Data

SHAKESPEARE = REPO / "data" / "shakespeare" / "shakespeare_train_000000.bin"


def _read_tokens(path):
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1
    return np.fromfile(path, dtype=np.uint16, offset=1024, count=int(header[2]))


def _write_tokens(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def make_shards(out_dir=None, n_shards=4, doc_tokens=2560, source=SHAKESPEARE) -> str:
    """Small shards from the repo's Shakespeare shard for the record's BOS-aligned loader: each keeps every document's
    first doc_tokens tokens (>= 2049: the loader never reads past max_seq_len <= 2048 of a document, so what it
    yields is unchanged) -- the 38 documents, rotated by 7 per shard so successive shards differ. Returns a glob.
    The loader preloads the next shard, so a glob must match >= 2 files; a shard gives about 2 micro-batches at
    stages 1-2 and 1 at stage 3 (the documents are long: ~38 sequences a shard)."""
    toks = _read_tokens(source)
    bos = np.flatnonzero(toks == 50256)
    docs = [toks[a:b][:doc_tokens] for a, b in zip(bos, list(bos[1:]) + [len(toks)])]
    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="peer_shards_"))
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
    if out_dir.parent == Path(tempfile.gettempdir()) and out_dir.name.startswith("peer_shards_"):
        _TMPDIRS.append(out_dir)
    for j in range(n_shards):
        r = (7 * j) % len(docs)
        _write_tokens(out_dir / f"peer_train_{j:06d}.bin", np.concatenate(docs[r:] + docs[:r]))
    return str(out_dir / "peer_train_*.bin")


@contextlib.contextmanager
def _bigram_rows(rec, rows):
    old = rec.args.bigram_vocab_size
    if rows is not None:
        rec.args.bigram_vocab_size = int(rows)
    try:
        yield rec.args.bigram_vocab_size
    finally:
        rec.args.bigram_vocab_size = old


def bigram_hash(tokens, bigram_rows=None):
    """get_bigram_hash (L1779-1794), R = bigram rows (377,280 by default), int32 arithmetic:
    out[0] = R-1; out[t] = ((36313 * x[t]) ^ (27191 * p)) % (R-1) with p = x[t-1] for t >= 2 but p = R-1 for t = 1
    (L1792 sets out[0] = R-1 before L1793 reads out[:-1]; 27191 * (R-1) wraps in int32, and % is a floor mod, so
    the result is in [0, R-1)). A document's BOS hashes with the previous document's last token."""
    rec = load()
    with _bigram_rows(rec, bigram_rows):
        return rec.get_bigram_hash(torch.as_tensor(tokens))


def bos_batches(train_glob=None, steps=(0,), micro_batches=None, bigram_rows=None) -> list:
    """The record's distributed_data_generator (L1796-1877, align_to_bos, a world of one so grad_accum_steps = 8)
    driven as its loops do (L2280-2294, L2357-2365): for each schedule step in `steps`, advance_schedule(step), then
    `micro_batches` (default 8 = one full step) micro-batches fetched with .send(train_loader_send_args), so batch
    size and seq len follow the stage schedule. Default shards: make_shards() with enough files. Returns one dict per
    micro-batch: step, micro, num_tokens, max_seq_len, inputs (int32), targets (int64), cum_seqlens (int32, padded
    to 64/96/128 entries with num_tokens), bigram_inputs (int32)."""
    rec = load()
    k = rec.grad_accum_steps if micro_batches is None else micro_batches
    if train_glob is None:
        train_glob = make_shards(n_shards=len(steps) * k + 3)
    tm = _manager(rec)
    gen, out = None, []
    with _bigram_rows(rec, bigram_rows):
        try:
            for step in steps:
                tm.advance_schedule(step)
                if gen is None:   # a fresh generator cannot take .send(args): start it at this step's sizes
                    gen = rec.distributed_data_generator(train_glob, tm.batch_size, tm.train_max_seq_len,
                                                         grad_accum_steps=rec.grad_accum_steps)
                    send = None
                else:
                    send = tm.train_loader_send_args
                for micro in range(k):
                    inputs, targets, cum, bigram, _ = gen.send(send)
                    out.append(dict(step=step, micro=micro, num_tokens=tm.batch_size // rec.grad_accum_steps,
                                    max_seq_len=tm.train_max_seq_len, inputs=inputs, targets=targets,
                                    cum_seqlens=cum, bigram_inputs=bigram.clone()))
        finally:
            if gen is not None:
                gen.close()
    return out


def cut_batch(batch: dict, n_tokens: int) -> dict:
    """A micro-batch's first n_tokens (n_tokens % 16 == 0 for the model): inputs/targets/bigram_inputs sliced (the
    bigram hash of a prefix is the prefix of the hash), cum_seqlens clipped to n_tokens (same padded length)."""
    b = dict(batch)
    for key in ("inputs", "targets", "bigram_inputs"):
        b[key] = batch[key][:n_tokens].clone()
    b["cum_seqlens"] = batch["cum_seqlens"].clamp_max(n_tokens)
    b["num_tokens"] = n_tokens
    return b


@functools.lru_cache(maxsize=None)
def _prefix_table():
    return load().build_prefix_table(V_PAD)


def prefix_table():
    """build_prefix_table(50304) (L1175-1198) over the GPT-2 vocabulary: each token's longest proper byte-prefix that
    is itself a token, -1 if none (the special token and the 47 padding ids are -1)."""
    return _prefix_table().clone()


# ----------------------------------------------------------------------------------------------------------------
# Loss

@contextlib.contextmanager
def _fp8(enabled):
    """FP8 on/off for one forward: the MLP reads DISABLE_FP8 at each forward (L1498), the CE stand-in reads _SET."""
    old_env, old_ce = os.environ.get("DISABLE_FP8"), _SET.ce_fp8
    if enabled:
        os.environ.pop("DISABLE_FP8", None)
    else:
        os.environ["DISABLE_FP8"] = "1"
    _SET.ce_fp8 = bool(enabled)
    try:
        yield
    finally:
        _SET.ce_fp8 = old_ce
        if old_env is None:
            os.environ.pop("DISABLE_FP8", None)
        else:
            os.environ["DISABLE_FP8"] = old_env


def mtp_prefix_loss(x, lm_head_weight, targets, mtp_weights, prefix_targets, prefix_weight, fp8=False, grad_scale=None):
    """The training loss head (L1685-1687): FusedSoftcappedCrossEntropy (stand-in) on x (n, 768) and lm_head.weight
    (768, V) = (in, out). Per row i: sum_k mtp_weights[k] * (lse_i - z_i[targets[i+k]]) for i+k < n, plus
    prefix_weight * (lse_i - z_i[prefix_targets[i]]) where prefix_targets[i] >= 0; z = 23 sigmoid((x W + 5) / 7.5).
    grad_x / grad_w: the gradient of grad_scale * sum(losses) as the kernel computes it (S_w quirk: the last
    len(mtp_weights)-1 rows differ from autograd's). grad_scale defaults to the record's 1/8; the FP8 scales are the
    lm_head's (x_s = 100/448, w_s = 1.6/448, grad_s = grad_scale * 0.75/448). Returns dict(losses, grad_x, grad_w)."""
    rec = load()
    gs = rec.grad_scale if grad_scale is None else grad_scale
    x = x.detach().float().clone().requires_grad_(True)
    W = lm_head_weight.detach().float().clone().requires_grad_(True)
    pw = prefix_weight if isinstance(prefix_weight, torch.Tensor) else torch.tensor([float(prefix_weight)])
    mw = mtp_weights if isinstance(mtp_weights, torch.Tensor) else torch.tensor(mtp_weights, dtype=torch.float32)
    with _fp8(fp8):
        losses = FusedSoftcappedCrossEntropy.apply(x, targets.to(torch.int64), mw.float(), prefix_targets.to(torch.int64),
                                                   pw, W, 100 / 448, 1.6 / 448, gs * 0.75 / 448, gs)
        losses.sum().backward()
    return dict(losses=losses.detach(), grad_x=x.grad, grad_w=W.grad)


# ----------------------------------------------------------------------------------------------------------------
# The whole model

def build_model(seed=0, bigram_rows=None, max_seq_len=32768, record_bf16=False, fill_prefix_table=True):
    """The record's GPT (L1208; 11 layers, d 768, 6 heads x 128, V 50304) built on the CPU after
    torch.manual_seed(seed) (the record seeds nothing). Master weights fp32 (lm_head and value_embeds are created in
    bf16 by the record and are cast to fp32 here, keeping their bf16-valued init); record_bf16=True applies the
    record's casts instead (L2242-2254: every nn.Embedding / nn.Linear weight, ve_gate_bank, the three banks and the
    mudd weights to bf16). bigram_rows: the bigram table's rows (the record's 377,280 by default; fewer to save memory:
    then hash with the same bigram_rows -- it changes get_bigram_hash's modulus -- and note that nn.Embedding's
    random init of that table draws rows*768 numbers, so every later parameter's init changes with it).
    max_seq_len: the Yarn tables' length (2 x this positions; the record uses 262,144; tables are prefixes of
    each other). Then, as the record before training: prefix_table filled (L2317), quantize_mlp_fp8(bootstrap_down=True)
    (L2258). The model is in train mode; nothing is compiled."""
    rec = load()
    torch.manual_seed(seed)
    with _bigram_rows(rec, bigram_rows) as rows:
        model = rec.GPT(vocab_size=50257, num_layers=11, num_heads=6, head_dim=128, model_dim=768, max_seq_len=max_seq_len)
    model.peer_bigram_rows = rows
    if record_bf16:
        for m in model.modules():
            if isinstance(m, (nn.Embedding, nn.Linear)):
                m.weight.data = m.weight.data.bfloat16()
        for name in ("ve_gate_bank", "qk_bank", "vo_bank", "mlp_bank", "mudd_w1", "mudd_w2", "mudd_b2",
                     "mudd_gate_w1", "mudd_gate_w2", "mudd_gate_b2"):
            getattr(model, name).data = getattr(model, name).data.bfloat16()
    else:
        model.lm_head.weight.data = model.lm_head.weight.data.float()
        model.value_embeds.data = model.value_embeds.data.float()
    if fill_prefix_table:
        model.prefix_table.copy_(prefix_table())
    model.quantize_mlp_fp8(bootstrap_down=True)
    model.train()
    return model


def _batch_args(inputs, targets, cum_seqlens, bigram_inputs):
    return (torch.as_tensor(inputs).to(torch.int32), torch.as_tensor(targets).to(torch.int64),
            torch.as_tensor(cum_seqlens).to(torch.int32), torch.as_tensor(bigram_inputs).to(torch.int32))


def _cfg_dict(cfg):
    return dict(mtp_weights=[float(w) for w in cfg.mtp_weights], prefix_weight=float(cfg.prefix_weight.reshape(-1)[0]),
                ws_short=cfg.ws_short, ws_long=cfg.ws_long, train_max_seq_len=cfg.train_max_seq_len)


def forward_backward(model, inputs, targets, cum_seqlens, bigram_inputs, schedule_step=0, fp8=False) -> dict:
    """One training forward + backward of the record's GPT (GPT.forward L1486-1693, loss as L2360:
    per_token.sum() * grad_scale with grad_scale = 1/8) at schedule step `schedule_step` (the model's Yarn is reset
    and advanced through steps 0..schedule_step; windows, MTP and prefix weights from that step). fp8=False:
    DISABLE_FP8 for the MLP and the CE stand-in in fp32 (exact fp32 math); fp8=True emulates the record's FP8.
    Returns dict(loss = sum * grad_scale, loss_sum, per_token (n,), grads {record name: tensor, or None if unused},
    grad_scale, schedule (the forward args)). The grads are handed over (the model's .grad are left None)."""
    rec = load()
    tm = _manager(rec, model)
    _advance_to(rec, tm, schedule_step)
    cfg = tm.get_forward_args()
    model.train()
    model.zero_grad(set_to_none=True)
    with _fp8(fp8):
        per_token = model(*_batch_args(inputs, targets, cum_seqlens, bigram_inputs), cfg)
        loss = per_token.sum() * rec.grad_scale
        loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        grads[name], p.grad = p.grad, None
    return dict(loss=loss.item(), loss_sum=per_token.sum().item(), per_token=per_token.detach(), grads=grads,
                grad_scale=rec.grad_scale, schedule=_cfg_dict(cfg))


@torch.no_grad()
def forward_eval(model, inputs, targets, cum_seqlens, bigram_inputs, schedule_step=None):
    """The validation forward (eval mode: lm_head in bf16/fp32, softcap, plain CE, L1688-1692) at schedule_step
    (default: the final step, with its 20-block long window). Returns per-token losses."""
    rec = load()
    step = rec.training_schedule.total_steps if schedule_step is None else schedule_step
    tm = _manager(rec, model)
    _advance_to(rec, tm, step)
    model.eval()
    try:
        return model(*_batch_args(inputs, targets, cum_seqlens, bigram_inputs), tm.get_forward_args()).detach()
    finally:
        model.train()


def train_steps(model, batches, n=3, start_step=0, fp8=False, pe_dtype=torch.bfloat16) -> dict:
    """n steps of the full recipe through the record's TrainingManager (L2009-2203): advance_schedule(step), each
    micro-batch's forward + backward (loss = sum * grad_scale, accumulated), step_optimizers(step) (NorMuon every
    step, Adam on odd steps with the grads of the even step still accumulated in, untie at split_step 847), then
    quantize_mlp_fp8(bootstrap_down=step < 16) (L2357-2365). batches[j] = the micro-batches of step start_step + j
    (a list of bos_batches dicts or (inputs, targets, cum_seqlens, bigram_inputs) tuples; the record's step has 8;
    fewer keep grad_scale = 1/8). The optimizer starts fresh at start_step (Yarn replayed to it). Returns
    dict(losses (per step, summed over micro-batches), micro_losses, params {name: live tensor}, manager)."""
    rec = load()
    with _fp8(fp8):
        tm = rec.TrainingManager(model)
        for s in range(start_step):
            tm.advance_schedule(s)
        losses, micro = [], []
        for j in range(n):
            step = start_step + j
            tm.advance_schedule(step)
            mbs = batches[j]
            if isinstance(mbs, dict) or (isinstance(mbs, tuple) and len(mbs) == 4 and isinstance(mbs[0], torch.Tensor)):
                mbs = [mbs]
            step_losses = []
            for mb in mbs:
                args = (mb["inputs"], mb["targets"], mb["cum_seqlens"], mb["bigram_inputs"]) if isinstance(mb, dict) else mb
                loss = model(*_batch_args(*args), tm.get_forward_args()).sum() * rec.grad_scale
                loss.backward()
                step_losses.append(loss.item())
                del loss
            with _pe_dtype(rec, pe_dtype):
                tm.step_optimizers(step)
            model.quantize_mlp_fp8(bootstrap_down=(step < 16))
            losses.append(sum(step_losses))
            micro.append(step_losses)
    return dict(losses=losses, micro_losses=micro, params={name: p.detach() for name, p in model.named_parameters()},
                manager=tm)


def banks(model) -> dict:
    """The record's parameters by name (live tensors; layouts in the module docstring)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def layer_weights(model) -> dict:
    """Per-layer matrices cut from the banks (views), all in F.linear layout (out, in):
    layers.{i}.attn.{q,k,v,o} for i != 6 (raw, before the sa_lambdas), layers.{i}.attn.sa_lambdas (2,),
    layers.{i}.mlp.{c_fc (3072, 768), c_proj (768, 3072) = mlp_bank[i, 1].T}, layers.{i}.resid_lambdas /
    post_lambdas (2,), layers.{i}.value_embed (V, 768) and .ve_gate (6, 12) where used, plus lm_head (V, 768)
    = lm_head.weight.T, embed, bigram_embed, smear_gate, smear_lambda, skip_lambda."""
    d, H, hd = 768, 6, 128
    out = {}
    qk, vo, mlp, sc = model.qk_bank.detach(), model.vo_bank.detach(), model.mlp_bank.detach(), model.scalars.detach()
    ve = model.value_embeds.detach().view(5, model.vocab_size, d)
    ve_layers = {1: 0, 2: 1, 8: 2, 9: 3, 10: 4}
    gate_layers = {1: 0, 2: 1, 8: 2, 9: 3}
    for i in range(11):
        pre = f"layers.{i}."
        if i != 6:
            a = i - (i > 6)
            out[pre + "attn.q"] = qk[6 * a:6 * a + 3].reshape(H * hd, d)
            out[pre + "attn.k"] = qk[6 * a + 3:6 * a + 6].reshape(H * hd, d)
            out[pre + "attn.v"] = vo[2 * a]
            out[pre + "attn.o"] = vo[2 * a + 1]
            out[pre + "attn.sa_lambdas"] = sc[2 * i:2 * i + 2]
        out[pre + "mlp.c_fc"] = mlp[i, 0]
        out[pre + "mlp.c_proj"] = mlp[i, 1].T
        out[pre + "resid_lambdas"] = model.resid_lambdas.detach()[i]
        out[pre + "post_lambdas"] = model.post_lambdas.detach()[i]
        if i in ve_layers:
            out[pre + "value_embed"] = ve[ve_layers[i]]
        if i in gate_layers:
            out[pre + "ve_gate"] = model.ve_gate_bank.detach()[gate_layers[i]]
    out.update({"lm_head": model.lm_head.weight.detach().T, "embed": model.embed.weight.detach(),
                "bigram_embed": model.bigram_embed.weight.detach(), "smear_gate": model.smear_gate.weight.detach(),
                "smear_lambda": sc[22], "skip_lambda": sc[23]})
    return out
