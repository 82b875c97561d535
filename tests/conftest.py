"""Shared test set-up: the tiny config, model builder, shards, kernel choice and CLI runner every test file uses.

Triton runs under its interpreter on machines without CUDA: TRITON_INTERPRET must be set before triton is
imported (train_gpt itself never edits the environment), so it is set here, before train_gpt is imported."""
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# one intra-op thread per xdist worker (./run.sh test runs a worker per core: two threads each would fight), else two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

import train_gpt as T  # noqa: E402

# tests train in this process as a CPU training process does (setup_distributed): freed memory stays in the heap, not
# page-faulted in again at every step. Set once, for good: glibc's adaptive thresholds cannot be restored afterwards
T.keep_freed_memory()

# The tiny model most tests build: 2 layers x 64, fp32, torch references (a test that needs Triton asks for it).
TINY = ["--preset=cpu", "--n_layer=2", "--n_embd=64", "--n_head=2", "--seq_len=32", "--batch_size=4",
        "--device_batch_size=4", "--bf16=false", "--kernels=torch"]
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
             "ROLE_RANK", "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the tests of ~20 s or more: real training runs, compiles, the full-shape peer check (deselect with -m 'not slow')")


LONGEST = "test_the_whole_model_matches_the_record"  # the peer check at full shape: 2.5-3 minutes, a fifth of the suite's CPU


def pytest_collection_modifyitems(items):
    """The longest test first, then the other slow tests, then the rest, each group in file order. ./run.sh test hands
    them out one at a time (xdist's load scheduling, --maxschedchunk=1) to whichever worker is free: one starts the
    longest at once, the others take the slow ones, and the last minute is short tests that even the workers out.
    (worksteal ended each worker on a slow test it had taken from the other: ~25 s of one worker idle.)"""
    items.sort(key=lambda item: (item.name != LONGEST, not item.get_closest_marker("slow")))  # stable: file order within each


def tiny_config(*flags) -> T.Hyperparameters:
    """TINY plus flags, parsed and validated as the CLI would."""
    return T.parse_args(TINY + list(flags))


def tiny_model(*flags, seed=0, ops=None) -> T.GPT:
    """A model of tiny_config(*flags), initialised from `seed`, with `ops` (default: the torch references)."""
    torch.manual_seed(seed)
    return T.build_model(tiny_config(*flags), ops)


SMALL_VOCAB = 1024  # model-level tests use a small vocabulary: faster, and the loss at init is ln(SMALL_VOCAB)


def parameter_count(config) -> int:
    """build_model(config)'s parameter count, built on the meta device: the shapes without the GB of init."""
    with torch.device("meta"):
        return sum(p.numel() for p in T.build_model(config).parameters())


def small_vocab_config(*flags, vocab=SMALL_VOCAB) -> T.Hyperparameters:
    return tiny_config(f"--vocab_size={vocab}", *flags)


def small_vocab_model(*flags, vocab=SMALL_VOCAB, seed=0) -> T.GPT:
    return tiny_model(f"--vocab_size={vocab}", *flags, seed=seed)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread in this process, as the CLI runs have (cli_env): on a small shared CPU two threads spin
    against each other (measured ~20x slower). Modules opt in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tokens(b=2, t=32, vocab=50257, seed=0):
    """Random (inputs, targets) token batches."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g), torch.randint(0, vocab, (b, t), generator=g)


def write_tiny_shards(d, rank=None):
    """Three train shards of 600 tokens (a 4 x 32 batch crosses a shard boundary within 5 steps) and one val shard
    of 1,000 tokens, cut from the shipped Shakespeare shards, their ids mapped through `rank` if given."""
    shard = lambda split: np.asarray(T.read_shard(str(ROOT / f"data/shakespeare/shakespeare_{split}_000000.bin")))
    train, val = shard("train")[:1800], shard("val")[:1000]
    if rank is not None:
        train, val = rank[train], rank[val]
    for i in range(3):
        T.write_shard(str(d / f"tiny_train_{i:06d}.bin"), train[600 * i:600 * (i + 1)])
    T.write_shard(str(d / "tiny_val_000000.bin"), val)
    return [f"--train_files={d}/tiny_train_*.bin", f"--val_files={d}/tiny_val_*.bin"]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """write_tiny_shards re-numbered for a SMALL_VOCAB vocabulary (by_frequency over the train split): GPT-2's 50k-row
    embedding and head made a tiny run's steps, validations and checkpoints (75 MB each) cost more than its layers.
    Returns the --train_files / --val_files / --vocab_size flags."""
    rank = by_frequency(np.asarray(T.read_shard(str(ROOT / "data/shakespeare/shakespeare_train_000000.bin"))), SMALL_VOCAB - 1)
    return write_tiny_shards(tmp_path_factory.mktemp("tiny_shards"), rank) + [f"--vocab_size={SMALL_VOCAB}"]


@pytest.fixture(scope="session")
def tiny_gpt2_shards(tmp_path_factory):
    """write_tiny_shards with GPT-2's ids (for a run that samples text, or whose thresholds were set at GPT-2's vocabulary)."""
    return write_tiny_shards(tmp_path_factory.mktemp("tiny_gpt2_shards"))


def by_frequency(tok, n, first=0, leave_out=None):
    """A lookup table over GPT-2 ids: the n most frequent ids of `tok` (leave_out aside) -> first, first+1, ... by
    frequency; every other id -> first + n."""
    ids, counts = np.unique(tok[tok != leave_out] if leave_out is not None else tok, return_counts=True)
    rank = np.full(1 << 16, first + n, dtype=np.int64)
    top = ids[np.argsort(-counts, kind="stable")][:n]
    rank[top] = np.arange(first, first + len(top))
    return rank


@pytest.fixture(scope="session")
def frequent_token_shards(tmp_path_factory):
    """Shakespeare re-numbered for a SMALL_VOCAB vocabulary: the SMALL_VOCAB-1 most frequent GPT-2 tokens of the train
    split keep an id each (by frequency), every other token shares the last. Still language, and a run's 50k-row
    head no longer dominates its cost. Train 100,000 tokens, val 2,000; frequent_token_files(folder) gives the flags."""
    d = tmp_path_factory.mktemp("frequent_tokens")
    tok = np.asarray(T.read_shard(str(ROOT / "data/shakespeare/shakespeare_train_000000.bin")))
    small = by_frequency(tok, SMALL_VOCAB - 1)[tok]
    T.write_shard(str(d / "syn_train_000000.bin"), small[:100_000])
    T.write_shard(str(d / "syn_val_000000.bin"), small[100_000:102_000])
    return d


def frequent_token_files(d):
    return [f"--train_files={d}/syn_train_*.bin", f"--val_files={d}/syn_val_*.bin", f"--vocab_size={SMALL_VOCAB}"]


DOC_VOCAB, DOC_EOT = 1024, 0  # documents_shards: the vocabulary, and the id that starts a document in it


@pytest.fixture(scope="session")
def documents_shards(tmp_path_factory):
    """Shakespeare re-numbered by frequency for a 1,024-token vocabulary: EOT -> id 0, the 1,022 most frequent other
    tokens -> 1..1022, the rest -> 1023. The plays are ~40K-token documents, so an EOT is also put at every 40th-400th
    token (seeded): most 256-token rows then hold several documents. Tests that read documents set T.EOT_TOKEN to
    DOC_EOT (monkeypatch). Returns the folder: sr_train_000000.bin (120,000 tokens) and sr_val_000000.bin (20,000)."""
    d = tmp_path_factory.mktemp("documents")
    tok = np.asarray(T.read_shard(str(ROOT / "data/shakespeare/shakespeare_train_000000.bin"))).astype(np.int64)
    rank = by_frequency(tok, DOC_VOCAB - 2, first=1, leave_out=T.EOT_TOKEN)
    rank[T.EOT_TOKEN] = DOC_EOT
    small = rank[tok[:140_000]]
    rng = np.random.default_rng(0)
    cuts = np.cumsum(rng.integers(40, 400, size=2000))
    small[cuts[cuts < len(small)]] = DOC_EOT
    T.write_shard(str(d / "sr_train_000000.bin"), small[:120_000])
    T.write_shard(str(d / "sr_val_000000.bin"), small[120_000:])
    return d


@pytest.fixture
def triton_ops():
    """The Triton ops, run by Triton's interpreter on a CPU."""
    pytest.importorskip("triton")
    return T.Ops("triton", "cpu")


@contextlib.contextmanager
def kept_signal_handlers():
    """train() installs SIGTERM/SIGINT handlers: an in-process run gives pytest's back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def train_in_process(config) -> int:
    """The real train loop in this process (a world of one); returns its exit code."""
    with kept_signal_handlers():
        return T.train(config, T.Dist())


def cli_env(**extra):
    """The environment of a CLI run: no torchrun variables from outside, one thread (the CPU is shared)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and not k.startswith("TORCHELASTIC")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def cli_command(args, world=1):
    if world == 1:
        return [sys.executable, str(ROOT / "train_gpt.py"), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
            str(ROOT / "train_gpt.py"), *args]


def run_cli(*args, world=1, cwd=ROOT, timeout=300, **env):
    """`python train_gpt.py ARGS` (or torchrun with `world` processes, gloo) as a subprocess."""
    return subprocess.run(cli_command(args, world), cwd=cwd, env=cli_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def run_main(*args, cwd=ROOT):
    """train_gpt.main(ARGS) in this process, answered like run_cli (exit code, stdout, stderr) and run as it is (one
    thread, from cwd): the same code from the command line on, without the ~3 CPU-s of a torch start-up per run. An
    exception main lets out is printed as the interpreter would (a traceback on stderr, exit 1). What needs a process
    of its own stays on run_cli: signals, a lock held by a killed run, torchrun, the environment read at import, a
    file that may run code when loaded, an allocation that may not fail."""
    out, err, here, threads = io.StringIO(), io.StringIO(), os.getcwd(), torch.get_num_threads()
    try:
        os.chdir(cwd); torch.set_num_threads(1)
        with kept_signal_handlers(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = T.main(list(args))
            except Exception:
                traceback.print_exc(); rc = 1
    finally:
        os.chdir(here); torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["train_gpt.py", *args], rc, out.getvalue(), err.getvalue())


STEP_RE = re.compile(r"^step:(\d+)/(\d+) (val_loss|train_loss):(\S+) (.*)$", re.M)


def step_lines(text):
    """{'train': {step: loss}, 'val': {step: (loss, {field: value})}} from a log or stdout (a later line wins)."""
    out = {"train": {}, "val": {}}
    for step, _, kind, loss, rest in STEP_RE.findall(text):
        fields = dict(kv.split(":", 1) for kv in rest.split() if ":" in kv)
        if kind == "train_loss":
            out["train"][int(step)] = float(loss)
        else:
            out["val"][int(step)] = (float(loss), fields)
    return out
