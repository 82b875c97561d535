"""End to end: the real CLI on tiny shards (log format, config line, step lines, sample, peak memory, and
records/compare.py reading the log), a 2-process torchrun/gloo run against the 1-process run with the same
global batch, and the speedrun preset at full size for one CPU step."""
import json
import math
import re
import sys
import subprocess

import pytest
import torch

import train_gpt as tg
from conftest import ROOT, STEP_RE, TINY, run_cli, step_lines, train_in_process

sys.path.insert(0, str(ROOT / "records"))
import compare  # noqa: E402  (records/compare.py)

STEPS, VAL_EVERY = 5, 2
FLAGS = [*TINY, "--arch=gpt", f"--steps={STEPS}", f"--val_every={VAL_EVERY}", "--val_tokens=256", "--sample_tokens=8",
         "--seed=3", "--run_name=e2e", "--prompt=ROMEO:", "--temperature=0.8"]
# what FLAGS must come back as in the config line (written out, not parsed by the code under test)
EXPECTED_CONFIG = dict(preset="cpu", arch="gpt", n_layer=2, n_embd=64, n_head=2, seq_len=32, batch_size=4, steps=STEPS,
                       val_every=VAL_EVERY, val_tokens=256, sample_tokens=8, bf16=False, kernels="torch", seed=3,
                       run_name="e2e", prompt="ROMEO:", temperature=0.8)

pytestmark = pytest.mark.usefixtures("one_thread")


def train_cli(base, shards, *extra, world=1):
    """Runs train_gpt.py in base/ (logs in base/logs, a checkpoint of the last step in base/ckpt); returns the
    completed process and its one log file."""
    log_dir = base / "logs"
    r = run_cli(*FLAGS, *shards, f"--log_dir={log_dir}", f"--save_every={STEPS}", f"--checkpoint_dir={base / 'ckpt'}",
                *extra, world=world, cwd=base)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    logs = sorted(log_dir.iterdir())
    assert len(logs) == 1 and logs[0].suffix == ".txt", logs  # exactly one log, however many ranks
    return r, logs[0]


def timed_lines(text):
    """{(kind, step): (loss, train_time ms, step_avg ms)} of a log, checking that every step line parses, counts to
    STEPS and appears once."""
    out = {}
    for line in text.splitlines():
        if line.startswith("step:"):
            m = STEP_RE.match(line)
            t = m and re.match(r"train_time:(\d+)ms step_avg:([\d.]+)ms( |$)", m[5])
            assert t, f"unparseable step line: {line!r}"
            assert int(m[2]) == STEPS
            key = (m[3], int(m[1]))
            assert key not in out, f"repeated {key}"
            out[key] = (float(m[4]), int(t[1]), float(t[2]))
    return out


def losses(text, kind):
    """{step: loss} of the train or val lines."""
    return {s: (v[0] if kind == "val" else v) for s, v in step_lines(text)[kind].items()}


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_shards):
    source_before = (ROOT / "train_gpt.py").read_text()
    r, log = train_cli(tmp_path_factory.mktemp("single"), tiny_shards, "--device_batch_size=2")  # grad_accum 2
    return r, log, log.read_text(), {source_before, (ROOT / "train_gpt.py").read_text()}


# ----------------------------------------------------------------------------- the log of one CLI run

def test_log_header_is_the_source_then_a_separator(single):
    _, _, text, sources = single
    source = next((s for s in sources if text.startswith(s)), None)
    assert source is not None, "the log does not start with train_gpt.py's source"
    rest = text[len(source):].lstrip("\n").split("\n")
    assert rest[0] == "=" * 100
    assert rest[1].startswith("torch ") and "world_size 1" in rest[1]  # versions and hardware
    assert rest[2].startswith("cpu: fp32 (set by the flag), ") and rest[2].endswith(" threads")  # the CPU's precision and threads
    assert rest[3].startswith("config: {")


def test_config_line_is_the_flags(single):
    _, log, text, _ = single
    lines = [l for l in text.splitlines() if l.startswith("config: ")]
    assert len(lines) == 1
    cfg = json.loads(lines[0][len("config: "):])
    assert {k: cfg[k] for k in EXPECTED_CONFIG} == EXPECTED_CONFIG
    assert cfg["device_batch_size"] == 2 and cfg["world_size"] == 1 and cfg["log_dir"] == str(log.parent)
    assert cfg["train_files"].endswith("tiny_train_*.bin") and cfg["val_files"].endswith("tiny_val_*.bin")
    assert cfg["run_id"] == log.stem and log.stem.startswith("e2e_")
    # every Hyperparameters field is there, so a run can be reproduced from its log alone
    assert set(tg.Hyperparameters.__dataclass_fields__) <= set(cfg)


def test_step_lines(single):
    r, _, text, _ = single
    lines = timed_lines(text)
    val_steps = sorted(s for k, s in lines if k == "val_loss")
    train_steps = sorted(s for k, s in lines if k == "train_loss")
    assert val_steps == [0, 2, 4, 5]  # step 0, every val_every, and the last step
    assert train_steps == [1, 2, 3, 4, 5]
    assert lines[("val_loss", 0)] == (pytest.approx(math.log(50304), abs=1e-4), 0, 0.0)  # zero head at init
    times = [lines[("train_loss", s)][1] for s in train_steps]
    assert times == sorted(times) and times[-1] > 0
    for s in train_steps:  # step_avg = train_time / step (to the logged rounding)
        loss, t, avg = lines[("train_loss", s)]
        assert 0 < loss < 12 and abs(avg - t / s) <= 0.5 + 0.01 * avg
        if ("val_loss", s) in lines:  # a val line reports the clock of the train step before it
            assert lines[("val_loss", s)][1] == t
    assert lines[("train_loss", 5)][0] < lines[("train_loss", 1)][0] - 0.2  # it learns
    assert lines[("val_loss", 5)][0] < lines[("val_loss", 0)][0]
    order = [l for l in text.splitlines() if l.startswith("step:")]
    assert order[0].startswith("step:0/5 val_loss") and order[-1].startswith("step:5/5 val_loss")
    train_lines = [l for l in order if "train_loss" in l]
    assert all(re.search(r" tok/s:\d+$", l) for l in train_lines)
    assert "step:5/5 val_loss" in r.stdout  # also printed


def test_sample_and_peak_memory(single):
    r, _, text, _ = single
    lines = text.rstrip("\n").split("\n")
    assert lines[-1].startswith("peak memory") and "MiB" in lines[-1]
    samples = [l for l in lines if l.startswith("sample: ")]
    assert len(samples) == 1
    sample = json.loads(samples[0][len("sample: "):])
    assert isinstance(sample, str) and sample.startswith("ROMEO:") and len(sample) > len("ROMEO:")
    assert sample in r.stdout  # and shown on the console
    assert lines.index(samples[0]) > max(i for i, l in enumerate(lines) if l.startswith("step:"))


def test_compare_parses_the_log(single):
    _, log, text, _ = single
    run = compare.parse_log(str(log))
    assert run is not None and not run.incomplete
    cfg = json.loads(next(l for l in text.splitlines() if l.startswith("config: "))[len("config: "):])
    assert run.config == cfg and run.total_steps == STEPS
    assert sorted(run.val) == [0, 2, 4, 5] and sorted(run.train) == [1, 2, 3, 4, 5]
    assert run.final_val_loss == losses(text, "val")[5]
    assert run.train[3]["train_loss"] == losses(text, "train")[3]
    assert run.step_ms is not None and run.step_ms > 0


# ----------------------------------------------------------------------------- DDP

def final_model(base):
    """The model of a run's last checkpoint and its val loss on the run's val tokens, in full precision."""
    ckpt = torch.load(base / "ckpt" / f"e2e_step{STEPS}.pt", map_location="cpu", weights_only=False)
    a = tg.Hyperparameters(**{k: v for k, v in ckpt["args"].items() if k in tg.Hyperparameters.__dataclass_fields__})
    model = tg.build_model(a)
    model.load_state_dict(ckpt["model"])
    val = tg.load_val_tokens(tg.find_shards(a.val_files, "val_files"), a.val_tokens // a.seq_len * a.seq_len)
    with torch.no_grad():
        loss = model(val[:-1].view(-1, a.seq_len), val[1:].view(-1, a.seq_len)).item()
    return ckpt["model"], loss


def test_two_process_gloo_matches_one_process(tmp_path, tiny_shards, single):
    """The same command under torchrun --nproc_per_node=2 (2 ranks x 2 sequences) and under plain python (one
    process, grad_accum 2 x 2 sequences): the same global batch of 4, so the same training."""
    _, log1, text1, _ = single
    r, log2 = train_cli(tmp_path, tiny_shards, "--device_batch_size=2", world=2)
    text2 = log2.read_text()
    cfg = json.loads(next(l for l in text2.splitlines() if l.startswith("config: "))[len("config: "):])
    assert cfg["world_size"] == 2 and cfg["device_batch_size"] == 2
    assert "grad_accum: 1 micro_batch: 2" in text2 and "grad_accum: 2 micro_batch: 2" in text1
    l1, l2 = losses(text1, "train"), losses(text2, "train")
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5]
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-5, (s, l1, l2)
    v1, v2 = losses(text1, "val"), losses(text2, "val")
    assert sorted(v1) == sorted(v2) == [0, 2, 4, 5]
    for s in v1:  # the ranks sum their val rows in another order: allow the 4th logged decimal to round apart
        assert abs(v1[s] - v2[s]) <= 1.01e-4, (s, v1, v2)
    # in full precision, from the final checkpoints: the same weights and val loss within 1e-5
    w1, loss1 = final_model(log1.parent.parent)
    w2, loss2 = final_model(tmp_path)
    assert abs(loss1 - loss2) <= 1e-5 and loss1 < math.log(50304) - 0.01
    for name in w1:
        assert (w1[name] - w2[name]).abs().max() <= 1e-5, name
    assert len(re.findall(r"^sample: ", text2, re.M)) == 1  # rank 0 alone samples and logs


# ----------------------------------------------------------------------------- the GPU recipe, one step on the CPU

def test_speedrun_2024_preset_builds_full_size_and_steps_on_cpu(tmp_path):
    sp = str(ROOT / "data" / "shakespeare")
    a = tg.parse_args(["--preset=speedrun_2024", "--seq_len=64", "--batch_size=2", "--device_batch_size=2", "--val_tokens=128",
                       "--steps=1", "--compile=false", "--bf16=false", "--sample_tokens=0", f"--log_dir={tmp_path}",
                       f"--checkpoint_dir={tmp_path}/ck",
                       f"--train_files={sp}/shakespeare_train_*.bin", f"--val_files={sp}/shakespeare_val_*.bin"])
    assert (a.n_layer, a.n_embd, a.n_head, a.vocab_size, a.tie_embeddings) == (12, 768, 6, 50304, False)
    assert train_in_process(a) == 0  # in this process: no CLI start-up to pay for a 162M-parameter step
    (log,) = tmp_path.glob("*.txt")
    text = log.read_text()
    n_params = int(re.search(r"^parameters: ([\d,]+)", text, re.M)[1].replace(",", ""))
    d, L, V = 768, 12, 50304
    blocks = L * (4 * d * d + 2 * 4 * d * d)  # q, k, v, out + 4x MLP; no norm weights in the baseline
    assert n_params == blocks + 2 * V * d  # untied head
    assert abs((n_params - V * d) - 124e6) / 124e6 < 0.01  # GPT-2 small's ~124M without the head
    assert "grad_accum: 1 micro_batch: 2" in text
    tr, va = losses(text, "train"), losses(text, "val")
    assert sorted(tr) == [1] and sorted(va) == [0, 1]
    assert va[0] == pytest.approx(math.log(V), abs=1e-4) and math.isfinite(tr[1])
    assert va[1] < va[0] - 0.1  # one real optimizer step at full size
    assert text.rstrip().split("\n")[-1].startswith("peak memory")



def test_speedrun_preset_has_the_records_parameter_count():
    """--preset=speedrun builds the 2025-01-16 record's model: 275,598,388 parameters there (embeddings of 50,257
    rows, the head padded to 50,304); ours pads the four embeddings to 50,304 too: 4 x 47 x 768 more."""
    a = tg.parse_args(["--preset=speedrun", "--compile=false"])
    n = sum(p.numel() for p in tg.build_model(a).parameters())
    assert n == 275_598_388 + 4 * 47 * 768


def test_slurm_script_wraps_torchrun_with_a_rendezvous():
    """slurm.sbatch: valid bash, one torchrun per node meeting at a c10d rendezvous, flags passed through."""
    script = ROOT / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "--rdzv_backend=c10d" in text and '--nnodes="$SLURM_JOB_NUM_NODES"' in text and 'train_gpt.py "$@"' in text
