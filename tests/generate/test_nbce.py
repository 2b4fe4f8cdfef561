"""NBCE: the merge against a brute-force naive-Bayes posterior, the supplement's rules, and the
decoding loop (plain decoding with one context, batched rows equal separate runs) on formerlab's
CausalLM and tiny random Hugging Face models."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

from formerlab import ModelConfig
from formerlab.generate.nbce import (
    NBCE_POOLINGS,
    nbce_decode,
    nbce_generate,
    nbce_merge,
    nbce_prompts,
    split_long_text,
    truncate_logprobs,
)
from formerlab.models import CausalLM

F64 = torch.float64


def rand_logits(rows, vocab, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g, dtype=F64) * scale


def probs_py(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [x / sum(e) for x in e]


def entropy_py(p):
    return -sum(x * math.log(x) for x in p if x > 0)


# --- the merge ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4])
def test_mean_pooling_with_beta_n_minus_1_is_the_naive_bayes_posterior(n):
    logits = rand_logits(n + 1, 9, seed=n)
    p = [probs_py(r) for r in logits.tolist()]
    post = [math.prod(p[k][t] for k in range(1, n + 1)) / p[0][t] ** (n - 1) for t in range(9)]
    post = [x / sum(post) for x in post]
    merged, chosen = nbce_merge(logits, beta=n - 1, pooling="mean", top_p=None)
    assert chosen is None and merged.dtype == F64
    torch.testing.assert_close(merged.exp(), torch.tensor(post, dtype=F64), rtol=1e-12, atol=1e-14)


def test_beta_zero_min_entropy_is_the_lowest_entropy_context():
    logits = rand_logits(5, 11, seed=3)
    logits[3] *= 4.0  # the peakiest row
    p = [probs_py(r) for r in logits.tolist()]
    ent = [entropy_py(q) for q in p[1:]]
    best = ent.index(min(ent))
    merged, chosen = nbce_merge(logits, beta=0.0, top_p=None, eta=0.0)
    assert int(chosen) == best == 2
    torch.testing.assert_close(merged.exp(), torch.tensor(p[best + 1], dtype=F64), rtol=1e-12, atol=0)


def test_min_entropy_formula_with_beta():
    logits = rand_logits(4, 8, seed=5)
    p = [probs_py(r) for r in logits.tolist()]
    k = min(range(1, 4), key=lambda i: entropy_py(p[i]))
    beta = 0.25
    raw = [(1 + beta) * math.log(p[k][t]) - beta * math.log(p[0][t]) for t in range(8)]
    ref = probs_py(raw)
    merged, chosen = nbce_merge(logits, beta=beta, top_p=None)
    assert int(chosen) == k - 1
    torch.testing.assert_close(merged.exp(), torch.tensor(ref, dtype=F64), rtol=1e-12, atol=1e-15)


def test_max_pooling_is_tokenwise():
    logits = rand_logits(4, 6, seed=7)
    logp = [[math.log(x) for x in probs_py(r)] for r in logits.tolist()]
    raw = [max(logp[k][t] for k in (1, 2, 3)) for t in range(6)]
    merged, chosen = nbce_merge(logits, beta=0.0, pooling="max", top_p=None)
    assert chosen is None
    torch.testing.assert_close(merged.exp(), torch.tensor(probs_py(raw), dtype=F64), rtol=1e-12, atol=0)


def test_every_registered_pooling_is_covered():
    assert set(NBCE_POOLINGS) == {"min_entropy", "mean", "max"}


def test_truncation_and_the_infinity_rule_by_hand():
    # rows as probabilities; top_p = 0.7 keeps {0, 1} of the context, {0, 2} of the unconditional
    p_uncond = [0.5, 0.1, 0.3, 0.1]
    p_ctx = [0.4, 0.35, 0.15, 0.1]
    logits = torch.tensor([p_uncond, p_ctx], dtype=F64).log()
    merged, _ = nbce_merge(logits, beta=0.5, top_p=0.7)
    raw = [1.5 * math.log(0.4) - 0.5 * math.log(0.5),  # both kept: the formula
           math.log(0.35)]                              # unconditional truncated: pooled alone
    ref = probs_py(raw)
    assert torch.isneginf(merged[2:]).all()
    torch.testing.assert_close(merged[:2].exp(), torch.tensor(ref, dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("pooling", sorted(NBCE_POOLINGS))
@pytest.mark.parametrize("top_p,top_k", [(0.3, None), (0.95, 3), (None, 1)])
def test_no_nan_or_plus_inf_under_truncation(pooling, top_p, top_k):
    logits = rand_logits(6, 50, seed=11, scale=5.0)
    merged, _ = nbce_merge(logits, pooling=pooling, top_p=top_p, top_k=top_k)
    assert not torch.isnan(merged).any() and not torch.isposinf(merged).any()
    assert torch.isfinite(merged).any()
    torch.testing.assert_close(merged.exp().sum(), torch.tensor(1.0, dtype=F64))


def test_disjoint_supports_fall_back_to_the_untruncated_merge():
    logits = torch.full((3, 4), -20.0, dtype=F64)
    logits[1, 0] = logits[2, 1] = logits[0, 2] = 0.0  # three one-hot-ish rows, disjoint peaks
    merged, _ = nbce_merge(logits, beta=1.0, pooling="mean", top_p=0.5)
    full, _ = nbce_merge(logits, beta=1.0, pooling="mean", top_p=None)
    torch.testing.assert_close(merged, full)


def test_top_p_matches_transformers_warper():
    transformers = pytest.importorskip("transformers")
    logits = rand_logits(7, 40, seed=13, scale=3.0)
    logp = torch.log_softmax(logits, -1)
    for p in (0.05, 0.5, 0.9, 0.99):
        ours = truncate_logprobs(logp, top_p=p)
        ref = transformers.TopPLogitsWarper(p)(None, logp.clone())
        assert torch.equal(torch.isneginf(ours), torch.isneginf(ref)), p
    kept = torch.isfinite(truncate_logprobs(logp, top_p=0.5))
    for row, keep in zip(logp.exp(), kept):  # smallest set reaching the mass
        order = row.argsort(descending=True)
        m = int(keep.sum())
        assert set(order[:m].tolist()) == set(keep.nonzero().flatten().tolist())
        assert row[order[:m]].sum() >= 0.5 > row[order[:m - 1]].sum()


def test_top_k_keeps_ties():
    logp = torch.log_softmax(torch.tensor([[3.0, 1.0, 1.0, 0.0]], dtype=F64), -1)
    assert torch.isfinite(truncate_logprobs(logp, top_k=2)).sum() == 3


def test_stickiness_needs_a_gap_larger_than_eta():
    def row(peak):  # two-token rows: entropy falls as the peak grows
        return [math.log(peak), math.log(1 - peak)]

    uncond = row(0.5)
    for p0, p1, switch in [(0.9, 0.87, False), (0.97, 0.8, True)]:
        h0, h1 = entropy_py([p0, 1 - p0]), entropy_py([p1, 1 - p1])
        assert (h1 - h0 > 0.1) == switch  # the gap is what decides
        logits = torch.tensor([uncond, row(p0), row(p1)], dtype=F64)
        _, free = nbce_merge(logits, top_p=None, eta=0.1)
        _, sticky = nbce_merge(logits, top_p=None, eta=0.1, prev=1)
        assert int(free) == 0
        assert int(sticky) == (0 if switch else 1)


def test_context_permutation_only_moves_the_choice():
    logits = rand_logits(6, 30, seed=17)
    perm = torch.tensor([0, 3, 5, 1, 2, 4])
    for pooling in NBCE_POOLINGS:
        a, ka = nbce_merge(logits, pooling=pooling)
        b, kb = nbce_merge(logits[perm], pooling=pooling)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        if ka is not None:
            assert int(perm[int(kb) + 1]) == int(ka) + 1


def test_batched_merge_equals_one_by_one():
    logits = torch.stack([rand_logits(4, 12, seed=s) for s in range(3)])
    prev = torch.tensor([-1, 0, 2])
    merged, chosen = nbce_merge(logits, prev=prev)
    for i in range(3):
        m, k = nbce_merge(logits[i], prev=None if prev[i] < 0 else int(prev[i]))
        torch.testing.assert_close(merged[i], m)
        assert int(chosen[i]) == int(k)


@pytest.mark.parametrize("kwargs, match", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"),
    ({"top_k": 0}, "top_k"), ({"beta": -1.0}, "beta"), ({"eta": float("nan")}, "eta"),
    ({"pooling": "median"}, "min_entropy"), ({"prev": 7}, "prev"), ({"prev": 0.5}, "prev"),
])
def test_merge_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nbce_merge(rand_logits(3, 5), **kwargs)


@pytest.mark.parametrize("shape", [(5,), (1, 5)])
def test_merge_needs_an_unconditional_row_and_a_context(shape):
    with pytest.raises(ValueError, match=r"n \+ 1"):
        nbce_merge(torch.zeros(shape))


# --- a toy lookup LM: each context holds the answer to one question --------------------------------
class LookupLM(torch.nn.Module):
    """Ids: 0 pad, 1 eos, 2 '?', keys 10..19, values 20..29. A row ``… k v … ? k`` predicts ``v``
    if the pair ``k v`` is in the row, else a flat distribution; after a value it predicts eos."""

    vocab = 32

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False,
                position_ids=None):
        rows = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], 1)
        mask = attention_mask.bool()
        logits = torch.zeros(rows.shape[0], 1, self.vocab)
        for b in range(rows.shape[0]):
            seq = rows[b][mask[b]].tolist()
            last = seq[-1]
            if 20 <= last < 30:
                logits[b, 0, 1] = 10.0
            elif 10 <= last < 20 and len(seq) > 1 and seq[-2] == 2:
                hits = [seq[i + 1] for i in range(len(seq) - 3) if seq[i] == last]
                if hits:
                    logits[b, 0, hits[0]] = 8.0
        return type("Out", (), {"logits": logits, "past_key_values": rows})()


class ToyTokenizer:
    eos_token_id = 1
    pad_token_id = 0

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i < 3))


def test_nbce_retrieves_the_context_holding_the_answer():
    contexts = ["10 20 11 21", "12 22 13 23", "14 24 15 25"]
    model, tok = LookupLM(), ToyTokenizer()
    for key, ctx in [(10, 0), (13, 1), (15, 2)]:
        out = nbce_generate(model, tok, contexts, f"2 {key}", "{context} {question}",
                            max_new_tokens=4, temperature=0.0)
        assert out.token_ids == [key + 10] and out.text == str(key + 10)
        assert out.chosen == [ctx]


# --- the loop on real models --------------------------------------------------------------------
def tiny_lm(seed=0, **kw):
    cfg = ModelConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, **kw)
    m = CausalLM(cfg)
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return m.eval()


def hf_models():
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    return {"hf-llama": llama.eval(), "hf-gpt2": gpt2.eval()}


MODELS = ["formerlab", "formerlab-learned", "hf-llama", "hf-gpt2"]


def get_model(name):
    if name == "formerlab":
        return tiny_lm()
    if name == "formerlab-learned":
        return tiny_lm(position="learned", max_position_embeddings=64)
    return hf_models()[name]


def full_logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)


def prompts(seed=0, lengths=(3, 7, 5, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 40, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("name", MODELS)
def test_batched_rows_with_a_shared_cache_equal_separate_runs(name):
    model = get_model(name)
    rows = prompts()
    tokens, _, scores, _ = nbce_decode(model, rows, 5, output_scores=True, temperature=0.0,
                                       pad_token_id=0)
    assert len(scores) == 5
    for step, batch in enumerate(scores):
        for r, row in enumerate(rows):
            ref = full_logprobs(model, row + tokens[:step])
            torch.testing.assert_close(batch[r], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_one_context_with_beta_zero_is_plain_greedy_decoding(name):
    model = get_model(name)
    uncond, ctx = prompts(seed=1, lengths=(2, 6))
    tokens, chosen, _, _ = nbce_decode(model, [uncond, ctx], 6, beta=0.0, top_p=None,
                                       temperature=0.0)
    seq = list(ctx)
    for _ in range(6):  # greedy without cache, the oracle
        seq.append(int(full_logprobs(model, seq).argmax()))
    assert tokens == seq[len(ctx):]
    assert chosen == [0] * 6


def test_nbce_generate_end_to_end_with_a_tokenizer_and_seeds():
    model, tok = tiny_lm(seed=2), ToyTokenizer()
    contexts = ["5 6 7 8 9", "11 12 13", "30 31 32 33 34 35"]
    a = nbce_generate(model, tok, contexts, "2 7", "{context} {question}", max_new_tokens=8,
                      temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    b = nbce_generate(model, tok, contexts, "2 7", "{context} {question}", max_new_tokens=8,
                      temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert a.token_ids == b.token_ids and a.chosen == b.chosen
    assert len(a.chosen) == len(a.token_ids) <= 8 and set(a.chosen) <= {0, 1, 2}
    assert 1 not in a.token_ids  # stopped at eos, not emitted
    assert nbce_prompts(tok, contexts, "2 7", "{context} {question}")[0] == [2, 7]


def test_nbce_generate_rejects_bad_input():
    model, tok = tiny_lm(), ToyTokenizer()
    with pytest.raises(ValueError, match="contexts"):
        nbce_generate(model, tok, [], "2 7", "{context} {question}")
    with pytest.raises(ValueError, match=r"contexts\[1\]"):
        nbce_generate(model, tok, ["3 4", "  "], "2 7", "{context} {question}")
    with pytest.raises(ValueError, match="split_long_text"):
        nbce_generate(model, tok, "3 4 5", "2 7", "{context} {question}")
    with pytest.raises(ValueError, match="top_p"):
        nbce_generate(model, tok, ["3 4"], "2 7", "{context} {question}", top_p=0.0)
    with pytest.raises(ValueError, match="template"):
        nbce_generate(model, tok, ["3 4"], "2 7", "{context} only")

    class NoEos(ToyTokenizer):
        eos_token_id = None

    with pytest.raises(ValueError, match="eos_token_id"):
        nbce_generate(model, NoEos(), ["3 4"], "2 7", "{context} {question}")
    out = nbce_generate(model, NoEos(), ["3 4"], "2 7", "{context} {question}",
                        max_new_tokens=3, eos_token_id=[1])
    assert len(out.token_ids) <= 3


# --- splitting a long document ---------------------------------------------------------------------
def test_split_long_text_windows_overlap_and_cover():
    import textwrap

    text = textwrap.dedent(torch.nn.Module.__doc__ or "") * 3
    for window, overlap in [(200, 0), (200, 50), (97, 30), (10, 9), (1, 0)]:
        spans = split_long_text(text, window, overlap, return_offsets=True)
        parts = split_long_text(text, window, overlap)
        assert parts == [text[a:b] for a, b in spans]
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(0 < b - a <= window for a, b in spans)
        for (a0, b0), (a1, b1) in itertools.pairwise(spans):
            assert a0 < a1 <= b0 < b1 and b0 - a1 <= overlap  # no gap, bounded overlap
        if overlap == 0:
            assert "".join(parts) == text
    words = split_long_text("alpha beta gamma delta epsilon", 12)
    assert words == ["alpha beta ", "gamma delta ", "epsilon"]
    assert split_long_text("alpha beta gamma delta", 12, 6) == ["alpha beta ", "beta gamma ",
                                                                  "gamma delta"]
    assert split_long_text("", 5) == []


@pytest.mark.parametrize("window, overlap", [(0, 0), (5, 5), (5, -1), (2.5, 0)])
def test_split_long_text_rejects_bad_windows(window, overlap):
    with pytest.raises(ValueError, match="window|overlap"):
        split_long_text("some text", window, overlap)
