"""Reading GGUF files (llama.cpp's format) into formerlab's :class:`~formerlab.models.CausalLM`.

- :func:`open_gguf`: a ``gguf.GGUFReader`` on a file checked to be GGUF (the magic bytes first), so a
  junk or truncated file raises :class:`~formerlab.models.CheckpointError` naming it.
- :func:`read_gguf_config`: the :class:`~formerlab.config.ModelConfig` of a ``llama`` file.
- :func:`load_gguf_weights`: ``(config, tensors)`` named like ``CausalLM``.

Memory: ``gguf.GGUFReader`` parses every metadata array into numpy pieces (≈160 MB and seconds
for a 49k-token vocabulary) and memory-maps the tensor data. The loader keeps only the tensor
table (name, type, shape, offset), drops the reader, then reads each tensor's bytes with plain file
reads into one reused buffer and dequantises it, a block of rows at a time, straight into its
destination tensor (float32 or the requested ``dtype``). The peak is about the destination model
plus one quantised tensor. llama.cpp stores the q/k projections permuted to the interleaved RoPE
layout; they are converted back to the half layout (Hugging Face's) with
:func:`formerlab.position.rope.convert_rope_layout`. ``gguf`` is imported lazily.
"""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..config import ModelConfig
from ..position.rope import convert_rope_layout

__all__ = [
    "SUPPORTED_GGUF_ARCHITECTURES",
    "gguf_field",
    "load_gguf_weights",
    "open_gguf",
    "read_gguf_config",
]

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)
_MAGIC = b"GGUF"

_GGUF_MAP = [
    (r"token_embd\.weight", "embed_tokens.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"layers.\1.attn_norm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"layers.\1.mlp_norm.weight"),
    (r"blk\.(\d+)\.attn_([qkv])\.(weight|bias)", r"layers.\1.self_attn.\2_proj.\3"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.(weight|bias)", r"layers.\1.mlp.\2_proj.\3"),
]


def _rename(name: str) -> str:
    for pat, repl in _GGUF_MAP:
        if re.fullmatch(pat, name):
            return re.sub(pat, repl, name)
    return "?" + name  # unknown: reported as unexpected


def open_gguf(path: str | Path) -> Any:
    """A ``gguf.GGUFReader`` on ``path``.

    Raises:
        CheckpointError: ``path`` is missing, is not a GGUF file, or cannot be parsed (the message
            names the file).
    """
    from ..models.lm import CheckpointError

    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    if head != _MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file: it starts with {head!r}, a GGUF file "
                              f"with {_MAGIC!r}")
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, IndexError, ... on damaged files
        raise CheckpointError(f"{path} is not a readable GGUF file (truncated or damaged?): "
                              f"{type(exc).__name__}: {exc}") from exc


def gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    """The value of metadata ``key`` of an open reader (``default`` if absent)."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf_config(reader: Any) -> ModelConfig:
    """A :class:`ModelConfig` from the metadata of an open ``gguf.GGUFReader``."""
    arch = gguf_field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported architectures: "
                         f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}")

    def get(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"{arch}.{key}", default)

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    kv = int(get("attention.head_count_kv", heads))
    head_dim = int(get("attention.key_length", hidden // heads))
    rot = int(get("rope.dimension_count", head_dim))
    vocab = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    scaling = None
    stype = get("rope.scaling.type")
    if stype not in (None, "none"):
        if stype != "linear":
            raise ValueError(f"GGUF rope scaling {stype!r} is not supported (supported: linear)")
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    names = {t.name for t in reader.tensors}
    return ModelConfig(
        vocab_size=int(vocab), hidden_size=hidden, num_layers=int(get("block_count")),
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        intermediate_size=int(get("feed_forward_length")), ffn="swiglu", norm="rmsnorm",
        norm_position="pre", norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        position="rope", rope_theta=float(get("rope.freq_base", 10000.0)), rope_layout="half",
        rope_scaling=scaling, partial_rotary_factor=rot / head_dim,
        max_position_embeddings=int(get("context_length", 2048)),
        attention_bias="blk.0.attn_q.bias" in names and "blk.0.attn_output.bias" in names,
        qk_bias="blk.0.attn_q.bias" in names and "blk.0.attn_output.bias" not in names,
        tie_word_embeddings="output.weight" not in names,
    )


class _TensorInfo(NamedTuple):
    name: str  # formerlab's name
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # torch order (outermost first)
    raw_shape: tuple[int, ...]  # the stored array's shape (bytes per row for quantised types)
    raw_dtype: Any  # numpy dtype of the stored array
    offset: int
    n_bytes: int


def _tensor_table(reader: Any) -> list[_TensorInfo]:
    return [
        _TensorInfo(_rename(t.name), t.tensor_type, tuple(int(s) for s in reversed(t.shape.tolist())),
                    tuple(t.data.shape), t.data.dtype, int(t.data_offset), int(t.data.nbytes))
        for t in reader.tensors
    ]


def _dequantize_into(dst: Tensor, raw: Any, qtype: Any, chunk_elems: int = 1 << 20) -> None:
    """Dequantise ``raw`` into ``dst`` a block of rows at a time (the transient is one block)."""
    from gguf.quants import dequantize

    shape = tuple(dst.shape)
    if raw.ndim >= 2 and dst.dim() >= 2 and raw.shape[0] == shape[0]:
        step = max(1, chunk_elems // max(1, dst[0].numel()))
        for i in range(0, shape[0], step):
            block = dequantize(raw[i:i + step], qtype)
            dst[i:i + step] = torch.from_numpy(block.reshape(-1, *shape[1:]))
    else:
        dst.copy_(torch.from_numpy(dequantize(raw, qtype).reshape(shape)))


def load_gguf_weights(path: str | Path, dtype: torch.dtype | None = None
                      ) -> tuple[ModelConfig, dict[str, Tensor]]:
    """``(ModelConfig, tensors named like CausalLM)`` of a GGUF file, in ``dtype`` (default float32).

    Raises:
        CheckpointError: not a (readable) GGUF file.
        ValueError: unsupported architecture, missing or unexpected tensors.
    """
    import numpy as np

    from .weights import check_tensor_names, expected_causal_lm_names

    path = Path(path)
    reader = open_gguf(path)
    config = read_gguf_config(reader)
    table = _tensor_table(reader)
    del reader  # its metadata pieces and memory map go now, before the weights are allocated
    gc.collect()
    check_tensor_names(expected_causal_lm_names(config), {t.name for t in table}, str(path))
    head_dim, rot = config.dim_per_head, config.rotary_dim
    buf = bytearray(max(t.n_bytes for t in table))
    tensors: dict[str, Tensor] = {}
    with path.open("rb") as fh:
        for t in table:
            fh.seek(t.offset)
            view = memoryview(buf)[:t.n_bytes]
            if fh.readinto(view) != t.n_bytes:
                from ..models.lm import CheckpointError

                raise CheckpointError(f"{path} is truncated: tensor {t.name} needs {t.n_bytes} bytes "
                                      f"at offset {t.offset}")
            raw = np.frombuffer(view, dtype=t.raw_dtype).reshape(t.raw_shape)
            w = torch.empty(t.shape, dtype=dtype or torch.float32)
            _dequantize_into(w, raw, t.qtype)
            if t.name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
                w = convert_rope_layout(w, head_dim, "interleaved", "half", rotary_dim=rot).contiguous()
            tensors[t.name] = w
    return config, tensors
