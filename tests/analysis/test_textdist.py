"""WMD / WRD and their bounds on real MiniLM word vectors, against POT on the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from formerlab.analysis import (
    TEXT_DISTANCES,
    rwmd,
    rwrd,
    transport_topk,
    wcd,
    wmd,
    wrd,
    wrd_lower_bound,
    wrd_similarity,
)

ot = pytest.importorskip("ot")
F64 = torch.float64
SENTENCES = [
    "The president greets the press in Chicago.",
    "Obama speaks to the media in Illinois.",
    "Return a new sorted list from the items in iterable.",
    "Sort the list in place and return None.",
    "The band gave a concert in Japan.",
    "Split the string at the first occurrence of the separator.",
]


def test_every_registered_distance_is_covered():
    assert set(TEXT_DISTANCES) == {"wmd", "wrd"}


def _pot_wmd(x, y):
    a = np.full(len(x), 1 / len(x))
    b = np.full(len(y), 1 / len(y))
    return ot.emd2(a, b, ot.dist(x.numpy(), y.numpy(), metric="euclidean"))


def _pot_wrd(x, y):
    nx, ny = np.linalg.norm(x.numpy(), axis=1), np.linalg.norm(y.numpy(), axis=1)
    return ot.emd2(nx / nx.sum(), ny / ny.sum(), ot.dist(x.numpy(), y.numpy(), metric="cosine"))


def test_wmd_wrd_equal_pot_on_the_definitions(word_vectors):
    vecs = [word_vectors(s) for s in SENTENCES]
    for i, x in enumerate(vecs):
        for y in vecs[i + 1:]:
            assert abs(float(wmd(x, y)) - _pot_wmd(x, y)) < 1e-8
            assert abs(float(wrd(x, y)) - _pot_wrd(x, y)) < 1e-8


def test_padded_batch_equals_one_pair_at_a_time(word_vectors):
    vecs = [word_vectors(s) for s in SENTENCES]
    n = max(len(v) for v in vecs)
    x = torch.zeros(len(vecs), n, vecs[0].shape[1], dtype=F64)
    mask = torch.zeros(len(vecs), n, dtype=torch.bool)
    for k, v in enumerate(vecs):
        x[k, : len(v)], mask[k, : len(v)] = v, True
    y = x.roll(1, 0)
    my = mask.roll(1, 0)
    for fn in (wmd, wrd, wcd, wrd_lower_bound, rwmd, rwrd):
        batched = fn(x, y, mask, my)
        single = torch.stack([fn(a[m], b[mb]) for a, m, b, mb in zip(x, mask, y, my)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-10)
        assert bool(torch.isfinite(batched).all())


def test_bounds_and_ranges_on_su_random_example():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(5, 8, generator=g, dtype=F64)
        y = torch.randn(7, 8, generator=g, dtype=F64)
        assert float(wcd(x, y)) <= float(wmd(x, y)) + 1e-12
        assert float(rwmd(x, y)) <= float(wmd(x, y)) + 1e-12
        d = float(wrd(x, y))
        assert float(rwrd(x, y)) <= d + 1e-12
        assert 0 <= float(wrd_lower_bound(x, y)) <= d + 1e-12 and d <= 2
        assert abs(float(wmd(x, y)) - float(wmd(y, x))) < 1e-12
        assert abs(d - float(wrd(y, x))) < 1e-12
        assert abs(float(wrd_similarity(x, y)) - (1 - d)) < 1e-15


def test_identities(word_vectors):
    x = word_vectors(SENTENCES[0])
    y = word_vectors(SENTENCES[1])
    assert abs(float(wmd(x, x))) < 1e-6 and abs(float(wrd(x, x))) < 1e-12
    # single tokens: WMD = ‖w − w'‖, WRD = 1 − cos
    a, b = x[:1], y[:1]
    assert abs(float(wmd(a, b)) - float((a - b).norm())) < 1e-6
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert abs(float(wrd(a, b)) - float(1 - cos)) < 1e-12
    # WRD ignores the scale of a sentence, WMD does not
    assert abs(float(wrd(3.0 * x, y)) - float(wrd(x, y))) < 1e-12
    assert abs(float(wmd(3.0 * x, y)) - float(wmd(x, y))) > 1e-2


def test_related_sentences_are_closer(word_vectors):
    """Kusner et al.'s example: the paraphrase is closer than an unrelated sentence."""
    x, para, other = (word_vectors(s) for s in SENTENCES[:3])
    assert float(wmd(x, para)) < float(wmd(x, other))
    assert float(wrd(x, para)) < float(wrd(x, other))


def test_gradients_through_word_vectors():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: wmd(a, b), (x, y), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda a, b: wrd(a, b), (x, y), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda a, b: wmd(a, b, solver="sinkhorn", reg=0.5),
                                    (x, y), eps=1e-6, atol=1e-5)
    # WMD(x, x): zero distances, finite gradient
    z = x.detach().clone().requires_grad_()
    wmd(z, z.detach()).backward()
    assert bool(torch.isfinite(z.grad).all())


def test_topk_equals_full_scan_and_prunes(word_vectors, docstrings):
    vecs = [word_vectors(s) for s in docstrings[:60]]
    n = max(len(v) for v in vecs)
    docs = torch.zeros(len(vecs), n, vecs[0].shape[1], dtype=F64)
    mask = torch.zeros(len(vecs), n, dtype=torch.bool)
    for k, v in enumerate(vecs):
        docs[k, : len(v)], mask[k, : len(v)] = v, True
    query = word_vectors("Sort a list and return it.")
    for distance, fn in (("wmd", wmd), ("wrd", wrd)):
        full = fn(query[None], docs, None, mask)
        res = transport_topk(query, docs, k=3, distance=distance, mask_docs=mask, batch_size=4)
        torch.testing.assert_close(res.values, full.sort().values[:3])
        assert set(res.indices.tolist()) == set(full.argsort()[:3].tolist())
        assert res.num_exact < len(vecs) / 2, res.num_exact


def test_bad_input_names_the_argument():
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ValueError, match="x is an empty sequence"):
        wmd(x[:0], x)
    with pytest.raises(ValueError, match="same vector size"):
        wrd(x, torch.randn(4, 5, dtype=F64))
    with pytest.raises(ValueError, match="mask_y masks out every token"):
        wmd(x, x, None, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_x must have shape"):
        wmd(x, x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="y must be a tensor"):
        wrd(x, x.numpy())
    with pytest.raises(ValueError, match="all zero"):
        wrd(torch.zeros(2, 3, dtype=F64), x)
    with pytest.raises(ValueError, match="wmd, wrd"):
        transport_topk(x, x[None], distance="emd")
