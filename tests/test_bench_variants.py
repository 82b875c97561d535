"""tests/bench_variants.py runs and prints its table (a smoke test: no timing is asserted, the numbers are noise here)."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def test_bench_variants_prints_side_by_side_ratios(tmp_path):
    out = tmp_path / "bench.txt"
    r = subprocess.run([sys.executable, str(REPO / "tests" / "bench_variants.py"), "--reps=3", "--warmup=1",
                        "--scale=--preset=cpu --n_layer=1 --n_embd=64 --n_head=2 --seq_len=16 --batch_size=2 "
                        "--device_batch_size=2 --kernels=torch", "--out", str(out),
                        "--configs", "gpt=", "ngpt=--arch=ngpt", "skip=--mlp_skip_threshold=100"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {l.split()[0]: l.split() for l in r.stdout.splitlines() if l and not l.startswith(("#", "config"))}
    assert list(rows) == ["gpt", "ngpt", "skip"] and out.read_text() == r.stdout
    assert rows["gpt"][-4:-1] == ["1.000", "[1.000,", "1.000]"] and rows["gpt"][-1] == "-"
    for label in ("ngpt", "skip"):
        ms, ratio, p = float(rows[label][-5]), float(rows[label][-4]), float(rows[label][-1])
        assert ms > 0 and ratio > 0 and 0 <= p <= 1
    assert re.search(r"3 rounds \(\+1 warm-up\), device cpu", r.stdout)
