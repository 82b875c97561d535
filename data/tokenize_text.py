#!/usr/bin/env python3
"""Tokenize UTF-8 text files into modded-nanogpt .bin shards (GPT-2 BPE, no network).

    python data/tokenize_text.py INPUT... --out DIR --name NAME [--val_fraction 0.08]
                                 [--shard_tokens 100000000]

Each INPUT is a text file or a folder (searched recursively; hidden files and folders, i.e. names
starting with '.', are skipped inside folders). All files are sorted by path, so the output does not
depend on argument or shell-glob order. Every file is one document: it is decoded as UTF-8 (a leading
byte-order mark is dropped, CRLF and lone CR become LF), prefixed with <|endoftext|> (50256) and
encoded with GPT-2 BPE (text that happens to spell "<|endoftext|>" is encoded as ordinary text).

Validation is made of whole files, never a random token split: going through the files in reverse
sorted order, a file goes to val when adding it brings the val token count closer to
val_fraction * total; at least one file stays in train, and if no file was picked the smallest one
(the last by path on ties) goes to val. --val_fraction 0 writes no val shard.

Output: DIR/NAME_train_000000.bin, NAME_train_000001.bin, ... and DIR/NAME_val_000000.bin, ...,
at most --shard_tokens tokens each (documents may straddle shards), in the shard format of
train_gpt.write_shard. Shards of the same NAME left over from an earlier, larger run are removed.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from train_gpt import EOT_TOKEN, gpt2_encoding, read_shard, write_shard  # noqa: E402,F401

DEFAULT_SHARD_TOKENS = 100_000_000  # modded-nanogpt's FineWeb shards hold 1e8 tokens
MAX_SHARD_TOKENS = 2**31 - 1  # the header stores the count as int32


class DataError(Exception):
    """A problem with the input data; the message names the file."""


# ----------------------------------------------------------------------------- inputs

def collect_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of files."""
    if not inputs:
        raise DataError("no input given: pass one or more text files or folders")
    files: set[Path] = set()
    for inp in inputs:
        p = Path(inp)
        if p.is_file():
            files.add(p)
        elif p.is_dir():
            found = []
            for root, dirs, names in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [Path(root) / n for n in names if not n.startswith(".")]
            found = [f for f in found if f.is_file()]
            if not found:
                raise DataError(f"input folder contains no files: {p}")
            files.update(found)
        elif p.exists():
            raise DataError(f"input is neither a file nor a folder: {p}")
        else:
            raise DataError(f"input not found: {p}")
    return sorted(files, key=lambda f: f.as_posix())


def normalize_text(text: str) -> str:
    """Drop a leading BOM and turn CRLF / lone CR line endings into LF."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode_document(data: bytes, name: str) -> str:
    """Strict UTF-8 decode (a UTF-8 BOM is allowed) + normalize_text; errors name the file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 4].hex(" ")
        raise DataError(f"{name}: not valid UTF-8 (byte offset {e.start}: {bad}; {e.reason}). "
                        f"Convert it to UTF-8 first, e.g. iconv -f LATIN1 -t UTF-8") from None
    return normalize_text(text)


def read_document(path: Path) -> str:
    return decode_document(Path(path).read_bytes(), str(path))


def encode_document(enc, text: str) -> np.ndarray:
    """<|endoftext|> followed by the GPT-2 tokens of the text, as uint16."""
    assert enc.n_vocab <= 2**16, "token ids must fit in uint16"
    return np.array([EOT_TOKEN] + enc.encode_ordinary(text), dtype=np.uint16)


# ----------------------------------------------------------------------------- split

def choose_val(lengths: list[int], val_fraction: float) -> list[int]:
    """Indices (sorted) of the whole documents that form the validation set; see module doc."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return []
    if len(lengths) < 2:
        raise DataError("validation is made of whole files, so at least 2 input files are needed "
                        "(or pass --val_fraction 0 to write no val shard)")
    target = val_fraction * sum(lengths)
    val: list[int] = []
    val_tokens = 0
    for i in reversed(range(len(lengths))):
        if len(val) == len(lengths) - 1:
            break  # keep at least one document in train
        if abs(val_tokens + lengths[i] - target) < abs(val_tokens - target):
            val.append(i)
            val_tokens += lengths[i]
    if not val:
        smallest = min(lengths)
        val = [max(i for i, n in enumerate(lengths) if n == smallest)]
    return sorted(val)


# ----------------------------------------------------------------------------- shards

def shard_path(out_dir: Path, name: str, split: str, index: int) -> Path:
    return Path(out_dir) / f"{name}_{split}_{index:06d}.bin"


def write_split(out_dir: Path, name: str, split: str, docs: list[np.ndarray],
                shard_tokens: int = DEFAULT_SHARD_TOKENS) -> list[Path]:
    """Concatenate the documents and write them as consecutive shards of <= shard_tokens tokens."""
    if not 1 <= shard_tokens <= MAX_SHARD_TOKENS:
        raise DataError(f"--shard_tokens must be in [1, {MAX_SHARD_TOKENS}], got {shard_tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    buf: list[np.ndarray] = []
    buf_len = 0

    def flush(n: int) -> None:
        nonlocal buf, buf_len
        stream = np.concatenate(buf) if buf else np.zeros(0, dtype=np.uint16)
        path = shard_path(out_dir, name, split, len(paths))
        write_shard(path, stream[:n])
        paths.append(path)
        rest = stream[n:]
        buf, buf_len = ([rest] if len(rest) else []), len(rest)

    for doc in docs:
        buf.append(doc)
        buf_len += len(doc)
        while buf_len >= shard_tokens:
            flush(shard_tokens)
    if buf_len:
        flush(buf_len)
    remove_stale(out_dir, name, split, keep=len(paths))
    return paths


def remove_stale(out_dir: Path, name: str, split: str, keep: int) -> None:
    """Delete NAME_split_XXXXXX.bin shards with index >= keep (left over from an earlier run)."""
    pat = re.compile(re.escape(f"{name}_{split}_") + r"(\d{6})\.bin")
    for p in sorted(Path(out_dir).iterdir()):
        m = pat.fullmatch(p.name)
        if m and int(m.group(1)) >= keep:
            print(f"removing stale shard {p}")
            p.unlink()


def tokenize_documents(names: list[str], texts: list[str], out_dir, name: str,
                       val_fraction: float | None = None, val_names: list[str] | None = None,
                       shard_tokens: int = DEFAULT_SHARD_TOKENS, verbose: bool = True) -> dict:
    """Tokenize documents (already decoded) and write NAME_train_* / NAME_val_* shards.

    Val is either the documents named in val_names, or chosen with choose_val(val_fraction).
    Returns a summary dict: train/val paths, token counts and the val document names.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise DataError(f"--name must be letters, digits, '.', '_' or '-', got {name!r}")
    enc = gpt2_encoding()
    docs = [encode_document(enc, t) for t in texts]
    lengths = [len(d) for d in docs]
    if val_names is not None:
        missing = sorted(set(val_names) - set(names))
        if missing:
            raise DataError(f"val documents not found among the inputs: {missing}")
        val_idx = [i for i, n in enumerate(names) if n in set(val_names)]
    else:
        val_idx = choose_val(lengths, 0.0 if val_fraction is None else val_fraction)
    val_set = set(val_idx)
    train_docs = [d for i, d in enumerate(docs) if i not in val_set]
    val_docs = [d for i, d in enumerate(docs) if i in val_set]
    total = sum(lengths)
    if verbose:
        for n, k, i in zip(names, lengths, range(len(names))):
            print(f"{'val  ' if i in val_set else 'train'} {k:>12,d} tokens  {n}")
    train_paths = write_split(out_dir, name, "train", train_docs, shard_tokens)
    val_paths = write_split(out_dir, name, "val", val_docs, shard_tokens) if val_docs else []
    if not val_docs:
        remove_stale(Path(out_dir), name, "val", keep=0)
    summary = {
        "train_paths": train_paths, "val_paths": val_paths,
        "train_tokens": sum(len(d) for d in train_docs), "val_tokens": sum(len(d) for d in val_docs),
        "total_tokens": total, "val_names": [names[i] for i in val_idx],
    }
    if verbose:
        pct = 100.0 * summary["val_tokens"] / max(total, 1)
        print(f"{len(names)} documents, {total:,d} tokens: train {summary['train_tokens']:,d} "
              f"in {len(train_paths)} shard(s), val {summary['val_tokens']:,d} ({pct:.2f}%) "
              f"in {len(val_paths)} shard(s) -> {out_dir}")
        for p in train_paths + val_paths:
            print(f"  wrote {p}")
    return summary


def tokenize_files(inputs, out_dir, name: str, val_fraction: float = 0.08,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, verbose: bool = True) -> dict:
    files = collect_files(inputs)
    texts = [read_document(f) for f in files]
    return tokenize_documents([str(f) for f in files], texts, out_dir, name,
                              val_fraction=val_fraction, shard_tokens=shard_tokens, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="text files and/or folders")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--name", required=True, help="shard name prefix, e.g. mytext")
    ap.add_argument("--val_fraction", type=float, default=0.08,
                    help="target fraction of tokens in val, whole files only (default 0.08)")
    ap.add_argument("--shard_tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                    help=f"max tokens per shard (default {DEFAULT_SHARD_TOKENS})")
    args = ap.parse_args(argv)
    try:
        tokenize_files(args.inputs, args.out, args.name, args.val_fraction, args.shard_tokens)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
