"""The registered logits filters: each against transformers' processor of the same name (exact),
against brute force where the definition is a set (top-k, nucleus, min-p), consistent truncation,
the chain's ordering and context passing, and the errors users meet."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from formerlab.generate import (
    LOGITS_FILTERS,
    LogitsFilter,
    LogitsProcessorList,
    build_logits_processor,
    logits_filter_options,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
F32 = torch.float32

#: one test per registered filter (a new filter must add its test here)
FILTER_TESTS: dict[str, str] = {}


def covers(name):
    def deco(fn):
        FILTER_TESTS[name] = fn.__name__
        return fn
    return deco


def test_every_registered_filter_has_its_own_test():
    missing = set(LOGITS_FILTERS) - set(FILTER_TESTS)
    assert not missing, f"logits filters without a test: {sorted(missing)}"
    assert set(FILTER_TESTS) <= set(LOGITS_FILTERS)


def _scores(b=4, v=50, seed=0, dtype=F32):
    return 2.0 * torch.randn(b, v, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _ids(b=4, n=9, v=50, seed=1):
    return torch.randint(0, v, (b, n), generator=torch.Generator().manual_seed(seed))


def _kept(s):
    return {int(i) for i in torch.isfinite(s).nonzero().flatten()}


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers.generation.logits_process")


# --- one test per filter ---------------------------------------------------------------------
@covers("temperature")
def test_temperature_matches_transformers_and_sharpens(hf):
    s, ids = _scores(), _ids()
    for t in (0.3, 1.7):
        ours = LogitsFilter("temperature", temperature=t)(ids, s)
        assert torch.equal(ours, hf.TemperatureLogitsWarper(t)(ids, s.clone()))
    p = torch.softmax(LogitsFilter("temperature", temperature=0.3)(ids, s), -1)
    assert bool((p.amax(-1) > torch.softmax(s, -1).amax(-1)).all())


@covers("top_k")
def test_top_k_keeps_exactly_k_and_ties_and_matches_transformers(hf):
    s, ids = _scores(), _ids()
    for k in (1, 5, 49, 50, 80):
        ours = LogitsFilter("top_k", top_k=k)(ids, s)
        assert torch.equal(ours, hf.TopKLogitsWarper(k)(ids, s.clone()))
        for row, out in zip(s, ours):  # brute force: the k largest (distinct values)
            assert _kept(out) == set(row.argsort(descending=True)[:min(k, 50)].tolist())
            assert torch.equal(out[torch.isfinite(out)], row[torch.isfinite(out)])
    tied = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])
    assert _kept(LogitsFilter("top_k", top_k=2)(ids[:1], tied)) == {0, 2, 4}  # ties at the k-th
    keep3 = LogitsFilter("top_k", top_k=1, min_tokens_to_keep=3)(ids, s)
    assert torch.equal(keep3, hf.TopKLogitsWarper(1, min_tokens_to_keep=3)(ids, s.clone()))


def _nucleus_brute_force(row, p):
    """Smallest set of most probable tokens with mass >= p, by enumeration of prefix sizes."""
    probs = torch.softmax(row.double(), -1)
    order = probs.argsort(descending=True).tolist()
    for size in range(1, len(order) + 1):
        if float(probs[order[:size]].sum()) >= p:
            return set(order[:size])
    return set(order)


@covers("top_p")
def test_top_p_is_the_smallest_nucleus_and_matches_transformers(hf):
    s, ids = _scores(v=12), _ids(v=12)
    for p in (0.05, 0.3, 0.75, 0.9, 1.0):
        ours = LogitsFilter("top_p", top_p=p)(ids, s)
        assert torch.equal(ours, hf.TopPLogitsWarper(p)(ids, s.clone()))
        for row, out in zip(s, ours):
            assert _kept(out) == _nucleus_brute_force(row, p)
    # the definition is a set: no smaller subset of any tokens reaches the mass
    row = s[0]
    probs = torch.softmax(row.double(), -1)
    kept = _kept(LogitsFilter("top_p", top_p=0.75)(ids[:1], row[None])[0])
    for size in range(1, len(kept)):
        assert all(float(probs[list(c)].sum()) < 0.75 for c in itertools.combinations(range(12), size))
    assert _kept(LogitsFilter("nucleus", top_p=1e-9, min_tokens_to_keep=3)(ids, s)[0]) == \
        set(s[0].argsort(descending=True)[:3].tolist())


@covers("min_p")
def test_min_p_threshold_and_transformers(hf):
    s, ids = _scores(), _ids()
    for mp in (0.0, 0.05, 0.2, 0.9, 1.0):
        ours = LogitsFilter("min_p", min_p=mp)(ids, s)
        assert torch.equal(ours, hf.MinPLogitsWarper(mp)(ids, s.clone()))
        probs = torch.softmax(s, -1)
        for row_p, out in zip(probs, ours):
            assert _kept(out) == {i for i, q in enumerate(row_p.tolist())
                                  if q >= mp * float(row_p.max())}


@covers("repetition_penalty")
def test_repetition_penalty_matches_transformers_and_skips_padding(hf):
    s, ids = _scores(), _ids(n=30)
    for theta in (0.7, 1.3, 2.0):
        ours = LogitsFilter("repetition_penalty", penalty=theta)(ids, s)
        assert torch.equal(ours, hf.RepetitionPenaltyLogitsProcessor(theta)(ids, s.clone()))
        seen = {int(i) for i in ids[0]}
        for v in range(50):  # each token: penalised once if present, untouched otherwise
            want = (s[0, v] / theta if s[0, v] > 0 else s[0, v] * theta) if v in seen else s[0, v]
            assert float(ours[0, v]) == pytest.approx(float(want), rel=1e-6)
    # left padding is not a token: the padded positions' ids are not penalised
    mask = torch.ones_like(ids)
    mask[:, :10] = 0
    f = LogitsFilter("repetition_penalty", penalty=1.5)
    masked = f.apply(ids, s, attention_mask=mask)
    assert torch.equal(masked, f(ids[:, 10:], s))
    pad_len = torch.full((4,), 10)
    assert torch.equal(masked, hf.RepetitionPenaltyLogitsProcessor(
        1.5, prompt_ignore_length=pad_len)(ids, s.clone()))


@covers("min_new_tokens")
def test_min_new_tokens_holds_eos_back_then_releases_it(hf):
    s = _scores()
    f = LogitsFilter("min_new_tokens", min_new_tokens=3, prompt_length=5, eos_token_id=[7, 11])
    for n in range(5, 10):
        ids = _ids(n=n)
        out = f(ids, s)
        ref = hf.MinNewTokensLengthLogitsProcessor(5, 3, [7, 11])(ids, s.clone())
        assert torch.equal(out, ref)
        blocked = n - 5 < 3
        assert bool(torch.isinf(out[:, [7, 11]]).all()) == blocked
        assert torch.equal(out[:, :7], s[:, :7])


# --- consistent truncation (kexue.fm/archives/7500, arXiv 2002.02492) -------------------------
@pytest.mark.parametrize("name, params", [("top_k", {"top_k": 3}), ("top_p", {"top_p": 0.5}),
                                          ("min_p", {"min_p": 0.5})])
def test_consistent_truncation_keeps_eos_with_its_own_probability(name, params):
    s, ids = _scores(v=30), _ids(v=30)
    eos = int(s[0].argmin())  # the least likely token: every plain truncation drops it
    plain = LogitsFilter(name, **params)(ids, s)
    cons = LogitsFilter(name, **params, eos_token_id=eos)(ids, s)
    assert not bool(torch.isfinite(plain[0, eos]))
    assert torch.equal(cons[:, eos], s[:, eos])
    assert _kept(cons[0]) == _kept(plain[0]) | {eos}
    # renormalised: q(v) ∝ p(v) on V_kept ∪ {eos}
    p = torch.softmax(s[0].double(), -1)
    support = sorted(_kept(cons[0]))
    q = torch.softmax(cons[0].double(), -1)
    torch.testing.assert_close(q[support], p[support] / p[support].sum())
    assert float(q.sum()) == pytest.approx(1.0)


def test_chain_order_and_commuting_truncations():
    s, ids = _scores(), _ids()
    chain = build_logits_processor(do_sample=True, temperature=0.5, top_k=10, top_p=0.8,
                                   repetition_penalty=1.2)
    assert [p.name for p in chain] == ["repetition_penalty", "temperature", "top_k", "top_p"]
    assert build_logits_processor(do_sample=False, temperature=0.5, top_k=3) == []
    # temperature then top-k and top-k then temperature keep the same support
    t, k = LogitsFilter("temperature", temperature=0.4), LogitsFilter("top_k", top_k=7)
    assert torch.equal(torch.isfinite(k(ids, t(ids, s))), torch.isfinite(t(ids, k(ids, s))))
    # beam sampling keeps 1 + #eos tokens, as transformers does
    beams = build_logits_processor(do_sample=True, top_k=1, num_beams=3, eos_token_id=[2, 3])
    assert beams[0].params["min_tokens_to_keep"] == 3


def test_processor_list_runs_transformers_processors_and_passes_context(hf):
    s, ids = _scores(), _ids()
    mask = torch.ones_like(ids)
    seen = {}

    def spy(input_ids, scores, attention_mask=None):
        seen["mask"] = attention_mask
        return scores

    chain = LogitsProcessorList([hf.TopKLogitsWarper(5), spy, LogitsFilter("temperature",
                                                                            temperature=2.0)])
    out = chain(ids, s, attention_mask=mask)
    assert seen["mask"] is mask
    assert torch.equal(out, hf.TopKLogitsWarper(5)(ids, s.clone()) / 2.0)
    # and ours run inside transformers' list
    theirs = hf.LogitsProcessorList([LogitsFilter("top_p", top_p=0.5)])
    assert torch.equal(theirs(ids, s.clone()), hf.TopPLogitsWarper(0.5)(ids, s.clone()))


def test_bad_filters_are_named():
    with pytest.raises(ValueError, match="unknown logits filter 'top_q'; valid logits filter names"):
        LogitsFilter("top_q", top_q=1)
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) \\['k'\\].*allowed"):
        LogitsFilter("top_k", k=3)
    with pytest.raises(ValueError, match="needs \\['top_k'\\]"):
        LogitsFilter("top_k")
    with pytest.raises(ValueError, match="top_p must lie in \\(0, 1\\], got 1.5"):
        LogitsFilter("top_p", top_p=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        LogitsFilter("temperature", temperature=0.0)
    with pytest.raises(ValueError, match="top_k must be an int >= 1, got 0"):
        LogitsFilter("top_k", top_k=0)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        LogitsFilter("repetition_penalty", penalty=-1.0)
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        LogitsFilter("min_p", min_p=0.1, eos_token_id=[-1])
    assert "attention_mask" not in logits_filter_options("repetition_penalty")
