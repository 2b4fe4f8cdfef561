"""Token-by-token output while :func:`~formerlab.generate.generate` runs.

``generate(..., streamer=...)`` accepts

- an object with ``put(token_ids)`` and ``end()`` — transformers' streamer protocol
  (``TextStreamer``, ``TextIteratorStreamer`` work as they are): ``put`` gets the prompt
  ``(batch, n)`` first, then every step's new tokens ``(batch,)``; ``end()`` comes once, last;
- a plain callable ``fn(token_ids)``, called with every step's new tokens ``(batch,)`` only.

Tokens are handed over on the CPU. Rows that have finished get ``pad_token_id``. Beam search
cannot stream (its best sequence is known only at the end), as in transformers.

:class:`TextStreamer` prints the decoded text of a batch of one as it becomes final, with any
tokenizer that has ``decode(ids, skip_special_tokens=...)`` (formerlab's ``GGUFTokenizer``,
Hugging Face tokenizers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["TextStreamer", "as_streamer"]


class _CallableStreamer:
    """Adapts ``fn(token_ids)`` to the put/end protocol (the prompt is not passed on)."""

    def __init__(self, fn: Callable[[Tensor], Any]) -> None:
        self.fn, self.prompt_seen = fn, False

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.fn(value)

    def end(self) -> None:
        pass


def as_streamer(streamer: Any) -> Any:
    """``streamer`` itself if it has ``put``/``end``, a wrapper if it is a callable, else
    ``TypeError``."""
    if streamer is None:
        return None
    if callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None)):
        return streamer
    if callable(streamer):
        return _CallableStreamer(streamer)
    raise TypeError("streamer must have put(token_ids) and end() (like transformers' TextStreamer) "
                    f"or be a callable fn(token_ids), got {type(streamer).__name__}")


class TextStreamer:
    """Print generated text as it is produced (a batch of one).

    Args:
        tokenizer: Anything with ``decode(ids, skip_special_tokens=...)``.
        skip_prompt: Do not print the prompt.
        skip_special_tokens: Passed to ``decode``.
        callback: ``callback(text)`` receives each new piece (default: print without newline).

    Text is held back while it ends inside a multi-byte character (decoded as U+FFFD), so the
    printed pieces concatenate to the decoded sequence.
    """

    def __init__(self, tokenizer: Any, *, skip_prompt: bool = False,
                 skip_special_tokens: bool = True,
                 callback: Callable[[str], Any] | None = None) -> None:
        if not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"tokenizer must have a decode method, got {type(tokenizer).__name__}")
        self.tokenizer, self.skip_prompt = tokenizer, skip_prompt
        self.skip_special_tokens = skip_special_tokens
        self.callback = callback or (lambda text: print(text, end="", flush=True))
        self.tokens: list[int] = []
        self.printed = 0
        self.next_is_prompt = True
        self.text = ""

    def put(self, value: Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError(f"TextStreamer streams a batch of one, got a batch of {value.shape[0]}")
        is_prompt, self.next_is_prompt = self.next_is_prompt, False
        if is_prompt and self.skip_prompt:
            return
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip_special_tokens)
        stable = len(text.rstrip("\ufffd"))
        self._emit(text, stable)
        if stable == len(text) and text.endswith("\n"):  # a finished line: decode afresh from here
            self.tokens, self.printed = [], 0

    def _emit(self, text: str, upto: int) -> None:
        if upto > self.printed:
            piece = text[self.printed:upto]
            self.text += piece
            self.callback(piece)
            self.printed = upto

    def end(self) -> None:
        """Print what is left (a trailing partial character included)."""
        if self.tokens:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip_special_tokens)
            self._emit(text, len(text))
        self.tokens, self.printed, self.next_is_prompt = [], 0, True
