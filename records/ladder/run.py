"""
A scale ladder as a series of lr-tuned sweeps: one records/sweep.py invocation per rung, into the rung's folder,
with the rung's shared flags before every arm's flags (README.md in this folder).

    python records/ladder/run.py --plan                      # every run (finished ones marked done, known picks
                                                             # confirmed); the CPU time left per rung and in all
    python records/ladder/run.py --only=r1                   # one rung
    python records/ladder/run.py --budget_hours=6            # rung by rung, stopping between runs; re-run resumes

ladder.json: {"rungs": [{"name", "folder", "flags", "seconds_per_run", "arms" (optional: the arms this rung runs, a
list of names; default every arm), "lr_grids" (optional: {arm: grid} for this rung, e.g. centred on the rung
below's pick)}], "arms": {name: flags}, "lr_grid":
"0.5,1,2", "lr_grids": {arm: grid} (optional, per arm), "max_extend": 2 (edge extensions, sweep.py's), "tune_seeds": 2,
"confirm_seeds": 3, "claims": [...]
(records/scaling.py's; not read here)}. Config i of a rung's sweep is the rung's arm i in "arms" order:
"<rung flags> <arm flags>" (plus " --lr_grid=..." for an arm in the rung's or the ladder's "lr_grids"). ladder.json is
checked once, before any run (with --plan too): a wrong key is one line naming it and the type it must be, exit 2.
Exit codes are the sweep's: 0, 1 (a confirm run failed; the next rungs still run), 2 (bad input), 3 (the budget is
spent), 130 (interrupted).
"""
import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import sweep  # noqa: E402

GRID = 'a comma-separated list of positive lr_scale values, e.g. "0.5,1,2"'

def load_ladder(path):
    """The ladder, checked once for every key the runner reads: a wrong one is one line naming the key and the type
    it must be (SweepError), before any run."""
    try:
        with open(path) as f:
            ladder = json.load(f)
    except (OSError, ValueError) as e:
        raise sweep.SweepError(f"{path}: cannot read it ({e})") from None
    show = lambda v: json.dumps(v)[:40]

    def need(ok, what):
        if not ok:
            raise sweep.SweepError(f"{path}: {what}")

    def number(v, low, integer=True):
        kind = int if integer else (int, float)
        return isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) and v >= low

    def grid(v, where):
        try:
            ok = isinstance(v, str) and sweep.parse_grid(v)
        except sweep.SweepError:
            ok = False
        need(ok, f"{where} is {show(v)}: {GRID}")

    def grids(v, where):
        need(isinstance(v, dict), f"{where} is {show(v)}: an object {{arm: lr grid}}")
        need(not (unknown := [a for a in v if a not in arms]), f"{where} names {', '.join(map(repr, unknown))}, not one "
                                                               f"of the arms {list(arms)}")
        for a, g in v.items():
            grid(g, f"{where}[{json.dumps(a)}]")

    need(isinstance(ladder, dict), f"is {show(ladder)}: a JSON object with \"rungs\" and \"arms\"")
    for key in ("rungs", "arms"):
        need(key in ladder, f'no "{key}": ladder.json needs "rungs" (a list of {{"name", "folder", "flags"}}) and "arms" '
                            f'({{name: train_gpt.py flags}})')
    rungs, arms = ladder["rungs"], ladder["arms"]
    need(isinstance(arms, dict) and arms, f'"arms" is {show(arms)}: a non-empty object {{name: train_gpt.py flags}}')
    for a, flags in arms.items():
        need(isinstance(flags, str), f'"arms"[{json.dumps(a)}] is {show(flags)}: a string of train_gpt.py flags')
    need(isinstance(rungs, list) and rungs, f'"rungs" is {show(rungs)}: a non-empty list of rungs '
                                            f'{{"name", "folder", "flags"}}')
    for i, r in enumerate(rungs):
        where = f'"rungs"[{i}]'
        need(isinstance(r, dict), f'{where} is {show(r)}: a rung is an object {{"name", "folder", "flags"}}')
        for k in ("name", "folder"):
            need(isinstance(r.get(k), str) and r[k], f'{where}["{k}"] is {show(r.get(k))}: a non-empty string')
        need(isinstance(r.get("flags"), str), f'{where}["flags"] is {show(r.get("flags"))}: a string of train_gpt.py flags')
        if "seconds_per_run" in r:
            need(number(r["seconds_per_run"], 0, integer=False) and r["seconds_per_run"] > 0,
                 f'{where}["seconds_per_run"] is {show(r["seconds_per_run"])}: a positive number of seconds')
        if "arms" in r:
            need(isinstance(r["arms"], list) and all(isinstance(a, str) for a in r["arms"]),
                 f'{where}["arms"] is {show(r["arms"])}: a list of arm names (of "arms": {list(arms)})')
            need(not (unknown := [a for a in r["arms"] if a not in arms]),
                 f'{where}["arms"]: rung {r["name"]}: {unknown} not among the arms {list(arms)}')
        if "lr_grids" in r:
            grids(r["lr_grids"], f'{where}["lr_grids"]')
    names = [r["name"] for r in rungs]
    twice = [n for n in names if names.count(n) > 1]
    need(not twice, f"two rungs are named {(twice or [''])[0]!r}: every rung needs its own name")
    folders = {}
    for r in rungs:  # one sweep folder per rung: two rungs in one would share its runs and its sweep.json
        where = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), r["folder"]))
        need(where not in folders, f"rungs {folders.get(where)} and {r['name']} share the folder {r['folder']!r}: give "
                                   f"each rung its own")
        folders[where] = r["name"]
    if "lr_grid" in ladder:
        grid(ladder["lr_grid"], '"lr_grid"')
    if "lr_grids" in ladder:
        grids(ladder["lr_grids"], '"lr_grids"')
    for key, low in (("tune_seeds", 1), ("confirm_seeds", 1), ("max_extend", 0)):
        if key in ladder:
            need(number(ladder[key], low), f'"{key}" is {show(ladder[key])}: an integer >= {low}')
    ladder["dir"] = os.path.dirname(os.path.abspath(path))  # a rung's folder is relative to ladder.json (as scaling.py reads it)
    return ladder

def rung_arms(ladder, rung):
    """{arm: flags} of the arms the rung runs, in the ladder's "arms" order."""
    return {a: f for a, f in ladder["arms"].items() if a in rung.get("arms", ladder["arms"])}

def own_grid(ladder, rung, arm):
    """The arm's grid when it has its own (the rung's "lr_grids" first, then the ladder's), else None."""
    return rung.get("lr_grids", {}).get(arm, ladder.get("lr_grids", {}).get(arm))

def arm_grid(ladder, rung, arm):
    return own_grid(ladder, rung, arm) or ladder.get("lr_grid", "0.5,1,2")

def sweep_argv(ladder, rung, extra=()):
    """The rung's records/sweep.py command line (after `sweep.py`)."""
    configs = [f"{rung['flags']} {flags}" + (f" --lr_grid={g}" if (g := own_grid(ladder, rung, arm)) else "")
               for arm, flags in rung_arms(ladder, rung).items()]
    per_run = [f"--seconds_per_run={rung['seconds_per_run']}"] if rung.get("seconds_per_run") else []
    return [rung["name"], f"--out={os.path.join(ladder['dir'], rung['folder'])}", f"--lr_grid={ladder.get('lr_grid', '0.5,1,2')}",
            f"--tune_seeds={ladder.get('tune_seeds', 2)}", f"--seeds={ladder.get('confirm_seeds', 3)}",
            f"--max_extend={ladder.get('max_extend', 2)}",
            *per_run, *extra, "--", *configs]

def n_runs(ladder, rung):
    """Runs of one rung before any edge extension: every arm x its grid x the tune seeds, then x the confirm seeds."""
    tune, confirm = ladder.get("tune_seeds", 2), ladder.get("confirm_seeds", 3)
    return sum(len(sweep.parse_grid(arm_grid(ladder, rung, arm))) * tune + confirm for arm in rung_arms(ladder, rung))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", default=os.path.join(HERE, "ladder.json"))
    ap.add_argument("--only", help="run this rung alone (its name)")
    ap.add_argument("--budget_hours", type=float, help="stop between runs before one that would end past this")
    ap.add_argument("--plan", action="store_true", help="print every run and the estimated CPU time, run nothing")
    ap.add_argument("--script", help=argparse.SUPPRESS)  # tests: a stub train script
    ap.add_argument("--launcher", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if bad := sweep.positive_problem(args, (("budget_hours", "hours"),)):
            raise sweep.SweepError(bad)
        ladder = load_ladder(args.ladder)
        rungs = [r for r in ladder["rungs"] if args.only in (None, r["name"])]
        if not rungs:
            raise sweep.SweepError(f"--only={args.only}: no such rung (rungs: {', '.join(r['name'] for r in ladder['rungs'])})")
    except sweep.SweepError as e:
        print(f"ladder: error: {e}", file=sys.stderr)
        return 2
    hidden = [f"--{k}={v}" for k, v in (("script", args.script), ("launcher", args.launcher)) if v]
    if args.plan:  # each rung's sweep plan (its finished runs marked done, the known picks' confirm runs), and the time left
        total, runs, done = 0.0, 0, 0
        for r in rungs:
            print(f"## rung {r['name']} into {r['folder']}")
            counts = {}
            if (rc := sweep.main(sweep_argv(ladder, r, hidden + ["--dry_run"]), plan=counts)) != 0:
                return rc
            per_run = r.get("seconds_per_run", 0)
            runs, done, total = runs + counts["runs"], done + counts["done"], total + counts["left"] * per_run
            state = f", {counts['done']} done, {counts['left']} left" if counts["done"] else ""
            print(f"## rung {r['name']}: {counts['runs']} runs{state} x {per_run or '?'} s = "
                  f"{sweep.hms(counts['left'] * per_run)} of CPU")
        state = f", {done} done, {runs - done} left" if done else ""
        print(f"## ladder: {runs} runs{state}, {sweep.hms(total)} of CPU ({total / 3600:.2f} h; each edge extension "
              f"adds {ladder.get('tune_seeds', 2)} runs of its rung)")
        return 0
    t0, worst = time.time(), 0
    for r in rungs:
        left = None if args.budget_hours is None else args.budget_hours - (time.time() - t0) / 3600
        if left is not None and left <= 0:  # spent by the rungs before: the same command (a fresh budget) goes on here
            print(f"## ladder: the budget of {args.budget_hours:g} h is spent before rung {r['name']}; the same command "
                  f"resumes", file=sys.stderr)
            return sweep.BUDGET_EXIT
        budget = [] if left is None else [f"--budget_hours={left!r}"]
        print(f"## ladder: rung {r['name']} into {r['folder']}", flush=True)
        rc = sweep.main(sweep_argv(ladder, r, hidden + budget))
        if rc not in (0, 1):  # bad input, budget spent, interrupted: the next invocation resumes here
            print(f"## ladder: stopped at rung {r['name']} (exit {rc}); the same command resumes", file=sys.stderr)
            return rc
        worst = max(worst, rc)
    return worst

if __name__ == "__main__":
    sys.exit(main())
