"""The byte-level BPE tokenizer a GGUF file describes, built as a ``tokenizers.Tokenizer``.

A GGUF file (``tokenizer.ggml.model = "gpt2"``) stores the vocabulary, the merges, the token types
and the name of the pre-tokenizer (``tokenizer.ggml.pre``) but no ``tokenizer.json``.
:class:`GGUFTokenizer` assembles the Hugging Face ``tokenizers`` pipeline from them:

    split       the regexes of ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`), each isolating
    byte level  every piece's UTF-8 bytes spelled in GPT-2's printable byte alphabet
    model       BPE over the file's merges (``ignore_merges`` where llama.cpp sets it)
    added       control tokens (type 3) as special tokens, user-defined ones (type 4) as plain
                added tokens, both matched whole before the split
    decoder     byte level (invalid UTF-8 becomes U+FFFD)

The split regexes are those llama.cpp (which writes these files) applies for each ``pre`` name; an
unknown name raises instead of guessing, since a wrong split gives valid-looking but wrong ids.
On SmolLM2-135M-Instruct (``pre = "smollm"``) the ids equal transformers' own GGUF tokenizer load.
``tokenizers`` is imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["PRE_TOKENIZERS", "GGUFTokenizer"]

#: ``tokenizer.ggml.pre`` name -> regexes applied in turn (each match isolated); metadata
#: ``ignore_merges`` (a piece that is itself a token is not merged further, as llama.cpp does)
PRE_TOKENIZERS: Registry[tuple[str, ...]] = Registry("GGUF pre-tokenizer (tokenizer.ggml.pre)")

# GPT-2's split as the tokenizers library's ByteLevel pre-tokenizer spells it
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3's split (its tokenizer.json): digits in runs of at most three, newlines kept apart
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's split: as Llama 3's but every digit alone
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

PRE_TOKENIZERS.add("gpt-2", (_GPT2,), aliases=("phi-2", "mpt", "olmo", "jais"), ignore_merges=False,
                   description="GPT-2's split")
PRE_TOKENIZERS.add("smollm", (r"\p{N}", _GPT2),
                   aliases=("starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                   ignore_merges=False, description="every digit alone, then GPT-2's split")
PRE_TOKENIZERS.add("llama-bpe", (_LLAMA3,), aliases=("llama3", "llama-v3", "falcon3"),
                   ignore_merges=True, description="Llama 3's split; whole-token pieces kept")
PRE_TOKENIZERS.add("dbrx", (_LLAMA3,), aliases=("smaug-bpe",), ignore_merges=False,
                   description="Llama 3's split, merges always applied")
PRE_TOKENIZERS.add("qwen2", (_QWEN2,), aliases=("stablelm2",), ignore_merges=False,
                   description="Qwen2's split (single digits)")

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _byte_level_spelling(token: str, alphabet: set[str], spell: Any) -> str:
    """The token in GPT-2's byte alphabet (tokens stored with other characters are re-spelled)."""
    return token if set(token) <= alphabet else "".join(p for p, _ in spell.pre_tokenize_str(token))


class GGUFTokenizer:
    """The byte-level BPE tokenizer of a GGUF file (``tokenizer.ggml.model = gpt2``).

    Args:
        tokens: The vocabulary, id order (``tokenizer.ggml.tokens``).
        merges: ``"a b"`` merge rules by rank (``tokenizer.ggml.merges``).
        token_types: llama.cpp token types (3 = control, 4 = user-defined); default all normal.
        pre: ``tokenizer.ggml.pre``, a name of :data:`PRE_TOKENIZERS` (``None`` = ``"gpt-2"``).
        bos_token_id, eos_token_id: Ids of the BOS / EOS tokens, if any.
        add_bos_token: Prepend BOS in :meth:`encode` (``tokenizer.ggml.add_bos_token``).
        chat_template: The Jinja chat template stored in the file (``tokenizer.chat_template``).

    Raises:
        ValueError: ``pre`` is not a known pre-tokenizer (the message lists the known ones).

    ``backend`` is the ``tokenizers.Tokenizer``; ``special`` the control tokens.
    """

    def __init__(self, tokens: list[str], merges: list[str], token_types: list[int] | None = None,
                 *, pre: str | None = None, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, add_bos_token: bool = False,
                 chat_template: str | None = None) -> None:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        name = "gpt-2" if pre is None else pre
        if name not in PRE_TOKENIZERS:
            valid = ", ".join(PRE_TOKENIZERS.names(include_aliases=True))
            raise ValueError(f"GGUF pre-tokenizer (tokenizer.ggml.pre) {name!r} is not supported: its "
                             f"split is unknown, and guessing gives wrong ids; supported: {valid}")
        types = list(token_types) if token_types is not None else [1] * len(tokens)
        if len(types) != len(tokens):
            raise ValueError(f"token_types has {len(types)} entries for {len(tokens)} tokens")
        self.tokens, self.pre = list(tokens), PRE_TOKENIZERS.canonical(name)
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.add_bos_token, self.chat_template = bool(add_bos_token), chat_template
        spell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        vocab = {_byte_level_spelling(t, alphabet, spell): i for i, t in enumerate(self.tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        backend = Tokenizer(models.BPE(
            vocab=vocab, merges=pairs, fuse_unk=False, continuing_subword_prefix="", end_of_word_suffix="",
            ignore_merges=bool(PRE_TOKENIZERS.meta(name)["ignore_merges"]),
        ))
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS.get(name)]
        backend.pre_tokenizer = pre_tokenizers.Sequence([*splits, spell])
        backend.decoder = decoders.ByteLevel()
        # a control token outside the byte alphabet is a mislabel llama.cpp leaves in some files
        self.special = [t for t, ty in zip(self.tokens, types) if ty == _CONTROL and set(t) <= alphabet]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.special])
        backend.add_tokens([AddedToken(t, special=False, normalized=False)
                            for t, ty in zip(self.tokens, types) if ty == _USER_DEFINED and t in vocab])
        self.backend = backend
        self.vocab = vocab

    @classmethod
    def from_gguf(cls, path: str | Path) -> GGUFTokenizer:
        """The tokenizer stored in the GGUF file ``path``.

        Raises:
            CheckpointError: ``path`` is not a readable GGUF file.
            ValueError: The tokenizer model is not byte-level BPE, or its pre-tokenizer is unknown.
        """
        from .gguf_io import gguf_field, open_gguf

        reader = open_gguf(path)
        model = gguf_field(reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{path}: GGUF tokenizer {model!r} is not supported (supported: gpt2 = "
                             "byte-level BPE)")
        return cls(gguf_field(reader, "tokenizer.ggml.tokens"), gguf_field(reader, "tokenizer.ggml.merges"),
                   gguf_field(reader, "tokenizer.ggml.token_type"),
                   pre=gguf_field(reader, "tokenizer.ggml.pre"),
                   bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
                   eos_token_id=gguf_field(reader, "tokenizer.ggml.eos_token_id"),
                   add_bos_token=bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False)),
                   chat_template=gguf_field(reader, "tokenizer.chat_template"))

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"GGUFTokenizer(vocab_size={len(self)}, pre={self.pre!r}, special={len(self.special)})"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (BOS prepended if the file asks for it and ``add_special_tokens``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int] | Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (bytes that are not valid UTF-8 become U+FFFD)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= int(i) < len(self.tokens)]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside the vocabulary [0, {len(self.tokens)})")
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __call__(self, text: str | list[str], return_tensors: str | None = None) -> dict[str, Any]:
        """``{"input_ids": ids}`` like a Hugging Face tokenizer (``return_tensors="pt"`` for a tensor;
        no padding, so a batch must have equal lengths)."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t) for t in texts]
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        if return_tensors == "pt":
            if len({len(x) for x in ids}) != 1:
                raise ValueError("return_tensors='pt' needs equal lengths (no padding here)")
            return {"input_ids": torch.tensor(ids)}
        return {"input_ids": ids[0] if isinstance(text, str) else ids}

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = False,
                            tokenize: bool = True) -> str | list[int]:
        """Render ``messages`` with the file's chat template (sandboxed Jinja, as transformers does;
        needs ``jinja2``).

        Returns the ids (``tokenize=True``) or the text. Raises ``ValueError`` if the file has none.
        """
        if not self.chat_template:
            raise ValueError("this GGUF file stores no chat template (tokenizer.chat_template)")
        try:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as exc:  # pragma: no cover - jinja2 comes with transformers' chat extra
            raise ImportError("apply_chat_template needs jinja2: pip install jinja2") from exc

        def raise_exception(message: str) -> None:
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = raise_exception
        special = {"bos_token": self._token(self.bos_token_id), "eos_token": self._token(self.eos_token_id)}
        text = env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _token(self, i: int | None) -> str:
        return "" if i is None else self.tokens[int(i)]
