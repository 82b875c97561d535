"""tests/gpu_check.py, the one-call GPU check, runs on the CPU at a tiny size so it cannot rot: every section's
runs go through train_gpt.py's main (in gpu_check's process there; torchrun subprocesses on a GPU) and land in one
text file with a row per run, the sections in their order."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env

sys.path.insert(0, str(ROOT / "tests"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def parses(*flags):
    """Whether train_gpt takes these flags."""
    import train_gpt
    try:
        train_gpt.parse_args(list(flags))
        return True
    except train_gpt.ConfigError:
        return False


def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, "tests/gpu_check.py", "--out", str(tmp_path), "--tiny", "--budget", "400",
                        "--components=mtp"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (tmp_path / "gpu_check.txt").read_text()
    assert report == r.stdout.replace("\r", "") or report in r.stdout  # the file holds what was printed
    # shortest question first: ours at the current record, the archs under it, then the 2025 record side by side, the rest
    order = [report.index(f"=== {name}") for name in ("speedrun:", "speedrun_archs", "record:", "archs:", "kernels", "record (continued)", "components")]
    assert order == sorted(order), report
    legal = {label: parses("--preset=speedrun", *flags) for label, flags in gpu_check.SPEEDRUN_ARCHS}
    assert all(legal.values()), legal  # issue 22: every arch takes the speedrun preset
    for label in ("gpt", "ngpt", "angpt", "dyt", "angpt_swiglu", "ours_speedrun", "ours_speedrun_2025", "ours_speedrun_2024", "all_on",
                  "no_mtp", *legal):
        row = re.search(rf"^{label} +(\S+) +(\d+) +(\S+)", report, re.M)
        if not legal.get(label, True):  # a config error: the row says so and the check goes on
            assert row and row.group(1) == "2", f"{label}: {row and row.group(0)}"
            continue
        assert row and row.group(1) == "yes" and int(row.group(2)) >= 3, f"{label}: {row and row.group(0)}\n{report}"
        assert float(row.group(3)) == float(row.group(3)), label  # a finite last loss
    assert "peer not run: no CUDA" in report
    assert [n for n, _ in gpu_check.record_components("mtp,mudd")] == ["mtp", "mudd"]  # one component ran above (4 s a row)
    assert (tmp_path / "raw" / "ours_speedrun.txt").exists()
    # the record runs really ran the records' recipes (the config lines of their logs) at the tiny size
    log = (tmp_path / "raw" / "ours_speedrun.txt").read_text()
    assert '"mudd": true' in log and '"fp8_mlp": true' in log and '"n_layer": 11' in log and '"n_embd": 64' in log
    assert '"value_embeds": 3' in (tmp_path / "raw" / "ours_speedrun_2025.txt").read_text()
    assert '"norm": "dyt"' in (tmp_path / "raw" / "speedrun_dyt.txt").read_text()
