"""
Seed sweep: run train_gpt.py for every config x seed, then compare the logs.

    python records/sweep.py ngpt_alpha --seeds=5 -- "--arch=gpt" "--arch=ngpt --ngpt_alpha_init=0.15"
    python records/sweep.py quick --seeds=2 --seed0=10 --out=/tmp/quick --dry_run -- "--steps=50" "--arch=ngpt"

Each config is a string of train_gpt.py flags (split with shlex, like a shell line: a config with an
unbalanced quote fails before any run starts, exit 2); each run gets
`--seed=S --log_dir=<out> --run_name=<NAME>_c<i>_s<S>` appended. Runs go one at a time, seed-major
(seed 0 of every config, then seed 1, ...) so an interrupted sweep still has balanced groups.
With GPUs: `torchrun --standalone --nproc_per_node=<#GPUs> train_gpt.py ...`, else `python train_gpt.py ...`,
run from the repo root. A failed run is reported and the sweep goes on; the exit code is 1 if any failed.
Writes <out>/sweep.json (configs, seeds, commands, exit codes; updated after every run, atomically: a
crash mid-write leaves the previous version; a second sweep into the same folder adds its runs, e.g.
`--seed0=3 --seeds=2` for more seeds; an unreadable one stops the sweep, exit 2, untouched), and at the end
<out>/compare.txt (the table of records/compare.py) and <out>/compare.png. Default out: records/<NAME>.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare  # noqa: E402

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

def fail(msg):
    print(f"sweep: error: {msg}", file=sys.stderr)
    return 2

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

def plan(name, configs, seeds, out, script, prefix):
    """The runs, seed-major: dicts with config index, flags, seed, run_name and the command."""
    runs = []
    for s in seeds:
        for i, cfg in enumerate(configs):
            run_name = f"{name}_c{i}_s{s}"
            cmd = prefix + [_rel(script)] + shlex.split(cfg) + [f"--seed={s}", f"--log_dir={_rel(out)}",
                                                                f"--run_name={run_name}"]
            runs.append(dict(config=i, args=cfg, seed=s, run_name=run_name, cmd=cmd, returncode=None, seconds=None))
    return runs

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opts, configs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(usage='%(prog)s NAME --seeds=5 [--seed0=0] [--out=records/NAME] [--dry_run] '
                                       '-- "FLAGS of config 0" "FLAGS of config 1" ...',
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per config")
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--out", help="folder for logs and results (default records/NAME)")
    ap.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--target", type=float, help="target val loss for the comparison (e.g. 3.28)")
    ap.add_argument("--baseline", help="baseline group for the comparison (name or substring)")
    ap.add_argument("--script", default=os.path.join(REPO, "train_gpt.py"), help=argparse.SUPPRESS)  # tests: a stub
    ap.add_argument("--launcher", default="auto", choices=["auto", "python", "torchrun"], help=argparse.SUPPRESS)
    args = ap.parse_args(opts)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    configs = configs or [""]  # no config: one run per seed with train_gpt.py's defaults
    out = args.out or os.path.join(REPO, "records", args.name)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    # a folder that already holds a sweep is extended (e.g. more seeds for a close call): its runs stay on
    # record and a config it already has keeps its index, so run names stay unique per config and seed
    previous, record_path = {}, os.path.join(out, "sweep.json")
    if os.path.exists(record_path):
        try:
            with open(record_path) as f:
                previous = json.load(f)
            if not isinstance(previous, dict):
                raise ValueError(f"a JSON {type(previous).__name__}, not a sweep record")
        except (OSError, ValueError) as e:  # never overwrite the record of earlier runs with a fresh one
            return fail(f"{record_path} is unreadable ({e}): restore it (e.g. git checkout) or move it away to "
                        f"start a new record there, or pass another --out")
    all_configs = list(previous.get("configs", []))
    all_configs += [c for c in configs if c not in all_configs]
    for i, cfg in enumerate(all_configs):  # before any run: a bad config must not fail halfway through a sweep
        try:
            shlex.split(cfg)
        except ValueError as e:
            fix = ("quote the flag value or escape the quote" if "quotation" in str(e) else  # shlex's two errors
                   "escape the trailing backslash (\\\\)")
            return fail(f'config {i} "{cfg}": {e}: {fix} (configs are split like a shell line: '
                        f'--prompt="it\'s" or --prompt=it\\\'s)')
    runs = plan(args.name, all_configs, seeds, out, args.script, launcher(args.launcher))
    runs = [r for r in runs if r["args"] in configs]
    done = {(r["args"], r["seed"]) for r in previous.get("runs", []) if r.get("returncode") == 0}
    if any((r["args"], r["seed"]) in done for r in runs):
        ap.error(f"{out}/sweep.json already has a finished run of these configs at seeds {seeds}: pick other "
                 f"seeds (--seed0) or another --out")
    if args.dry_run:
        print(f"# cd {REPO}")
        for r in runs:
            print(shlex.join(r["cmd"]))
        return 0

    os.makedirs(out, exist_ok=True)
    record = dict(name=args.name, out=out, configs=all_configs,
                  seeds=sorted(set(previous.get("seeds", [])) | set(seeds)), runs=previous.get("runs", []) + runs)
    save = lambda: write_json_atomic(record_path, record)
    try:
        for k, r in enumerate(runs):
            print(f"=== sweep {args.name}: run {k + 1}/{len(runs)} config {r['config']} seed {r['seed']}: "
                  f"{shlex.join(r['cmd'])}", flush=True)
            t0 = time.time()
            r["returncode"] = subprocess.run(r["cmd"], cwd=REPO).returncode  # output streams straight through
            r["seconds"] = round(time.time() - t0, 1)
            if r["returncode"]:
                print(f"=== sweep {args.name}: run {r['run_name']} FAILED (exit {r['returncode']}), going on",
                      flush=True)
            save()
    finally:
        save()  # also when interrupted: what ran so far stays on record
    failed = [r["run_name"] for r in runs if r["returncode"]]

    logs = compare.load_runs([out])
    if logs:
        groups = compare.group_runs(logs)
        table = compare.format_table(compare.compare(groups, args.baseline, args.target))
        with open(os.path.join(out, "compare.txt"), "w") as f:
            f.write(table)
        compare.plot(groups, os.path.join(out, "compare.png"), args.target)
        print(table + f"written: {out}/sweep.json, compare.txt, compare.png")
    else:
        print(f"sweep: no usable log in {out}", file=sys.stderr)
    if failed:
        print(f"sweep: {len(failed)}/{len(runs)} runs failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed or not logs else 0

if __name__ == "__main__":
    sys.exit(main())
