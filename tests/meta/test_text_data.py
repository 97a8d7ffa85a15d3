"""The byte-level text corpus: deterministic build, split by file, cache, local-text loader."""

import numpy as np
import pytest

from metagrad.data import TextConfig, load_stdlib_text, load_text, stdlib_files, text_cache_path
from metagrad.data.text import chunk_bytes, split_of


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("text-cache")
    return load_stdlib_text(TextConfig(seq_len=64), cache_dir=cache, progress=False), cache


def test_stdlib_build_is_deterministic_and_cached(corpus):
    built, cache = corpus
    assert not built.from_cache and built.cache_path == text_cache_path(TextConfig(64), cache)
    again = load_stdlib_text(TextConfig(seq_len=64), cache_dir=cache, progress=False)
    assert again.from_cache
    fresh = load_stdlib_text(TextConfig(seq_len=64), cache=False, progress=False)
    for split in ("train", "val", "test"):
        a, b, c = built.split(split), again.split(split), fresh.split(split)
        assert a.tokens.dtype == np.uint8 and a.tokens.shape[1] == 64 and len(a) > 0
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.tokens, c.tokens)
        np.testing.assert_array_equal(a.file_index, c.file_index)
        assert a.files == b.files == c.files
    # The 80/10/10 file split gives most sequences to training.
    assert len(built.train) > 5 * len(built.val)


def test_split_is_by_file(corpus):
    built, _ = corpus
    files = [set(built.split(s).files) for s in ("train", "val", "test")]
    assert not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    assert set().union(*files) == set(stdlib_files())
    for split in ("train", "val", "test"):
        for name in built.split(split).files:
            assert split_of(name, (0.8, 0.1, 0.1)) == split
    # Test folders, site-packages and the pydoc prose are not in the code corpus.
    everything = set().union(*files)
    assert not any(part in ("test", "tests", "site-packages", "pydoc_data")
                   for f in everything for part in f.split("/"))  # fmt: skip
    # Every sequence's bytes are a chunk of its own file.
    split = built.val
    i = len(split) // 2
    name = split.files[split.file_index[i]]
    from metagrad.data.text import stdlib_root

    data = (stdlib_root() / name).read_bytes()
    assert bytes(split.tokens[i]) in data


def test_split_of_is_a_function_of_the_path():
    assert split_of("json/decoder.py") == split_of("json/decoder.py")
    names = [f"pkg/module_{i}.py" for i in range(2000)]
    counts = {s: sum(split_of(n) == s for n in names) for s in ("train", "val", "test")}
    assert 1450 < counts["train"] < 1750 and 120 < counts["val"] < 280


def test_chunk_bytes_drops_the_tail():
    out = chunk_bytes(b"abcdefgh" * 3 + b"xy", 8)
    assert out.shape == (3, 8) and bytes(out[1]) == b"abcdefgh"


def test_load_text_folder_splits_by_file(tmp_path):
    for i in range(60):
        (tmp_path / f"f{i}.txt").write_text(f"file {i} " * 40)
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2" * 100)  # binary: skipped
    (tmp_path / ".hidden").write_text("x" * 500)  # hidden: skipped
    ds = load_text(tmp_path, TextConfig(seq_len=32), progress=False)
    files = [set(ds.split(s).files) for s in ("train", "val", "test")]
    assert sum(map(len, files)) == 60 and not (files[0] & files[1])
    assert all(len(ds.split(s)) > 0 for s in ("train", "val", "test"))


def test_load_text_single_file_splits_by_position(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("".join(f"line {i}\n" for i in range(400)))
    ds = load_text(path, TextConfig(seq_len=16), progress=False)
    n = len(ds.train) + len(ds.val) + len(ds.test)
    assert n == path.stat().st_size // 16 and len(ds.val) > 0 and len(ds.test) > 0
    assert bytes(ds.train.tokens[0]) == path.read_bytes()[:16]


@pytest.mark.parametrize(
    ("setup", "error", "message"),
    [
        (lambda p: p / "missing", FileNotFoundError, "does not exist"),
        (lambda p: (p / "empty.txt").write_text("") and None or p / "empty.txt", ValueError,
         "is empty"),
        (lambda p: p, ValueError, "no text files"),
        (lambda p: (p / "a.txt").write_text("tiny") and None or p, ValueError, "no train sequence"),
        (lambda p: (p / "b.bin").write_bytes(b"a\0b" * 50) and None or p / "b.bin", ValueError,
         "not text"),
    ],
)  # fmt: skip
def test_load_text_errors(tmp_path, setup, error, message):
    path = setup(tmp_path)
    with pytest.raises(error, match=message):
        load_text(path, TextConfig(seq_len=32), progress=False)


def test_text_config_errors():
    with pytest.raises(ValueError, match="seq_len"):
        TextConfig(seq_len=1)
    with pytest.raises(ValueError, match="split_fractions"):
        TextConfig(split_fractions=(0.5, 0.5, 0.5))
