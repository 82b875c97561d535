"""records/sweep.py: commands (dry run) and a whole sweep over a stub train script that writes logs."""
import json
import os
import re
import shlex
import subprocess
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, str(REPO / "records" / "sweep.py")]
sys.path.insert(0, str(REPO / "records"))
import sweep  # noqa: E402

# a stand-in for train_gpt.py: parses the flags the sweep passes, writes a log in train_gpt.py's format
# (<run_name>_<8 hex>.txt), and like it: SIGTERM/SIGINT -> finish the step, checkpoint, exit 128+signal (a second
# signal exits at once); --resume=auto continues the newest checkpoint, appending to the same log. Test knobs:
# --fail_seed=S (exit 3), --sleep=SECONDS per step (default 0: a run takes no time) while --slow_while=PATH exists (default /), --best_lr /
# --diverge_above (the final loss's lr dependence: a parabola in log2 lr around best_lr; above it the run stops
# at step 1 on a nan loss, exit 2, as train_gpt.py does)
STUB = r"""
import glob, json, math, os, signal, sys, time, uuid
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
seed, arch, name = int(args["seed"]), args.get("arch", "gpt"), args["run_name"]
lr = float(args.get("lr_scale", 1))
print(f"stub training {name}", flush=True)
if int(args.get("fail_seed", -1)) == seed:
    sys.exit(3)
stop = []
def handle(signum, frame):
    if stop: os._exit(128 + signum)
    stop.append(signum)
for s in (signal.SIGTERM, signal.SIGINT): signal.signal(s, handle)
ckpt_dir = args.get("checkpoint_dir", "checkpoints")
ckpts = sorted(glob.glob(os.path.join(ckpt_dir, name + "_step*.pt")), key=os.path.getmtime)
if args.get("resume") == "auto" and ckpts:
    state = json.load(open(ckpts[-1]))
    run_id, step = state["run_id"], state["step"]
else:
    run_id, step = f"{name}_{uuid.uuid4().hex[:8]}", 0
os.makedirs(args["log_dir"], exist_ok=True)
f = open(os.path.join(args["log_dir"], run_id + ".txt"), "a")
log = lambda line: (f.write(line + "\n"), f.flush())
if step:
    log(f"resumed from {ckpts[-1]} at step {step}")
else:
    cfg = dict(arch=arch, seed=seed, run_name=name, run_id=run_id, log_dir=args["log_dir"], steps=20, val_every=10,
               resume="", save_every=0, n_layer=2, lr_scale=lr)
    log("step:3/20 val_loss:0.1 train_time:1ms step_avg:1.00ms\n" + "=" * 100)  # decoy "source"
    log("torch 2.13.0 python 3.11.7 device cpu world_size 1\nconfig: " + json.dumps(cfg))
    log("step:0/20 val_loss:10.8000 train_time:0ms step_avg:0.00ms")
final = (3.30 if arch == "gpt" else 3.20) + 0.002 * seed + 0.1 * math.log2(lr / float(args.get("best_lr", 1))) ** 2
if lr > float(args.get("diverge_above", "inf")):  # train_gpt.py's NaN stop: the step's loss line, exit 2
    log("step:1/20 train_loss:nan -- stopping: the loss is not finite. Last checkpoint: none (set --save_every)")
    sys.exit(2)
while step < 20:
    if os.path.exists(args.get("slow_while", "/")): time.sleep(float(args.get("sleep", 0)))
    step += 1
    if step in (10, 20):
        log(f"step:{step}/20 val_loss:{5.0 if step == 10 else final:.4f} train_time:{step * 10}ms step_avg:10.00ms")
    if stop:
        os.makedirs(ckpt_dir, exist_ok=True)
        json.dump(dict(run_id=run_id, step=step), open(os.path.join(ckpt_dir, f"{name}_step{step}.pt"), "w"))
        log(f"stopped by signal {stop[0]} after step {step}; resume with --resume=auto --run_name={name}")
        sys.exit(128 + stop[0])
log("peak memory allocated: 12 MiB reserved: 14 MiB")
"""

def write_stub(tmp_path):
    path = tmp_path / "stub_train.py"
    path.write_text(STUB)
    return path

def logs(out):
    """run name -> its log files (the stub's, like train_gpt.py's, end in a random 8-hex run id)."""
    found = {}
    for p in sorted(out.glob("*_????????.txt")):
        found.setdefault(p.name[:-13], []).append(p)
    return found

def run_sweep(*args, env=None):
    return subprocess.run(SWEEP + list(args), capture_output=True, text=True, timeout=300, env=env)

def sweep_here(capfd, *args):
    """records/sweep.py run in this process, answered like run_sweep (exit code, stdout, stderr: the runs' output
    too, through capfd): no interpreter, numpy/scipy and matplotlib start-up to pay per call."""
    capfd.readouterr()
    rc = sweep.main(list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(SWEEP + list(args), rc, out, err)

def test_dry_run_prints_commands_seed_major(tmp_path, capfd):
    res = sweep_here(capfd, "demo", "--seeds=2", "--seed0=7", f"--out={tmp_path / 'o'}", "--dry_run", "--",
                    "--arch=gpt --steps=50", "--arch=ngpt --ngpt_alpha_init=0.15")
    assert res.returncode == 0, res.stderr
    cmds = [shlex.split(l) for l in res.stdout.splitlines() if not l.startswith("#")]
    assert len(cmds) == 4 and not (tmp_path / "o").exists()
    assert [c[-3] for c in cmds] == ["--run_name=demo_c0_s7", "--run_name=demo_c1_s7",
                                     "--run_name=demo_c0_s8", "--run_name=demo_c1_s8"]
    # no GPU here: plain python on the repo's train_gpt.py, config flags then the sweep's own; the checkpoints
    # live under --out and every run resumes its own when there is one
    assert cmds[1][0] == sys.executable and cmds[1][1] == "train_gpt.py"
    assert cmds[1][2:] == ["--arch=ngpt", "--ngpt_alpha_init=0.15", "--seed=7", f"--log_dir={tmp_path / 'o'}",
                           "--run_name=demo_c1_s7", f"--checkpoint_dir={tmp_path / 'o' / 'checkpoints'}", "--resume=auto"]
    assert res.stdout.splitlines()[-1] == "# 4 runs: no time estimate (pass --seconds_per_run)"

def test_dry_run_default_out_is_records_name(capfd):
    res = sweep_here(capfd, "abc", "--seeds=1", "--dry_run", "--launcher=python")
    assert res.returncode == 0
    assert "--log_dir=records/abc" in res.stdout and "--run_name=abc_c0_s0" in res.stdout

def test_sweep_with_stub_continues_after_failure(tmp_path, capfd):
    stub = write_stub(tmp_path)
    out = tmp_path / "out"
    res = sweep_here(capfd, "t", "--seeds=3", f"--out={out}", f"--script={stub}", "--launcher=python", "--target=3.28",
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

def test_second_sweep_adds_seeds_to_the_folder(tmp_path, capfd):
    """More seeds for one config later: the earlier runs stay in sweep.json, the config keeps its index."""
    stub = write_stub(tmp_path)
    out = tmp_path / "out"
    common = [f"--out={out}", f"--script={stub}", "--launcher=python"]
    assert sweep_here(capfd, "t", "--seeds=2", *common, "--", "--arch=gpt", "--arch=ngpt").returncode == 0
    res = sweep_here(capfd, "t", "--seeds=1", "--seed0=2", *common, "--", "--arch=ngpt")
    assert res.returncode == 0, res.stderr
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["configs"] == ["--arch=gpt", "--arch=ngpt"] and rec["seeds"] == [0, 1, 2]
    assert [r["run_name"] for r in rec["runs"]] == ["t_c0_s0", "t_c1_s0", "t_c0_s1", "t_c1_s1", "t_c1_s2"]
    lines = {l.split()[0]: l for l in (out / "compare.txt").read_text().splitlines()[2:] if l.strip() and not l.startswith("*")}
    assert lines["baseline"].split()[2] == "2" and lines["arch=ngpt"].split()[1] == "3"
    again = sweep_here(capfd, "t", "--seeds=1", "--seed0=1", *common, "--", "--arch=ngpt")  # seed 1 is done already
    assert again.returncode == 0 and "stub training" not in again.stdout, again.stderr  # nothing to run again
    assert json.loads((out / "sweep.json").read_text())["runs"] == rec["runs"]

def test_unbalanced_quote_fails_before_any_run(tmp_path, capfd):
    """shlex's ValueError used to be a traceback; now one line naming the config and the fix, before any run."""
    stub = write_stub(tmp_path)
    out = tmp_path / "out"
    args = [f"--out={out}", f"--script={stub}", "--launcher=python", "--", "--arch=gpt", "--arch=ngpt", "--prompt='x"]
    res = sweep_here(capfd, "t", "--seeds=2", *args)
    assert res.returncode == 2 and res.stdout == "" and not out.exists()  # nothing ran, nothing written
    assert res.stderr.startswith('sweep: error: config 2 "--prompt=\'x": No closing quotation: quote the flag value '
                                 'or escape the quote') and res.stderr.count("\n") == 1
    # a folder with a record: the record stays as it was
    out.mkdir()
    rec = '{"name": "t", "configs": ["--arch=gpt"], "seeds": [0], "runs": []}'
    (out / "sweep.json").write_text(rec)
    res = sweep_here(capfd, "t", "--seeds=1", "--seed0=1", *args)
    assert res.returncode == 2 and "config 2" in res.stderr and (out / "sweep.json").read_text() == rec
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]

def test_corrupt_sweep_json_is_named_never_overwritten(tmp_path, capfd):
    """A sweep.json the next sweep cannot read used to be a JSONDecodeError traceback."""
    stub = write_stub(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for bad in ('{"name": "t", "configs": ["--arch=gpt"], "ru', "[1, 2]", b"\xff\xfe{"):
        (out / "sweep.json").write_bytes(bad if isinstance(bad, bytes) else bad.encode())
        res = sweep_here(capfd, "t", "--seeds=1", f"--out={out}", f"--script={stub}", "--launcher=python", "--", "--arch=gpt")
        assert res.returncode == 2 and "stub training" not in res.stdout, res.stderr
        assert res.stderr.startswith(f"sweep: error: {out / 'sweep.json'} is unreadable (")
        assert "move it away" in res.stderr and res.stderr.count("\n") == 1
        assert (out / "sweep.json").read_bytes() == (bad if isinstance(bad, bytes) else bad.encode())
        assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]  # no run, no log

def test_sweep_json_survives_a_crash_mid_write(tmp_path, monkeypatch):
    """sweep.json goes through a temp file + fsync + os.replace: a write that dies half-way leaves the previous
    record whole (and no temp file), and the next sweep reads it and adds its runs."""
    stub = write_stub(tmp_path)
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
    assert sorted(p.name for p in out.iterdir() if p.name != ".sweep.lock") == ["sweep.json"] + [
        p.name for p in logs(out)["t_c0_s1"]]  # the run's log stays too
    monkeypatch.setattr(json, "dump", real_dump)
    assert sweep.main(argv) == 0  # the crash left no record of seed 1, but its complete log: taken as finished
    rec = json.loads((out / "sweep.json").read_text())
    assert [(r["run_name"], r["returncode"]) for r in rec["runs"]] == [("t_c0_s0", 0), ("t_c0_s1", 0)]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

def start_sweep(*args, env=None):
    return subprocess.Popen(SWEEP + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

def wait_for(predicate, what, timeout=60):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)

def test_ctrl_c_stops_the_run_with_a_checkpoint_and_the_same_command_resumes(tmp_path, capfd):
    """Ctrl-C used to be a traceback and a killed child (subprocess.run kills it): no checkpoint, no 'stopped' line.
    Now the run gets one SIGTERM, checkpoints, is recorded as interrupted; the sweep exits 130 without a
    traceback; the same command continues it from the checkpoint into the same log and skips finished runs."""
    out = tmp_path / "out"
    cmd = ["t", "--seeds=2", f"--out={out}", f"--script={write_stub(tmp_path)}", "--launcher=python", "--",
           "--arch=gpt", "--arch=ngpt --sleep=0.1"]  # 2 s a run of config 1
    p = start_sweep(*cmd)
    wait_for(lambda: "t_c1_s0" in logs(out), "run t_c1_s0 to start")
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.splitlines()[0] == ("sweep: SIGINT: stopping run t_c1_s0 after its step, with a checkpoint (Ctrl-C "
                                      "again kills it at once, without one)")
    assert stderr.splitlines()[1:] == [f"sweep t: interrupted; {out}/sweep.json has what ran; the same command resumes"]
    assert "stub training t_c0_s1" not in stdout  # no run starts after the signal
    rec = {r["run_name"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert rec["t_c0_s0"]["returncode"] == 0 and "interrupted" not in rec["t_c0_s0"]
    assert rec["t_c1_s0"]["returncode"] == 128 + signal.SIGTERM and rec["t_c1_s0"]["interrupted"]
    [log] = logs(out)["t_c1_s0"]
    assert "stopped by signal 15" in log.read_text() and list((out / "checkpoints").glob("t_c1_s0_step*.pt"))
    again = sweep_here(capfd, *cmd)
    assert again.returncode == 0, again.stderr
    assert "t_c1_s0 was stopped before: continued from its checkpoint (--resume=auto)" in again.stdout
    assert "stub training t_c0_s0" not in again.stdout and "run 1/3 config 1 seed 0" in again.stdout
    assert logs(out)["t_c1_s0"] == [log] and "resumed from" in log.read_text() and "peak memory" in log.read_text()
    rec = json.loads((out / "sweep.json").read_text())["runs"]
    assert [(r["run_name"], r["returncode"], r.get("interrupted")) for r in rec] == [
        ("t_c0_s0", 0, None), ("t_c1_s0", 0, None), ("t_c0_s1", 0, None), ("t_c1_s1", 0, None)]

def test_second_ctrl_c_kills_the_run_which_is_redone_from_scratch(tmp_path, capfd):
    out = tmp_path / "out"
    cmd = ["t", "--seeds=1", f"--out={out}", f"--script={write_stub(tmp_path)}", "--launcher=python", "--",
           f"--arch=gpt --sleep=0.5 --slow_while={tmp_path / 'slow'}"]
    (tmp_path / "slow").touch()
    p = start_sweep(*cmd)
    wait_for(lambda: "t_c0_s0" in logs(out), "the run to start")
    p.send_signal(signal.SIGINT)
    time.sleep(0.1)  # the stub is inside its 0.5 s step: the second signal finds it still running
    p.send_signal(signal.SIGINT)
    stderr = p.communicate(timeout=60)[1]
    assert p.returncode == 130 and "Traceback" not in stderr
    assert stderr.splitlines()[1] == ("sweep: second signal: killing run t_c0_s0 now (no checkpoint; the same command "
                                      "redoes it or continues from an earlier checkpoint)")
    [run] = json.loads((out / "sweep.json").read_text())["runs"]
    assert run["returncode"] == -signal.SIGKILL and run["interrupted"] and not (out / "checkpoints").exists()
    [partial] = logs(out)["t_c0_s0"]
    (tmp_path / "slow").unlink()
    again = sweep_here(capfd, *cmd)
    assert again.returncode == 0, again.stderr
    assert (f"t_c0_s0 was stopped before without a checkpoint: redone from scratch (its partial log is now "
            f"{partial.name}.stale)") in again.stdout
    assert (out / (partial.name + ".stale")).exists() and len(logs(out)["t_c0_s0"]) == 1  # one log in the comparison

def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path, capfd):
    """Two sweeps into one --out used to both exit 0, the second's sweep.json overwriting the first's entries."""
    out, stub, slow = tmp_path / "out", write_stub(tmp_path), tmp_path / "slow"
    slow.touch()  # the first sweep's run goes on until the second sweep has been refused (it once ended before)
    first = start_sweep("a", "--seeds=1", f"--out={out}", f"--script={stub}", "--launcher=python", "--",
                        f"--arch=gpt --sleep=0.1 --slow_while={slow}")
    wait_for(lambda: "a_c0_s0" in logs(out), "the first sweep's run to start")
    second = sweep_here(capfd, "b", "--seeds=1", f"--out={out}", f"--script={stub}", "--launcher=python", "--", "--arch=ngpt")
    slow.unlink()
    assert second.returncode == 2 and "stub training" not in second.stdout
    assert second.stderr == (f"sweep: error: another sweep (pid {first.pid}) is running into {out} (it holds "
                             f"{out / '.sweep.lock'}): wait for it to end, or pass another --out\n")
    assert first.wait(timeout=60) == 0
    rec = json.loads((out / "sweep.json").read_text())
    assert [r["run_name"] for r in rec["runs"]] == ["a_c0_s0"] and "b_c0_s0" not in logs(out)
    # the lock goes with the process: the next sweep into the folder runs and adds its entries
    assert sweep_here(capfd, "b", "--seeds=1", f"--out={out}", f"--script={stub}", "--launcher=python", "--",
                     "--arch=ngpt").returncode == 0
    assert [r["run_name"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["a_c0_s0", "b_c1_s0"]

def test_bad_out_and_wrong_shaped_records_are_one_line(tmp_path, capfd):
    """--out a file or read-only, sweep.json of the wrong shape: tracebacks before; one line, exit 2, untouched."""
    stub = write_stub(tmp_path)
    go = lambda out: sweep_here(capfd, "t", "--seeds=1", f"--out={out}", f"--script={stub}", "--launcher=python", "--", "--arch=gpt")
    (tmp_path / "file").write_text("x")
    res = go(tmp_path / "file")
    assert (res.returncode, res.stderr) == (2, f"sweep: error: --out={tmp_path / 'file'} is a file, not a folder: pass a folder\n")
    assert (tmp_path / "file").read_text() == "x"
    if os.path.isdir("/sys/kernel") and not os.access("/sys/kernel", os.W_OK):  # sysfs: read-only for root too
        res = go("/sys/kernel")
        assert res.returncode == 2 and res.stderr.startswith("sweep: error: --out=/sys/kernel is not writable (")
        assert res.stderr.count("\n") == 1 and "stub training" not in res.stdout
    out = tmp_path / "out"
    out.mkdir()
    for bad, why in (('{"runs": 5}', '"runs" is 5, not a list of dicts'), ('{"configs": "x"}', '"configs" is "x", not a list of strs'),
                     ('{"runs": [{"seed": 0}]}', 'a run without a "run_name"'), ('{"seeds": [true]}', '"seeds" is [true], not a list of ints')):
        (out / "sweep.json").write_text(bad)
        res = go(out)
        assert res.returncode == 2 and res.stderr == (
            f"sweep: error: {out / 'sweep.json'} is unreadable ({why}): restore it (e.g. git checkout) or move it away "
            f"to start a new record there, or pass another --out\n"), res.stderr
        assert (out / "sweep.json").read_text() == bad and sorted(p.name for p in out.iterdir()) == ["sweep.json"]

def test_progress_lines_say_k_of_n_elapsed_and_eta(tmp_path, capfd):
    res = sweep_here(capfd, "t", "--seeds=2", f"--out={tmp_path / 'out'}", f"--script={write_stub(tmp_path)}",
                    "--launcher=python", "--", "--arch=gpt", "--arch=ngpt")
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if l.startswith("=== sweep t: run ")]
    assert [l.split(",")[0] for l in lines] == ["=== sweep t: run 1/4 config 0 seed 0", "=== sweep t: run 2/4 config 1 seed 0",
                                               "=== sweep t: run 3/4 config 0 seed 1", "=== sweep t: run 4/4 config 1 seed 1"]
    assert re.search(r", elapsed \d+s, eta n/a: ", lines[0])  # no run has ended yet
    assert all(re.search(r", elapsed \d+s, eta \d+s: ", l) for l in lines[1:])

@pytest.mark.slow
def test_save_every_run_interrupted_then_resumed_with_the_real_trainer(tmp_path, tiny_shards):
    """train_gpt.py refuses a fresh run whose name has checkpoints: the re-run of an interrupted --save_every run
    used to fail there (exit 2); with --checkpoint_dir under --out and --resume=auto it continues. On tiny_shards'
    1,024-token vocabulary a step is ~10x cheaper than at GPT-2's, so the run is 600 steps: after the first checkpoint
    (step 200) 400 more leave the signal time to arrive."""
    from conftest import cli_env  # one intra-op thread, as every CLI run of the suite: two spin on a shared CPU (5x)
    out = tmp_path / "out"
    tiny = ("--n_layer=1 --n_embd=32 --n_head=2 --seq_len=32 --batch_size=2 --device_batch_size=2 --steps=600 "
            "--val_every=600 --val_tokens=64 --sample_tokens=0 --bf16=false --kernels=torch --save_every=200 " + " ".join(tiny_shards))
    cmd = ["t", "--seeds=1", f"--out={out}", "--launcher=python", "--", tiny]
    p = start_sweep(*cmd, env=cli_env())
    wait_for(lambda: list((out / "checkpoints").glob("t_c0_s0_step*.pt")) if (out / "checkpoints").exists() else [],
             "the first checkpoint", timeout=300)
    p.send_signal(signal.SIGINT)
    stderr = p.communicate(timeout=300)[1]
    if p.returncode == 0:
        pytest.skip("the run ended before the signal reached it (a very fast machine)")
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    [log] = logs(out)["t_c0_s0"]
    assert "stopped by signal 15" in log.read_text()
    again = run_sweep(*cmd, env=cli_env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continued from its checkpoint" in again.stdout
    text = log.read_text()
    assert logs(out)["t_c0_s0"] == [log] and "resumed from" in text and "step:600/600 val_loss" in text

@pytest.mark.slow
def test_lr_grid_tunes_extends_past_an_edge_picks_then_confirms_on_fresh_seeds(tmp_path, capfd):
    """Config 0's best lr lies past the grid (8): 2 is an edge pick, the grid grows to 4 (--max_extend=1), still an
    edge: flagged. Config 1 has its own grid, and its lr 1 diverges (inf): 0.5 is picked, inside the grid."""
    out = tmp_path / "out"
    res = sweep_here(capfd, "t", "--lr_grid=0.5,1,2", "--tune_seeds=2", "--seeds=2", "--max_extend=1", f"--out={out}",
                    f"--script={write_stub(tmp_path)}", "--launcher=python", "--",
                    "--arch=gpt --best_lr=8", "--arch=ngpt --best_lr=0.5 --diverge_above=0.75 --lr_grid=0.25,0.5,1")
    assert res.returncode == 0, res.stderr
    rec = json.loads((out / "sweep.json").read_text())
    assert (rec["tune_seeds"], rec["confirm_seeds"], rec["lr_grid"], rec["seeds"]) == ([0, 1], [2, 3], [0.5, 1, 2], [0, 1, 2, 3])
    assert rec["picks"] == {"0": dict(lr_scale=4, edge=True, grid=[0.5, 1, 2, 4]),
                            "1": dict(lr_scale=0.5, edge=False, grid=[0.25, 0.5, 1])}
    runs = [(r["run_name"], r["phase"], r["lr_scale"], r["returncode"]) for r in rec["runs"]]
    assert runs == [(f"t_c{i}_lr{lr:g}_s{s}", "tune", lr, 2 if i and lr == 1 else 0)
                    for s in (0, 1) for i, grid in enumerate(([0.5, 1, 2], [0.25, 0.5, 1])) for lr in grid] + [
        (f"t_c0_lr4_s{s}", "tune", 4, 0) for s in (0, 1)] + [
        (f"t_c{i}_lr{lr:g}_s{s}", "confirm", lr, 0) for s in (2, 3) for i, lr in ((0, 4), (1, 0.5))]
    cmd = rec["runs"][-1]["cmd"]  # the config's --lr_grid is the sweep's: stripped; the picked lr_scale appended
    assert cmd[2:6] == ["--arch=ngpt", "--best_lr=0.5", "--diverge_above=0.75", "--lr_scale=0.5"]
    assert "config 0 picks lr_scale 4 of 0.5,1,2,4 (mean tune losses 4.9010, 4.2010, 3.7010, 3.4010) (at the edge " \
           "after --max_extend extensions" in res.stdout
    assert "config 1 picks lr_scale 0.5 of 0.25,0.5,1 (mean tune losses 3.3010, 3.2010, inf)" in res.stdout
    assert "=== sweep t: run 1/16 (tune) config 0 lr_scale 0.5 seed 0, elapsed" in res.stdout
    # the comparison is of the confirm runs: each config at its pick on the 2 fresh seeds
    table = (out / "compare.txt").read_text()
    assert re.search(r"^baseline +\* +2 +3\.40", table, re.M) and re.search(r"^arch=ngpt lr_scale=0\.5 +2 +3\.20", table, re.M)

def test_lr_sweep_resumes_in_the_tune_and_the_confirm_phase(tmp_path, capfd):
    """Interrupted in the tune phase, then in the confirm phase: the same command goes on each time (picks
    recomputed from the finished tune logs), and no run is made twice."""
    out, slow = tmp_path / "out", tmp_path / "slow"
    cmd = ["t", "--lr_grid=1,2", "--tune_seeds=2", "--seeds=1", f"--out={out}", f"--script={write_stub(tmp_path)}",
           "--launcher=python", "--", f"--arch=gpt --best_lr=1.4 --sleep=0.05 --slow_while={slow}"]
    slow.touch()  # 1 s a run while it exists
    for target, k in (("t_c0_lr1_s1", 2), ("t_c0_lr1_s2", 6)):  # a tune run of seed 1, then the confirm run (seed 2)
        p = start_sweep(*cmd)
        wait_for(lambda: target in logs(out), f"run {target} to start")
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 130
        rec = json.loads((out / "sweep.json").read_text())["runs"]  # the planned runs, done or not
        assert [(r["returncode"], r.get("interrupted")) for r in rec][:k + 1] == [(0, None)] * k + [(143, True)]
        assert rec[k]["run_name"] == target and all(r["returncode"] is None for r in rec[k + 1:])
    slow.unlink()
    res = sweep_here(capfd, *cmd)
    assert res.returncode == 0, res.stderr
    assert "t_c0_lr1_s2 was stopped before: continued from its checkpoint" in res.stdout
    assert res.stdout.count("stub training") == 1 and "run 1/1 (confirm)" in res.stdout
    rec = json.loads((out / "sweep.json").read_text())
    # 1.4 is nearer 1 than 2 in log2: an edge pick of 1,2, so 0.5 was tuned too (before the second interruption)
    assert rec["picks"] == {"0": dict(lr_scale=1, edge=False, grid=[0.5, 1, 2])}
    assert [r["run_name"] for r in rec["runs"]] == ["t_c0_lr1_s0", "t_c0_lr2_s0", "t_c0_lr1_s1", "t_c0_lr2_s1",
                                                    "t_c0_lr0.5_s0", "t_c0_lr0.5_s1", "t_c0_lr1_s2"]
    assert all(r["returncode"] == 0 and "interrupted" not in r for r in rec["runs"])
    assert all(len(v) == 1 for v in logs(out).values())

def test_lr_grid_dry_run_prints_the_plan_and_its_time(tmp_path, capfd):
    res = sweep_here(capfd, "d", "--lr_grid=0.5,1,2", "--tune_seeds=2", "--seeds=3", "--seconds_per_run=10", "--dry_run",
                    "--launcher=python", f"--out={tmp_path / 'o'}", "--", "--arch=gpt", "--arch=ngpt --lr_grid=0.25,0.5")
    assert res.returncode == 0 and not (tmp_path / "o").exists(), res.stderr
    cmds = [shlex.split(l) for l in res.stdout.splitlines() if not l.startswith("#")]
    assert [c[-3].split("=")[1] for c in cmds] == [f"d_c{i}_lr{lr}_s{s}" for s in (0, 1) for i, grid in
                                                  enumerate((["0.5", "1", "2"], ["0.25", "0.5"])) for lr in grid]
    assert all("--lr_grid=0.25,0.5" not in c for c in cmds) and cmds[3][2:4] == ["--arch=ngpt", "--lr_scale=0.25"]
    after = [l for l in res.stdout.splitlines() if l.startswith("# after the pick")]
    assert len(after) == 6 and after[0] == "# after the pick: config 0 at its picked --lr_scale, seed 2: run_name d_c0_lr<pick>_s2"
    assert res.stdout.splitlines()[-1] == ("# 16 runs (+2 tune runs a config for each edge extension, up to "
                                           "--max_extend=2) x 10 s (--seconds_per_run) = 2m40s")

sys.path.insert(0, str(REPO / "records" / "ladder"))
import run as ladder_run  # noqa: E402

def write_ladder(tmp_path, **extra):
    ladder = dict(rungs=[dict(name="a", folder=str(tmp_path / "a"), flags="--n_layer=1", seconds_per_run=1),
                         dict(name="b", folder=str(tmp_path / "b"), flags="--n_layer=2", seconds_per_run=10)],
                  arms={"gpt": "--arch=gpt", "ngpt": "--arch=ngpt"}, lr_grid="1,2", lr_grids={"ngpt": "0.5,1"},
                  tune_seeds=1, confirm_seeds=1, claims=[], **extra)
    (tmp_path / "ladder.json").write_text(json.dumps(ladder))
    return str(tmp_path / "ladder.json")

def test_ladder_plan_prints_every_run_and_the_cpu_time(tmp_path, capsys):
    assert ladder_run.main([f"--ladder={write_ladder(tmp_path)}", "--plan", "--launcher=python"]) == 0
    text = capsys.readouterr().out
    cmds = [shlex.split(l) for l in text.splitlines() if not l.startswith("#")]
    assert len(cmds) == 8 and cmds[0][2:4] == ["--n_layer=1", "--arch=gpt"] and cmds[-1][2:5] == ["--n_layer=2", "--arch=ngpt", "--lr_scale=1"]
    assert "## rung a: 6 runs x 1 s = 6s of CPU" in text and "## rung b: 6 runs x 10 s = 1m00s of CPU" in text
    assert text.splitlines()[-1].startswith("## ladder: 12 runs, 1m06s of CPU (0.02 h;")
    assert not (tmp_path / "a").exists()

def test_ladder_passes_its_max_extend_to_every_rung(tmp_path):
    """ladder.json's "max_extend" reaches sweep.py (an arm still at the edge after sweep's default 2 extensions)."""
    ladder = ladder_run.load_ladder(write_ladder(tmp_path, max_extend=4))
    assert all("--max_extend=4" in ladder_run.sweep_argv(ladder, r) for r in ladder["rungs"])
    assert "--max_extend=2" in ladder_run.sweep_argv(ladder_run.load_ladder(write_ladder(tmp_path)), ladder["rungs"][0])

def test_a_rung_runs_its_own_arms_at_its_own_grids(tmp_path):
    """A rung's "arms" picks the arms it runs (in the ladder's order); its "lr_grids" (e.g. centred on the rung
    below's picks) win over the ladder's; an arm name that is not an arm is one line before any run."""
    path = write_ladder(tmp_path)
    rec = json.loads(Path(path).read_text())
    rec["arms"]["dyt"] = "--norm=dyt"
    rec["rungs"][1].update(arms=["ngpt", "gpt"], lr_grids={"ngpt": "4,8,16"})
    Path(path).write_text(json.dumps(rec))
    ladder = ladder_run.load_ladder(path)
    argv = ladder_run.sweep_argv(ladder, ladder["rungs"][1])
    assert argv[argv.index("--") + 1:] == ["--n_layer=2 --arch=gpt", "--n_layer=2 --arch=ngpt --lr_grid=4,8,16"]
    first = ladder_run.sweep_argv(ladder, ladder["rungs"][0])
    assert first[first.index("--") + 1:] == ["--n_layer=1 --arch=gpt", "--n_layer=1 --arch=ngpt --lr_grid=0.5,1",
                                             "--n_layer=1 --norm=dyt"]
    assert [ladder_run.n_runs(ladder, r) for r in ladder["rungs"]] == [2 + 1 + 2 + 1 + 2 + 1, 2 + 1 + 3 + 1]
    rec["rungs"][1]["arms"] = ["gpt", "nope"]
    Path(path).write_text(json.dumps(rec))
    with pytest.raises(ladder_run.sweep.SweepError, match=r"rung b: \['nope'\] not among the arms"):
        ladder_run.load_ladder(path)

def test_ladder_runs_rung_by_rung_stops_on_the_budget_and_resumes(tmp_path, capfd):
    """--only runs one rung; --budget_hours stops between runs (exit 3) before one that would end past it; the
    same command resumes and the next rungs follow."""
    ladder, slow = write_ladder(tmp_path), tmp_path / "slow"
    common = [f"--ladder={ladder}", f"--script={write_stub(tmp_path)}", "--launcher=python"]
    rec = json.loads(Path(ladder).read_text())
    rec["arms"] = {k: f"{v} --sleep=0.05 --slow_while={slow}" for k, v in rec["arms"].items()}
    Path(ladder).write_text(json.dumps(rec))
    slow.touch()  # a run takes > 1 s: after the first one, the next would end past 1.5 s
    assert ladder_run.main(common + ["--only=a", f"--budget_hours={1.5 / 3600}"]) == 3
    out = capfd.readouterr().out
    assert out.count("stub training") == 1 and re.search(r"the budget of 0\.0004\d* h would be spent", out)
    assert "stopping with 5 runs left; the same command resumes" in out and not (tmp_path / "b").exists()
    assert ladder_run.main(common + ["--only=a", "--plan"]) == 0  # the plan counts the finished run
    assert "## rung a: 6 runs, 1 done, 5 left x 1 s = 5s of CPU" in capfd.readouterr().out
    slow.unlink()
    assert ladder_run.main(common + ["--only=a"]) == 0
    # 5 left, and 2 more: each arm's pick (1: the stub's best) sat on an edge of its grid, which grew by a point
    assert capfd.readouterr().out.count("stub training") == 7 and not (tmp_path / "b").exists()
    assert ladder_run.main(common + ["--only=a", "--plan"]) == 0  # the extensions and the picks replayed: all done
    plan = capfd.readouterr().out
    assert "## rung a: 8 runs, 8 done, 0 left x 1 s = 0s of CPU" in plan and "<pick>" not in plan
    assert re.search(r"^# done: .* --arch=ngpt .*--lr_scale=1 --seed=1 .*--run_name=a_c1_lr1_s1 ", plan, re.M)
    sw = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert sw["configs"] == [f"--n_layer=1 --arch=gpt --sleep=0.05 --slow_while={slow}",
                             f"--n_layer=1 --arch=ngpt --sleep=0.05 --slow_while={slow} --lr_grid=0.5,1"]
    assert sw["picks"] == {str(i): dict(lr_scale=1, edge=False, grid=[0.5, 1, 2]) for i in (0, 1)}
    assert len(sw["runs"]) == 8
    assert ladder_run.main(common) == 0  # rung a is done: nothing runs there; rung b runs
    out = capfd.readouterr().out
    assert "stub training a_" not in out and "stub training b_c0_lr1_s0" in out
    assert (tmp_path / "b" / "compare.txt").exists()

# -----------------------------------------------------------------------------
# issue 32: the lr-sweep tools never print a wrong number

def grid_record(out, cfg="--arch=gpt"):
    """The sweep.json of `ov --lr_grid=0.5,1 --tune_seeds=1 --seeds=2 --max_extend=0`: tuned on seed 0, confirmed on 1, 2."""
    runs = [dict(config=0, args=cfg, seed=s, run_name=f"ov_c0_lr{lr:g}_s{s}", cmd=["train_gpt.py", f"--seed={s}"],
                 returncode=0, seconds=1.0,
                 lr_scale=lr, phase=phase) for s, lr, phase in ((0, 0.5, "tune"), (0, 1, "tune"), (1, 1, "confirm"),
                                                                  (2, 1, "confirm"))]
    rec = dict(name="ov", out=str(out), configs=[cfg], seeds=[0, 1, 2], runs=runs, tune_seeds=[0], confirm_seeds=[1, 2],
               lr_grid=[0.5, 1], max_extend=0, picks={"0": dict(lr_scale=1, edge=True, grid=[0.5, 1])})
    out.mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps(rec))
    return rec

def test_tune_and_confirm_seeds_never_mix_across_sweeps_into_a_folder(tmp_path, capsys):
    """The README's "more seeds" recipe applied to an lr sweep (--seed0=2 --seeds=1 after --tune_seeds=1 --seeds=2)
    used to tune on seed 2, an earlier confirm run, and rewrite tune_seeds to [2]. A later sweep into a folder tunes
    on the folder's tune seeds or is refused; a plain sweep and an lr sweep never share a folder."""
    out = tmp_path / "out"
    rec = grid_record(out)
    common = ["ov", f"--out={out}", "--lr_grid=0.5,1", "--tune_seeds=1", "--max_extend=0",
              f"--script={write_stub(tmp_path)}", "--launcher=python"]
    for extra in (["--dry_run"], []):
        assert sweep.main(common + ["--seed0=2", "--seeds=1", *extra, "--", "--arch=gpt"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out}: its lr picks were tuned on seeds [0] (sweep.json); this sweep would " \
                                       "tune on [2], an earlier confirm seed" in err and "a larger --seeds" in err
    assert json.loads((out / "sweep.json").read_text()) == rec and not logs(out)
    # more confirm seeds: the same command with a larger --seeds (tune seed 0, confirm seeds 1, 2, 3)
    assert sweep.main(common + ["--seeds=3", "--dry_run", "--", "--arch=gpt"]) == 0
    plan = capsys.readouterr().out
    assert "--seed=0" in plan and "--seed=2 " not in plan and "seed 3: run_name ov_c0_lr<pick>_s3" in plan
    # a sweep without --lr_grid into it would add lr_scale-1 runs to the tune and confirm seeds' arms
    assert sweep.main(["ov", f"--out={out}", "--seeds=1", "--seed0=5", "--dry_run", "--launcher=python", "--",
                       "--arch=gpt"]) == 2
    assert "holds an lr sweep (tuned on seeds [0])" in capsys.readouterr().err
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "sweep.json").write_text(json.dumps(dict(configs=["--arch=gpt"], seeds=[0], runs=[
        dict(config=0, args="--arch=gpt", seed=0, run_name="p_c0_s0", cmd=[], returncode=0, seconds=1.0)])))
    assert sweep.main(["p", f"--out={plain}", "--lr_grid=1,2", "--dry_run", "--launcher=python", "--", "--arch=gpt"]) == 2
    assert "holds the runs of a sweep without --lr_grid" in capsys.readouterr().err

def test_an_lr_grid_where_every_run_diverged_says_so_and_confirms_nothing(tmp_path, capfd):
    """At --lr_grid=1e29,1e30 every run ends on the trainer's NaN stop: the sweep used to pick 1e29 "at the edge after
    --max_extend extensions: the optimum may lie further out" and confirm it. Now: each run is called diverged, the
    config gets no pick and no confirm run, exit 1; --retry_failed does not redo a diverged run."""
    out = tmp_path / "out"
    cmd = ["t", "--lr_grid=1,2", "--tune_seeds=1", "--seeds=1", "--max_extend=0", f"--out={out}",
           f"--script={write_stub(tmp_path)}", "--launcher=python", "--", "--arch=gpt --diverge_above=0.5", "--arch=ngpt"]
    assert sweep.main(cmd) == 1
    res = capfd.readouterr()
    assert "run t_c0_lr1_s0 diverged (a non-finite loss, exit 2): counted as diverged, going on" in res.out
    assert "config 0: every lr_scale of 1,2 diverged on the tune seeds: no pick, nothing confirmed (lower the grid" in res.out
    assert "config 0 picks" not in res.out and "stub training t_c0_lr1_s1" not in res.out
    assert "stub training t_c1_lr1_s1" in res.out  # the other config is confirmed
    assert "sweep: config 0 has no pick: every lr_scale of its grid diverged" in res.err
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["picks"]["0"] == dict(lr_scale=None, edge=None, grid=[1, 2], diverged=True)
    assert [(r["run_name"], r.get("diverged")) for r in rec["runs"] if r["config"] == 0] == [
        ("t_c0_lr1_s0", True), ("t_c0_lr2_s0", True)]
    assert sweep.main(cmd[:1] + ["--retry_failed"] + cmd[1:]) == 1
    assert "stub training" not in capfd.readouterr().out  # a diverged run would diverge again

def test_every_bad_ladder_json_is_one_line_before_any_run(tmp_path, capsys):
    """"rungs": ["r1"], "lr_grid": [0.5, 1], "tune_seeds": "2", "seconds_per_run": "73" were tracebacks; a missing key
    printed only 'arms'; a rung's "arms": "gpt" printed `can only concatenate str (not "list") to str`. ladder.json is
    checked once: one line naming the key and the expected type, exit 2, with --plan or without, before any run."""
    path = write_ladder(tmp_path)
    good = json.loads(Path(path).read_text())
    grid = "a comma-separated list of positive lr_scale values, e.g. \"0.5,1,2\""
    cases = [(dict(rungs=["r1"]), '"rungs"[0] is "r1": a rung is an object {"name", "folder", "flags"}'),
             (dict(rungs=[]), '"rungs" is []: a non-empty list of rungs'),
             (dict(lr_grid="0,1"), f'"lr_grid" is "0,1": {grid}'),
             (dict(lr_grid=[0.5, 1]), f'"lr_grid" is [0.5, 1]: {grid}'),
             (dict(lr_grids={"ngpt": 2}), f'"lr_grids"["ngpt"] is 2: {grid}'),
             (dict(lr_grids={"nope": "1,2"}), '"lr_grids" names \'nope\', not one of the arms [\'gpt\', \'ngpt\']'),
             (dict(tune_seeds="2"), '"tune_seeds" is "2": an integer >= 1'),
             (dict(confirm_seeds=0), '"confirm_seeds" is 0: an integer >= 1'),
             (dict(max_extend=True), '"max_extend" is true: an integer >= 0'),
             (dict(arms={"gpt": ["--arch=gpt"]}), '"arms"["gpt"] is ["--arch=gpt"]: a string of train_gpt.py flags'),
             (dict(rungs=[dict(good["rungs"][0], seconds_per_run="73")]),
              '"rungs"[0]["seconds_per_run"] is "73": a positive number of seconds'),
             (dict(rungs=[dict(good["rungs"][0], arms="gpt")]), '"rungs"[0]["arms"] is "gpt": a list of arm names'),
             (dict(rungs=[dict(good["rungs"][0], flags=None)]), '"rungs"[0]["flags"] is null: a string'),
             (dict(rungs=[good["rungs"][0], dict(good["rungs"][1], folder=good["rungs"][0]["folder"])]),
              "rungs a and b share the folder"),
             ("arms", 'no "arms": ladder.json needs "rungs"')]
    for change, why in cases:
        bad = {k: v for k, v in good.items() if k != change} if isinstance(change, str) else dict(good, **change)
        Path(path).write_text(json.dumps(bad))
        for extra in (["--plan"], []):
            assert ladder_run.main([f"--ladder={path}", "--launcher=python", *extra]) == 2, why
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, (why, err)
            assert err.startswith(f"ladder: error: {path}: {why}"), (why, err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

def test_ladder_plan_of_the_finished_committed_ladder_leaves_nothing_to_run(capsys):
    """--plan on the finished committed ladder said 144 runs, 5h11m of CPU: it counted every run as to do and showed
    the confirm runs as lr<pick> though the picks were known. Now finished runs are marked done, the tune phase is
    replayed from them (extensions, picks), and the confirm runs are the picked commands."""
    assert ladder_run.main(["--plan", "--launcher=python"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "<pick>" not in out and not [l for l in lines if not l.startswith("#")]  # every run is done
    assert lines[-1].startswith("## ladder: 172 runs, 172 done, 0 left, 0s of CPU")
    assert "## rung r1: 74 runs, 74 done, 0 left x 73 s = 0s of CPU" in out
    assert "# sweep.json also holds 3 runs outside this plan (of another grid, pick or seed): r1_c2_lr8_s2" in out
    # nGPT's r1 pick, x16 after 4 extensions past 2 (records/ladder/README.md), confirmed on seeds 2-4
    assert sum(bool(re.match(r"# done: .* --arch=ngpt --lr_scale=16 --seed=[234] .*--run_name=r1_c2_lr16_s[234] ", l))
               for l in lines) == 3

def test_budget_hours_and_seconds_per_run_must_be_positive_numbers(tmp_path, capsys):
    """--budget_hours=nan meant no budget at all; 0 and -1 exited 3 saying "the same command resumes", which it never
    would. Both tools now take a positive finite number or say so in one line, exit 2, before any run."""
    stub, ladder = write_stub(tmp_path), write_ladder(tmp_path)
    for flag, bad in (("budget_hours", "nan"), ("budget_hours", "0"), ("budget_hours", "-1"), ("seconds_per_run", "inf")):
        what = "hours" if flag == "budget_hours" else "seconds"
        assert sweep.main(["t", "--seeds=1", f"--out={tmp_path / 'o'}", f"--{flag}={bad}", f"--script={stub}",
                           "--launcher=python", "--", "--arch=gpt"]) == 2, bad
        assert capsys.readouterr().err == f"sweep: error: --{flag}={bad}: give a positive number of {what}\n"
        if flag == "budget_hours":
            assert ladder_run.main([f"--ladder={ladder}", f"--budget_hours={bad}", f"--script={stub}",
                                    "--launcher=python"]) == 2
            assert capsys.readouterr().err == f"ladder: error: --budget_hours={bad}: give a positive number of hours\n"
    assert not (tmp_path / "o").exists() and not (tmp_path / "a").exists()

def test_configs_and_name_are_checked_by_the_trainers_parser_before_any_run(tmp_path, capsys):
    """"--stpes=5", a config train_gpt.py refuses, NAME a/b started every run and failed them one by one (and the
    closing "--retry_failed runs them again" would fail the same way); "--lr_grid 0.5,1" (space form) went to the
    trainer. Every config is parsed with train_gpt.parse_args before anything is made; the space form is the
    config's grid, as the = form is."""
    out = tmp_path / "o"
    # a budget no run fits in: had a config got through, nothing would have been trained either
    go = lambda name, *configs, opts=(): sweep.main([name, "--seeds=1", f"--out={out}", "--launcher=python",
                                                     "--budget_hours=1", "--seconds_per_run=1e9", *opts, "--", *configs])
    for args, why in (((("t", "--arch=gpt", "--stpes=5")), 'config 1 "--stpes=5": train_gpt.py refuses it: unknown flag '
                                                           '--stpes; did you mean --steps?'),
                      (("t", "--n_embd=30 --n_head=4"), 'config 0 "--n_embd=30 --n_head=4": train_gpt.py refuses it: '
                                                        '--n_embd=30 is not divisible by --n_head=4'),
                      (("a/b", "--arch=gpt"), "NAME 'a/b': it starts every run's name (a/b_c0_s0), so it must be one file "
                                              "name: no '/', no leading dot"),
                      (("t", "--arch=gpt --lr_grid"), 'config 0 "--arch=gpt --lr_grid": --lr_grid needs a value')):
        for dry in ((), ("--dry_run",)):
            assert go(*args, opts=dry) == 2, why
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err == f"sweep: error: {why}\n", captured.err
    assert not out.exists()
    assert go("t", "--lr_grid 0.5,1 --arch=gpt", opts=("--lr_grid=1,2", "--tune_seeds=1", "--dry_run")) == 0
    cmds = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]
    assert [c.split()[2:4] for c in cmds] == [["--arch=gpt", "--lr_scale=0.5"], ["--arch=gpt", "--lr_scale=1"]]

def test_an_empty_grid_or_one_whose_values_name_one_run_is_refused(tmp_path, capsys):
    """--lr_grid= (empty) ran a plain sweep without a word; --lr_grid=1,1.0000001 planned run lr1 twice (run names
    carry the lr to 6 significant digits)."""
    go = lambda grid, cfg="--arch=gpt": sweep.main(["t", f"--lr_grid={grid}", "--dry_run", f"--out={tmp_path / 'o'}",
                                                    f"--script={write_stub(tmp_path)}", "--launcher=python", "--", cfg])
    same = "1 and 1.0000001 both name the runs lr1 (run names carry 6 significant digits): give values that differ there"
    for args, why in ((("",), '--lr_grid=: a comma-separated list of positive lr_scale values, e.g. 0.5,1,2'),
                      (("1,1.0000001",), f"--lr_grid=1,1.0000001: {same}"),
                      (("1,2", "--arch=gpt --lr_grid=1,1.0000001"),
                       f'config 0 "--arch=gpt --lr_grid=1,1.0000001": --lr_grid=1,1.0000001: {same}')):
        assert go(*args) == 2, why
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"sweep: error: {why}\n"
