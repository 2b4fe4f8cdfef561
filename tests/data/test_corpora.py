import pytest
import torch

from formerlab.data import (
    copy_task,
    default_corpus,
    even_pairs_task,
    kv_retrieval_task,
    load_corpus,
    non_repeated_set,
    repeated_set,
    window_batch,
)


def test_default_corpus_split_by_file_without_leakage():
    c = default_corpus()
    sets = {s: {p.resolve() for p in c.files[s]} for s in ("train", "valid", "test")}
    assert sets["train"] and sets["valid"] and sets["test"]
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["valid"])
    assert not (sets["valid"] & sets["test"])
    assert all(p.suffix == ".py" for s in sets.values() for p in s)
    assert not any("test" in p.parts for s in sets.values() for p in s)
    again = default_corpus()
    assert again.files == c.files, "file order and split must be deterministic"
    desc = c.describe()
    assert desc["train_bytes"] > 1_000_000 and "standard library" in desc["provenance"]
    assert int(c.tokens("test").max()) < 256


def test_folder_and_file_corpora(text_folder, tmp_path):
    c = load_corpus(text_folder)
    assert sum(len(v) for v in c.files.values()) == 40
    assert c.tokens("valid").numel() > 0 and c.tokens("test").numel() > 0
    one = text_folder / "doc00.txt"
    f = load_corpus(one)
    total = sum(f.tokens(s).numel() for s in ("train", "valid", "test"))
    assert total == one.stat().st_size


def test_corpus_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}.*no readable text"):
        load_corpus(empty)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="no readable text"):
        load_corpus(binary)


def test_window_batch_is_stateless_and_sliceable():
    toks = torch.arange(1000)
    a = window_batch(toks, 8, 16, seed=3, step=5)
    b = window_batch(toks, 8, 16, seed=3, step=5)
    assert torch.equal(a, b)
    assert torch.equal(window_batch(toks, 8, 16, seed=3, step=5, rows=slice(4, 8)), a[4:])
    assert not torch.equal(a, window_batch(toks, 8, 16, seed=3, step=6))
    assert torch.all(a[:, 1:] - a[:, :-1] == 1)


def test_eval_sets():
    toks = torch.arange(10_000) % 251
    non = non_repeated_set(toks, 64, 5)
    assert non.tokens.shape == (5, 64)
    rep = repeated_set(toks, 512, 6, train_len=128, seed=1)
    for row, p in zip(rep.tokens, rep.periods):
        assert 128 <= p <= 256
        assert torch.equal(row[p:], row[:-p]), "later copies must repeat the first chunk"
    short = repeated_set(toks, 128, 3, train_len=128)
    assert all(32 <= p <= 64 for p in short.periods)
    with pytest.raises(ValueError, match="period range"):
        repeated_set(toks, 128, 3, train_len=128, period=(10, 5))


def test_synthetic_tasks():
    x, y = copy_task(3, 5, 20, seed=1)
    assert torch.equal(x[:, :5], x[:, 6:]) and torch.all(y[:, :6] == -100)
    assert torch.equal(y[:, 6:], x[:, 6:])
    x, y = kv_retrieval_task(4, 6, 30, seed=2)
    for row, lab in zip(x, y):
        keys, vals = row[0:12:2], row[1:12:2]
        q = (keys == row[-2]).nonzero().item()
        assert vals[q] == row[-1] == lab[-1]
        assert len(set(keys.tolist())) == 6
    x, y = even_pairs_task(8, 7, seed=0)
    ans = (x[:, 0] == x[:, 6]).long() + 2
    assert torch.equal(y[:, -1], ans)
