"""UnigramTokenizer: id layout, lossless round trip, HF-style batch call, persistence, bad input."""

from __future__ import annotations

import json
import math
import pickle
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formerlab.tokenize import FORMAT_VERSION, UnigramTokenizer

PIECES = {
    b"the": math.log(0.05), b" the": math.log(0.04), b"he": math.log(0.02), b"th": math.log(0.02),
    b"ing": math.log(0.03), b" ": math.log(0.1), b"e": math.log(0.05), "日本".encode(): -3.0,
    "語".encode(): -3.5, "🙂".encode(): -4.0, b"\n    ": -2.0, b"def ": -2.5,
}


@pytest.fixture(scope="module")
def tok() -> UnigramTokenizer:
    return UnigramTokenizer(PIECES)


@pytest.fixture(scope="module")
def tok_ref() -> UnigramTokenizer:
    return UnigramTokenizer(PIECES, backend="python")


def test_id_layout_and_vocab(tok):
    assert tok.special_tokens == ("<pad>", "<bos>", "<eos>")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == len(tok) == 3 + 256 + len({p for p in PIECES if len(p) > 1})
    for b in (0, 65, 255):
        assert tok.piece_to_id(bytes([b])) == 3 + b  # single byte b has id 3 + b
        assert tok.id_to_piece(3 + b) == bytes([b])
    multi = [tok.id_to_piece(i) for i in range(259, tok.vocab_size)]
    assert multi == sorted(multi, key=lambda p: (len(p), p))
    assert tok.id_to_piece(1) == "<bos>"
    assert tok.score(tok.piece_to_id(b"the")) == pytest.approx(math.log(0.05))
    assert math.isnan(tok.score(0))
    # missing single bytes get byte_score (default: min score − 10)
    assert tok.pieces[b"z"] == pytest.approx(min(PIECES.values()) - 10.0)
    assert UnigramTokenizer({}, byte_score=-1.0).pieces[b"a"] == -1.0
    assert UnigramTokenizer({b"a": -0.5}).pieces[b"a"] == -0.5  # given bytes keep their score
    custom = UnigramTokenizer({}, special_tokens=["<s>"])
    assert custom.vocab_size == 257 and custom.pad_id is None and custom.id_to_piece(1) == b"\x00"


def test_encode_decode_basics(tok):
    ids = tok.encode("the theing")
    assert tok.decode(ids) == "the theing"
    assert [p for p in tok.tokenize("the theing")] == [b"the", b" the", b"ing"]
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert tok.encode(b"\xff\x00") == [3 + 255, 3]
    assert tok.encode(bytearray(b"he")) == tok.encode(memoryview(b"he")) == tok.encode("he")
    wrapped = tok.encode("the", add_bos=True, add_eos=True)
    assert wrapped[0] == 1 and wrapped[-1] == 2 and tok.decode(wrapped) == "the"
    assert tok.decode(wrapped, skip_special_tokens=False) == "<bos>the<eos>"
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == "the theing"
    assert tok.batch_decode(torch.tensor([ids, ids])) == ["the theing"] * 2
    # "<bos>" written in a text is just bytes
    assert 1 not in tok.encode("<bos>")


def test_decode_invalid_utf8_and_errors_option(tok):
    ids = tok.encode("日本".encode()[:4])  # cut inside a character
    with pytest.raises(UnicodeDecodeError):
        tok.decode(ids)
    assert tok.decode(ids, errors="replace") == "日\ufffd"
    assert tok.decode(ids, errors="ignore") == "日"
    assert tok.decode_bytes(ids) == "日本".encode()[:4]


ALPHAS = st.sampled_from([None, 0.0, 0.1, 1.0, 5.0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), alpha=ALPHAS, seed=st.integers(0, 2**32))
def test_round_trip_bytes(tok, data, alpha, seed):
    ids = tok.encode(data, alpha=alpha, generator=torch.Generator().manual_seed(seed))
    assert tok.decode_bytes(ids) == data
    assert b"".join(tok.tokenize(data, alpha=alpha)) == data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=120) | st.text(alphabet="日本語🙂é\n the", max_size=60),
       alpha=ALPHAS)
def test_round_trip_str(tok, text, alpha):
    assert tok.decode(tok.encode(text, alpha=alpha, generator=torch.Generator())) == text
    assert tok.decode(tok.encode(text, alpha=alpha), errors="strict") == text


def test_fast_and_reference_tokenizers_agree(tok, tok_ref):
    texts = ["the theing 日本語 🙂", "def f():\n    return the", "", "\x00\xff" * 10]
    assert tok.encode_batch(texts) == tok_ref.encode_batch(texts)
    for alpha in (0.0, 0.3, 2.0):
        a = tok.encode_batch(texts, alpha=alpha, generator=torch.Generator().manual_seed(1))
        b = tok_ref.encode_batch(texts, alpha=alpha, generator=torch.Generator().manual_seed(1))
        assert a == b
    assert tok.log_partition(texts[0], 0.5) == pytest.approx(tok_ref.log_partition(texts[0], 0.5),
                                                             abs=1e-9)


def test_encode_batch_matches_encode_and_workers(tok):
    texts = [f"the {i} theing 日本 " * (i % 7) for i in range(40)]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, num_workers=2) == tok.encode_batch(texts)
    one = tok.encode_batch(texts, alpha=0.5, generator=torch.Generator().manual_seed(3))
    two = tok.encode_batch(texts, alpha=0.5, generator=torch.Generator().manual_seed(3),
                           num_workers=2)
    assert one == two
    with pytest.raises(TypeError, match="sequence of texts"):
        tok.encode_batch("the")
    with pytest.raises(ValueError, match="num_workers"):
        tok.encode_batch(texts, num_workers=0)


def test_hf_style_call(tok):
    out = tok(["the", "the theing"], padding=True, return_tensors="pt", add_bos=True)
    assert out["input_ids"].dtype == torch.long and out["input_ids"].shape == (2, 4)
    assert out["input_ids"][0].tolist() == [1, tok.piece_to_id(b"the"), 0, 0]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    left = tok(["the", "the theing"], padding=True, padding_side="left")
    assert left["input_ids"][0][:2] == [0, 0] and left["attention_mask"][0] == [0, 0, 1]
    fixed = tok(["the the the the"], padding="max_length", truncation=True, max_length=3,
                add_eos=True, return_tensors="pt")
    assert fixed["input_ids"].shape == (1, 3) and fixed["input_ids"][0, -1].item() == 2
    single = tok("the theing")
    assert single["input_ids"] == tok.encode("the theing")
    assert tok("the", return_tensors="pt")["input_ids"].shape == (1, 1)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["the", "the theing"], return_tensors="pt")
    with pytest.raises(ValueError, match="max_length"):
        tok(["the"], truncation=True)
    with pytest.raises(ValueError, match="return_tensors"):
        tok(["the"], return_tensors="np")
    with pytest.raises(ValueError, match="padding"):
        tok(["the"], padding="sideways")
    with pytest.raises(ValueError, match="<pad>"):
        UnigramTokenizer({}, special_tokens=[])(["a", "ab"], padding=True)


def test_bad_input_errors(tok):
    with pytest.raises(TypeError, match="str or bytes"):
        tok.encode(123)
    with pytest.raises(TypeError, match="str or bytes"):
        tok.encode(["the"])
    with pytest.raises(ValueError, match="alpha"):
        tok.encode("the", alpha=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        tok.encode("the", alpha=float("nan"))
    with pytest.raises(TypeError, match="alpha"):
        tok.encode("the", alpha="0.1")
    with pytest.raises(TypeError, match="generator"):
        tok.encode("the", alpha=0.1, generator=0)
    with pytest.raises(ValueError, match="unknown token id 999999 at position 1"):
        tok.decode([5, 999_999])
    with pytest.raises(ValueError, match="unknown token id -1"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="integers"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\ud800")
    with pytest.raises(ValueError, match="sampler"):
        tok.encode("the", alpha=1.0, sampler="nbest")
    with pytest.raises(TypeError, match="bytes"):
        UnigramTokenizer({"the": -1.0})
    with pytest.raises(ValueError, match="finite"):
        UnigramTokenizer({b"the": float("-inf")})
    with pytest.raises(ValueError, match="empty"):
        UnigramTokenizer({b"": -1.0})
    with pytest.raises(ValueError, match="unique"):
        UnigramTokenizer({}, special_tokens=["<s>", "<s>"])
    with pytest.raises(ValueError, match="not a piece"):
        tok.piece_to_id(b"zzz")
    with pytest.raises(ValueError, match="lattice backend"):
        UnigramTokenizer({}, backend="cuda")


def test_save_load_round_trip_and_pickle(tok, tmp_path):
    path = tok.save(tmp_path / "vocab.json")
    again = UnigramTokenizer.load(path)
    assert again.pieces == tok.pieces and again.special_tokens == tok.special_tokens
    text = "the theing 日本語 🙂 \x00"
    assert again.encode(text) == tok.encode(text)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == FORMAT_VERSION and data["format"] == "formerlab-unigram"
    assert any(p.get("text") == "日本" for p in data["pieces"])
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text) == tok.encode(text)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=FORMAT_VERSION + 1), "newer than the supported version"),
        (lambda d: d.update(version="1"), "version"),
        (lambda d: d.update(format="sentencepiece"), "not a formerlab-unigram vocabulary"),
        (lambda d: d.pop("pieces"), "'pieces' is missing"),
        (lambda d: d["pieces"][260].update(bytes="zz"), "bad hex"),
        (lambda d: d["pieces"][260].pop("score"), "needs 'bytes' and 'score'"),
        (lambda d: d["pieces"][260].update(score=None), "score must be a number"),
        (lambda d: d["pieces"][260].update(id=5), "does not match the id layout"),
        (lambda d: d["pieces"].append(dict(d["pieces"][260])), "duplicate piece"),
        (lambda d: d["pieces"].pop(10), "lacks 1 single-byte pieces"),
        (lambda d: d.update(special_tokens=[1, 2]), "malformed vocabulary"),
    ],
)
def test_load_rejects_bad_files(tok, tmp_path, mutate, message):
    data = tok.to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        UnigramTokenizer.load(path)


def test_load_rejects_non_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid JSON"):
        UnigramTokenizer.load(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="UTF-8"):
        UnigramTokenizer.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        UnigramTokenizer.load(path)


def test_long_input_is_linear_and_has_no_recursion(tok):
    """10 MB in one call: no recursion limit, no quadratic blow-up."""
    pytest.importorskip("numba")
    unit = ("def the():\n    return the theing 日本語 🙂\n" * 50).encode()
    small = unit * (1_000_000 // len(unit))
    big = unit * (10_000_000 // len(unit))
    tok.encode(small[:1000])
    t0 = time.perf_counter()
    ids_small = tok.encode(small)
    t1 = time.perf_counter()
    ids_big = tok.encode(big)
    t2 = time.perf_counter()
    assert tok.decode_bytes(ids_big) == big
    assert len(ids_big) == pytest.approx(10 * len(ids_small), rel=0.01)
    assert (t2 - t1) < 25 * (t1 - t0) + 1.0  # ~10x the bytes must not cost ~100x the time
    sampled = tok.encode(big, alpha=0.1, generator=torch.Generator().manual_seed(0))
    assert tok.decode_bytes(sampled) == big
    assert math.isfinite(tok.log_partition(big[:2_000_000], 1.0))


def test_encode_batch_input_kinds(tok):
    texts = ["the", "日本語 🙂", "", "ing"]
    want = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts) == want
    assert tok.encode_batch(tuple(texts)) == want
    assert tok.encode_batch(t for t in texts) == want  # any iterable
    assert tok.encode_batch([t.encode() for t in texts]) == want  # bytes
    assert tok.encode_batch(["the", b"ing"]) == [want[0], want[3]]  # mixed
    with pytest.raises(ValueError, match=r"texts\[1\].*lone surrogate"):
        tok.encode_batch(["ok", "bad\ud800"])
    with pytest.raises(TypeError, match="str or bytes"):
        tok.encode_batch(["ok", 3])


def test_fallback_without_numba_warns_once(monkeypatch):
    from formerlab.tokenize import engine

    monkeypatch.setattr(engine, "numba_available", lambda: False)
    monkeypatch.setattr(engine, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        first = UnigramTokenizer(PIECES)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second tokenizer does not warn again
        second = UnigramTokenizer(PIECES)
    assert first.backend == second.backend == "python"
    assert first.decode(first.encode("the theing 🙂")) == "the theing 🙂"
    with pytest.raises(ImportError, match=r"formerlab\[fast\]"):
        UnigramTokenizer(PIECES, backend="numba")
