"""Variant step-time benchmark: one training step (forward, backward, optimizer, nGPT/anGPT projection) of each
config, timed round-robin in one process on the same batch, so every ratio to the first config is measured side by
side under the same machine load (a sweep's step times come from runs made minutes apart).

    python tests/bench_variants.py                                   # the CPU replay scale, the seed reports' arms
    python tests/bench_variants.py --scale="--preset=speedrun --device_batch_size=16" --reps=50   # on a GPU
    python tests/bench_variants.py --configs "gpt=" "ngpt=--arch=ngpt" --out=records/x/bench.txt

Prints per config: median step ms, the median and [25%, 75%] of its per-round ratio to the first config, and
Wilcoxon's signed-rank p-value of those paired times (scipy.stats.wilcoxon): the speed claims' test.
"""
import argparse, os, shlex, statistics, sys, time, platform
import numpy as np
import torch
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_gpt as T  # noqa: E402

REPLAY_SCALE = ("--preset=cpu --n_layer=4 --n_embd=128 --n_head=4 --seq_len=128 --batch_size=8 "
                "--device_batch_size=8")
DEFAULT_CONFIGS = ["gpt=", "gpt_adam=--optimizer=adam", "ngpt=--arch=ngpt", "angpt=--arch=angpt", "dyt=--norm=dyt",
                   "norm_skip_tol=--norm_skip_tol=0.05", "qkv_head_dim=--qkv_head_dim=24",
                   "mlp_skip_threshold=--mlp_skip_threshold=0.15"]

class Arm:
    """One config's model, optimizers and a fixed batch, ready to take timed training steps."""
    def __init__(self, label, argv, device, tokens):
        self.label, self.a = label, T.parse_args(argv)
        torch.manual_seed(0)
        self.model = T.build_model(self.a, T.Ops(self.a.kernels, device)).to(device)  # --kernels (default auto) per config
        self.opts = T.build_optimizers(self.model, self.a)
        for opt in self.opts:
            for g in opt.param_groups:
                g["initial_lr"] *= 0.1  # small steps: the timing must not depend on the model blowing up
        B, L = self.a.device_batch_size, self.a.seq_len
        buf = torch.as_tensor(tokens[: B * L + 1].astype(np.int64), device=device)
        self.x, self.y = buf[:-1].view(B, L), buf[1:].view(B, L)
        self.device, self.times, self.n_steps = device, [], 0

    def step(self):
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync(); t0 = time.perf_counter()
        # the train loop's step (window warm-up, schedules, projection / clamp) on one fixed batch
        T.train_step(self.model, self.model, self.opts, [(self.x, self.y)], self.a, self.n_steps % self.a.steps, self.device)
        self.n_steps += 1
        sync()
        return (time.perf_counter() - t0) * 1000

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default=REPLAY_SCALE, help="train_gpt.py flags shared by every config")
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="LABEL=FLAGS; the first is the reference")
    ap.add_argument("--reps", type=int, default=20, help="timed rounds (each times every config once)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokens = T.read_shard(sorted(__import__("glob").glob(os.path.join(ROOT, "data/shakespeare/shakespeare_train_*.bin")))[0])
    arms = []
    for spec in args.configs:
        label, _, flags = spec.partition("=")
        arms.append(Arm(label, shlex.split(args.scale) + shlex.split(flags), device, tokens))
    for arm in arms:
        for _ in range(args.warmup):
            arm.step()
    for _ in range(args.reps):  # round-robin: a load spike hits every arm of the round alike
        for arm in arms:
            arm.times.append(arm.step())
    ref = np.asarray(arms[0].times)
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [f"# bench_variants: {args.reps} rounds (+{args.warmup} warm-up), device {device.type} ({hw}), torch {torch.__version__}",
             f"# scale: {args.scale}",
             f"{'config':<20} {'flags':<36} {'step ms':>9} {'ratio':>7} {'[25%, 75%]':>16} {'p':>9}"]
    for arm, spec in zip(arms, args.configs):
        t = np.asarray(arm.times)
        r = t / ref
        q1, q3 = np.percentile(r, [25, 75])
        p = "-" if arm is arms[0] else f"{stats.wilcoxon(t, ref).pvalue:.2g}"
        lines.append(f"{arm.label:<20} {spec.partition('=')[2][:36]:<36} {statistics.median(arm.times):9.1f} "
                     f"{np.median(r):7.3f} {f'[{q1:.3f}, {q3:.3f}]':>16} {p:>9}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
