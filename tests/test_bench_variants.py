"""The benchmark scripts run on a CPU: tests/bench_variants.py prints its table (a smoke test: no timing is asserted,
the numbers are noise here); tests/bench_kernels.py (GPU only) covers every op of train_gpt.OPS with inputs its ops accept."""
import re
import subprocess
import sys

import pytest
import torch

import train_gpt as T
from conftest import ROOT, cli_env


def test_bench_variants_prints_side_by_side_ratios(tmp_path):
    out = tmp_path / "bench.txt"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "bench_variants.py"), "--reps=3", "--warmup=1",
                        "--scale=--preset=cpu --n_layer=1 --n_embd=64 --n_head=2 --seq_len=16 --batch_size=2 "
                        "--device_batch_size=2 --kernels=torch", "--out", str(out),
                        "--configs", "gpt=", "ngpt=--arch=ngpt", "angpt=--arch=angpt", "skip=--mlp_skip_threshold=100"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=cli_env())
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {l.split()[0]: l.split() for l in r.stdout.splitlines() if l and not l.startswith(("#", "config"))}
    assert list(rows) == ["gpt", "ngpt", "angpt", "skip"] and out.read_text() == r.stdout
    assert rows["gpt"][-4:-1] == ["1.000", "[1.000,", "1.000]"] and rows["gpt"][-1] == "-"
    for label in ("ngpt", "angpt", "skip"):
        ms, ratio, p = float(rows[label][-5]), float(rows[label][-4]), float(rows[label][-1])
        assert ms > 0 and ratio > 0 and 0 <= p <= 1
    assert re.search(r"3 rounds \(\+1 warm-up\), device cpu", r.stdout)


def test_bench_kernels_covers_every_op():
    """bench_kernels.py's op list is train_gpt.OPS, and its inputs run through each Triton op (the interpreter here)
    close to the reference; without a GPU the script says so and exits 0."""
    pytest.importorskip("triton")
    import bench_kernels
    assert list(bench_kernels.TENSORS) == list(T.OPS)
    for op in T.OPS:
        args = bench_kernels.make_args(op, 3, 64, "cpu")
        assert bench_kernels.max_error(op, args, T) < 0.02, op
    if not torch.cuda.is_available():
        assert bench_kernels.main([]) == 0


# bytes saved for the backward per token per layer at 768 wide, 6 heads, bf16, Triton ops (tests/bench_memory.py):
# nGPT was 43,096 before its s_u * sqrt(d) scale was folded into the up-projection's weight (1.27x GPT's); anGPT
# was 36,936 before --angpt_norm=input (its two exact norms keep their normalised inputs, 1.18x GPT's now)
SAVED_BYTES = {"gpt": 33872, "ngpt": 36952, "angpt": 40016, "dyt": 33816}


@pytest.mark.parametrize("arch", list(SAVED_BYTES))
def test_saved_bytes_per_token_are_pinned(arch):
    """What each architecture keeps for the backward cannot grow unnoticed; nGPT keeps <= 1.25x what GPT keeps."""
    import bench_memory
    got = bench_memory.saved_bytes_per_token(bench_memory.ARCHS[arch])
    assert got <= SAVED_BYTES[arch], f"{arch} now saves {got:.0f} B/token/layer (pinned {SAVED_BYTES[arch]}): update the pin only on purpose"
    assert got >= 0.9 * SAVED_BYTES[arch], f"{arch} saves {got:.0f} B/token/layer, well under the pin {SAVED_BYTES[arch]}: lower the pin"
    assert SAVED_BYTES["ngpt"] <= 1.25 * SAVED_BYTES["gpt"]
