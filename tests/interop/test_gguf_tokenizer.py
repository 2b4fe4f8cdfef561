"""GGUFTokenizer on small GGUF files written here (a byte-level BPE trained on standard-library
source), against transformers' own GGUF tokenizer load; the real SmolLM2 file is in
tests/integration/test_real_weights.py."""

from __future__ import annotations

import inspect
import json
import os
import textwrap

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

from formerlab.interop.gguf_tokenizer import PRE_TOKENIZERS  # noqa: E402
from formerlab.interop.weights import GGUFTokenizer  # noqa: E402
from formerlab.models import CheckpointError  # noqa: E402

TEXTS = [
    inspect.getsource(json)[:1200],
    "  leading spaces\n\n\ttabs  and   runs   \r\n trailing  ",
    "digits 12345 and 2024-06-01, 3.14159; x² ½",
    "naïve café 東京 🙂 Ünïcödé ÀÉÎ",
    "don't WON'T I'm they'll We'Ve",
    "<|endoftext|>a<think>b<|endoftext|><|endoftext|>",
    "",
]

# every registered pre-tokenizer with a check of its own: the text and the pieces llama.cpp's
# regexes give (digits alone for smollm, in threes for llama-bpe, alone for qwen2)
SPLITS = {
    "gpt-2": ("ab 12345 x", ["ab", "Ġ12345", "Ġx"]),
    "smollm": ("ab 12345 x", ["ab", "Ġ", "1", "2", "3", "4", "5", "Ġx"]),
    "llama-bpe": ("ab 12345\n\nx", ["ab", "Ġ", "123", "45", "ĊĊ", "x"]),
    "dbrx": ("ab 12345\n\nx", ["ab", "Ġ", "123", "45", "ĊĊ", "x"]),
    "qwen2": ("ab 12345\n\nx", ["ab", "Ġ", "1", "2", "3", "4", "5", "ĊĊ", "x"]),
}
# pre names transformers' GGUF loader splits like llama.cpp (it uses GPT-2's split for smollm)
SAME_AS_TRANSFORMERS = ("gpt-2", "llama-bpe", "dbrx", "qwen2")


def test_every_pre_tokenizer_is_covered():
    assert set(PRE_TOKENIZERS) == set(SPLITS)


@pytest.fixture(scope="module")
def vocab():
    """(tokens, merges, token_types) of a byte-level BPE trained on standard-library source."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([inspect.getsource(json), inspect.getsource(textwrap), *TEXTS], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens += ["<|endoftext|>", "<think>"]
    return tokens, merges, [1] * (len(tokens) - 2) + [3, 4]


def write_tokenizer(path, vocab, pre, *, template=None):
    tokens, merges, types = vocab
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_context_length(32)
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 2)
    if template:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("pre", sorted(SPLITS))
def test_split_of_each_pre_tokenizer(vocab, pre):
    tok = GGUFTokenizer(*vocab, pre=pre)
    text, pieces = SPLITS[pre]
    assert [p for p, _ in tok.backend.pre_tokenizer.pre_tokenize_str(text)] == pieces
    for alias in [a.split(" (=")[0] for a in PRE_TOKENIZERS.names(include_aliases=True) if f"(= {pre})" in a]:
        assert GGUFTokenizer(*vocab, pre=alias).encode(TEXTS[2]) == tok.encode(TEXTS[2])


@pytest.mark.parametrize("pre", SAME_AS_TRANSFORMERS)
def test_ids_equal_transformers_gguf_tokenizer(tmp_path, vocab, pre):
    transformers = pytest.importorskip("transformers")
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 18):
        pytest.skip("transformers < 5.18 builds a GGUF tokenizer by architecture, not tokenizer.ggml.pre")
    path = write_tokenizer(tmp_path / "t.gguf", vocab, pre)
    ours = GGUFTokenizer.from_gguf(path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in TEXTS:
        assert [p for p, _ in ours.backend.pre_tokenizer.pre_tokenize_str(text)] == \
            [p for p, _ in hf.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)], text
        if not PRE_TOKENIZERS.meta(pre)["ignore_merges"]:  # transformers never ignores merges
            assert ours.encode(text) == hf(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text


def test_llama_bpe_keeps_whole_token_pieces(vocab):
    # ignore_merges (llama.cpp, Llama 3's tokenizer.json): a piece that is a token stays whole
    tokens, merges, types = vocab
    word = max((t for t in tokens[:-2] if t.isascii() and t.isalpha()), key=len)
    kept = GGUFTokenizer(tokens, merges[:50], types, pre="llama-bpe").encode(word)
    split = GGUFTokenizer(tokens, merges[:50], types, pre="dbrx").encode(word)
    assert kept == [tokens.index(word)]
    assert len(split) > 1


def test_unknown_pre_tokenizer_raises_naming_it(tmp_path, vocab):
    with pytest.raises(ValueError, match=r"'deepseek-llm'.*supported: gpt-2.*smollm"):
        GGUFTokenizer(*vocab, pre="deepseek-llm")
    path = write_tokenizer(tmp_path / "t.gguf", vocab, "chameleon")
    with pytest.raises(ValueError, match="chameleon"):
        GGUFTokenizer.from_gguf(path)


def test_missing_pre_is_gpt2(tmp_path, vocab):
    ours = GGUFTokenizer.from_gguf(write_tokenizer(tmp_path / "t.gguf", vocab, None))
    assert ours.pre == "gpt-2"
    assert ours.encode(TEXTS[0]) == GGUFTokenizer(*vocab, pre="gpt-2").encode(TEXTS[0])


def test_special_tokens_call_and_decode(vocab):
    tokens, merges, types = vocab
    tok = GGUFTokenizer(tokens, merges, types, pre="gpt-2", bos_token_id=len(tokens) - 2,
                        add_bos_token=True)
    eot, think = len(tokens) - 2, len(tokens) - 1
    ids = tok.encode("a<|endoftext|>b<think>")
    assert ids[0] == eot and ids.count(eot) == 2 and ids[-1] == think  # BOS, then both whole
    assert tok.encode("a", add_special_tokens=False) == [tokens.index("a")]
    assert tok.decode(ids[1:]) == "a<|endoftext|>b<think>"
    assert tok.decode(ids[1:], skip_special_tokens=True) == "ab<think>"  # only control tokens skipped
    batch = tok(["a", "b"], return_tensors="pt")["input_ids"]
    assert batch.shape == (2, 2) and batch[0, 0] == eot
    assert tok("ab")["input_ids"] == ids[:1] + tok.encode("ab", add_special_tokens=False)
    with pytest.raises(ValueError, match="equal lengths"):
        tok(["a", "a long text"], return_tensors="pt")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([len(tokens)])
    assert tok.decode([tokens.index("Ã"), tokens.index("Ġ")]) == "\ufffd "  # invalid UTF-8


def test_chat_template(tmp_path, vocab):
    template = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")
    tok = GGUFTokenizer.from_gguf(write_tokenizer(tmp_path / "t.gguf", vocab, "gpt-2", template=template))
    assert tok.chat_template == template
    msgs = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|endoftext|>user\nhi<|endoftext|>assistant\n"
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == tok.encode(text, add_special_tokens=False)
    with pytest.raises(ValueError, match="no chat template"):
        GGUFTokenizer(*vocab).apply_chat_template(msgs)


def test_not_a_gguf_file(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("definitely not GGUF")
    with pytest.raises(CheckpointError, match=r"junk\.gguf is not a GGUF file"):
        GGUFTokenizer.from_gguf(junk)
