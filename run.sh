#!/usr/bin/env bash
# ./run.sh [flags]        train: GPU node -> torchrun over all local GPUs, speedrun preset on FineWeb (fetched if missing);
#                         no GPU -> the cpu preset on the embedded Shakespeare shards. Flags pass through to train_gpt.py.
# ./run.sh test [args]    the test suite (pytest on every core; args pass through: -m "not slow" is the quick tier)
# ./run.sh sweep NAME --seeds=N -- "CONFIG FLAGS" ...   several configs x seeds into records/NAME (records/sweep.py)
# ./run.sh compare PATHS...                            the comparison table + plot (records/compare.py)
# ./run.sh -h | --help   this help, then train_gpt.py's flags
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

setup() {  # make the venv from requirements.txt once; reuse it while the packages import
  [ -x "$PY" ] || python3 -m venv "$VENV"
  if ! "$PY" -c "import torch, triton, tiktoken, numpy, scipy, matplotlib, pytest, xdist" 2>/dev/null; then
    echo "setting up $VENV from requirements.txt" >&2
    "$PY" -m pip install -q --upgrade pip >&2 || true
    "$PY" -m pip install -q -r requirements.txt >&2
  fi
}

ngpus() { "$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"; }

usage() {  # this file's header comment, then train_gpt.py's flags
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  echo
  echo "train_gpt.py's flags (./run.sh FLAGS passes them through):"
}

case "${1:-}" in
  -h|--help) usage; setup; exec "$PY" train_gpt.py --help ;;
esac
setup
case "${1:-}" in
  test)    shift; exec "$PY" -m pytest -q -n auto --dist load --maxschedchunk=1 --durations=15 tests "$@" ;;   # a worker per core, each given the next test when free (tests/conftest.py orders them); the 15 slowest at the end
  sweep)   shift; exec "$PY" records/sweep.py "$@" ;;
  compare) shift; exec "$PY" records/compare.py "$@" ;;
esac

n=$(ngpus)
if [ "$n" -gt 0 ]; then
  # the speedrun (the current record) reads ~0.34B tokens of data/fineweb10B, speedrun_2024 917M: fetch 10 train shards (1B
  # tokens) + val when any is missing; the fetch needs huggingface_hub, which only GPU nodes install
  if [ ! -f data/fineweb10B/fineweb_val_000000.bin ] || [ ! -f data/fineweb10B/fineweb_train_000010.bin ]; then
    "$PY" -c "import huggingface_hub" 2>/dev/null || "$PY" -m pip install -q huggingface_hub >&2
    "$PY" data/cached_fineweb10B.py 10
  fi
  exec "$VENV/bin/torchrun" --standalone --nproc_per_node="$n" train_gpt.py "$@"
else
  exec "$PY" train_gpt.py --preset=cpu "$@"
fi
