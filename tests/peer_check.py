"""Peer check: every piece of the current record (#89) that train_gpt.py ports, against the record's own code on a CPU.

    python tests/peer_check.py [PATH] [--pieces=NAME,...] [--skip_model]

PATH: a modded-nanogpt checkout or ../shared/peer/record_2026-08 (default: $PEER_RECORD, else that folder). The record's
side is tests/peer_record.py: the record's train_gpt.py with the small patch tests/peer_record.diff, its CUDA kernels
restated in torch. Each piece gets the same inputs on both sides and prints

    piece: max |diff| X (tolerance T) ok        (or FAIL)

then `peer check: N of M pieces match`; the exit code is 1 on any FAIL. The record's parameter banks are a GPU layout:
map_record_to_ours() cuts them into our per-layer weights (and our head-dim order: RoPE pairs (j, j+D/2) here, (2j, 2j+1)
there), our_grads_as_record() maps gradients back. The whole-model pieces (the last ones) build both 11 x 768 models
(the bigram table cut to BIGRAM_ROWS rows on both sides to fit the 2-core CPU's memory; the sides train one after the
other, 13 GB at peak) and cost ~3-5 minutes; --skip_model leaves them out. tests/test_peer_check.py runs this when the record is there.

Tolerances: fp32 on both sides (Polar Express too: the record's bf16 cast is switched by the patch), so the pieces
agree to float rounding (1e-5 relative; gradients through the 11 layers 1e-4). Where the record forces bf16 (its
YaRN cos/sin tables, its residual lambdas' values) the whole-model pieces give ours the same bf16-rounded values; the
residual lambdas' gradients, which the record's cast makes bf16, get 5e-3. After 3 training steps Adam's near-sign first
steps amplify float noise in near-zero gradients: those pieces say what they measure instead of max |diff|."""
import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import train_gpt as T  # noqa: E402
import peer_record as R  # noqa: E402

BIGRAM_ROWS = 4096   # both sides' bigram table in the whole-model pieces (the record's 377,280 x 768 would not fit twice)
PIECES = {}          # name -> check(): returns (max |diff|, tolerance)


def piece(name):
    def register(fn):
        PIECES[name] = fn
        return fn
    return register


def rel(a, b):
    """max |a - b| / max(max |b|, tiny): a relative difference that does not blow up at zeros."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def record_config(*flags):
    """Our --preset=speedrun at fp32 on a CPU, without FP8 and compile, the bigram table cut like the record's."""
    return T.parse_args(["--preset=speedrun", "--bf16=false", "--no-compile", "--kernels=torch", "--no-fp8_head", "--no-fp8_mlp",
                         f"--bigram_vocab={BIGRAM_ROWS}", "--val_tokens=0", *flags], cuda_available=True)


# ----------------------------------------------------------------------------- part 1: the recipe

@piece("polar_express")
def check_polar_express():
    """A wide (Q/K pair: 256 x 768) and a tall (MLP: 3072 x 768) stack, fp32 on both sides."""
    worst = 0.0
    for shape in [(6, 256, 768), (2, 3072, 768)]:
        G = rand(*shape, seed=1)
        worst = max(worst, rel(T.polar_express(G, dtype=torch.float32), R.polar_express(G, dtype=torch.float32)))
    return worst, 1e-4


class _Layer(torch.nn.Module):
    """One attention + MLP layer of ours at the record's shape, for the optimizer pieces."""
    def __init__(self):
        super().__init__()
        c = record_config()
        self.attn = T.Attention(768, 6, 128, T.Ops("torch"), merged_qkv=True)
        self.mlp = T.MLP(768, 3072, "relu2")
        T.record_muon_blocks(self, c)


def layer_pair(seed):
    """The record's banks for one layer (qk 6 groups, vo 2, mlp 1 x 2) and the same values in our _Layer."""
    banks = {"qk_bank": rand(6, 256, 768, seed=seed, scale=0.02), "vo_bank": rand(2, 768, 768, seed=seed + 1, scale=0.02),
             "mlp_bank": rand(1, 2, 3072, 768, seed=seed + 2, scale=0.02)}
    ours = _Layer()
    with torch.no_grad():
        ours.attn.qkv_w.copy_(torch.cat([banks["qk_bank"].reshape(2, 768, 768), banks["vo_bank"][:1]]))
        ours.attn.c_proj.weight.copy_(banks["vo_bank"][1])
        ours.mlp.c_fc.weight.copy_(banks["mlp_bank"][0, 0])
        ours.mlp.c_proj.weight.copy_(banks["mlp_bank"][0, 1].T)
    return banks, ours


def ours_as_banks(layer):
    return {"qk_bank": layer.attn.qkv_w.detach()[:2].reshape(6, 256, 768), "vo_bank": torch.stack([layer.attn.qkv_w.detach()[2], layer.attn.c_proj.weight.detach()]),
            "mlp_bank": torch.stack([layer.mlp.c_fc.weight.detach(), layer.mlp.c_proj.weight.detach().T])[None]}


def muon_steps(wd, beta2, steps=2, clear_margin=0.0):
    """`steps` steps of Muon (Polar Express, record groups, NorMuon at beta2, cautious wd) on one layer, both sides.
    clear_margin > 0: elements whose decay mask (update * p >= 0) the two sides' float rounding could flip (|v p| within
    clear_margin of its largest, v the update without decay) are left out: there a 1e-6 difference in v decides it."""
    banks, ours = layer_pair(seed=10)
    grads = [{k: rand(*v.shape, seed=20 + 3 * s + i, scale=1e-3) for i, (k, v) in enumerate(banks.items())} for s in range(steps)]
    theirs, _ = R.normuon_step(banks, grads, lr=0.023, wd=wd, momentum=0.95, beta2=beta2, steps=steps, storage="fp32", pe_dtype=torch.float32)
    opt = T.Muon(list(ours.parameters()), lr=0.023, momentum=0.95, ns_dtype=torch.float32, ortho="polar_express",
                 normuon_beta2=beta2, weight_decay=wd)
    for g in grads:
        ours.attn.qkv_w.grad = torch.cat([g["qk_bank"].reshape(2, 768, 768), g["vo_bank"][:1]]).clone()
        ours.attn.c_proj.weight.grad = g["vo_bank"][1].clone()
        ours.mlp.c_fc.weight.grad = g["mlp_bank"][0, 0].clone()
        ours.mlp.c_proj.weight.grad = g["mlp_bank"][0, 1].T.clone()
        opt.step()
    mine = ours_as_banks(ours)
    if not clear_margin:
        return max(rel(mine[k] - banks[k], theirs[k] - banks[k]) for k in banks)  # the updates, relative
    plain, _ = R.normuon_step(banks, grads[:1], lr=0.023, wd=0.0, momentum=0.95, beta2=beta2, steps=1, storage="fp32", pe_dtype=torch.float32)
    worst = 0.0
    for k in banks:
        vp = (banks[k] - plain[k]) * banks[k]
        clear = vp.abs() > clear_margin * vp.abs().max()
        worst = max(worst, ((mine[k] - theirs[k]).abs()[clear].max() / (theirs[k] - banks[k]).abs().max()).item())
    return worst


@piece("normuon")
def check_normuon():
    return muon_steps(wd=0.0, beta2=0.9), 1e-4


@piece("cautious_weight_decay_muon")
def check_cautious_muon():
    """One step at wd 1.2, masks that float rounding could flip aside (1e-4 of the largest |v p|)."""
    return muon_steps(wd=1.2, beta2=0.9, steps=1, clear_margin=1e-4), 1e-4


@piece("muon_groups_and_lr")
def check_muon_groups():
    """Q and K per pair of heads, V and O per matrix, lr x sqrt(max(1, rows/cols)) as the record stores them, c_proj x2:
    our blocks' shapes and lr multipliers against the record's NorMuon configs, and one step's update."""
    _, state = R.normuon_step(layer_pair(seed=10)[0], {k: torch.zeros(v.shape) for k, v in layer_pair(seed=10)[0].items()}, steps=1)
    cfg = state.configs()
    theirs = {"qk": (tuple(cfg["qk_bank"].reshape[1:]), cfg["qk_bank"].lr_mul), "vo": (tuple(cfg["vo_bank"].reshape[1:]), cfg["vo_bank"].lr_mul),
              "mlp": [cfg["mlp_bank"].lr_mul * m for m in cfg["mlp_bank"].per_matrix_lr_mul]}
    layer = _Layer()
    (qk, v) = layer.attn.qkv_w.muon_blocks
    ours = {"qk": (qk[1][1:], qk[2]), "vo": (v[1][1:], v[2]), "mlp": [layer.mlp.c_fc.weight.muon_blocks[0][2], layer.mlp.c_proj.weight.muon_blocks[0][2]]}
    return max(float(ours != theirs), muon_steps(wd=0.0, beta2=0.9, steps=1)), 1e-4


ADAM_LABELS = {  # record label -> (our kind, a small shape)
    "embed": ("embed", (64, 768)), "lm_head": ("head", (768, 64)), "value_embeds": ("value_embed", (64, 768)),
    "bigram_embed": ("bigram", (64, 768)), "scalars": ("scalar", (24,)), "smear_gate": ("smear_gate", (1, 12)),
    "ve_gate_bank": ("ve_gate", (5, 6, 12)), "post_lambdas": ("post_lambda", (11, 2)), "resid_lambdas": ("resid_lambda", (11, 2)),
    "mudd_w1": ("mudd_weight", (2, 64, 768)), "mudd_b2": ("mudd_bias", (2, 14)), "mudd_gate_w1": ("gate_weight", (2, 64, 768)),
    "mudd_gate_b2": ("gate_bias", (2, 41)),
}


def adam_params(seed):
    return {l: rand(*shape, seed=seed + i, scale=0.05) for i, (l, (_, shape)) in enumerate(ADAM_LABELS.items())}


def our_adam(params, lr_mult=1.0):
    """Our Adam with the record table's group for each label's kind (ADAM_TABLE), at the record's base lr and wd."""
    ps = {l: torch.nn.Parameter(t.clone()) for l, t in params.items()}
    groups = [dict(params=[ps[l]], lr=0.008 * lr_mult * T.ADAM_TABLE[k][0], betas=T.ADAM_TABLE[k][1],
                   weight_decay=0.005 * T.ADAM_TABLE[k][2]) for l, (k, _) in ADAM_LABELS.items() if l in ps]
    return ps, T.Adam(groups, eps=1e-10)


@piece("adam_table")
def check_adam_table():
    """Two steps of the record's Adam (per-kind lr multiplier, betas, cautious wd x multiplier) on every kind."""
    params = adam_params(30)
    grads = [{l: rand(*t.shape, seed=40 + 2 * s + i, scale=1e-3) for i, (l, t) in enumerate(params.items())} for s in range(2)]
    theirs, state = R.adam_step({l: t for l, t in params.items() if l != "embed"}, grads[0], lr=0.008, step_index=1, split_embed=True)
    theirs, _ = R.adam_step(theirs, grads[1], lr=0.008, step_index=2, state=state)
    ps, opt = our_adam({l: t for l, t in params.items() if l != "embed"})
    for g in grads:
        for l, p in ps.items(): p.grad = g[l].clone()
        opt.step()
    return max(rel(ps[l].detach() - params[l], theirs[l] - params[l]) for l in ps), 3e-5  # m, v updated in another order


@piece("adam_every_other_step")
def check_adam_every_other():
    """Our optimizer_step with --adam_every=2 over steps 0 and 1 (grads kept from 0, summed with 1's, one Adam step at
    1) against the record's Adam given g0 + g1 at t = 1; and the record's Adam steps are the odd ones."""
    c = T.parse_args(["--preset=cpu", "--n_layer=1", "--n_embd=64", "--n_head=2", "--vocab_size=128", "--adam_table=record",
                      "--adam_every=2", "--bf16=false", "--adam_wd=0.005"])
    torch.manual_seed(0)
    m = T.build_model(c)
    opts = T.build_optimizers(m, c)
    head0 = m.lm_head.weight.detach().clone()
    gs = [rand(*head0.shape, seed=50 + s, scale=1e-3) for s in range(2)]
    for step, g in enumerate(gs):  # the head's gradient of step 0 is kept (Adam did not step) and step 1's adds to it
        for p in m.parameters():
            if p.grad is None: p.grad = torch.zeros_like(p)
        m.lm_head.weight.grad += g
        T.optimizer_step(m, opts, c, step)
    theirs, _ = R.adam_step({"lm_head": head0.T}, {"lm_head": (gs[0] + gs[1]).T}, lr=0.008 * T.lr_multiplier(1, c), step_index=1, split_embed=True)
    flags = [row["adam"] for row in R.schedule()["steps"]]
    schedule = T.Schedule(record_config())
    ours_flags = [schedule[s].adam for s in range(len(flags))]
    return max(rel(m.lm_head.weight.detach() - head0, theirs["lm_head"].T - head0), float(flags != ours_flags)), 1e-5


@piece("schedule")
def check_schedule():
    """Every step 0..1285: tokens per step, the document cap, the windows (blocks), the lr multiplier, the MTP and prefix
    weights, and the untie step."""
    theirs = R.schedule()
    s = T.Schedule(record_config())
    worst = 0.0
    for row in theirs["steps"]:
        p = s[row["step"]]
        exact = (p.tokens, p.doc_len, p.windows) == (row["tokens_per_step"], row["train_max_seq_len"], (row["ws_short"], row["ws_long"]))
        mtp = list(p.mtp) + [0.0] * (len(row["mtp_weights"]) - len(p.mtp))
        worst = max(worst, float(not exact), abs(p.lr - row["lr"]), max(abs(a - b) for a, b in zip(mtp, row["mtp_weights"])),
                    abs(p.prefix - row["prefix_weight"]))
    return max(worst, float(s.untie_step != theirs["split_step"]), float(len(s.plans) != len(theirs["steps"]))), 1e-7  # its weights are fp32 tensors


@piece("muon_momentum")
def check_momentum():
    theirs = R.schedule()["steps"]
    s = T.Schedule(record_config())
    return max(abs(s[r["step"]].momentum - r["muon_momentum"]) for r in theirs), 1e-12


@piece("yarn")
def check_yarn():
    """Frequencies, cos/sin and the softmax scale after each long-window change the record applies (3 -> 7 -> 11 -> 13
    blocks), unpaired and paired (2t, 2t+1 positions); and that neither applies it for the final 20-block window."""
    worst = 0.0
    states = R.yarn_states(n_positions=4)
    for st in states:
        if not st["applied_by_record"]:
            continue
        chain = [w * 128 for w in (3, 7, 11, 13) if w <= st["window_blocks"]]
        r = T.Rotary(128, 8, 1024.0, half=True)
        r.yarn_to(chain)
        ours_freq = torch.cat([r.inv_freq[:32].repeat_interleave(2), r.inv_freq[32:].repeat(2)])  # the record's order: (2j, 2j+1) pairs
        worst = max(worst, rel(ours_freq, st["angular_freq"]), abs(0.1 * r.scale_mult - st["attn_scale"]) / st["attn_scale"])
    sched = T.Schedule(record_config())
    final_chain = sched.yarn_windows(1285)
    return max(worst, float(final_chain != [384, 896, 1408, 1664])), 1e-6


@piece("bos_aligned_batches")
def check_bos_batches():
    """The record's distributed_data_generator (world of one: 8 micro-batches a step) on its shards against our loader
    (--bos_align, 8 rows a step, one per micro-step) through steps 421-424 (the stage change doubles the tokens)."""
    folder = Path(R.make_shards(n_shards=1)).parent  # a temp folder the oracle cleans up; two copies of Shakespeare by scene
    files = [str(folder / f"scene_train_{k:06d}.bin") for k in range(2)]  # (the record's loader preloads a second shard)
    for f in files:
        T.write_shard(f, T.read_shard(str(Path(T.REPO) / "data/shakespeare_scenes/shakespeare_scenes_train_000000.bin")))
    steps = (421, 422, 423)  # within the first shard: the record at a world of one fetches row by row, so a shard switch
    theirs = R.bos_batches(str(folder / "scene_train_*.bin"), steps=steps)  # would differ from its 8-GPU batch (and ours)
    s = T.Schedule(record_config())
    loader = T.DataLoader(files, 49152, 8, 1, 0, 1, bos_align=True)
    worst = 0.0
    for k, step in enumerate(steps):
        plan = s[step]
        ours = loader.next_batch(plan.row_len, plan.doc_len)
        for m, (x, y) in enumerate(ours):
            b = theirs[8 * k + m]
            same = torch.equal(x[0], b["inputs"].long()) and torch.equal(y[0], b["targets"].long())
            worst = max(worst, float(not same))
    return worst, 0.0


@piece("prefix_table")
def check_prefix_table():
    return float((T.build_prefix_table(50304) != R.prefix_table()).sum()), 0.0


def loss_pair(mtp, prefix_weight, n=256, seed=60):
    x, W = rand(n, 768, seed=seed, scale=1.0), rand(768, 50304, seed=seed + 1, scale=0.03)
    targets = torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(seed + 2))
    pre = T.build_prefix_table(50304)[targets]
    theirs = R.mtp_prefix_loss(x, W, targets, mtp, pre, prefix_weight, grad_scale=1.0)
    xs, Ws = x.clone().requires_grad_(True), W.T.clone().requires_grad_(True)
    cols, weights = T.loss_targets(targets[None], torch.tensor(mtp), pre[None], torch.tensor(prefix_weight))
    ours = T._CappedCrossEntropy.apply(xs @ Ws.T, cols.reshape(n, -1), tuple(weights), ("sigmoid", 23.0, 5.0, 7.5), 16)
    ours.sum().backward()
    keep = n - (len(mtp) - 1)  # the record's kernel counts absent MTP targets in the last rows' normaliser (its quirk)
    return rel(ours.detach(), theirs["losses"]), rel(xs.grad[:keep], theirs["grad_x"][:keep])


@piece("multi_token_prediction")
def check_mtp():
    """Per-row losses and the input gradient (the last rows aside: the record's kernel quirk) at stage 1's weights."""
    return max(loss_pair([1.0, 0.5, 0.25], 0.0)), 1e-5


@piece("prefix_token_loss")
def check_prefix_loss():
    return max(loss_pair([1.0], 0.25)), 1e-5


@piece("softcap")
def check_softcap():
    """23 sigmoid((z + 5) / 7.5) through the plain cross-entropy (one target, no prefix)."""
    return max(loss_pair([1.0], 0.0)), 1e-5


@piece("tie_then_untie")
def check_tie_untie():
    """Tied: the embedding's gradient joins the head's, one Adam step, the embedding set to the head; at the untie step
    the embedding takes the head's Adam state; then each steps alone. Three Adam steps, the middle one the untie."""
    head0 = rand(768, 64, seed=70, scale=0.005)
    grads = [{"lm_head": rand(768, 64, seed=71 + 2 * s, scale=1e-3), "embed": rand(64, 768, seed=72 + 2 * s, scale=1e-3)} for s in range(3)]
    params, state = R.adam_step({"lm_head": head0, "embed": head0.T}, grads[0], step_index=1)
    params, state = R.adam_step(params, grads[1], step_index=2, state=state)
    state.opt.copy_lm_state_to_embed()
    params, _ = R.adam_step(params, grads[2], step_index=3, state=state)
    c = T.parse_args(["--preset=cpu", "--n_layer=1", "--n_embd=768", "--n_head=6", "--vocab_size=64", "--adam_table=record",
                      "--adam_wd=0.005", "--untie_frac=0.1", "--steps=6", "--bf16=false", "--adam_table_lr=0.008"])
    m = T.build_model(c)
    with torch.no_grad():
        m.lm_head.weight.copy_(head0.T); m.wte.weight.copy_(head0.T)
    opts = T.build_optimizers(m, c)
    assert m.arch.schedule.untie_step == 1
    for step, g in enumerate(grads):
        for p in m.parameters(): p.grad = torch.zeros_like(p)
        m.lm_head.weight.grad, m.wte.weight.grad = g["lm_head"].T.clone(), g["embed"].clone()
        T.optimizer_step(m, opts, c, step)  # lr multiplier 1 over steps 0-2 of 6, as the record's calls at the base lr
    return max(rel(m.lm_head.weight.detach().T, params["lm_head"]), rel(m.wte.weight.detach(), params["embed"])), 1e-5


@piece("init_and_validation")
def check_init_and_validation():
    """Read from both configs: validation every 250 steps on 10,485,760 tokens, rows of 262,144; init scales of Q, K, V,
    O, c_fc (uniform, std 0.5/sqrt(d)), c_proj 0, head N(0, 0.005) -- ours measured on a built layer, the record's read."""
    rec = R.load()
    c = record_config()
    cfg_diff = float((c.val_every, c.val_tokens or 10485760, c.val_seq_len) != (rec.args.val_loss_every, rec.args.val_tokens,
                                                                                  rec.args.val_batch_size // 8))
    torch.manual_seed(0)
    small = T.build_model(T.parse_args(["--preset=speedrun", "--vocab_size=1024", "--bigram_vocab=64", "--bf16=false", "--no-compile",
                                        "--val_tokens=0"], cuda_available=True))
    a = small.blocks[0]
    std = 0.5 * 768 ** -0.5
    stds = [a.attn.qkv_w.std().item() / std, a.attn.c_proj.weight.std().item() / std, a.mlp.c_fc.weight.std().item() / std,
            small.lm_head.weight.std().item() / 0.005]
    return max([cfg_diff, a.mlp.c_proj.weight.abs().max().item()] + [abs(s - 1) for s in stds]), 0.02


@piece("bigram_hash")
def check_bigram_hash():
    tokens = torch.randint(0, 50257, (4096,), generator=torch.Generator().manual_seed(80))
    return float((T.bigram_hash(tokens[None], 377280)[0] != R.bigram_hash(tokens).long()).sum()), 0.0


# ----------------------------------------------------------------------------- part 2: the model, whole

def head_dim_order(D):
    """ours[j] = theirs[order[j]] within a head: our RoPE pairs (j, j + D/2) rotate at frequency j (j < D/4), the
    record's pairs (2j, 2j+1); the unrotated dims (ours D/4..D/2 and 3D/4..D, theirs D/2..D) in order."""
    q = D // 4
    return torch.cat([2 * torch.arange(q), torch.arange(D // 2, D // 2 + q), 2 * torch.arange(q) + 1, torch.arange(D // 2 + q, D)])


def qk_rows(order, heads=6, D=128):
    return torch.cat([h * D + order for h in range(heads)])


RESID = 1.046875  # sqrt(1.1) in bf16: the record casts its residual lambdas to bf16 in the forward; both sides get this exact value


def randomise_record(model, seed=90):
    """Every parameter of the record's model away from its init (zero-init pieces would be inert: XSA's alpha, the smear,
    the bigram table, MUDD's second layers), small enough to keep the stream sane; the residual lambdas bf16-exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.02 if p.ndim >= 2 else 0.05))
        model.resid_lambdas.fill_(RESID)
        model.post_lambdas.copy_(model.post_lambdas.bfloat16().float())


def map_record_to_ours(rec_model, ours, plan):
    """Our parameters from the record's banks (its layer_weights view), q/k rows in our head-dim order."""
    W = R.layer_weights(rec_model)
    rows = qk_rows(head_dim_order(128))
    p = dict(ours.named_parameters())
    with torch.no_grad():
        p["wte.weight"].copy_(W["embed"]); p["lm_head.weight"].copy_(W["lm_head"])
        p["arch.smear_gate"].copy_(W["smear_gate"][0]); p["arch.smear_lambda"].copy_(W["smear_lambda"])
        p["arch.skip_lambda"].copy_(W["skip_lambda"]); p["arch.bigram.weight"].copy_(W["bigram_embed"])
        ours.arch.bigram_signs.copy_(rec_model.bigram_sign_table.float())
        for t, layer in enumerate([l for l in plan if l.value_embed >= 0]):
            p[f"arch.value_tables.{t}.weight"].copy_(W[f"layers.{layer.layer}.value_embed"])
        B = R.banks(rec_model)
        p["arch.gates.scale"].copy_(B["_mudd_gate_scale"])
        for h, n in enumerate((26, 41)):
            for key in ("w1", "w2", "b2"):
                src = B[f"mudd_gate_{key}"][h]
                p[f"arch.gates.mlps.{h}.{key}"].copy_(src[:n] if key != "w1" else src)
        for h, (name, n) in enumerate((("layer", 14), ("final", 5))):
            for key in ("w1", "w2", "b2"):
                src = B[f"mudd_{key}"][h]
                p[f"arch.mudd.{name}.{key}"].copy_(src[:n] if key != "w1" else src)
        for l in plan:
            pre, i = f"blocks.{l.layer}.", l.layer
            if f"{pre}resid_lambdas" in p:
                p[f"{pre}resid_lambdas"].copy_(W[f"layers.{i}.resid_lambdas"]); p[f"{pre}post_lambdas"].copy_(W[f"layers.{i}.post_lambdas"])
            if f"{pre}ve_gate" in p:
                p[f"{pre}ve_gate"].copy_(W[f"layers.{i}.ve_gate"])
            if l.attention:
                q, k = W[f"layers.{i}.attn.q"][rows], W[f"layers.{i}.attn.k"][rows]
                p[f"{pre}attn.qkv_w"].copy_(torch.stack([q, k, W[f"layers.{i}.attn.v"]]))
                p[f"{pre}attn.c_proj.weight"].copy_(W[f"layers.{i}.attn.o"]); p[f"{pre}attn.weight_lambdas"].copy_(W[f"layers.{i}.attn.sa_lambdas"])
            p[f"{pre}mlp.c_fc.weight"].copy_(W[f"layers.{i}.mlp.c_fc"]); p[f"{pre}mlp.c_proj.weight"].copy_(W[f"layers.{i}.mlp.c_proj"])
        ours.arch.rotary.bf16_tables = True


def our_grads_as_record(ours, plan):
    """Our gradients in the record's per-layer layout (q/k rows back in its head-dim order): {record-style name: grad}."""
    back = qk_rows(head_dim_order(128)).argsort()
    g = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in ours.named_parameters()}
    out = {"embed": g["wte.weight"], "lm_head": g["lm_head.weight"], "smear_gate": g["arch.smear_gate"], "smear_lambda": g["arch.smear_lambda"],
           "skip_lambda": g["arch.skip_lambda"], "bigram_embed": g["arch.bigram.weight"]}
    for l in plan:
        pre, i = f"blocks.{l.layer}.", l.layer
        if l.attention:
            q, k, v = g[f"{pre}attn.qkv_w"]
            out.update({f"layers.{i}.attn.q": q[back], f"layers.{i}.attn.k": k[back], f"layers.{i}.attn.v": v,
                        f"layers.{i}.attn.o": g[f"{pre}attn.c_proj.weight"], f"layers.{i}.attn.sa_lambdas": g[f"{pre}attn.weight_lambdas"]})
        out[f"layers.{i}.mlp.c_fc"], out[f"layers.{i}.mlp.c_proj"] = g[f"{pre}mlp.c_fc.weight"], g[f"{pre}mlp.c_proj.weight"]
        if f"{pre}resid_lambdas" in g:
            out[f"layers.{i}.resid_lambdas"], out[f"layers.{i}.post_lambdas"] = g[f"{pre}resid_lambdas"], g[f"{pre}post_lambdas"]
        if f"{pre}ve_gate" in g:
            out[f"layers.{i}.ve_gate"] = g[f"{pre}ve_gate"]
        if l.value_embed >= 0:
            out[f"layers.{i}.value_embed"] = g[f"arch.value_tables.{l.value_embed}.weight"]
    for h in range(2):
        for key in ("w1", "w2", "b2"):
            out[f"mudd_gate_{key}.{h}"] = g[f"arch.gates.mlps.{h}.{key}"]
            out[f"mudd_{key}.{h}"] = g[f"arch.mudd.{('layer', 'final')[h]}.{key}"]
    out["_mudd_gate_scale"] = g["arch.gates.scale"]
    return out


def record_grads_as_layers(model, grads):
    """The record's gradients cut like R.layer_weights (banks by layer), plus the mudd rows: {name: grad}."""
    saved = {n: p.grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n] if grads[n] is not None else torch.zeros_like(p)
    holder = type("G", (), {})()
    for n, p in model.named_parameters():
        setattr(holder, n.replace(".weight", "_w"), p.grad)
    fake = type("M", (), {})()
    fake.qk_bank, fake.vo_bank, fake.mlp_bank, fake.scalars = (torch.nn.Parameter(grads[n]) for n in ("qk_bank", "vo_bank", "mlp_bank", "scalars"))
    fake.value_embeds, fake.ve_gate_bank = torch.nn.Parameter(grads["value_embeds"]), torch.nn.Parameter(grads["ve_gate_bank"])
    fake.resid_lambdas, fake.post_lambdas = torch.nn.Parameter(grads["resid_lambdas"]), torch.nn.Parameter(grads["post_lambdas"])
    fake.vocab_size = model.vocab_size
    for name, key in (("lm_head", "lm_head.weight"), ("embed", "embed.weight"), ("bigram_embed", "bigram_embed.weight"), ("smear_gate", "smear_gate.weight")):
        setattr(fake, name, type("W", (), {"weight": torch.nn.Parameter(grads[key])})())
    out = R.layer_weights(fake)
    for h in range(2):
        for key, n in (("w1", None), ("w2", (14, 5)[h]), ("b2", (14, 5)[h])):
            out[f"mudd_{key}.{h}"] = grads[f"mudd_{key}"][h][:n] if n else grads[f"mudd_{key}"][h]
        for key, n in (("w1", None), ("w2", (26, 41)[h]), ("b2", (26, 41)[h])):
            out[f"mudd_gate_{key}.{h}"] = grads[f"mudd_gate_{key}"][h][:n] if n else grads[f"mudd_gate_{key}"][h]
    out["_mudd_gate_scale"] = grads["_mudd_gate_scale"]
    for n, p in model.named_parameters():
        p.grad = saved[n]
    return out


def bf16_rotary_tables(self):
    """The record keeps its RoPE cos/sin tables in bf16 (Yarn.reset/apply): the whole-model pieces give ours the same."""
    freqs = torch.outer(torch.arange(self.max_len, dtype=torch.float32), self.inv_freq)
    self.cos, self.sin = (f.bfloat16().float()[None, :, None, :] for f in (freqs.cos(), freqs.sin()))


def documents_batch(n=512, starts=(0, 97, 230, 301, 420), seed=0):
    """n Shakespeare tokens cut into documents at `starts` (a BOS each), as the record's loader hands a micro-batch over:
    inputs, targets (the stream shifted by one), cum_seqlens (padded with n to 64 entries), bigram hash inputs."""
    toks = torch.from_numpy(T.read_shard(str(R.SHAKESPEARE))[10_000 + seed:10_000 + seed + n + 1].astype("int64"))
    toks[list(starts)] = T.EOT_TOKEN
    cum = torch.full((64,), n, dtype=torch.int32)
    cum[:len(starts)] = torch.tensor(starts, dtype=torch.int32)
    inputs = toks[:-1].to(torch.int32)
    return dict(inputs=inputs, targets=toks[1:], cum_seqlens=cum, bigram_inputs=R.bigram_hash(inputs, BIGRAM_ROWS))


GROUPS = {  # a part-2 piece -> the record-layout gradient names that flow through it
    "smear": ["smear_gate", "smear_lambda"], "bigram_hash_embedding": ["bigram_embed"],
    "value_embeddings": [f"layers.{i}.value_embed" for i in (1, 2, 8, 9, 10)] + [f"layers.{i}.ve_gate" for i in (1, 2, 8, 9)],
    "residual_lambdas": [f"layers.{i}.{k}" for i in range(10) for k in ("resid_lambdas", "post_lambdas")],
    "weight_lambdas": [f"layers.{i}.attn.sa_lambdas" for i in range(11) if i != 6], "skip_3_to_6": ["skip_lambda"],
    "paired_head_attention": [f"layers.{i}.attn.{w}" for i in (0, 2, 5, 9) for w in "qkvo"],
    "partial_key_offset": [f"layers.{i}.attn.k" for i in (3, 10)], "xsa": [f"layers.{i}.attn.{w}" for i in (1, 3, 4, 7) for w in "qkvo"],
    "attention_gates": [f"layers.{i}.attn.o" for i in (3, 10)], "dc_mha": [f"layers.{i}.attn.{w}" for i in (10,) for w in "qkv"],
    "saved_activation": [f"layers.7.mlp.{w}" for w in ("c_fc", "c_proj")], "mudd": [f"mudd_{k}.{h}" for k in ("w1", "w2", "b2") for h in (0, 1)],
    "mudd_gates": [f"mudd_gate_{k}.{h}" for k in ("w1", "w2", "b2") for h in (0, 1)] + ["_mudd_gate_scale"],
    "backout": ["mudd_b2.1"], "embedding_and_head": ["embed", "lm_head"],
    "mlp": [f"layers.{i}.mlp.{w}" for i in range(11) for w in ("c_fc", "c_proj")],
}


class Whole:
    """The whole-model comparison, made once and shared by its pieces: both models from the record's randomised
    weights, a 512-token batch of 5 documents; at schedule step 0 (MTP + prefix losses, windows 1/3, no YaRN yet) the
    loss; at step 900 (stage 3: windows 5/11, YaRN applied twice, no MTP: so the record's CE kernel quirk does not
    touch the gradients) the loss and every gradient; the validation loss at the final step (20-block window without
    YaRN); and 3 steps of the full recipe from step 845 (Adam on 845 and 847, the stage change, YaRN and the untie at 847)."""
    cache = None

    @classmethod
    def get(cls):
        if cls.cache is None:
            T.keep_freed_memory()  # its GB-sized tensors, freed and made again, page-faulted in each time: a third of
            try:                   # its time was the kernel's (sys 63 s of 194; 28 of 162 with the heap kept, 13.8 GB peak)
                cls.cache = cls()
            finally:
                T.give_back_freed_memory()  # what it kept, back for a test worker beside it
        return cls.cache

    def __init__(self):
        """Memory: the two 351M-parameter sides never coexist with their optimizer state, and only what the pieces read
        is kept (per-name gradient differences, not the gradients): ~21 GB at peak before, which left too little to a
        second test worker beside it."""
        t0 = time.time()
        real_tables = T.Rotary.tables
        T.Rotary.tables = bf16_rotary_tables
        try:
            torch.manual_seed(0)
            rec = R.build_model(seed=0, bigram_rows=BIGRAM_ROWS, max_seq_len=4096)
            randomise_record(rec)
            c = record_config("--seq_len=49152")
            torch.manual_seed(0)
            ours = T.build_model(c)  # from the record's start, before the record trains
            self.plan = ours.arch.plan
            map_record_to_ours(rec, ours, self.plan)
            self.theirs_start_as_layers = {n: t.clone() for n, t in R.layer_weights(rec).items()}
            batch = documents_batch()
            args = (batch["inputs"], batch["targets"], batch["cum_seqlens"], batch["bigram_inputs"])
            loss0 = R.forward_backward(rec, *args, schedule_step=0)["loss_sum"]
            r900 = R.forward_backward(rec, *args, schedule_step=900)
            theirs_eval = R.forward_eval(rec, *args)
            theirs_grads = record_grads_as_layers(rec, {n: g / r900["grad_scale"] for n, g in r900["grads"].items()})
            self.theirs = dict(loss0=loss0, loss900=r900["loss_sum"], eval=theirs_eval.mean().item())
            del r900
            steps = (845, 846, 847)
            batches = [documents_batch(starts=(0, 150, 333), seed=1000 * k) for k in range(3)]
            rt = R.train_steps(rec, [(b["inputs"], b["targets"], b["cum_seqlens"], b["bigram_inputs"]) for b in batches], n=3,
                               start_step=845, pe_dtype=torch.float32)
            self.theirs_after = {n: t.clone() for n, t in R.layer_weights(rec).items()}
            self.theirs_steps = rt["losses"]
            del rt, rec
            idx, tgt = batch["inputs"].long()[None], batch["targets"][None]
            ours.train()
            ours.arch.before_step(0)
            self.ours = dict(loss0=ours(idx, tgt, reduction="sum").item())
            ours.arch.before_step(900)
            loss = ours(idx, tgt, reduction="sum")
            loss.backward()
            self.ours["loss900"] = loss.item()
            ours_grads = our_grads_as_record(ours, self.plan)
            self.grad_rel = {n: rel(ours_grads[n], g) for n, g in theirs_grads.items() if n in ours_grads}  # what the pieces read
            self.unused_grad = max((g.abs().max().item() for n, g in theirs_grads.items() if n not in ours_grads), default=0.0)
            del ours_grads, theirs_grads
            ours.zero_grad(set_to_none=True)
            ours.eval()
            ours.arch.before_step(c.steps)
            with torch.no_grad():
                self.ours["eval"] = ours(idx, tgt).item()
            ours.train()
            opts = T.build_optimizers(ours, c)
            ours.arch.before_step(845)  # the record's TrainingManager starts fresh at 845 too (momentum buffers at 0)
            self.ours_steps = []
            for step, b in zip(steps, batches):
                ours.arch.before_step(step)
                loss = ours(b["inputs"].long()[None], b["targets"][None], reduction="sum") * (1 / 8)  # the record's sum x grad_scale
                loss.backward()
                T.optimizer_step(ours, opts, c, step)
                self.ours_steps.append(loss.item())
            del opts
            self.ours_after = our_weights_as_record(ours, self.plan)
        finally:
            T.Rotary.tables = real_tables
        self.seconds = time.time() - t0


def our_weights_as_record(ours, plan):
    for n, p in ours.named_parameters():
        p.grad = p.detach().clone()  # our_grads_as_record reads .grad: here the weights themselves
    out = our_grads_as_record(ours, plan)
    for p in ours.parameters(): p.grad = None
    return out


def group_diff(names, w):
    """The largest relative gradient difference over a group's record-layout names."""
    return max(w.grad_rel[n] for n in names)


for _name, _names in GROUPS.items():
    def _check(names=_names, tol=5e-3 if _name == "residual_lambdas" else 1e-4):
        w = Whole.get()
        return group_diff(names, w), tol
    _check.__doc__ = f"gradients through it at step 900: {', '.join(_names[:4])}{' ...' if len(_names) > 4 else ''}"
    PIECES[_name] = _check


@piece("layer_plan")
def check_layer_plan():
    """Our plan from --preset=speedrun's lists against the record's hard-coded ones (L1240-1262, L1495, L1525)."""
    plan = T.layer_plan(record_config())
    want = dict(attention=[i != 6 for i in range(11)], long_window=[i in (3, 10) for i in range(11)], paired=[i in (0, 2, 5, 9) for i in range(11)],
                xsa=[i in (1, 3, 4, 7) for i in range(11)], attn_gate=[i in (3, 10) for i in range(11)], dc=[i == 10 for i in range(11)],
                key_offset=[i in (3, 10) for i in range(11)], reads_saved=[i >= 8 for i in range(11)], saves=[i in (3, 7) for i in range(11)],
                value_embed=[{1: 0, 2: 1, 8: 2, 9: 3, 10: 4}.get(i, -1) for i in range(11)])
    return float(sum([getattr(p, k) for p in plan] != v for k, v in want.items())), 0.0


@piece("whole_model_loss")
def check_whole_loss():
    """The training loss (sum over the 512 tokens) at step 0 (with MTP and the prefix loss) and at step 900."""
    w = Whole.get()
    return max(abs(w.ours[k] - w.theirs[k]) / abs(w.theirs[k]) for k in ("loss0", "loss900")), 2e-4


@piece("whole_model_gradients")
def check_whole_grads():
    """Every gradient (ours mapped to the record's layout); the record's parameters ours does not have (its layer 10
    lambdas and layer 6's attention ones, used by nothing) must have none."""
    w = Whole.get()
    lambdas = set(GROUPS["residual_lambdas"])  # the record's own bf16 gradients: their line says so
    return max(group_diff(sorted(n for n in w.grad_rel if n not in lambdas), w), w.unused_grad), 1e-4


@piece("whole_model_validation")
def check_whole_eval():
    """The validation loss at the final step: plain CE of the soft-capped logits, the 20-block long window, no YaRN for it."""
    w = Whole.get()
    return abs(w.ours["eval"] - w.theirs["eval"]) / w.theirs["eval"], 2e-4


@piece("whole_model_3_steps_loss")
def check_whole_steps_loss():
    """3 steps of the full recipe from step 845 (Adam on 845 and 847; the stage change, YaRN and the untie at 847): each
    step's loss, relative. Tolerance 3e-3, not float rounding: see whole_model_3_steps_weights."""
    w = Whole.get()
    return max(abs(a - b) / abs(b) for a, b in zip(w.ours_steps, w.theirs_steps)), 3e-3


def muon_matrix(name):
    return ".attn." in name and name[-1] in "qkvo" or ".mlp." in name


@piece("whole_model_3_steps_matrices")
def check_whole_steps_matrices():
    """After the 3 steps, Muon's matrices (every layer's q, k, v, o, c_fc, c_proj): their 3-step change against the
    record's, ||ours - theirs|| / ||theirs|| (Frobenius). Not float rounding: steps 2 and 3 see gradients through the
    tables Adam moved on step 1, where near-zero gradients take full-lr steps of either sign (whole_model_3_steps_tables),
    and orthogonalisation spreads a small gradient difference over the whole update. Measured: median 1.7%, worst 3.7%
    (layer 10's K), cosine >= 0.9993, norms within 0.11%; a Muon lr 10% off would be 10%. Tolerance 5%."""
    w = Whole.get()
    start = w.theirs_start_as_layers
    def fro(n):
        ours, theirs = (w.ours_after[n] - start[n]).double(), (w.theirs_after[n] - start[n]).double()
        return ((ours - theirs).norm() / theirs.norm()).item()
    return max(fro(n) for n in w.theirs_after if muon_matrix(n)), 5e-2


@piece("whole_model_3_steps_tables")
def check_whole_steps_tables():
    """After the 3 steps, Adam's parameters (embeddings, head, value tables, bigram, gates, lambdas): the share of their
    elements whose change differs from the record's by more than 10% of that tensor's largest change. Not max |diff|:
    Adam's first steps are near sign(g), so an element whose gradient is float-rounding noise around 0 takes a full lr
    step of either sign, and its token's logits move with it. Measured: after one step 257 of the head's 38.6M elements
    and 1 of a value table's; after 3, 0.15% of the head's, 0.06% of the bigram table's, <0.004% of each value table's,
    3 gate elements, no matrix element. Tolerance 0.5% of the elements."""
    w = Whole.get()
    names = [n for n in w.theirs_after if n in w.ours_after and not muon_matrix(n)]
    start = w.theirs_start_as_layers
    off = sum(int(((w.ours_after[n] - w.theirs_after[n]).abs() > 0.1 * (w.theirs_after[n] - start[n]).abs().max()).sum()) for n in names)
    return off / sum(w.theirs_after[n].numel() for n in names), 5e-3


# ----------------------------------------------------------------------------- main

MODEL_PIECES = set(GROUPS) | {"whole_model_loss", "whole_model_gradients", "whole_model_validation", "whole_model_3_steps_loss",
                              "whole_model_3_steps_matrices", "whole_model_3_steps_tables"}


def run(pieces=None, skip_model=False, out=print) -> int:
    names = [n for n in PIECES if (pieces is None or n in pieces) and not (skip_model and n in MODEL_PIECES)]
    ok = 0
    for name in names:
        t0 = time.time()
        try:
            diff, tol = PIECES[name]()
            good = diff <= tol
            line = f"{name}: max |diff| {diff:.3g} (tolerance {tol:g}) {'ok' if good else 'FAIL'}"
        except Exception as e:  # a piece that cannot run is a FAIL with its reason, and the others still run
            good, line = False, f"{name}: FAIL ({type(e).__name__}: {e})"
        ok += good
        out(f"{line}  [{time.time() - t0:.1f}s]")
    out(f"peer check: {ok} of {len(names)} pieces match")
    return 0 if ok == len(names) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", default=None, help="the record's folder (or a modded-nanogpt checkout)")
    ap.add_argument("--pieces", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--skip_model", action="store_true", help="leave out the whole-model pieces (~3-5 minutes)")
    a = ap.parse_args(argv)
    if a.path:
        os.environ["PEER_RECORD"] = str(Path(a.path).resolve())
    R.load()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))  # 1 beside other jobs
    return run(set(a.pieces.split(",")) if a.pieces else None, a.skip_model)


if __name__ == "__main__":
    sys.exit(main())
