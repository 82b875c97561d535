"""Shards and the distributed loader: the shard format, every bad-shard and missing-data error (the one place
they are tested; test_reliability.py only checks that such an error reaches the user through the CLI), and the
loader's determinism, shard switching, resumption and rank slicing. Real files in tmp_path throughout."""
import json
import os

import numpy as np
import pytest
import torch

import train_gpt as T
from conftest import ROOT, tiny_config
from train_gpt import (DataLoader, EOT_TOKEN, find_shards, load_val_tokens, read_shard, read_shard_header,
                       write_shard)

MAGIC, HEADER_BYTES = 20240520, 1024  # modded-nanogpt's format, written out independently of train_gpt


def raw_shard(path, header_ints, payload=b""):
    """A shard written by hand: 256 int32 header (the given leading values, then zeros) + payload bytes."""
    header = np.zeros(256, dtype=np.int32)
    header[:len(header_ints)] = header_ints
    path.write_bytes(header.tobytes() + payload)
    return path


# ----------------------------------------------------------------------------- shard format

def test_round_trip_and_byte_layout(tmp_path):
    tokens = np.array([EOT_TOKEN, 0, 1, 65535, 15496, 995, EOT_TOKEN, 42], dtype=np.int64)
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, tokens)  # a Path works as well as a str (the data scripts pass Paths)
    assert read_shard(path).tolist() == tokens.tolist()
    data = path.read_bytes()
    assert len(data) == HEADER_BYTES + 2 * len(tokens)
    header = np.frombuffer(data[:HEADER_BYTES], dtype=np.int32)
    assert list(header[:3]) == [MAGIC, 1, len(tokens)] and not header[3:].any()
    assert np.frombuffer(data[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    got = read_shard(str(path))
    assert got.dtype == np.uint16 and got.tolist() == tokens.tolist()
    assert read_shard_header(str(path)) == len(tokens)


def test_reads_a_hand_written_shard(tmp_path):
    """A shard made without write_shard (as modded-nanogpt's FineWeb shards are) reads back."""
    toks = np.arange(300, dtype="<u2")
    p = raw_shard(tmp_path / "a.bin", [MAGIC, 1, 300], toks.tobytes())
    assert read_shard(str(p)).tolist() == list(range(300))


def test_empty_shard(tmp_path):
    p = tmp_path / "e.bin"
    write_shard(str(p), np.zeros(0, dtype=np.uint16))
    assert read_shard_header(str(p)) == 0 and len(read_shard(str(p))) == 0
    assert find_shards(str(p), "train_files", vocab_size=2) == [str(p)]  # no token, nothing out of range


@pytest.mark.parametrize("header, payload_tokens, found", [
    ([12345, 1, 10], 10, ["magic 12345"]),
    ([MAGIC, 7, 10], 10, ["version 7"]),
    ([MAGIC, 1, 100], 10, ["100 tokens", f"has {HEADER_BYTES + 20} bytes"]),  # truncated: the header says more
    ([MAGIC, 1, 10], 11, ["10 tokens", f"has {HEADER_BYTES + 22} bytes"]),    # trailing bytes
])
def test_bad_shard_names_path_and_values(tmp_path, header, payload_tokens, found):
    p = raw_shard(tmp_path / "bad_train_000000.bin", header, np.zeros(payload_tokens, dtype="<u2").tobytes())
    for reader in (read_shard_header, read_shard, lambda f: find_shards(f, "train_files")):
        with pytest.raises(ValueError) as e:
            reader(str(p))
        msg = str(e.value)
        assert str(p) in msg
        for f in found:
            assert f in msg, (f, msg)


def test_file_shorter_than_header(tmp_path):
    p = tmp_path / "stub_train_000000.bin"
    p.write_bytes(np.array([MAGIC, 1, 5], dtype=np.int32).tobytes())  # 12 bytes
    for reader in (read_shard, lambda f: find_shards(f, "val_files")):
        with pytest.raises(ValueError) as e:
            reader(str(p))
        assert str(p) in str(e.value) and "12 bytes" in str(e.value) and "header" in str(e.value)


def test_find_shards_checks_every_header(tmp_path):
    write_shard(str(tmp_path / "d_train_000000.bin"), np.arange(50))
    raw_shard(tmp_path / "d_train_000001.bin", [MAGIC, 2, 50], np.zeros(50, dtype="<u2").tobytes())
    with pytest.raises(ValueError) as e:
        find_shards(str(tmp_path / "d_train_*.bin"), "train_files")
    assert "d_train_000001.bin" in str(e.value)


def test_token_id_at_or_above_vocab_size_fails_when_the_shard_is_opened(tmp_path):
    """find_shards(..., vocab_size) reads every shard's largest id: one >= --vocab_size would index past the
    embedding hours into a run, so it fails now, naming the file, the id and the flag. The bound is exclusive."""
    good, bad = tmp_path / "v_train_000000.bin", tmp_path / "v_train_000001.bin"
    write_shard(str(good), np.arange(1000))      # ids 0..999
    write_shard(str(bad), [5, 1000, 7, 3])       # one id of 1000, not at either end
    pattern = str(tmp_path / "v_train_*.bin")
    assert find_shards(pattern, "train_files", vocab_size=1001) == [str(good), str(bad)]
    assert find_shards(pattern, "train_files") == [str(good), str(bad)]  # no vocab_size: ids are not checked
    assert find_shards(str(good), "train_files", vocab_size=1000) == [str(good)]  # 999 < 1000
    with pytest.raises(ValueError) as e:
        find_shards(pattern, "train_files", vocab_size=1000)
    msg = str(e.value)
    assert str(bad) in msg and str(good) not in msg
    assert "token id 1000" in msg and "--vocab_size=1000" in msg


@pytest.mark.parametrize("which", ["train", "val"])
def test_start_checks_every_shard_against_vocab_size_first(tmp_path, which):
    """The training entry point passes --vocab_size for the train and the val shards, and fails on an id out of
    range before it writes a log or builds a model."""
    files = {"train": tmp_path / "s_train_000000.bin", "val": tmp_path / "s_val_000000.bin"}
    for split, path in files.items():
        write_shard(str(path), np.arange(500) + (100 if split == which else 0))  # ids up to 599 in the bad one
    config = tiny_config("--vocab_size=512", "--val_tokens=256", f"--train_files={files['train']}", f"--val_files={files['val']}",
                         f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ck")
    with pytest.raises(ValueError) as e:
        T.start(config, T.Dist())
    assert str(files[which]) in str(e.value) and "token id 599" in str(e.value) and "--vocab_size=512" in str(e.value)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ck").exists()


def test_glob_matching_a_folder_names_it_and_the_fix(tmp_path):
    """A folder that the glob matches (here one named like a shard) is not read as a shard (IsADirectoryError):
    the error names the flag, the folder and how to write the glob."""
    write_shard(str(tmp_path / "f_train_000000.bin"), np.arange(10))
    folder = tmp_path / "f_train_000001.bin"
    folder.mkdir()
    for pattern in (str(tmp_path / "f_train_*.bin"), str(tmp_path / "*")):
        with pytest.raises(ValueError) as e:
            find_shards(pattern, "train_files")
        msg = str(e.value)
        assert not isinstance(e.value, OSError)
        assert f"--train_files={pattern}" in msg and f"folder {folder}" in msg and "shard files only" in msg


def test_find_shards_sorted_and_relative_to_cwd(tmp_path, monkeypatch):
    for i in (2, 0, 1):
        write_shard(str(tmp_path / f"s_train_00000{i}.bin"), np.arange(10))
    monkeypatch.chdir(tmp_path)
    files = find_shards("s_train_*.bin", "train_files")
    assert [os.path.basename(f) for f in files] == [f"s_train_00000{i}.bin" for i in range(3)]
    assert all(os.path.isabs(f) for f in files)


def test_find_shards_falls_back_to_the_repo(tmp_path, monkeypatch):
    """The default relative globs work from any working directory."""
    monkeypatch.chdir(tmp_path)
    files = find_shards("data/shakespeare/shakespeare_val_*.bin", "val_files")
    assert len(files) == 1 and files[0].endswith("shakespeare_val_000000.bin") and os.path.exists(files[0])


@pytest.mark.parametrize("pattern, script, needles", [
    # ./run.sh fetches FineWeb on GPU nodes only: the hint must not send a CPU user there (issue 32, item 11)
    ("{tmp}/data/fineweb10B/fineweb_train_*.bin", "data/cached_fineweb10B.py", ["on a GPU node, not on a CPU"]),
    ("{tmp}/data/shakespeare/shakespeare_val_*.bin", "data/prepare_shakespeare.py", ["git checkout"]),
    ("{tmp}/mytext/mine_train_*.bin", "data/tokenize_text.py", []),
])
def test_missing_files_give_the_fix_command(tmp_path, pattern, script, needles):
    """No file matches: the error names the flag and glob, and the command that makes the files, with a script
    that exists in the repo."""
    pattern = pattern.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        find_shards(pattern, "val_files")
    msg = str(e.value)
    assert f"--val_files={pattern}" in msg
    assert f"python {script}" in msg and (ROOT / script).is_file(), msg
    for n in needles:
        assert n in msg, msg


# ----------------------------------------------------------------------------- DataLoader

@pytest.fixture
def shards(tmp_path):
    """Two train shards of distinct, position-coded tokens: shard 0 = 0..99, shard 1 = 1000..1069."""
    a, b = tmp_path / "t_train_000000.bin", tmp_path / "t_train_000001.bin"
    write_shard(str(a), np.arange(100))
    write_shard(str(b), 1000 + np.arange(70))
    return [str(a), str(b)]


def global_batch(batches):
    """A world-of-one loader's micro-batches glued back together."""
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_loader_stream_shard_switch_and_wrap(shards):
    B, T = 2, 8  # 16 tokens a step, 17 read (the targets' last token)
    loader = DataLoader(shards, T, B, B, 0, 1)
    # shard 0 (100 tokens) fits batches at 0..80; at 96 17 tokens no longer fit -> shard 1 (70): 0..48 -> wrap to shard 0
    expected_starts = [0, 16, 32, 48, 64, 80, 1000, 1016, 1032, 1048, 0, 16]
    for start in expected_starts:
        (x, y), = loader.next_batch()
        assert x.dtype == torch.int64 and x.shape == (B, T)
        assert x.flatten().tolist() == list(range(start, start + B * T))
        assert y.flatten().tolist() == list(range(start + 1, start + B * T + 1))


def test_loader_is_deterministic(shards):
    l1, l2 = DataLoader(shards, 8, 2, 1, 0, 1), DataLoader(shards, 8, 2, 1, 0, 1)
    for _ in range(15):
        for (x1, y1), (x2, y2) in zip(l1.next_batch(), l2.next_batch(), strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_loader_state_dict_resumes_the_exact_stream(shards):
    ref = DataLoader(shards, 8, 2, 1, 0, 1)
    stream = [global_batch(ref.next_batch()) for _ in range(14)]
    for k in (0, 3, 7, 10):  # 7 is in shard 1, 10 after the wrap
        a = DataLoader(shards, 8, 2, 1, 0, 1)
        for _ in range(k):
            a.next_batch()
        state = json.loads(json.dumps(a.state_dict()))  # plain data: it goes into a checkpoint
        a.next_batch()  # the state must be a snapshot, not a live view
        b = DataLoader(shards, 8, 2, 1, 0, 1)
        b.load_state_dict(state)
        for x, y in stream[k:]:
            bx, by = global_batch(b.next_batch())
            assert torch.equal(bx, x) and torch.equal(by, y), k


def test_loader_rejects_a_shard_smaller_than_a_batch(tmp_path):
    p = tmp_path / "small_train_000000.bin"
    write_shard(str(p), np.arange(16))  # 17 tokens needed
    loader = DataLoader([str(p)], 8, 2, 2, 0, 1)
    with pytest.raises(ValueError) as e:
        loader.next_batch()
    assert str(p) in str(e.value) and "--batch_size" in str(e.value)


# global batch 8: (world, grad_accum) -> micro-batch = 8 // (world * grad_accum)
SPLITS = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 4), (4, 1), (4, 2)]


@pytest.mark.parametrize("world, accum", SPLITS)
def test_ranks_split_the_global_batch(tmp_path, world, accum):
    """For every world size and grad_accum with the same global batch, the ranks' micro-batches, taken in
    micro-step order then rank order, rebuild the one-process global batch exactly, and no sequence is
    taken twice. Over several steps and a shard switch."""
    B, T = 8, 4
    files = []
    for i, n in enumerate((150, 97)):  # position-coded tokens, every sequence distinct
        files.append(str(tmp_path / f"r_train_00000{i}.bin"))
        write_shard(files[-1], i * 10000 + np.arange(n))
    mb = B // (world * accum)
    ref = DataLoader(files, T, B, B, 0, 1)
    loaders = [DataLoader(files, T, B, mb, r, world) for r in range(world)]
    for step in range(9):
        gx, gy = global_batch(ref.next_batch())
        per_rank = [l.next_batch() for l in loaders]
        assert all(len(b) == accum for b in per_rank)
        assert all(x.shape == (mb, T) and y.shape == (mb, T) for b in per_rank for x, y in b)
        xs = [per_rank[r][m][0] for m in range(accum) for r in range(world)]
        ys = [per_rank[r][m][1] for m in range(accum) for r in range(world)]
        assert torch.equal(torch.cat(xs), gx) and torch.equal(torch.cat(ys), gy), step
        rows = [tuple(row.tolist()) for b in per_rank for x, _ in b for row in x]
        assert len(set(rows)) == B, "two ranks or micro-steps got the same sequence"
        for r in range(world):
            mine = {tuple(row.tolist()) for x, _ in per_rank[r] for row in x}
            others = {tuple(row.tolist()) for q in range(world) if q != r for x, _ in per_rank[q] for row in x}
            assert not mine & others


# ----------------------------------------------------------------------------- validation tokens

def test_load_val_tokens_reads_the_first_tokens(tmp_path):
    a, b = tmp_path / "v_val_000000.bin", tmp_path / "v_val_000001.bin"
    write_shard(str(a), np.arange(50))
    write_shard(str(b), 500 + np.arange(40))
    files = [str(a), str(b)]
    v = load_val_tokens(files, 32)
    assert v.dtype == torch.int64 and v.tolist() == list(range(33))  # n + 1: the last target
    v = load_val_tokens(files, 64)  # spans both shards, in order
    assert v.tolist() == list(range(50)) + list(range(500, 515))
    assert torch.equal(load_val_tokens(files, 64), v)  # always the same tokens
    assert load_val_tokens(files, 89).tolist() == list(range(50)) + list(range(500, 540))


def test_load_val_tokens_too_few(tmp_path):
    p = tmp_path / "v_val_000000.bin"
    write_shard(str(p), np.arange(50))
    with pytest.raises(ValueError) as e:
        load_val_tokens([str(p)], 50)  # needs 51
    msg = str(e.value)
    assert "--val_tokens" in msg and "49" in msg  # what the shards can give (n + 1 are read)


def test_load_val_tokens_from_the_shipped_shard():
    files = find_shards("data/shakespeare/shakespeare_val_*.bin", "val_files")
    v = load_val_tokens(files, 1024)
    assert v.tolist() == np.asarray(read_shard(files[0])[:1025], dtype=np.int64).tolist()
    assert v[0].item() == EOT_TOKEN  # every document starts with <|endoftext|>
