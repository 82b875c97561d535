"""
Scaling report: does a claim's gap hold, grow or shrink from rung to rung of a model/compute ladder?

    python records/scaling.py records/ladder [--claims=NAME,...] [--plot=out.png|none] [--extrapolate=3e18]
                              [--markdown] [--tune_seeds=0,1]

A ladder is a folder with one sub-folder per rung, each a sweep folder of records/sweep.py (the logs and a
sweep.json with "tune_seeds"), and a ladder.json:

    {"rungs":  [{"name": "r1", "folder": "r1", "flags": "--preset=cpu --n_layer=2 --n_embd=64 --steps=100"},
                {"name": "r2", "folder": "r2", "flags": "--preset=cpu --n_layer=4 --n_embd=128 --steps=200"}],
     "arms":   {"gpt_adam": "--arch=gpt --optimizer=adam", "angpt": "--arch=angpt"},
     "claims": [{"name": "anGPT vs GPT (Adam)", "arm": "angpt", "baseline": "gpt_adam", "kind": "speed",
                 "source": "002: ~40% faster convergence"}]}

- rungs (list, in order of size): name (unique), folder (relative to the ladder folder; one per rung), flags
  (train_gpt.py flags shared by every run of the rung), arms (optional: the names of the arms the rung runs; default
  every arm; a claim whose arm a rung does not run has no gap there).
- arms ({name: train_gpt.py flags}): what tells the arms apart, without --lr_scale and --seed (the sweep varies
  those). A rung takes only its own runs: a run whose config is `train_gpt.parse_args(rung flags + arm flags)` for
  one of its arms on every config key (compare's grouping keys, lr_scale aside, bf16 aside unless the flags set it:
  the trainer picks it from the CPU). Any other run in the folder (another rung's logs copied in, a run made with
  other flags) is set aside, named in a warning with how it differs. The rung's runs are grouped into arms with
  compare.best_against_best (configs that differ only in lr_scale); a group is an arm when it agrees with the
  arm's parsed config on every key where the arms' parsed configs differ. A group that matches no arm, or two
  groups that match one arm (that arm then left out), are named in a warning.
- claims (a non-empty list): name, arm, baseline (two different arm names), kind "loss" (lower final val loss) or
  "speed" (fewer steps to the baseline's final val loss), source (where the claim comes from; printed as is).
- count_head (optional, true or false): see Compute below.
ladder.json is checked once, before any log is read: a wrong shape is one line naming the key and what it must be
(exit 2).

Per claim and rung, best against best (each arm at its lr_scale picked by compare.pick_lr on the tuning seeds,
compared on the confirm seeds): gain = baseline's mean final val loss - the arm's (positive: the arm is better),
its 95% CI and p-value from the paired test over the confirm seeds (Welch's when fewer than 2 seeds pair), each
arm's chosen lr, EDGE when a pick sits at the edge of its lr grid; for speed claims also the steps ratio: steps
the arm's mean val curve takes to reach the baseline's mean final val loss (linear between val points) over the
steps the baseline's curve takes ("not reached" when it never does; < 1: the arm is faster).

Compute C = 6 x N x tokens of the claim's baseline arm at the rung, tokens = steps x batch_size x seq_len, N = the
non-embedding parameters: all but the embedding tables (wte, value embeddings) and the lm_head (Kaplan et al.'s N).
ladder.json's "count_head": true adds the lm_head (a tied head counts once): at CPU sizes the 50k-vocabulary head
is most of a step's FLOPs, so it measures cost better, but it grows only linearly with the width. N comes from the
model built from the run's logged config (train_gpt.build_model's GPT on the meta device, without its init).

Trend (of the gain, for speed claims too): weighted least squares of the per-rung gain on log10(C), weights 1/se^2 (se from the rung's CI); the
slope's 95% CI uses those se (normal quantile) and, when the rungs scatter more than their se allow
(chi^2/dof > 1), se scaled by sqrt(chi^2/dof) with Student's t on n-2 dof. Verdict: the gain grows (CI above
0), shrinks (below 0) or is flat (CI holds 0). Needs 2 rungs (3 for the scatter check). --extrapolate=C prints
the fitted gain at compute C with its 95% prediction interval (the fit's uncertainty plus a new rung's spread),
labelled an extrapolation when C lies outside the ladder's range (from 2 rungs, labelled a lower bound too).
The plot: mean final val loss (confirm seeds, at each arm's pick) against C, log axes, one line per arm, 95% CI
bands over the confirm seeds.
"""
import argparse
import json
import math
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import CompareError  # noqa: E402

class LadderError(CompareError):
    """A ladder.json or ladder folder the user must fix: one line, exit 2."""

def _tg():
    tg = compare._train_gpt()
    if tg is None:
        raise LadderError("train_gpt.py is not importable: scaling.py needs it to match arms and count parameters")
    return tg

# -----------------------------------------------------------------------------
# ladder.json

def _show(v):
    return json.dumps(v)[:40]

def load_ladder(folder):
    """ladder.json, checked once: a wrong shape is one line naming the key and what it must be (LadderError)."""
    path = os.path.join(folder, "ladder.json")
    try:
        with open(path) as f:
            ladder = json.load(f)
    except (OSError, ValueError) as e:
        raise LadderError(f"{path}: cannot read it ({e}): a ladder folder holds a ladder.json "
                          f"(see records/scaling.py's docstring for its format)") from None

    def need(ok, what):
        if not ok:
            raise LadderError(f"{path}: {what} (see records/scaling.py's docstring for the format)")
    need(isinstance(ladder, dict) and all(k in ladder for k in ("rungs", "arms", "claims")),
         'needs "rungs", "arms" and "claims"')
    rungs, arms, claims = ladder["rungs"], ladder["arms"], ladder["claims"]
    need(isinstance(arms, dict) and arms, f'"arms" is {_show(arms)}: a non-empty object {{name: train_gpt.py flags}}')
    for name, flags in arms.items():
        need(isinstance(flags, str), f'"arms"[{json.dumps(name)}] is {_show(flags)}: a string of train_gpt.py flags')
    need(isinstance(rungs, list) and rungs, f'"rungs" is {_show(rungs)}: a non-empty list of rungs '
                                            f'{{"name", "folder", "flags"}}')
    for i, r in enumerate(rungs):
        need(isinstance(r, dict), f'"rungs"[{i}] is {_show(r)}: a rung is an object {{"name", "folder", "flags"}}')
        for k in ("name", "folder"):
            need(isinstance(r.get(k), str) and r[k], f'"rungs"[{i}]["{k}"] is {_show(r.get(k))}: a non-empty string')
        need(isinstance(r.get("flags", ""), str), f'"rungs"[{i}]["flags"] is {_show(r.get("flags"))}: a string of '
                                                  f'train_gpt.py flags')
        own = r.get("arms", list(arms))
        need(isinstance(own, list) and all(isinstance(a, str) and a in arms for a in own),
             f'"rungs"[{i}]["arms"] is {_show(own)}: a list of arm names (of "arms": {list(arms)})')
    names = [r["name"] for r in rungs]
    twice = [n for n in names if names.count(n) > 1]
    need(not twice, f"two rungs are named {(twice or [''])[0]!r}: every rung needs a unique name")
    seen = {}
    for r in rungs:  # one sweep folder per rung: two rungs in one would share its runs and its sweep.json
        where = os.path.normpath(os.path.join(folder, r["folder"]))
        need(where not in seen, f"rungs {seen.get(where)} and {r['name']} share the folder {r['folder']!r}: give each "
                                f"rung its own")
        seen[where] = r["name"]
    need(isinstance(claims, list) and claims, f'"claims" is {_show(claims)}: a non-empty list of claims '
                                              f'{{"name", "arm", "baseline", "kind", "source"}}')
    for i, c in enumerate(claims):
        need(isinstance(c, dict) and isinstance(c.get("name"), str),
             f'"claims"[{i}] is {_show(c)}: a claim is an object with a "name" string')
        for k in ("arm", "baseline"):
            need(isinstance(c.get(k), str) and c[k] in arms,
                 f"claim {c['name']!r}: {k} {c.get(k)!r} is not one of the arms {list(arms)}")
        need(c["arm"] != c["baseline"], f"claim {c['name']!r}: its arm and baseline are both {c['arm']!r}: a claim "
                                        f"compares two arms")
        need(c.get("kind", "loss") in ("loss", "speed"), f"claim {c['name']!r}: kind must be 'loss' or 'speed'")
    need(isinstance(ladder.get("count_head", False), bool), f'"count_head" is {_show(ladder.get("count_head"))}: '
                                                            f'true or false')
    return ladder

def rung_configs(ladder, rung):
    """{arm: the config every run of the arm at this rung has}: train_gpt.parse_args(rung flags + arm flags) as compare
    groups it (compare._config_key), without lr_scale (the sweep varies it) and, unless the flags set it, bf16 (the
    trainer decides it from the CPU it runs on)."""
    tg, parsed = _tg(), {}
    for arm, flags in ladder["arms"].items():
        argv = shlex.split(rung.get("flags", "")) + shlex.split(flags)
        try:
            cfg = asdict(tg.parse_args(argv, cuda_available=False))
        except (ValueError, SystemExit) as e:
            raise LadderError(f"ladder.json: rung {rung['name']!r}, arm {arm!r}: its flags do not parse ({e})") from None
        machine = set() if any(re.fullmatch(r"--(no[-_])?bf16(=.*)?", a) for a in argv) else {"bf16"}
        parsed[arm] = {k: v for k, v in _plain(compare._config_key(cfg)).items() if k != "lr_scale" and k not in machine}
    return parsed

def _plain(cfg):
    return json.loads(json.dumps(cfg, default=str))  # as a log holds it: tuples are lists

def arm_configs(ladder, rung, parsed=None):
    """{arm: {key: value}}: the config keys where the arms' parsed flags (rung flags + arm flags) differ."""
    parsed = parsed or rung_configs(ladder, rung)
    keys = {k for c in parsed.values() for k in c}
    differ = sorted(k for k in keys if len({compare._js(c.get(k)) for c in parsed.values()}) > 1)
    if len(parsed) > 1 and not differ:
        raise LadderError("ladder.json: the arms' flags do not tell them apart")
    return {arm: {k: c.get(k) for k in differ} for arm, c in parsed.items() if arm in rung.get("arms", parsed)}

def own_runs(runs, wanted, rung_name, path):
    """The rung's runs: those whose config is the rung's flags plus one of its arms' (wanted: {arm: config}, the
    rung's arms of rung_configs), on every key those flags give. The rest (another rung's logs copied in, a run made
    with other flags) are set aside, named in one warning: how they differ from the arm they are closest to."""
    kept, aside = [], {}
    for r in runs:
        key = _plain(compare._config_key(r.config)) if r.config else {}
        off = {a: [k for k, v in want.items() if compare._js(key.get(k)) != compare._js(v)] for a, want in wanted.items()}
        if r.config and any(not o for o in off.values()):
            kept.append(r)
            continue
        arm, keys = min(off.items(), key=lambda kv: len(kv[1])) if off else (None, [])
        why = "no config line" if not r.config else ", ".join(
            f"{k}={compare._fmt_value(key.get(k))} not {compare._fmt_value(wanted[arm][k])}" for k in keys[:4]) + (
            ", ..." if len(keys) > 4 else "") + f" (closest arm {arm!r})"
        aside.setdefault(why, []).append(os.path.basename(r.path))
    if aside:
        n = sum(map(len, aside.values()))
        compare.warn(f"rung {rung_name}: {n} run{'s' if n > 1 else ''} in {path} {'are' if n > 1 else 'is'} not this "
                     f"rung's (a config other than the rung's flags plus an arm's): set aside: " + "; ".join(
                         f"{len(files)} with {why} (e.g. {files[0]})" for why, files in aside.items()))
    return kept

def match_arms(groups, arms, rung_name):
    """{arm: its group}. A group that matches no arm or several is left out; two groups that match one arm leave
    the arm out (neither is more its run than the other), each named in a warning."""
    out, twice = {}, set()
    for g in groups:
        hits = [a for a, want in arms.items() if all(compare._js(g.config.get(k)) == compare._js(v) for k, v in want.items())]
        if len(hits) != 1:
            compare.warn(f"rung {rung_name}: group {g.name!r} matches {'no arm' if not hits else hits}: left out")
        elif hits[0] in out:
            first = out[hits[0]]
            differ = sorted(k for k in set(first.config) | set(g.config)
                            if compare._js(first.config.get(k)) != compare._js(g.config.get(k)))
            compare.warn(f"rung {rung_name}: groups {first.name!r} and {g.name!r} both match arm {hits[0]!r} (they "
                         f"differ in {', '.join(differ)}): the arm is left out at this rung")
            twice.add(hits[0])
        else:
            out[hits[0]] = g
    return {a: g for a, g in out.items() if a not in twice}

# -----------------------------------------------------------------------------
# compute

def non_embedding_params(cfg, count_head=False):
    """N of C = 6 N D: every parameter but the embedding tables (wte, value embeddings) and, unless count_head, the
    lm_head (a tied head is the embedding table). Counted on the model built from cfg on the meta device, without
    its init (nothing is allocated)."""
    tg, torch = _tg(), __import__("torch")
    fields = {f.name for f in __import__("dataclasses").fields(tg.Hyperparameters)}
    h = tg.Hyperparameters(**{k: v for k, v in cfg.items() if k in fields})

    class Shapes(tg.GPT):  # the shapes alone: the init would read values (e.g. nGPT's alpha multipliers)
        def reset_parameters(self, config):
            pass
    try:
        with torch.device("meta"):
            model = Shapes(h)
    except RuntimeError:  # a constructor that reads a tensor's value: build it on the CPU
        model = Shapes(h)
    params = dict(model.named_parameters())  # de-duplicates a tied head
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = id(model.lm_head.weight)
    return sum(p.numel() for p in params.values() if (id(p) not in tables and id(p) != head) or (count_head and id(p) == head))

def training_compute(cfg, count_head=False):
    """(C, N, tokens) of one run's config."""
    n = non_embedding_params(cfg, count_head)
    tokens = cfg["steps"] * cfg["batch_size"] * cfg["seq_len"]
    return 6 * n * tokens, n, tokens

# -----------------------------------------------------------------------------
# per rung

def steps_to(curve, target):
    """First step where a val curve {step: loss} reaches target, linear between val points; None if never."""
    pts = sorted(curve.items())
    if pts and pts[0][1] <= target:
        return float(pts[0][0])
    for (s0, l0), (s1, l1) in zip(pts, pts[1:]):
        if l1 <= target:
            return s0 + (s1 - s0) * (l0 - target) / (l0 - l1)
    return None

def mean_curve(runs):
    steps = sorted(set.intersection(*(set(r.val) for r in runs))) if runs else []
    return {s: float(np.mean([r.val[s]["val_loss"] for r in runs])) for s in steps}

@dataclass
class RungResult:
    rung: str
    compute: float
    n_params: int
    tokens: int
    arm: compare.Group
    base: compare.Group
    row: dict                  # compare.compare's row of the arm against the baseline
    gain: float                # baseline - arm (positive: the arm is better)
    gain_low: float
    gain_high: float
    se: float
    p: float
    paired: bool
    steps_ratio: float | None = None
    reached: bool = True

def gap_at_rung(arm, base, rung, count_head=False):
    row = compare.compare([base, arm], baseline=base)[1]
    paired = row["n_pairs"] >= 2
    lo, hi, p = (row["pair_low"], row["pair_high"], row["p_paired"]) if paired else (row["ci_low"], row["ci_high"], row["p"])
    ok = lambda g: [r for r in g.runs if not r.incomplete and r.finite]
    if paired:
        df = row["n_pairs"] - 1
    else:
        a, b = (np.array([r.final_val_loss for r in ok(g)]) for g in (arm, base))
        va, vb = (compare._std(x) ** 2 / len(x) if len(x) > 1 else math.nan for x in (a, b))
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.inf
    half = (hi - lo) / 2
    se = half / stats.t.ppf(0.975, df) if math.isfinite(half) and df > 0 else math.nan
    c, n, t = training_compute(base.runs[0].config, count_head)
    res = RungResult(rung, c, n, t, arm, base, row, -row["delta"], -hi, -lo, se, p, paired)
    target = row_mean(base)
    if target is not None:
        b_steps, a_steps = steps_to(mean_curve(ok(base)), target), steps_to(mean_curve(ok(arm)), target)
        res.reached = a_steps is not None
        res.steps_ratio = a_steps / b_steps if a_steps is not None and b_steps else None
    return res

def row_mean(g):
    xs = [r.final_val_loss for r in g.runs if not r.incomplete and r.finite]
    return float(np.mean(xs)) if xs else None

# -----------------------------------------------------------------------------
# trend

@dataclass
class Trend:
    slope: float
    low: float
    high: float
    intercept: float
    cov: np.ndarray = field(repr=False)
    quantile: float
    spread: float              # a new rung's variance around the line (for the prediction interval)
    x_range: tuple

    @property
    def verdict(self):
        return "grows" if self.low > 0 else "shrinks" if self.high < 0 else "flat"

    def predict(self, log10_c):
        """(gain, 95% prediction interval low, high) at log10(C)."""
        x = np.array([1.0, log10_c])
        y = float(self.intercept + self.slope * log10_c)
        h = self.quantile * math.sqrt(float(x @ self.cov @ x) + self.spread)
        return y, y - h, y + h

def fit_trend(x, y, se):
    """Weighted least squares of y on x (weights 1/se^2); the scatter check and quantile as the docstring says.
    Rungs without a finite se (one confirm seed): plain OLS with Student's t. None with fewer than 2 rungs."""
    x, y, se = (np.asarray(v, float) for v in (x, y, se))
    n = len(x)
    if n < 2 or len(set(x)) < 2:
        return None
    X = np.column_stack([np.ones(n), x])
    known = bool(np.all(np.isfinite(se) & (se > 0)))
    w = 1 / se ** 2 if known else np.ones(n)
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ X.T @ (w * y)
    resid = y - X @ beta
    dof = n - 2
    chi2 = float(np.sum(w * resid ** 2)) / dof if dof > 0 else 0.0
    if known and chi2 <= 1:
        q, scale = stats.norm.ppf(0.975), 1.0
    elif dof > 0:
        q, scale = stats.t.ppf(0.975, dof), max(chi2, 1.0) if known else chi2
    else:  # two rungs without se: a line through two points says nothing about its error
        return Trend(float(beta[1]), -math.inf, math.inf, float(beta[0]), cov * math.inf, math.inf, math.inf,
                     (float(x.min()), float(x.max())))
    cov = cov * scale
    spread = scale * (float(np.mean(se ** 2)) if known else 1.0)
    h = q * math.sqrt(cov[1, 1])
    return Trend(float(beta[1]), float(beta[1] - h), float(beta[1] + h), float(beta[0]), cov, q, spread,
                 (float(x.min()), float(x.max())))

# -----------------------------------------------------------------------------
# report

def ladder_results(folder, ladder, tune_seeds=None, claims=None):
    """{claim name: (claim, [RungResult per rung that has both arms])}, and {rung: {arm: Group}} for the plot."""
    chosen = [c for c in ladder["claims"] if not claims or c["name"] in claims]
    if claims and len(chosen) < len(claims):
        raise LadderError(f"--claims: {sorted(set(claims) - {c['name'] for c in chosen})} not in ladder.json's "
                          f"claims {[c['name'] for c in ladder['claims']]}")
    out, arms_by_rung = {c["name"]: (c, []) for c in chosen}, {}
    for rung in ladder["rungs"]:
        path = os.path.join(folder, rung["folder"])
        if not os.path.isdir(path):
            compare.warn(f"rung {rung['name']}: no folder {path}: left out")
            continue
        seeds = tune_seeds or compare.tune_seeds_of([path])
        if seeds is None:
            raise LadderError(f"rung {rung['name']}: {path}/sweep.json has no tune_seeds: pass --tune_seeds=0,1")
        parsed = rung_configs(ladder, rung)
        wanted = {a: c for a, c in parsed.items() if a in rung.get("arms", parsed)}
        groups = compare.best_against_best(own_runs(compare.load_runs([path]), wanted, rung["name"], path), seeds)
        arms = arms_by_rung[rung["name"]] = match_arms(groups, arm_configs(ladder, rung, parsed), rung["name"])
        for c, results in out.values():
            if c["arm"] in arms and c["baseline"] in arms and not (arms[c["arm"]].runs and arms[c["baseline"]].runs):
                compare.warn(f"rung {rung['name']}: claim {c['name']!r} has no gap here yet: "
                             f"{c['arm'] if not arms[c['arm']].runs else c['baseline']!r} has no confirm run at its pick "
                             f"(a sweep still in its tune phase)")
            elif c["arm"] in arms and c["baseline"] in arms:
                results.append(gap_at_rung(arms[c["arm"]], arms[c["baseline"]], rung["name"], ladder.get("count_head", False)))
            elif not all(a in rung.get("arms", ladder["arms"]) for a in (c["arm"], c["baseline"])):
                compare.warn(f"rung {rung['name']}: claim {c['name']!r} has no gap here: the rung does not run "
                             f"{c['arm'] if c['arm'] not in rung['arms'] else c['baseline']!r} (its \"arms\")")
            else:
                compare.warn(f"rung {rung['name']}: claim {c['name']!r} lacks arm "
                             f"{c['arm'] if c['arm'] not in arms else c['baseline']!r}: no gap at this rung")
    return out, arms_by_rung

def _lr(g):
    pk = g.pick
    edge = " EDGE" if pk["edge"] else ""
    return f"{compare._f(pk['lr'], '.3g')} (×{pk['lr_scale']:g}){edge}"

def format_claim(claim, results, extrapolate=None, markdown=False):
    speed = claim.get("kind", "loss") == "speed"
    head = ["rung", "C (FLOPs)", "N", "tokens", f"{claim['arm']} lr", f"{claim['baseline']} lr", "n",
            "gain", "95% CI", "p"] + (["steps ratio"] if speed else [])
    body = []
    for r in results:
        cells = [r.rung, f"{r.compute:.3g}", f"{r.n_params:,}", f"{r.tokens:,}", _lr(r.arm), _lr(r.base),
                 str(r.row["n_pairs"] if r.paired else r.row["n"]), compare._f(r.gain, "+.4f"),
                 "n/a" if math.isnan(r.gain_low) else f"[{r.gain_low:+.4f}, {r.gain_high:+.4f}]",
                 compare._p(r.p) + ("" if r.paired else " (Welch)")]
        if speed:
            cells.append("not reached" if not r.reached else compare._f(r.steps_ratio, ".3f"))
        body.append(cells)
    title = f"{claim['name']} ({claim.get('kind', 'loss')}; source: {claim.get('source', '-')})"
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    else:
        w = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
        fmt = lambda c: "  ".join(x.ljust(w[i]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(c))
        lines = [title, fmt(head), "  ".join("-" * x for x in w)] + [fmt(c) for c in body]
    lines.append("")
    trend = fit_trend([math.log10(r.compute) for r in results], [r.gain for r in results], [r.se for r in results])
    two_rungs = len(results) == 2  # a line through two points: its CIs come from the rungs' alone, no scatter check
    if trend is None:
        lines.append("trend: n/a (needs 2 rungs of different compute)")
    else:
        lines.append(f"trend: gain = {trend.intercept:+.4f} {trend.slope:+.4f} x log10(C); slope 95% CI "
                     f"[{trend.low:+.4f}, {trend.high:+.4f}] per decade of compute: the gain "
                     f"{'is flat' if trend.verdict == 'flat' else trend.verdict} ({len(results)} rungs"
                     f"{'; from their CIs alone: the scatter check needs 3' if two_rungs else ''})")
        if extrapolate:
            y, lo, hi = trend.predict(math.log10(extrapolate))
            outside = not trend.x_range[0] <= math.log10(extrapolate) <= trend.x_range[1]
            label = ("EXTRAPOLATION beyond the measured compute "
                     f"[{10 ** trend.x_range[0]:.3g}, {10 ** trend.x_range[1]:.3g}] FLOPs" if outside else "interpolation")
            caveat = "; 2 rungs: no scatter check, the interval is a lower bound" if two_rungs else ""
            lines.append(f"{label}: at C = {extrapolate:.3g} FLOPs the fitted gain is {y:+.4f}, 95% prediction "
                         f"interval [{lo:+.4f}, {hi:+.4f}] (assumes the trend holds in log10(C){caveat})")
    edges = [f"{r.rung}/{name}" for r in results for name, g in ((claim["arm"], r.arm), (claim["baseline"], r.base))
             if g.pick["edge"]]
    if edges:
        lines.append(f"EDGE: best lr at the edge of its grid at {', '.join(edges)}: extend the grid there")
    return "\n".join(lines) + "\n"

def plot(arms_by_rung, ladder, path):
    """Mean final val loss against compute (log axes), one line per arm, a 95% CI band over the confirm seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter
    fig, ax = plt.subplots(figsize=(7, 5))
    # one x per rung (its smallest arm's C): the arms of a rung share its shape, and nGPT's few extra scalars would
    # otherwise scatter one rung's points along the axis
    rung_c = {rung: min(training_compute(g.runs[0].config, ladder.get("count_head", False))[0] for g in arms.values() if g.runs)
              for rung, arms in arms_by_rung.items() if any(g.runs for g in arms.values())}
    for arm in ladder["arms"]:
        pts = []
        for rung, arms in arms_by_rung.items():
            g = arms.get(arm)
            xs = [r.final_val_loss for r in g.runs if not r.incomplete and r.finite] if g else []
            if xs:
                half = stats.t.ppf(0.975, len(xs) - 1) * compare._std(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0
                pts.append((rung_c[rung], float(np.mean(xs)), half))
        if pts:
            c, m, h = map(np.array, zip(*sorted(pts)))
            line, = ax.plot(c, m, marker="o", label=arm)
            ax.fill_between(c, m - h, m + h, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set(xscale="log", yscale="log", xlabel="training compute C = 6·N·tokens (FLOPs)",
           ylabel="final val loss (mean, 95% CI band)", title="best against best, confirm seeds")
    # losses span less than a decade, where a log axis has at most one labelled tick: up to 9 round ones instead
    low, high = ax.get_ylim()
    step = next((s for s in (0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0) if (high - low) / s <= 9), 2.0)
    ax.set_yticks(np.arange(math.ceil(low / step) * step, high, step))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ladder", help="ladder folder: ladder.json and one sweep folder per rung")
    ap.add_argument("--claims", help="comma-separated claim names (default: all of ladder.json's)")
    ap.add_argument("--plot", help="PNG path (default <ladder>/scaling.png); 'none' skips")
    ap.add_argument("--extrapolate", type=float, help="compute (FLOPs) to extrapolate the gain to, e.g. 3e18")
    ap.add_argument("--markdown", action="store_true", help="Markdown tables (for a README)")
    ap.add_argument("--tune_seeds", help="tuning seeds, e.g. 0,1 (default: each rung's sweep.json)")
    args = ap.parse_args(argv)
    try:
        if args.extrapolate is not None and not (math.isfinite(args.extrapolate) and args.extrapolate > 0):
            raise LadderError(f"--extrapolate={args.extrapolate}: give a positive compute in FLOPs, e.g. 3e18")
        try:
            seeds = [int(s) for s in args.tune_seeds.split(",") if s.strip()] if args.tune_seeds else None
        except ValueError:
            raise LadderError(f"--tune_seeds={args.tune_seeds}: give integer seeds, e.g. --tune_seeds=0,1") from None
        ladder = load_ladder(args.ladder)
        claims = [c.strip() for c in args.claims.split(",") if c.strip()] if args.claims else None
        results, arms_by_rung = ladder_results(args.ladder, ladder, seeds, claims)
    except CompareError as e:
        print(f"scaling: error: {e}", file=sys.stderr)
        return 2
    for claim, rs in results.values():
        print(format_claim(claim, rs, args.extrapolate, args.markdown), flush=True)
    if (args.plot or "").lower() != "none":
        path = compare.plot_path(args.plot or os.path.join(args.ladder, "scaling.png"), "scaling.png")
        try:
            print(f"plot: {plot(arms_by_rung, ladder, path)}")
        except OSError as e:
            print(f"scaling: error: cannot write the plot to {path} ({e.strerror or e}): pass --plot=<writable "
                  f"path> or --plot=none", file=sys.stderr)
            return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
