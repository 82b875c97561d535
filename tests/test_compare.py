"""records/compare.py: log parsing, grouping, statistics (checked against scipy), table, plot, CLI."""
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "records"))
import compare  # noqa: E402

SEP = "=" * 100
# a fake train_gpt.py source: decoy lines that look like log lines must not be parsed
SOURCE = '''"""train_gpt.py -- decoy source"""
import os
step:5/10 val_loss:0.0001 train_time:1ms step_avg:1.00ms
config: {"arch": "decoy"}
peak memory allocated: 1 MiB reserved: 1 MiB
print(f"step:{step}/{args.steps} val_loss:{val_loss:.4f} train_time:{t:.0f}ms")
print("=" * 100)
'''

def make_config(seed=0, run_name="run", **over):
    cfg = dict(arch="gpt", seed=seed, run_name=run_name, run_id=f"{run_name}_{uuid.uuid4().hex[:8]}",
               log_dir="logs", steps=100, val_every=25, val_tokens=65536, preset="cpu",
               train_files="data/shakespeare/*_train_*.bin", val_files="data/shakespeare/*_val_*.bin",
               save_every=0, resume="", kernels="torch", n_layer=4, n_embd=64, ngpt_alpha_init=0.05)
    cfg.update(over)
    return cfg

def log_text(final, steps=100, val_every=25, step_ms=10.0, config=None, complete=True, extra=True, trailer=True):
    """The body of a log in train_gpt.py's format (no source header); val loss decays to `final`. complete=False:
    the run stopped at 3/4 of its steps (no last val line); trailer=False: no 'peak memory' line after it."""
    loss = lambda s: final + (10.8 - final) * (1 - s / steps) ** 2
    out = ["torch 2.13.0 python 3.11.7 device cpu world_size 1"]
    if config is not None:
        out.append("config: " + json.dumps(config))
    for s in range(steps + 1 if complete else steps * 3 // 4 + 1):
        if s % val_every == 0 or s == steps:
            x = " hidden_norm:1.0000 alpha_attn:0.0500" if extra else ""
            out.append(f"step:{s}/{steps} val_loss:{loss(s):.4f} train_time:{s * step_ms:.0f}ms "
                       f"step_avg:{step_ms if s else 0:.2f}ms{x}")
        if s < steps and s % 10 == 0:
            out.append(f"step:{s + 1}/{steps} train_loss:{loss(s) + 0.1:.4f} train_time:{(s + 1) * step_ms:.0f}ms "
                       f"step_avg:{step_ms:.2f}ms tok/s:5043")
        if s == steps // 2:
            out += ["nu_act: 3.74", "sample: To be or not to be"]
    if complete and trailer:
        out.append("peak memory allocated: 1234 MiB reserved: 1300 MiB")
    return "\n".join(out) + "\n"

def write_log(path, final, seed=0, config_over=None, **kw):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = make_config(seed=seed, run_name=path.stem, **(config_over or {}))
    path.write_text(SOURCE + SEP + "\n" + log_text(final, config=cfg, **kw))
    return path

def write_group(folder, finals, prefix, config_over=None, **kw):
    return [write_log(Path(folder) / f"{prefix}_s{i}.txt", f, seed=i, config_over=config_over, **kw)
            for i, f in enumerate(finals)]

MODDED = SOURCE + SEP + """
Running Python 3.12.7 (main, Jan 17 2025) [GCC 13.2.0]
Running PyTorch 2.7.0.dev20250110+cu126 compiled for CUDA 12.6
Thu Jan 16 18:20:05 2025
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.127.05             Driver Version: 550.127.05     CUDA Version: 12.6     |
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:61:00.0 Off |                    0 |
+-----------------------------------------------------------------------------------------+
""" + SEP + """
step:0/1750 val_loss:10.8258 train_time:0ms step_avg:0.02ms
step:1/1750 train_time:22361ms step_avg:22360.81ms
step:2/1750 train_time:22453ms step_avg:11226.58ms
step:125/1750 val_loss:4.3786 train_time:12345ms step_avg:98.76ms
step:1750/1750 val_loss:3.2787 train_time:175311ms step_avg:100.75ms
peak memory allocated: 26233 MiB reserved: 27502 MiB
"""

# -----------------------------------------------------------------------------
# parsing

def test_parse_our_format_ignores_decoys_in_source(tmp_path, capsys):
    p = write_log(tmp_path / "a.txt", 3.3, step_ms=12.0)
    r = compare.parse_log(p)
    assert r.config["arch"] == "gpt" and r.config["seed"] == 0  # not the decoy config
    assert not r.incomplete and r.total_steps == 100
    assert sorted(r.val) == [0, 25, 50, 75, 100]
    assert r.final_val_loss == pytest.approx(3.3)
    assert r.val[100]["hidden_norm"] == 1.0 and r.train[1]["tok/s"] == 5043
    assert r.step_ms == pytest.approx(12.0)
    assert r.reach(10.0)[0] == 25 and r.reach(1.0) is None
    assert "warning" not in capsys.readouterr().err

def test_parse_modded_nanogpt_log(tmp_path):
    folder = tmp_path / "2025-01-16_Sub3Speedrun"
    folder.mkdir()
    for i in range(2):
        (folder / f"{uuid.uuid4()}.txt").write_text(MODDED)
    runs = compare.load_runs([folder])
    assert len(runs) == 2 and runs[0].config is None and not runs[0].incomplete
    assert runs[0].final_val_loss == pytest.approx(3.2787)
    assert runs[0].step_ms == pytest.approx(175311 / 1750)
    groups = compare.group_runs(runs)  # uuid names -> one group named after the folder
    assert [g.name for g in groups] == ["2025-01-16_Sub3Speedrun"] and len(groups[0].runs) == 2
    (folder / "ngpt_0123abcd.txt").write_text(MODDED)  # a named run still belongs to its folder's record
    groups = compare.group_runs(compare.load_runs([folder]))
    assert [(g.name, len(g.runs)) for g in groups] == [("2025-01-16_Sub3Speedrun", 3)]
    by_stem = compare.group_runs(compare.load_runs([folder]), group_by=["stem"])  # the old rule, on request
    assert [g.name for g in by_stem] == ["2025-01-16_Sub3Speedrun", "ngpt"]  # stem minus its id; uuid -> folder

def test_parse_truncated_log(tmp_path, capsys):
    p = tmp_path / "t.txt"
    text = SOURCE + SEP + "\n" + log_text(3.5, config=make_config(), trailer=False)
    p.write_text(text + "step:95/100 val_loss:3.9")  # last line cut mid-way: not trusted
    r = compare.parse_log(p)  # it reached its last step: complete, without the 'peak memory' trailer
    assert not r.incomplete and "warning" not in capsys.readouterr().err
    assert max(r.val) == 100 and 95 not in r.val and r.final_val_loss == pytest.approx(3.5)
    p.write_text(text[:text.index("step:100/100 val_loss")] + "step:100/100 val_loss:3.5")  # the last val line cut
    r = compare.parse_log(p)
    assert r.incomplete and "incomplete" in capsys.readouterr().err and max(r.val) == 75
    cut = text[:text.index("step:75/100 val_loss")] + "step:75/100 val_loss:4.6"
    p.write_text(cut)
    r = compare.parse_log(p)
    assert r.incomplete and max(r.val) == 50

def test_foreign_and_valless_files_are_skipped(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("just some notes\nstep: one\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "noval.txt").write_text(SEP + "\nstep:1/10 train_loss:5.0 train_time:10ms step_avg:10.00ms\n")
    write_log(tmp_path / "ok.txt", 3.3)
    runs = compare.load_runs([tmp_path])
    assert [Path(r.path).name for r in runs] == ["ok.txt"]
    err = capsys.readouterr().err
    assert "notes.txt" in err and "empty.txt" in err and "noval.txt" in err and "no val_loss" in err

def test_resumed_log_later_lines_win(tmp_path):
    cfg = make_config()
    first = log_text(4.0, config=cfg, complete=False).split("\n")
    first = "\n".join(first[:first.index(next(l for l in first if l.startswith("step:51/")))]) + "\n"
    resumed = ("resumed from checkpoints/x.pt at step 50\n"
               "step:50/100 val_loss:5.5555 train_time:500ms step_avg:10.00ms\n" + log_text(3.0, config=cfg))
    p = tmp_path / "r.txt"
    p.write_text(SOURCE + SEP + "\n" + first + resumed)
    r = compare.parse_log(p)
    assert r.val[50]["val_loss"] == pytest.approx(3.0 + 7.8 * 0.25)  # the later line wins
    assert r.final_val_loss == pytest.approx(3.0) and not r.incomplete
    # a resumed run that re-dumps the whole header (source with decoys, separator, config) into the log
    p.write_text(SOURCE + SEP + "\n" + first + SOURCE + SEP + "\n" + resumed)
    r = compare.parse_log(p)
    assert r.config["arch"] == "gpt" and r.final_val_loss == pytest.approx(3.0)
    assert 5 not in r.val  # the decoy step:5 in the re-dumped source was skipped

# -----------------------------------------------------------------------------
# grouping

def test_grouping_names_and_baseline(tmp_path):
    write_group(tmp_path, [3.30, 3.31, 3.29], "gpt")
    write_group(tmp_path, [3.20, 3.22, 3.21], "ngpt", dict(arch="ngpt", ngpt_alpha_init=0.15))
    write_group(tmp_path, [3.25, 3.26], "ngpt05", dict(arch="ngpt"))
    groups = compare.group_runs(compare.load_runs([tmp_path]))  # seeds/run names/run ids differ: ignored
    names = sorted(g.name for g in groups)
    assert names == ["arch=ngpt", "arch=ngpt ngpt_alpha_init=0.15", "baseline"]
    assert {len(g.runs) for g in groups} == {2, 3}
    assert compare.pick_baseline(groups).name == "baseline"
    assert compare.pick_baseline(groups, "0.15").name == "arch=ngpt ngpt_alpha_init=0.15"
    assert compare.pick_baseline(groups, "arch=ngpt").name == "arch=ngpt"  # exact name before substring
    with pytest.raises(SystemExit):
        compare.pick_baseline(groups, "nonexistent")
    by = compare.group_runs(compare.load_runs([tmp_path]), group_by=["arch"])
    assert sorted((g.name, len(g.runs)) for g in by) == [("arch=ngpt", 5), ("baseline", 3)]

def modded(final):
    return MODDED.replace("val_loss:3.2787", f"val_loss:{final:.4f}")

def test_foreign_logs_group_by_folder_not_by_file_name(tmp_path):
    """modded-nanogpt keeps one folder per record: run0.txt of a and run0.txt of b are different records,
    and uuid-named runs of one folder are one record, not groups of one."""
    for folder, finals in (("a", [3.28, 3.29, 3.27]), ("b", [3.25, 3.26])):
        (tmp_path / folder).mkdir()
        for i, f in enumerate(finals[:2]):
            (tmp_path / folder / f"run{i}.txt").write_text(modded(f))
        for f in finals[2:]:
            (tmp_path / folder / f"{uuid.uuid4()}.txt").write_text(modded(f))
    runs = compare.load_runs([tmp_path / "a", tmp_path / "b"])
    groups = compare.group_runs(runs)
    assert [(g.name, len(g.runs), g.config) for g in groups] == [("a", 3, None), ("b", 2, None)]
    rows = {r["group"]: r for r in compare.compare(groups, baseline="a")}
    assert rows["b"]["delta"] == pytest.approx(np.mean([3.25, 3.26]) - np.mean([3.28, 3.29, 3.27]))
    assert sum(len(g.runs) for g in groups) == 5  # every run is in the table
    stems = compare.group_runs(runs, group_by=["stem"])  # the file-name rule, on request
    assert sorted((g.name, len(g.runs)) for g in stems) == [("a", 1), ("run0", 2), ("run1", 2)]
    assert sorted(g.name for g in compare.group_runs(runs, group_by=["folder", "stem"])) == [
        "a/a", "a/run0", "a/run1", "b/run0", "b/run1"]  # a uuid's stem is its folder
    # two record folders of one name under different parents stay apart, named with their parent
    (tmp_path / "x" / "logs").mkdir(parents=True)
    (tmp_path / "y" / "logs").mkdir(parents=True)
    (tmp_path / "x" / "logs" / "r.txt").write_text(modded(3.3))
    (tmp_path / "y" / "logs" / "r.txt").write_text(modded(3.2))
    same = compare.group_runs(compare.load_runs([tmp_path / "x", tmp_path / "y"]))
    assert [g.name for g in same] == [str(Path("x/logs")), str(Path("y/logs"))]

def test_mixed_logs_and_pseudo_keys(tmp_path):
    """Our logs (config line) keep config grouping beside a folder of foreign logs; `folder` also works as a
    --group_by key on our logs, alone or with config keys."""
    write_group(tmp_path / "ours", [3.30, 3.31], "gpt")
    write_group(tmp_path / "ours", [3.20, 3.21], "ngpt", dict(arch="ngpt"))
    write_group(tmp_path / "ours2", [3.32, 3.33], "gpt")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / f"{uuid.uuid4()}.txt").write_text(MODDED)
    runs = compare.load_runs([tmp_path])
    assert sorted((g.name, len(g.runs)) for g in compare.group_runs(runs)) == [
        ("arch=ngpt", 2), ("baseline", 4), ("theirs", 1)]
    by = compare.group_runs(runs, group_by=["arch", "folder"])  # foreign logs have no arch: their folder
    assert sorted((g.name, len(g.runs)) for g in by) == [
        ("arch=ngpt", 2), ("baseline", 2), ("folder=ours2", 2), ("theirs", 1)]  # named by what differs
    assert sorted((g.name, len(g.runs)) for g in compare.group_runs(runs, group_by=["folder"])) == [
        ("ours", 4), ("ours2", 2), ("theirs", 1)]

def test_unknown_group_by_key_fails_naming_it(tmp_path, capsys):
    """A key no run has used to merge every run into one group, silently; now exit 2 with one line."""
    write_group(tmp_path, [3.30, 3.31], "gpt")
    write_group(tmp_path, [3.20, 3.21], "ngpt", dict(arch="ngpt"))
    with pytest.raises(compare.GroupByError, match="did you mean 'arch'"):
        compare.group_runs(compare.load_runs([tmp_path]), group_by=["archh"])
    capsys.readouterr()
    assert compare.main([str(tmp_path), "--group_by=arch,archh", "--plot=none"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("compare: error: --group_by key 'archh' ")
    assert "(did you mean 'arch'?)" in err and "n_layer, n_embd" not in err and "n_embd, n_head, n_layer" in err  # sorted keys
    assert "for any log: folder, stem" in err
    assert compare.main([str(tmp_path), "--group_by=arch,", "--plot=none"]) == 0  # a stray comma is fine
    assert "arch=ngpt" in capsys.readouterr().out
    # foreign logs: no config key can work, the line says what does
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "run0.txt").write_text(MODDED)
    assert compare.main([str(tmp_path / "rec"), "--group_by=arch", "--plot=none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'arch'" in err and "no config line" in err and "for any log: folder, stem" in err

# -----------------------------------------------------------------------------
# statistics

A = [3.281, 3.276, 3.279, 3.284, 3.277]
B = [3.262, 3.270, 3.259, 3.266]

def groups_from(tmp_path, a, b, **kw):
    write_group(tmp_path, a, "gpt", **kw)
    write_group(tmp_path, b, "ngpt", dict(arch="ngpt"), **kw)
    return compare.group_runs(compare.load_runs([tmp_path]))

def test_statistics_agree_with_scipy(tmp_path):
    groups = groups_from(tmp_path, A, B)
    rows = {r["group"]: r for r in compare.compare(groups, target=3.28)}
    base, ng = rows["baseline"], rows["arch=ngpt"]
    assert base["baseline"] and base["n"] == 5 and ng["n"] == 4
    assert base["mean"] == pytest.approx(np.mean(A)) and base["std"] == pytest.approx(np.std(A, ddof=1))
    ref = stats.ttest_ind(B, A, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert ng["delta"] == pytest.approx(np.mean(B) - np.mean(A))
    assert ng["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (ng["ci_low"], ng["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    for row, x in ((base, A), (ng, B)):
        assert row["p_target"] == pytest.approx(stats.ttest_1samp(x, 3.28, alternative="less").pvalue, rel=1e-9)
    assert ng["record"] is True and base["record"] is False
    assert base["delta"] == 0 and base["p"] == pytest.approx(1.0)  # baseline vs itself

def test_identical_and_different_groups(tmp_path):
    assert compare.welch(A, A)[3] == pytest.approx(1.0) and compare.welch(A, A)[0] == 0
    assert compare.welch([3.3] * 3, [3.3] * 4) == (0.0, 0.0, 0.0, 1.0)  # zero variance, same mean
    d, lo, hi, p = compare.welch([3.2] * 3, [3.3] * 3)  # zero variance, different means
    assert p == 0.0 and lo == hi == pytest.approx(-0.1)
    assert compare.welch([3.0, 3.01, 3.02], [3.5, 3.51, 3.49])[3] < 0.01
    assert compare.one_sample_less([3.2] * 3, 3.28) == 0.0 and compare.one_sample_less([3.3] * 3, 3.28) == 1.0
    groups = groups_from(tmp_path, [3.3] * 3, [3.3] * 3)
    table = compare.format_table(compare.compare(groups, target=3.28))
    assert "nan" not in table and "1.000" in table

def test_small_groups_print_na(tmp_path):
    groups = groups_from(tmp_path, [3.3], [3.2, 3.21])
    rows = compare.compare(groups, target=3.28)
    assert math.isnan(rows[0]["std"]) and math.isnan(rows[1]["p"]) and rows[0]["record"] is None
    table = compare.format_table(rows)
    md = compare.format_table(rows, markdown=True)
    assert "n/a" in table and "nan" not in table and md.startswith("| group |")

def test_target_steps_time_and_step_ratio(tmp_path):
    write_group(tmp_path, [3.30, 3.30], "gpt", step_ms=10.0)
    write_group(tmp_path, [3.00, 3.00], "ngpt", dict(arch="ngpt"), step_ms=11.0)
    rows = {r["group"]: r for r in compare.compare(compare.group_runs(compare.load_runs([tmp_path])), target=3.28)}
    assert rows["baseline"]["steps_to_target"] is None and rows["baseline"]["n_reached"] == 0
    assert rows["arch=ngpt"]["steps_to_target"] == 100
    assert rows["arch=ngpt"]["time_to_target_ms"] == pytest.approx(1100.0)
    assert rows["arch=ngpt"]["step_ratio"] == pytest.approx(1.1)

def test_step_time_p_value_agrees_with_scipy(tmp_path):
    base_ms, new_ms = [10.0, 10.4, 9.8], [8.1, 8.5, 8.0, 8.3]
    for i, ms in enumerate(base_ms):
        write_log(tmp_path / f"gpt_s{i}.txt", 3.3, seed=i, config_over=dict(norm="rmsnorm"), step_ms=ms)
    for i, ms in enumerate(new_ms):
        write_log(tmp_path / f"dyt_s{i}.txt", 3.3, seed=i, config_over=dict(norm="dyt"), step_ms=ms)
    groups = {g.config["norm"]: g for g in compare.group_runs(compare.load_runs([tmp_path]))}
    base, dyt = compare.compare(list(groups.values()), baseline=groups["rmsnorm"])
    assert base["group"] == groups["rmsnorm"].name and dyt["group"] == groups["dyt"].name
    ref = stats.ttest_ind([r.step_ms for r in groups["dyt"].runs], [r.step_ms for r in groups["rmsnorm"].runs], equal_var=False)
    assert dyt["p_step"] == pytest.approx(ref.pvalue, rel=1e-9) and ref.pvalue < 0.01
    assert dyt["step_ratio"] == pytest.approx(np.mean(new_ms) / np.mean(base_ms), rel=1e-3)  # train_time is whole ms
    table = compare.format_table([base, dyt])
    assert "p(step)" in table.splitlines()[0] and compare._p(ref.pvalue) in table

def test_paired_test_over_matching_seeds_agrees_with_scipy(tmp_path):
    """Seed-to-seed spread (0.1) hides a steady -0.01 from Welch's test; pairing runs by seed finds it."""
    base = [3.30, 3.40, 3.50, 3.35]
    new = [b - 0.01 + e for b, e in zip(base, [0.001, -0.002, 0.0, 0.0015])]
    write_group(tmp_path, base, "gpt", dict(norm="rmsnorm"))
    write_group(tmp_path, new[:3], "dyt", dict(norm="dyt"))  # seeds 0-2 only: 3 pairs
    groups = {g.config["norm"]: g for g in compare.group_runs(compare.load_runs([tmp_path]))}
    rows = compare.compare(list(groups.values()), baseline=groups["rmsnorm"])
    dyt = rows[1]
    ref = stats.ttest_rel(new[:3], base[:3])
    ci = ref.confidence_interval(0.95)
    assert dyt["n_pairs"] == 3 and dyt["p_paired"] == pytest.approx(ref.pvalue, rel=1e-6) and ref.pvalue < 0.01
    assert (dyt["pair_low"], dyt["pair_high"]) == pytest.approx((ci.low, ci.high), rel=1e-6)
    assert dyt["p"] > 0.5  # unpaired, the effect is lost in the spread
    assert compare.paired([(3.3, 3.3), (3.4, 3.4)]) == (0.0, 0.0, 0.0, 1.0)  # identical runs
    assert compare.paired([(3.2, 3.3), (3.3, 3.4)])[3] == 0.0  # the same nonzero difference at every seed
    assert all(math.isnan(v) for v in compare.paired([(3.2, 3.3)]))  # one pair: no test
    table = compare.format_table(rows)
    assert "p paired" in table.splitlines()[0] and "nan" not in table

def test_incomplete_runs_excluded_by_default(tmp_path, capsys):
    write_group(tmp_path, [3.30, 3.31, 3.29], "gpt")
    write_log(tmp_path / "gpt_s9.txt", 5.0, seed=9, complete=False)
    groups = compare.group_runs(compare.load_runs([tmp_path]))
    assert len(groups) == 1 and len(groups[0].runs) == 4
    assert compare.compare(groups)[0]["n"] == 3 and compare.compare(groups)[0]["n_incomplete"] == 1
    assert compare.compare(groups, include_incomplete=True)[0]["n"] == 4
    assert "+1 inc" in compare.format_table(compare.compare(groups))

def with_final(path, value):
    """Replace the final val loss of a log written by write_log (a diverged run)."""
    text = Path(path).read_text()
    last = [l for l in text.splitlines() if l.startswith("step:100/100 val_loss:")][-1]
    Path(path).write_text(text.replace(last, last.replace(last.split()[1], f"val_loss:{value}")))
    return path

def test_nonfinite_final_loss_is_named_and_left_out(tmp_path, capsys):
    """One diverged run used to turn its group into `n/a ± n/a` without naming it."""
    write_group(tmp_path, A, "gpt")
    nan_run = with_final(write_log(tmp_path / "gpt_s7.txt", 3.3, seed=7), "nan")
    write_group(tmp_path, B, "ngpt", dict(arch="ngpt"))
    inf_run = with_final(write_log(tmp_path / "ngpt_s8.txt", 3.3, seed=8, config_over=dict(arch="ngpt")), "inf")
    lone = with_final(write_log(tmp_path / "dyt_s0.txt", 3.3, config_over=dict(norm="dyt")), "nan")
    groups = compare.group_runs(compare.load_runs([tmp_path]))
    err = capsys.readouterr().err
    for p, v in ((nan_run, "nan"), (inf_run, "inf"), (lone, "nan")):
        assert f"compare: warning: {p}: final val_loss is {v}; left out of the statistics" in err
    assert sum(len(g.runs) for g in groups) == 12  # still in their groups: curves, step times, steps to target
    rows = {r["group"]: r for r in compare.compare(groups, target=3.28)}
    base, ng, dyt = rows["baseline"], rows["arch=ngpt"], rows["norm=dyt"]
    assert (base["n"], base["n_nonfinite"], ng["n"], ng["n_nonfinite"]) == (5, 1, 4, 1)
    assert base["mean"] == pytest.approx(np.mean(A)) and base["std"] == pytest.approx(np.std(A, ddof=1))
    assert ng["p"] == pytest.approx(stats.ttest_ind(B, A, equal_var=False).pvalue, rel=1e-9)
    assert ng["n_pairs"] == 4 and not math.isnan(ng["p_paired"])  # the diverged seeds pair with nothing
    assert ng["n_runs"] == 5 and dyt["n"] == 0 and dyt["n_nonfinite"] == 1
    table = compare.format_table(list(rows.values()))
    lines = {l.split("  ")[0].strip(): l for l in table.splitlines()[2:] if l.strip()}
    assert "5 (+1 diverged)" in lines["baseline *"] and "4 (+1 diverged)" in lines["arch=ngpt"]
    assert "0 (+1 diverged)" in lines["norm=dyt"]  # a group of diverged runs stays in the table
    assert "n/a ± n/a" not in lines["baseline *"] and " nan " not in table
    png = compare.plot(groups, tmp_path / "c.png", target=3.28)  # nan/inf do not break the axes
    assert Path(png).read_bytes()[:4] == b"\x89PNG"

# -----------------------------------------------------------------------------
# plot and CLI

def test_cli_unwritable_plot_path_prints_table_then_fails(tmp_path, capsys):
    """The table comes first (it is the result), then one line on the plot path and exit 2: no traceback."""
    write_group(tmp_path / "logs", A, "gpt")
    write_group(tmp_path / "logs", B, "ngpt", dict(arch="ngpt"))
    (tmp_path / "file").write_text("a file where a folder should be\n")
    for path in (tmp_path / "file" / "c.png", tmp_path / "file" / "sub" / "c.png"):
        rc = compare.main([str(tmp_path / "logs"), f"--plot={path}"])  # in this process: no interpreter start-up
        res = capsys.readouterr()
        assert rc == 2 and "baseline *" in res.out and "arch=ngpt" in res.out
        assert res.err == (f"compare: error: cannot write the plot to {path} (Not a directory): "
                           f"pass --plot=<writable path> or --plot=none\n")
        assert (tmp_path / "file").read_text() == "a file where a folder should be\n"
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o500)
        assert compare.main([str(tmp_path / "logs"), f"--plot={tmp_path / 'ro' / 'c.png'}"]) == 2


def test_plot_writes_valid_png(tmp_path):
    import matplotlib.image
    groups = groups_from(tmp_path, A, B)
    out = compare.plot(groups, tmp_path / "sub" / "c.png", target=3.28)
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100

def test_cli_end_to_end(tmp_path, capsys):
    write_group(tmp_path / "logs", A, "gpt")
    write_group(tmp_path / "logs", B, "ngpt", dict(arch="ngpt", ngpt_alpha_init=0.15))
    (tmp_path / "logs" / "README.txt").write_text("not a log\n")
    cmd = [sys.executable, str(REPO / "records" / "compare.py"), str(tmp_path / "logs"), "--target=3.28"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "baseline *" in res.stdout and "arch=ngpt ngpt_alpha_init=0.15" in res.stdout
    assert "record" in res.stdout and "yes" in res.stdout and "README.txt" in res.stderr
    png = tmp_path / "logs" / "compare.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the rest in this process (the command line above is the end-to-end check)
    assert compare.main(cmd[2:] + ["--markdown", "--plot=none", "--baseline=ngpt"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| group |") and "plot:" not in out
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) != 0 and "no usable run" in capsys.readouterr().err


def test_logs_from_before_a_flag_group_with_newer_ones(tmp_path):
    """A key an older log lacks takes train_gpt's current default (new flags default to the old behaviour), and a
    flag of another architecture (ngpt_* on a gpt run, dyt_* without --norm=dyt) says nothing: an older GPT log
    without --depth_scaling and with another angpt_nu_samples default groups with a newer GPT log."""
    import dataclasses
    import train_gpt
    new = {f.name: f.default for f in dataclasses.fields(train_gpt.Hyperparameters) if f.name not in ("seed", "run_name")}
    old_cfg = {k: v for k, v in new.items() if k not in ("depth_scaling", "value_embeds")}
    old_cfg["angpt_nu_samples"] = 65536  # what an older train_gpt logged for every run
    write_group(tmp_path / "old", [3.30, 3.31], "gpt", dict(old_cfg, arch="gpt"))
    write_group(tmp_path / "new", [3.32], "gptnew", dict(new, arch="gpt"))
    write_group(tmp_path / "new", [3.20, 3.21], "ngpt", dict(new, arch="ngpt", ngpt_alpha_init=0.15))
    groups = compare.group_runs(compare.load_runs([tmp_path]))
    assert sorted((g.name, len(g.runs)) for g in groups) == [("arch=ngpt ngpt_alpha_init=0.15", 2), ("baseline", 3)]


def test_pick_lr_takes_the_lowest_mean_and_flags_an_edge():
    # interior optimum: 1.0 wins, not at an edge
    assert compare.pick_lr({0.5: [3.2, 3.3], 1.0: [3.0, 3.1], 2.0: [3.4, 3.2]}) == (1.0, False)
    # the largest lr is best: an edge, the grid should grow past it
    assert compare.pick_lr({0.5: [3.5], 1.0: [3.3], 2.0: [3.1]}) == (2.0, True)
    # a diverged run disqualifies its lr, even if its other seed was best
    assert compare.pick_lr({0.5: [3.5, 3.5], 1.0: [3.3, 3.3], 2.0: [2.9, float("nan")]}) == (1.0, False)
    # a tie goes to the smaller lr; a one-point grid has no edge to flag
    assert compare.pick_lr({1.0: [3.0], 2.0: [3.0]}) == (1.0, True)
    assert compare.pick_lr({1.0: [3.0]}) == (1.0, False)

# -----------------------------------------------------------------------------
# issue 23: results you can trust

def sweep_2x2(folder):
    """A 2-config x 2-seed sweep: truth n=2 per group."""
    write_group(folder, [3.30, 3.31], "gpt")
    write_group(folder, [3.20, 3.21], "ngpt", dict(arch="ngpt"))

def counts(paths, **kw):
    return sorted((g.name, len(g.runs)) for g in compare.group_runs(compare.load_runs(paths), **kw))

def test_a_run_reached_twice_counts_once(tmp_path, monkeypatch, capsys):
    """A folder given twice (two spellings), a symlink to a folder beside it, a symlink loop, a symlinked file: each
    log counts once (by its identity, not its path text); a copied log (same run_id) counts once and is named."""
    sweep_2x2(tmp_path / "sw1")
    monkeypatch.chdir(tmp_path)
    truth = [("arch=ngpt", 2), ("baseline", 2)]
    assert counts(["sw1", str(tmp_path / "sw1")]) == truth  # was n=4
    assert counts(["sw1", "sw1/../sw1", "sw1/*.txt"]) == truth
    rec = tmp_path / "rec"
    (rec / "runs").mkdir(parents=True)
    for f in (tmp_path / "sw1").iterdir():
        os.link(f, rec / "runs" / f.name)  # hard links: one file, two names
    os.symlink("runs", rec / "latest")
    os.symlink(".", rec / "runs" / "loop")  # a loop: must neither hang nor crash
    os.symlink("..", rec / "runs" / "up")   # a link to an ancestor: a loop too
    os.symlink(str(rec / "runs" / "gpt_s0.txt"), rec / "alias.txt")
    assert counts(["rec"]) == truth and counts(["rec", "sw1"]) == truth
    assert all("/latest/" not in r.path and "/loop/" not in r.path for r in compare.load_runs(["rec"]))  # real paths
    capsys.readouterr()
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "gpt_s0_copy.txt").write_text((tmp_path / "sw1" / "gpt_s0.txt").read_text())
    assert counts(["sw1", "copy"]) == truth
    err = capsys.readouterr().err
    assert "copy/gpt_s0_copy.txt" in err and "sw1/gpt_s0.txt" in err and "counted once" in err

def test_symlink_to_an_outside_folder_is_followed(tmp_path):
    sweep_2x2(tmp_path / "elsewhere")
    (tmp_path / "rec").mkdir()
    os.symlink(str(tmp_path / "elsewhere"), tmp_path / "rec" / "runs")
    assert counts([tmp_path / "rec"]) == [("arch=ngpt", 2), ("baseline", 2)]

def test_group_by_folder_keeps_same_named_folders_apart(tmp_path):
    """a/runs and b/runs are two folders (were pooled as 'runs', n=4): grouped by full path, named by the
    shortest suffix that tells them apart."""
    write_group(tmp_path / "a" / "runs", [3.30, 3.31], "gpt")
    write_group(tmp_path / "b" / "runs", [3.20, 3.21], "gpt", dict(n_layer=8))
    write_group(tmp_path / "c" / "other", [3.25, 3.26], "gpt")
    paths = [tmp_path / "a" / "runs", tmp_path / "b" / "runs", tmp_path / "c" / "other"]
    assert counts(paths, group_by=["folder"]) == [("a/runs", 2), ("b/runs", 2), ("other", 2)]
    assert counts(paths, group_by=["folder", "stem"]) == [("a/runs/gpt", 2), ("b/runs/gpt", 2), ("other/gpt", 2)]
    by = counts(paths, group_by=["n_layer", "folder"])
    assert by == [("baseline", 2), ("folder=other", 2), ("n_layer=8 folder=b/runs", 2)]
    assert compare.folder_names(compare.load_runs([tmp_path / "x"])) == {}

# modded-nanogpt's record logs, in each format its records have used (written from their structure, not copied):
# the code header (2024-10/11: a separator first), versions / nvidia-smi, more separators; step lines with or
# without train_loss; 'step_avg:nanms' on the first steps; and the trailer: none (2024), 'peak memory
# consumption: N MiB' (2024-12), 'peak memory allocated: N MiB reserved: N MiB' (2025 on).
CODE = ('import os\nwith open(sys.argv[0]) as f:\n    code = f.read()\n'
        'print0(f"step:{step}/{args.num_iterations} val_loss:{val_loss:.4f}")\nstep:7/8 val_loss:0.5 decoy\n')
SMI = ("Running pytorch 2.4.1+cu121 compiled for CUDA 12.1\nnvidia-smi:\nThu Oct 10 23:58:24 2024\n"
       "+-----------------------+\n|=======================|\n|    0   N/A  N/A      6718      C   python3  5776MiB |\n"
       "+-----------------------+\n\n")

def modded_format(fmt, final=3.2785, steps=40, cut=False):
    train_loss = fmt in ("oct2024", "nov2024")
    val = lambda s: final + (10.8 - final) * (1 - s / steps) ** 2
    out = []
    for s in range(steps + 1 if not cut else steps - 5):
        t = s * 200
        avg = "nan" if s < 11 else f"{t / (s - 10):.2f}"
        if s:
            out.append(f"step:{s}/{steps} " + (f"train_loss:{val(s) + 0.05:.4f} " if train_loss else "")
                       + f"train_time:{t}ms step_avg:{avg}ms")
        if s % 10 == 0:
            out.append(f"step:{s}/{steps} val_loss:{val(s):.4f} train_time:{t + 2}ms step_avg:{avg}ms")
    steps_text = "\n".join(out) + "\n"
    if fmt in ("oct2024", "nov2024"):  # separator, code, separator, versions, separator, steps; no trailer
        return SEP + "\n" + CODE + SEP + "\n" + SMI + SEP + "\n" + steps_text
    if fmt == "dec2024":  # code, separator, versions, separator, data loader lines, separator, steps
        head = CODE + SEP + "\n" + SMI + SEP + "\nTraining DataLoader: total number of tokens: 3200000000\n" + SEP + "\n"
        return head + steps_text + ("" if cut else "peak memory consumption: 34239 MiB\n")
    head = CODE + SEP + "\n" + SMI + SEP + "\n" + ("Resetting Model\n" if fmt == "2026" else "")
    return head + steps_text + ("" if cut else "peak memory allocated: 34217 MiB reserved: 49936 MiB\n")

@pytest.mark.parametrize("fmt", ["oct2024", "nov2024", "dec2024", "2025", "2026"])
def test_modded_nanogpt_record_formats(tmp_path, fmt, capsys):
    """A log that reached its last step is complete whatever trailer follows or is missing (2024's logs have none
    and counted as '0 (+38 inc)'); one cut before its last step is incomplete; the code is never parsed."""
    rec = tmp_path / f"rec_{fmt}"
    rec.mkdir()
    for i, final in enumerate([3.2785, 3.2801, 3.2770]):
        (rec / f"{uuid.uuid4()}.txt").write_text(modded_format(fmt, final))
    (rec / f"{uuid.uuid4()}.txt").write_text(modded_format(fmt, 3.5, cut=True))
    runs = compare.load_runs([rec])
    assert len(runs) == 4 and sum(r.incomplete for r in runs) == 1
    assert all(7 not in r.val and r.config is None for r in runs)  # the decoy in the code header
    full = [r for r in runs if not r.incomplete]
    assert sorted(r.final_val_loss for r in full) == [3.2770, 3.2785, 3.2801]
    assert all(r.time_s == pytest.approx(8.002) and r.total_steps == 40 for r in full)  # the final val line's time
    row = compare.compare(compare.group_runs(runs))[0]
    assert (row["n"], row["n_incomplete"]) == (3, 1) and row["mean"] == pytest.approx(np.mean([3.2785, 3.2801, 3.277]))
    err = capsys.readouterr().err
    assert err.count("incomplete log") == 1 and "last step 40" in err

def test_total_time_column_and_time_axis(tmp_path):
    """The record's speed claim: each group's training time (train_time of its last step line, s), mean ± std,
    with Welch's p against the baseline; the plot can put training time on its x axis."""
    base_ms, new_ms = [10.0, 10.4, 9.8], [8.1, 8.5, 8.0]
    for i, ms in enumerate(base_ms):
        write_log(tmp_path / f"gpt_s{i}.txt", 3.3, seed=i, step_ms=ms)
    for i, ms in enumerate(new_ms):
        write_log(tmp_path / f"dyt_s{i}.txt", 3.3, seed=i, config_over=dict(norm="dyt"), step_ms=ms)
    write_log(tmp_path / "dyt_s9.txt", 3.3, seed=9, config_over=dict(norm="dyt"), step_ms=1.0, complete=False)
    groups = compare.group_runs(compare.load_runs([tmp_path]))
    base, dyt = compare.compare(groups, baseline=next(g for g in groups if g.config["norm"] == "rmsnorm"))
    t_base, t_new = [100 * ms / 1000 for ms in base_ms], [100 * ms / 1000 for ms in new_ms]  # 100 steps
    assert base["time_s"] == pytest.approx(np.mean(t_base), abs=1e-3)
    assert dyt["time_s"] == pytest.approx(np.mean(t_new), abs=1e-3)  # the cut run's time is not a run's time
    assert dyt["time_std"] == pytest.approx(np.std(t_new, ddof=1), abs=1e-3)
    assert dyt["p_time"] == pytest.approx(stats.ttest_ind(t_new, t_base, equal_var=False).pvalue, rel=1e-6)
    table = compare.format_table([base, dyt])
    assert "time s" in table.splitlines()[0] and "p(time)" in table.splitlines()[0]
    assert f"{np.mean(t_new):.3f} ± {np.std(t_new, ddof=1):.3f}" in table and compare._p(dyt["p_time"]) in table
    png = compare.plot(groups, tmp_path / "t.png", x="time")
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert compare.main([str(tmp_path), "--x=time", f"--plot={tmp_path / 'u.png'}"]) == 0

def test_bad_inputs_give_one_line_not_a_traceback(tmp_path, capsys):
    """A config whose seed is not an integer (was: TypeError unhashable), a folder named *.txt, binary junk, a
    log whose val lines have no train_time under --x=time: warnings naming the file, a table, exit 0."""
    write_group(tmp_path, [3.30, 3.31], "gpt")
    bad = write_log(tmp_path / "gpt_s5.txt", 3.32, seed=5)
    bad.write_text(bad.read_text().replace('"seed": 5', '"seed": [5]'))
    (tmp_path / "d.txt").mkdir()
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\xff\xfe")
    (tmp_path / "nt.txt").write_text('config: {"seed": 1, "norm": "dyt"}\nstep:0/2 val_loss:5.0\nstep:2/2 val_loss:4.0\n')
    assert compare.main([str(tmp_path), "--x=time", f"--plot={tmp_path / 'p.png'}"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "baseline *" in out
    assert f"{bad}: config seed [5] is not an integer" in err and "bin.txt" in err and "not plotted against time" in err

# -----------------------------------------------------------------------------
# issue 24: best against best

SEED_LUCK = [0.00, 0.03, -0.02, 0.05, 0.01]  # a seed's init luck, shared by every arm at that seed

def lr_sweep(folder, arm, over, curve, seeds=range(5), lrs=(0.5, 1.0, 2.0)):
    """Logs of one arm over an lr_scale grid: final loss curve[lr] + the seed's luck."""
    for lr in lrs:
        for s in seeds:
            write_log(Path(folder) / f"{arm}_lr{lr:g}_s{s}.txt", curve[lr] + SEED_LUCK[s], seed=s,
                      config_over=dict(over, lr_scale=lr))

def test_best_against_best_picks_on_tuning_seeds_and_compares_on_confirm_seeds(tmp_path, capsys):
    lr_sweep(tmp_path, "gpt", dict(arch="gpt"), {0.5: 3.40, 1.0: 3.30, 2.0: 3.35})       # interior best: 1.0
    lr_sweep(tmp_path, "ngpt", dict(arch="ngpt"), {0.5: 3.40, 1.0: 3.30, 2.0: 3.25})     # best at the edge: 2.0
    lr_sweep(tmp_path, "dyt", dict(arch="gpt", norm="dyt"), {1.0: 3.32}, lrs=(1.0,))    # one lr: its own pick
    groups = {g.config["arch"] + g.config.get("norm", ""): g for g in compare.best_against_best(
        compare.load_runs([tmp_path]), tune_seeds=[0, 1])}
    gpt, ngpt, dyt = groups["gptrmsnorm"], groups["ngpt"], groups["gptdyt"]
    assert (gpt.pick["lr_scale"], gpt.pick["edge"]) == (1.0, False)
    assert (ngpt.pick["lr_scale"], ngpt.pick["edge"]) == (2.0, True)
    assert (dyt.pick["lr_scale"], dyt.pick["edge"]) == (1.0, None)
    assert gpt.pick["tuning"][0.5] == pytest.approx(3.40 + np.mean(SEED_LUCK[:2]))
    import train_gpt
    assert gpt.pick["lr"] == pytest.approx(train_gpt.Hyperparameters().muon_lr)  # Muon arm: muon_lr x scale
    assert ngpt.pick["lr"] == pytest.approx(train_gpt.ARCHS["ngpt"].adam_lr * 2.0)  # Adam arm: the arch's lr x scale
    for g in (gpt, ngpt, dyt):  # rows on the confirm seeds only, at the pick
        assert sorted(r.config["seed"] for r in g.runs) == [2, 3, 4]
        assert {r.config["lr_scale"] for r in g.runs} == {g.pick["lr_scale"]}
    assert "sits at the edge of the grid [0.5, 1.0, 2.0]: extend the grid" in capsys.readouterr().err
    rows = {r["group"]: r for r in compare.compare(list(groups.values()), baseline=gpt)}
    row = rows[ngpt.name]
    assert row["delta"] == pytest.approx(-0.05) and row["n_pairs"] == 3 and row["p_paired"] == 0.0  # same luck per seed
    table = compare.format_table(list(rows.values()))
    head = table.splitlines()[0].split()
    assert head[:4] == ["group", "lr", "lr_scale", "edge"] and "EDGE" in table and "n/a" in table
    # a diverged (cut) tuning run disqualifies its lr: 2.0 loses to 1.0 for ngpt
    cut = tmp_path / "ngpt_lr2_s1.txt"
    cut.write_text(SOURCE + SEP + "\n" + log_text(3.1, config=make_config(seed=1, arch="ngpt", lr_scale=2.0),
                                                complete=False))
    g = next(g for g in compare.best_against_best(compare.load_runs([tmp_path]), [0, 1]) if g.config["arch"] == "ngpt")
    assert g.pick["lr_scale"] == 1.0 and g.pick["tuning"][2.0] == math.inf

def test_best_lr_cli_tuning_seeds_from_flag_or_sweep_json(tmp_path, capsys):
    lr_sweep(tmp_path, "gpt", dict(arch="gpt"), {0.5: 3.40, 1.0: 3.30, 2.0: 3.35})
    lr_sweep(tmp_path, "ngpt", dict(arch="ngpt"), {0.5: 3.40, 1.0: 3.30, 2.0: 3.25})
    assert compare.main([str(tmp_path), "--best_lr", "--plot=none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tune_seeds=0,1" in err and "sweep.json" in err
    assert compare.main([str(tmp_path), "--best_lr", "--tune_seeds=0,x", "--plot=none"]) == 2
    assert "integer seeds" in capsys.readouterr().err
    assert compare.main([str(tmp_path), "--best_lr", "--tune_seeds=0,1", "--plot=none"]) == 0
    by_flag = capsys.readouterr().out
    (tmp_path / "sweep.json").write_text(json.dumps(dict(tune_seeds=[0, 1], confirm_seeds=[2, 3, 4], runs=[])))
    assert compare.main([str(tmp_path), "--best_lr", "--plot=none"]) == 0
    assert capsys.readouterr().out == by_flag and "EDGE" in by_flag
    assert compare.main([str(tmp_path), "--best_lr", "--group_by=arch", "--plot=none"]) == 2

# -----------------------------------------------------------------------------
# issue 32: never a wrong number

def test_best_lr_never_counts_a_tune_seed(tmp_path, capsys):
    """A second lr sweep used to rewrite sweep.json's tune_seeds ([0] -> [2]), and --best_lr then reported n = 3 over
    seeds 0, 1, 3, seed 0 being the one the lr was picked on. The tuning seeds are sweep.json's tune_seeds and every
    seed its tune-phase runs used; an explicit --tune_seeds gets those added, with a warning."""
    lr_sweep(tmp_path, "gpt", dict(arch="gpt"), {0.5: 3.40, 1.0: 3.30}, seeds=range(4), lrs=(0.5, 1.0))
    runs = [dict(run_name=f"gpt_lr{lr:g}_s{s}", seed=s, lr_scale=lr, phase="tune") for s in (0, 2) for lr in (0.5, 1.0)]
    runs += [dict(run_name=f"gpt_lr1_s{s}", seed=s, lr_scale=1.0, phase="confirm") for s in (1, 3)]
    (tmp_path / "sweep.json").write_text(json.dumps(dict(tune_seeds=[2], confirm_seeds=[3], runs=runs)))
    assert compare.tune_seeds_of([tmp_path]) == [0, 2]
    [g] = compare.best_against_best(compare.load_runs([tmp_path]), compare.tune_seeds_of([tmp_path]))
    assert sorted(r.config["seed"] for r in g.runs) == [1, 3]
    capsys.readouterr()
    assert compare.main([str(tmp_path), "--best_lr", "--tune_seeds=2", "--plot=none"]) == 0
    out, err = capsys.readouterr()
    assert "sweep.json's tune-phase runs also used seeds [0]: tuning seeds [0, 2]" in err
    assert out.splitlines()[2].split()[:6] == ["baseline", "*", "0.025", "1", "EDGE", "2"]  # n: confirm seeds 1, 3

def nan_stop_log(path, seed, lr_scale=1.0, step=1, steps=100):
    """A run train_gpt.py stopped for a NaN loss: its step-0 val line, then the stopping step's loss line."""
    cfg = make_config(seed=seed, run_name=Path(path).stem, steps=steps, optimizer="adam", lr_scale=lr_scale)
    Path(path).write_text(SOURCE + SEP + "\n" + "\n".join([
        "torch 2.13.0 python 3.11.7 device cpu world_size 1", "config: " + json.dumps(cfg),
        f"step:0/{steps} val_loss:10.8258 train_time:0ms step_avg:0.00ms",
        f"step:{step}/{steps} train_loss:nan -- stopping: the loss is not finite. Last checkpoint: none (set --save_every)"]) + "\n")
    return path

def test_a_run_stopped_for_a_nan_loss_is_diverged(tmp_path, capsys):
    """A run the trainer stopped on a NaN loss used to be "incomplete": `0 (+3 inc)`, and --include_incomplete averaged
    it at its step-0 loss (10.8258). It is diverged: counted as such, never averaged, the worst lr in a pick."""
    write_group(tmp_path, [3.30, 3.31, 3.29], "gpt", dict(optimizer="adam", n_layer=2))  # another arm
    for s in range(3):
        nan_stop_log(tmp_path / f"big_s{s}.txt", s, lr_scale=1e30)
    groups = compare.group_runs(compare.load_runs([tmp_path]))
    err = capsys.readouterr().err
    assert err.count("diverged (train_loss nan at step 1 of 100: train_gpt.py stops a run there)") == 3
    assert "incomplete" not in err
    healthy = next(g for g in groups if g.config["n_layer"] == 2)
    for inc in (False, True):
        rows = compare.compare(groups, baseline=healthy, include_incomplete=inc)
        big = rows[1]
        assert (big["n"], big["n_incomplete"], big["n_nonfinite"], big["mean"]) == (0, 0, 3, None)
        assert big["time_s"] is None and rows[0]["n"] == 3
    assert "0 (+3 diverged)" in compare.format_table(rows)
    # an lr pick: every lr of the grid diverged -> no pick (was: 1e29 at the edge, confirmed on its diverged runs)
    for s in range(3):
        nan_stop_log(tmp_path / f"big29_s{s}.txt", s, lr_scale=1e29)
    best = compare.best_against_best(compare.load_runs([tmp_path]), [0, 1])
    assert [g.pick["lr_scale"] for g in best] == [1.0]  # the healthy arm alone
    assert "every lr_scale of its grid [1e+29, 1e+30] diverged on the tuning seeds [0, 1]: no pick, left out" in \
        capsys.readouterr().err

def test_plot_line_names_the_file_written_and_bad_target_or_alpha_is_one_line(tmp_path, capsys):
    """--plot=out/x printed `plot: out/x` where matplotlib wrote out/x.png, and a folder as --plot likewise;
    --target=nan and --alpha=2 were accepted (with alpha 2 the record column said "yes")."""
    write_group(tmp_path / "logs", A, "gpt")
    write_group(tmp_path / "logs", B, "ngpt", dict(arch="ngpt"))
    (tmp_path / "figs").mkdir()
    for given, written in ((tmp_path / "out" / "x", tmp_path / "out" / "x.png"),
                           (tmp_path / "figs", tmp_path / "figs" / "compare.png")):
        assert compare.main([str(tmp_path / "logs"), f"--plot={given}"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == f"plot: {written}"
        assert written.read_bytes()[:4] == b"\x89PNG"
    assert compare.plot_path("a/b.v2") == "a/b.v2.png" and compare.plot_path("a/b.svg") == "a/b.svg"
    for flag, why in (("--target=nan", "--target=nan: give a finite target val loss, e.g. --target=3.28"),
                      ("--alpha=2", "--alpha=2: give a significance level between 0 and 1, e.g. --alpha=0.01"),
                      ("--alpha=0", "--alpha=0: give a significance level between 0 and 1, e.g. --alpha=0.01")):
        assert compare.main([str(tmp_path / "logs"), flag, "--plot=none"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"compare: error: {why}\n", captured

def record_log(val_ms, steps=20):
    """A modded-nanogpt record log of the current format (written from the structure of record #89's: code, versions,
    'Resetting Model', the last step's train line, then the final val line, whose train_time is the record's time)."""
    out = [f"step:0/{steps} val_loss:10.8311 train_time:0ms step_avg:0.03ms"]
    for s in range(1, steps + 1):
        t = round((val_ms - 84) * s / steps)  # the final val line comes ~84 ms after the last train line
        out.append(f"step:{s}/{steps} train_time:{t}ms step_avg:{t / s:.2f}ms")
    out.append(f"step:{steps}/{steps} val_loss:3.2775 train_time:{val_ms}ms step_avg:{val_ms / steps:.2f}ms")
    return (CODE + SEP + "\n" + SMI + SEP + "\nCompiling model and warming up kernels\nResetting Model\n" + "\n".join(out)
            + "\npeak memory allocated: 30220 MiB reserved: 38672 MiB\n")

def test_record_time_is_the_final_val_lines_with_the_digits_its_std_needs(tmp_path):
    """On two record log sets 0.3 s apart, compare printed `time s` 78.9 ± 0.0 and 77.6 ± 0.0: the last train line's
    train_time (the final val line, the record's own time, comes later) at one decimal, hiding a std of 0.04 s."""
    v1 = [78920, 78950, 78990, 79010, 78930, 78970, 79020, 78940, 78960, 79000, 78947]  # ms, 11 runs
    v2 = [78610, 78650, 78600, 78700, 78640, 78660, 78620, 78680, 78630, 78670]         # 10 runs
    for name, times in (("v1", v1), ("v2", v2)):
        (tmp_path / name).mkdir()
        for ms in times:
            (tmp_path / name / f"{uuid.uuid4()}.txt").write_text(record_log(ms))
    rows = compare.compare(compare.group_runs(compare.load_runs([tmp_path / "v1", tmp_path / "v2"])), baseline="v1")
    for row, times in zip(rows, (v1, v2)):
        assert row["time_s"] == pytest.approx(np.mean(times) / 1000, abs=1e-9)
        assert row["time_std"] == pytest.approx(np.std(times, ddof=1) / 1000, abs=1e-9)
        assert row["step_ms"] == pytest.approx(np.mean(times) / 20, abs=1e-6)  # the record's own step_avg
    table = compare.format_table(rows)
    for times in (v1, v2):  # std 0.03 s: three decimals (ms), two significant digits of the std
        assert f"{np.mean(times) / 1000:.3f} ± {np.std(times, ddof=1) / 1000:.3f}" in table
    assert compare._pm(100.0, 12.3) == "100.0 ± 12.3" and compare._pm(7.31, 0.26) == "7.31 ± 0.26"
    assert compare._pm(78.9, 0.0) == "78.900 ± 0.000" and compare._pm(73.4, float("nan")) == "73.4 ± n/a"
