"""Every architecture variant and hypothesis flag trains for real through the CLI's parse and train loop (in this
process: a subprocess's torch start-up was most of each run; CPU, fp32): no NaN, the val loss falls, and the
validation lines carry the variant's fields.

9 runs of 30 steps, ~5 s in all. The hypothesis flags are grouped several to a run, each flag in exactly one run (the flag-by-flag equations are
unit-tested in test_ngpt.py / test_angpt_dyt.py); a failing run names its flags. The data is Shakespeare in its 1,023
most frequent tokens (conftest's frequent_token_shards): a 50k-row head would be most of each run's cost."""
import pytest

import train_gpt as T
from conftest import TINY, frequent_token_files, step_lines, train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [*TINY, "--steps=30", "--val_every=10", "--val_tokens=1024", "--sample_tokens=0"]  # on the shipped Shakespeare
NGPT_FIELDS = ("hidden_norm", "alpha_attn", "alpha_mlp")

RUNS = {
    "ngpt": ["--arch=ngpt"],
    # seed 001/003 hypotheses: every flag appears in one run
    "ngpt_muon_alpha015_linear_vocab10_radius_gated": [
        "--arch=ngpt", "--optimizer=muon", "--ngpt_alpha_init=0.15", "--ngpt_alpha_schedule=linear", "--ngpt_logit_scale=10",
        "--ngpt_logit_scale_mode=vocab", "--ngpt_radius=0.95", "--ngpt_gated_residual"],
    "ngpt_asym_upsidedown_scalaralpha_scalar10_proj7": [
        "--arch=ngpt", "--ngpt_alpha_attn_init=0.2", "--ngpt_alpha_mlp_init=0.35", "--ngpt_alpha_schedule=upsidedown_u",
        "--ngpt_scalar_alpha", "--ngpt_logit_scale=10", "--ngpt_logit_scale_mode=scalar", "--ngpt_proj_every=7"],
    "ngpt_downsideup_fixed10_noqknorm_add": [
        "--arch=ngpt", "--ngpt_alpha_schedule=downsideup_u", "--ngpt_logit_scale=10", "--ngpt_logit_scale_mode=fixed",
        "--no-ngpt_qk_norm", "--ngpt_residual=add"],
    "angpt": ["--arch=angpt"],
    "angpt_norm_output": ["--arch=angpt", "--angpt_norm=output"],
    "angpt_norm_none": ["--arch=angpt", "--angpt_norm=none"],
    "dyt_embedscale": ["--norm=dyt", "--dyt_embed_scale"],
    "normskip_qkv16_mlpskip": ["--norm_skip_tol=0.1", "--qkv_head_dim=16", "--mlp_skip_threshold=0.15"],
}



@pytest.mark.parametrize("name", list(RUNS))
def test_variant_trains(name, tmp_path, frequent_token_shards, capsys):
    flags = RUNS[name]
    config = T.parse_args([*RUN, *frequent_token_files(frequent_token_shards), *flags, f"--log_dir={tmp_path}/logs",
                           f"--run_name={name}", f"--checkpoint_dir={tmp_path}/ck"])
    rc = train_in_process(config)
    out, err = capsys.readouterr()
    where = f"{' '.join(flags)}\n--- stdout tail\n{out[-3000:]}\n--- stderr tail\n{err[-3000:]}"
    assert rc == 0, where
    lines = step_lines(out)
    vals = [(s, loss, fields) for s, (loss, fields) in lines["val"].items()]
    assert [s for s, _, _ in vals] == [0, 10, 20, 30], where
    losses = [v for _, v, _ in vals]
    assert all(v == v and v < 20 for v in losses), f"NaN/inf val loss {losses}\n{where}"
    train = [lines["train"][s] for s in sorted(lines["train"])]
    assert sorted(lines["train"]) == list(range(1, 31)), where
    assert all(abs(x) < 20 for x in train), f"train losses {train}\n{where}"  # NaN fails abs(x) < 20
    assert losses[-1] < losses[0] - 0.01, f"val loss did not fall: {losses}\n{where}"
    # the log file holds the same lines
    logs = list((tmp_path / "logs").glob(f"{name}_*.txt"))
    assert len(logs) == 1 and f"step:30/30 val_loss:{losses[-1]:.4f}" in logs[0].read_text()

    arch = next((f.split("=")[1] for f in flags if f.startswith("--arch=")), "gpt")
    expect = set(NGPT_FIELDS) if arch in ("ngpt", "angpt") else set()
    if "--norm_skip_tol=0.1" in flags: expect.add("norm_skip_frac")
    if "--mlp_skip_threshold=0.15" in flags: expect.add("mlp_skip_frac")
    if "--ngpt_gated_residual" in flags: expect |= {"gate_attn", "gate_mlp"}
    for step, _, fields in vals:
        missing = expect - set(fields)
        assert not missing, f"step {step}: validation line lacks {missing}: {fields}"
        for k in expect:
            assert 0 <= float(fields[k]) <= 10, (step, k, fields[k])
        if arch == "ngpt":
            assert float(fields["hidden_norm"]) == pytest.approx(1.0, abs=1e-3), (step, fields)
        if "--norm_skip_tol=0.1" not in flags:
            assert "norm_skip_frac" not in fields
        if "--mlp_skip_threshold=0.15" not in flags:
            assert "mlp_skip_frac" not in fields

    first = vals[0][2]
    if name == "ngpt":
        assert float(first["alpha_attn"]) == pytest.approx(0.05, abs=1e-4)
    if name.startswith("ngpt_asym"):  # L=2: upsidedown_u multipliers are 0.7 at both ends
        assert float(first["alpha_attn"]) == pytest.approx(0.2 * 0.7, abs=1e-4)
        assert float(first["alpha_mlp"]) == pytest.approx(0.35 * 0.7, abs=1e-4)
    if name.startswith("ngpt_muon_alpha015"):  # linear over L=2: 0.7 and 1.3, mean 1.0
        assert float(first["alpha_attn"]) == pytest.approx(0.15, abs=1e-4)
        assert float(first["gate_attn"]) == pytest.approx(0.5, abs=1e-4)
    if "--ngpt_logit_scale=10" in flags:
        assert float(first["s_z"]) == pytest.approx(10.0, abs=1e-3)
        if "--ngpt_logit_scale_mode=fixed" in flags:
            assert all(float(f["s_z"]) == pytest.approx(10.0, abs=1e-4) for _, _, f in vals)
