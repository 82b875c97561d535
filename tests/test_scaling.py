"""records/scaling.py: a 3-rung ladder of synthetic logs with a planted gap, the picks, the trend, the report."""
import json
import math
import shlex
import shutil
import sys
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from test_compare import write_log  # noqa: E402  (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "records"))
import compare  # noqa: E402
import scaling  # noqa: E402

RUNGS = [dict(name="r1", folder="r1", flags="--preset=cpu --n_layer=2 --n_embd=64 --steps=100"),
         dict(name="r2", folder="r2", flags="--preset=cpu --n_layer=3 --n_embd=96 --steps=200"),
         dict(name="r3", folder="r3", flags="--preset=cpu --n_layer=4 --n_embd=128 --steps=400")]
RUNG_CFG = [dict(n_layer=2, n_embd=64, steps=100), dict(n_layer=3, n_embd=96, steps=200),
            dict(n_layer=4, n_embd=128, steps=400)]
BASE_LOSS = [5.0, 4.6, 4.2]
GAIN = [0.02, 0.06, 0.10]  # planted: anGPT's gain over GPT-Adam grows with compute
LR_COST = {"gpt_adam": {0.5: 0.10, 1.0: 0.0, 2.0: 0.05},   # interior optimum
           "angpt": {0.5: 0.12, 1.0: 0.04, 2.0: 0.0}}      # best at the grid's edge
LUCK = [0.00, 0.03, -0.02, 0.05, 0.01]  # per seed, shared by the arms
LADDER = {"rungs": RUNGS, "arms": {"gpt_adam": "--arch=gpt --optimizer=adam", "angpt": "--arch=angpt"},
          "claims": [{"name": "anGPT vs GPT (Adam)", "arm": "angpt", "baseline": "gpt_adam", "kind": "loss",
                      "source": "002: lower loss"},
                     {"name": "anGPT faster", "arm": "angpt", "baseline": "gpt_adam", "kind": "speed",
                      "source": "002: ~40% faster convergence"},
                     {"name": "GPT faster (reversed)", "arm": "gpt_adam", "baseline": "angpt", "kind": "speed",
                      "source": "none"}]}

@lru_cache(maxsize=None)
def _parsed(flags):
    import train_gpt
    cfg = asdict(train_gpt.parse_args(shlex.split(flags), cuda_available=False))
    return {k: v for k, v in cfg.items() if k not in ("seed", "run_name", "run_id", "log_dir")}

def run_config(rung, arm_flags, **over):
    """The config a run of an arm at this rung logs: train_gpt.parse_args(rung flags + arm flags), as a sweep makes it."""
    return dict(_parsed(rung["flags"] + " " + arm_flags), **over)

def make_ladder(root, tune=(0, 1), confirm=(2, 3, 4)):
    rng = np.random.default_rng(0)
    for i, (rung, cfg) in enumerate(zip(RUNGS, RUNG_CFG)):
        folder = Path(root) / rung["folder"]
        for arm, costs in LR_COST.items():
            for lr, cost in costs.items():
                for s in tune + confirm:
                    final = BASE_LOSS[i] + cost - (GAIN[i] if arm == "angpt" else 0) + LUCK[s] + rng.normal(0, 0.002)
                    write_log(folder / f"{arm}_lr{lr:g}_s{s}.txt", final, seed=s, steps=cfg["steps"],
                              config_over=run_config(rung, LADDER["arms"][arm], lr_scale=lr))
        (folder / "sweep.json").write_text(json.dumps(dict(tune_seeds=list(tune), confirm_seeds=list(confirm),
                                                           runs=[])))
    (Path(root) / "ladder.json").write_text(json.dumps(LADDER, indent=1))
    return Path(root)

@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = make_ladder(tmp_path_factory.mktemp("ladder"))
    return root, *scaling.ladder_results(str(root), scaling.load_ladder(str(root)))

def test_picks_and_edge_at_every_rung(ladder):
    root, results, arms_by_rung = ladder
    assert list(arms_by_rung) == ["r1", "r2", "r3"]
    for arms in arms_by_rung.values():
        assert (arms["gpt_adam"].pick["lr_scale"], arms["gpt_adam"].pick["edge"]) == (1.0, False)
        assert (arms["angpt"].pick["lr_scale"], arms["angpt"].pick["edge"]) == (2.0, True)
        assert all(sorted(r.config["seed"] for r in g.runs) == [2, 3, 4] for g in arms.values())

def test_gap_per_rung_and_the_trend_grows(ladder):
    root, results, _ = ladder
    claim, rs = results["anGPT vs GPT (Adam)"]
    assert [r.rung for r in rs] == ["r1", "r2", "r3"]
    assert [r.gain for r in rs] == pytest.approx(GAIN, abs=0.006)  # best against best: 2.0 vs 1.0, no lr cost
    assert all(r.paired and r.row["n_pairs"] == 3 and r.gain_low < r.gain < r.gain_high and r.p < 0.05 for r in rs)
    assert rs[0].compute < rs[1].compute < rs[2].compute
    trend = scaling.fit_trend([math.log10(r.compute) for r in rs], [r.gain for r in rs], [r.se for r in rs])
    assert trend.verdict == "grows" and trend.low > 0
    flipped = scaling.fit_trend([math.log10(r.compute) for r in rs], [-r.gain for r in rs], [r.se for r in rs])
    assert flipped.verdict == "shrinks"
    flat = scaling.fit_trend([1, 2, 3], [0.01, -0.01, 0.005], [0.02] * 3)
    assert flat.verdict == "flat"

def test_speed_ratio_and_not_reached(ladder):
    _, results, _ = ladder
    faster = results["anGPT faster"][1]
    assert all(r.reached and 0 < r.steps_ratio < 1 for r in faster)
    assert all(not r.reached and r.steps_ratio is None for r in results["GPT faster (reversed)"][1])

def test_compute_counts_the_real_model(ladder):
    """C = 6 N tokens: N on the meta device equals the real model's count of the same parameters (all but the
    embedding tables, the head included), and the GPT formula 12 L d^2 + d V + small vectors."""
    import dataclasses
    import torch
    import train_gpt
    for arch in ("gpt", "ngpt", "angpt"):
        h = train_gpt.parse_args(["--preset=cpu", f"--arch={arch}", "--n_layer=2", "--n_embd=64"], cuda_available=False)
        model = train_gpt.build_model(h)
        tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        real = sum(p.numel() for p in dict(model.named_parameters()).values() if id(p) not in tables)
        head = model.lm_head.weight.numel()
        assert scaling.non_embedding_params(dataclasses.asdict(h), count_head=True) == real
        assert scaling.non_embedding_params(dataclasses.asdict(h)) == real - head  # Kaplan's N: no head
        if arch == "gpt":
            assert real - head == pytest.approx(12 * 2 * 64 ** 2, rel=0.01) and head == 64 * h.vocab_size
    _, results, _ = ladder
    r1 = results["anGPT vs GPT (Adam)"][1][0]
    assert r1.tokens == 100 * 8 * 256 or r1.tokens == 100 * r1.base.runs[0].config["batch_size"] * r1.base.runs[0].config["seq_len"]
    assert r1.compute == 6 * r1.n_params * r1.tokens

def test_cli_report_extrapolation_markdown_and_plot(ladder, capsys):
    root = ladder[0]
    assert scaling.main([str(root), "--claims=anGPT vs GPT (Adam)", "--extrapolate=1e18", f"--plot={root / 's.png'}"]) == 0
    out, err = capsys.readouterr()
    assert "the gain grows" in out and "EXTRAPOLATION beyond the measured compute" in out
    assert "95% prediction interval" in out and "EDGE" in out and "extend the grid" in out
    assert "anGPT faster" not in out and (root / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert scaling.main([str(root), "--markdown", "--plot=none"]) == 0
    md = capsys.readouterr().out
    assert "| rung | C (FLOPs) |" in md and "steps ratio" in md and "not reached" in md
    assert scaling.main([str(root), "--claims=nope", "--plot=none"]) == 2
    assert "not in ladder.json's claims" in capsys.readouterr().err
    assert scaling.main([str(root / "r1"), "--plot=none"]) == 2
    assert "ladder.json" in capsys.readouterr().err

def test_a_rung_may_run_a_subset_of_the_arms(tmp_path, capsys):
    """A top rung that runs only the arms its claims need (ladder.json's rung "arms"): a claim on an arm it leaves
    out keeps its gaps at the rungs below and says why it has none there; the other claims keep every rung."""
    import copy
    root = make_ladder(tmp_path)
    ladder = copy.deepcopy(LADDER)
    ladder["arms"]["dyt"] = "--arch=gpt --optimizer=adam --norm=dyt"
    ladder["rungs"][2]["arms"] = ["gpt_adam", "angpt"]
    ladder["claims"].append({"name": "DyT", "arm": "dyt", "baseline": "gpt_adam", "kind": "loss", "source": "000"})
    (root / "ladder.json").write_text(json.dumps(ladder))
    for i, (rung, cfg) in enumerate(zip(RUNGS[:2], RUNG_CFG[:2])):
        for lr in (0.5, 1.0, 2.0):
            for s in (0, 1, 2, 3, 4):
                write_log(root / rung["folder"] / f"dyt_lr{lr:g}_s{s}.txt", BASE_LOSS[i] + 0.05 + LR_COST["gpt_adam"][lr] + LUCK[s],
                          seed=s, steps=cfg["steps"], config_over=run_config(rung, ladder["arms"]["dyt"], lr_scale=lr))
    results, arms_by_rung = scaling.ladder_results(str(root), scaling.load_ladder(str(root)))
    err = capsys.readouterr().err
    assert [r.rung for r in results["DyT"][1]] == ["r1", "r2"]
    two, three = (scaling.format_claim(*results[name], extrapolate=1e18) for name in ("DyT", "anGPT vs GPT (Adam)"))
    assert "2 rungs: no scatter check, the interval is a lower bound" in two and "lower bound" not in three
    assert [r.gain for r in results["DyT"][1]] == pytest.approx([-0.05, -0.05], abs=0.006)
    assert [r.rung for r in results["anGPT vs GPT (Adam)"][1]] == ["r1", "r2", "r3"]
    assert set(arms_by_rung["r3"]) == {"gpt_adam", "angpt"} and set(arms_by_rung["r1"]) == {"gpt_adam", "angpt", "dyt"}
    assert "rung r3: claim 'DyT' has no gap here: the rung does not run 'dyt'" in err

def test_a_rung_still_in_its_tune_phase_is_left_out_by_name(tmp_path, capsys):
    """While a rung's sweep tunes, an arm has no confirm run at its pick: the report leaves that rung out of the
    claim with a line that says so (it used to stop with an IndexError)."""
    root = make_ladder(tmp_path)
    for log in (root / "r3").glob("angpt_*_s[234].txt"):
        log.unlink()
    results, _ = scaling.ladder_results(str(root), scaling.load_ladder(str(root)))
    assert [r.rung for r in results["anGPT vs GPT (Adam)"][1]] == ["r1", "r2"]
    assert "rung r3: claim 'anGPT vs GPT (Adam)' has no gap here yet: 'angpt' has no confirm run" in capsys.readouterr().err

def test_the_committed_ladder_spans_30x_compute_and_pins_its_precision():
    """records/ladder/ladder.json as committed: every rung's flags parse with each arm it runs, pin --bf16, and the
    top rung trains >= 30x the bottom rung's compute C = 6 N T (issue 24's bar); anGPT vs GPT and nGPT vs GPT (the
    claims the issue requires) have both arms at every rung."""
    from dataclasses import asdict
    import shlex
    import train_gpt
    folder = REPO / "records" / "ladder"
    ladder = scaling.load_ladder(str(folder))
    compute = []
    for rung in ladder["rungs"]:
        assert "--bf16" in shlex.split(rung["flags"]), rung["name"]
        runs = rung.get("arms", list(ladder["arms"]))
        for arm in runs:
            train_gpt.parse_args(shlex.split(rung["flags"]) + shlex.split(ladder["arms"][arm]), cuda_available=False)
        required = [c for c in ladder["claims"] if c["arm"] in ("angpt", "ngpt") and c["baseline"].startswith("gpt")]
        assert len(required) >= 2 and all(c["arm"] in runs and c["baseline"] in runs for c in required), rung["name"]
        cfg = asdict(train_gpt.parse_args(shlex.split(rung["flags"]), cuda_available=False))
        compute.append(scaling.training_compute(cfg, ladder.get("count_head", False))[0])
    assert len(compute) >= 3 and compute == sorted(compute) and compute[-1] / compute[0] >= 30, compute

def test_the_committed_report_is_what_the_committed_logs_say(capsys):
    """records/ladder/scaling.txt (the numbers the READMEs quote) is what scaling.py prints today from the committed
    logs and sweep.json files, so a changed log, pick or statistic cannot leave a stale report behind."""
    folder = REPO / "records" / "ladder"
    committed = (folder / "scaling.txt").read_text().splitlines()
    assert scaling.main([str(folder), "--extrapolate=3.62e17", "--plot=none"]) == 0
    out, err = capsys.readouterr()
    body = lambda lines: [l for l in lines if not l.startswith(("compare: warning", "plot:"))]
    assert body(out.splitlines()) == body(committed)
    assert [l for l in committed if l.startswith("compare: warning")] == err.splitlines()
    assert all(f"rung {r}" not in err for r in ("r1", "r2"))  # only r3 leaves claims out (DyT, depth scaling)

# -----------------------------------------------------------------------------
# issue 32: the ladder tools never print a wrong number

def gains(results, claim="anGPT vs GPT (Adam)"):
    return {r.rung: (r.gain, r.row["n_pairs"], r.n_params) for r in results[claim][1]}

def test_a_rung_takes_only_its_own_runs(tmp_path, capsys):
    """r2's logs copied into r1's folder used to give row r1 r2's numbers, exit 0, no word (when two groups matched
    one arm the later replaced the earlier). A rung takes only runs whose config is its flags plus an arm's, and
    names what it sets aside; two rungs in one folder are an error."""
    root = make_ladder(tmp_path)
    clean = gains(scaling.ladder_results(str(root), scaling.load_ladder(str(root)))[0])
    assert "set aside" not in capsys.readouterr().err
    for log in (root / "r2").glob("*.txt"):
        shutil.copy(log, root / "r1" / f"r2copy_{log.name}")
    results, arms_by_rung = scaling.ladder_results(str(root), scaling.load_ladder(str(root)))
    assert gains(results) == clean
    assert all(Path(r.path).parent.name == "r1" and "r2copy" not in r.path for g in arms_by_rung["r1"].values() for r in g.runs)
    err = capsys.readouterr().err
    assert f"rung r1: 30 runs in {root / 'r1'} are not this rung's" in err and "set aside" in err
    assert "15 with n_layer=3 not 2, n_embd=96 not 64, steps=200 not 100 (closest arm 'angpt') (e.g. r2copy_angpt_" in err
    # two rungs pointing at one folder: one line, before anything is read
    ladder = json.loads((root / "ladder.json").read_text())
    ladder["rungs"][1]["folder"] = "r1"
    (root / "ladder.json").write_text(json.dumps(ladder))
    assert scaling.main([str(root), "--plot=none"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "rungs r1 and r2 share the folder 'r1'" in err

def test_two_groups_matching_one_arm_leave_it_out_by_name(capsys):
    """match_arms let the later of two groups that match one arm replace the earlier, silently."""
    g = lambda name, ws: compare.Group(name, [], dict(arch="gpt", optimizer="adam", world_size=ws))
    arms = {"gpt_adam": dict(arch="gpt", optimizer="adam"), "angpt": dict(arch="angpt", optimizer="adam")}
    assert scaling.match_arms([g("a", 1), g("b", 2)], arms, "r1") == {}
    err = capsys.readouterr().err
    assert "rung r1: groups 'a' and 'b' both match arm 'gpt_adam'" in err and "left out" in err

def test_every_bad_ladder_json_is_one_line(tmp_path, capsys):
    """"rungs": {"r1": 1} was an AttributeError, a claim whose arm is its baseline an IndexError, "rungs": [] exit 0
    with empty tables. Every wrong shape is one line naming the key and what it must be, exit 2, before any log."""
    import copy
    cases = [
        (dict(rungs={"r1": 1}), '"rungs" is {"r1": 1}: a non-empty list of rungs'),
        (dict(rungs=[]), '"rungs" is []: a non-empty list of rungs'),
        (dict(rungs=["r1"]), '"rungs"[0] is "r1": a rung is an object'),
        (dict(arms=["angpt"]), '"arms" is ["angpt"]: a non-empty object {name: train_gpt.py flags}'),
        (dict(arms={"angpt": 1}), '"arms"["angpt"] is 1: a string of train_gpt.py flags'),
        (dict(claims={}), '"claims" is {}: a non-empty list of claims'),
        (dict(claims=[{"name": "x", "arm": "angpt", "baseline": "angpt"}]),
         "claim 'x': its arm and baseline are both 'angpt': a claim compares two arms"),
        (dict(count_head="yes"), '"count_head" is "yes": true or false'),
    ]
    rung_cases = [({"flags": 5}, '"rungs"[0]["flags"] is 5: a string'),
                  ({"name": ""}, '"rungs"[0]["name"] is "": a non-empty string'),
                  ({"arms": "angpt"}, '"rungs"[0]["arms"] is "angpt": a list of arm names')]
    for change, why in cases + [("rung", c) for c in rung_cases]:
        ladder = copy.deepcopy(LADDER)
        if change == "rung":
            change, why = why
            ladder["rungs"][0].update(change)
        else:
            ladder.update(change)
        (tmp_path / "ladder.json").write_text(json.dumps(ladder))
        assert scaling.main([str(tmp_path), "--plot=none"]) == 2, why
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"scaling: error: {tmp_path / 'ladder.json'}: {why}"), err

def test_the_readme_says_what_n_counts():
    """records/README.md said N has "the head included"; scaling.py leaves the lm_head out unless ladder.json says
    "count_head": true (the committed r1's C = 6 x 786,432 x 61,440 has no head)."""
    import train_gpt
    text = (REPO / "records" / "README.md").read_text()
    bullet = text[text.index("- `records/scaling.py LADDER"):].split("\n- ")[0]
    assert "head included" not in bullet and '"count_head": true' in bullet and "lm_head" in bullet
    ladder = scaling.load_ladder(str(REPO / "records" / "ladder"))
    cfg = asdict(train_gpt.parse_args(shlex.split(ladder["rungs"][0]["flags"]), cuda_available=False))
    assert "count_head" not in ladder and scaling.non_embedding_params(cfg) == 786_432 == 12 * 4 * 128 ** 2
    assert scaling.non_embedding_params(cfg, count_head=True) == 786_432 + cfg["vocab_size"] * 128
