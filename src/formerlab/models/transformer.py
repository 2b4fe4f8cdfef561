"""The stack every formerlab model shares: embeddings → blocks → final norm.

:class:`TransformerModel` holds the token (+ absolute position, + token type) embeddings, the
blocks (one mixer per layer from :data:`formerlab.models.MIXERS`), the final norm of Pre-Norm
stacks, the rotary embeddings of positional mixers and the **position method**:
:meth:`~TransformerModel.set_position_method` installs the position hooks of every positional
layer (inference-time length extension: PI, NTK, YaRN, ReRoPE, log-n† ...), respecting per-layer
specs (NoPE layers, HWFA2's ReRoPE-at-inference full layers). :class:`~formerlab.models.CausalLM`
and :class:`~formerlab.models.Encoder` add their heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.core import LayerPosition
from ..nn.init import INIT_SCHEMES
from ..nn.norms import build_norm
from ..nn.state import StateMismatchError
from ..position.relative import RelPosFn, ReRoPEMap, make_relpos
from ..position.rope import RotaryEmbedding
from .blocks import Block
from .cache import Cache
from .config import ModelConfig

__all__ = ["TransformerModel", "word_embeddings"]


def word_embeddings(
    table: nn.Embedding, input_ids: Tensor | None, inputs_embeds: Tensor | None, hidden: int
) -> Tensor:
    """``table(input_ids)`` or the given ``inputs_embeds`` (exactly one of the two), validated."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    if inputs_embeds is not None:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden:
            raise ValueError(
                f"inputs_embeds must be (batch, seq, {hidden}), got {tuple(inputs_embeds.shape)}"
            )
        return inputs_embeds
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.numel() and not torch.compiler.is_compiling():
        lo, hi = (int(t) for t in input_ids.aminmax())
        if lo < 0 or hi >= table.num_embeddings:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"input_ids holds token id {bad}, outside the vocabulary [0, {table.num_embeddings})"
            )
    return table(input_ids)


class TransformerModel(nn.Module):
    """Embeddings and blocks of a formerlab model (see the module docstring).

    Args:
        config: A :class:`~formerlab.models.ModelConfig` (or a dict for its ``from_dict``).
    """

    causal = True

    def __init__(self, config: ModelConfig | dict[str, Any]) -> None:
        super().__init__()
        config = ModelConfig.coerce(config)
        self.config = c = config
        kind = c.position.kind_spec
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.embed_positions = (kind.absolute(c.hidden_size, c.max_position_embeddings)
                                if kind.absolute is not None else None)
        self.embed_token_types = (nn.Embedding(c.type_vocab_size, c.hidden_size)
                                  if c.type_vocab_size > 0 else None)
        self.embed_norm = (build_norm(c.norm, c.hidden_size, c.norm_eps, c.norm_affine)
                           if c.embed_norm else None)
        self.dropout = nn.Dropout(c.dropout)
        self.layer_specs = c.layer_specs()
        self.layers = nn.ModuleList(Block(c, i, self.causal, self.layer_specs[i])
                                    for i in range(c.num_layers))
        self.norm = (build_norm(c.norm, c.hidden_size, c.norm_eps, c.norm_affine)
                     if c.norm_position == "pre" else None)
        dims = sorted({layer.mixer.head_dim for layer in self.layers if layer.positional})
        self.rotaries = nn.ModuleDict(
            {str(d): c.position.build_rotary(d, c.max_position_embeddings) for d in dims}
            if kind.rotary else {}
        )
        self._bias_fn = kind.bias(c.num_heads) if kind.bias is not None else None
        self._position_method: dict[str, Any] = {}
        self.gradient_checkpointing = False
        self.reset_position_method()
        self.build_heads()
        self.reset_parameters()

    def build_heads(self) -> None:
        """Hook: subclasses add their output heads here (before initialisation)."""

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise every weight with the config's scheme (:data:`formerlab.nn.INIT_SCHEMES`),
        then what only a mixer knows (its ``init_mixer_(generator)``: LRU rings, VQ codebooks)."""
        INIT_SCHEMES.get(self.config.init)(self, self.config, generator)
        for layer in self.layers:
            init_mixer = getattr(layer.mixer, "init_mixer_", None)
            if init_mixer is not None:
                init_mixer(generator)
        if self.embed_tokens.padding_idx is not None:
            with torch.no_grad():
                self.embed_tokens.weight[self.embed_tokens.padding_idx].zero_()

    @property
    def rotary(self) -> RotaryEmbedding | None:
        """The rotary embedding of the (first) positional head size, or ``None``."""
        return next(iter(self.rotaries.values()), None)

    # -- position methods ----------------------------------------------------------------------
    def set_position_method(
        self,
        rope_type: str = "default",
        *,
        rope_params: dict[str, Any] | None = None,
        relpos: RelPosFn | dict[str, Any] | None = None,
        logn: str | None = None,
        train_len: int | None = None,
        logn_base_length: int | None = None,
        relpos_layers: str = "all",
    ) -> None:
        """Set the position hooks of every positional layer (inference-time length extension).

        Args:
            rope_type: Inverse-frequency schedule (``default``, ``linear``/``pi``, ``ntk_old``,
                ...; see :data:`formerlab.position.ROPE_SCHEDULES`). RoPE models only.
            rope_params: Schedule parameters in Hugging Face's vocabulary (``{"factor": 4}``).
            relpos: A relative-position map (``formerlab.position.make_relpos(...)``) or a dict
                such as ``{"name": "rerope", "window": 32}``; ``None`` = plain RoPE (and HWFA2
                layers keep their ReRoPE-at-inference switch).
            logn: ``None``, ``"dagger"`` (queries × ``max(1, log_{train_len}(pos+1))``) or
                ``"pretrain"`` (per-row log-n, the model must have been trained with it).
            train_len: Training length (``logn="dagger"``; default the config's
                ``position.logn_train_len``).
            logn_base_length: Base of the pretraining factor (default the config's).
            relpos_layers: ``"all"`` RoPE layers, or only the ``"full"`` (non-window) ones.

        Per-layer specs take precedence: ``nope`` layers never rotate, a layer's own ``logn``
        replaces ``logn``.
        """
        c = self.config
        if not self.rotaries and (rope_type != "default" or rope_params or relpos is not None):
            raise ValueError(
                "RoPE schedules and relative maps need rotary layers; this model has "
                f"position kind {c.position.kind!r} and mixers "
                f"{sorted({b.mixer_name for b in self.layers})}"
            )
        if relpos_layers not in ("all", "full"):
            raise ValueError(f"relpos_layers must be 'all' or 'full', got {relpos_layers!r}")
        for rotary in self.rotaries.values():
            rotary.set_schedule(rope_type, **(rope_params or {}))
        if isinstance(relpos, dict):
            relpos = make_relpos(**relpos)
        overrides: dict[str, Any] = {}
        if train_len is not None:
            overrides["logn_train_len"] = train_len
        if logn_base_length is not None:
            overrides["logn_base_len"] = logn_base_length
        pos_cfg = c.position.replace(**overrides) if overrides else c.position
        scales: dict[str | None, Any] = {None: None}
        for layer, spec in zip(self.layers, self.layer_specs):
            if not layer.positional:
                continue
            nope = spec.pos == "nope"
            mode = spec.logn or logn
            if mode not in scales:
                scales[mode] = pos_cfg.build_logn(mode)
            layer_relpos = None if nope or (relpos_layers == "full" and spec.window is not None) \
                else relpos
            eval_relpos = None
            if spec.pos == "rope_train_rerope_infer" and relpos is None:
                eval_relpos = ReRoPEMap(spec.rerope_window)  # HWFA2: ReRoPE at inference
            layer.mixer.set_position(LayerPosition(
                rotary=None if nope or not self.rotaries else self.rotaries[str(layer.mixer.head_dim)],
                relpos=layer_relpos, eval_relpos=eval_relpos, query_scale=scales[mode],
                bias_fn=self._bias_fn,
            ))
        self._position_method = {
            "rope_type": rope_type, "rope_params": dict(rope_params or {}),
            "relpos": relpos, "logn": logn, "train_len": train_len,
            "relpos_layers": relpos_layers,
        }

    def reset_position_method(self) -> None:
        """Back to the configuration the model was built (and trained) with."""
        p = self.config.position
        rope_type, params = p.schedule() if self.rotaries else ("default", {})
        self.set_position_method(rope_type, rope_params=params or None,
                                 relpos=dict(p.relpos) if p.relpos else None, logn=p.logn)

    @property
    def position_method(self) -> dict[str, Any]:
        return dict(self._position_method)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block's activations in backward instead of storing them
        (``torch.utils.checkpoint``, ``use_reentrant=False``; kexue.fm/archives/7367)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    # -- the forward pass ----------------------------------------------------------------------
    def embed(self, input_ids: Tensor | None = None, token_type_ids: Tensor | None = None,
              position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        """Summed, normalised embeddings ``(B, n, hidden)`` (before dropout).

        ``inputs_embeds`` ``(B, n, hidden)`` replaces the word embeddings of ``input_ids`` (as in
        Hugging Face's models); position and token-type embeddings are still added.
        """
        x = word_embeddings(self.embed_tokens, input_ids, inputs_embeds, self.config.hidden_size)
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)
        return self._add_embeddings(x, position_ids, token_type_ids)

    def _add_embeddings(self, x: Tensor, position_ids: Tensor, token_type_ids: Tensor | None
                        ) -> Tensor:
        if self.embed_positions is not None:
            x = x + self.embed_positions(position_ids).to(x.dtype)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
            x = x + self.embed_token_types(token_type_ids)
        return x if self.embed_norm is None else self.embed_norm(x)

    def _padding(self, attention_mask: Tensor | None, b: int, total: int
                 ) -> tuple[Tensor | None, Tensor | None]:
        """``(key_padding, explicit_mask)`` from Hugging Face's ``attention_mask``."""
        if attention_mask is None:
            return None, None
        if attention_mask.dim() == 4:  # custom (B|1, H|1, n, past + n) bool mask
            return None, attention_mask
        if attention_mask.shape != (b, total):
            raise ValueError(
                f"attention_mask must be (batch, past + seq) = {(b, total)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        key_padding = attention_mask.bool()
        if not torch.compiler.is_compiling() and bool(key_padding.all()):
            return None, None
        return key_padding, None

    def run(
        self,
        input_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        token_type_ids: Tensor | None,
        past_key_values: list[Any] | None,
        use_cache: bool,
        output_hidden_states: bool,
        output_attentions: bool,
    ) -> tuple[Tensor, Cache | None, list[Tensor], list[Tensor]]:
        """Embeddings and every block; returns ``(x, cache, hidden_states, attentions)``."""
        x = word_embeddings(self.embed_tokens, input_ids, inputs_embeds, self.config.hidden_size)
        b, n = x.shape[:2]
        past = past_key_values
        if past is not None and len(past) != len(self.layers):
            raise StateMismatchError(
                f"past_key_values has {len(past)} layer states, the model has {len(self.layers)} layers"
            )
        past_len = past[0].length if past and past[0] is not None else 0
        key_padding, explicit = self._padding(attention_mask, b, past_len + n)
        if position_ids is None:
            if key_padding is not None and self.causal:  # left padding: count real tokens
                position_ids = (key_padding.long().cumsum(-1) - 1).clamp_min(0)[:, past_len:]
            else:
                position_ids = torch.arange(past_len, past_len + n, device=x.device)
        x = self._add_embeddings(x, position_ids, token_type_ids)
        x = self.dropout(x)
        hidden: list[Tensor] = [x] if output_hidden_states else []
        attns: list[Tensor] = []
        cache = Cache() if use_cache else None
        for i, layer in enumerate(self.layers):
            kw = dict(key_padding=key_padding, mask=explicit, state=past[i] if past else None,
                      use_cache=use_cache, return_weights=output_attentions)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x, state, w = checkpoint(layer, x, position_ids, use_reentrant=False, **kw)
            else:
                x, state, w = layer(x, position_ids, **kw)
            if cache is not None:
                cache.append(state)
            if output_attentions:
                attns.append(w)
            if output_hidden_states:
                hidden.append(x)
        if self.norm is not None:
            x = self.norm(x)
        if output_hidden_states:
            hidden[-1] = x
        return x, cache, hidden, attns

    # -- parameters and persistence ----------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.embed_tokens.weight), None)
        return sum(p.numel() for p in params.values())

    def weights_state_dict(self) -> dict[str, Tensor]:
        """State dict without tied copies (safetensors refuses shared tensors)."""
        sd = self.state_dict()
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        return {k: v.detach().contiguous() for k, v in sd.items()}

    def load_weights(
        self, tensors: dict[str, Tensor], source: str = "weights", *, assign: bool = False
    ) -> None:
        """Load tensors strictly: missing or unexpected names raise
        :class:`~formerlab.models.CheckpointError`. ``assign=True`` adopts the given tensors
        instead of copying (for models built on the meta device: no second copy in memory)."""
        from .formats import load_weights_into

        load_weights_into(self, tensors, source, assign=assign)

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``."""
        from .formats import save_pretrained

        save_pretrained(self, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> Any:
        """Load a folder written by :meth:`save_pretrained` (or a foreign checkpoint that an
        installed format plugin understands: Hugging Face folders and GGUF files with the
        ``hf`` extra)."""
        from .formats import from_pretrained

        return from_pretrained(cls, path, device=device, dtype=dtype)
