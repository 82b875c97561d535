#!/usr/bin/env python3
"""Download pre-tokenized FineWeb10B shards (GPT-2 tokens) from Hugging Face.

    python data/cached_fineweb10B.py [N]        # default N = 8

Fetches fineweb_val_000000.bin (10,485,760 tokens) and fineweb_train_000001.bin ...
fineweb_train_<N>.bin (100M tokens each, so N=8 is 800M training tokens) from the dataset repo
kjj0/fineweb10B-gpt2 into data/fineweb10B/ (the convention of modded-nanogpt's script of the
same name; the full dataset has 103 train shards). Files already there are kept, not fetched again.
This saves the hours that re-tokenizing FineWeb would take. Needs `pip install huggingface_hub`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ID = "kjj0/fineweb10B-gpt2"
DEFAULT_CHUNKS = 8
MAX_CHUNKS = 103  # fineweb_train_000001.bin ... fineweb_train_000103.bin
DEFAULT_DIR = Path(__file__).resolve().parent / "fineweb10B"


def shard_names(num_chunks: int) -> list[str]:
    """The val shard, then train shards 1..num_chunks."""
    return ["fineweb_val_%06d.bin" % 0] + ["fineweb_train_%06d.bin" % i
                                           for i in range(1, num_chunks + 1)]


def download(num_chunks: int = DEFAULT_CHUNKS, local_dir: Path = DEFAULT_DIR) -> list[Path]:
    if not 0 <= num_chunks <= MAX_CHUNKS:
        raise ValueError(f"number of train shards must be in [0, {MAX_CHUNKS}], got {num_chunks}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SystemExit("error: this script needs the huggingface_hub package: "
                         "pip install huggingface_hub") from None
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    names = shard_names(num_chunks)
    for k, fname in enumerate(names, 1):
        path = local_dir / fname
        if path.exists():
            print(f"[{k}/{len(names)}] {path} already there, skipping")
        else:
            print(f"[{k}/{len(names)}] downloading {fname} from {REPO_ID} ...", flush=True)
            hf_hub_download(repo_id=REPO_ID, filename=fname, repo_type="dataset",
                            local_dir=str(local_dir))
        paths.append(path)
    print(f"done: {len(paths)} shard(s) in {local_dir}")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("num_chunks", nargs="?", type=int, default=DEFAULT_CHUNKS,
                    help=f"number of 100M-token train shards (default {DEFAULT_CHUNKS}, "
                         f"max {MAX_CHUNKS})")
    ap.add_argument("--local_dir", type=Path, default=DEFAULT_DIR,
                    help="where to put the shards (default data/fineweb10B)")
    args = ap.parse_args(argv)
    try:
        download(args.num_chunks, args.local_dir)
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
