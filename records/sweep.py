"""
Seed sweep: run train_gpt.py for every config x seed, then compare the logs; with --lr_grid, tune every config's
learning rate on a few seeds first and confirm the pick on fresh ones.

    python records/sweep.py ngpt_alpha --seeds=5 -- "--arch=gpt" "--arch=ngpt --ngpt_alpha_init=0.15"
    python records/sweep.py quick --seeds=2 --seed0=10 --out=/tmp/quick --dry_run -- "--steps=50" "--arch=ngpt"
    python records/sweep.py adam_vs_muon --lr_grid=0.5,1,2 --tune_seeds=2 --seeds=3 -- "--arch=gpt" \
        "--arch=gpt --optimizer=adam --lr_grid=0.25,0.5,1"

Each config is a string of train_gpt.py flags (split with shlex, like a shell line: a config with an
unbalanced quote fails before any run starts, exit 2), and each is parsed with train_gpt.parse_args as its first run
gets it before anything starts (a flag the trainer does not know, a value it refuses: one line, exit 2); NAME must be
one file name (it starts every run name: no '/', no leading dot). Each run gets `--seed=S --log_dir=<out>
--run_name=<NAME>_c<i>_s<S> --checkpoint_dir=<out>/checkpoints --resume=auto` appended. Runs go one at a time,
seed-major (seed 0 of every config, then seed 1, ...) so an interrupted sweep still has balanced groups.
With GPUs: `torchrun --standalone --nproc_per_node=<#GPUs> train_gpt.py ...`, else `python train_gpt.py ...`,
run from the repo root. A failed run is reported and the sweep goes on; the exit code is 1 if any failed.
Every line before a run says run k of N, the time elapsed and an estimate of the time left (the mean of the runs
finished in this invocation times the runs left; "eta n/a" before the first one ends).

Interruptions. Ctrl-C (SIGINT, SIGTERM, SIGHUP) is passed to the run as one SIGTERM: train_gpt.py finishes its
step, saves a checkpoint and stops; the run is recorded as interrupted and the sweep exits 130. A second Ctrl-C
kills the run at once (no checkpoint). The same command again resumes: a run with a complete log is skipped, an
interrupted one continues from its checkpoint (--resume=auto) or, without one, is redone from scratch (its partial
log is renamed *.txt.stale), and a failed one is not run again unless --retry_failed. --budget_hours=H (a positive
number; nan, 0 or less is an error, exit 2) stops between runs before one that would end past H hours (exit 3; the
same command resumes). One sweep at a time per
folder: a second one into the same --out is refused (a flock on <out>/.sweep.lock), exit 2.

LR grid (--lr_grid=0.5,1,2, values of train_gpt.py's --lr_scale): tune phase = every config x every lr_scale x
--tune_seeds seeds (seed0 ...); the pick per config is compare.pick_lr over the final val losses (a failed or
diverged run counts as inf); a pick at an edge of the grid extends it one point past that edge (the grid's ratio
there) and tunes that, at most --max_extend times, then stays flagged as an edge. A config whose every tune run
diverged (or failed) has no pick: it is named, gets no confirm run, and the sweep exits 1. A run the trainer stopped
on a non-finite loss is recorded as diverged ("diverged": true), said so, and never redone (not by --retry_failed
either: it would diverge again); a diverged confirm run is counted as diverged in the comparison, not as a failure.
Confirm phase = every config at its pick x --seeds fresh seeds (seed0 + tune_seeds ...); the comparison is of the
confirm runs alone. Tune and confirm seeds never mix in one folder: a later lr sweep into it must tune on the
folder's tune seeds (more confirm seeds: the same --seed0 and --tune_seeds with a larger --seeds), else it is
refused (exit 2), and a sweep without a grid never shares a folder with an lr sweep. A token `--lr_grid=...` (or
`--lr_grid ...`) inside a config gives that config its own grid (stripped before launching). Run names carry the lr:
<NAME>_c<i>_lr<x>_s<S>. A resumed sweep recomputes the picks from the tune logs and goes on where it stopped.

Writes <out>/sweep.json (configs, seeds, commands, exit codes, seconds; with a grid also each run's lr_scale and
phase, and the picks; updated after every run, atomically: a crash mid-write leaves the previous version; a second
sweep into the same folder adds its runs, e.g. `--seed0=3 --seeds=2` for more seeds; an unreadable one or one of
the wrong shape stops the sweep, exit 2, untouched), and at the end <out>/compare.txt (the table of
records/compare.py) and <out>/compare.png. Default out: records/<NAME>. --dry_run prints the plan (runs already
finished marked `# done`; with a grid the tune phase replayed from the finished runs, so the edge extensions made
and the picks known are there, and a confirm run is its command once its config's pick is known) and, with
--seconds_per_run or timings in an earlier sweep.json, the time of the runs left.
"""
import argparse
import contextlib
import fcntl
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare  # noqa: E402

BUDGET_EXIT, INTERRUPT_EXIT = 3, 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

def launcher(kind="auto"):
    """The command prefix: torchrun over all GPUs when there are any, else this python."""
    n = 0
    if kind in ("auto", "torchrun"):
        try:
            import torch
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except ImportError:
            pass
    if kind == "python" or n == 0:
        return [sys.executable]
    run = [shutil.which("torchrun")] if shutil.which("torchrun") else [sys.executable, "-m", "torch.distributed.run"]
    return run + ["--standalone", f"--nproc_per_node={n}"]

def _rel(path):
    """Path as seen from the repo root (where runs start): relative inside the repo, absolute outside."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path

class SweepError(Exception):
    """A one-line reason to stop before (or between) runs: exit 2, nothing overwritten."""

def fail(msg):
    print(f"sweep: error: {msg}", file=sys.stderr)
    return 2

def hms(seconds):
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

def write_json_atomic(path, obj):
    """Write to a temp file in the same folder, fsync, then os.replace: a reader (or the next sweep) sees the
    old file or the new one, never half of one, even if this process dies mid-write."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write failed: no stray temp file next to the record
            os.remove(tmp)

# the shape of a sweep.json: a hand-edited or foreign one fails here with its key, not later as a traceback
RECORD_SHAPE = {"configs": (list, str), "seeds": (list, int), "runs": (list, dict), "picks": (dict, dict),
                "tune_seeds": (list, int), "confirm_seeds": (list, int), "lr_grid": (list, (int, float))}

def load_record(path):
    """The earlier record of this folder ({} when none); SweepError when it cannot be read or has the wrong shape."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            rec = json.load(f)
        if not isinstance(rec, dict):
            raise ValueError(f"a JSON {type(rec).__name__}, not a sweep record")
        for key, (outer, inner) in RECORD_SHAPE.items():
            v = rec.get(key, outer())
            items = v.values() if isinstance(v, dict) else v
            if not isinstance(v, outer) or not all(isinstance(x, inner) and not isinstance(x, bool) for x in items):
                raise ValueError(f'"{key}" is {json.dumps(v)[:40]}, not a {outer.__name__} of '
                                 f'{getattr(inner, "__name__", "number")}s')
        if not all(isinstance(r.get("run_name"), str) for r in rec.get("runs", [])):
            raise ValueError('a run without a "run_name"')
    except (OSError, ValueError) as e:  # never overwrite the record of earlier runs with a fresh one
        raise SweepError(f"{path} is unreadable ({e}): restore it (e.g. git checkout) or move it away to start a new "
                         f"record there, or pass another --out") from None
    return rec

@contextlib.contextmanager
def folder_lock(out):
    """One sweep per folder: an exclusive flock on <out>/.sweep.lock for the whole sweep (the file stays; the lock
    goes with the process, however it ends). The holder's pid is written into it for the refusal's message."""
    path = os.path.join(out, ".sweep.lock")
    try:
        f = open(path, "a+")
    except OSError as e:
        raise SweepError(f"--out={out} is not writable ({e.strerror}): pass another --out") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise SweepError(f"another sweep (pid {f.read().strip() or '?'}) is running into {out} (it holds {path}): "
                             f"wait for it to end, or pass another --out") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield

def parse_grid(text, what="--lr_grid"):
    try:
        grid = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        grid = []
    if not grid or not all(math.isfinite(x) and x > 0 for x in grid):
        raise SweepError(f"{what}={text}: a comma-separated list of positive lr_scale values, e.g. 0.5,1,2")
    typed = {float(x): x.strip() for x in text.split(",") if x.strip()}
    for a, b in zip(grid, grid[1:]):  # a run's name carries its lr as {lr:g}: two values of one name are one run
        if f"{a:g}" == f"{b:g}":
            raise SweepError(f"{what}={text}: {typed[a]} and {typed[b]} both name the runs lr{a:g} (run names carry 6 "
                             f"significant digits): give values that differ there")
    return grid

def config_flags(cfg):
    """(the flags a run gets, the config's own lr grid or None): a `--lr_grid=...` (or `--lr_grid ...`) token is the
    sweep's, not the run's. shlex's ValueError for an unbalanced quote; SweepError for a grid without a value."""
    tokens, flags, grids = shlex.split(cfg), [], []
    while tokens:
        t = tokens.pop(0)
        name, eq, value = t.partition("=")
        if name.replace("-", "_") != "__lr_grid":
            flags.append(t)
        elif eq or (tokens and not tokens[0].startswith("--")):
            grids.append(value if eq else tokens.pop(0))
        else:
            raise SweepError("--lr_grid needs a value")
    return flags, parse_grid(grids[-1]) if grids else None

def flag_name(token):
    """'--lr-scale=2' -> 'lr_scale': the trainer's spelling of a flag token's name."""
    return token.lstrip("-").partition("=")[0].replace("-", "_")

def check_name(name):
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        raise SweepError(f"NAME {name!r}: it starts every run's name ({name}_c0_s0), so it must be one file name: "
                         f"no '/', no leading dot")

def check_with_trainer(args, configs, base):
    """Each config as its first run gets it, parsed by train_gpt.parse_args (what train_gpt.py does first): a flag it
    does not know or a value it refuses fails here, in one line, before any run starts. Only for the repo's
    train_gpt.py (a stand-in script has flags of its own)."""
    script = os.path.join(REPO, "train_gpt.py")
    if not (os.path.exists(args.script) and os.path.samefile(args.script, script)):
        return
    tg = compare._train_gpt()
    if tg is None:
        return
    for i, cfg in enumerate(configs):
        flags, grid = config_flags(cfg)
        lr = (grid or base or [None])[0]
        name = f"{args.name}_c{i}_s{args.seed0}" if lr is None else f"{args.name}_c{i}_lr{lr:g}_s{args.seed0}"
        argv = flags + ([f"--lr_scale={lr:g}"] if lr is not None else []) + [
            f"--seed={args.seed0}", "--log_dir=logs", f"--run_name={name}", "--checkpoint_dir=checkpoints", "--resume=auto"]
        try:
            tg.parse_args(argv)
        except tg.ConfigError as e:
            raise SweepError(f'config {i} "{cfg}": train_gpt.py refuses it: {e}') from None

def extend_grid(grid, pick):
    """One more point past the edge the pick sits on, at the grid's ratio there (x2 past 1,2; /2 below 0.5,1)."""
    if pick == grid[0]:
        return [float(f"{grid[0] * grid[0] / grid[1]:.6g}")] + grid
    return grid + [float(f"{grid[-1] * grid[-1] / grid[-2]:.6g}")]

def run_log(out, run_name):
    """The newest log train_gpt.py wrote for this run name (<run_name>_<8 hex id>.txt), or None."""
    pattern = re.compile(re.escape(run_name) + r"_[0-9a-f]{8}\.txt")
    logs = [os.path.join(out, f) for f in os.listdir(out) if pattern.fullmatch(f)] if os.path.isdir(out) else []
    return max(logs, key=os.path.getmtime) if logs else None

def log_complete(path):
    """A finished run's log ends with its peak-memory line (compare.py's rule for a complete log)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return any(line.startswith("peak memory") for line in f)

class Sweep:
    """The runs of one invocation: what each one is, whether an earlier invocation settled it, launching it with the
    stop signals forwarded, the progress line, and the record (sweep.json) kept after every run."""

    def __init__(self, args, out, record, prefix):
        self.args, self.out, self.record, self.prefix = args, out, record, prefix
        self.ckpt_dir = os.path.join(out, "checkpoints")
        self.by_name = {r["run_name"]: r for r in record["runs"]}
        self.t0, self.seconds = time.time(), []  # seconds of the runs finished in this invocation
        self.started, self.child, self.current, self.signals, self.forwarded = 0, None, None, 0, False
        self.stopped = None  # why the sweep stopped early: "interrupted" or "budget"
        self.no_pick = []  # lr sweep: configs whose every tune lr diverged or failed (no confirm runs)
        self.losses = {}  # (log, mtime, size) -> its final loss (final_loss)

    def run(self, i, seed, lr=None, phase=None):
        """The run of config i at this seed (and lr_scale): its record entry, the earlier one if there is one."""
        name = f"{self.args.name}_c{i}_s{seed}" if lr is None else f"{self.args.name}_c{i}_lr{lr:g}_s{seed}"
        cfg = self.record["configs"][i]
        cmd = self.prefix + [_rel(self.args.script)] + config_flags(cfg)[0] + (
            [f"--lr_scale={lr:g}"] if lr is not None else []) + [
            f"--seed={seed}", f"--log_dir={_rel(self.out)}", f"--run_name={name}",
            f"--checkpoint_dir={_rel(self.ckpt_dir)}", "--resume=auto"]
        if name in self.by_name:
            r = self.by_name[name]
            if r.get("returncode") != 0:  # to run (again): with today's command (an older record's may lack --resume)
                r["cmd"] = cmd
            return r
        r = dict(config=i, args=cfg, seed=seed, run_name=name, cmd=cmd, returncode=None, seconds=None)
        if lr is not None:
            r.update(lr_scale=lr, phase=phase)
        return r

    def settled(self, r):
        """'finished' (a complete log: the record missing it or not), 'diverged' (stopped by the trainer on a
        non-finite loss: a result, never redone, not even by --retry_failed), 'failed' (ended by itself with an error
        and not retried), else None: never run, interrupted, or finished but its log is gone."""
        log = run_log(self.out, r["run_name"])
        if log and log_complete(log):
            if r["returncode"] is None:
                r["returncode"] = 0  # the sweep died after the run ended, before recording it
            r.pop("interrupted", None)
            return "finished"
        if r["returncode"] not in (None, 0) and not r.get("interrupted") and r.get("diverged") and log:
            return "diverged"
        if r["returncode"] not in (None, 0) and not r.get("interrupted") and not self.args.retry_failed:
            return "failed"
        return None

    def diverged(self, r):
        """Whether the run's log ends on a non-finite loss (compare's rule: train_gpt.py stops a run there)."""
        log = run_log(self.out, r["run_name"])
        runs = compare.load_runs([log]) if log else []
        return bool(runs) and runs[0].diverged

    def final_loss(self, r):
        """The run's final val loss; inf for a failed, diverged or unfinished run (the pick's 'worst'). A log is read
        once while it stays as it is (each round of the tune phase asks again for every run of the grid)."""
        log = run_log(self.out, r["run_name"])
        if r["returncode"] != 0 or not log:
            return math.inf
        key = (log, os.path.getmtime(log), os.path.getsize(log))
        if key not in self.losses:
            runs = compare.load_runs([log])
            self.losses[key] = runs[0].final_val_loss if runs and not runs[0].incomplete and runs[0].finite else math.inf
        return self.losses[key]

    def save(self):
        write_json_atomic(os.path.join(self.out, "sweep.json"), self.record)

    # -- signals: the run gets one SIGTERM (it checkpoints and stops); a second signal kills it at once
    def on_signal(self, signum, frame):
        self.signals += 1
        what = f"run {self.current['run_name']}" if self.child else "the sweep"
        if self.signals == 1:
            print(f"sweep: {signal.Signals(signum).name}: stopping {what} after its step, with a checkpoint "
                  f"(Ctrl-C again kills it at once, without one)", file=sys.stderr, flush=True)
            self.forward()
        elif self.child:
            print(f"sweep: second signal: killing {what} now (no checkpoint; the same command redoes it or continues "
                  f"from an earlier checkpoint)", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGKILL)  # its own process group: torchrun's workers too

    def forward(self):
        if self.child and not self.forwarded:
            self.forwarded = True
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signal.SIGTERM)  # the launcher only: torchrun passes it on to its workers

    def launch(self, r, k, total):
        a = self.args
        done = self.seconds
        eta = f"eta {hms(sum(done) / len(done) * (total - k + 1))}" if done else "eta n/a"
        lr = f" lr_scale {r['lr_scale']:g}" if "lr_scale" in r else ""
        phase = f" ({r['phase']})" if "phase" in r else ""
        log = run_log(self.out, r["run_name"])
        if log is not None:  # an earlier attempt that did not finish: continue it or start over
            ckpts = [f for f in os.listdir(self.ckpt_dir) if re.fullmatch(re.escape(r["run_name"]) + r"_step\d+\.pt", f)] \
                if os.path.isdir(self.ckpt_dir) else []
            if ckpts:
                print(f"=== sweep {a.name}: {r['run_name']} was stopped before: continued from its checkpoint "
                      f"(--resume=auto)", flush=True)
            else:
                os.replace(log, log + ".stale")  # a second log of one run would count twice in the comparison
                print(f"=== sweep {a.name}: {r['run_name']} was stopped before without a checkpoint: redone from scratch "
                      f"(its partial log is now {os.path.basename(log)}.stale)", flush=True)
        print(f"=== sweep {a.name}: run {k}/{total}{phase} config {r['config']}{lr} seed {r['seed']}, elapsed "
              f"{hms(time.time() - self.t0)}, {eta}: {shlex.join(r['cmd'])}", flush=True)
        t0 = time.time()
        # its own process group: a Ctrl-C at the terminal reaches the sweep alone, which forwards exactly one
        # SIGTERM (train_gpt.py takes a second signal as "exit at once, no checkpoint")
        self.current, self.child, self.forwarded = r, subprocess.Popen(r["cmd"], cwd=REPO, stdin=subprocess.DEVNULL, process_group=0), False
        if self.signals:
            self.forward()
        rc = self.child.wait()  # output streams straight through
        self.child = None
        r["seconds"] = round((r["seconds"] or 0) + time.time() - t0, 1)  # a resumed run: the seconds of all attempts
        r["returncode"] = rc
        r.pop("interrupted", None)
        if self.signals:
            r["interrupted"] = True
        else:
            self.seconds.append(time.time() - t0)
        r.pop("diverged", None)
        if rc and not self.signals and self.diverged(r):
            r["diverged"] = True
            print(f"=== sweep {a.name}: run {r['run_name']} diverged (a non-finite loss, exit {rc}): counted as diverged, "
                  f"going on", flush=True)
        elif rc and not self.signals:
            print(f"=== sweep {a.name}: run {r['run_name']} FAILED (exit {rc}), going on", flush=True)

    def execute(self, runs, later=0):
        """Runs the runs an earlier invocation did not settle, in order; `later`: how many more runs are expected
        after these (for the k/N count). Returns False when the sweep stops early (a signal, the budget)."""
        for r in runs:
            if r["run_name"] not in self.by_name:
                self.by_name[r["run_name"]] = r
                self.record["runs"].append(r)
        pending = [r for r in runs if not self.settled(r)]
        for j, r in enumerate(pending):
            if self.signals:
                break
            expected = sum(self.seconds) / len(self.seconds) if self.seconds else self.args.seconds_per_run or 0
            if self.args.budget_hours is not None and time.time() - self.t0 + expected > self.args.budget_hours * 3600:
                self.stopped = "budget"
                print(f"=== sweep {self.args.name}: the budget of {self.args.budget_hours:g} h would be spent before the "
                      f"next run ends (elapsed {hms(time.time() - self.t0)}, a run ~{hms(expected)}): stopping with "
                      f"{len(pending) - j + later} runs left; the same command resumes", flush=True)
                return False
            self.started += 1
            self.launch(r, self.started, self.started + len(pending) - j - 1 + later)
            self.save()
        if self.signals:
            self.stopped = "interrupted"
            return False
        self.save()
        return True

def planned_grids(configs, indices, base):
    """Each config's starting grid: its own --lr_grid token, else the sweep's."""
    return {i: config_flags(configs[i])[1] or list(base) for i in indices}

def decide(sw, i, grid, tune_seeds, n_planned):
    """Config i's pick from its tune runs over grid (settled): (lr_scale, edge, the mean tune loss of each lr (inf for
    an lr with a failed or diverged run), the grid to tune next or None). The next grid: an edge pick extends the grid
    one point, while fewer than --max_extend points were added to the n_planned of its planned grid."""
    losses = {lr: [sw.final_loss(sw.run(i, s, lr, "tune")) for s in tune_seeds] for lr in grid}
    best, edge = compare.pick_lr(losses)
    means = [sum(v) / len(v) for v in losses.values()]
    return best, edge, means, extend_grid(grid, best) if edge and len(grid) - n_planned < sw.args.max_extend else None

def lr_sweep(sw, indices, tune_seeds, confirm_seeds, base):
    """Tune (with edge extensions), pick with compare.pick_lr, then confirm. Returns the confirm runs, or None when
    the sweep stopped early. Resuming replays the same decisions from the finished tune logs."""
    a, grids = sw.args, planned_grids(sw.record["configs"], indices, base)
    planned = dict(grids)
    later = len([1 for i in indices for s in confirm_seeds])
    picks, means = sw.record.setdefault("picks", {}), {}
    while True:
        tune = [sw.run(i, s, lr, "tune") for s in tune_seeds for i in indices for lr in grids[i]]
        if not sw.execute(tune, later):
            return None
        extended = False
        for i in indices:
            best, edge, means[i], nxt = decide(sw, i, grids[i], tune_seeds, len(planned[i]))
            picks[str(i)] = dict(lr_scale=best, edge=edge, grid=list(grids[i]))
            if nxt:
                grids[i], extended = nxt, True
        if not extended:
            break
    for i in indices:
        p = picks[str(i)]
        grid = ",".join(f"{x:g}" for x in p["grid"])
        if all(math.isinf(x) for x in means[i]):  # nothing trained: the "pick" would be a diverged lr
            tune = [sw.run(i, s, lr, "tune") for s in tune_seeds for lr in grids[i]]
            what = "diverged" if all(r.get("diverged") for r in tune) else "diverged or failed"
            picks[str(i)] = dict(lr_scale=None, edge=None, grid=p["grid"], diverged=True)
            sw.no_pick.append(f"config {i} has no pick: every lr_scale of its grid {what} on the tune seeds")
            print(f"=== sweep {a.name}: config {i}: every lr_scale of {grid} {what} on the tune seeds: no pick, nothing "
                  f"confirmed (lower the grid: --lr_grid=..., or the config's own --lr_grid=...)", flush=True)
            continue
        print(f"=== sweep {a.name}: config {i} picks lr_scale {p['lr_scale']:g} of {grid}"
              f" (mean tune losses {', '.join(f'{x:.4f}' for x in means[i])})"
              + (" (at the edge after --max_extend extensions: the optimum may lie further out)" if p["edge"] else ""),
              flush=True)
    sw.save()
    confirm = [sw.run(i, s, picks[str(i)]["lr_scale"], "confirm") for s in confirm_seeds for i in indices
               if picks[str(i)]["lr_scale"] is not None]
    return confirm if sw.execute(confirm) else None

def print_plan(args, configs, indices, seeds, tune_seeds, base, out, prefix, record):
    """--dry_run: the commands, the finished ones marked `# done`; with a grid, the tune phase replayed from the runs
    settled so far (lr_sweep's decisions: edge extensions, picks), so a confirm run whose pick is known is its
    command and only one whose pick is not yet known is an 'after the pick' line; the time of the runs left. Returns
    {runs, done, left, per_run}."""
    sw = Sweep(args, out, dict(record, configs=configs, runs=list(record.get("runs", []))), prefix)
    print(f"# cd {REPO}")
    picks, lines = {}, []  # config -> its pick (None: every lr diverged or failed); lines of the confirm phase
    if base is None:
        runs = [sw.run(i, s) for s in seeds for i in indices]
    else:
        grids = planned_grids(configs, indices, base)
        planned, todo = dict(grids), list(indices)
        runs = [sw.run(i, s, lr, "tune") for s in tune_seeds for i in indices for lr in grids[i]]
        while todo:  # a round of lr_sweep: every config whose tune runs are all settled decides (extend, or pick)
            new = {}
            for i in list(todo):
                if not all(sw.settled(sw.run(i, s, lr, "tune")) for s in tune_seeds for lr in grids[i]):
                    todo.remove(i)  # its pick waits for runs still to make
                    continue
                best, edge, means, nxt = decide(sw, i, grids[i], tune_seeds, len(planned[i]))
                if nxt:
                    new[i], grids[i] = [lr for lr in nxt if lr not in grids[i]], nxt
                else:
                    picks[i] = None if all(math.isinf(m) for m in means) else best
                    todo.remove(i)
            runs += [sw.run(i, s, lr, "tune") for s in tune_seeds for i in indices for lr in new.get(i, [])]
        for s in seeds:
            for i in indices:
                if picks.get(i) is not None:
                    lines.append(sw.run(i, s, picks[i], "confirm"))
                elif i not in picks:
                    lines.append(f"# after the pick: config {i} at its picked --lr_scale, seed {s}: run_name "
                                 f"{args.name}_c{i}_lr<pick>_s{s}")
        for i in indices:
            if i in picks and picks[i] is None:
                lines.append(f"# config {i}: every lr_scale of its grid {','.join(f'{x:g}' for x in grids[i])} diverged "
                             f"or failed on the tune seeds: no pick, no confirm run")
    mark = lambda r: ("# done: " if sw.settled(r) else "") + shlex.join(r["cmd"])
    for x in runs + lines:
        print(mark(x) if isinstance(x, dict) else x)
    runs += [x for x in lines if isinstance(x, dict)]
    waiting = sum(isinstance(x, str) and x.startswith("# after the pick") for x in lines)
    n, done = len(runs) + waiting, sum(bool(sw.settled(r)) for r in runs)
    if other := [r["run_name"] for r in record.get("runs", []) if r["run_name"] not in {x["run_name"] for x in runs}]:
        print(f"# sweep.json also holds {len(other)} run{'s' if len(other) > 1 else ''} outside this plan (of another "
              f"grid, pick or seed): {' '.join(other[:5])}{' ...' if len(other) > 5 else ''}")
    timed = [r["seconds"] for r in record.get("runs", []) if r.get("returncode") == 0 and r.get("seconds")]
    per_run, source = (args.seconds_per_run, "--seconds_per_run") if args.seconds_per_run else \
        (sum(timed) / len(timed), f"the mean of {len(timed)} finished runs in sweep.json") if timed else (None, None)
    extra = f" (+{len(tune_seeds)} tune runs a config for each edge extension, up to --max_extend={args.max_extend})" \
        if base is not None and any(i not in picks for i in indices) else ""
    if n and done == n:
        print(f"# {n} runs, all done")
    else:
        print(f"# {n} runs" + (f", {done} done, {n - done} left" if done else "") + extra + (
            f" x {per_run:.0f} s ({source}) = {hms((n - done) * per_run)}" if per_run else
            ": no time estimate (pass --seconds_per_run)"))
    return dict(runs=n, done=done, left=n - done, per_run=per_run)

def positive_problem(args, flags=(("budget_hours", "hours"), ("seconds_per_run", "seconds"))):
    """What is wrong with --budget_hours / --seconds_per_run (nan would mean no budget, 0 or less a budget no command
    ever resumes from), or None."""
    for flag, unit in flags:
        v = getattr(args, flag, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            return f"--{flag}={v:g}: give a positive number of {unit}"
    return None

def main(argv=None, plan=None):
    """The CLI; plan: a dict that a --dry_run fills with its counts {runs, done, left, per_run} (records/ladder/run.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    opts, configs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(usage='%(prog)s NAME --seeds=5 [--seed0=0] [--out=records/NAME] [--lr_grid=0.5,1,2 '
                                       '--tune_seeds=2] [--dry_run] -- "FLAGS of config 0" "FLAGS of config 1" ...',
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per config (with --lr_grid: the confirm seeds)")
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--out", help="folder for logs and results (default records/NAME)")
    ap.add_argument("--dry_run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--target", type=float, help="target val loss for the comparison (e.g. 3.28)")
    ap.add_argument("--baseline", help="baseline group for the comparison (name or substring)")
    ap.add_argument("--lr_grid", help="lr_scale values to tune every config over, e.g. 0.5,1,2")
    ap.add_argument("--tune_seeds", type=int, default=2, help="with --lr_grid: seeds per lr of the tune phase")
    ap.add_argument("--max_extend", type=int, default=2, help="with --lr_grid: grid extensions past an edge pick")
    ap.add_argument("--retry_failed", action="store_true", help="run again the runs that failed in an earlier sweep")
    ap.add_argument("--budget_hours", type=float, help="stop between runs before one that would end past this")
    ap.add_argument("--seconds_per_run", type=float, help="a run's expected seconds (--dry_run's estimate, the budget)")
    ap.add_argument("--script", default=os.path.join(REPO, "train_gpt.py"), help=argparse.SUPPRESS)  # tests: a stub
    ap.add_argument("--launcher", default="auto", choices=["auto", "python", "torchrun"], help=argparse.SUPPRESS)
    args = ap.parse_args(opts)
    if args.seeds < 1 or args.tune_seeds < 1 or args.max_extend < 0:
        ap.error("--seeds and --tune_seeds must be >= 1, --max_extend >= 0")
    if bad := positive_problem(args):
        return fail(bad)
    configs = configs or [""]  # no config: one run per seed with train_gpt.py's defaults
    out = os.path.abspath(args.out or os.path.join(REPO, "records", args.name))
    try:
        return sweep(args, configs, out, plan)
    except SweepError as e:
        return fail(e)

def sweep(args, configs, out, plan=None):
    base = parse_grid(args.lr_grid) if args.lr_grid is not None else None  # --lr_grid= is an error, not no grid
    check_name(args.name)
    for i, cfg in enumerate(configs):  # before anything is made or run: a bad config must not fail halfway through
        try:
            flags, grid = config_flags(cfg)
        except ValueError as e:
            fix = ("quote the flag value or escape the quote" if "quotation" in str(e) else  # shlex's two errors
                   "escape the trailing backslash (\\\\)")
            raise SweepError(f'config {i} "{cfg}": {e}: {fix} (configs are split like a shell line: '
                             f'--prompt="it\'s" or --prompt=it\\\'s)') from None
        except SweepError as e:
            raise SweepError(f'config {i} "{cfg}": {e}') from None
        if grid is not None and base is None:
            raise SweepError(f'config {i} "{cfg}" has its own --lr_grid: pass --lr_grid=... for the sweep too')
        if base is not None and any(flag_name(f) == "lr_scale" for f in flags):
            raise SweepError(f'config {i} "{cfg}" sets --lr_scale, which --lr_grid sets for every run: drop it')
    check_with_trainer(args, configs, base)
    if os.path.exists(out) and not os.path.isdir(out):
        raise SweepError(f"--out={out} is a file, not a folder: pass a folder")
    record_path = os.path.join(out, "sweep.json")
    load_record(record_path)  # a bad record fails before anything is made in the folder
    prefix = launcher(args.launcher)
    if args.dry_run:
        record, indices, seeds, tune_seeds = plan_record(args, configs, out, load_record(record_path), base)
        counts = print_plan(args, record["configs"], indices, seeds, tune_seeds, base, out, prefix, record)
        if plan is not None:
            plan.update(counts)
        return 0
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise SweepError(f"--out={out} cannot be made ({e.strerror}): pass another --out") from None
    with folder_lock(out):
        # under the lock: the record read here is the one this sweep rewrites, no other sweep writes it meanwhile
        record, indices, seeds, tune_seeds = plan_record(args, configs, out, load_record(record_path), base)
        sw = Sweep(args, out, record, prefix)
        handlers = {s: signal.signal(s, sw.on_signal) for s in STOP_SIGNALS}
        try:
            if base is None:
                runs = [sw.run(i, s) for s in seeds for i in indices]
                runs = runs if sw.execute(runs) else None
            else:
                runs = lr_sweep(sw, indices, tune_seeds, seeds, base)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            sw.save()  # also when a run or a write failed: what ran so far stays on record
    if runs is None:
        left = "interrupted" if sw.stopped == "interrupted" else "stopped by --budget_hours"
        print(f"sweep {args.name}: {left}; {out}/sweep.json has what ran; the same command resumes", file=sys.stderr)
        return INTERRUPT_EXIT if sw.stopped == "interrupted" else BUDGET_EXIT
    return report(args, sw, runs, out, base)

def plan_record(args, configs, out, previous, base):
    """The record this sweep writes: the earlier one's configs (each keeps its index, so run names stay unique per
    config, lr and seed) plus the new ones, its runs, and this sweep's seeds. Returns it with the indices of this
    sweep's configs, its (confirm) seeds and its tune seeds."""
    all_configs = list(previous.get("configs", []))
    all_configs += [c for c in configs if c not in all_configs]
    n_tune = args.tune_seeds if base is not None else 0
    tune_seeds = list(range(args.seed0, args.seed0 + n_tune))
    seeds = list(range(args.seed0 + n_tune, args.seed0 + n_tune + args.seeds))  # fresh: the pick never saw them
    check_seeds(previous, base, tune_seeds, out)
    record = dict(previous, name=args.name, out=out, configs=all_configs, runs=list(previous.get("runs", [])),
                  seeds=sorted(set(previous.get("seeds", [])) | set(seeds) | set(tune_seeds)))
    if base is not None:
        record.update(tune_seeds=tune_seeds, confirm_seeds=sorted(set(previous.get("confirm_seeds", [])) | set(seeds)),
                      lr_grid=base, max_extend=args.max_extend)
    return record, [all_configs.index(c) for c in configs], seeds, tune_seeds

def phase_seeds(record, phase):
    """The seeds the record says were used in this phase ("tune" or "confirm"): its list and its runs'."""
    return set(record.get(f"{phase}_seeds", [])) | {r.get("seed") for r in record.get("runs", []) if r.get("phase") == phase}

def check_seeds(previous, base, tune_seeds, out):
    """Tune and confirm seeds never mix across the sweeps into one folder: a later lr sweep tunes on the folder's
    tune seeds (so its confirm seeds follow them, and a larger --seeds adds confirm seeds); a sweep without a grid
    and an lr sweep never share a folder (a plain run is an lr_scale-1 run of its config's arm)."""
    old_tune, runs = phase_seeds(previous, "tune"), previous.get("runs", [])
    if base is None:
        if old_tune or any("phase" in r for r in runs):
            raise SweepError(f"{out} holds an lr sweep (tuned on seeds {sorted(old_tune)}): a sweep without --lr_grid "
                             f"into it would mix its runs with the tune and confirm runs: pass --lr_grid=... to add to "
                             f"it, or another --out")
        return
    if plain := sorted({r.get("seed") for r in runs if "phase" not in r}):
        raise SweepError(f"{out} holds the runs of a sweep without --lr_grid (seeds {plain}): an lr sweep into it would "
                         f"mix them with its tune and confirm runs: pass another --out")
    if old_tune and set(tune_seeds) != old_tune:
        mixed = sorted(set(tune_seeds) & phase_seeds(previous, "confirm"))
        what = f", an earlier confirm seed{'s' if len(mixed) > 1 else ''}" if mixed else ""
        raise SweepError(f"{out}: its lr picks were tuned on seeds {sorted(old_tune)} (sweep.json); this sweep would "
                         f"tune on {tune_seeds}{what}: tune and confirm seeds never mix in one folder. More confirm seeds: "
                         f"--seed0={min(old_tune)} --tune_seeds={len(old_tune)} and a larger --seeds (confirm seeds follow "
                         f"the tune seeds); tuning on other seeds: another --out")

def report(args, sw, runs, out, base):
    """The comparison (of the confirm runs alone with a grid: the tune runs chose the lr), the failures, the exit code."""
    failed = [r["run_name"] for r in runs if r["returncode"] and not r.get("diverged")]  # now or, not retried, earlier
    diverged = [r["run_name"] for r in runs if r["returncode"] and r.get("diverged")]
    paths = [out] if base is None else [p for p in (run_log(out, r["run_name"]) for r in runs) if p]
    logs = compare.load_runs(paths) if paths else []
    if logs:
        groups = compare.group_runs(logs)
        table = compare.format_table(compare.compare(groups, args.baseline, args.target))
        with open(os.path.join(out, "compare.txt"), "w") as f:
            f.write(table)
        compare.plot(groups, os.path.join(out, "compare.png"), args.target)
        print(table + f"written: {out}/sweep.json, compare.txt, compare.png")
    else:
        print(f"sweep: no usable log in {out}", file=sys.stderr)
    if diverged:
        print(f"sweep: {len(diverged)}/{len(runs)} runs diverged (a non-finite loss; counted as diverged in the "
              f"comparison): {' '.join(diverged)}", file=sys.stderr)
    if failed:
        print(f"sweep: {len(failed)}/{len(runs)} runs failed: {' '.join(failed)} (each run's output above says why; "
              f"once that is fixed, the same command with --retry_failed runs them again)", file=sys.stderr)
    for line in sw.no_pick:
        print(f"sweep: {line}: lower the grid", file=sys.stderr)
    return 1 if failed or sw.no_pick or not logs else 0

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # outside the runs (the comparison, the plot): no traceback either
        print("sweep: interrupted", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
