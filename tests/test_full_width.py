"""Every architecture trains at the width it is built for: 768 wide, d_ff 3072, 6 heads x 128 (the speedrun's
block), 2 layers, 8 x 32 tokens a step, 20 steps (GPT 10) on the CPU in fp32 (this CPU has no bf16 instructions:
emulated bf16 tripled the cost; the width-dependent behaviour is the same) through the real train loop. A behaviour checked only at width 128
is unchecked at 768: anGPT's first activation factor (nu on unit-norm inputs, 45 for ReLU^2 at this width)
trained fine at 128 and diverged here (../shared/gpu/2026-11-26_h200).

The vocabulary is the 1,023 most frequent GPT-2 tokens of the Shakespeare train split (every other token folded
into one id), so the 50k head does not dominate the cost and the data is still language. Checks per run: no
NaN, no step's train loss above the first step's, a clear fall; for anGPT the hidden-state norm (logged at each
validation, here every step) stays within [0.5, 2], the paper's premise that the nu factors keep it near 1, where
the stream is kept (--angpt_norm=output); under the default (input) it does not hold and the bound is 4.

Two layers hide what depth does: anGPT with nu factors alone (--angpt_norm=none) passes at 2 layers and spikes at the speedrun's 12,
where each MLP's excess output norm compounds through the next (records/angpt_depth). So anGPT also trains here
at the full 12 x 768, 6 steps of 8 x 64 tokens."""
import numpy as np
import pytest

import train_gpt as T
from conftest import frequent_token_files, step_lines, train_in_process

pytestmark = pytest.mark.slow

# GPT's rows show it runs and learns at 768 wide, no more: at 2 layers x 10 steps the loss is the embeddings' and
# head's (with Muon's updates zeroed for every matrix >= 512 wide, each step's loss moved by < 0.16), and neither a
# width-dependent Muon lr (x fan_in/128) nor a 6x MLP pre-activation scale made them fail. So they take Adam (a tenth
# of a Muon step's cost at 768 x 3072 here); Muon at the record's shape is checked against the record's own code by
# tests/peer_check.py (the whole 11 x 768 model, 3 steps) and stepped at 12 x 768 by speedrun_2024's full-size test
RUNS = {  # name -> flags; every --arch with both MLP kinds, and DyT (on GPT's SwiGLU row)
    "gpt_relu2": ["--arch=gpt", "--mlp=relu2", "--optimizer=adam"],
    "gpt_swiglu_dyt": ["--arch=gpt", "--mlp=swiglu", "--norm=dyt", "--optimizer=adam"],
    "ngpt_relu2": ["--arch=ngpt", "--mlp=relu2"],
    "ngpt_swiglu": ["--arch=ngpt", "--mlp=swiglu"],
    "angpt_relu2": ["--arch=angpt", "--mlp=relu2"],
    "angpt_swiglu": ["--arch=angpt", "--mlp=swiglu"],
    "angpt_swiglu_norm_output": ["--arch=angpt", "--mlp=swiglu", "--angpt_norm=output"],
}


def train_full_width(d, name, flags, steps=20, seq_len=32):
    a = T.parse_args(["--preset=cpu", "--n_layer=2", "--n_embd=768", "--n_head=6", "--mlp_ratio=4",
                      f"--seq_len={seq_len}", "--batch_size=8", "--device_batch_size=8", f"--steps={steps}", "--val_every=1",
                      "--val_tokens=256", "--sample_tokens=0", "--kernels=torch", "--bf16=false",
                      *frequent_token_files(d),
                      f"--log_dir={d}/logs", f"--run_name={name}", f"--checkpoint_dir={d}/ck"] + flags)
    assert train_in_process(a) == 0
    (log,) = (d / "logs").glob(f"{name}_*.txt")
    lines = step_lines(log.read_text())
    train = [loss for _, loss in sorted(lines["train"].items())]
    hidden = [float(f["hidden_norm"]) for _, (_, f) in sorted(lines["val"].items()) if "hidden_norm" in f]
    return a, train, hidden


@pytest.mark.parametrize("name", list(RUNS))
def test_trains_at_full_width(frequent_token_shards, name):
    steps = 10 if name.startswith("gpt") else 20
    a, train, hidden = train_full_width(frequent_token_shards, name, RUNS[name], steps=steps)
    assert (a.n_embd, a.n_embd // a.n_head, int(a.mlp_ratio * a.n_embd)) == (768, 128, 3072)
    assert len(train) == steps and all(np.isfinite(train)), f"{name}: train losses {train}"
    assert max(train[1:]) <= train[0], f"{name}: a step's loss rose above the first ({train[0]:.3f}): {train}"
    assert np.mean(train[-3:]) < train[0] - 0.5, f"{name}: no clear fall in {steps} steps: {train}"
    if a.arch == "angpt":
        assert len(hidden) == steps + 1, hidden
        # the paper's premise (nu factors keep the stream's norm near 1) holds where the stream itself is kept:
        # under --angpt_norm=output (and none, at this depth). Under the default (input) the sub-layers see
        # normalised inputs and nothing holds the stream: it grows past 2 here with SwiGLU (README, anGPT)
        top = 4.0 if a.angpt_norm == "input" else 2.0
        assert 0.5 <= min(hidden) and max(hidden) <= top, \
            f"{name}: hidden-state norm left [0.5, {top}] (--angpt_norm={a.angpt_norm}): {hidden}"


@pytest.mark.parametrize("mlp", ["relu2"])  # the record's MLP; SwiGLU at 12 layers behaves alike (100 s more)
def test_angpt_trains_at_full_depth(frequent_token_shards, mlp):
    """12 x 768 anGPT, 6 steps: no NaN, no step above the first, a clear fall, the stream's norm bounded. With
    --angpt_norm=none this fails: the loss spikes at step 2 (129.9 against 7.16) and the norm reaches 11.7. With the
    exact norms the stream's norm still grows (to ~4 in these 6 steps: the MLP outputs outgrow their nu factors after
    the first Adam steps), so the bound is loose: it catches the compounding growth, not the paper's premise of norm ~1."""
    name = f"angpt_{mlp}_12"
    a, train, hidden = train_full_width(frequent_token_shards, name, ["--arch=angpt", f"--mlp={mlp}", "--n_layer=12"], steps=6,
                                        seq_len=64)  # at 8 x 32 tokens the right code spikes too (7.63 over 7.20 at step 2)
    assert a.n_layer == 12 and a.angpt_norm == "input"
    assert len(train) == 6 and all(np.isfinite(train)), f"{name}: train losses {train}"
    assert max(train[1:]) <= train[0], f"{name}: a step's loss rose above the first ({train[0]:.3f}): {train}"
    assert np.mean(train[-3:]) < train[0] - 0.5, f"{name}: no clear fall in 6 steps: {train}"
    assert len(hidden) == 7 and max(hidden) <= 10.0, f"{name}: the stream's norm grew past 10: {hidden}"
