""":class:`ModelConfig`: the hyper-parameters of every formerlab model, as data.

Sizes and the block layout live at the top level; two sub-configs group the rest:
``position`` (:class:`~formerlab.position.PositionConfig`: rope fields, log-n, relative map,
window, per-layer specs) and ``attention`` (:class:`~formerlab.attention.AttentionConfig`:
normaliser and its options, biases, dropout). ``mixer`` picks the token mixer of every layer from
:data:`formerlab.models.MIXERS` (``mha``, ``gau``, ``synthesizer`` ...), ``mixer_options`` its
settings; ``position.layer_specs`` may choose a mixer per layer (hybrid stacks).

``ModelConfig.from_dict`` also accepts the flat keys of Hugging Face configs and of formerlab's
first release (``rope_theta``, ``rope_scaling``/``rope_parameters``, ``attention_bias``,
``num_attention_heads``, ``window``, ``logn`` ...) and routes them to the sub-configs, so existing
dicts and saved ``config.json`` files keep working.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..attention.config import AttentionConfig
from ..config import Config
from ..position.config import PositionConfig
from ..position.layers import LayerSpec

__all__ = ["ModelConfig"]

# flat key -> (sub-config, field); Hugging Face names and the first release's names
_FLAT_KEYS: dict[str, tuple[str, str]] = {
    "rope_theta": ("position", "rope_theta"),
    "rope_layout": ("position", "rope_layout"),
    "rope_scaling": ("position", "rope_scaling"),
    "partial_rotary_factor": ("position", "partial_rotary_factor"),
    "logn": ("position", "logn"),
    "logn_min_len": ("position", "logn_min_len"),
    "logn_base_len": ("position", "logn_base_len"),
    "logn_train_len": ("position", "logn_train_len"),
    "rope_freq_repeat": ("position", "rope_freq_repeat"),
    "window": ("position", "window"),
    "sliding_window": ("position", "window"),
    "layer_specs": ("position", "layer_specs"),
    "relpos": ("position", "relpos"),
    "normalization": ("attention", "normalization"),
    "normalization_options": ("attention", "normalization_options"),
    "qk_bias": ("attention", "qk_bias"),
    "attention_bias": ("attention", "bias"),
    "qkv_bias": ("attention", "qkv_bias"),
    "attention_dropout": ("attention", "dropout"),
}
_RENAMED = {"num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads"}


def _route_flat_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Move flat (HF / first-release) keys into the ``position``/``attention`` dicts."""
    data = dict(data)
    subs: dict[str, dict[str, Any]] = {}
    for name in ("position", "attention"):
        value = data.pop(name, None)
        if isinstance(value, str):  # the first release's position="rope"
            value = {"kind": value}
        elif isinstance(value, Config):
            value = value.to_dict()
        subs[name] = dict(value or {})
    for old, new in _RENAMED.items():
        if old in data:
            data[new] = data.pop(old)
    if "rope_parameters" in data:  # transformers 5: theta and partial factor inside the dict
        rope = dict(data.pop("rope_parameters") or {})
        for key in ("rope_theta", "partial_rotary_factor"):
            if key in rope:
                subs["position"][key] = rope.pop(key)
        if (rope.get("rope_type") or rope.get("type") or "default") != "default" or len(rope) > 1:
            subs["position"]["rope_scaling"] = rope
    if "logn_base_length" in data:  # the first release: one name for two lengths
        length = data.pop("logn_base_length")
        mode = data.get("logn", subs["position"].get("logn"))
        subs["position"]["logn_train_len" if mode == "dagger" else "logn_base_len"] = length
    for key in list(data):
        if key in _FLAT_KEYS:
            sub, field = _FLAT_KEYS[key]
            subs[sub][field] = data.pop(key)
    data["position"], data["attention"] = subs["position"], subs["attention"]
    return data


@dataclasses.dataclass
class ModelConfig(Config):
    """Decoder-only language model (and encoder) hyper-parameters.

    Args:
        vocab_size: Number of token ids (256 for the byte-level default corpus).
        hidden_size: Model width ``d_model``.
        num_layers: Number of blocks.
        num_heads: Query heads of attention mixers.
        num_kv_heads: Key/value heads (GQA); ``None`` means ``num_heads``.
        head_dim: Per-head width; ``None`` means ``hidden_size // num_heads``.
        mixer: The token mixer of every layer, a :data:`formerlab.models.MIXERS` name.
        mixer_options: Settings of that mixer (e.g. ``{"expansion": 256, "key_size": 64}`` for
            ``gau``); unknown keys raise ``ValueError`` listing the allowed ones.
        intermediate_size: FFN inner width; ``None`` means ``4·hidden`` (GELU/ReLU) or ``8/3·hidden``
            rounded to a multiple of 8 (SwiGLU).
        ffn: A :data:`formerlab.nn.FFNS` name (``swiglu``, ``gelu``, ``relu``) or ``"none"`` (GAU
            blocks, which gate inside the mixer).
        mlp_bias: Bias on FFN projections.
        norm: ``"rmsnorm"`` or ``"layernorm"``; ``norm_affine=False`` makes it parameter-free.
        norm_position: ``"pre"`` (``x + F(Norm(x))``) or ``"post"`` (``Norm(x + F(x))``).
        norm_eps: ε of the norms.
        embed_norm: Normalise the embeddings (BERT's embedding LayerNorm; GAU-α's RMS norm).
        position: A :class:`~formerlab.position.PositionConfig` (or its dict, or a kind name).
        attention: An :class:`~formerlab.attention.AttentionConfig` (or its dict).
        max_position_embeddings: Table size of learned positions; the training length otherwise.
        type_vocab_size: Token-type (segment) embeddings (0 = none; 2 in BERT and GAU-α).
        pad_token_id: Padding id (its embedding row starts at zero and gets no gradient) and the
            default padding of ``generate``; ``None`` = none.
        tie_word_embeddings: Share the input embedding with the output head.
        dropout: Residual/embedding dropout probability.
        init: Initialisation scheme, a :data:`formerlab.nn.INIT_SCHEMES` name (``normal`` with
            ``initializer_range`` and depth-scaled residual outputs; ``gau_alpha``).
        initializer_range: Std of the ``normal`` scheme.
    """

    vocab_size: int = 256
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mixer: str = "mha"
    mixer_options: dict[str, Any] | None = None
    intermediate_size: int | None = None
    ffn: str = "swiglu"
    mlp_bias: bool = False
    norm: str = "rmsnorm"
    norm_affine: bool = True
    norm_position: str = "pre"
    norm_eps: float = 1e-6
    embed_norm: bool = False
    position: PositionConfig = dataclasses.field(default_factory=PositionConfig)
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
    max_position_embeddings: int = 2048
    type_vocab_size: int = 0
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    init: str = "normal"
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.position, str):
            self.position = PositionConfig(kind=self.position)
        elif isinstance(self.position, dict):
            self.position = PositionConfig.from_dict(self.position)
        if isinstance(self.attention, dict):
            self.attention = AttentionConfig.from_dict(self.attention)
        super().__post_init__()

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return [*super().allowed_keys(), *_FLAT_KEYS, *_RENAMED, "rope_parameters",
                "logn_base_length"]

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _route_flat_keys(data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied; flat keys (``window=``, ``logn=`` ...) reach the
        sub-configs, a dict for ``position``/``attention`` updates only the keys it names."""
        data = self.to_dict()
        for name in ("position", "attention"):
            if isinstance(changes.get(name), dict):
                data[name] = {**data[name], **changes.pop(name)}
        data.update(changes)
        return type(self).from_dict(data)

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads}) unless head_dim is given"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.kv_heads})"
            )
        from ..nn import FFNS, INIT_SCHEMES, NORMS
        from .mixers import MIXERS, mixer_options

        if self.ffn != "none":
            FFNS.canonical(self.ffn)
        NORMS.canonical(self.norm)
        INIT_SCHEMES.canonical(self.init)
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id must lie in [0, vocab_size={self.vocab_size}), got {self.pad_token_id}"
            )
        if self.max_position_embeddings <= 0 or self.type_vocab_size < 0:
            raise ValueError("max_position_embeddings must be > 0 and type_vocab_size >= 0, got "
                             f"{self.max_position_embeddings} and {self.type_vocab_size}")
        p = self.position
        if p.kind_spec.rotary and self.rotary_dim % 2:
            raise ValueError(
                f"rotary dimension must be even, got head_dim={self.dim_per_head} × "
                f"partial_rotary_factor={p.partial_rotary_factor} = {self.rotary_dim}"
            )
        if p.kind_spec.rotary:
            p.check_schedule(self.dim_per_head, self.max_position_embeddings)
        if p.logn == "pretrain" and self.attention.normalization == "softmax_plus":
            raise ValueError("logn='pretrain' and normalization='softmax_plus' apply the same "
                             "log-n factor twice; choose one")
        MIXERS.canonical(self.mixer)
        mixer_options(self.mixer, self.mixer_options)
        for i, spec in enumerate(self.layer_specs()):
            if spec.mixer is not None:
                MIXERS.canonical(spec.mixer)
                mixer_options(spec.mixer, spec.mixer_options)
            elif spec.mixer_options is not None:
                mixer_options(self.mixer, spec.mixer_options)
            if spec.window is not None and spec.window <= 0:  # pragma: no cover - LayerSpec checks
                raise ValueError(f"layer {i}: window must be positive")

    def layer_specs(self) -> list[LayerSpec]:
        """One :class:`~formerlab.position.LayerSpec` per layer."""
        return self.position.specs(self.num_layers)

    def layer_mixer(self, spec: LayerSpec) -> tuple[str, dict[str, Any] | None]:
        """``(mixer name, options)`` of a layer with ``spec``."""
        if spec.mixer is None or spec.mixer == self.mixer:
            return self.mixer, spec.mixer_options if spec.mixer_options is not None \
                else self.mixer_options
        return spec.mixer, spec.mixer_options

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.position.partial_rotary_factor)

    @property
    def ffn_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.ffn == "swiglu":
            return 8 * ((8 * self.hidden_size // 3 + 7) // 8)
        return 4 * self.hidden_size


def _accept_flat_keys(init: Any) -> Any:
    """Let ``ModelConfig(...)`` take the flat keys too (``ModelConfig(rope_theta=5e5, window=64)``),
    as Hugging Face configs do."""
    import functools

    flat_names = {*_FLAT_KEYS, *_RENAMED, "rope_parameters", "logn_base_length"}

    @functools.wraps(init)
    def wrapper(self: ModelConfig, *args: Any, **kwargs: Any) -> None:
        if flat_names.intersection(kwargs):
            kwargs = _route_flat_keys(kwargs)
        init(self, *args, **kwargs)

    return wrapper


ModelConfig.__init__ = _accept_flat_keys(ModelConfig.__init__)  # type: ignore[method-assign]
