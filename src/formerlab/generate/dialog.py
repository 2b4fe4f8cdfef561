"""DialoGPT-style multi-turn dialogue as one language-model sequence (kexue.fm/archives/7718;
DialoGPT arXiv 1911.00536; CDial-GPT / LCCC arXiv 2008.03946).

A whole dialogue is one sequence for a unidirectional LM, so every turn trains in one pass (a
seq2seq model trains one response per sample). Two layouts (``u_i`` = utterance ``i`` encoded
without special tokens; ``S`` = the start token, ``[CLS]``/BOS; ``E`` = the separator,
``[SEP]``/EOS):

==================  ==============================================================================
Su's (default)      ``S u_0 E u_1 E … u_{n−1} E``; segment (speaker) ids 0 for ``S``, ``i mod 2``
                    for every token of ``u_i`` and its ``E`` (bojone/nezha_gpt_dialog)
``speaker_tokens``  ``S s_0 u_0 s_1 u_1 … s_{n−1} u_{n−1} E`` with ``s_i`` the token of speaker
                    ``i mod 2`` (``[speaker1]``/``[speaker2]``) and a single ``E`` (CDial-GPT)
==================  ==============================================================================

Truncation to ``maxlen``: Su's layout appends utterances while the total stays ≤ ``maxlen`` and
stops at the first that would overflow (the tail is dropped); the speaker-token layout keeps the
most recent turns (its response is last). The loss (``loss_on``): ``"all"`` every token after ``S``
(Su's: each utterance is someone's response), ``"responses"`` only the turns of the second speaker
(odd ``i``: the user speaks first; labels ``−100`` on the user's turns), ``"last"`` only the final
utterance (CDial-GPT). A response's tokens include its closing ``E`` (the stop signal); a speaker
token is given, never predicted.

Masks (:func:`dialogue_attention_mask`): ``"causal"`` (GPT: the LM format) or ``"unilm"`` (the
seq2seq alternative: the history attends bidirectionally, the final response causally; UniLM's
prefix mask, :mod:`formerlab.attention.masks`), where only the final response can carry a loss.
:class:`DialogueCollator` pads examples into model inputs; :class:`ChatBot` answers a history with
top-k sampling (k = 5, at most 32 tokens, stop at ``E``), the response taking the segment
``1 − last segment`` as in the post.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..attention.masks import build_mask

__all__ = ["ChatBot", "DialogueCollator", "DialogueExample", "build_dialogue_lm_example",
           "build_dialogue_prompt", "dialogue_attention_mask"]

LOSS_ON = ("all", "responses", "last")
MASK_KINDS = ("causal", "unilm")


class DialogueExample(NamedTuple):
    """One dialogue as a sequence: ids, speaker segments, loss mask (1 = the token is a target)
    and ``response_start``, the index where the final utterance begins (the UniLM boundary)."""

    token_ids: list[int]
    segment_ids: list[int]
    loss_mask: list[int]
    response_start: int


def _token_id(tokenizer: Any, token: str | int, what: str) -> int:
    """Id of a token given as an int or by name, whatever the tokenizer's vocabulary API."""
    if isinstance(token, int) and not isinstance(token, bool):
        return token
    if not isinstance(token, str):
        raise TypeError(f"{what} must be a token string or an id, got {token!r}")
    specials = getattr(tokenizer, "special_tokens", None)
    if isinstance(specials, (list, tuple)) and token in specials:
        return specials.index(token)
    for method in ("convert_tokens_to_ids", "token_to_id"):
        fn = getattr(tokenizer, method, None)
        if callable(fn):
            i = fn(token)
            if isinstance(i, int) and i != getattr(tokenizer, "unk_token_id", None):
                return i
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, dict) and token in vocab:
        return int(vocab[token])
    raise ValueError(f"{what} {token!r} is not a token of {type(tokenizer).__name__}; add it to "
                     "the vocabulary or pass its id")


def _special(tokenizer: Any, given: int | None, names: tuple[str, ...], what: str, arg: str) -> int:
    if given is not None:
        return int(given)
    for name in names:
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {what} token (looked for "
                     f"{', '.join(names)}); pass {arg}=...")


def _specials(tokenizer: Any, start_token_id: int | None, sep_token_id: int | None
              ) -> tuple[int, int]:
    start = _special(tokenizer, start_token_id, ("cls_token_id", "bos_token_id", "bos_id"),
                     "start ([CLS]/BOS)", "start_token_id")
    sep = _special(tokenizer, sep_token_id, ("sep_token_id", "eos_token_id", "eos_id"),
                   "separator ([SEP]/EOS)", "sep_token_id")
    return start, sep


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not isinstance(text, str):
        raise TypeError(f"utterances must be strings, got {type(text).__name__}")
    fn = tokenizer.encode
    try:
        plain = "add_special_tokens" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        plain = False
    return [int(i) for i in (fn(text, add_special_tokens=False) if plain else fn(text))]


def _speakers(tokenizer: Any, speaker_tokens: Sequence[str | int] | None) -> list[int] | None:
    if speaker_tokens is None:
        return None
    if isinstance(speaker_tokens, str) or len(speaker_tokens) != 2:
        raise ValueError(f"speaker_tokens must be two tokens (speaker 1, speaker 2), got "
                         f"{speaker_tokens!r}")
    return [_token_id(tokenizer, t, "speaker token") for t in speaker_tokens]


def _check(maxlen: int | None, loss_on: str) -> None:
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 2):
        raise ValueError(f"maxlen must be an int >= 2, got {maxlen!r}")
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {list(LOSS_ON)}, got {loss_on!r}")


def build_dialogue_lm_example(
    utterances: Sequence[str],
    tokenizer: Any,
    maxlen: int = 512,
    speaker_tokens: Sequence[str | int] | None = None,
    *,
    loss_on: str = "all",
    start_token_id: int | None = None,
    sep_token_id: int | None = None,
) -> DialogueExample:
    """One multi-turn dialogue as an LM training example (see the module docstring).

    Args:
        utterances: The turns, the first speaker first.
        tokenizer: ``encode(text)`` (called with ``add_special_tokens=False`` when it takes it)
            and the start/separator ids (``cls_token_id``/``sep_token_id``, else
            ``bos_token_id``/``eos_token_id``, or ``bos_id``/``eos_id``).
        maxlen: Longest sequence (Su: 512).
        speaker_tokens: ``None`` for Su's layout, or the two speaker tokens (CDial-GPT's).
        loss_on: ``"all"``, ``"responses"`` (the second speaker's turns) or ``"last"``.
        start_token_id, sep_token_id: Override the tokenizer's special tokens.

    Returns:
        A :class:`DialogueExample`.

    Raises:
        ValueError: No utterance, a tokenizer without the needed special tokens, unknown speaker
            tokens, a first utterance longer than ``maxlen``, bad ``maxlen``/``loss_on``.
    """
    _check(maxlen, loss_on)
    if isinstance(utterances, str) or len(utterances) == 0:
        raise ValueError(f"utterances must be a non-empty list of strings, got {utterances!r}")
    start, sep = _specials(tokenizer, start_token_id, sep_token_id)
    speakers = _speakers(tokenizer, speaker_tokens)
    encoded = [_encode(tokenizer, u) for u in utterances]
    n = len(encoded)
    if speakers is None:
        pieces = [([*ids, sep], i) for i, ids in enumerate(encoded)]
        kept, total = [], 1
        for piece, i in pieces:  # Su: stop at the first utterance that would overflow
            if total + len(piece) > maxlen:
                break
            kept.append((piece, i))
            total += len(piece)
        tail: list[int] = []
    else:
        pieces = [([speakers[i % 2], *ids], i) for i, ids in enumerate(encoded)]
        kept, total = [], 2
        for piece, i in reversed(pieces):  # keep the most recent turns (the response is last)
            if total + len(piece) > maxlen:
                break
            kept.insert(0, (piece, i))
            total += len(piece)
        tail = [sep]
    if not kept:
        raise ValueError(f"the {'first' if speakers is None else 'last'} utterance alone "
                         f"({len(pieces[0 if speakers is None else -1][0])} tokens) does not fit "
                         f"maxlen = {maxlen}")
    ids, seg, loss = [start], [0], [0]
    response_start, target = 1, False
    for piece, i in kept:
        response_start = len(ids)
        target = loss_on == "all" or (loss_on == "responses" and i % 2 == 1) or \
            (loss_on == "last" and i == n - 1)
        marks = [int(target)] * len(piece)
        if speakers is not None and loss_on != "all":
            marks[0] = 0  # the speaker token is given, not predicted
        ids += piece
        seg += [i % 2] * len(piece)
        loss += marks
    if tail:  # the single closing separator belongs to the final turn
        ids += tail
        seg += [kept[-1][1] % 2]
        loss += [int(target)]
    return DialogueExample(ids, seg, loss, response_start)


def build_dialogue_prompt(
    history: Sequence[str],
    tokenizer: Any,
    maxlen: int | None = None,
    speaker_tokens: Sequence[str | int] | None = None,
    *,
    start_token_id: int | None = None,
    sep_token_id: int | None = None,
) -> tuple[list[int], list[int], int]:
    """The prompt a model continues with the next turn.

    Returns:
        ``(token_ids, segment_ids, response_segment)``: ``S u_0 E … u_{k−1} E`` (Su's layout;
        with ``speaker_tokens`` ``S s_0 u_0 … s_{k−1} u_{k−1} s_k``, the responder's token last)
        and the segment of the response, ``1 − last segment``. With ``maxlen``, the oldest turns
        are dropped until the prompt fits.
    """
    _check(maxlen, "all")
    if isinstance(history, str):
        raise ValueError("history must be a list of utterances, got a single string")
    start, sep = _specials(tokenizer, start_token_id, sep_token_id)
    speakers = _speakers(tokenizer, speaker_tokens)
    encoded = [_encode(tokenizer, u) for u in history]
    n = len(encoded)
    turns = [([*ids, sep] if speakers is None else [speakers[i % 2], *ids], i)
             for i, ids in enumerate(encoded)]
    extra = 1 if speakers is None else 2
    while maxlen is not None and turns and extra + sum(len(t) for t, _ in turns) > maxlen:
        turns.pop(0)
    ids, seg = [start], [0]
    for piece, i in turns:
        ids += piece
        seg += [i % 2] * len(piece)
    response_segment = 1 - seg[-1] if n else 0
    if speakers is not None:
        ids.append(speakers[n % 2])
        seg.append(n % 2)
        response_segment = n % 2
    return ids, seg, response_segment


def dialogue_attention_mask(response_start: Tensor | Sequence[int], length: int, kind: str = "causal",
                            attention_mask: Tensor | None = None) -> Tensor:
    """Boolean ``(B, 1, L, L)`` attention masks (``True`` = may attend) for padded dialogues.

    Args:
        response_start: ``(B,)`` index where each final response begins.
        length: Padded length ``L``.
        kind: ``"causal"`` or ``"unilm"`` (history bidirectional, response causal).
        attention_mask: ``(B, L)`` padding mask (1 keep, 0 pad); padded keys are hidden.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {list(MASK_KINDS)}, got {kind!r}")
    starts = torch.as_tensor(response_start, dtype=torch.long).flatten()
    pos = torch.arange(length)
    segments = (pos[None, :] >= starts[:, None]).long()  # 0 history, 1 response
    mask = build_mask("unilm" if kind == "unilm" else "causal", length,
                      segment_ids=segments if kind == "unilm" else None)
    mask = mask.expand(len(starts), 1, length, length).clone()
    if attention_mask is not None:
        keep = attention_mask.bool().to(mask.device)
        mask &= keep[:, None, None, :]
        mask |= torch.eye(length, dtype=torch.bool, device=mask.device)  # no empty rows
    return mask


class DialogueCollator:
    """Pads :class:`DialogueExample` s into ``CausalLM`` inputs.

    Args:
        pad_token_id: Padding id (right padding).
        mask: ``"causal"`` (returns the 2-D padding ``attention_mask``) or ``"unilm"`` (a 4-D
            boolean mask; losses before each final response are dropped, since the history
            sees its own future there).

    Calling it on a list of examples returns ``input_ids``, ``token_type_ids``,
    ``attention_mask`` and ``labels`` (``−100`` where the loss mask is 0 and on padding).
    """

    def __init__(self, pad_token_id: int = 0, mask: str = "causal") -> None:
        if mask not in MASK_KINDS:
            raise ValueError(f"mask must be one of {list(MASK_KINDS)}, got {mask!r}")
        self.pad_token_id, self.mask = int(pad_token_id), mask

    def __call__(self, examples: Sequence[DialogueExample]) -> dict[str, Tensor]:
        if not examples:
            raise ValueError("examples must hold at least one DialogueExample")
        L = max(len(e.token_ids) for e in examples)
        B = len(examples)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        seg = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), -100, dtype=torch.long)
        keep = torch.zeros((B, L), dtype=torch.long)
        for r, e in enumerate(examples):
            n = len(e.token_ids)
            t = torch.tensor(e.token_ids)
            ids[r, :n], seg[r, :n], keep[r, :n] = t, torch.tensor(e.segment_ids), 1
            target = torch.tensor(e.loss_mask, dtype=torch.bool)
            if self.mask == "unilm":
                target[:e.response_start] = False
            labels[r, :n] = torch.where(target, t, torch.full_like(t, -100))
        out = {"input_ids": ids, "token_type_ids": seg, "labels": labels, "attention_mask": keep}
        if self.mask == "unilm":
            starts = [e.response_start for e in examples]
            out["attention_mask"] = dialogue_attention_mask(starts, L, "unilm", keep)
        return out


class ChatBot:
    """Answers a dialogue history with a trained LM (the post's ``ChatBot``).

    Args:
        model: A causal LM called as ``model(input_ids, token_type_ids=..., past_key_values=...,
            use_cache=True)`` (``token_type_ids`` only if its ``forward`` takes them).
        tokenizer: As :func:`build_dialogue_lm_example` (and ``decode``).
        speaker_tokens: The layout (``None``: Su's).
        maxlen: Longest prompt (oldest turns dropped beyond it).
        start_token_id, sep_token_id: Override the tokenizer's special tokens.
    """

    def __init__(self, model: Any, tokenizer: Any, speaker_tokens: Sequence[str | int] | None = None,
                 maxlen: int = 512, *, start_token_id: int | None = None,
                 sep_token_id: int | None = None) -> None:
        self.model, self.tokenizer, self.maxlen = model, tokenizer, maxlen
        self.speaker_tokens = speaker_tokens
        self.start, self.sep = _specials(tokenizer, start_token_id, sep_token_id)
        forward = getattr(model, "forward", model)
        params = inspect.signature(forward).parameters
        self._segments = "token_type_ids" in params
        self._cache_kw = "cache" if "cache" in params and "past_key_values" not in params \
            else "past_key_values"

    @torch.no_grad()
    def respond_ids(self, history: Sequence[str], top_k: int | None = 5, max_len: int = 32,
                    generator: torch.Generator | None = None, temperature: float = 1.0
                    ) -> list[int]:
        """The response's token ids (the closing separator excluded)."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None (greedy: top_k=1), got {top_k!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        ids, seg, response_seg = build_dialogue_prompt(
            history, self.tokenizer, self.maxlen, self.speaker_tokens,
            start_token_id=self.start, sep_token_id=self.sep)
        device = next(self.model.parameters()).device
        x = torch.tensor([ids], device=device)
        s = torch.tensor([seg], device=device)
        past, out_ids = None, []
        for _ in range(max_len):
            kwargs: dict[str, Any] = {"use_cache": True}
            if past is not None:
                kwargs[self._cache_kw] = past
            if self._segments:
                kwargs["token_type_ids"] = s
            out = self.model(x, **kwargs)
            cache = getattr(out, "cache", None)
            past = cache if cache is not None else out.past_key_values
            logits = out.logits[0, -1].float() / temperature
            if top_k is not None and top_k < logits.numel():
                kth = logits.topk(top_k).values[-1]
                logits = logits.masked_fill(logits < kth, -torch.inf)
            probs = torch.softmax(logits.double(), -1)
            if generator is not None:
                probs = probs.to(generator.device)
            token = int(torch.multinomial(probs, 1, generator=generator))
            if token == self.sep:
                break
            out_ids.append(token)
            x = torch.tensor([[token]], device=device)
            s = torch.tensor([[response_seg]], device=device)
        return out_ids

    def respond(self, history: Sequence[str], top_k: int | None = 5, max_len: int = 32,
                generator: torch.Generator | None = None, temperature: float = 1.0) -> str:
        """Sample a response to ``history`` (top-k, at most ``max_len`` tokens, stop at ``E``)."""
        ids = self.respond_ids(history, top_k, max_len, generator, temperature)
        from .nbce import _decode_text

        return _decode_text(self.tokenizer, ids)
