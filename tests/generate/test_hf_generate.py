"""generate against transformers' generate on a tiny random Llama (formerlab's model exported with
``to_transformers``, equal logits): greedy and beam search token for token (left-padded batches,
several eos ids, length penalties, early stopping, repetition penalty, min_new_tokens), beam scores
and indices, and the sampling chain's processed scores."""

from __future__ import annotations

import os

import pytest
import torch

from formerlab.generate import build_logits_processor, generate
from formerlab.models import CausalLM, llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from formerlab.interop.export import to_transformers  # noqa: E402

V, PAD, EOS = 97, 1, [5, 9]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ours = CausalLM(llama("tiny", vocab_size=V)).eval()
    with torch.no_grad():
        for p in ours.parameters():  # larger weights: peaked, varied next-token distributions
            p.normal_(0.0, 0.3)
    return ours, to_transformers(ours).eval()


@pytest.fixture(scope="module")
def batch():
    ids = torch.randint(3, V, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, PAD), mask


CONFIGS = [
    {},
    {"repetition_penalty": 1.3},
    {"min_new_tokens": 6},
    {"num_beams": 3},
    {"num_beams": 4, "length_penalty": 0.5, "num_return_sequences": 2},
    {"num_beams": 3, "early_stopping": True},
    {"num_beams": 3, "early_stopping": "never", "length_penalty": 2.0},
    {"num_beams": 3, "repetition_penalty": 1.5, "length_penalty": -1.0},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "greedy")
def test_tokens_equal_transformers_generate(models, batch, config):
    ours, hf = models
    ids, mask = batch
    kw = dict(max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD, **config)
    got = generate(ours, ids, mask, **kw)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, do_sample=False, **kw)
    assert torch.equal(got, want)
    if "num_beams" not in config:  # rows do end early here (beams may prefer longer ones)
        assert bool(torch.isin(got[:, 7:], torch.tensor(EOS)).any())


def test_beam_scores_and_indices_equal_transformers(models, batch):
    ours, hf = models
    ids, mask = batch
    kw = dict(max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, num_beams=3,
              num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
    got = generate(ours, ids, mask, **kw)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, do_sample=False, output_logits=True, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.sequences_scores, want.sequences_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.beam_indices, want.beam_indices.long())
    assert len(got.scores) == len(want.scores)
    for a, b in zip(got.scores, want.scores):  # the processed log-probabilities of every beam
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-4, atol=1e-4)


SAMPLING = [
    {"temperature": 0.7, "top_k": 20},
    {"top_p": 0.8},
    {"temperature": 1.3, "top_k": 30, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.2},
    {"min_p": 0.2},
    {},
]


@pytest.mark.parametrize("config", SAMPLING, ids=lambda c: ",".join(c) or "plain")
def test_sampling_chain_equals_transformers_on_its_own_logits(models, batch, config):
    """transformers samples with its own RNG, so the samples differ; the distributions do not. Our
    chain applied to transformers' raw logits gives its processed scores exactly, every step."""
    ours, hf = models
    ids, mask = batch
    torch.manual_seed(0)  # transformers draws from the global RNG
    # transformers truncates to top_k=50 unless told otherwise; formerlab's top_k=None does not
    theirs = {"top_k": 0, **config}
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=6,
                          pad_token_id=PAD, output_logits=True, output_scores=True,
                          return_dict_in_generate=True, **theirs)
    chain = build_logits_processor(do_sample=True, **config)
    full_mask = torch.cat([mask, torch.ones(3, 6, dtype=mask.dtype)], 1)
    for t, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        seq = out.sequences[:, :7 + t]
        assert torch.equal(chain(seq, raw.clone(), attention_mask=full_mask[:, :7 + t]), processed)
    # and our own generate's first step: the same support, the same scores up to the models' rounding
    first = generate(ours, ids, mask, do_sample=True, max_new_tokens=1, pad_token_id=PAD,
                     return_dict_in_generate=True, output_scores=True,
                     generator=torch.Generator().manual_seed(0), **config).scores[0]
    want = out.scores[0]
    assert torch.equal(torch.isfinite(first), torch.isfinite(want))
    keep = torch.isfinite(want)
    torch.testing.assert_close(first[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_uncached_generation_equals_transformers_too(models, batch):
    ours, hf = models
    ids, mask = batch
    kw = dict(max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD, num_beams=2)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, do_sample=False, use_cache=False, **kw)
    assert torch.equal(generate(ours, ids, mask, use_cache=False, **kw), want)
