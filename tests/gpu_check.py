"""One-call GPU check, shortest question first: our --preset=speedrun (the current record, #89), then the archs under
it, then the 2025 record against its own script, every architecture at the width it is built for and the kernels at
the model's shapes, on one GPU, written to one text file.

    python tests/gpu_check.py --out records/gpu/<date>_<device>        # on a GPU machine (~4 min for the first two, ~14 in all)
    python tests/gpu_check.py --out /tmp/gc --tiny                      # the same script on a CPU at a tiny size (~40 s)

Sections, in this order (each run has its own timeout; a section that no longer fits --budget seconds is skipped
and says so, so a partial result still lands):
  speedrun        --preset=speedrun: the current record's recipe and model, compiled, 8 micro-steps a step on one
                  GPU (its stages' 131K-393K tokens), steady ms/step and peak memory. The record's own script is not
                  run beside it: it fetches FlashAttention 3 from a model hub (no network on the device machine) and
                  compiles for ~7 minutes first; tests/peer_check.py compares its math with ours on a CPU instead
  speedrun_archs  --preset=speedrun with --arch=ngpt, --arch=angpt, --norm=dyt: do they run, compiled, at the
                  record's shape (a few steps each; ratios to ours_speedrun, memory beside each)
  record          --preset=speedrun_2025 (the 2025-01-16 record) against ../shared/peer's patched script of it
                  (--peer, copied to peer/ by the caller), same 524,288 tokens per step, same steps
  archs           gpt / ngpt / angpt (relu2, swiglu) / dyt at the 2024 speedrun shape (12 x 768, 6 x 128, d_ff
                  3072), compiled, 128 x 1024 tokens per step, Adam for every arm: last train loss, steady
                  ms/step, peak memory, and the ratios to gpt
  kernels         tests/bench_kernels.py at the model's shapes
  (record, continued: --preset=speedrun_2024)
  components      the current record with one piece (train_gpt.RECORD_PIECES) turned off at a time (steady ms/step)
Steady ms/step is the median of the per-step train times over the steps after the first `warmup` ones (the first
steps compile). Data: the embedded Shakespeare shards (FineWeb cannot be fetched on the device machine), so losses
are not FineWeb losses; times compare runs of this one call.
"""
import argparse, json, os, re, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# timing runs skip validation (--val_tokens=0: no eval graph to compile); the losses are the train losses
SHAKESPEARE = ["--train_files=data/shakespeare/shakespeare_train_*.bin", "--val_files=data/shakespeare/shakespeare_val_*.bin",
               "--val_tokens=0", "--sample_tokens=0"]
TINY = ["--n_layer=2", "--n_embd=64", "--n_head=2", "--seq_len=128", "--batch_size=4", "--device_batch_size=2",
        "--no-compile", "--kernels=torch", "--bf16=false"]
# --preset=speedrun at a CPU size: its 11-layer plan kept, 64 wide, two short stages, a small bigram table
TINY_RECORD = ["--n_embd=64", "--n_head=2", "--seq_len=128", "--val_seq_len=128", "--batch_size=4", "--device_batch_size=2",
               "--stages=512x128 w1/2 lr1 mtp1,.5,.25>1,.5,0 pre.25; +1 512x128 w1/3", "--final_window=4",
               "--no-compile", "--kernels=torch", "--bf16=false"]
TINY_BIGRAM = ["--bigram_vocab=1024"]  # GPT's (nGPT / anGPT drop the bigram table)

SPEEDRUN_ARCHS = [  # label, flags on top of --preset=speedrun (the record's components that apply to each arch)
    ("speedrun_ngpt", ["--arch=ngpt"]),
    ("speedrun_angpt", ["--arch=angpt"]),
    ("speedrun_dyt", ["--norm=dyt"]),
]
RECORD_STEPS = 24  # both scripts; the medians: the peer's clock restarts at step 10 (steps 12-24), ours skips 5 (6-24)

ARCHS = [  # label, flags: the 2024 speedrun model with the same optimizer (Adam) for every arm
    ("gpt", ["--optimizer=adam"]),
    ("ngpt", ["--arch=ngpt"]),
    ("angpt", ["--arch=angpt"]),
    ("dyt", ["--optimizer=adam", "--norm=dyt"]),
    ("angpt_swiglu", ["--arch=angpt", "--mlp=swiglu"]),
]


def cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


class Check:
    def __init__(self, out, tiny, budget, peer):
        self.out, self.tiny, self.peer = out, tiny, peer
        self.deadline = time.monotonic() + budget
        os.makedirs(os.path.join(out, "raw"), exist_ok=True)
        self.report = open(os.path.join(out, "gpu_check.txt"), "a")

    def say(self, line=""):
        print(line, flush=True)
        self.report.write(line + "\n"); self.report.flush()

    def left(self):
        return self.deadline - time.monotonic()

    def run(self, label, cmd, timeout, env=None):
        """Runs cmd (from the repo root), keeps its output in raw/<label>.txt; returns (rc, output, seconds). A
        train_gpt.py run of --tiny on a CPU runs in this process (in_process): a torch import per run was most of its time."""
        timeout = min(timeout, max(1, self.left()))
        t0 = time.monotonic()
        if self.tiny and not cuda() and cmd[1:2] == ["train_gpt.py"] and not env:
            rc, text = in_process(cmd[2:])
        else:
            try:
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
                rc, text = r.returncode, r.stdout + r.stderr
            except subprocess.TimeoutExpired as e:
                rc, text = "timeout", (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        with open(os.path.join(self.out, "raw", f"{label}.txt"), "w") as f:
            f.write(f"$ {' '.join(cmd)}\n{text}")
        return rc, text, time.monotonic() - t0

    def train(self, label, flags, steps, timeout):
        """One train_gpt.py run; returns its parsed numbers (or the failure; 'skipped' when the budget is spent)."""
        if self.left() < (5 if self.tiny else 40):
            return dict(ok=False, rc="skip", secs=0.0, steps=0, last_loss=None, val=None, ms=None, ms_min=None, ms_max=None,
                        peak_mib=None, params=None, tail="(skipped: budget spent)")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if cuda() else [sys.executable]
        gpt = not any(f in flags for f in ("--arch=ngpt", "--arch=angpt"))
        size = (TINY_RECORD + TINY_BIGRAM * gpt if flags[:1] == ["--preset=speedrun"] else TINY) if self.tiny else []
        cmd = launcher + ["train_gpt.py", *SHAKESPEARE, *size, *flags, f"--steps={steps}", f"--run_name={label}",
                          f"--log_dir={os.path.join(self.out, 'logs')}"]
        rc, text, secs = self.run(label, cmd, timeout)
        return parse_ours(text, rc, secs)

    def section(self, name, need_s):
        need_s = need_s / 20 if self.tiny else need_s
        if self.left() < need_s:
            self.say(f"\n=== {name}: skipped ({self.left():.0f} s of the budget left, needs ~{need_s} s)")
            return False
        self.say(f"\n=== {name}")
        return True


def in_process(argv):
    """train_gpt.main(argv) in this process, from the repo root, as `python train_gpt.py ARGV` would run it: returns
    (exit code, stdout + stderr); an exception is exit code "error" with its traceback. The signal handlers that
    train() installs are given back."""
    import contextlib, io, signal, traceback
    sys.path.insert(0, ROOT)
    import train_gpt
    out, cwd = io.StringIO(), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = train_gpt.main(list(argv))
    except SystemExit as e:  # as the process would have ended
        rc = e.code
    except Exception:
        rc = "error"
        out.write(traceback.format_exc())
    finally:
        os.chdir(cwd)
        for s, h in handlers.items():
            signal.signal(s, h)
    return rc, out.getvalue()


def steady(times_ms, warmup):
    """Median per-step time after the first `warmup` steps (compile, autotune) and its spread (min, max)."""
    per_step = [b - a for a, b in zip(times_ms, times_ms[1:])][warmup:]
    if not per_step:
        return None, None, None
    return statistics.median(per_step), min(per_step), max(per_step)


def parse_ours(text, rc, secs):
    train = [(int(s), float(l), float(t)) for s, l, t in re.findall(r"^step:(\d+)/\d+ train_loss:(\S+) train_time:(\d+)ms", text, re.M)]
    val = re.findall(r"^step:\d+/\d+ val_loss:(\S+)", text, re.M)
    peak = re.search(r"peak memory allocated: (\d+) MiB", text) or re.search(r"peak memory rss: (\d+) MiB", text)
    params = re.search(r"^parameters: ([\d,]+)", text, re.M)
    times = [0.0] + [t for _, _, t in train]
    med, lo, hi = steady(times, warmup=min(5, max(0, len(train) - 3)))
    return dict(ok=rc == 0, rc=rc, secs=secs, steps=len(train), last_loss=train[-1][1] if train else None,
                val=float(val[-1]) if val else None, ms=med, ms_min=lo, ms_max=hi, peak_mib=int(peak.group(1)) if peak else None,
                params=params.group(1) if params else None, tail=text[-1500:])


def parse_peer(text, rc, secs):
    """modded-nanogpt prints cumulative train_time per step and restarts its clock at step 10."""
    pts = [(int(s), float(t)) for s, t in re.findall(r"^step:(\d+)/\d+ train_time:(\d+)ms", text, re.M)]
    pts = [p for p in pts if p[0] > 10]  # after the clock restart
    peak = re.search(r"peak memory allocated: (\d+) MiB", text)
    med, lo, hi = steady([t for _, t in pts], warmup=1)
    return dict(ok=rc == 0 and med is not None, rc=rc, secs=secs, steps=len(pts), last_loss=None, val=None, ms=med, ms_min=lo,
                ms_max=hi, peak_mib=int(peak.group(1)) if peak else None, params=None, tail=text[-1500:])


def table(check, rows, ref):
    """rows: [(label, result)]; ratios against the row labelled ref."""
    base = dict(rows).get(ref) or {}
    check.say(f"{'run':<22} {'ok':>4} {'steps':>5} {'last loss':>9} {'val':>7} {'ms/step':>9} {'[min, max]':>17} {'x ' + ref:>9} "
              f"{'peak MiB':>9} {'x mem':>6} {'wall s':>7}")
    for label, r in rows:
        ratio = r["ms"] / base["ms"] if r.get("ms") and base.get("ms") else None
        mem = r["peak_mib"] / base["peak_mib"] if r.get("peak_mib") and base.get("peak_mib") else None
        f = lambda v, spec: format(v, spec) if v is not None else "-"
        spread = f"[{f(r['ms_min'], '.1f')}, {f(r['ms_max'], '.1f')}]"
        check.say(f"{label:<22} {'yes' if r['ok'] else str(r['rc']):>4} {r['steps']:>5} {f(r['last_loss'], '.4f'):>9} "
                  f"{f(r['val'], '.4f'):>7} {f(r['ms'], '.1f'):>9} {spread:>17} {f(ratio, '.3f'):>9} {f(r['peak_mib'], 'd'):>9} "
                  f"{f(mem, '.2f'):>6} {r['secs']:>7.0f}")
    for label, r in rows:
        if not r["ok"]:
            check.say(f"--- {label} failed (rc {r['rc']}), last output:\n{r['tail']}")


def env_section(check):
    check.say(f"# gpu_check {time.strftime('%Y-%m-%d %H:%M:%S')} {'(tiny, CPU)' if check.tiny else ''}")
    import platform, torch
    try:
        import triton; tv = triton.__version__
    except ImportError:
        tv = "none"
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    check.say(f"device {dev}, python {platform.python_version()}, torch {torch.__version__}, triton {tv}, {os.cpu_count()} CPUs")
    import hashlib  # the device machine's copy of the tree may carry a stale .git: the file's hash says what ran
    with open(os.path.join(ROOT, "train_gpt.py"), "rb") as f:
        check.say(f"code: train_gpt.py sha256 {hashlib.sha256(f.read()).hexdigest()[:12]}")


def archs_section(check, steps):
    if not check.section(f"archs: speedrun shape, compiled, 128 x 1024 tokens/step, Adam for every arm, {steps} steps", 120):
        return
    size = ["--preset=speedrun_2024"] + ([] if check.tiny else ["--batch_size=128", "--device_batch_size=64"])  # the first GPU runs' shape
    rows = [(label, check.train(label, size + flags, steps, timeout=150)) for label, flags in ARCHS]
    table(check, rows, "gpt")


def speedrun_section(check, steps):
    """Ours at the current record first: its first step compiles, then steps of 8 micro-batches."""
    if not check.section("speedrun: --preset=speedrun (the current record, #89), compiled, its stages' tokens per step", 200):
        return []
    # a short sample at the end exercises sampling with the record's masks (short contexts take the dense mask)
    rows = [("ours_speedrun", check.train("ours_speedrun", ["--preset=speedrun", "--sample_tokens=8"], steps, timeout=190))]
    check.say("(the record's own script: not run, see the docstring; tests/peer_check.py compares its math on a CPU)")
    table(check, rows, "ours_speedrun")
    return rows


def record_section(check, steps):
    """Ours and the peer at the same steps (the LR cooldown and window warm-up span the run in both). Budget: two
    first-step compiles (~100 s each on an H200) and steps of ~1 s."""
    if not check.section("record: --preset=speedrun_2025 (the 2025-01-16 record) vs its own script, 524,288 tokens/step", 200):
        return []
    rows = [("ours_speedrun_2025", check.train("ours_speedrun_2025", ["--preset=speedrun_2025"], steps, timeout=170))]
    if check.peer and os.path.exists(check.peer) and cuda():
        env = dict(PEER_TRAIN_GLOB=os.path.join(ROOT, "data/shakespeare/shakespeare_train_*.bin"),
                   PEER_VAL_GLOB=os.path.join(ROOT, "data/shakespeare/shakespeare_val_*.bin"), PEER_STEPS=str(max(steps, 15)),
                   PEER_VAL_EVERY="0", PEER_FINAL_VAL="0", PEER_LOG_DIR=os.path.join(check.out, "peer_logs"), PEER_COORD_DESCENT="0")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", check.peer]
        rc, text, secs = check.run("peer", cmd, timeout=150, env=env)
        rows.append(("peer_record", parse_peer(text, rc, secs)))
    else:
        check.say(f"(peer not run: {'no CUDA' if not cuda() else 'no script at ' + str(check.peer)})")
    table(check, rows, "ours_speedrun_2025")
    return rows


def speedrun_archs_section(check, steps, record_rows):
    """The archs under --preset=speedrun, compiled: each pays its own first-step compile."""
    if not check.section(f"speedrun_archs: --preset=speedrun per arch, compiled, {steps} steps", 150):
        return
    rows = [r for r in record_rows if r[0] == "ours_speedrun"]
    rows += [(label, check.train(label, ["--preset=speedrun", *flags], steps, timeout=180)) for label, flags in SPEEDRUN_ARCHS]
    table(check, rows, "ours_speedrun")

def record_2024_section(check, steps, rows):
    """The old recipe at the same 524,288 tokens per step, after the kernels (the lowest priority of the calls)."""
    if not rows or not check.section("record (continued): --preset=speedrun_2024, the recipe before the record's components", 60):
        return
    rows = rows + [("ours_speedrun_2024", check.train("ours_speedrun_2024", ["--preset=speedrun_2024"], steps, timeout=150))]
    table(check, rows, "ours_speedrun_2025")


def components_section(check, steps, components):
    if not components:
        return
    if not check.section(f"components: --preset=speedrun with one piece off, {steps} steps", 120):
        return
    base = ["--preset=speedrun"]
    rows = [("all_on", check.train("all_on", base, steps, timeout=150))]
    rows += [(f"no_{name}", check.train(f"no_{name}", base + flags, steps, timeout=150)) for name, flags in components]
    table(check, rows, "all_on")


def kernels_section(check):
    if not check.section("kernels: tests/bench_kernels.py at the model's shapes", 60):
        return
    rc, text, secs = check.run("bench_kernels", [sys.executable, "tests/bench_kernels.py"] + (["--tiny"] if check.tiny else []), timeout=240)
    check.say(text.strip()[-12000:])
    check.say(f"(bench_kernels rc {rc}, {secs:.0f} s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.txt, raw/ and logs/")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: the same code paths, minutes not hours")
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole check; sections that no longer fit are skipped")
    ap.add_argument("--peer", default=os.path.join(ROOT, "peer", "modded_train_gpt.py"), help="the patched record script (../shared/peer)")
    ap.add_argument("--sections", default="speedrun,speedrun_archs,record,archs,kernels,components")
    ap.add_argument("--steps", type=int, default=30, help="steps of each archs run")
    ap.add_argument("--components", default="", help="comma-separated subset of train_gpt.RECORD_PIECES (default: all)")
    args = ap.parse_args(argv)
    check = Check(args.out, args.tiny, args.budget, args.peer)
    env_section(check)
    sections = args.sections.split(",")
    speedrun_rows = speedrun_section(check, 4 if args.tiny else RECORD_STEPS) if "speedrun" in sections else []
    if "speedrun_archs" in sections: speedrun_archs_section(check, 3 if args.tiny else 6, speedrun_rows)
    record_rows = record_section(check, 4 if args.tiny else RECORD_STEPS) if "record" in sections else []
    if "archs" in sections: archs_section(check, 3 if args.tiny else args.steps)
    if "kernels" in sections: kernels_section(check)
    record_2024_section(check, 4 if args.tiny else 20, record_rows)
    if "components" in sections: components_section(check, 3 if args.tiny else 10, record_components(args.components))
    check.say(f"\n# done, {time.monotonic() - (check.deadline - args.budget):.0f} s")
    return 0


def record_components(names=""):
    """[(piece, the flags that turn it off)] of --preset=speedrun (train_gpt.RECORD_PIECES), all or `names`."""
    sys.path.insert(0, ROOT)
    import train_gpt
    wanted = [n for n in names.split(",") if n] or list(train_gpt.RECORD_PIECES)
    return [(n, train_gpt.RECORD_PIECES[n]) for n in wanted]


if __name__ == "__main__":
    sys.exit(main())
