"""Ours vs karpathy/nanoGPT on a CPU, side by side (issue 17): the same size (4 layers x 256, 4 heads, seq 256,
8 sequences = 2,048 tokens a step), the same Shakespeare split (our shards without their 1024-byte header), runs
interleaved in one invocation so both see the same machine load.

    python tests/bench_cpu.py --nanogpt=PATH                         # tok/s: 3 rounds of 25 steps per trainer
    python tests/bench_cpu.py --nanogpt=PATH --quality               # val loss at equal training time
    python tests/bench_cpu.py --trainers=ours,ours_fp32              # ours in bf16 vs fp32, no nanoGPT needed

PATH holds nanoGPT's files plus train_cmp.py (its train.py with ../shared/nanogpt_cmp/train_cmp.patch: bf16
autocast on a CPU as an option, val loss over the first N val tokens in contiguous rows, no checkpoint) and
config/shak_cmp.py (the size above, AdamW + cosine); ../shared/nanogpt_cmp/README.md says how to make it. The
data is written to PATH/data/shak/ from our shards here. Without PATH it says so and exits 0.

Speed: each trainer's per-step times over steps skip+1..steps (train time only, evaluation excluded), tok/s at
their median, the range of the per-run medians, and ours' ratio to each nanoGPT trainer per round and pooled.
Quality: ours' cpu preset (200 steps), then nanoGPT fp32 for as many steps as take it the same training time at
its speed measured just before; both val-loss curves on the same 32,768 val tokens, with their training times.
What nanoGPT keeps that ours does not: tied embedding/head, learned positions, GELU, LayerNorm, AdamW + cosine,
random training windows; ours keeps the speedrun's recipe (Muon, ReLU^2, QK-norm, RoPE, soft-cap, untied head).
"""
import argparse, os, re, shlex, shutil, statistics, subprocess, sys, time, platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_gpt as T  # noqa: E402

NANO_TOKENS_PER_STEP = 8 * 256  # config/shak_cmp.py's batch_size x block_size
TRAINERS = {  # name -> (kind, precision, extra flags)
    "ours": ("ours", "auto", []),  # the cpu preset as ./run.sh runs it: the precision measured fastest here
    "ours_bf16": ("ours", "bf16", ["--bf16"]),
    "ours_fp32": ("ours", "fp32", ["--no-bf16"]),
    "nano_fp32": ("nano", "fp32", []),  # nanoGPT's own CPU path
    "nano_bf16": ("nano", "bf16", ["--cpu_autocast=True"]),
}
NANO_FILES = ("train_cmp.py", "model.py", "configurator.py", "config/shak_cmp.py")

def nanogpt_missing(path):
    """None when PATH is a prepared nanoGPT folder, else what is missing."""
    if not path:
        return "no nanoGPT folder given (--nanogpt=PATH or NANOGPT=PATH)"
    missing = [f for f in NANO_FILES if not os.path.isfile(os.path.join(path, f))]
    return f"{path} lacks {', '.join(missing)}" if missing else None

def write_nanogpt_data(nanogpt, train_files, val_files):
    """nanoGPT's data/shak/{train,val}.bin: our first train and val shard's tokens, header stripped (its memmap
    reads raw uint16). Rewritten only when the content differs."""
    os.makedirs(os.path.join(nanogpt, "data", "shak"), exist_ok=True)
    for split, pattern in (("train", train_files), ("val", val_files)):
        tokens = T.read_shard(T.find_shards(pattern, f"{split}_files")[0])
        path = os.path.join(nanogpt, "data", "shak", f"{split}.bin")
        if not (os.path.exists(path) and os.path.getsize(path) == tokens.nbytes and open(path, "rb").read() == tokens.tobytes()):
            tokens.tofile(path)

def ours_step_ms(log_text):
    """Per-step training ms of one of our logs, from the cumulative train_time of its step lines: {step: ms}."""
    cumulative = {int(m[1]): float(m[2]) for m in re.finditer(r"^step:(\d+)/\d+ train_loss:\S+ train_time:(\d+)ms", log_text, re.M)}
    return {k: cumulative[k] - cumulative.get(k - 1, 0.0) for k in sorted(cumulative)}

def nano_step_ms(out_text):
    """Per-step ms of nanoGPT's 'iter N: loss L, time Tms' lines, numbered from 1 like ours: {step: ms}."""
    return {int(m[1]) + 1: float(m[2]) for m in re.finditer(r"^iter (\d+): loss \S+, time ([\d.]+)ms", out_text, re.M)}

def ours_val(log_text):
    """[(step, train seconds, val loss)] of one of our logs."""
    return [(int(m[1]), float(m[3]) / 1000, float(m[2])) for m in re.finditer(r"^step:(\d+)/\d+ val_loss:([\d.]+) train_time:(\d+)ms", log_text, re.M)]

def nano_val(out_text):
    """[(step, train seconds, val loss)] of train_cmp.py's eval lines."""
    return [(int(m[1]), float(m[3]), float(m[2])) for m in re.finditer(r"^step (\d+): train loss \S+, val loss ([\d.]+), train_time ([\d.]+)s", out_text, re.M)]

class Bench:
    def __init__(self, args):
        self.args, self.out = args, os.path.abspath(args.work)
        os.makedirs(self.out, exist_ok=True)

    def run_ours(self, tag, flags, steps, val=False):
        """Our trainer as ./run.sh runs it, in a fresh process; returns its log's text."""
        log_dir = os.path.join(self.out, tag)
        shutil.rmtree(log_dir, ignore_errors=True)  # a rerun into the same --work: one log per tag
        cmd = [sys.executable, os.path.join(ROOT, "train_gpt.py"), "--preset=cpu", f"--steps={steps}", "--sample_tokens=0",
               f"--log_dir={log_dir}", f"--run_name={tag}", f"--checkpoint_dir={os.path.join(self.out, 'checkpoints')}",
               *([] if val else ["--val_tokens=0"]), *shlex.split(self.args.ours_flags), *flags]
        self.call(cmd, ROOT, os.path.join(self.out, f"{tag}.out"))
        logs = [f for f in os.listdir(log_dir) if f.endswith(".txt")]
        if len(logs) != 1:
            raise RuntimeError(f"{log_dir}: expected one log, found {logs}")
        return open(os.path.join(log_dir, logs[0])).read()

    def run_nano(self, tag, flags, steps, eval_every=1000):
        """nanoGPT's train_cmp.py for `steps` steps (it runs max_iters + 1); returns its stdout."""
        cmd = [sys.executable, "train_cmp.py", "config/shak_cmp.py", f"--max_iters={steps - 1}", f"--lr_decay_iters={steps - 1}",
               f"--eval_interval={eval_every}", *flags]
        return self.call(cmd, self.args.nanogpt, os.path.join(self.out, f"{tag}.out"))

    def call(self, cmd, cwd, out_path):
        with open(out_path, "w") as out:
            rc = subprocess.call(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        text = open(out_path).read()
        if rc != 0:
            raise RuntimeError(f"{shlex.join(cmd)} (in {cwd}) exited {rc}; its output, {out_path}, ends:\n{text[-2000:]}")
        return text

    def run(self, name, tag, steps):
        kind, _, flags = TRAINERS[name]
        if kind == "ours":
            return ours_step_ms(self.run_ours(tag, flags, steps))
        return nano_step_ms(self.run_nano(tag, flags, steps))

def precision_of(name, log_text=None):
    precision = TRAINERS[name][1]
    if precision == "auto":
        m = re.search(r"^cpu: (bf16|fp32)", log_text or "", re.M)
        return m[1] if m else "?"
    return precision

def speed(args, bench, say, ours_tokens_per_step):
    a = args
    tokens = {name: ours_tokens_per_step if TRAINERS[name][0] == "ours" else NANO_TOKENS_PER_STEP for name in a.trainers}
    per_run = {name: [] for name in a.trainers}  # name -> [{step: ms}] in round order
    precision = {}
    for r in range(1, a.rounds + 1):
        say(f"round {r} at {time.strftime('%H:%M:%S')}, load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
        for name in a.trainers:
            tag = f"{name}_r{r}"
            ms = bench.run(name, tag, a.steps)
            kept = [ms[k] for k in range(a.skip + 1, a.steps + 1) if k in ms]
            if len(kept) != a.steps - a.skip:
                raise RuntimeError(f"{tag}: {len(kept)} timed steps of {a.steps - a.skip} found in {bench.out}/{tag}.out")
            per_run[name].append(kept)
            if TRAINERS[name][0] == "ours" and name not in precision:
                log = [f for f in os.listdir(os.path.join(bench.out, tag)) if f.endswith(".txt")][0]
                precision[name] = precision_of(name, open(os.path.join(bench.out, tag, log)).read())
            say(f"  {name:10s} median {statistics.median(kept):7.1f} ms/step  {tokens[name] / statistics.median(kept) * 1000:6.0f} tok/s")
    say(f"\nsteps {a.skip + 1}..{a.steps} of each run ({', '.join(f'{n} {t}' for n, t in tokens.items())} tokens a step), {a.rounds} interleaved runs each:")
    say(f"{'trainer':10s} {'precision':9s} {'tok/s (median)':>14s} {'per-run medians':>17s} {'ms/step median [min, max]':>27s}")
    pooled = {}
    for name in a.trainers:
        steps = [x for run in per_run[name] for x in run]
        pooled[name] = statistics.median(steps)
        run_tps = [tokens[name] / statistics.median(run) * 1000 for run in per_run[name]]
        say(f"{name:10s} {precision.get(name, TRAINERS[name][1]):9s} {tokens[name] / pooled[name] * 1000:14.0f} "
            f"{min(run_tps):8.0f}-{max(run_tps):<8.0f} {pooled[name]:10.1f} [{min(steps):.1f}, {max(steps):.1f}]")
    base = a.trainers[0]
    for other in a.trainers[1:]:
        scale = tokens[base] / tokens[other]  # ms per step -> tok/s
        rounds = [scale * statistics.median(o) / statistics.median(b) for b, o in zip(per_run[base], per_run[other])]
        say(f"{base}/{other} tok/s ratio: {scale * pooled[other] / pooled[base]:.2f} pooled; per round "
            + " ".join(f"{x:.2f}" for x in rounds))
    return pooled

def quality(args, bench, say):
    """Equal training time: ours' cpu preset, then nanoGPT fp32 for the steps that take it as long."""
    text = bench.run_ours("quality_ours", [], args.quality_steps, val=True)
    ours = ours_val(text)
    train_s = ours[-1][1]
    say(f"ours: {args.quality_steps} steps in {train_s:.1f} s of training ({precision_of('ours', text)})")
    ms = nano_step_ms(bench.run_nano("quality_nano_timing", [], args.steps))
    nano_s_per_step = statistics.median(ms[k] for k in range(args.skip + 1, args.steps + 1)) / 1000
    nano_steps = max(5, round(train_s / nano_s_per_step / 5) * 5)
    say(f"nanoGPT fp32: {nano_s_per_step * 1000:.0f} ms/step just measured -> {nano_steps} steps for the same time")
    nano = nano_val(bench.run_nano("quality_nano", ["--log_interval=10"], nano_steps + 1, eval_every=nano_steps // 5))
    say("val loss on the first 32,768 val tokens, (step, training time):")
    say("  ours:    " + "  ".join(f"{v:.3f} (s{s}, {t:.0f}s)" for s, t, v in ours))
    say("  nanoGPT: " + "  ".join(f"{v:.3f} (s{s}, {t:.0f}s)" for s, t, v in nano))
    say(f"at the end: ours {ours[-1][2]:.4f} after {ours[-1][1]:.0f} s, nanoGPT fp32 {nano[-1][2]:.4f} after {nano[-1][1]:.0f} s")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", default=os.environ.get("NANOGPT", ""), help="prepared nanoGPT folder (or NANOGPT=)")
    p.add_argument("--trainers", default="ours,nano_fp32,nano_bf16", help=f"comma list of {', '.join(TRAINERS)}; ratios are to the first")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    p.add_argument("--quality", action="store_true", help="val loss at equal training time instead of tok/s")
    p.add_argument("--quality_steps", type=int, default=200, help="ours' steps in --quality (the cpu preset's)")
    p.add_argument("--ours_flags", default="", help="extra train_gpt.py flags (a smaller model for a quick check)")
    p.add_argument("--work", default="bench_cpu_out", help="folder for the runs' logs and outputs")
    p.add_argument("--out", default="", help="also write the report to this file")
    a = p.parse_args(argv)
    a.trainers = [t for t in a.trainers.split(",") if t]
    unknown = [t for t in a.trainers if t not in TRAINERS]
    if unknown or a.skip >= a.steps:
        p.error(f"unknown --trainers {unknown}" if unknown else f"--skip={a.skip} leaves no timed step of --steps={a.steps}")
    needs_nano = a.quality or any(TRAINERS[t][0] == "nano" for t in a.trainers)
    if needs_nano and (why := nanogpt_missing(a.nanogpt)):
        print(f"bench_cpu: skipped: {why}. Prepare one as ../shared/nanogpt_cmp/README.md says "
              f"(or run --trainers=ours,ours_fp32 alone).")
        return 0
    lines = []
    def say(msg=""):
        print(msg, flush=True); lines.append(msg)
    cfg = T.parse_args(["--preset=cpu", *shlex.split(a.ours_flags)], cuda_available=False)
    if needs_nano:
        write_nanogpt_data(a.nanogpt, cfg.train_files, cfg.val_files)
    import torch
    say(f"bench_cpu {' '.join(argv if argv is not None else sys.argv[1:])}")
    say(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}, train_gpt.py sha256 {T.hashlib.sha256(open(os.path.join(ROOT, 'train_gpt.py'), 'rb').read()).hexdigest()[:12]}")
    bench = Bench(a)
    quality(a, bench, say) if a.quality else speed(a, bench, say, cfg.batch_size * cfg.seq_len)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        open(a.out, "w").write("\n".join(lines) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
