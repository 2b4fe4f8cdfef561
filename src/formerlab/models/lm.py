"""Decoder-only language model: token embedding → N blocks → final norm → tied or untied head.

Positions: RoPE (any registered schedule, both layouts, partial rotary), sinusoidal or learned
absolute embeddings, or none (NoPE). Every attention layer exposes the three position hooks of
:mod:`formerlab.attention.multihead`; :meth:`CausalLM.set_position_method` sets them for the
whole model (inference-time length extension: PI, NTK, ReRoPE, log-n† ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.multihead import KVCache
from ..config import ModelConfig
from ..nn.init import normal_init_, scale_residual_
from ..nn.norms import build_norm
from ..position.absolute import LearnedPositionEmbedding, SinusoidalPositionEmbedding
from ..position.rope import RotaryEmbedding
from .blocks import DecoderBlock
from .encoder import _word_embeddings
from .outputs import CausalLMOutput

__all__ = ["CausalLM", "CheckpointError"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted or does not match the model."""


class CausalLM(nn.Module):
    """A decoder-only Transformer language model.

    Args:
        config: A :class:`~formerlab.config.ModelConfig` (or a dict accepted by its
            ``from_dict``).

    ``forward(input_ids, attention_mask=None, position_ids=None, labels=None,
    past_key_values=None, use_cache=False, output_hidden_states=False,
    output_attentions=False, inputs_embeds=None)`` returns a :class:`~formerlab.models.CausalLMOutput`. ``labels``
    are shifted inside (as in Hugging Face); ``-100`` is ignored. ``attention_mask`` is either
    Hugging Face's ``(B, past + n)`` padding mask (1 keep, 0 pad) or an explicit boolean
    ``(B|1, H|1, n, past + n)`` mask (``True`` = may attend), e.g. a UniLM/prefix mask.
    """

    def __init__(self, config: ModelConfig | dict[str, Any]) -> None:
        super().__init__()
        config = ModelConfig.coerce(config)
        self.config = c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.pos_embed: nn.Module | None = None
        if c.position == "sinusoidal":
            self.pos_embed = SinusoidalPositionEmbedding(c.hidden_size)
        elif c.position == "learned":
            self.pos_embed = LearnedPositionEmbedding(c.max_position_embeddings, c.hidden_size)
        self.dropout = nn.Dropout(c.dropout)
        self.layer_specs: list[Any] | None = None
        if c.layer_specs is not None:
            from ..position.layers import LayerSpec

            self.layer_specs = [LayerSpec.from_dict(d) for d in c.layer_specs]
        self.layers = nn.ModuleList(
            DecoderBlock(c, i, window=self.layer_specs[i].window if self.layer_specs else None)
            for i in range(c.num_layers)
        )
        self.norm = (
            build_norm(c.norm, c.hidden_size, c.norm_eps, c.norm_affine)
            if c.norm_position == "pre"
            else nn.Identity()
        )
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary: RotaryEmbedding | None = None
        if c.position == "rope":
            scaling = dict(c.rope_scaling or {})
            rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
            self.rotary = RotaryEmbedding(
                c.dim_per_head,
                base=c.rope_theta,
                rope_type=rope_type,
                partial_rotary_factor=c.partial_rotary_factor,
                layout=c.rope_layout,
                **scaling,
            )
        if c.position == "alibi":
            from ..position.bias import alibi_bias, alibi_slopes

            slopes = alibi_slopes(c.num_heads)

            def _alibi(q_pos: Tensor, k_pos: Tensor) -> Tensor:
                return alibi_bias(q_pos, k_pos, slopes.to(q_pos.device))

            self._alibi = _alibi
        self._position_method: dict[str, Any] = {}
        self.gradient_checkpointing = False
        self.reset_position_method()
        normal_init_(self, c.initializer_range)
        scale_residual_(self.layers, c.num_layers)  # o_proj, down_proj: std / sqrt(2L)

    # -- position methods --------------------------------------------------------------------
    def set_position_method(
        self,
        rope_type: str = "default",
        *,
        rope_params: dict[str, Any] | None = None,
        relpos: Any = None,
        logn: str | None = None,
        train_len: int | None = None,
        logn_base_length: int | None = None,
        relpos_layers: str = "all",
    ) -> None:
        """Set the position hooks of every attention layer (inference-time length extension).

        Args:
            rope_type: Inverse-frequency schedule (``default``, ``linear``/``pi``, ``ntk_old``,
                ...; see :data:`formerlab.position.ROPE_SCHEDULES`). RoPE models only.
            rope_params: Schedule parameters in Hugging Face's vocabulary (``{"factor": 4}``).
            relpos: A relative-position map (``formerlab.position.make_relpos(...)``) or a dict
                such as ``{"name": "rerope", "window": 32}``; ``None`` = plain RoPE.
            logn: ``None``, ``"dagger"`` (queries × ``max(1, log_{train_len}(pos+1))``) or
                ``"pretrain"`` (per-row log-n, the model must have been trained with it).
            train_len: Training length (needed by ``logn="dagger"``).
            logn_base_length: Base of the pretraining factor (default: the config's).
            relpos_layers: ``"all"`` RoPE layers, or only the ``"full"`` (non-window) ones
                (HWFA2: ReRoPE on the full layers at inference).

        Per-layer specs (``config.layer_specs``) take precedence: ``nope`` layers never rotate,
        a layer's own ``logn`` replaces ``logn``.
        """
        c = self.config
        if self.rotary is None and (rope_type != "default" or rope_params or relpos is not None):
            raise ValueError(
                f"RoPE schedules and relative maps need position='rope'; this model uses "
                f"position={c.position!r}"
            )
        if relpos_layers not in ("all", "full"):
            raise ValueError(f"relpos_layers must be 'all' or 'full', got {relpos_layers!r}")
        if self.rotary is not None:
            self.rotary.set_schedule(rope_type, **(rope_params or {}))
        if isinstance(relpos, dict):
            from ..position.relative import make_relpos

            relpos = make_relpos(**relpos)
        scales: dict[str | None, Any] = {None: None}

        def scale_for(mode: str | None) -> Any:
            if mode not in scales:
                from ..position.logn import LogNScale

                if mode == "dagger":
                    if train_len is None:
                        raise ValueError("logn='dagger' needs train_len (the training length)")
                    scales[mode] = LogNScale(mode="dagger", train_len=train_len)
                elif mode == "pretrain":
                    scales[mode] = LogNScale(
                        mode="pretrain", base_len=logn_base_length or c.logn_base_length,
                        min_len=c.logn_min_len,
                    )
                else:
                    raise ValueError(f"logn must be None, 'dagger' or 'pretrain', got {mode!r}")
            return scales[mode]

        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            spec = self.layer_specs[i] if self.layer_specs else None
            nope = spec is not None and spec.pos == "nope"
            full = attn.window is None
            attn.rotary = None if nope else self.rotary
            attn.relpos = None if nope or (relpos_layers == "full" and not full) else relpos
            attn.query_scale = scale_for(spec.logn if spec is not None and spec.logn else logn)
            attn.bias_fn = getattr(self, "_alibi", None)
        self._position_method = {
            "rope_type": rope_type, "rope_params": dict(rope_params or {}),
            "relpos": relpos, "logn": logn, "train_len": train_len,
            "relpos_layers": relpos_layers,
        }

    def reset_position_method(self) -> None:
        """Back to the configuration the model was built (and trained) with."""
        c = self.config
        scaling = dict(c.rope_scaling or {})
        rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
        self.set_position_method(
            rope_type if self.rotary is not None else "default",
            rope_params=scaling if self.rotary is not None else None,
            relpos=dict(c.relpos) if c.relpos else None,
            logn=c.logn,
            train_len=c.logn_base_length,
        )

    @property
    def position_method(self) -> dict[str, Any]:
        return dict(self._position_method)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block's activations in backward instead of storing them
        (``torch.utils.checkpoint``, ``use_reentrant=False``; kexue.fm/archives/7367)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        past_key_values: list[KVCache] | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        inputs_embeds: Tensor | None = None,
    ) -> CausalLMOutput:
        x = _word_embeddings(self.embed_tokens, input_ids, inputs_embeds, self.config.hidden_size)
        b, n = x.shape[:2]
        past_len = past_key_values[0].length if past_key_values else 0
        if past_key_values is not None and len(past_key_values) != len(self.layers):
            raise ValueError(
                f"past_key_values has {len(past_key_values)} layers, model has {len(self.layers)}"
            )
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + n, device=x.device)
        key_padding = explicit_mask = None
        if attention_mask is not None and attention_mask.dim() == 4:
            explicit_mask = attention_mask  # custom (B|1, H|1, n, past + n) bool mask
        elif attention_mask is not None:
            if attention_mask.shape != (b, past_len + n):
                raise ValueError(
                    f"attention_mask must be (batch, past + seq) = {(b, past_len + n)}, got "
                    f"{tuple(attention_mask.shape)}"
                )
            key_padding = attention_mask.bool()
            if bool(key_padding.all()):
                key_padding = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids).to(x.dtype)
        x = self.dropout(x)
        hidden: list[Tensor] = [x] if output_hidden_states else []
        attns: list[Tensor] = []
        caches: list[KVCache] = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            kw = dict(key_padding=key_padding, past=past, use_cache=use_cache,
                      return_weights=output_attentions, mask=explicit_mask)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x, cache, w = checkpoint(layer, x, position_ids, use_reentrant=False, **kw)
            else:
                x, cache, w = layer(x, position_ids, **kw)
            if use_cache:
                caches.append(cache)
            if output_attentions:
                attns.append(w)
            if output_hidden_states:
                hidden.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden[-1] = x
        logits = self.lm_head(x)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return CausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=caches if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
        )

    # -- persistence -------------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.embed_tokens.weight), None)
        return sum(p.numel() for p in params.values())

    def weights_state_dict(self) -> dict[str, Tensor]:
        """State dict without the tied head (safetensors refuses shared tensors)."""
        sd = self.state_dict()
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        return {k: v.detach().contiguous() for k, v in sd.items()}

    def load_weights(
        self, tensors: dict[str, Tensor], source: str = "weights", *, assign: bool = False
    ) -> None:
        """Load tensors strictly: missing or unexpected names raise :class:`CheckpointError`.

        ``assign=True`` adopts the given tensors instead of copying (for models built on the
        meta device: no second copy of the weights in memory).
        """
        expected = set(self.weights_state_dict())
        missing = sorted(expected - set(tensors))
        unexpected = sorted(set(tensors) - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not match the model: missing {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                f"{' ...' if len(unexpected) > 10 else ''}"
            )
        own = self.state_dict()
        bad = [k for k, v in tensors.items() if own[k].shape != v.shape]
        if bad:
            shapes = {k: (tuple(tensors[k].shape), tuple(own[k].shape)) for k in bad[:5]}
            raise CheckpointError(f"{source}: shape mismatch (file, model): {shapes}")
        self.load_state_dict(tensors, strict=False, assign=assign)
        if assign and self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # assign replaced the Parameter

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(self.weights_state_dict(), str(path / WEIGHTS_NAME))
        self.config.save(path / CONFIG_NAME)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> CausalLM:
        """Load a model folder written by :meth:`save_pretrained`, a Hugging Face Llama-family
        folder (``config.json`` with ``model_type`` + safetensors) or a GGUF file.

        Foreign formats are converted by :mod:`formerlab.interop.weights` (extra ``hf``).
        ``dtype`` (e.g. ``torch.bfloat16``) is the weights' dtype; RoPE frequencies stay float32.
        """
        from safetensors.torch import load_file

        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {dtype!r}")

        path = Path(path)
        cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        foreign = path.suffix == ".gguf" or (
            cfg_file.is_file() and "model_type" in json.loads(cfg_file.read_text() or "{}")
        )
        if foreign:  # built without initialisation, each tensor written into its parameter
            from ..interop.weights import load_causal_lm

            model = load_causal_lm(path, dtype=dtype, cls=cls)
            return model.to(device) if device is not None else model
        for f in (cfg_file, w_file):
            if not f.is_file():
                raise CheckpointError(f"{f} does not exist")
        try:
            config = ModelConfig.from_dict(json.loads(cfg_file.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{cfg_file} is not a valid model config: {exc}") from exc
        try:
            tensors = load_file(str(w_file), device=str(device or "cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{w_file} is corrupted or not safetensors: {exc}") from exc
        model = cls(config)
        model.load_weights(tensors, source=str(w_file))
        if dtype is not None:
            model.to(dtype)
            model.reset_position_method()  # frequencies back in float32
        return model.to(device) if device is not None else model


def causal_lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy: position ``t`` predicts ``labels[t+1]`` (mean over valid)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index)
