"""End to end: the real CLI on tiny shards (log format, config line, step lines, sample, peak memory, and
records/compare.py reading the log); 2 processes, 2 nodes (x 1 and x 2 processes, two torchrun agents on this host)
and slurm.sbatch in a faked Slurm job, each against one process with the same global batch (torchrun, gloo); the
speedrun preset at full size for one CPU step; and the speedrun compiled: one graph through the window schedule."""
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import train_gpt as tg
from conftest import ROOT, SMALL_VOCAB, STEP_RE, TINY, cli_env, parameter_count, run_cli, run_main, step_lines, train_in_process

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


def run_flags(base, shards, *extra):
    """FLAGS for a run in base/: logs in base/logs, a checkpoint of the last step in base/ckpt."""
    return [*FLAGS, *shards, f"--log_dir={base / 'logs'}", f"--save_every={STEPS}", f"--checkpoint_dir={base / 'ckpt'}", *extra]


def the_log(base):
    logs = sorted((base / "logs").iterdir())
    assert len(logs) == 1 and logs[0].suffix == ".txt", logs  # exactly one log, however many ranks
    return logs[0]


def train_cli(base, shards, *extra, world=1):
    """Runs train_gpt.py in base/ (run_flags): one process in this one (run_main), more under torchrun; returns the
    completed process and its one log file."""
    args = run_flags(base, shards, *extra)
    r = run_main(*args, cwd=base) if world == 1 else run_cli(*args, world=world, cwd=base)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, the_log(base)


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
    assert lines[("val_loss", 0)] == (pytest.approx(math.log(SMALL_VOCAB), abs=1e-4), 0, 0.0)  # zero head at init (tiny_shards' vocabulary)
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


def test_sample_and_peak_memory(tiny_gpt2_shards, tmp_path, capsys):
    """A run on GPT-2's ids (single's vocabulary is too small to decode) ends with a sample from the prompt after its
    last step line, in the log and on the console, then the peak memory."""
    assert train_in_process(tg.parse_args(run_flags(tmp_path, tiny_gpt2_shards, "--steps=1"))) == 0
    text = the_log(tmp_path).read_text()
    lines = text.rstrip("\n").split("\n")
    assert lines[-1].startswith("peak memory") and "MiB" in lines[-1]
    samples = [l for l in lines if l.startswith("sample: ")]
    assert len(samples) == 1
    sample = json.loads(samples[0][len("sample: "):])
    assert isinstance(sample, str) and sample.startswith("ROMEO:") and len(sample) > len("ROMEO:")
    assert sample in capsys.readouterr().out  # and shown on the console
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


def single_dir(single):
    return single[1].parent.parent  # the folder of the `single` run (its log is in logs/)


def assert_trains_like_one_process(one, base, world, micro, train_tol=1e-5, exact_weights=True):
    """The run in base/ (`world` ranks x `micro` sequences) against the run in `one` (one process, grad_accum 4 /
    micro x micro sequences: the same global batch of 4 in micro-batches of the same shape): the same logged train
    losses (within train_tol: 1e-5 = the same 4 decimals), val losses to the 4th logged decimal, and, from the
    final checkpoints in full precision, the same val loss within 1e-5 and weights within 1e-5 (exact_weights: each
    element; else each tensor's difference in norm, relative). Rank 0 alone logs and samples. Why not exact
    always: a sum of more than two gradients rounds by its order, and Adam's first steps turn a rounding-level
    gradient into a whole lr step in a few embedding elements (4 ranks against 4 accumulated micro-batches: 42 of
    3.2M wte elements apart by up to 2.7e-4, 3e-7 in norm; micro-batches of another shape: 2.5e-3)."""
    text1, text2 = the_log(one).read_text(), the_log(base).read_text()
    cfg = json.loads(next(l for l in text2.splitlines() if l.startswith("config: "))[len("config: "):])
    assert cfg["world_size"] == world and cfg["device_batch_size"] == micro
    assert f"grad_accum: {4 // (world * micro)} micro_batch: {micro}" in text2 and f"grad_accum: {4 // micro} micro_batch: {micro}" in text1
    l1, l2 = losses(text1, "train"), losses(text2, "train")
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5]
    for s in l1:
        assert abs(l1[s] - l2[s]) <= train_tol, (s, l1, l2)
    v1, v2 = losses(text1, "val"), losses(text2, "val")
    assert sorted(v1) == sorted(v2) == [0, 2, 4, 5]
    for s in v1:  # the ranks sum their val rows in another order: allow the 4th logged decimal to round apart
        assert abs(v1[s] - v2[s]) <= 1.01e-4, (s, v1, v2)
    w1, loss1 = final_model(one)
    w2, loss2 = final_model(base)
    assert abs(loss1 - loss2) <= 1e-5 and loss1 < math.log(50304) - 0.01
    for name in w1:
        if exact_weights:
            assert (w1[name] - w2[name]).abs().max() <= 1e-5, name
        else:
            assert (w1[name] - w2[name]).norm() <= 1e-5 * w1[name].norm(), name
    assert len(re.findall(r"^sample: ", text2, re.M)) == 1


def test_two_process_gloo_matches_one_process(tmp_path, tiny_shards, single):
    """The same command under torchrun --nproc_per_node=2 (2 ranks x 2 sequences) and under plain python."""
    train_cli(tmp_path, tiny_shards, "--device_batch_size=2", world=2)
    assert_trains_like_one_process(single_dir(single), tmp_path, world=2, micro=2)


# ----------------------------------------------------------------------------- several nodes, on one host

def descendants(pid):
    """Every process below pid (torchrun starts its workers in sessions of their own: killing the agent's group
    would leave them)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids; todo += kids
    return out


def run_together(cmds, cwd, timeout=300, env=None):
    """Starts the commands at once (each in its own session, output to cwd/proc<i>.out/.err) and waits for all.
    When one fails or `timeout` passes, kills them all and everything they started (a node left waiting for a
    rendezvous that will not complete would wait 10 minutes), then fails the test with every process's stderr."""
    procs, files = [], []
    for i, cmd in enumerate(cmds):
        out, err = open(cwd / f"proc{i}.out", "w"), open(cwd / f"proc{i}.err", "w")
        files.append((out, err))
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env or cli_env(), stdout=out, stderr=err, start_new_session=True))
    deadline, why = time.monotonic() + timeout, None
    while why is None and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            why = "a process failed"
        elif time.monotonic() > deadline:
            why = f"timed out after {timeout} s"
        else:
            time.sleep(0.5)
    for p in procs:  # what still runs after a failure: its workers first (their agent would restart them), then it
        if p.poll() is None:  # (an exited process's id may be someone else's by now)
            for pid in descendants(p.pid)[::-1] + [p.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        p.wait()
    for out, err in files:
        out.close(); err.close()
    texts = [((cwd / f"proc{i}.out").read_text(), (cwd / f"proc{i}.err").read_text()) for i in range(len(cmds))]
    if why or any(p.returncode for p in procs):
        def errors(err):  # the workers' own error lines first: torchrun's report of them fills the tail
            return "\n".join([l for l in err.splitlines() if re.match(r"(\[rank\d+\]: )?\w*(error|Error)\b", l)][:10])
        report = "\n".join(f"--- process {i} (rc {p.returncode}): {' '.join(map(str, cmd))}\n{errors(err)}\n...\n{err[-1500:]}"
                           for i, (p, cmd, (_, err)) in enumerate(zip(procs, cmds, texts)))
        pytest.fail(f"{why or 'a process failed'}\n{report}", pytrace=False)
    return texts


def node_command(nodes, per_node, port, args):
    """README's multi-node command: one torchrun per node, meeting at a c10d rendezvous (here on this host)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={per_node}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=job{port}", str(ROOT / "train_gpt.py"), *args]


@pytest.mark.slow
def test_two_nodes_of_two_processes_match_one_process(tmp_path, tiny_shards):
    """2 nodes x 2 processes x 1 sequence against one process accumulating 4 x 1 sequence. Four ranks sum the
    gradients in another order (see assert_trains_like_one_process): the logged train losses may round apart in the
    4th decimal, and the weights agree in norm."""
    (tmp_path / "one").mkdir()
    train_cli(tmp_path / "one", tiny_shards, "--device_batch_size=1")
    port = tg._free_port()
    run_together([node_command(2, 2, port, run_flags(tmp_path, tiny_shards, "--device_batch_size=1"))] * 2, tmp_path)
    assert_trains_like_one_process(tmp_path / "one", tmp_path, world=4, micro=1, train_tol=1.01e-4, exact_weights=False)


FAKE_SRUN = """#!/bin/bash
# srun of a batch step: the command once per node, at once, each with its node's variables; fails if one fails
pids=()
for ((n = 0; n < SLURM_NNODES; n++)); do
  SLURM_NODEID=$n SLURM_PROCID=$n SLURM_LOCALID=0 SLURMD_NODENAME=node$n "$@" & pids+=($!)
done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
"""
FAKE_SCONTROL = """#!/bin/bash
# scontrol show hostnames A,B,...: one name a line (enough for the node list the test gives)
[ "$1 $2" = "show hostnames" ] && tr , '\\n' <<< "$3"
"""


@pytest.mark.slow
def test_slurm_script_runs_two_nodes_like_one_process(tmp_path, tiny_shards, single):
    """slurm.sbatch itself (bash) in a faked 2-node job: SLURM_* variables, a fake srun that starts the per-node
    torchrun twice on this host, a fake scontrol that names 127.0.0.1 the head node. 2 nodes x 1 process, the same
    training as one process (this run is also the suite's 2 x 1 check: a rank taken from LOCAL_RANK fails it)."""
    assert subprocess.run(["bash", "-n", str(ROOT / "slurm.sbatch")], capture_output=True).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL),
                       ("torchrun", f'#!/bin/bash\nexec {sys.executable} -m torch.distributed.run "$@"\n')]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    port = tg._free_port()
    env = cli_env(PATH=f"{bin_dir}:{os.environ['PATH']}", TORCHRUN=str(bin_dir / "torchrun"), RDZV_PORT=str(port),
                  SLURM_JOB_ID=str(port), SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="127.0.0.1,127.0.0.2",
                  SLURM_SUBMIT_DIR=str(ROOT), SLURM_GPUS_ON_NODE="1", SLURM_NODEID="0")
    run_together([["bash", str(ROOT / "slurm.sbatch"), *run_flags(tmp_path, tiny_shards, "--device_batch_size=2")]], tmp_path, env=env)
    assert_trains_like_one_process(single_dir(single), tmp_path, world=2, micro=2)


# ----------------------------------------------------------------------------- the GPU recipe, one step on the CPU

@pytest.mark.slow
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
    """--preset=speedrun_2025 builds the 2025-01-16 record's model: 275,598,388 parameters there (embeddings of 50,257
    rows, the head padded to 50,304); ours pads the four embeddings to 50,304 too: 4 x 47 x 768 more."""
    a = tg.parse_args(["--preset=speedrun_2025", "--compile=false"])
    assert parameter_count(a) == 275_598_388 + 4 * 47 * 768


# ----------------------------------------------------------------------------- the speedrun compiled: one graph

# --preset=speedrun_2025 at a CPU size with the record's window schedule: --attn_window=512 over 8 steps grows the long
# window through 1, 2, 3 and 4 blocks ((512/128 - 0.5) * step / 8, rounded up), the short one through 1 and 2
COMPILED_SPEEDRUN = ["--preset=speedrun_2025", "--n_layer=2", "--n_embd=64", "--n_head=2", "--seq_len=512", "--batch_size=2",
                     "--device_batch_size=1", "--attn_window=512", "--steps=8", "--val_every=4", "--val_tokens=1024",
                     "--sample_tokens=0", "--bf16=false", "--kernels=torch"]


def drive(tmp_path, *flags):
    """The train loop of COMPILED_SPEEDRUN + flags by hand (validation every val_every steps): per step, its train
    loss, its long window (blocks) and dynamo's count of graphs compiled so far."""
    sp = ROOT / "data" / "shakespeare"
    a = tg.parse_args([*COMPILED_SPEEDRUN, *flags, f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck",
                       f"--train_files={sp}/shakespeare_train_*.bin", f"--val_files={sp}/shakespeare_val_*.bin"])
    t, out = tg.start(a, tg.Dist()), []
    for step in range(a.steps):
        if step % a.val_every == 0:
            t.log_validation()
        loss = t.train_step()
        t.step += 1
        out.append((loss, int(t.raw_model.arch.window_blocks), counters["stats"]["unique_graphs"]))
    t.log_validation()
    return out, counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_speedrun_compiles_once_through_the_window_schedule(tmp_path):
    """--compile on a CPU: the speedrun's step compiles one train graph and one eval graph (model.eval() is a guard
    dynamo keys on) at step 1, then none more while the window grows and train and eval alternate: the window is a
    tensor the masks read, not a Python int dynamo would specialise on. No graph breaks. The losses are eager's."""
    torch._dynamo.reset(); counters.clear()
    compiled, graphs_at_end = drive(tmp_path / "compiled", "--compile")
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert sorted({w for _, w, _ in compiled}) == [1, 2, 3, 4]
    assert [g for _, _, g in compiled] == [2] * 8 and graphs_at_end == 2, compiled
    eager, _ = drive(tmp_path / "eager", "--no-compile")
    assert [w for _, w, _ in eager] == [w for _, w, _ in compiled]
    # inductor fuses and reorders fp32 sums: the first steps' losses agree to rounding; then Adam (eps 1e-10) and
    # Muon grow the rounding step by step (0.3% by step 5, measured), as between any two summation orders
    lc, le = [l for l, _, _ in compiled], [l for l, _, _ in eager]
    assert lc[:2] == pytest.approx(le[:2], rel=1e-5) and lc == pytest.approx(le, rel=1e-2), (lc, le)


def test_compiled_block_mask_does_not_recompile_as_the_window_grows(monkeypatch):
    """The CUDA path's masks (BlockMask from block lists, FlexAttention) traced by dynamo on a CPU: one graph for
    every window, and each window's output is eager's (so the traced graph reads the window, not a constant).
    Forward only and aot_eager: FlexAttention has no CPU backward, and inductor's CPU template rejects this shape;
    the guards (what would recompile) are dynamo's, the same on both devices."""
    torch._dynamo.reset(); counters.clear()
    a = tg.parse_args([*COMPILED_SPEEDRUN, "--vocab_size=1024"])
    torch.manual_seed(0)
    model = tg.build_model(a)
    for p in model.parameters():  # away from the zero init, so that the output depends on every layer
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randint(0, 1000, (1, 512))
    x[0, ::150] = tg.EOT_TOKEN % 1024  # documents of 150 tokens: partial blocks at their boundaries
    monkeypatch.setattr(tg, "dense_attention_mask", tg.block_attention_mask)  # what attention_masks takes on CUDA
    def run(forward):  # [(long window, loss)] over the schedule's steps
        out = []
        with torch.no_grad():
            for step in range(a.steps):
                model.arch.before_step(step)
                out.append((int(model.arch.window_blocks), forward(x, x).item()))
        return out
    compiled = run(torch.compile(model, backend="aot_eager"))
    graphs = counters["stats"]["unique_graphs"]  # read before eager FlexAttention, which compiles a graph of its own
    assert graphs == 1 and not counters["graph_break"], (dict(counters["stats"]), dict(counters["graph_break"]))
    outs = [(w, c, e) for (w, c), (_, e) in zip(compiled, run(model))]
    assert sorted({w for w, _, _ in outs}) == [1, 2, 3, 4]
    for w, c, e in outs:
        assert abs(c - e) <= 1e-5 * abs(e), outs
    by_window = {w: e for w, _, e in outs}
    assert len(set(by_window.values())) == 4, by_window  # the window changes the output
