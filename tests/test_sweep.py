"""records/sweep.py: commands (dry run) and a whole sweep over a stub train script that writes logs."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, str(REPO / "records" / "sweep.py")]
sys.path.insert(0, str(REPO / "records"))
import sweep  # noqa: E402

# a stand-in for train_gpt.py: parses the flags the sweep passes, writes a log in train_gpt.py's format
STUB = r'''
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
seed, arch = int(args["seed"]), args.get("arch", "gpt")
print(f"stub training {args['run_name']}", flush=True)
if int(args.get("fail_seed", -1)) == seed:
    sys.exit(3)
cfg = dict(arch=arch, seed=seed, run_name=args["run_name"], run_id=args["run_name"], log_dir=args["log_dir"],
           steps=20, val_every=10, resume="", save_every=0, n_layer=2)
final = (3.30 if arch == "gpt" else 3.20) + 0.002 * seed
os.makedirs(args["log_dir"], exist_ok=True)
with open(os.path.join(args["log_dir"], args["run_name"] + ".txt"), "w") as f:
    f.write("step:3/20 val_loss:0.1 train_time:1ms step_avg:1.00ms\n" + "=" * 100 + "\n")  # decoy "source"
    f.write("torch 2.13.0 python 3.11.7 device cpu world_size 1\nconfig: " + json.dumps(cfg) + "\n")
    for s, v in ((0, 10.8), (10, 5.0), (20, final)):
        f.write(f"step:{s}/20 val_loss:{v:.4f} train_time:{s * 10}ms step_avg:10.00ms\n")
    f.write("peak memory allocated: 12 MiB reserved: 14 MiB\n")
'''

def run_sweep(*args):
    return subprocess.run(SWEEP + list(args), capture_output=True, text=True, timeout=120)

def test_dry_run_prints_commands_seed_major(tmp_path):
    res = run_sweep("demo", "--seeds=2", "--seed0=7", f"--out={tmp_path / 'o'}", "--dry_run", "--",
                    "--arch=gpt --steps=50", "--arch=ngpt --ngpt_alpha_init=0.15")
    assert res.returncode == 0, res.stderr
    cmds = [shlex.split(l) for l in res.stdout.splitlines() if not l.startswith("#")]
    assert len(cmds) == 4 and not (tmp_path / "o").exists()
    assert [c[-1] for c in cmds] == ["--run_name=demo_c0_s7", "--run_name=demo_c1_s7",
                                     "--run_name=demo_c0_s8", "--run_name=demo_c1_s8"]
    # no GPU here: plain python on the repo's train_gpt.py, config flags then the sweep's own
    assert cmds[1][0] == sys.executable and cmds[1][1] == "train_gpt.py"
    assert cmds[1][2:] == ["--arch=ngpt", "--ngpt_alpha_init=0.15", "--seed=7", f"--log_dir={tmp_path / 'o'}",
                           "--run_name=demo_c1_s7"]

def test_dry_run_default_out_is_records_name():
    res = run_sweep("abc", "--seeds=1", "--dry_run", "--launcher=python")
    assert res.returncode == 0
    assert "--log_dir=records/abc" in res.stdout and "--run_name=abc_c0_s0" in res.stdout

def test_sweep_with_stub_continues_after_failure(tmp_path):
    stub = tmp_path / "stub_train.py"
    stub.write_text(STUB)
    out = tmp_path / "out"
    res = run_sweep("t", "--seeds=3", f"--out={out}", f"--script={stub}", "--launcher=python", "--target=3.28",
                    "--", "--arch=gpt", "--arch=ngpt --fail_seed=1")
    assert res.returncode == 1  # one run failed, the others ran
    assert "stub training t_c1_s2" in res.stdout and "t_c1_s1 FAILED (exit 3)" in res.stdout
    assert "t_c1_s1" in res.stderr
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["seeds"] == [0, 1, 2] and rec["configs"] == ["--arch=gpt", "--arch=ngpt --fail_seed=1"]
    assert [(r["run_name"], r["returncode"]) for r in rec["runs"]] == [
        ("t_c0_s0", 0), ("t_c1_s0", 0), ("t_c0_s1", 0), ("t_c1_s1", 3), ("t_c0_s2", 0), ("t_c1_s2", 0)]
    assert rec["runs"][0]["cmd"][:2] == [sys.executable, str(stub)]
    table = (out / "compare.txt").read_text()
    assert "baseline *" in table and "arch=ngpt fail_seed=1" not in table  # fail_seed is not in the config
    lines = {l.split()[0]: l for l in table.splitlines()[2:] if l.strip() and not l.startswith("*")}
    assert lines["baseline"].split()[2] == "3" and lines["arch=ngpt"].split()[1] == "2"
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in res.stdout

def test_second_sweep_adds_seeds_to_the_folder(tmp_path):
    """More seeds for one config later: the earlier runs stay in sweep.json, the config keeps its index."""
    stub = tmp_path / "stub_train.py"
    stub.write_text(STUB)
    out = tmp_path / "out"
    common = [f"--out={out}", f"--script={stub}", "--launcher=python"]
    assert run_sweep("t", "--seeds=2", *common, "--", "--arch=gpt", "--arch=ngpt").returncode == 0
    res = run_sweep("t", "--seeds=1", "--seed0=2", *common, "--", "--arch=ngpt")
    assert res.returncode == 0, res.stderr
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["configs"] == ["--arch=gpt", "--arch=ngpt"] and rec["seeds"] == [0, 1, 2]
    assert [r["run_name"] for r in rec["runs"]] == ["t_c0_s0", "t_c1_s0", "t_c0_s1", "t_c1_s1", "t_c1_s2"]
    lines = {l.split()[0]: l for l in (out / "compare.txt").read_text().splitlines()[2:] if l.strip() and not l.startswith("*")}
    assert lines["baseline"].split()[2] == "2" and lines["arch=ngpt"].split()[1] == "3"
    again = run_sweep("t", "--seeds=1", "--seed0=1", *common, "--", "--arch=ngpt")  # seed 1 is done already
    assert again.returncode == 2 and "--seed0" in again.stderr
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 5

def test_unbalanced_quote_fails_before_any_run(tmp_path):
    """shlex's ValueError used to be a traceback; now one line naming the config and the fix, before any run."""
    stub = tmp_path / "stub_train.py"
    stub.write_text(STUB)
    out = tmp_path / "out"
    args = [f"--out={out}", f"--script={stub}", "--launcher=python", "--", "--arch=gpt", "--arch=ngpt", "--prompt='x"]
    res = run_sweep("t", "--seeds=2", *args)
    assert res.returncode == 2 and res.stdout == "" and not out.exists()  # nothing ran, nothing written
    assert res.stderr.startswith('sweep: error: config 2 "--prompt=\'x": No closing quotation: quote the flag value '
                                 'or escape the quote') and res.stderr.count("\n") == 1
    # a folder with a record: the record stays as it was
    out.mkdir()
    rec = '{"name": "t", "configs": ["--arch=gpt"], "seeds": [0], "runs": []}'
    (out / "sweep.json").write_text(rec)
    res = run_sweep("t", "--seeds=1", "--seed0=1", *args)
    assert res.returncode == 2 and "config 2" in res.stderr and (out / "sweep.json").read_text() == rec
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]

def test_corrupt_sweep_json_is_named_never_overwritten(tmp_path):
    """A sweep.json the next sweep cannot read used to be a JSONDecodeError traceback."""
    stub = tmp_path / "stub_train.py"
    stub.write_text(STUB)
    out = tmp_path / "out"
    out.mkdir()
    for bad in ('{"name": "t", "configs": ["--arch=gpt"], "ru', "[1, 2]", b"\xff\xfe{"):
        (out / "sweep.json").write_bytes(bad if isinstance(bad, bytes) else bad.encode())
        res = run_sweep("t", "--seeds=1", f"--out={out}", f"--script={stub}", "--launcher=python", "--", "--arch=gpt")
        assert res.returncode == 2 and "stub training" not in res.stdout, res.stderr
        assert res.stderr.startswith(f"sweep: error: {out / 'sweep.json'} is unreadable (")
        assert "move it away" in res.stderr and res.stderr.count("\n") == 1
        assert (out / "sweep.json").read_bytes() == (bad if isinstance(bad, bytes) else bad.encode())
        assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]  # no run, no log

def test_sweep_json_survives_a_crash_mid_write(tmp_path, monkeypatch):
    """sweep.json goes through a temp file + fsync + os.replace: a write that dies half-way leaves the previous
    record whole (and no temp file), and the next sweep reads it and adds its runs."""
    stub = tmp_path / "stub_train.py"
    stub.write_text(STUB)
    out = tmp_path / "out"
    out.mkdir()
    old = dict(name="t", out=str(out), configs=["--arch=gpt"], seeds=[0],
               runs=[dict(config=0, args="--arch=gpt", seed=0, run_name="t_c0_s0", cmd=[], returncode=0, seconds=1.0)])
    (out / "sweep.json").write_text(json.dumps(old))
    real_dump = json.dump
    def dies_mid_write(obj, f, **kw):
        f.write(json.dumps(obj)[:30])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(json, "dump", dies_mid_write)
    argv = ["t", "--seeds=1", "--seed0=1", f"--out={out}", f"--script={stub}", "--launcher=python", "--", "--arch=gpt"]
    with pytest.raises(OSError, match="No space left"):
        sweep.main(argv)
    assert json.loads((out / "sweep.json").read_text()) == old
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "t_c0_s1.txt"]  # the run's log stays too
    monkeypatch.setattr(json, "dump", real_dump)
    assert sweep.main(argv) == 0  # the crash left no record of seed 1: it runs again
    rec = json.loads((out / "sweep.json").read_text())
    assert [(r["run_name"], r["returncode"]) for r in rec["runs"]] == [("t_c0_s0", 0), ("t_c0_s1", 0)]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
