"""Trainer: n-gram candidate oracle and the vocabulary properties."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from formerlab.tokenize import UnigramTokenizer, train_unigram
from formerlab.tokenize.trainer import chunk_counts, count_ngram_candidates

WORDS = ["alpha", "beta", "gamma", "return", "self", "import", "数据", "模型", "🙂", "naïve"]


def synthetic_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
        lines.append(" ".join(words) + f" {i % 97}\n" + ("\n" if i % 5 == 0 else ""))
    return ["".join(lines[i : i + 40]) for i in range(0, n_lines, 40)]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return synthetic_corpus()


@pytest.fixture(scope="module")
def trained(corpus) -> UnigramTokenizer:
    return UnigramTokenizer.train(corpus, 400, progress=False)


def brute_candidates(chunks, weights, max_len, min_count):
    count: Counter[bytes] = Counter()
    for chunk, w in zip(chunks, weights):
        for i in range(len(chunk)):
            for j in range(i + 1, min(len(chunk), i + max_len) + 1):
                count[chunk[i:j]] += w
    out = {}
    for s, c in count.items():
        if len(s) < 2 or c < min_count:
            continue
        longer = [count[s + bytes([x])] for x in range(256)] if len(s) < max_len else []
        longer += [count[bytes([x]) + s] for x in range(256)] if len(s) < max_len else []
        if c not in longer:  # maximal: no one-byte extension is as frequent
            out[s] = c
    return out


def test_ngram_candidates_match_brute_force():
    rng = random.Random(1)
    chunks = sorted({bytes(rng.choice(b"abcab") for _ in range(rng.randint(1, 12)))
                     for _ in range(60)})
    weights = np.array([rng.randint(1, 3) for _ in chunks], float)
    for max_len, min_count in ((4, 2), (6, 3), (16, 2)):
        buf, pos, length, count, byte_counts = count_ngram_candidates(
            chunks, weights, max_len=max_len, min_count=min_count, ensure_unicode=False)
        got = {buf[p:p + n].tobytes(): c for p, n, c in zip(pos, length, count)}
        assert got == brute_candidates(chunks, weights, max_len, min_count)
        assert byte_counts.sum() == pytest.approx(sum(w * len(c) for c, w in zip(chunks, weights)))


def test_chunking_rules():
    counts = chunk_counts(["ab\n\ncd\nab\n\n", b"x12y"], isolate_digits=True)
    assert counts == Counter({b"ab\n\n": 2, b"cd\n": 1, b"x": 1, b"1": 1, b"2": 1, b"y": 1})
    assert chunk_counts(["abcdefg"], max_chunk_bytes=3) == Counter({b"abc": 1, b"def": 1, b"g": 1})


def test_vocab_properties(trained):
    pieces = trained.pieces
    assert all(bytes([b]) in pieces for b in range(256))
    assert trained.vocab_size <= 400
    assert trained.vocab_size > 300  # the corpus supports many multi-byte pieces
    ids = [trained.piece_to_id(p) for p in pieces]
    assert sorted(ids) == list(range(3, trained.vocab_size))  # contiguous after the specials
    assert max(map(len, pieces)) <= 16
    for piece in pieces:
        if len(piece) > 1:
            assert not 0x80 <= piece[0] <= 0xBF  # ensure_unicode: no continuation-byte start
            piece.decode("utf-8")  # and valid UTF-8
            assert trained.tokenize(piece) == [piece]  # no wasted piece: tokenises as itself
    assert np.exp(list(pieces.values())).sum() == pytest.approx(1.0, abs=1e-6)


def test_frequent_words_become_pieces(trained, corpus):
    for word in ("alpha", "return", "import", "数据", "模型", "🙂"):
        assert any(word.encode() in p for p in trained.pieces), word
    assert trained.tokenize("import alpha ")[0] in (b"import ", b"import alpha ")
    assert any("naïve".encode() in p for p in trained.tokenize("naïve "))
    text = "".join(corpus)
    assert trained.bytes_per_token([text]) > 3.0  # far better than bytes (1.0)
    assert trained.meta["trainer"].endswith("train_unigram") and trained.meta["vocab_size"] == 400


def test_training_is_deterministic_and_order_and_worker_independent(corpus, trained):
    again = UnigramTokenizer.train(list(reversed(corpus)), 400, progress=False)
    assert again.pieces == trained.pieces
    two = UnigramTokenizer.train(corpus, 400, progress=False, num_workers=2)
    assert two.pieces == trained.pieces


def test_options_files_and_hard_em(corpus, tmp_path):
    paths = []
    for i, text in enumerate(corpus[:4]):
        path = tmp_path / f"part{i}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    from_files = train_unigram(paths, 300, progress=False, e_step="viterbi")
    from_texts = train_unigram(corpus[:4], 300, progress=False, e_step="viterbi")
    assert from_files.pieces == from_texts.pieces
    digits = train_unigram(corpus, 320, progress=False, isolate_digits=True, max_piece_bytes=6)
    for piece in digits.pieces:
        assert len(piece) <= 6
        if len(piece) > 1:
            assert not any(48 <= b <= 57 for b in piece)
    single = train_unigram(corpus[0], 270, progress=False)  # one text, not an iterable of texts
    assert single.vocab_size <= 270


def test_trainer_bad_input(corpus):
    with pytest.raises(ValueError, match="at least 256 \\+ 3"):
        UnigramTokenizer.train(corpus, 258)
    with pytest.raises(ValueError, match="at least 256 \\+ 1"):
        UnigramTokenizer.train(corpus, 256, special_tokens=["<pad>"])
    with pytest.raises(TypeError, match="must be str, bytes or os.PathLike"):
        UnigramTokenizer.train([1, 2], 300)
    with pytest.raises(TypeError, match="vocab_size"):
        UnigramTokenizer.train(corpus, 300.0)
    with pytest.raises(ValueError, match="E-step"):
        UnigramTokenizer.train(corpus, 300, e_step="mcmc")
    with pytest.raises(ValueError, match="shrink"):
        UnigramTokenizer.train(corpus, 300, shrink=1.5)
    with pytest.raises(FileNotFoundError):
        UnigramTokenizer.train([Path("/nonexistent/formerlab.txt")], 300)
