"""train_gpt.py's command line: flag syntax, presets, --help, typos, bad values and bad combinations.

Everything here goes through the real `parse_args` (and, for --help and the start-up order, the real CLI in a
subprocess). Expected values are written out, never read back from the code under test, except where a
test is about "the preset equals the dataclass defaults" or "--help lists every field"."""
import dataclasses
from pathlib import Path
import subprocess
import sys

import pytest

import train_gpt
from conftest import ROOT, cli_env, run_main
from train_gpt import PRESETS, ConfigError, Hyperparameters, parse_args

# a run that must not be able to read any data: if validation did not come first we would see a data error
NO_DATA = ["--train_files=/nonexistent/*_train_*.bin", "--val_files=/nonexistent/*_val_*.bin"]


# ----------------------------------------------------------------------------- flag syntax

def test_name_equals_value_and_name_space_value():
    a = parse_args(["--preset=cpu", "--n_layer=3", "--n_embd", "96", "--arch", "ngpt", "--lr=0.0125",
                    "--run_name", "my run", "--prompt=a=b"])
    assert (a.n_layer, a.n_embd, a.arch, a.lr, a.run_name, a.prompt) == (3, 96, "ngpt", 0.0125, "my run", "a=b")
    assert isinstance(a.n_layer, int) and isinstance(a.lr, float)


def test_dashes_in_names_are_accepted():
    a = parse_args(["--preset=cpu", "--n-layer=2", "--tie-embeddings", "--no-dyt-qk", "--norm=dyt"])
    assert (a.n_layer, a.tie_embeddings, a.dyt_qk) == (2, True, False)


@pytest.mark.parametrize("argv, expected", [
    (["--no-rope"], dict(rope=False)),
    (["--no_rope"], dict(rope=False)),
    (["--tie_embeddings"], dict(tie_embeddings=True)),
    (["--post_norm", "--no-bf16"], dict(post_norm=True, bf16=False)),
    (["--bf16=false", "--compile=true"], dict(bf16=False, compile=True)),
    (["--bf16", "0", "--compile", "yes"], dict(bf16=False, compile=True)),
    (["--rope", "off", "--post_norm", "on"], dict(rope=False, post_norm=True)),
    # a bare flag followed by another flag is True; the next flag is still parsed
    (["--compile", "--n_layer=2"], dict(compile=True, n_layer=2)),
    (["--n_layer=2", "--compile"], dict(compile=True, n_layer=2)),
])
def test_boolean_forms(argv, expected):
    a = parse_args(["--preset=cpu", *argv])
    assert {k: getattr(a, k) for k in expected} == expected


def test_later_flag_wins():
    assert parse_args(["--preset=cpu", "--n_layer=2", "--n_layer=5"]).n_layer == 5
    assert parse_args(["--preset=cpu", "--rope", "--no-rope"]).rope is False


@pytest.mark.parametrize("argv, needle", [
    (["--no-n_layer"], "--no-n_layer"),        # only booleans negate
    (["--no-rope=true"], "--no-rope"),         # a negation takes no value
    (["--n_layer"], "--n_layer"),              # missing value at the end
    (["n_layer=3"], "n_layer=3"),              # not a flag
    (["--bf16=maybe"], "--bf16"),
])
def test_malformed_flags(argv, needle):
    with pytest.raises(ConfigError) as e:
        parse_args(["--preset=cpu", *argv])
    assert needle in str(e.value)


# ----------------------------------------------------------------------------- presets

def cpu_defaults():
    """What --preset=cpu must give: the dataclass defaults overlaid with the cpu preset's own values (and the
    run name resolved from --arch and --seed)."""
    return dataclasses.replace(Hyperparameters(), **PRESETS["cpu"], preset="cpu", run_name="gpt_s0",
                               bf16=bool(train_gpt.cpu_bf16_instructions()))


def test_cpu_preset():
    a = parse_args(["--preset=cpu"])
    assert a == cpu_defaults()
    # the CPU config trains on the embedded Shakespeare shards, a small model
    assert "data/shakespeare/" in a.train_files and a.train_files.endswith("_train_*.bin")
    assert "data/shakespeare/" in a.val_files and a.val_files.endswith("_val_*.bin")
    assert a.n_layer < 12 and a.n_embd < 768


def test_speedrun_preset_values():
    a = parse_args(["--preset=speedrun"])
    assert (a.n_layer, a.n_embd, a.n_head) == (11, 768, 6)  # the current record (#89)
    assert "fineweb10B" in a.train_files and "fineweb10B" in a.val_files
    assert a.train_files.endswith("_train_*.bin") and a.val_files.endswith("_val_*.bin")
    assert a.val_tokens == 10485760 and a.compile is True
    # the preset sets every one of its keys
    assert {k: getattr(a, k) for k in PRESETS["speedrun"]} == PRESETS["speedrun"]


def test_explicit_flags_override_the_preset():
    a = parse_args(["--n_layer=2", "--preset=speedrun_2025", "--compile=false", "--seq_len=64"])
    assert (a.n_layer, a.compile, a.seq_len) == (2, False, 64)
    assert (a.n_embd, a.n_head, a.batch_size) == (768, 6, PRESETS["speedrun_2025"]["batch_size"])  # the rest still applies
    # an explicit value equal to the dataclass default still beats the preset
    default_layers = Hyperparameters().n_layer
    assert default_layers != PRESETS["speedrun_2025"]["n_layer"]
    assert parse_args(["--preset=speedrun_2025", f"--n_layer={default_layers}"]).n_layer == default_layers


def test_run_name_defaults_to_arch_and_seed():
    assert Hyperparameters().run_name == ""  # '' in the dataclass: resolved by parse_args
    assert parse_args(["--preset=cpu"]).run_name == "gpt_s0"
    assert parse_args(["--preset=cpu", "--arch=ngpt", "--seed=3"]).run_name == "ngpt_s3"
    assert parse_args(["--preset=cpu", "--arch=ngpt", "--run_name=mine"]).run_name == "mine"
    assert parse_args(["--preset=cpu", "--seed=3", "--run_name="]).run_name == "gpt_s3"


def test_no_preset_picks_by_cuda():
    gpu, cpu = parse_args([], cuda_available=True), parse_args([], cuda_available=False)
    assert gpu.preset == "speedrun" and gpu.n_layer == 11 and gpu.n_embd == 768
    assert cpu.preset == "cpu" and cpu == cpu_defaults()
    # an explicit preset wins over the hardware
    assert parse_args(["--preset=cpu"], cuda_available=True).preset == "cpu"
    assert parse_args(["--preset=speedrun"], cuda_available=False).n_layer == 11
    assert parse_args(["--preset=speedrun_2025"], cuda_available=False).n_layer == 12


# ----------------------------------------------------------------------------- typos and bad values

@pytest.mark.parametrize("flag, suggestion", [
    ("--n_layers=3", "--n_layer"),
    ("--learning_rate=0.1", None),
    ("--val-evry=10", "--val_every"),
    ("--tie_embedding", "--tie_embeddings"),
    ("--no-ropee", None),
])
def test_unknown_flag_suggests_a_close_match(flag, suggestion):
    with pytest.raises(ConfigError) as e:
        parse_args(["--preset=cpu", flag])
    msg = str(e.value)
    assert "unknown flag" in msg
    if suggestion:
        assert f"did you mean {suggestion}?" in msg


@pytest.mark.parametrize("flag, names", [
    ("--n_layer=abc", ["--n_layer", "abc", "int"]),
    ("--n_layer=2.5", ["--n_layer", "2.5"]),
    ("--lr=fast", ["--lr", "fast", "float"]),
    ("--arch=foo", ["--arch='foo'", "choose one of 'gpt', 'ngpt', 'angpt'"]),
    ("--norm=batchnorm", ["--norm", "batchnorm", "rmsnorm"]),
    ("--mlp=relu", ["--mlp", "relu2"]),
    ("--optimizer=sgd", ["--optimizer", "muon"]),
    ("--preset=gpu", ["--preset", "speedrun"]),
    ("--lr_schedule=linear", ["--lr_schedule", "cosine"]),
])
def test_bad_value_names_the_flag(flag, names):
    with pytest.raises(ConfigError) as e:
        parse_args(["--preset=cpu", flag])
    for n in names:
        assert n in str(e.value)


@pytest.mark.parametrize("flags, names", [
    (["--n_embd=100", "--n_head=3"], ["--n_embd", "--n_head"]),
    (["--qkv_head_dim=-1"], ["--qkv_head_dim"]),
    (["--n_layer=0"], ["--n_layer"]),
    (["--n_head=0"], ["--n_head"]),
    (["--arch=ngpt", "--norm=dyt"], ["--arch", "--norm"]),
    (["--arch=angpt", "--post_norm"], ["--arch", "--post_norm"]),
    (["--arch=ngpt", "--tie_embeddings"], ["--tie_embeddings"]),
    (["--arch=ngpt", "--dyt_alpha_attn=0.5"], ["--dyt_alpha_attn"]),
    (["--dyt_alpha_mlp=0.5"], ["--dyt_alpha_mlp", "--norm=dyt"]),          # a DyT flag without --norm=dyt
    (["--arch=gpt", "--ngpt_alpha_init=0.15"], ["--ngpt_alpha_init", "--arch"]),
    (["--ngpt_residual=add"], ["--ngpt_residual"]),                       # the default arch is gpt
    (["--arch=gpt", "--ngpt_proj_every=7"], ["--ngpt_proj_every", "--arch=ngpt", "got --arch=gpt"]),
    (["--arch=angpt", "--ngpt_radius=0.95"], ["--ngpt_radius", "--arch=ngpt", "got --arch=angpt"]),
    (["--arch=ngpt", "--angpt_logit_scale=10"], ["--angpt_logit_scale", "--arch=angpt", "got --arch=ngpt"]),
    (["--arch=ngpt", "--logit_softcap=15"], ["--logit_softcap", "--arch=gpt", "got --arch=ngpt"]),
    (["--arch=angpt", "--mlp_skip_threshold=0.1"], ["--mlp_skip_threshold", "--arch=gpt", "got --arch=angpt"]),
    (["--norm=layernorm", "--norm_skip_tol=0.1"], ["--norm_skip_tol", "--norm=layernorm"]),
    (["--vocab_size=1"], ["--vocab_size"]),
    (["--seq_len=64", "--val_tokens=32"], ["--val_tokens", "--seq_len"]),
    (["--cooldown_frac=1.5"], ["--cooldown_frac"]),
    (["--top_p=0"], ["--top_p"]),
])
def test_bad_combination_fails_in_parse_args(flags, names):
    with pytest.raises(ConfigError) as e:
        parse_args(["--preset=cpu", *flags])
    for n in names:
        assert n in str(e.value), (n, str(e.value))


def test_good_combinations_pass():
    """The validator must not reject the combinations the variants are made of."""
    ok = [
        ["--arch=ngpt", "--ngpt_alpha_init=0.15", "--ngpt_alpha_schedule=linear", "--ngpt_residual=add", "--ngpt_proj_every=7"],
        ["--arch=angpt"],
        ["--norm=dyt", "--dyt_alpha_attn=0.5", "--no-dyt_qk", "--dyt_embed_scale"],
        ["--norm_skip_tol=0.05", "--mlp_skip_threshold=0.15", "--qkv_head_dim=24"],
        ["--n_embd=96", "--n_head=3", "--tie_embeddings", "--post_norm", "--no-rope", "--mlp=swiglu"],
    ]
    for flags in ok:
        parse_args(["--preset=cpu", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--lr=-1"], "--lr=-1.0 must be >= 0"),
    (["--muon_lr=-0.1"], "--muon_lr=-0.1 must be >= 0"),
    (["--lr=nan"], "--lr=nan must be a finite number"),  # not "must be >= 0": NaN is no number at all
    (["--embed_lr=-0.3"], "--embed_lr=-0.3 must be >= 0"),
    (["--head_lr=-1"], "--head_lr=-1.0 must be >= 0"),
    (["--scalar_lr=-1"], "--scalar_lr=-1.0 must be >= 0"),
    (["--muon_lr=nan"], "--muon_lr=nan must be a finite number"),
    (["--muon_lr=inf"], "--muon_lr=inf must be a finite number"),  # inf passes >= 0 but makes the weights inf/NaN at step 1
    (["--lr=inf"], "--lr=inf must be a finite number"),
    (["--norm=dyt", "--dyt_alpha_mlp=nan"], "--dyt_alpha_mlp=nan must be a finite number"),  # a float flag without bounds
    (["--temperature=inf"], "--temperature=inf must be a finite number"),
    (["--keep_checkpoints=0"], "--keep_checkpoints=0 must be >= 1"),
    (["--keep_checkpoints=-1"], "--keep_checkpoints=-1 must be >= 1"),
    (["--save_every=-1"], "--save_every=-1 must be >= 0"),
    (["--mlp_ratio=0"], "--mlp_ratio=0.0 must be > 0"),
    (["--adam_beta1=1.0"], "--adam_beta1=1.0 must be < 1"),
    (["--muon_momentum=1"], "--muon_momentum=1.0 must be < 1"),
    (["--temperature=-0.5"], "--temperature=-0.5 must be >= 0"),
    (["--top_p=1.5"], "--top_p=1.5 must be <= 1"),
    (["--steps=0"], "--steps=0 must be >= 1"),
    (["--arch=ngpt", "--ngpt_proj_every=0"], "--ngpt_proj_every=0 must be >= 1"),
    (["--arch=ngpt", "--ngpt_radius=0"], "--ngpt_radius=0.0 must be > 0"),
    (["--arch=angpt", "--angpt_nu_samples=100"], "--angpt_nu_samples=100 must be >= 1024"),
    (["--n_embd=64", "--mlp_ratio=0.001"], "--mlp_ratio=0.001 gives an MLP of width 0 at --n_embd=64"),
    (["--n_embd=66", "--n_head=2"], "--n_embd=66 / --n_head=2 gives an odd head dim: RoPE rotates pairs"),
    (["--qkv_head_dim=15"], "odd head dim: RoPE"),
])
def test_out_of_range_values_fail_naming_the_flag(flags, message):
    with pytest.raises(ConfigError) as e:
        parse_args(["--preset=cpu", *flags])
    assert message in str(e.value)


def test_odd_head_dim_is_fine_without_rope():
    """The counterpart of the odd-head-dim error: RoPE is what needs pairs."""
    a = parse_args(["--preset=cpu", "--n_embd=66", "--n_head=2", "--no-rope"])
    assert (a.n_embd // a.n_head, a.rope) == (33, False)
    parse_args(["--preset=cpu", "--n_embd=64", "--mlp_ratio=0.02"])  # width 1: the smallest MLP there is


@pytest.mark.parametrize("flag", ["--lr=-1", "--muon_lr=inf", "--keep_checkpoints=0", "--arch=foo"])
def test_main_reports_bad_values_without_a_traceback(flag, capsys):
    assert train_gpt.main(["--preset=cpu", flag, *NO_DATA]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: " + flag.split("=")[0]) and "Traceback" not in err and out == "", err


def test_batch_that_cannot_split_fails_in_parse_args():
    """--batch_size=6 with --device_batch_size=4 cannot split for any world size (6 % 4 != 0); neither can
    --batch_size=8 with --grad_accum=3. Both are invalid combinations known before any data is read."""
    for flags, names in ((["--batch_size=6", "--device_batch_size=4"], ["--batch_size", "--device_batch_size"]),
                         (["--batch_size=8", "--grad_accum=3"], ["--batch_size", "--grad_accum"]),
                         (["--batch_size=4", "--device_batch_size=8"], ["--batch_size", "--device_batch_size"])):
        with pytest.raises(ConfigError) as e:
            parse_args(["--preset=cpu", *flags])
        for n in names:
            assert n in str(e.value)


# ----------------------------------------------------------------------------- the real CLI: --help, validation precedes data

EXPECTED_GROUPS = {  # a few flags of each group, written out; the test checks every field against its metadata too
    "data": ["--train_files", "--val_files", "--seq_len", "--grad_accum"],
    "model": ["--arch", "--vocab_size", "--n_layer", "--mlp_ratio", "--rope_base"],
    "gpt": ["--norm", "--post_norm", "--logit_softcap", "--mlp_skip_threshold"],
    "dyt": ["--dyt_alpha_attn", "--dyt_embed_scale"],
    "ngpt": ["--ngpt_alpha_init", "--ngpt_radius", "--ngpt_residual"],
    "angpt": ["--angpt_alpha_init", "--angpt_nu_samples"],
    "optimizer": ["--optimizer", "--lr", "--muon_lr", "--min_lr_frac"],
    "run": ["--preset", "--steps", "--kernels", "--keep_checkpoints", "--prompt"],
}


def help_sections(text):
    """--help's text -> [(group header, {flag: the rest of its line})] in order."""
    sections = []
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            sections.append((line[:-1], {}))
        elif line.startswith("  --"):
            flag, _, rest = line.strip().partition(" ")
            sections[-1][1][flag] = rest.strip()
    return sections


def test_cli_help_lists_every_flag_with_its_default_by_group():
    r = run_main("--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: train_gpt.py")
    sections = help_sections(r.stdout)
    listed = {flag: (group, rest) for group, flags in sections for flag, rest in flags.items()}
    for group, flags in EXPECTED_GROUPS.items():
        for flag in flags:
            assert listed[flag][0] == group, (flag, listed[flag])
    assert listed["--n_layer"][1].split()[0] == "4" and listed["--lr"][1].split()[0] == "0.0"
    assert listed["--rope"][1].split()[0] == "True" and listed["--prompt"][1].split()[0] == repr("\n")
    assert listed["--mlp"][1].startswith("'relu2' (relu2|swiglu|gelu|silu)") and "MLP activation" in listed["--mlp"][1]
    assert listed["--kernels"][1].startswith("'auto' (auto|triton|torch)")
    # every field, under the group its metadata (or the nearest field above it) names, with its default
    fields = dataclasses.fields(Hyperparameters)
    assert len(listed) == len(fields) == sum(len(f) for _, f in sections)
    group = None
    for f in fields:
        group = f.metadata.get("group") or group
        assert listed[f"--{f.name}"][0] == group, f.name
        assert listed[f"--{f.name}"][1].split()[0] == repr(f.default), f.name
    assert [g for g, _ in sections] == [f.metadata["group"] for f in fields if f.metadata.get("group")]
    assert "presets: --preset=cpu, --preset=speedrun_2024, --preset=speedrun_2025, --preset=speedrun, --preset=speedrun_cpu, --preset=speedrun_medium" in r.stdout


def test_help_wins_over_other_flags(capsys):
    """--help anywhere (or -h first) prints the same usage and exits 0, even next to a typo; a later -h can be a
    flag's value (--prompt -h)."""
    assert train_gpt.main(["--n_layers=bogus", "--help"]) == 0
    out, err = capsys.readouterr()
    assert out == train_gpt.usage() + "\n" and err == ""
    assert "--keep_checkpoints" in out and "run:" in out


def test_cli_bad_combination_fails_before_reading_data():
    r = run_main("--n_embd=100", "--n_head=3", *NO_DATA)
    assert r.returncode != 0
    assert "--n_embd" in r.stderr and "--n_head" in r.stderr, r.stderr
    assert "nonexistent" not in r.stderr and "matches no file" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_typo_and_bad_value():
    r = run_main("--n_layers=3", "--arch=foo", *NO_DATA)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "--n_layers" in r.stderr and "--n_layer?" in r.stderr, r.stderr
    assert "matches no file" not in r.stderr


def test_cli_missing_data_is_reported_after_valid_flags(tmp_path):
    """The counterpart of the tests above: with valid flags the same run does reach the data and names it."""
    r = run_main("--preset=cpu", *NO_DATA, f"--log_dir={tmp_path}")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "--train_files=/nonexistent/*_train_*.bin" in r.stderr and "matches no file" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was logged before the data check


def test_import_has_no_side_effects(tmp_path):
    """Importing train_gpt neither trains, nor parses sys.argv, nor opens a process group."""
    code = ("import sys; sys.argv = ['x', '--n_layers=bogus']; import torch.distributed as d, train_gpt; "
            "assert not d.is_initialized(); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env=cli_env(PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert list(tmp_path.iterdir()) == []


CPUINFO = {  # /proc/cpuinfo excerpts: a Sapphire Rapids (AMX and AVX512-BF16), an AVX2 laptop, a Graviton3 (bf16), a Graviton2
    "spr": "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n",
    "avx2": "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n",
    "graviton3": "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n",
    "graviton2": "processor\t: 0\nFeatures\t: fp asimd atomics\n",
}


@pytest.mark.parametrize("cpu, has", [("spr", "amx_bf16,avx512_bf16"), ("avx2", ""), ("graviton3", "bf16"), ("graviton2", "")])
def test_cpu_precision_follows_the_cpus_bf16_instructions(cpu, has, tmp_path, monkeypatch):
    """Without CUDA and without --bf16/--no-bf16 the run is bf16 exactly when the CPU has bf16 instructions, whatever
    the machine's load: no timing is taken (before: a matmul timed at start picked fp32 on a busy machine that picks bf16
    idle). The log's cpu: line names the reason; the flag forces either; with CUDA bf16 stays the default."""
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO[cpu])
    assert train_gpt.cpu_bf16_instructions(str(info)) == has
    detect = train_gpt.cpu_bf16_instructions
    monkeypatch.setattr(train_gpt, "cpu_bf16_instructions", lambda: detect(str(info)))
    monkeypatch.setattr(train_gpt.time, "perf_counter", lambda: pytest.fail("the precision must not be timed"))
    a = parse_args(["--preset=cpu"], cuda_available=False)
    assert a.bf16 is bool(has)
    assert a.bf16_reason == (has or "no bf16 instructions (avx512_bf16, amx_bf16, aarch64 bf16)")
    assert "bf16_reason" not in dataclasses.asdict(a)  # not a flag: neither in --help nor in the logged config
    for flags, want in ((["--bf16"], True), (["--no-bf16"], False)):
        b = parse_args(["--preset=cpu", *flags], cuda_available=False)
        assert (b.bf16, b.bf16_reason) == (want, "set by the flag")
    assert parse_args(["--preset=cpu"], cuda_available=True).bf16 is True


def test_cpu_precision_reason_is_in_the_log_header(tmp_path):
    """The header's cpu: line says which precision and why: `cpu: bf16 (avx512_bf16)` on such a CPU, `(set by the flag)`
    when --bf16/--no-bf16 chose it."""
    config = parse_args(["--preset=cpu", f"--log_dir={tmp_path}"], cuda_available=False)
    lines = []
    log = lambda msg, console=True: lines.append(msg)
    train_gpt.log_header(log, config, train_gpt.Dist(), "x")
    cpu = next(l for l in lines if l.startswith("cpu: "))
    has = train_gpt.cpu_bf16_instructions()
    assert cpu.startswith(f"cpu: bf16 ({has}), " if has else "cpu: fp32 (no bf16 instructions")
    lines.clear()
    train_gpt.log_header(log, parse_args(["--preset=cpu", "--no-bf16"], cuda_available=False), train_gpt.Dist(), "x")
    assert next(l for l in lines if l.startswith("cpu: ")).startswith("cpu: fp32 (set by the flag), ")


@pytest.mark.parametrize("name, why", [
    ("../esc", "holds a '/'"),                 # before: the checkpoint and the log landed outside --checkpoint_dir / --log_dir
    ("a/b", "holds a '/'"),                    # before: [Errno 2] ... a/b.lock
    (".hidden", "starts with a dot"),
    ("..", "starts with a dot"),
    ("two\nlines", "unprintable"),
    ("x" * 245, "is 245 bytes: at most 240 fit"),  # before: a traceback (File name too long); 255 - len('_step200.pt.tmp')
    ("é" * 121, "is 242 bytes: at most 240 fit"),  # bytes, not characters
])
def test_run_name_must_be_one_short_printable_file_name(name, why):
    """--run_name names <log_dir>/<run_name>_<run id>.txt, <checkpoint_dir>/<run_name>_step<N>.pt (+ .tmp) and
    <run_name>.lock: it must be one printable path component without a leading dot, short enough for its longest file
    name to fit in 255 bytes. One line naming the flag and the rule, from parse_args, before anything is read or written."""
    with pytest.raises(ConfigError) as e:
        parse_args(["--preset=cpu", "--steps=200", f"--run_name={name}"], cuda_available=False)
    msg = str(e.value)
    assert msg.startswith(f"--run_name={name!r} ") and why in msg and "\n" not in msg, msg
    assert "one printable file name without a leading dot" in msg


def test_run_names_that_fit_are_accepted():
    for name in ("my run", "gpt_s0", "x" * 240, "lr=0.02,seed-3", "é" * 120):
        assert parse_args(["--preset=cpu", "--steps=200", f"--run_name={name}"], cuda_available=False).run_name == name
    # the room left depends on --steps: step numbers are part of the checkpoint names
    with pytest.raises(ConfigError, match="at most 236 fit"):
        parse_args(["--preset=cpu", "--steps=2000000", "--run_name=" + "x" * 240], cuda_available=False)


def test_cli_run_name_outside_its_folder_writes_nothing(tmp_path):
    r = run_main("--preset=cpu", "--run_name=../esc", *NO_DATA, f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck")
    assert r.returncode == 2 and r.stderr.startswith("error: --run_name='../esc' holds a '/'") and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_run_sh_help_lists_its_sub_commands_then_the_flags(flag):
    """`./run.sh -h` was an error (train_gpt.py got `--preset=cpu -h`) and `./run.sh --help` listed train_gpt.py's flags
    only. Both print run.sh's usage (train, test, sweep, compare), then train_gpt.py's --help; exit 0."""
    venv = str(Path(sys.executable).parent.parent)  # the venv running the tests: run.sh's setup finds it ready
    r = subprocess.run(["bash", str(ROOT / "run.sh"), flag], capture_output=True, text=True, timeout=120, env=cli_env(VENV=venv))
    assert r.returncode == 0 and "error" not in r.stderr, r.stderr
    head, sep, flags = r.stdout.partition("usage: train_gpt.py")
    assert sep and flags.rstrip().endswith(train_gpt.usage().partition("usage: train_gpt.py")[2].rstrip())
    for sub in ("./run.sh [flags]", "./run.sh test", "./run.sh sweep", "./run.sh compare", "./run.sh -h | --help"):
        assert sub in head, (sub, head)


@pytest.mark.parametrize("preset", ["speedrun", "speedrun_2025"])
@pytest.mark.parametrize("argv", [["--arch=ngpt", "--ngpt_alpha_init=0.15"], ["--arch=angpt"], ["--norm=dyt"]])
def test_speedrun_preset_takes_every_arch(argv, preset):
    """Issues 22 and 31: on a GPU node the default preset is speedrun (the current record), and the README's own
    examples must parse there and under the 2025 record's preset. The batch, schedule, attention pattern, RoPE and
    the recipe apply to every arch; what acts on GPT's residual stream or logits keeps its default under nGPT / anGPT
    (the preset's default, not the user's flag)."""
    c = parse_args(argv + ([f"--preset={preset}"] if preset != "speedrun" else []), cuda_available=True)
    assert c.preset == preset
    gpt_only = [k for k in PRESETS[preset] if train_gpt.flag_archs(k) == ["gpt"]]
    shared = [k for k in PRESETS[preset] if k not in gpt_only]
    assert {k: getattr(c, k) for k in shared} == {k: PRESETS[preset][k] for k in shared}
    changed = [k for k in gpt_only if PRESETS[preset][k] != Hyperparameters.__dataclass_fields__[k].default]
    if c.arch == "gpt":  # DyT is the GPT baseline with another norm: it keeps all of the record
        assert train_gpt.preset_dropped(c) == [] and all(getattr(c, k) == PRESETS[preset][k] for k in gpt_only)
    else:
        assert sorted(train_gpt.preset_dropped(c)) == sorted(changed)
        assert all(getattr(c, k) == Hyperparameters.__dataclass_fields__[k].default for k in gpt_only)


def test_a_typed_flag_that_does_not_apply_still_fails():
    with pytest.raises(ConfigError, match=r"--value_embeds only applies to --arch=gpt \(got --arch=ngpt\)"):
        parse_args(["--arch=ngpt", "--value_embeds=3"], cuda_available=True)
    with pytest.raises(ConfigError, match="--dyt_qk only applies to --norm=dyt"):
        parse_args(["--preset=speedrun", "--no-dyt_qk"])


def test_flag_ownership_is_one_rule_for_configs_and_logged_dicts():
    c = parse_args(["--preset=cpu", "--arch=ngpt"])
    for name in ("value_embeds", "ngpt_alpha_init", "angpt_norm", "dyt_qk", "doc_mask", "lr"):
        assert train_gpt.flag_applies(name, c) == train_gpt.flag_applies(name, dataclasses.asdict(c)), name
    assert not train_gpt.flag_applies("value_embeds", c) and train_gpt.flag_applies("ngpt_alpha_init", c)
    assert train_gpt.flag_applies("doc_mask", c) and not train_gpt.flag_applies("dyt_qk", c)
    assert train_gpt.flag_applies("dyt_qk", {"arch": "gpt", "norm": "dyt"})


def test_arch_and_optimizer_help_come_from_the_archs_table(monkeypatch):
    monkeypatch.setitem(train_gpt.ARCHS, "myarch", type("MyArch", (train_gpt.Arch,), {"optimizer": "adamw"}))
    text = train_gpt.usage()
    assert "architecture: gpt, ngpt, angpt, myarch" in text and "myarch: adamw" in text and "gpt: muon" in text
