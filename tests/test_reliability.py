"""Reliability of train_gpt.py, through its real command line: checkpoints and --resume, SIGTERM/SIGINT,
NaN stops, log files, and the errors a user gets for bad input (SPEC.md, "Reliability").

Every run is a real subprocess (`python train_gpt.py ...` or `python -m torch.distributed.run ...`, gloo on the
CPU; conftest.run_cli) of the tiny model on conftest's tiny shards. Signals are real: the test reads the run's
stdout as it comes and sends the signal when a given `step:K/` line appears. Runs that several tests need (an
uninterrupted reference, a run stopped by a signal) are made once per module and copied before a test changes them.
That a 2-process run matches the 1-process run is tested (more strictly, on the final weights) in test_train.py;
the shard and missing-data errors themselves in test_loader.py (here: that they reach the user through the CLI).
"""
import os, re, glob, time, queue, shutil, signal, threading, subprocess
import numpy as np
import pytest
import torch

import train_gpt
from conftest import ROOT, TINY, cli_command, cli_env, run_cli, step_lines

STEPS, SAVE_EVERY, KEEP, SIGNAL_AT = 8, 2, 2, 3  # the signal goes out when step:3/8 is logged: the run stops at step 3 or 4
RUN = "rel"

# ----------------------------------------------------------------------------- a run read while it runs

class Live:
    """A run whose stdout is read line by line while it runs, so a signal can be sent at a chosen step."""
    def __init__(self, args, world=1):
        self.p = subprocess.Popen(cli_command(args, world), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        self.out, self.err, self.q = [], [], queue.Queue()
        self.threads = [threading.Thread(target=self._pump, args=(self.p.stdout, self.out, True), daemon=True),
                        threading.Thread(target=self._pump, args=(self.p.stderr, self.err, False), daemon=True)]
        for t in self.threads: t.start()

    def _pump(self, stream, sink, to_queue):
        for line in stream:
            sink.append(line)
            if to_queue: self.q.put(line)
        if to_queue: self.q.put(None)

    def wait_for(self, pattern, timeout=240):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill(); pytest.fail(f"no line matching {pattern!r} within {timeout}s:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}")
            if line is None:
                self.finish(); pytest.fail(f"the run ended (rc={self.p.returncode}) before a line matching {pattern!r}:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}")
            if re.match(pattern, line):
                return line

    def signal(self, sig):
        self.p.send_signal(sig)

    def finish(self, timeout=240):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(); pytest.fail(f"the run did not end within {timeout}s:\n{self.stdout[-3000:]}")
        for t in self.threads: t.join(10)
        return self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            self.p.terminate()  # torchrun passes it on to its workers
            try: self.p.wait(40)
            except subprocess.TimeoutExpired: self.p.kill(); self.p.wait()

    @property
    def stdout(self): return "".join(self.out)
    @property
    def stderr(self): return "".join(self.err)

# ----------------------------------------------------------------------------- reading what a run left

def per_step(text, kind="train"):
    """{step: logged loss} of the train or val lines (conftest.step_lines); a step logged twice (replayed after a
    fallback to an older checkpoint) must have been logged with the same loss both times."""
    seen = {}
    for step, loss in re.findall(rf"^step:(\d+)/\d+ {kind}_loss:(\S+)", text, re.M):
        assert seen.setdefault(step, loss) == loss, f"step {step} logged twice with different losses: {seen[step]} vs {loss}"
    lines = step_lines(text)[kind]
    return lines if kind == "train" else {s: loss for s, (loss, _) in lines.items()}

def read(path):
    with open(path) as f:
        return f.read()

def log_files(log_dir):
    return sorted(glob.glob(os.path.join(log_dir, "*.txt")))

def ckpt_steps(ck_dir, run_name=RUN):
    return [int(re.search(r"_step(\d+)\.pt$", p).group(1)) for p in train_gpt.list_checkpoints(str(ck_dir), run_name)]

def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)

def assert_same_tensors(a, b, where):
    """Recursive bit-exact comparison of (nested) checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max abs diff {(a.double() - b.double()).abs().max().item():.3g})"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a: assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)): assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"

def assert_same_training_state(ref_ckpt, new_ckpt):
    a, b = load(ref_ckpt), load(new_ckpt)
    assert a["step"] == b["step"]
    assert_same_tensors(a["model"], b["model"], "model")
    assert_same_tensors(a["optimizers"], b["optimizers"], "optimizers")
    assert a["loader"] == b["loader"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])

def assert_clean_error(p, *needles):
    """A user-caused failure: non-zero exit, one `error:` line naming what is wrong, no traceback."""
    assert p.returncode not in (0, None), f"expected a failure, got rc={p.returncode}\n{p.stdout[-2000:]}"
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "error:" in p.stderr, p.stderr[-3000:]
    for n in needles:
        assert n in p.stderr, f"{n!r} not in the error:\n{p.stderr[-3000:]}"

# ----------------------------------------------------------------------------- shared runs

# conftest.TINY on conftest's tiny shards (3 train shards of 600 tokens = 4 steps each: the loader crosses a shard
# boundary mid-run), without the sample at the end
QUIET = [*TINY, "--val_tokens=256", "--sample_tokens=0"]

def flags(shards, where, arch="gpt", world=1, steps=STEPS, extra=()):
    return [*QUIET, *shards, f"--arch={arch}", f"--device_batch_size={4 // world}", f"--steps={steps}", "--val_every=4",
            f"--save_every={SAVE_EVERY}", f"--keep_checkpoints={KEEP}", f"--run_name={RUN}", f"--log_dir={where}/logs",
            f"--checkpoint_dir={where}/ck", *extra]

class Shared:
    """Runs made once per module: an uninterrupted reference and a run stopped by a signal, per (arch, world)."""
    def __init__(self, factory, shards):
        self.factory, self.shards, self.refs, self.stopped = factory, shards, {}, {}
        self.logs = factory.mktemp("shared_logs")  # reference and stopped run of one config share a log dir

    def reference(self, arch="gpt", world=1):
        key = (arch, world)
        if key not in self.refs:
            where = self.factory.mktemp(f"ref_{arch}_{world}")
            p = run_cli(*flags(self.shards, where, arch, world), f"--log_dir={self.logs}/{arch}_{world}", world=world)
            assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
            self.refs[key] = dict(dir=where, ck=where / "ck", p=p, train=per_step(p.stdout, "train"), val=per_step(p.stdout, "val"))
        return self.refs[key]

    def interrupted(self, arch="gpt", world=1, sig=signal.SIGTERM):
        key = (arch, world, sig)
        if key not in self.stopped:
            where = self.factory.mktemp(f"stop_{arch}_{world}")
            live = Live(flags(self.shards, where, arch, world) + [f"--log_dir={self.logs}/{arch}_{world}"], world)
            live.wait_for(rf"step:{SIGNAL_AT}/{STEPS} train_loss")
            live.signal(sig)
            rc = live.finish()
            out = live.stdout
            saved = re.findall(rf"^checkpoint saved: (\S+) step:(\d+)$", out, re.M)
            stopped = re.search(rf"^stopped by signal {int(sig)} after step (\d+); resume with --resume=auto --run_name={RUN}$", out, re.M)
            assert stopped, f"no 'stopped by signal' line (rc={rc}):\n{out[-3000:]}\n{live.stderr[-3000:]}"
            k = int(stopped.group(1))
            assert SIGNAL_AT <= k < STEPS, f"stopped at step {k}: the signal sent when step {SIGNAL_AT} was logged should stop that step or the next (machine too slow?)"
            assert saved and saved[-1] == (str(where / "ck" / f"{RUN}_step{k}.pt"), str(k)), saved
            run_id = re.search(r'"run_id": "([^"]+)"', out).group(1)
            log = os.path.join(self.logs, f"{arch}_{world}", run_id + ".txt")
            self.stopped[key] = dict(dir=where, ck=where / "ck", rc=rc, stdout=out, stderr=live.stderr, k=k,
                                     log=log, log_text=read(log), run_id=run_id)
        return self.stopped[key]

    def copy_stopped(self, stopped, dest):
        """The stopped run's checkpoints and log file, copied to dest/ck and dest/logs, for a test to resume."""
        shutil.copytree(stopped["ck"], dest / "ck")
        os.makedirs(dest / "logs")
        shutil.copy(stopped["log"], dest / "logs")
        return dest / "logs" / os.path.basename(stopped["log"])

@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_shards):
    return Shared(tmp_path_factory, tiny_shards)

# ----------------------------------------------------------------------------- signal, checkpoint, resume

def check_resume_reproduces(shared, tiny_shards, tmp_path, arch, world, sig):
    ref, stopped = shared.reference(arch, world), shared.interrupted(arch, world, sig)
    k = stopped["k"]
    # the stopped run: exit 128+signum, the checkpoint of step k written and logged, in the log file too
    if world == 1:
        assert stopped["rc"] == 128 + int(sig), stopped["rc"]
    else:  # torchrun itself exits 1 after passing the signal on; its workers' codes are not reported
        assert stopped["rc"] != 0
    for needle in (f"checkpoint saved: {stopped['ck']}/{RUN}_step{k}.pt step:{k}", f"stopped by signal {int(sig)} after step {k}"):
        assert needle in stopped["log_text"], needle
    assert not glob.glob(str(stopped["ck"] / "*.tmp"))
    # its losses so far are the reference's
    got = per_step(stopped["stdout"], "train")
    assert got == {s: v for s, v in ref["train"].items() if s <= k}

    log = shared.copy_stopped(stopped, tmp_path)
    p = run_cli(*flags(tiny_shards, tmp_path, arch, world, extra=["--resume=auto"]), world=world)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resumed from {tmp_path / 'ck'}/{RUN}_step{k}.pt at step {k}" in p.stdout
    # every step's train loss and every val loss equal the uninterrupted run's, as logged (4 decimals)
    resumed = per_step(p.stdout, "train")
    assert min(resumed) == k + 1 and max(resumed) == STEPS
    assert {**got, **resumed} == ref["train"]
    assert {**per_step(stopped["stdout"], "val"), **per_step(p.stdout, "val")} == ref["val"]
    # ... and bit for bit: the final weights, optimizer states, loader position and RNG state
    assert_same_training_state(ref["ck"] / f"{RUN}_step{STEPS}.pt", tmp_path / "ck" / f"{RUN}_step{STEPS}.pt")
    # the resumed run appended to the same log file (the old content untouched), with a marker
    assert log_files(tmp_path / "logs") == [str(log)]
    text = read(log)
    assert text.startswith(stopped["log_text"])
    tail = text[len(stopped["log_text"]):]
    assert tail.startswith(f"resumed from {tmp_path / 'ck'}/{RUN}_step{k}.pt at step {k}\n"), tail[:300]
    assert per_step(text, "train") == ref["train"]

@pytest.mark.parametrize("arch,sig", [("gpt", signal.SIGTERM), ("ngpt", signal.SIGTERM), ("angpt", signal.SIGINT)])
def test_signal_then_resume_auto_reproduces_every_loss(shared, tiny_shards, tmp_path, arch, sig):
    """Stopped by SIGTERM (SIGINT for angpt) after step k, resumed with --resume=auto: the same per-step losses
    and bit-identical final weights as the uninterrupted run."""
    check_resume_reproduces(shared, tiny_shards, tmp_path, arch, 1, sig)

@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_signal_then_resume_under_torchrun(shared, tiny_shards, tmp_path, arch):
    """2-process gloo torchrun: SIGTERM to torchrun (which forwards it to both ranks) stops both ranks at the same
    step after a checkpoint; the resumed 2-process run reproduces the uninterrupted 2-process run (nGPT too: its
    weight projection and lazy-projection counter must survive the resume on every rank)."""
    stopped = shared.interrupted(arch, 2)
    # both workers ended on their own (torchrun kills a worker with SIGKILL only after 30s of waiting)
    assert "forcefully exiting" not in stopped["stderr"], stopped["stderr"][-3000:]
    assert "world_size 2" in stopped["log_text"]
    check_resume_reproduces(shared, tiny_shards, tmp_path, arch, 2, signal.SIGTERM)

def test_second_signal_exits_at_once(tiny_shards, tmp_path):
    """The first SIGTERM asks for a checkpoint at the end of the step; a second one exits at once (143), without
    finishing the step or saving. Both land in the validation of step 0 (2048 sequences of the shipped val shard:
    seconds even on a fast idle CPU; the run never gets to finish it), which starts right after the handler is
    installed, so a graceful stop cannot win the race."""
    args = [*QUIET, *tiny_shards, "--val_files=data/shakespeare/shakespeare_val_*.bin", "--val_tokens=65536",
            "--steps=50", "--save_every=0", f"--run_name={RUN}", f"--log_dir={tmp_path}/logs",
            f"--checkpoint_dir={tmp_path}/ck"]
    live = Live(args)
    live.wait_for(r"parameters: ")  # logged just before the handler is installed and validation starts
    time.sleep(0.5)
    live.signal(signal.SIGTERM)
    time.sleep(0.5)
    live.signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = live.finish(timeout=60)
    assert "step:0/50 val_loss" not in live.stdout, "validation ended before the signals: the test needs a longer one"
    assert rc == 128 + signal.SIGTERM, (rc, live.stderr[-2000:], live.stdout[-1500:])
    assert time.monotonic() - t0 < 10
    assert "checkpoint saved" not in live.stdout and "stopped by signal" not in live.stdout, live.stdout[-2000:]
    assert not os.path.exists(tmp_path / "ck")  # nothing written

def test_truncated_checkpoint_by_path_is_rejected(shared, tiny_shards, tmp_path):
    """A checkpoint cut short (a full disk, a killed copy), given by path: a clear error naming the file and
    what to do, no traceback, nothing trained."""
    stopped = shared.interrupted("gpt", 1)
    shared.copy_stopped(stopped, tmp_path)
    newest = train_gpt.list_checkpoints(str(tmp_path / "ck"), RUN)[-1]
    os.truncate(newest, os.path.getsize(newest) // 2)
    p = run_cli(*flags(tiny_shards, tmp_path, extra=[f"--resume={newest}"]))
    assert_clean_error(p, newest)
    assert "train_loss" not in p.stdout
    # what to do: take another checkpoint (an older one, or --resume=auto which skips unreadable ones); and with
    # one path given there is no "older one" to try
    assert "--resume=auto" in p.stderr.split("error:")[-1], p.stderr[-2000:]
    assert "trying an older one" not in p.stderr, p.stderr[-2000:]

def test_truncated_newest_checkpoint_auto_falls_back(shared, tiny_shards, tmp_path):
    """--resume=auto skips a cut-short newest checkpoint (with a warning), resumes from the one before, and still
    reproduces every loss and the final weights of the uninterrupted run."""
    ref, stopped = shared.reference("gpt", 1), shared.interrupted("gpt", 1)
    log = shared.copy_stopped(stopped, tmp_path)
    steps = ckpt_steps(tmp_path / "ck")
    assert len(steps) == KEEP >= 2, steps
    newest, previous = steps[-1], steps[-2]
    with open(tmp_path / "ck" / f"{RUN}_step{newest}.pt", "r+b") as f:
        f.truncate(1000)
    p = run_cli(*flags(tiny_shards, tmp_path, extra=["--resume=auto"]))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"{RUN}_step{newest}.pt" in p.stderr and "unreadable" in p.stderr
    assert f"resumed from {tmp_path / 'ck'}/{RUN}_step{previous}.pt at step {previous}" in p.stdout
    resumed = per_step(p.stdout, "train")
    assert min(resumed) == previous + 1
    assert {**per_step(stopped["stdout"], "train"), **resumed} == ref["train"]
    assert per_step(read(log), "train") == ref["train"]  # the replayed steps are logged again with equal values
    assert_same_training_state(ref["ck"] / f"{RUN}_step{STEPS}.pt", tmp_path / "ck" / f"{RUN}_step{STEPS}.pt")

def test_only_last_k_checkpoints_kept_and_no_temp_files(shared):
    """--keep_checkpoints=K: only the newest K of the run stay; the temp file of each atomic write is gone; every
    checkpoint left loads and holds everything a resume needs."""
    ref, stopped = shared.reference("gpt", 1), shared.interrupted("gpt", 1)
    saved = [int(s) for s in re.findall(r"^checkpoint saved: \S+ step:(\d+)$", ref["p"].stdout, re.M)]
    assert sorted(set(saved)) == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    assert ckpt_steps(ref["ck"]) == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))[-KEEP:]
    assert ckpt_steps(stopped["ck"])[-1] == stopped["k"] and len(ckpt_steps(stopped["ck"])) == KEEP
    for d in (ref["ck"], stopped["ck"]):
        assert sorted(os.listdir(d)) == sorted(os.path.basename(p) for p in train_gpt.list_checkpoints(str(d), RUN)), os.listdir(d)
    c = load(ref["ck"] / f"{RUN}_step{STEPS}.pt")
    assert {"step", "model", "optimizers", "loader", "rng", "args", "run_id"} <= c.keys()
    assert c["step"] == STEPS and len(c["optimizers"]) == 2  # gpt: Adam + Muon, both saved
    assert {"torch", "numpy", "python"} <= c["rng"].keys()

def test_final_checkpoint_written_once(shared):
    """Each checkpoint is written (and logged) once: when --steps is a multiple of --save_every the last step's
    checkpoint must not be written a second time after the loop (a second multi-GB write on a real model)."""
    out = shared.reference("gpt", 1)["p"].stdout
    lines = re.findall(rf"^checkpoint saved: \S+_step{STEPS}\.pt step:{STEPS}$", out, re.M)
    assert len(lines) == 1, lines

def test_resume_with_different_config_names_the_flags(shared, tiny_shards, tmp_path):
    stopped = shared.interrupted("gpt", 1)
    path = train_gpt.list_checkpoints(str(stopped["ck"]), RUN)[-1]
    p = run_cli(*flags(tiny_shards, tmp_path, extra=[f"--resume={path}", "--n_embd=128", "--seed=7"]))
    assert_clean_error(p, path, "--n_embd=64", "(now 128)", "--seed=0", "(now 7)")
    assert "train_loss" not in p.stdout
    # run-only flags (steps, log/checkpoint dirs, save_every, ...) may differ: not named
    assert "--steps" not in p.stderr and "--checkpoint_dir" not in p.stderr

def test_resume_path_that_does_not_exist(tiny_shards, tmp_path):
    missing = str(tmp_path / "no" / "such.pt")
    p = run_cli(*flags(tiny_shards, tmp_path, extra=[f"--resume={missing}"]))
    assert_clean_error(p, f"--resume={missing}", "--resume=auto")
    assert not os.path.exists(tmp_path / "logs") or not log_files(tmp_path / "logs")

def test_negative_save_every_is_rejected():
    """--save_every=-1 would checkpoint every step ((step + 1) % -1 == 0): reject it up front, naming the flag,
    with or without --resume (validate() only checks it when --resume is given)."""
    with pytest.raises(train_gpt.ConfigError, match="--save_every"):
        train_gpt.parse_args(["--save_every=-1"], cuda_available=False)

# ----------------------------------------------------------------------------- NaN, logs

def test_nan_loss_stops_with_step_and_last_checkpoint(tiny_shards, tmp_path):
    """An absurd learning rate (no softcap to hide it) makes the loss NaN at step 3: the run stops there with a
    non-zero exit, and the log names the step and the last checkpoint."""
    save_every = 2
    args = [*QUIET, *tiny_shards, "--steps=20", "--val_every=20", f"--save_every={save_every}", f"--run_name={RUN}",
            f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck", "--optimizer=adam", "--lr=1e30",
            "--logit_softcap=0"]
    p = run_cli(*args)
    assert p.returncode not in (0, None), p.stdout[-2000:]
    m = re.search(r"^step:(\d+)/20 train_loss:(\S+) .*not finite.*Last checkpoint: (.+)$", p.stdout, re.M)
    assert m, p.stdout[-3000:] + p.stderr[-2000:]
    step, loss, last = int(m.group(1)), m.group(2), m.group(3)
    assert loss in ("nan", "inf", "-inf") and 1 < step < 20
    assert max(per_step(p.stdout, "train")) == step  # nothing trained after it
    expect = str(tmp_path / "ck" / f"{RUN}_step{(step - 1) // save_every * save_every}.pt")
    assert last == expect and os.path.exists(expect)
    assert not os.path.exists(tmp_path / "ck" / f"{RUN}_step{step}.pt")  # no checkpoint of the broken step
    [log] = log_files(tmp_path / "logs")
    assert m.group(0) in read(log)

def test_same_run_name_never_overwrites_a_log(shared):
    """Two fresh runs with the same --run_name and --log_dir (the reference and the stopped run) write two log
    files, each whole: one run id per run."""
    ref, stopped = shared.reference("gpt", 1), shared.interrupted("gpt", 1)
    files = log_files(os.path.dirname(stopped["log"]))
    assert len(files) == 2 and all(os.path.basename(f).startswith(RUN + "_") for f in files), files
    texts = sorted((read(f) for f in files), key=lambda t: bool(re.search(r"^stopped by signal", t, re.M)))
    assert [len(re.findall(r"^config: \{", t, re.M)) for t in texts] == [1, 1]
    assert f"step:{STEPS}/{STEPS} val_loss" in texts[0] and "stopped by signal" in texts[1]

# ----------------------------------------------------------------------------- user-caused failures

def test_unwritable_log_dir_fails_before_training(tiny_shards, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    bad = str(tmp_path / "a_file" / "logs")
    p = run_cli(*QUIET, *tiny_shards, "--steps=2", f"--log_dir={bad}", f"--checkpoint_dir={tmp_path}/ck")
    assert_clean_error(p, bad, "--log_dir")
    assert "train_loss" not in p.stdout

def test_unwritable_checkpoint_dir_fails_before_training(tiny_shards, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    bad = str(tmp_path / "a_file" / "ck")
    p = run_cli(*QUIET, *tiny_shards, "--steps=2", "--save_every=1", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={bad}")
    assert_clean_error(p, bad, "--checkpoint_dir")
    assert "train_loss" not in p.stdout

def test_unwritable_checkpoint_dir_without_save_every_fails_before_training(tiny_shards, tmp_path):
    """A SIGTERM/SIGINT always writes a checkpoint, even with --save_every=0, so --checkpoint_dir must be checked up
    front in that case too; otherwise the stop signal of a long run ends in a traceback and no checkpoint."""
    (tmp_path / "a_file").write_text("not a folder")
    bad = str(tmp_path / "a_file" / "ck")
    p = run_cli(*QUIET, *tiny_shards, "--steps=2", "--save_every=0", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={bad}")
    assert_clean_error(p, bad, "--checkpoint_dir")
    assert "train_loss" not in p.stdout

@pytest.mark.parametrize("case", ["missing_train_files", "val_token_id_above_vocab"])
def test_data_error_reaches_the_user_before_training(tiny_shards, tmp_path, case):
    """A data error (the errors themselves: test_loader.py) comes out of the CLI as one `error:` line, exit code 2,
    no traceback, before anything is trained or written: a glob that matches nothing (FileNotFoundError, naming
    the fix) and a val shard holding a token id >= --vocab_size (ValueError, naming the file, the id and the flag)."""
    if case == "missing_train_files":
        missing = str(tmp_path / "nowhere" / "train_*.bin")
        args, needles = [f"--train_files={missing}"], [f"--train_files={missing}", "python data/tokenize_text.py"]
    else:
        (val,) = glob.glob(tiny_shards[1].split("=", 1)[1])
        tokens = np.array(train_gpt.read_shard(val))
        tokens[500] = 50304  # the default --vocab_size: one past the last id
        bad = tmp_path / "bad_val_000000.bin"
        train_gpt.write_shard(str(bad), tokens)
        args, needles = [f"--val_files={bad}"], [str(bad), "token id 50304", "--vocab_size=50304"]
    p = run_cli(*QUIET, *tiny_shards, *args, "--steps=2", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck")
    assert_clean_error(p, *needles)
    assert p.returncode == 2, p.returncode
    assert "train_loss" not in p.stdout and "val_loss" not in p.stdout
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ck").exists()  # failed before anything was written
