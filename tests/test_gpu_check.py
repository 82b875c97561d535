"""tests/gpu_check.py, the one-call GPU check, runs on the CPU at a tiny size so it cannot rot: every section's
runs go through train_gpt.py and land in one text file with a row per run."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env

pytestmark = pytest.mark.slow


def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, "tests/gpu_check.py", "--out", str(tmp_path), "--tiny", "--budget", "400",
                        "--sections=archs,record,components,kernels", "--components=fp8_head,doc_mask"],
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (tmp_path / "gpu_check.txt").read_text()
    assert report == r.stdout.replace("\r", "") or report in r.stdout  # the file holds what was printed
    for label in ("gpt", "ngpt", "angpt", "dyt", "angpt_swiglu", "ours_speedrun", "ours_speedrun_2024", "all_on",
                  "no_fp8_head", "no_doc_mask"):
        row = re.search(rf"^{label} +(\S+) +(\d+) +(\S+)", report, re.M)
        assert row and row.group(1) == "yes" and int(row.group(2)) >= 3, f"{label}: {row and row.group(0)}\n{report}"
        assert float(row.group(3)) == float(row.group(3)), label  # a finite last loss
    assert "peer not run: no CUDA" in report and "=== kernels" in report
    assert (tmp_path / "raw" / "ours_speedrun.txt").exists()
    # the record run really ran the record's recipe (the config line of its log) at the tiny size
    log = (tmp_path / "raw" / "ours_speedrun.txt").read_text()
    assert '"value_embeds": 3' in log and '"fp8_head": true' in log and '"n_embd": 64' in log
