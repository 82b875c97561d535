"""
Compare training logs: group runs by config, test final val losses, plot the curves.

    python records/compare.py logs/ records/ngpt_sweep/*.txt --target=3.28 --markdown
    python records/compare.py records/ngpt_sweep --baseline=norm=dyt --plot=curves.png --group_by=arch,norm

PATHS are files, folders (every *.txt inside, recursively; a symlinked folder is followed unless that would
walk a folder twice or loop) or globs; a file reached twice (two spellings of a folder, a symlink) counts once,
and two files of one run (the same run_id in their config: a copied log) count once, with a warning naming
both. Per group the table shows n,
mean ± std (ddof=1) of the final val loss, Δ vs the baseline group with a Welch 95% CI and Welch's
t-test p-value, the paired test over the seeds both groups ran (same seed = same init; every run reads
the same token stream: scipy.stats.ttest_rel, 95% CI of the mean per-seed difference), with --target the
one-sided one-sample test (modded-nanogpt's record rule: mean < target and p < alpha), mean steps /
training time to first reach the target, and the mean step time (train_time/step of the line its time is read from)
with its ratio to the baseline's and Welch's p-value of the step-time difference, and the training time (s; mean ±
std over complete runs, with as many decimals as the std needs, up to ms) with Welch's p against the baseline. A
run's time is the train_time of its final val line, the record's own (modded-nanogpt's logs time the last step
again there, after its train line), else of its last step line; its step time is that over its step.

Logs: the source of train_gpt.py (between the first two lines of 100 '=' when the log starts with one, as
modded-nanogpt's logs of Oct-Nov 2024 do), a line of 100 '=', versions, `config: {json}`, then step lines
`step:N/T key:value ...` (val lines carry val_loss). A repeated step (resumed run) keeps the later line.
Runs are grouped by their config minus the keys that differ between seeds of one config (IGNORE_KEYS);
a group is named by how its config differs from the reference group (the default baseline), which is
named `baseline`. Logs without a config line (modded-nanogpt's records: one folder per record, runs named
by uuid) are grouped by their folder, one group per folder named after it, whatever their file names.
--group_by=KEY,... groups by those config keys instead (a key no run has is an error, exit 2), and two
keys that need no config line work for every log: `folder` (the log's folder, by its full path, named by the
shortest suffix that tells it from the others: a/runs, b/runs) and `stem` (the file name minus a trailing
uuid / run id / seed, or the folder's name when nothing is left); with config keys, logs without a config line
stay grouped by folder.
Runs without step lines or without a val line are skipped with a warning. A log is complete when it reached
its last step (a val line at step N of N), whatever trailer follows or is missing (modded-nanogpt's logs before
2025 have none, later ones `peak memory ...`); a log cut before it is flagged incomplete and left out of the
final-loss and training-time statistics unless --include_incomplete (its curve still counts for time-to-target
and step time). An unterminated last line is dropped (it may be cut mid-way). A diverged run (a nan or inf
loss in a step line: its final val loss, or the loss train_gpt.py stopped it on, which ends its log before its last
step) is named in a warning and left out of the loss and time statistics and the plot, with or without
--include_incomplete; the n column counts it as `+k diverged`, so the rest of its group still gets numbers. In an lr
pick it is the worst (inf); an arm whose every tuning lr diverged has no pick and is left out, by name.
Zero variance (identical final losses): Δ=0 gives p=1 and CI [0, 0]; Δ≠0 gives p=0 and CI [Δ, Δ];
with n < 2 on either side std/CI/p print as n/a.
--x=time plots val loss against training time (s) instead of step.
--best_lr [--tune_seeds=0,1]: best against best (best_against_best): arms are groups of runs whose configs differ
only in lr_scale; each arm takes the lr_scale pick_lr finds best on the tuning seeds' final losses, and its row
is its runs at that lr_scale on the other (confirm) seeds; extra columns lr (effective: Adam arms (lr or the
arch's adam_lr) × lr_scale, Muon arms muon_lr × lr_scale), lr_scale and edge (EDGE: the pick sits at an end
of the grid, with a warning to extend it; n/a: an arm run at one lr_scale, which is its own pick and is also
shown on its confirm seeds). Tuning seeds: --tune_seeds, else sweep.json's in the folders given (its tune_seeds
and every seed its tune-phase runs used; these are added to --tune_seeds too, with a warning: a seed an lr was
picked on is never counted as a confirm seed), else an error (exit 2) saying how to give them.
--plot=PATH: a file (without an extension matplotlib writes, .png is added), a folder (compare.png inside it), or
none; the `plot:` line names the file written. --target must be finite and --alpha between 0 and 1 (exit 2).
The table is printed before the plot is drawn: a plot path that cannot be written (a read-only folder)
is an error (exit 2) after the table, never a loss of it. Bad input the user can fix is one line naming the
file or flag (a warning and the run left out, or exit 2), never a traceback.
"""
import argparse
import difflib
import glob
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

SEP = "=" * 100
STEP_RE = re.compile(r"^step:(\d+)/(\d+)(.*)$")
FIELD_RE = re.compile(r"(\S+?):(\S+)")
NUM_RE = re.compile(r"^[-+]?(?:nan|inf|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", re.I)
CONFIG_RE = re.compile(r"^config:\s*(\{.*\})\s*$")
# keys that differ between runs of one config and change neither the training nor its speed
# (steps, kernels, compile, world_size do: they stay in the grouping)
IGNORE_KEYS = {"seed", "run_name", "run_id", "log_dir", "resume", "save_every", "keep_checkpoints", "val_every",
               "log_every", "sample_tokens", "temperature", "top_p", "prompt", "checkpoint_dir"}
PATHLIKE_RE = re.compile(r"(_dir|_path)$")
# a trailing uuid, hex/date id (8+ chars with a digit) or seed tag: "ngpt_3f2a9c1e-..." -> "ngpt"
RUN_ID_RE = re.compile(r"(?:(?:^|[-_.])(?:[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|(?=[0-9a-f]*\d)[0-9a-f]{8,}"
                       r"|s\d+|seed\d+))+$", re.I)

def warn(msg):
    print(f"compare: warning: {msg}", file=sys.stderr)

# -----------------------------------------------------------------------------
# parsing

@dataclass
class Run:
    path: str
    config: dict | None
    val: dict = field(default_factory=dict)    # step -> fields of its val line (val_loss, train_time, ...)
    train: dict = field(default_factory=dict)  # step -> fields of its train line
    total_steps: int | None = None
    incomplete: bool = False

    @property
    def name(self):
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def final_val_loss(self):
        return self.val[max(self.val)]["val_loss"]

    @property
    def divergence(self):
        """(key, value, step) of the first non-finite loss in its step lines, or None. train_gpt.py stops a run at a
        non-finite train or val loss (its last line is then that step's), so such a run is diverged, not cut short."""
        bad = [(s, k, f[k]) for lines in (self.val, self.train) for s, f in lines.items()
               for k in ("val_loss", "train_loss") if isinstance(f.get(k), float) and not math.isfinite(f[k])]
        return (lambda s, k, v: (k, v, s))(*min(bad, key=lambda b: b[:2])) if bad else None

    @property
    def diverged(self):
        return self.divergence is not None

    @property
    def finite(self):
        """A usable final loss: the run did not diverge (a diverged run is counted as such, never averaged)."""
        return not self.diverged and math.isfinite(self.final_val_loss)

    def _last_timed(self):
        """(step, train_time ms) the run's time is read from: its final val line (the val line at its last step) when
        that has a train_time, as a record states its time (modded-nanogpt's logs time the last step again there,
        after its train line); else the last step line with a finite train_time; None if none."""
        final = self.val.get(self.total_steps, {}).get("train_time")
        if self.total_steps and isinstance(final, float) and math.isfinite(final):
            return self.total_steps, final
        lines = {**self.val, **self.train}  # the train line wins at a shared step
        steps = [s for s in lines if s > 0 and isinstance(t := lines[s].get("train_time"), float) and math.isfinite(t)]
        return (max(steps), lines[max(steps)]["train_time"]) if steps else None

    @property
    def step_ms(self):
        """train_time/step of the line the run's time is read from (ms), None if unknown."""
        last = self._last_timed()
        return last[1] / last[0] if last else None

    @property
    def time_s(self):
        """The run's training time (s): the train_time of its final val line, else of its last step line; None if
        unknown."""
        last = self._last_timed()
        return last[1] / 1000 if last else None

    def reach(self, target):
        """(step, train_time ms) of the first val line with val_loss <= target, or None."""
        for s in sorted(self.val):
            if self.val[s]["val_loss"] <= target:
                return s, self.val[s].get("train_time")
        return None

def _value(v):
    m = NUM_RE.match(v)  # "812ms" -> 812.0, "0.05" -> 0.05; non-numbers stay strings
    return float(m.group(0)) if m else v

def _train_gpt():
    """train_gpt.py (the repo's), or None when it cannot be imported: the tool still reads logs without torch."""
    if not hasattr(_train_gpt, "module"):
        try:
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            import train_gpt
            _train_gpt.module = train_gpt
        except Exception as e:  # noqa: BLE001
            warn(f"train_gpt.py not importable ({type(e).__name__}): configs are compared as logged")
            _train_gpt.module = None
    return _train_gpt.module

def flag_defaults():
    """train_gpt.py's current flag defaults: a key an older log lacks takes its default (a new flag's default is
    the old behaviour), so logs from before a flag existed group with newer ones of the same training."""
    import dataclasses
    tg = _train_gpt()
    return dataclasses.asdict(tg.Hyperparameters()) if tg else {}

def foreign_keys(cfg):
    """Keys of this config that do not apply to its run (a flag of another architecture, a DyT flag without
    --norm=dyt; train_gpt.flag_applies, the rule validate() uses): they keep their defaults, which may differ
    between versions of train_gpt, and say nothing."""
    tg = _train_gpt()
    if tg is None or "arch" not in cfg:
        return set()
    return {name for name in tg.Hyperparameters.__dataclass_fields__ if not tg.flag_applies(name, cfg)}

def parse_log(path):
    """Parse one log. Returns a Run, or None (with a warning) when it cannot be read or has no step or no val line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:  # permissions, a vanished file
        warn(f"skipping {path}: cannot read it ({e.strerror or e})")
        return None
    lines = text.split("\n")
    seps = [i for i, l in enumerate(lines) if l.rstrip("\r") == SEP]
    # the source code header ends at the first separator, or at the second when the log starts with one
    # (modded-nanogpt's logs of Oct-Nov 2024: separator, code, separator, versions, separator, step lines)
    head = seps[1] if len(seps) > 1 and seps[0] == 0 else seps[0] if seps else -1
    skip = set(range(head + 1))
    for j in [i for i in seps if i > head]:  # a resumed run that re-dumps source + separator + config into the same log
        if any(CONFIG_RE.match(l) for l in lines[j + 1:j + 50]):
            prev = max(i for i in seps if i < j)
            k = next((k for k in range(prev + 1, j) if lines[k:k + 2] == lines[:2]), j)
            skip.update(range(k, j))
    body = [l.rstrip("\r") for i, l in enumerate(lines) if i not in skip]
    if not text.endswith("\n"):
        body = body[:-1]  # a truncated log: its last line may be cut mid-way
    run = Run(path=str(path), config=None)
    for line in body:
        if m := CONFIG_RE.match(line):
            try:
                run.config = {**flag_defaults(), **json.loads(m.group(1))}  # a resumed run logs it again: the later one wins
            except json.JSONDecodeError:
                warn(f"{path}: unreadable config line")
                continue
            if not isinstance(run.config.get("seed", 0), int) or isinstance(run.config.get("seed"), bool):
                warn(f"{path}: config seed {run.config.pop('seed')!r} is not an integer: this run pairs with none")
        elif m := STEP_RE.match(line):
            fields = {k: _value(v) for k, v in FIELD_RE.findall(m.group(3))}
            step, run.total_steps = int(m.group(1)), int(m.group(2))
            if isinstance(fields.get("val_loss"), float):
                run.val[step] = fields
            else:
                run.train[step] = fields
    if not run.val and not run.train:
        warn(f"skipping {path}: no step lines (not a training log)")
        return None
    if not run.val:
        warn(f"skipping {path}: no val_loss line")
        return None
    # complete = it reached its last step (a val line at step N of N), whatever trailer follows or is missing:
    # modded-nanogpt's logs before 2025 end at that line, later ones add 'peak memory ...', ours a sample too
    run.incomplete = run.total_steps not in run.val
    if not math.isfinite(run.final_val_loss):  # a diverged run: one nan would turn its group's mean/std/p into n/a
        warn(f"{path}: final val_loss is {run.final_val_loss}; left out of the statistics")
    elif run.diverged:  # the trainer stopped it at a non-finite loss: not a cut run (never averaged at its last val)
        key, value, step = run.divergence
        warn(f"{path}: diverged ({key} {value} at step {step} of {run.total_steps}: train_gpt.py stops a run there); "
             f"counted as diverged, left out of the statistics")
    elif run.incomplete:
        warn(f"{path}: incomplete log (no val line at its last step {run.total_steps}), last val step {max(run.val)}")
    return run

def _walk_logs(folder):
    """*.txt under folder, recursively (not our compare.txt). A symlinked folder is followed unless its target was
    walked already or contains it (a loop); real folders go first, so a file keeps its real path."""
    walked, out = set(), []
    onerror = lambda e: warn(f"cannot read folder {e.filename} ({e.strerror}): its logs are left out")
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=onerror):
        real = os.path.realpath(root)
        walked.add(real)
        inside = lambda t: t == real or real.startswith(t.rstrip(os.sep) + os.sep)  # t is real or an ancestor of it
        dirs[:] = [d for d in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(root, d)), d))
                   if (t := os.path.realpath(os.path.join(root, d))) not in walked and not inside(t)]
        out += [os.path.join(root, f) for f in sorted(files) if f.endswith(".txt") and f != "compare.txt"]
    return out

def expand_paths(paths):
    """Files, folders (all *.txt inside, recursively) and globs -> sorted list of distinct files: a file reached
    twice (a folder given twice or by two spellings, a symlink to it) is counted once, by its identity."""
    found = []
    for p in map(str, paths):
        if os.path.isdir(p):
            found += _walk_logs(p)
        elif os.path.isfile(p):
            found.append(p)
        else:
            hits = glob.glob(p, recursive=True)
            if not hits:
                warn(f"no such file: {p}")
            found += [h for h in hits if os.path.isfile(h)]
    out = {}
    for f in found:
        try:
            st = os.stat(f)
        except OSError as e:  # a dangling symlink
            warn(f"skipping {f}: {e.strerror}")
            continue
        out.setdefault((st.st_dev, st.st_ino), os.path.normpath(f))
    return sorted(out.values())

def load_runs(paths):
    """Parsed runs of the logs under paths. Two files of one run (the same run_id in their config: a copied log)
    count once, the one that got further (a warning names both)."""
    runs, by_id = [], {}
    for r in map(parse_log, expand_paths(paths)):
        rid = r and r.config and r.config.get("run_id")
        if rid and (first := by_id.get(rid)):
            keep, drop = (r, first) if max(r.val) > max(first.val) else (first, r)
            warn(f"{drop.path} and {keep.path} are one run (run_id {rid}): counted once, as {keep.path}")
            runs[runs.index(first)] = by_id[rid] = keep
        elif r is not None:
            runs.append(r)
            if rid:
                by_id[rid] = r
    return runs

# -----------------------------------------------------------------------------
# grouping

# --group_by keys that need no config line (a config key of the same name would be shadowed: none exists)
PSEUDO_KEYS = ("folder", "stem")

class CompareError(ValueError):
    """Bad input the user can fix: main prints it as one line and exits 2."""

class GroupByError(CompareError):
    """--group_by names a key that no run has: grouping by it would silently merge every run."""

@dataclass
class Group:
    name: str
    runs: list
    config: dict | None = None  # the group's shared config (ignored keys removed)
    # --best_lr: the arm's pick: lr_scale, lr (effective, None if unknown), edge (True/False; None: a one-lr arm),
    # tuning ({lr_scale: mean final val loss on the tuning seeds, inf if one diverged})
    pick: dict | None = None

def _config_key(cfg):
    foreign = foreign_keys(cfg)
    return {k: v for k, v in cfg.items() if k not in IGNORE_KEYS and k not in foreign and not PATHLIKE_RE.search(k)}

def _js(v):
    return json.dumps(v, sort_keys=True, default=str)

def _fmt_value(v):
    s = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return s if len(s) <= 40 else s[:39] + "…"

def _dir(path):
    return os.path.dirname(os.path.abspath(path))

def folder_names(runs):
    """{folder's full path: its shortest distinguishing suffix}: a/runs and b/runs stay two folders, named
    'a/runs' and 'b/runs'; a folder whose name is unique is named by it alone."""
    parts = {d: d.split(os.sep) for d in {_dir(r.path) for r in runs}}
    names = {}
    for d, p in parts.items():
        k = next((k for k in range(1, len(p)) if all(q[-k:] != p[-k:] for e, q in parts.items() if e != d)), None)
        names[d] = os.path.join(*p[-k:]) if k else d
    return names

def _stem_group(run, folders):
    return RUN_ID_RE.sub("", run.name) or folders[_dir(run.path)]  # "baseline_3f2a9c1e-...-..." -> "baseline"

def _by_value(run, k, folders):
    return folders[_dir(run.path)] if k == "folder" else _stem_group(run, folders) if k == "stem" else run.config.get(k)

def check_group_by(runs, group_by):
    """Raise GroupByError for a --group_by key that is neither in some run's config nor a pseudo key."""
    keys = sorted({k for r in runs if r.config for k in r.config})
    for k in group_by:
        if k in PSEUDO_KEYS or k in keys:
            continue
        close = difflib.get_close_matches(k, keys + list(PSEUDO_KEYS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        avail = f"config keys: {', '.join(keys)}" if keys else "these logs have no config line (not train_gpt.py's)"
        raise GroupByError(f"--group_by key {k!r} is in no run's config{hint}; {avail}; "
                           f"for any log: {', '.join(PSEUDO_KEYS)}")

def group_runs(runs, group_by=None):
    """Group runs by config (or by the keys in group_by); logs without a config line by folder, unless
    group_by has only pseudo keys (folder, stem). Returns a list of Group in first-seen order."""
    group_by = list(group_by or [])
    check_group_by(runs, group_by)
    pseudo_only = bool(group_by) and all(k in PSEUDO_KEYS for k in group_by)
    folders = folder_names(runs)  # one name per folder path: same-named folders stay apart
    buckets = {}
    for r in runs:
        if pseudo_only:
            key = ("pseudo", tuple(_by_value(r, k, folders) for k in group_by))
        elif r.config is None:  # no config keys to go by: its folder is its record (modded-nanogpt)
            key = ("folder", folders[_dir(r.path)])
        elif group_by:
            key = ("by", tuple(_js(_by_value(r, k, folders)) for k in group_by))
        else:
            key = ("cfg", _js(_config_key(r.config)))
        buckets.setdefault(key, []).append(r)
    groups = []
    for key, rs in buckets.items():
        cfg = ({k: _by_value(rs[0], k, folders) for k in group_by} if key[0] == "by" else
               _config_key(rs[0].config) if key[0] == "cfg" else None)
        name = "/".join(key[1]) if key[0] == "pseudo" else key[1] if key[0] == "folder" else ""
        groups.append(Group(name=name, runs=rs, config=cfg))
    _name_groups([g for g in groups if g.config is not None])
    return groups

def _name_groups(groups):
    """Name config groups by their differences from the reference group (named 'baseline')."""
    if not groups:
        return
    keys = dict.fromkeys(k for g in groups for k in g.config)  # first-seen order
    differ = [k for k in keys if len({_js(g.config.get(k)) for g in groups}) > 1]
    ref, defaults = _reference(groups, differ), flag_defaults()
    # a key the reference lacks (a flag of another architecture) is named where it is off train_gpt's default
    base = lambda k: ref.config[k] if k in ref.config else defaults.get(k, ref.config.get(k))
    for g in groups:
        diff = [f"{k}={_fmt_value(g.config.get(k))}" for k in differ if k in g.config and g.config[k] != base(k)]
        g.name = " ".join(diff) or "baseline"

def _reference(groups, differ):
    """The default baseline: arch=gpt (when the key exists) with the fewest keys off the per-key mode."""
    vals = {k: [_js(g.config.get(k)) for g in groups] for k in differ}
    mode = {k: max(v, key=v.count) for k, v in vals.items()}
    n_off = lambda g: sum(_js(g.config.get(k)) != mode[k] for k in differ)
    gpt = [g for g in groups if g.config.get("arch") == "gpt"]
    return min(gpt or groups, key=n_off)

def pick_baseline(groups, spec=None):
    """--baseline: exact name, then substring of the group name; default the group named 'baseline',
    else the first with arch=gpt, else the first one."""
    if spec:
        for match in (lambda g: g.name == spec, lambda g: spec in g.name):
            hits = [g for g in groups if match(g)]
            if hits:
                return hits[0]
        raise SystemExit(f"compare: no group matches --baseline={spec!r}; groups: "
                         + ", ".join(repr(g.name) for g in groups))
    return next((g for g in groups if g.name == "baseline"),
                next((g for g in groups if (g.config or {}).get("arch") == "gpt"), groups[0]))

# -----------------------------------------------------------------------------
# statistics

def _std(x):
    s = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    return 0.0 if s < 1e-12 else s  # identical losses: float noise, not variance

def welch(x, b):
    """Δ = mean(x) - mean(b), its Welch–Satterthwaite 95% CI and Welch's t-test p-value."""
    x, b = np.asarray(x, float), np.asarray(b, float)
    delta = float(x.mean() - b.mean()) if len(x) and len(b) else float("nan")
    if len(x) < 2 or len(b) < 2:
        return delta, float("nan"), float("nan"), float("nan")
    vx, vb = _std(x) ** 2 / len(x), _std(b) ** 2 / len(b)
    se = math.sqrt(vx + vb)
    if se == 0:  # both groups constant: nothing to test against, p=1 if the means agree, else 0
        delta = 0.0 if abs(delta) < 1e-12 else delta
        return delta, delta, delta, 1.0 if delta == 0 else 0.0
    df = se ** 4 / (vx ** 2 / (len(x) - 1) + vb ** 2 / (len(b) - 1))
    h = stats.t.ppf(0.975, df) * se
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(x, b, equal_var=False).pvalue)
    return delta, delta - h, delta + h, p

def paired(pairs):
    """Runs matched by seed (same init; train_gpt.py reads one token stream whatever the seed): mean of the
    per-seed differences x - b, its 95% CI and the paired t-test's p-value (scipy.stats.ttest_rel). Seed-to-seed
    spread shared by both arms cancels, so a small effect that Welch's test cannot see over that spread can still
    show. Needs 2 pairs."""
    if len(pairs) < 2:
        return float("nan"), float("nan"), float("nan"), float("nan")
    x, b = np.asarray(pairs, float).T
    d = x - b
    if _std(d) == 0:  # the same difference at every seed (e.g. identical runs): nothing to test against
        m = 0.0 if abs(d.mean()) < 1e-12 else float(d.mean())
        return m, m, m, 1.0 if m == 0 else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(x, b)
    ci = res.confidence_interval(0.95)
    return float(d.mean()), float(ci.low), float(ci.high), float(res.pvalue)

def one_sample_less(x, target):
    """One-sided p-value of mean(x) < target (scipy.stats.ttest_1samp, alternative='less')."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return float("nan")
    if _std(x) == 0:
        return 0.0 if x.mean() < target else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_1samp(x, target, alternative="less").pvalue)

def pick_lr(losses_by_lr):
    """The lr-sweep rule, used by records/sweep.py (tune phase) and here (best against best): {lr_scale: [final
    val losses on the tuning seeds]} -> (the lr_scale of the lowest mean loss, whether it sits at an edge of the
    grid). A diverged run (nan/inf) makes its lr's mean inf; a tie goes to the smaller lr (the safer one). An edge
    pick means the grid should be extended past it: the optimum may lie outside."""
    if not losses_by_lr:
        raise ValueError("pick_lr: no lr with runs")
    mean = lambda xs: float(np.mean(xs)) if xs and all(math.isfinite(x) for x in xs) else math.inf
    grid = sorted(losses_by_lr)
    best = min(grid, key=lambda lr: (mean(losses_by_lr[lr]), lr))
    return best, len(grid) > 1 and best in (grid[0], grid[-1])

def effective_lr(cfg, lr_scale):
    """The lr an arm ran at: Adam arms (lr or the arch's adam_lr) x lr_scale, Muon arms muon_lr x lr_scale (the
    embed/head/scalar Adam lrs scale alike). None when train_gpt.py or the arch is unknown."""
    tg = _train_gpt()
    arch = tg.ARCHS.get(cfg.get("arch")) if tg else None
    if arch is None:
        return None
    if (cfg.get("optimizer") or arch.optimizer) in ("adam", "adamw"):
        return (cfg.get("lr") or arch.adam_lr) * lr_scale
    return cfg["muon_lr"] * lr_scale if isinstance(cfg.get("muon_lr"), (int, float)) else None

def best_against_best(runs, tune_seeds):
    """Each arm at its own best lr. Arms: runs whose configs differ only in lr_scale (and IGNORE_KEYS). Per arm,
    pick_lr over the final val losses of its tuning-seed runs (a tuning run cut before its last step counts as
    diverged: train_gpt.py stops a run at a non-finite loss); the arm's Group holds its runs at that lr_scale on
    the other (confirm) seeds, so the pick's luck on the tuning seeds does not flatter its row. An arm run at one
    lr_scale has no pick to make: that lr is its pick, edge None (n/a), and its row is its confirm seeds too, so
    every row stands on the same seeds. Returns Groups named like group_runs', each with .pick."""
    tune, arms = set(tune_seeds), {}
    for r in runs:
        if r.config is None or not isinstance(r.config.get("lr_scale", 1.0), (int, float)):
            warn(f"{r.path}: no config line or no numeric lr_scale in it: left out of --best_lr")
            continue
        arms.setdefault(_js({k: v for k, v in _config_key(r.config).items() if k != "lr_scale"}), []).append(r)
    groups = []
    for key, rs in arms.items():
        by_lr = {}
        for r in rs:
            by_lr.setdefault(float(r.config.get("lr_scale", 1.0)), []).append(r)
        tuning = {lr: [math.inf if r.incomplete or not r.finite else r.final_val_loss for r in xs
                       if r.config.get("seed") in tune] for lr, xs in by_lr.items()}
        tuning = {lr: losses for lr, losses in tuning.items() if losses}
        cfg = json.loads(key)
        if len(by_lr) == 1:
            best, edge = next(iter(by_lr)), None
        elif not tuning:
            warn(f"arm {cfg.get('arch')} with lr_scales {sorted(by_lr)}: no run on the tuning seeds "
                 f"{sorted(tune)}, no lr to pick: left out")
            continue
        else:
            if len(tuning) < len(by_lr):
                warn(f"arm {cfg.get('arch')}: lr_scales {sorted(set(by_lr) - set(tuning))} have no tuning run: "
                     f"not in the pick")
            if all(math.isinf(x) for v in tuning.values() for x in v):  # nothing trained: no lr to confirm
                cut = "" if all(r.diverged for r in rs if r.config.get("seed") in tune) else " or was cut"
                warn(f"arm {cfg.get('arch')}: every lr_scale of its grid {sorted(tuning)} diverged{cut} on the tuning "
                     f"seeds {sorted(tune)}: no pick, left out (lower the grid)")
                continue
            best, edge = pick_lr(tuning)
        confirm = [r for r in by_lr[best] if r.config.get("seed") not in tune]
        means = {lr: float(np.mean(v)) if all(map(math.isfinite, v)) else math.inf for lr, v in tuning.items()}
        groups.append(Group("", confirm, cfg, pick=dict(lr_scale=best, lr=effective_lr(cfg, best), edge=edge,
                                                         tuning=means)))
    _name_groups(groups)
    for g in groups:
        if g.pick["edge"]:
            warn(f"{g.name}: its best lr_scale {g.pick['lr_scale']:g} sits at the edge of the grid "
                 f"{sorted(g.pick['tuning'])}: extend the grid past it (the optimum may lie outside)")
        if not g.runs:
            warn(f"{g.name}: no confirm-seed run at its pick lr_scale={g.pick['lr_scale']:g}")
    return groups

def tune_seeds_of(paths):
    """The tuning seeds recorded by records/sweep.py in <folder>/sweep.json of the folders given: its tune_seeds and
    every seed its tune-phase runs used (a pick's seed is never a confirm seed, whatever a later sweep wrote); None
    when no folder has any. Folders that disagree are an error: one comparison has one set of tuning seeds."""
    found = {}
    for p in map(str, paths):
        f = os.path.join(p, "sweep.json")
        if not os.path.isfile(f):
            continue
        try:
            with open(f) as fh:
                rec = json.load(fh)
            seeds = set(rec.get("tune_seeds") or []) | {r.get("seed") for r in rec.get("runs") or []
                                                       if isinstance(r, dict) and r.get("phase") == "tune"}
            seeds = tuple(sorted(seeds))
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise CompareError(f"{f} is unreadable ({e}): fix it, or give the seeds with --tune_seeds=0,1")
        if seeds:
            found[f] = seeds
    if len(set(found.values())) > 1:
        raise CompareError("the sweep.json files disagree on tune_seeds (" + "; ".join(
            f"{f}: {list(v)}" for f, v in found.items()) + "): compare them apart or pass --tune_seeds")
    return list(next(iter(found.values()))) if found else None

def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None

def compare(groups, baseline=None, target=None, alpha=0.01, include_incomplete=False):
    """One row dict per group. baseline: a Group, a name/substring, or None (default pick)."""
    base = baseline if isinstance(baseline, Group) else pick_baseline(groups, baseline)
    counted = lambda g: [r for r in g.runs if include_incomplete or not r.incomplete]
    used = lambda g: [r for r in counted(g) if r.finite]  # a diverged run is named by parse_log, never averaged
    b_loss = [r.final_val_loss for r in used(base)]
    b_by_seed = {r.config.get("seed"): r.final_val_loss for r in used(base) if r.config and "seed" in r.config}
    b_steps = [r.step_ms for r in base.runs if r.step_ms]
    b_step = _mean(b_steps)
    times = lambda g: [r.time_s for r in used(g) if r.time_s is not None]  # a cut or diverged run's is not a run's
    b_times = times(base)
    rows = []
    for g in [base] + [g for g in groups if g is not base]:  # baseline first
        runs = used(g)
        loss = [r.final_val_loss for r in runs]
        delta, lo, hi, p = welch(loss, b_loss)
        row = dict(group=g.name, baseline=g is base, n=len(loss),
                   n_incomplete=sum(r.incomplete and r.finite for r in g.runs), n_nonfinite=sum(not r.finite for r in g.runs),
                   mean=_mean(loss), std=_std(loss) if loss else float("nan"), delta=delta, ci_low=lo, ci_high=hi,
                   p=p, step_ms=_mean(r.step_ms for r in g.runs), pick=g.pick)
        pairs = [(r.final_val_loss, b_by_seed[r.config["seed"]]) for r in runs
                 if r.config and r.config.get("seed") in b_by_seed]
        _, row["pair_low"], row["pair_high"], row["p_paired"] = paired(pairs)
        row["n_pairs"] = len(pairs)
        row["step_ratio"] = row["step_ms"] / b_step if row["step_ms"] and b_step else None
        row["p_step"] = welch([r.step_ms for r in g.runs if r.step_ms], b_steps)[3]  # speed claims need a test too
        t = times(g)
        row.update(time_s=_mean(t), time_std=_std(t) if t else float("nan"), p_time=welch(t, b_times)[3])
        if target is not None:
            p1 = one_sample_less(loss, target)
            row.update(target=target, p_target=p1,
                       record=None if math.isnan(p1) else bool(row["mean"] < target and p1 < alpha))
            hits = [h for h in (r.reach(target) for r in g.runs) if h]
            row.update(n_reached=len(hits), n_runs=len(g.runs), steps_to_target=_mean(h[0] for h in hits),
                       time_to_target_ms=_mean(h[1] if isinstance(h[1], float) else None for h in hits))
        rows.append(row)
    return rows

# -----------------------------------------------------------------------------
# output

def _f(x, spec):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

def _pm(mean, std):
    """mean ± std with as many decimals as the std needs (two significant digits of it, at most 3: the logs give ms):
    a record's times differ by tenths of a second and their std by hundredths."""
    if std is None or math.isnan(std):
        return f"{mean:.1f} ± n/a"
    d = 3 if std == 0 else min(3, max(1, 1 - math.floor(math.log10(std))))
    return f"{mean:.{d}f} ± {std:.{d}f}"

def _p(p):
    return "n/a" if p is None or math.isnan(p) else (f"{p:.1e}" if 0 < p < 1e-3 else f"{p:.3f}")

def format_table(rows, markdown=False):
    picks = any(r.get("pick") for r in rows)
    head = ["group"] + (["lr", "lr_scale", "edge"] if picks else []) + [
        "n", "val_loss", "Δ vs base", "95% CI", "p", "pairs", "paired 95% CI", "p paired"]
    has_target = any("target" in r for r in rows)
    if has_target:
        t = next(r["target"] for r in rows if "target" in r)
        head += [f"p(<{t:g})", "record", f"steps→{t:g}", f"time→{t:g}"]
    head += ["time s", "p(time)", "step ms", "×base", "p(step)"]
    body = []
    for r in rows:
        left = [f"+{k} {what}" for k, what in ((r["n_incomplete"], "inc"), (r.get("n_nonfinite"), "diverged")) if k]
        n = f"{r['n']}" + (f" ({', '.join(left)})" if left else "")
        loss = f"{_f(r['mean'], '.4f')} ± {_f(r['std'], '.4f')}" if r["n"] else "n/a"
        if r["baseline"]:
            cells = [r["group"] + " *", n, loss, "-", "-", "-", "-", "-", "-"]
        else:
            ci = "n/a" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
            pci = "n/a" if math.isnan(r["pair_low"]) else f"[{r['pair_low']:+.4f}, {r['pair_high']:+.4f}]"
            cells = [r["group"], n, loss, _f(r["delta"], "+.4f"), ci, _p(r["p"]), str(r["n_pairs"]), pci, _p(r["p_paired"])]
        if has_target:
            reached = "" if r["n_reached"] in (0, r["n_runs"]) else f" ({r['n_reached']}/{r['n_runs']})"
            cells += [_p(r["p_target"]), "n/a" if r["record"] is None else ("yes" if r["record"] else "no"),
                      "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}{reached}",
                      "-" if r["time_to_target_ms"] is None else f"{r['time_to_target_ms'] / 1000:.1f}s{reached}"]
        time = "n/a" if r["time_s"] is None else _pm(r["time_s"], r["time_std"])
        cells += [time, "-" if r["baseline"] else _p(r["p_time"]),
                  _f(r["step_ms"], ".1f"), _f(r["step_ratio"], ".3f"), "-" if r["baseline"] else _p(r["p_step"])]
        if picks:
            pk = r.get("pick") or {}
            edge = {True: "EDGE", False: "no", None: "n/a"}[pk.get("edge")]
            cells[1:1] = [_f(pk.get("lr"), ".3g"), _f(pk.get("lr_scale"), "g"), edge]
        body.append(cells)
    if markdown:
        esc = lambda c: c.replace("|", "\\|")
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(map(esc, c)) + " |" for c in body]
    else:
        w = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
        fmt = lambda c: "  ".join(c[0].ljust(w[0]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(c))
        lines = [fmt(head), "  ".join("-" * x for x in w)] + [fmt(c) for c in body]
    return "\n".join(lines) + ("\n\n\\* baseline\n" if markdown else "\n* baseline\n")

def plot_path(path, name="compare.png"):
    """The file a plot given as `path` goes to, as the tools print it: a folder (one that exists, or a path ending in
    a separator) gets `name` inside it; a path without an extension matplotlib writes (none, or one it does not know)
    gets .png, which is what matplotlib would add or fail on."""
    path = str(path)
    if os.path.isdir(path) or path.endswith(os.sep):
        return os.path.join(path, name)
    from matplotlib.backend_bases import FigureCanvasBase
    ext = os.path.splitext(path)[1][1:].lower()
    return path if ext in FigureCanvasBase.get_supported_filetypes() else path + ".png"

def plot(groups, path, target=None, include_incomplete=False, x="step"):
    """Val loss vs step (x="step") or training time in s (x="time": the mean train_time of the runs at each val
    step): per group the mean over its runs at the steps they all share, ± std band. Left: the whole run;
    right: the second half, where the groups separate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 5))
    last = 0
    for g in groups:
        runs = [r for r in g.runs if (include_incomplete or not r.incomplete) and r.finite] or g.runs
        steps = sorted(set.intersection(*(set(r.val) for r in runs)))
        if not steps:
            warn(f"group {g.name!r}: its runs share no val step, not plotted")
            continue
        if x == "time":
            ms = [[r.val[s].get("train_time") for s in steps] for r in runs]
            if not all(isinstance(t, float) and math.isfinite(t) for row in ms for t in row):
                warn(f"group {g.name!r}: a val line without train_time, not plotted against time")
                continue
            xs = np.mean(ms, axis=0) / 1000
        else:
            xs = np.asarray(steps, float)
        y = np.array([[r.val[s]["val_loss"] for s in steps] for r in runs])
        mean, std = y.mean(0), (y.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps)))
        last = max(last, xs[-1])
        for a in (ax, zoom):
            line, = a.plot(xs, mean, label=f"{g.name} (n={len(runs)})", lw=1.5,
                           marker="." if len(steps) < 30 else None)
            a.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    if last > 0:  # nothing plotted, or one point at 0: matplotlib's own limits
        zoom.set_xlim(last / 2, last * 1.02)
    ys = [y for l in zoom.get_lines() for u, y in zip(*l.get_data()) if u >= last / 2 and math.isfinite(y)]
    if ys:
        pad = 0.05 * (max(ys) - min(ys)) + 1e-3
        zoom.set_ylim(min(ys + [target or min(ys)]) - pad, max(ys) + pad)
    for a in (ax, zoom):
        if target is not None:
            a.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:g}")
        a.set(xlabel="training time (s)" if x == "time" else "step", ylabel="val loss")
        a.grid(alpha=0.3)
    ax.set_title("val loss (mean ± std over runs)")
    zoom.set_title("second half")
    if zoom.get_legend_handles_labels()[0]:
        zoom.legend(fontsize=8)
    fig.tight_layout()
    if not os.path.exists(os.path.dirname(os.path.abspath(path))):  # a file in its place: "Not a directory"
        os.makedirs(os.path.dirname(os.path.abspath(path)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

# -----------------------------------------------------------------------------
# CLI

def _tune_seeds(args):
    """--best_lr's tuning seeds: --tune_seeds, else sweep.json's, else an error saying how to give them."""
    if args.group_by:
        raise CompareError("--best_lr groups runs into arms by config (all but lr_scale): drop --group_by")
    recorded = tune_seeds_of(p for p in args.paths if os.path.isdir(p))
    if args.tune_seeds:
        try:
            given = [int(s) for s in args.tune_seeds.split(",") if s.strip()]
        except ValueError:
            raise CompareError(f"--tune_seeds={args.tune_seeds}: give integer seeds, e.g. --tune_seeds=0,1") from None
        if extra := sorted(set(recorded or []) - set(given)):  # a seed an lr was picked on is never a confirm seed
            warn(f"--tune_seeds={args.tune_seeds}: sweep.json's tune-phase runs also used seeds {extra}: tuning seeds "
                 f"{sorted(set(given) | set(extra))}")
        return sorted(set(given) | set(extra))
    seeds = recorded
    if seeds is None:
        raise CompareError("--best_lr needs the tuning seeds: pass --tune_seeds=0,1 (the seeds the lr was picked on), "
                           "or give a sweep folder whose sweep.json has tune_seeds")
    return seeds

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="log files, folders (*.txt recursively) or globs")
    ap.add_argument("--baseline", help="baseline group: name or substring of it")
    ap.add_argument("--target", type=float, help="target val loss (modded-nanogpt: 3.28)")
    ap.add_argument("--alpha", type=float, default=0.01, help="significance level of the record test")
    ap.add_argument("--plot", help="PNG path (no extension: .png added; a folder: compare.png in it; default <first "
                                   "folder>/compare.png or compare.png); 'none' skips")
    ap.add_argument("--group_by", help="comma-separated config keys to group by instead of the whole config; "
                                       "'folder' or 'stem' group any log (also those without a config line)")
    ap.add_argument("--x", choices=["step", "time"], default="step", help="the plot's x axis: step or training time")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--include_incomplete", action="store_true", help="count truncated logs in the loss stats")
    ap.add_argument("--best_lr", action="store_true", help="each arm (configs that differ only in lr_scale) at the "
                    "lr_scale pick_lr finds best on the tuning seeds, compared on the other (confirm) seeds")
    ap.add_argument("--tune_seeds", help="--best_lr's tuning seeds, e.g. 0,1 (default: sweep.json's tune_seeds)")
    args = ap.parse_args(argv)
    bad = (f"--target={args.target:g}: give a finite target val loss, e.g. --target=3.28"
           if args.target is not None and not math.isfinite(args.target) else
           f"--alpha={args.alpha:g}: give a significance level between 0 and 1, e.g. --alpha=0.01"
           if not 0 < args.alpha < 1 else None)  # nan would test nothing; alpha >= 1 makes every mean below a "record"
    if bad:
        print(f"compare: error: {bad}", file=sys.stderr)
        return 2
    runs = load_runs(args.paths)
    if not runs:
        print(f"compare: no usable run (a log with step lines and a val_loss line) in {' '.join(args.paths)}",
              file=sys.stderr)
        return 1
    try:
        if args.best_lr:
            groups = best_against_best(runs, _tune_seeds(args))
        else:
            groups = group_runs(runs, [k.strip() for k in (args.group_by or "").split(",") if k.strip()])
        if not groups:
            raise CompareError("no arm left to compare (see the warnings above)")
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    rows = compare(groups, args.baseline, args.target, args.alpha, args.include_incomplete)
    print(format_table(rows, args.markdown), end="", flush=True)  # before the plot: a bad plot path loses nothing
    if (args.plot or "").lower() != "none":
        folder = next((p for p in args.paths if os.path.isdir(p)), None)
        path = plot_path(args.plot or (os.path.join(folder, "compare.png") if folder else "compare.png"))
        try:
            print(f"plot: {plot(groups, path, args.target, args.include_incomplete, args.x)}")
        except OSError as e:  # read-only folder, a file where a folder should be, full disk
            print(f"compare: error: cannot write the plot to {path} ({e.strerror or e}): "
                  f"pass --plot=<writable path> or --plot=none", file=sys.stderr)
            return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
