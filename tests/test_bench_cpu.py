"""tests/bench_cpu.py: the side-by-side CPU benchmark runs for real (ours at a tiny size; nanoGPT only where a
prepared copy is present), parses both trainers' logs, and skips with a clear message without nanoGPT."""
import os, subprocess, sys
import numpy as np
import pytest

import train_gpt as tg
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests"))
import bench_cpu  # noqa: E402

TINY = "--n_layer=1 --n_embd=64 --n_head=2 --seq_len=32 --batch_size=2 --device_batch_size=2"


def test_without_nanogpt_it_says_what_is_missing_and_exits_0(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "bench_cpu.py"), f"--nanogpt={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout and f"{tmp_path} lacks train_cmp.py" in out.stdout and "nanogpt_cmp/README.md" in out.stdout


@pytest.mark.slow
def test_ours_side_by_side_in_two_precisions(tmp_path, tiny_shards):
    """Two interleaved rounds of ours in bf16 and fp32 at a tiny size (tiny_shards' small vocabulary: the 50k head in
    emulated bf16 was most of each run): per-step times from the real logs, tok/s at the tiny batch (64 tokens), the
    ratio per round, and the report written to --out."""
    report = tmp_path / "bench.txt"
    rc = bench_cpu.main(["--trainers=ours_bf16,ours_fp32", "--rounds=2", "--steps=6", "--skip=2", f"--ours_flags={TINY} {' '.join(tiny_shards)}",
                         f"--work={tmp_path / 'work'}", f"--out={report}"])
    text = report.read_text()
    assert rc == 0 and "ours_bf16  bf16" in text and "ours_fp32  fp32" in text and "(ours_bf16 64, ours_fp32 64 tokens a step)" in text
    ratio = [line for line in text.splitlines() if line.startswith("ours_bf16/ours_fp32 tok/s ratio")]
    assert len(ratio) == 1 and len(ratio[0].split("per round ")[1].split()) == 2
    for r in (1, 2):  # every run kept its own log, with the flag's precision
        logs = os.listdir(tmp_path / "work" / f"ours_fp32_r{r}")
        assert len(logs) == 1 and "cpu: fp32 (set by the flag)" in (tmp_path / "work" / f"ours_fp32_r{r}" / logs[0]).read_text()


def test_the_log_parsers_read_both_trainers_formats(tmp_path):
    ours = "step:0/3 val_loss:10.8 train_time:0ms step_avg:0.00ms\nstep:1/3 train_loss:10.8 train_time:900ms step_avg:900.00ms tok/s:2275\n" \
           "step:2/3 train_loss:9.1 train_time:1850ms step_avg:925.00ms tok/s:2155\nstep:3/3 val_loss:8.7 train_time:2800ms step_avg:933.33ms\n"
    assert bench_cpu.ours_step_ms(ours) == {1: 900.0, 2: 950.0}
    assert bench_cpu.ours_val(ours) == [(0, 0.0, 10.8), (3, 2.8, 8.7)]
    # nanoGPT's train.py prints f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms, mfu {running_mfu*100:.2f}%";
    # train_cmp.py's eval line adds the training time
    nano = "step 0: train loss nan, val loss 10.9000, train_time 0.0s, wall 2.1s\niter 0: loss 10.9871, time 1544.05ms, mfu -100.00%\n" \
           "iter 1: loss 10.1200, time 1401.50ms, mfu 0.51%\nstep 2: train loss nan, val loss 9.5000, train_time 2.9s, wall 6.0s\n"
    assert bench_cpu.nano_step_ms(nano) == {1: 1544.05, 2: 1401.5}
    assert bench_cpu.nano_val(nano) == [(0, 0.0, 10.9), (2, 2.9, 9.5)]


def test_nanogpt_gets_our_split_without_the_header(tmp_path):
    cfg = tg.parse_args(["--preset=cpu"], cuda_available=False)
    bench_cpu.write_nanogpt_data(str(tmp_path), cfg.train_files, cfg.val_files)
    for split, pattern in (("train", cfg.train_files), ("val", cfg.val_files)):
        ours = tg.read_shard(tg.find_shards(pattern, split)[0])
        theirs = np.memmap(tmp_path / "data" / "shak" / f"{split}.bin", dtype=np.uint16, mode="r")  # how nanoGPT reads it
        assert len(theirs) == len(ours) > 0 and np.array_equal(theirs, ours)


@pytest.mark.skipif(bench_cpu.nanogpt_missing(os.environ.get("NANOGPT", "")) is not None,
                    reason="no prepared nanoGPT (NANOGPT=PATH, see ../shared/nanogpt_cmp/README.md)")
def test_nanogpt_runs_beside_ours(tmp_path):
    rc = bench_cpu.main(["--trainers=ours,nano_fp32", "--rounds=1", "--steps=4", "--skip=1", f"--work={tmp_path}",
                         f"--out={tmp_path / 'bench.txt'}"])
    assert rc == 0 and "ours/nano_fp32 tok/s ratio" in (tmp_path / "bench.txt").read_text()
