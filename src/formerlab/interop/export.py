"""Export a formerlab :class:`~formerlab.models.CausalLM` to a transformers ``LlamaForCausalLM``.

:func:`to_transformers` maps a Llama-compatible model (``mha`` mixers, RoPE, SwiGLU, RMSNorm,
Pre-Norm) to Hugging Face's class with equal logits, so ``generate``, PEFT, accelerate and the rest
of the Hugging Face tooling work on it. The interleaved RoPE layout is converted by permuting the
q/k projection rows (scores are unchanged). A feature Llama cannot express — GAU or other mixers,
a relative-position map (ReRoPE), log-n scaling, sliding windows, q/k-only biases, a rope schedule
transformers does not know — raises ``ValueError`` naming it instead of exporting a different
model. transformers is imported lazily.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.lm import CausalLM
from ..position.rope import convert_rope_layout

__all__ = ["HF_ROPE_TYPES", "to_transformers"]

#: rope schedules that transformers' Llama implements itself
HF_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


def _unsupported(model: CausalLM) -> list[str]:
    c, p, a = model.config, model.config.position, model.config.attention
    method = model.position_method
    problems = []
    mixers = sorted({b.mixer_name for b in model.layers} - {"mha"})
    if mixers:
        problems.append(f"token mixers {mixers} (Llama layers are multi-head attention)")
    checks = [
        (p.kind != "rope", f"position kind {p.kind!r} (Llama uses RoPE)"),
        (p.partial_rotary_factor != 1.0, "partial rotary embeddings"),
        (p.rope_freq_repeat != 1, "repeated rope frequencies (a widened model)"),
        (p.relpos is not None or method.get("relpos") is not None,
         "a relative-position map (ReRoPE / Leaky ReRoPE)"),
        (any(s.pos == "rope_train_rerope_infer" for s in model.layer_specs),
         "HWFA2's ReRoPE-at-inference layers"),
        (p.logn is not None or method.get("logn") is not None
         or any(s.logn for s in model.layer_specs), "log-n attention scaling"),
        (p.window is not None or any(s.window is not None for s in model.layer_specs),
         "sliding-window attention"),
        (any(s.pos == "nope" for s in model.layer_specs), "NoPE layers"),
        (a.normalization != "softmax" or bool(a.normalization_options),
         f"attention normalization {a.normalization!r}"),
        (a.qk_bias and not a.bias, "biases on q/k only"),
        (a.qkv_bias and not a.bias, "biases on q/k/v without the output projection (Qwen2)"),
        (c.ffn != "swiglu", f"ffn {c.ffn!r} (Llama uses SwiGLU)"),
        (c.norm != "rmsnorm" or not c.norm_affine, "a norm other than RMSNorm with a gain"),
        (c.norm_position != "pre", "Post-Norm blocks"),
        (c.embed_norm, "an embedding norm"),
        (c.type_vocab_size > 0, "token-type embeddings"),
        (c.dropout > 0, "residual dropout"),
        (model.rotary is not None and model.rotary.rope_type not in HF_ROPE_TYPES,
         f"rope_type {getattr(model.rotary, 'rope_type', None)!r} (transformers knows "
         f"{', '.join(HF_ROPE_TYPES)})"),
    ]
    return problems + [msg for bad, msg in checks if bad]


def _rope_parameters(model: CausalLM) -> dict[str, Any]:
    rotary = model.rotary
    params: dict[str, Any] = {"rope_type": rotary.rope_type, "rope_theta": rotary.base}
    params.update({k: v for k, v in rotary.rope_params.items() if k != "max_position_embeddings"})
    return params


def _weights(model: CausalLM) -> dict[str, Tensor]:
    c = model.config
    sd = model.state_dict()
    head_dim, layout = c.dim_per_head, c.position.rope_layout

    def qk(t: Tensor) -> Tensor:
        return convert_rope_layout(t, head_dim, layout, "half")

    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    names = {"attn_norm.weight": "input_layernorm.weight",
             "mlp_norm.weight": "post_attention_layernorm.weight"}
    for i in range(c.num_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            for kind in ("weight", "bias"):
                key = f"{src}mixer.{proj}.{kind}"
                if key in sd:
                    t = sd[key]
                    out[f"{dst}self_attn.{proj}.{kind}"] = qk(t) if proj in ("q_proj", "k_proj") else t
        for proj in ("gate_proj", "up_proj", "down_proj"):
            for kind in ("weight", "bias"):
                if f"{src}mlp.{proj}.{kind}" in sd:
                    out[f"{dst}mlp.{proj}.{kind}"] = sd[f"{src}mlp.{proj}.{kind}"]
        for ours, theirs in names.items():
            out[dst + theirs] = sd[src + ours]
    return out


def to_transformers(model: CausalLM, *, dtype: torch.dtype | None = None) -> Any:
    """A ``transformers.LlamaForCausalLM`` with the weights of ``model`` (equal logits).

    Args:
        model: A Llama-compatible :class:`~formerlab.models.CausalLM`.
        dtype: Dtype of the exported model (default: that of ``model``).

    Raises:
        TypeError: ``model`` is not a ``CausalLM``.
        ValueError: the model uses a feature transformers' Llama cannot express (named).
    """
    if not isinstance(model, CausalLM):
        raise TypeError(f"to_transformers exports a formerlab CausalLM, got {type(model).__name__}")
    problems = _unsupported(model)
    if problems:
        raise ValueError(
            "this model cannot be expressed as a transformers LlamaForCausalLM: "
            + "; ".join(problems)
        )
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.ffn_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.kv_heads, head_dim=c.dim_per_head, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, initializer_range=c.initializer_range,
        rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=_rope_parameters(model), attention_bias=c.attention.bias,
        attention_dropout=c.attention.dropout, mlp_bias=c.mlp_bias,
        pad_token_id=c.pad_token_id, bos_token_id=None, eos_token_id=None,
    )
    param = next(model.parameters())
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_config)
    weights = {k: v.detach().clone() for k, v in _weights(model).items()}
    missing, unexpected = hf.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in missing if not (c.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:  # pragma: no cover - guards a transformers layout change
        raise ValueError(f"transformers' Llama layout changed: missing {missing}, "
                         f"unexpected {unexpected}")
    if c.tie_word_embeddings:
        hf.tie_weights()
    base = hf.model
    with torch.device(param.device):  # its inv_freq buffer was created on the meta device
        base.rotary_emb = type(base.rotary_emb)(config=hf_config)
    hf = hf.to(device=param.device, dtype=dtype or param.dtype)
    return hf.train(model.training)
