"""Reliability of train_gpt.py, through its real command line: checkpoints and --resume, SIGTERM/SIGINT,
NaN stops, log files, and the errors a user gets for bad input (SPEC.md, "Reliability").

Every run is a real subprocess (`python train_gpt.py ...` or `python -m torch.distributed.run ...`, gloo on the
CPU; conftest.run_cli) of the tiny model on conftest's tiny shards. Signals are real: the test reads the run's
stdout as it comes and sends the signal when a given `step:K/` line appears. Runs that several tests need (an
uninterrupted reference, a run stopped by a signal) are made once per module and copied before a test changes them.
That a 2-process run matches the 1-process run is tested (more strictly, on the final weights) in test_train.py;
the shard and missing-data errors themselves in test_loader.py (here: that they reach the user through the CLI).
"""
import os, re, glob, time, errno, queue, shutil, signal, builtins, threading, subprocess
from pathlib import Path
import numpy as np
import pytest
import torch

import train_gpt
from conftest import ROOT, TINY, cli_command, cli_env, kept_signal_handlers, run_cli, run_main, step_lines, train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs use one thread, as the CLI runs do

STEPS, SAVE_EVERY, KEEP, SIGNAL_AT = 8, 2, 2, 3  # the signal goes out when step:3/8 is logged: the run stops at step 3 or 4
RUN = "rel"

# ----------------------------------------------------------------------------- a run read while it runs

class Live:
    """A run whose stdout is read line by line while it runs, so a signal can be sent at a chosen step."""
    def __init__(self, args, world=1):
        # SIGINT at its default, as a terminal's foreground job has it: a shell's background job (`cmd &`, as CI
        # may start pytest) ignores it, a child inherits that, and Python then installs no KeyboardInterrupt
        self.p = subprocess.Popen(cli_command(args, world), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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

ARCH_FLAGS = {"ngpt_muon": ["--arch=ngpt", "--optimizer=muon"]}  # a run's label -> its flags (else --arch=label)


def flags(shards, where, arch="gpt", world=1, steps=STEPS, extra=()):
    return [*QUIET, *shards, *ARCH_FLAGS.get(arch, [f"--arch={arch}"]), f"--device_batch_size={4 // world}", f"--steps={steps}", "--val_every=4",
            f"--save_every={SAVE_EVERY}", f"--keep_checkpoints={KEEP}", f"--run_name={RUN}", f"--log_dir={where}/logs",
            f"--checkpoint_dir={where}/ck", *extra]

class Shared:
    """Runs made once per module: an uninterrupted reference (in this process for one rank) and a run stopped by a
    signal (a process of its own), per (arch, world)."""
    def __init__(self, factory, shards):
        self.factory, self.shards, self.refs, self.stopped = factory, shards, {}, {}
        self.logs = factory.mktemp("shared_logs")  # reference and stopped run of one config share a log dir

    def reference(self, arch="gpt", world=1):
        key = (arch, world)
        if key not in self.refs:
            where = self.factory.mktemp(f"ref_{arch}_{world}")
            args = [*flags(self.shards, where, arch, world), f"--log_dir={self.logs}/{arch}_{world}"]
            p = run_main(*args) if world == 1 else run_cli(*args, world=world)  # one process: this one
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
    args = flags(tiny_shards, tmp_path, arch, world, extra=["--resume=auto"])
    p = run_main(*args) if world == 1 else run_cli(*args, world=world)
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

@pytest.mark.slow
def test_signal_then_resume_under_torchrun(shared, tiny_shards, tmp_path):
    """2-process gloo torchrun: SIGTERM to torchrun (which forwards it to both ranks) stops both ranks at the same
    step after a checkpoint; the resumed 2-process run reproduces the uninterrupted 2-process run. One run holds what
    GPT's and nGPT's did apart: nGPT (its weight projection) under Muon (its Newton-Schulz split over the ranks) and
    Adam (the rest)."""
    arch = "ngpt_muon"
    stopped = shared.interrupted(arch, 2)
    # both workers ended on their own (torchrun kills a worker with SIGKILL only after 30s of waiting)
    assert "forcefully exiting" not in stopped["stderr"], stopped["stderr"][-3000:]
    assert "world_size 2" in stopped["log_text"]
    check_resume_reproduces(shared, tiny_shards, tmp_path, arch, 2, signal.SIGTERM)

def test_second_signal_exits_at_once(tiny_shards, tmp_path):
    """The first SIGTERM asks for a checkpoint at the end of the step; a second one exits at once (143), without
    finishing the step or saving, and says so in one line (before: without a word). Both land in the validation of step 0 (2048 sequences of the shipped val shard:
    seconds even on a fast idle CPU; the run never gets to finish it), which starts right after the handler is
    installed, so a graceful stop cannot win the race."""
    args = [*QUIET, *tiny_shards, "--val_files=data/shakespeare/shakespeare_val_*.bin", "--vocab_size=50304", "--val_tokens=65536",
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
    assert live.stderr == ("error: second signal 15: exiting at once, without finishing the step or writing a checkpoint; "
                           "--resume=auto continues from the last one\n"), live.stderr[-2000:]
    # nothing written: the checkpoint folder (made at start-up) holds only the run's lock, left by os._exit
    assert os.listdir(tmp_path / "ck") == [f"{RUN}.lock"]

def test_truncated_checkpoint_by_path_is_rejected(shared, tiny_shards, tmp_path):
    """A checkpoint cut short (a full disk, a killed copy), given by path: a clear error naming the file and
    what to do, no traceback, nothing trained."""
    stopped = shared.interrupted("gpt", 1)
    shared.copy_stopped(stopped, tmp_path)
    newest = train_gpt.list_checkpoints(str(tmp_path / "ck"), RUN)[-1]
    os.truncate(newest, os.path.getsize(newest) // 2)
    p = run_main(*flags(tiny_shards, tmp_path, extra=[f"--resume={newest}"]))
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
    p = run_main(*flags(tiny_shards, tmp_path, extra=["--resume=auto"]))
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
    p = run_main(*flags(tiny_shards, tmp_path, extra=[f"--resume={path}", "--n_embd=128", "--seed=7"]))
    assert_clean_error(p, path, "--n_embd=64", "(now 128)", "--seed=0", "(now 7)")
    assert "train_loss" not in p.stdout
    # run-only flags (steps, log/checkpoint dirs, save_every, ...) may differ: not named
    assert "--steps" not in p.stderr and "--checkpoint_dir" not in p.stderr

def test_resume_path_that_does_not_exist(tiny_shards, tmp_path):
    missing = str(tmp_path / "no" / "such.pt")
    p = run_main(*flags(tiny_shards, tmp_path, extra=[f"--resume={missing}"]))
    assert_clean_error(p, f"--resume={missing}", "--resume=auto")
    assert not os.path.exists(tmp_path / "logs") or not log_files(tmp_path / "logs")

def test_negative_save_every_is_rejected():
    """--save_every=-1 would checkpoint every step ((step + 1) % -1 == 0): reject it up front, naming the flag,
    with or without --resume (validate() only checks it when --resume is given)."""
    with pytest.raises(train_gpt.ConfigError, match="--save_every"):
        train_gpt.parse_args(["--save_every=-1"], cuda_available=False)

# ----------------------------------------------------------------------------- NaN, logs

def test_nan_loss_stops_with_step_and_last_checkpoint(tiny_shards, tmp_path):
    """An absurd learning rate (no softcap to hide it) makes the loss NaN at step 2 (the weights after step 1 are
    ~1e37, still finite): the run stops there with exit code 2, and the log names the step and the last checkpoint,
    which is finite and loads."""
    save_every = 1
    args = [*QUIET, *tiny_shards, "--steps=20", "--val_every=20", f"--save_every={save_every}", f"--run_name={RUN}",
            f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck", "--optimizer=adam", "--lr=1e37",
            "--logit_softcap=0"]
    p = run_main(*args)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    m = re.search(r"^step:(\d+)/20 train_loss:(\S+) .*not finite.*Last checkpoint: (.+)$", p.stdout, re.M)
    assert m, p.stdout[-3000:] + p.stderr[-2000:]
    step, loss, last = int(m.group(1)), m.group(2), m.group(3)
    assert loss in ("nan", "inf", "-inf") and 1 < step < 20
    assert max(per_step(p.stdout, "train")) == step  # nothing trained after it
    expect = str(tmp_path / "ck" / f"{RUN}_step{(step - 1) // save_every * save_every}.pt")
    assert last == expect and os.path.exists(expect)
    assert train_gpt.read_checkpoint(expect)[1] is None  # it loads, matches its checksum and is finite
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
    p = run_main(*QUIET, *tiny_shards, "--steps=2", f"--log_dir={bad}", f"--checkpoint_dir={tmp_path}/ck")
    assert_clean_error(p, bad, "--log_dir")
    assert "train_loss" not in p.stdout

def test_unwritable_checkpoint_dir_fails_before_training(tiny_shards, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    bad = str(tmp_path / "a_file" / "ck")
    p = run_main(*QUIET, *tiny_shards, "--steps=2", "--save_every=1", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={bad}")
    assert_clean_error(p, bad, "--checkpoint_dir")
    assert "train_loss" not in p.stdout

def test_unwritable_checkpoint_dir_without_save_every_fails_before_training(tiny_shards, tmp_path):
    """A SIGTERM/SIGINT always writes a checkpoint, even with --save_every=0, so --checkpoint_dir must be checked up
    front in that case too; otherwise the stop signal of a long run ends in a traceback and no checkpoint."""
    (tmp_path / "a_file").write_text("not a folder")
    bad = str(tmp_path / "a_file" / "ck")
    p = run_main(*QUIET, *tiny_shards, "--steps=2", "--save_every=0", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={bad}")
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
        vocab = int(tiny_shards[-1].split("=", 1)[1])  # tiny_shards' --vocab_size
        tokens[500] = vocab  # one past the last id
        bad = tmp_path / "bad_val_000000.bin"
        train_gpt.write_shard(str(bad), tokens)
        args, needles = [f"--val_files={bad}"], [str(bad), f"token id {vocab}", f"--vocab_size={vocab}"]
    p = run_main(*QUIET, *tiny_shards, *args, "--steps=2", f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck")
    assert_clean_error(p, *needles)
    assert p.returncode == 2, p.returncode
    assert "train_loss" not in p.stdout and "val_loss" not in p.stdout
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ck").exists()  # failed before anything was written

# ----------------------------------------------------------------------------- nothing lost: a run owns its name

# A model with a 512-token vocabulary on shards of ids < 512: its checkpoints are ~1 MB instead of the tiny GPT-2
# model's 78 MB, so these tests write and read many of them in seconds. It samples nothing (it decodes no GPT-2 text).
SMALL_VOCAB = 512

@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("small_shards")
    ids = np.random.default_rng(0).integers(0, SMALL_VOCAB, 2800)
    for i in range(3):
        train_gpt.write_shard(str(d / f"s_train_{i:06d}.bin"), ids[600 * i:600 * (i + 1)])
    train_gpt.write_shard(str(d / "s_val_000000.bin"), ids[1800:])
    return [f"--train_files={d}/s_train_*.bin", f"--val_files={d}/s_val_*.bin"]

def small(shards, where, *extra, steps=4):
    """CLI flags of a small-vocabulary run in where/logs and where/ck; in-process: train_gpt.parse_args(small(...))."""
    return [*QUIET, *shards, f"--vocab_size={SMALL_VOCAB}", f"--steps={steps}", f"--val_every={steps}", f"--save_every={SAVE_EVERY}",
            f"--keep_checkpoints={KEEP}", f"--run_name={RUN}", f"--log_dir={where}/logs", f"--checkpoint_dir={where}/ck", *extra]

def run_small(shards, where, *extra, steps=4):
    """A small run in this process (no CLI start-up to pay); returns its exit code."""
    return train_in_process(train_gpt.parse_args(small(shards, where, *extra, steps=steps)))

def snapshot(*folders):
    """{path: bytes} of every file under the folders: what a user had."""
    return {str(p): p.read_bytes() for d in folders for p in sorted(Path(d).rglob("*")) if p.is_file()}

def test_same_run_name_without_resume_is_refused_and_nothing_is_overwritten(small_shards, tmp_path):
    """A second fresh run with the name of one that has checkpoints (here with another --seed, which would have
    overwritten *_step2.pt / *_step4.pt and made the first run's resume fail on its --seed) is refused before it
    writes anything, naming both ways out; the first run's checkpoints and log are byte-identical afterwards and
    its resume still works."""
    assert run_small(small_shards, tmp_path) == 0
    before = snapshot(tmp_path / "ck", tmp_path / "logs")
    assert sorted(os.path.basename(p) for p in before if p.endswith(".pt")) == [f"{RUN}_step2.pt", f"{RUN}_step4.pt"]
    p = run_main(*small(small_shards, tmp_path, "--seed=1"))
    assert_clean_error(p, f"--run_name={RUN} already has checkpoints in {tmp_path}/ck", "--resume=auto", "another --run_name")
    assert p.returncode == 2 and "val_loss" not in p.stdout
    assert snapshot(tmp_path / "ck", tmp_path / "logs") == before  # no new log, no lock left, every byte as it was
    # resuming a checkpoint of another folder into this one would overwrite them too
    elsewhere = tmp_path / "other" / f"{RUN}_step2.pt"
    os.makedirs(elsewhere.parent); shutil.copy(tmp_path / "ck" / f"{RUN}_step2.pt", elsewhere)
    with pytest.raises(train_gpt.ConfigError, match="would overwrite"):
        run_small(small_shards, tmp_path, f"--resume={elsewhere}")
    assert snapshot(tmp_path / "ck", tmp_path / "logs") == before
    # the first run's own resume still works (from its last step: nothing left but the final validation)
    assert run_small(small_shards, tmp_path, "--resume=auto") == 0
    assert snapshot(tmp_path / "ck") == {p: b for p, b in before.items() if p.endswith(".pt")}

def test_same_run_started_twice_at_once_is_refused_and_a_crash_frees_the_name(small_shards, tmp_path):
    """While a run trains it holds a flock on <checkpoint_dir>/<run_name>.lock: the same run started again (here
    with --resume=auto, which would append to the same log and write the same checkpoints) fails at start-up naming
    the run, the lock file and what to do, and writes nothing. kill -9 of the first run frees the name (the OS drops
    the lock with the process): the next run starts."""
    lock = tmp_path / "ck" / f"{RUN}.lock"
    first = Live(small(small_shards, tmp_path, "--save_every=0", steps=100000))
    try:
        first.wait_for(r"step:1/100000 train_loss")
        p = run_cli(*small(small_shards, tmp_path, "--resume=auto", steps=100000))
        assert_clean_error(p, f"--run_name={RUN} is already running", str(lock), "another --run_name")
        assert first.p.poll() is None, "the first run ended before the second one was refused: the test proves nothing"
    finally:
        first.p.kill(); first.finish()
    [log] = log_files(tmp_path / "logs")
    assert len(re.findall(r"^config: ", read(log), re.M)) == 1 and not re.search(r"^resumed from", read(log), re.M)  # the first run's only
    assert os.listdir(tmp_path / "ck") == [f"{RUN}.lock"]  # left by the killed run, no longer locked
    assert run_small(small_shards, tmp_path, "--resume=auto", steps=2) == 0
    assert not lock.exists()  # released (and removed) when a run ends

def test_log_in_use_is_not_appended_to(small_shards, tmp_path):
    """A resumed run appends to its run's log, so that file is locked too: the same checkpoint resumed twice at once
    from two checkpoint folders (where the folder lock cannot see it) does not interleave lines in one log."""
    assert run_small(small_shards, tmp_path) == 0
    [log] = log_files(tmp_path / "logs")
    before = read(log)
    with train_gpt.run_lock(log, "held by the test", remove=False):  # as the first resumed run holds it
        with pytest.raises(train_gpt.ConfigError, match=f"the log {re.escape(log)} of --run_name={RUN} is in use by another process"):
            run_small(small_shards, tmp_path, f"--checkpoint_dir={tmp_path}/ck2", f"--resume={tmp_path}/ck/{RUN}_step2.pt")
    assert read(log) == before and not os.listdir(tmp_path / "ck2")  # nothing appended, no lock left

def test_resume_auto_with_nothing_to_resume_says_so(small_shards, tmp_path):
    """kill -9 during a checkpoint write leaves only its temp file (never a corrupt .pt): --resume=auto then starts
    from step 0 and says so in the log, and removes the dead write's temp file (this run holds the name's lock, so
    no live process is writing it)."""
    os.makedirs(tmp_path / "ck")
    tmp = tmp_path / "ck" / f"{RUN}_step2.pt.tmp"
    tmp.write_bytes(b"PK\x03\x04" + bytes(5000))  # what a killed torch.save leaves
    assert run_small(small_shards, tmp_path, "--resume=auto", steps=2) == 0
    [log] = log_files(tmp_path / "logs")
    text = read(log)
    assert f"--resume=auto: no checkpoint of --run_name={RUN} in {tmp_path}/ck/, starting from step 0" in text
    assert f"removed {tmp}: a checkpoint write that never finished" in text
    assert min(per_step(text)) == 1 and not tmp.exists() and ckpt_steps(tmp_path / "ck") == [2]

# ----------------------------------------------------------------------------- nothing lost: every checkpoint whole, ours and finite

def flip_bytes_in_largest_tensor(path):
    """Corrupts a checkpoint as a bad disk would: bytes in the middle of its largest tensor record flipped, the file
    length unchanged (torch.load checks no CRC, so only the checksum inside catches it)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2)
        data = f.read(16)
        f.seek(-16, 1); f.write(bytes(b ^ 0xFF for b in data))

def test_checkpoint_records_its_checksum_and_a_flipped_byte_is_caught(small_shards, tmp_path, capsys):
    """Each checkpoint holds a sha256 of its whole state and the tensor bytes it covers. One with bytes flipped
    inside a tensor (same length) is named with the fix when given by path, and skipped with a warning naming it by
    --resume=auto, which resumes from the one before."""
    assert run_small(small_shards, tmp_path) == 0
    newest, previous = (str(tmp_path / "ck" / f"{RUN}_step{k}.pt") for k in (4, 2))
    c = load(newest)
    assert c["checksum"] == train_gpt.state_checksum(c) and c["checksum"]["tensor_bytes"] > 0.5 * os.path.getsize(newest)
    size = os.path.getsize(newest)
    flip_bytes_in_largest_tensor(newest)
    assert os.path.getsize(newest) == size
    assert train_gpt.read_checkpoint(newest)[1].startswith("fails its checksum")
    p = run_main(*small(small_shards, tmp_path, f"--resume={newest}"))
    assert_clean_error(p, newest, "fails its checksum", "--resume=auto")
    assert "train_loss" not in p.stdout
    capsys.readouterr()
    assert run_small(small_shards, tmp_path, "--resume=auto") == 0
    out, err = capsys.readouterr()
    assert f"warning: checkpoint {newest} fails its checksum" in err and "trying an older one" in err
    assert f"resumed from {previous} at step 2" in out
    [log] = log_files(tmp_path / "logs")
    assert f"warning: skipped checkpoint {newest} fails its checksum" in read(log)
    assert ckpt_steps(tmp_path / "ck") == [2, 4] and train_gpt.read_checkpoint(newest)[1] is None  # step 4 rewritten whole

def test_non_finite_weights_are_never_checkpointed(tiny_shards, tmp_path):
    """--lr=1e30: after step 1 the weights are ~1e30 (finite, checkpointed), after step 2 the embedding is inf while
    step 2's loss, computed before that update, is still finite. Before, that step-2 checkpoint was written and the
    run named it; now it is not written, the log says why, and the run stops (exit 2) naming step 1's, which loads."""
    p = run_main(*QUIET, *tiny_shards, "--steps=20", "--val_every=20", "--save_every=1", f"--run_name={RUN}",
                f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck", "--optimizer=adam", "--lr=1e30", "--logit_softcap=0")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    step1 = str(tmp_path / "ck" / f"{RUN}_step1.pt")
    line = (f"checkpoint of step 2 not written: model.wte.weight is not finite -- stopping: the weights are not finite. "
            f"Last checkpoint: {step1}")
    assert line in p.stdout and line in read(log_files(tmp_path / "logs")[0])
    assert per_step(p.stdout)[2] > 1e6  # step 2's loss: huge, finite
    assert os.listdir(tmp_path / "ck") == [f"{RUN}_step1.pt"]  # no step 2, no temp file, no lock
    assert train_gpt.read_checkpoint(step1)[1] is None

def test_non_finite_val_loss_stops_before_sampling(tiny_shards, tmp_path):
    """--lr=1e37: step 1's loss is finite, its update leaves weights whose logits overflow, so the val loss after it
    is NaN. Before, only the train loss was checked and the run died in sampling ("probability tensor contains
    either inf, nan or element < 0"); now it stops there (exit 2) naming the last checkpoint, with no sample."""
    p = run_main(*QUIET, *tiny_shards, "--sample_tokens=5", "--steps=3", "--val_every=1", "--save_every=1", f"--run_name={RUN}",
                f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck", "--optimizer=adam", "--lr=1e37", "--logit_softcap=0")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "probability tensor" not in p.stderr, p.stderr[-2000:]
    step1 = str(tmp_path / "ck" / f"{RUN}_step1.pt")
    assert f"val_loss:nan at step 1 -- stopping: the val loss is not finite. Last checkpoint: {step1}" in p.stdout
    assert not re.search(r"^(sample|-{40})", p.stdout, re.M) and "step:2/3" not in p.stdout  # no sample, nothing trained after
    assert train_gpt.read_checkpoint(step1)[1] is None

# ----------------------------------------------------------------------------- files in the checkpoint folder that are not ours

def test_stray_and_foreign_files_in_the_checkpoint_folder(small_shards, tmp_path, capsys):
    """Only <run_name>_step<int>.pt files are the run's: a stray rel_step_best.pt (and rel_step3_step4.pt, a run
    named rel_step3's) is ignored by --resume=auto and by the first save's pruning (before: int() crashed on it),
    and does not make a fresh run's name taken. A .pt named like ours that is not a train_gpt.py checkpoint is
    skipped with a warning by --resume=auto, and named (no KeyError: 'args') when given by path."""
    os.makedirs(tmp_path / "ck")
    strays = {n: b"not ours" for n in (f"{RUN}_step_best.pt", f"{RUN}_step3_step4.pt", f"{RUN}_stepX.pt", "notes.txt")}
    for n, b in strays.items(): (tmp_path / "ck" / n).write_bytes(b)
    assert train_gpt.list_checkpoints(str(tmp_path / "ck"), RUN) == []
    assert run_small(small_shards, tmp_path, "--keep_checkpoints=1") == 0  # fresh: the name is free; step 4's save prunes step 2
    assert run_small(small_shards, tmp_path, "--resume=auto") == 0
    assert ckpt_steps(tmp_path / "ck") == [4] and all((tmp_path / "ck" / n).read_bytes() == b for n, b in strays.items())
    foreign = tmp_path / "ck" / f"{RUN}_step9.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign)  # someone's model, named like ours
    capsys.readouterr()
    assert run_small(small_shards, tmp_path, "--resume=auto") == 0
    out, err = capsys.readouterr()
    assert f"warning: checkpoint {foreign} is not a train_gpt.py checkpoint (it has no 'step'" in err, err
    assert f"resumed from {tmp_path / 'ck'}/{RUN}_step4.pt at step 4" in out
    p = run_main(*small(small_shards, tmp_path, f"--resume={foreign}"))
    assert_clean_error(p, f"checkpoint {foreign} is not a train_gpt.py checkpoint", "'args'")
    assert "KeyError" not in p.stderr and "train_loss" not in p.stdout

# ----------------------------------------------------------------------------- full disks, folders that cannot be made

@pytest.fixture(params=["tmpfs", "simulated"])
def small_disk(request, tmp_path, monkeypatch):
    """make(size) -> a folder that holds about `size` bytes. tmpfs: a real small tmpfs mounted there (needs root;
    skipped without it). simulated: train_gpt's open() wrapped so that writes under the folder raise
    OSError(ENOSPC) once `size` bytes were written there, for machines where mounting is impossible."""
    made = []
    def make(size):
        d = tmp_path / f"disk{len(made)}"
        d.mkdir(); made.append(d)
        if request.param == "tmpfs":
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): the simulated variant covers it")
        else:
            monkeypatch.setattr(train_gpt, "open", Quota(d, size).open, raising=False)
        return d
    yield make
    for d in made:
        if request.param == "tmpfs": subprocess.run(["umount", "-l", str(d)], capture_output=True)

class Quota:
    """open() for train_gpt whose writes under `root` fail with ENOSPC past `size` bytes in all."""
    def __init__(self, root, size):
        self.root, self.left = str(root), size
    def open(self, path, mode="r", *args, **kw):
        f = builtins.open(path, mode, *args, **kw)
        return Quota.File(f, self) if "r" not in mode and os.path.abspath(path).startswith(self.root + os.sep) else f
    class File:
        def __init__(self, f, quota): self.f, self.quota = f, quota
        def write(self, b):
            if len(b) > self.quota.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.quota.left -= len(b); return self.f.write(b)
        def __getattr__(self, name): return getattr(self.f, name)
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()

def test_full_disk_during_a_checkpoint_write(small_shards, tmp_path, small_disk):
    """--checkpoint_dir on a disk with room for one and a half checkpoints: the second save (step 4) runs out of
    space. Before: a traceback (OSError [Errno 28], then RuntimeError [enforce fail at inline_container.cc]), no
    checkpoint, the .tmp left behind. Now: one error naming the file, --checkpoint_dir and the last checkpoint; no
    temp file; step 2's checkpoint untouched, it loads and the run resumes from it elsewhere."""
    assert run_small(small_shards, tmp_path / "probe", steps=2) == 0
    size = os.path.getsize(tmp_path / "probe" / "ck" / f"{RUN}_step2.pt")
    ck = small_disk(size * 3 // 2)
    step2, step4 = str(ck / f"{RUN}_step2.pt"), str(ck / f"{RUN}_step4.pt")
    with pytest.raises(train_gpt.ConfigError) as e:
        run_small(small_shards, tmp_path, f"--checkpoint_dir={ck}")
    msg = str(e.value)
    assert msg.startswith(f"cannot write the checkpoint {step4} (No space left on device): free space in --checkpoint_dir={ck}"), msg
    assert f"the last checkpoint, {step2}, is as it was" in msg and "\n" not in msg
    assert sorted(os.listdir(ck)) == [f"{RUN}_step2.pt"]  # no temp file, no lock
    assert train_gpt.read_checkpoint(step2)[1] is None
    shutil.copy(step2, tmp_path / "roomy.pt")
    assert run_small(small_shards, tmp_path / "roomy", f"--resume={tmp_path / 'roomy.pt'}") == 0

@pytest.mark.parametrize("when", ["header", "line"])
def test_full_log_folder_is_one_error_naming_log_dir(small_shards, tmp_path, small_disk, when):
    """A 64 KB --log_dir cannot hold the header (this file's source): before, a traceback at start-up; now one
    error naming the log and --log_dir, before any training, and no half-written log left. A folder that fills up
    later (room for the header and a few dozen lines) ends the run the same way at the line that did not fit."""
    source = os.path.getsize(train_gpt.__file__)
    logs = small_disk(64 * 1024 if when == "header" else source + 12 * 1024)
    config = train_gpt.parse_args(small(small_shards, tmp_path, f"--log_dir={logs}", "--save_every=0", steps=2000))
    with pytest.raises(train_gpt.ConfigError) as e:
        train_in_process(config)
    msg = str(e.value)
    assert re.fullmatch(rf"cannot write the log {re.escape(str(logs))}/{RUN}_\w+\.txt \(No space left on device\): "
                        rf"free space in --log_dir={re.escape(str(logs))} or point --log_dir at another folder", msg), msg
    if when == "header":
        assert os.listdir(logs) == []
    else:
        [log] = log_files(logs)
        assert 10 < max(per_step(read(log))) < 2000  # it trained, then stopped at a line that did not fit
    assert not (tmp_path / "ck" / f"{RUN}.lock").exists()  # the run's lock went with it

def test_checkpoint_dir_that_cannot_be_made_fails_before_training(small_shards, tmp_path):
    """A --checkpoint_dir whose nearest existing parent is writable but that cannot be made (a name longer than the
    file system allows) passed the old start-up probe and failed at the first save, after the training steps, with
    a bare errno message. It is made at start-up now, so it fails there, naming --checkpoint_dir."""
    bad = str(tmp_path / ("c" * 300) / "ck")
    p = run_main(*small(small_shards, tmp_path, f"--checkpoint_dir={bad}"))
    assert_clean_error(p, bad, "File name too long", "point --checkpoint_dir at a writable folder")
    assert "train_loss" not in p.stdout and not log_files(tmp_path / "logs")

# ----------------------------------------------------------------------------- files from elsewhere: nothing in them runs

class RunsACommand:
    """What a hostile .pt holds: unpickling it calls os.system (the pickle names posix.system; this class is not needed
    to load it)."""
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))

@pytest.mark.parametrize("made_by", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_runs_code_is_refused_and_nothing_runs(small_shards, tmp_path, capsys, made_by):
    """A .pt whose pickle calls os.system when loaded: before, torch.load(weights_only=False) ran the command, then
    failed ("Invalid magic number") or resumed. Now nothing in it runs (weights_only=True: tensors, containers, plain
    values), by path (one error naming the file: not a checkpoint this trainer wrote) and by --resume=auto (skipped with
    that warning; the run resumes from the good checkpoint before it). The marker the command would make never appears."""
    import pickle
    marker = tmp_path / "the_command_ran"
    assert run_small(small_shards, tmp_path) == 0
    evil = tmp_path / "ck" / f"{RUN}_step9.pt"
    payload = {"step": 9, "args": {"run_name": RUN}, "model": RunsACommand(marker)}
    if made_by == "torch.save":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as f: pickle.dump(payload, f)
    p = run_cli(*small(small_shards, tmp_path, f"--resume={evil}"))
    assert not marker.exists(), "loading the checkpoint ran its command"
    assert_clean_error(p, f"checkpoint {evil} is not a checkpoint this trainer wrote", "nothing in it was run")
    if made_by == "torch.save":
        assert "posix.system" in p.stderr  # what it asked for, named
    assert "train_loss" not in p.stdout
    capsys.readouterr()
    assert run_small(small_shards, tmp_path, "--resume=auto") == 0
    out, err = capsys.readouterr()
    assert not marker.exists(), "--resume=auto ran the command of a file named like a checkpoint"
    assert f"warning: checkpoint {evil} is not a checkpoint this trainer wrote" in err, err
    assert f"resumed from {tmp_path / 'ck'}/{RUN}_step4.pt at step 4" in out

def test_checkpoints_hold_only_tensors_and_plain_values_and_old_ones_still_load(small_shards, tmp_path):
    """A checkpoint loads with torch.load(weights_only=True) and nothing allowed besides (the numpy RNG state is a
    tensor now). One written before (np.random.get_state()'s tuple, an ndarray inside) still loads, verifies and
    resumes to the same numpy RNG state."""
    assert run_small(small_shards, tmp_path, "--keep_checkpoints=1") == 0
    path = tmp_path / "ck" / f"{RUN}_step4.pt"
    new = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(new["rng"]["numpy"]["key"], torch.Tensor) and new["rng"]["numpy"]["key"].shape == (624,)
    np.random.seed(123); want = np.random.get_state()
    old = {**load(path), "rng": {**load(path)["rng"], "numpy": want}}
    del old["checksum"], old["shards"]  # as today's code wrote them: no shard list
    old["checksum"] = train_gpt.state_checksum(old)
    torch.save(old, path)
    ckpt, problem = train_gpt.read_checkpoint(str(path))
    assert problem is None, problem
    np.random.seed(0)
    train_gpt.set_rng_state(ckpt["rng"])
    assert np.array_equal(np.random.get_state()[1], want[1]) and np.random.get_state()[2] == want[2]
    assert run_small(small_shards, tmp_path, "--resume=auto") == 0

# ----------------------------------------------------------------------------- a resume continues the same run on the same data

def test_resume_under_another_run_name_is_refused(small_shards, tmp_path):
    """Run A's checkpoint resumed as --run_name=B appended B's steps to A's log (its run id is A's). Refused now, in one
    line naming A, before anything is written; A's log and checkpoints stay as they were."""
    assert run_small(small_shards, tmp_path) == 0
    before = snapshot(tmp_path / "ck", tmp_path / "logs")
    path = tmp_path / "ck" / f"{RUN}_step4.pt"
    with pytest.raises(train_gpt.ConfigError) as e:
        run_small(small_shards, tmp_path / "b", f"--resume={path}", "--run_name=other")
    assert str(e.value) == (f"checkpoint {path} belongs to --run_name={RUN}: resume it under that name, "
                            f"or start --run_name=other from step 0 without --resume")
    assert snapshot(tmp_path / "ck", tmp_path / "logs") == before
    assert not (tmp_path / "b" / "logs").exists() or not os.listdir(tmp_path / "b" / "logs")

@pytest.mark.parametrize("change", ["removed", "added", "changed", "resized"])
def test_resume_names_shards_that_changed(small_shards, tmp_path, change):
    """The checkpoint records its shards (name, size, sha256 of both ends). Resumed after a train shard was removed
    (before: IndexError, or silently other data), added, or rewritten (before: not noticed), the run stops before any
    work with one line saying what changed and the fix."""
    data = tmp_path / "data"
    shutil.copytree(os.path.dirname(small_shards[0].split("=", 1)[1]), data)
    shards = [f"--train_files={data}/s_train_*.bin", f"--val_files={data}/s_val_*.bin"]
    assert run_small(shards, tmp_path) == 0
    last = data / "s_train_000002.bin"
    ids = np.array(train_gpt.read_shard(str(last)))
    if change == "removed": os.remove(last)
    elif change == "added": train_gpt.write_shard(str(data / "s_train_000003.bin"), ids)
    elif change == "changed": train_gpt.write_shard(str(last), ids[::-1])
    else: train_gpt.write_shard(str(last), ids[:100])
    [log] = log_files(tmp_path / "logs")
    before = read(log)
    with pytest.raises(train_gpt.ConfigError) as e:
        run_small(shards, tmp_path, "--resume=auto")
    msg = str(e.value)
    what = {"removed": "removed s_train_000002.bin", "added": "added s_train_000003.bin",
            "changed": "changed s_train_000002.bin (same size, other contents)",
            "resized": "changed s_train_000002.bin (2224 -> 1224 bytes)"}[change]
    assert msg == (f"--train_files={data}/s_train_*.bin: the shards differ from those checkpoint {tmp_path}/ck/{RUN}_step4.pt "
                   f"was trained on ({what}): restore them to resume, or start a new --run_name"), msg
    assert read(log) == before  # nothing appended: it failed before any work

# ----------------------------------------------------------------------------- messages: one line, the flag or file, the fix

def test_nan_stop_before_the_first_checkpoint_says_when_it_is_due(tiny_shards, tmp_path, capsys):
    """A NaN stop before the first periodic checkpoint said "Last checkpoint: none (set --save_every)" although
    --save_every was set; it says when the first one is due now."""
    config = train_gpt.parse_args([*QUIET, *tiny_shards, "--steps=20", "--val_every=20", "--save_every=5", f"--run_name={RUN}",
                                   f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck", "--optimizer=adam",
                                   "--lr=1e37", "--logit_softcap=0"])
    assert train_in_process(config) == 2
    out = capsys.readouterr().out
    assert re.search(r"^step:[234]/20 train_loss:nan .* Last checkpoint: none yet \(the first is due at step 5\)$", out, re.M), out[-2000:]

def cli_without(*names, **extra):
    """cli_env without the named variables (conftest sets TRITON_INTERPRET=1 for the tests)."""
    return {k: v for k, v in cli_env(**extra).items() if k not in names}

@pytest.mark.parametrize("why", ["no_interpreter", "no_triton"])
def test_triton_kernels_on_a_cpu_without_what_they_need(tiny_shards, tmp_path, why):
    """--kernels=triton on a CPU without TRITON_INTERPRET=1 (before: a RuntimeError traceback after the log header),
    or without triton installed: one line naming the flag and both ways out, before the log is started."""
    env = cli_without("TRITON_INTERPRET")
    if why == "no_triton":  # a triton that fails to import, as a missing one does
        (tmp_path / "fake" / "triton").mkdir(parents=True)
        (tmp_path / "fake" / "triton" / "__init__.py").write_text("raise ImportError('No module named triton')\n")
        env["PYTHONPATH"] = str(tmp_path / "fake")
    p = subprocess.run(cli_command([*QUIET, *tiny_shards, "--kernels=triton", "--steps=1", f"--log_dir={tmp_path}/logs",
                                    f"--checkpoint_dir={tmp_path}/ck"]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert_clean_error(p, "--kernels=triton", "--kernels=torch", "TRITON_INTERPRET=1" if why == "no_interpreter" else "pip install triton")
    assert p.returncode == 2 and not (tmp_path / "logs").exists()

def test_shard_symlink_loop_is_named(tiny_shards, tmp_path):
    """A train shard that is a symlink loop: before, an OSError traceback (Too many levels of symbolic links)."""
    shutil.copy(glob.glob(tiny_shards[0].split("=", 1)[1])[0], tmp_path / "x_train_000000.bin")
    os.symlink("x_train_000001.bin", tmp_path / "x_train_000001.bin")
    p = run_main(*QUIET, *tiny_shards[1:], f"--train_files={tmp_path}/x_train_*.bin", "--steps=1", f"--log_dir={tmp_path}/logs",
                f"--checkpoint_dir={tmp_path}/ck")
    assert_clean_error(p, f"--train_files={tmp_path}/x_train_*.bin matches {tmp_path}/x_train_000001.bin, which cannot be read "
                          f"(Too many levels of symbolic links): fix or remove that file, or narrow the glob")
    assert p.returncode == 2

def test_empty_val_shard_says_how_many_tokens_it_holds(tiny_shards, tmp_path):
    """A val shard of 0 tokens "held only -1 tokens"; now the count is the shard's, with what validation needs. The run
    failed after its log header: that stub log is removed (records/compare.py warned about it)."""
    empty = tmp_path / "empty_val_000000.bin"
    train_gpt.write_shard(str(empty), np.zeros(0, dtype=np.uint16))
    p = run_main(*QUIET, tiny_shards[0], tiny_shards[2], f"--val_files={empty}", "--steps=1", f"--log_dir={tmp_path}/logs",
                f"--checkpoint_dir={tmp_path}/ck")
    assert_clean_error(p, f"--val_tokens=256 needs 257 tokens (each input's next token is its target) but the val shards "
                          f"['{empty}'] hold 0: lower --val_tokens (at most 0; 0 = no validation)")
    assert "-1 tokens" not in p.stderr
    assert os.listdir(tmp_path / "logs") == [] and os.listdir(tmp_path / "ck") == []

def test_out_of_memory_at_model_build_names_the_size_flags(small_shards, tmp_path):
    """A model that cannot be allocated (here a 2e9-token vocabulary: 512 GB of embedding, refused at once): before, a
    RuntimeError traceback from the CPU allocator; now one line naming the flags that set the size; no stub log."""
    p = run_cli(*small(small_shards, tmp_path, "--vocab_size=2000000000", "--seq_len=64", "--batch_size=2", "--device_batch_size=2"))
    assert_clean_error(p, "out of memory (", "can't allocate memory", "--seq_len=64 x --device_batch_size=2", "--n_layer=2",
                       "--n_embd=64", "--vocab_size=2000000000", "lower them")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert os.listdir(tmp_path / "logs") == [] and os.listdir(tmp_path / "ck") == []

def test_out_of_memory_at_the_first_step_is_one_line(small_shards, tmp_path, monkeypatch, capsys):
    """A CUDA OOM in the first step (--seq_len=200000 on a GPU), simulated: one error naming the size flags, exit 2,
    and the run's log, which has no step line, is removed."""
    def oom(self): raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 74.51 GiB")
    monkeypatch.setattr(train_gpt.Trainer, "train_step", oom)
    with kept_signal_handlers():
        assert train_gpt.main(small(small_shards, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (CUDA out of memory. Tried to allocate 74.51 GiB): a run's memory grows with "
                          "--seq_len=32 x --device_batch_size=4 tokens per forward"), err
    assert os.listdir(tmp_path / "logs") == []

def test_sigint_during_start_up_is_one_line(small_shards, tmp_path):
    """Ctrl-C while the run starts (here while a 4 x 1024 model is built, before the first step): before, a
    KeyboardInterrupt traceback and a stub log; now one line, exit 130, no log and no lock left."""
    live = Live(small(small_shards, tmp_path, "--n_layer=4", "--n_embd=1024", "--n_head=8"))
    live.wait_for(r"config: ")
    live.signal(signal.SIGINT)
    rc = live.finish(timeout=120)
    assert "parameters: " not in live.stdout, "start-up ended before the signal: the test proves nothing"
    assert rc == 130, (rc, live.stderr[-2000:])
    assert live.stderr == "error: interrupted (SIGINT) during start-up, before the first step: nothing was trained or saved\n", live.stderr
    assert os.listdir(tmp_path / "logs") == [] and os.listdir(tmp_path / "ck") == []
