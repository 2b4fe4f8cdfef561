"""Reading GGUF files (llama.cpp's format) into formerlab's :class:`~formerlab.models.CausalLM`.

- :func:`open_gguf`: a ``gguf.GGUFReader`` on a file checked to be GGUF (the magic bytes first), so a
  junk or truncated file raises :class:`~formerlab.models.CheckpointError` naming it.
- :func:`read_gguf_config`: the :class:`~formerlab.config.ModelConfig` of a ``llama`` file.
- :func:`read_gguf_header`, :func:`read_gguf_tensors`: the config and tensor table, then the
  tensors (named like ``CausalLM``) written into given destination tensors, e.g. the parameters
  of a model built without initialisation (:func:`formerlab.interop.weights.load_causal_lm`).

Memory: ``gguf.GGUFReader`` parses every metadata array into numpy pieces (≈160 MB and seconds
for a 49k-token vocabulary) and memory-maps the tensor data. The loader keeps only the tensor
table (name, type, shape, offset), drops the reader, then reads each tensor with plain file reads,
a block of rows at a time, and dequantises each block straight into its destination parameter
(float32 or the requested ``dtype``). The peak is about the destination model plus one block. llama.cpp stores the q/k projections permuted to the interleaved RoPE
layout; they are converted back to the half layout (Hugging Face's) with
:func:`formerlab.position.rope.convert_rope_layout`. ``gguf`` is imported lazily.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..models.config import ModelConfig
from ..position.rope import convert_rope_layout

__all__ = [
    "SUPPORTED_GGUF_ARCHITECTURES",
    "gguf_field",
    "open_gguf",
    "read_gguf_config",
    "read_gguf_header",
    "read_gguf_tensors",
]

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)
_MAGIC = b"GGUF"

_GGUF_MAP = [
    (r"token_embd\.weight", "embed_tokens.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"layers.\1.attn_norm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"layers.\1.mlp_norm.weight"),
    (r"blk\.(\d+)\.attn_([qkv])\.(weight|bias)", r"layers.\1.mixer.\2_proj.\3"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"layers.\1.mixer.o_proj.\2"),
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
    from ..models.formats import CheckpointError

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


def _read_into(fh: Any, t: _TensorInfo, dst: Tensor, buf: bytearray, chunk_elems: int = 1 << 19) -> None:
    """Read tensor ``t`` from the open file ``fh`` and dequantise it into ``dst``, a block of rows
    at a time: the transient memory is one block's bytes (in ``buf``, grown as needed) and its
    float32 values, whatever the tensor's size."""
    import numpy as np
    from gguf.quants import dequantize

    shape = tuple(dst.shape)
    rows = t.raw_shape[0] if len(t.raw_shape) >= 2 and len(shape) >= 2 and t.raw_shape[0] == shape[0] else 1
    row_bytes, row_elems = t.n_bytes // rows, dst.numel() // rows
    step = max(1, chunk_elems // max(1, row_elems))
    fh.seek(t.offset)
    for i in range(0, rows, step):
        n = min(step, rows - i)
        if len(buf) < n * row_bytes:
            buf.extend(bytes(n * row_bytes - len(buf)))
        view = memoryview(buf)[:n * row_bytes]
        if fh.readinto(view) != n * row_bytes:
            from ..models.formats import CheckpointError

            raise CheckpointError(f"{fh.name} is truncated: tensor {t.name} needs {t.n_bytes} bytes "
                                  f"at offset {t.offset}")
        raw = np.frombuffer(view, dtype=t.raw_dtype).reshape((n, *t.raw_shape[1:]) if rows > 1 else t.raw_shape)
        block = torch.from_numpy(dequantize(raw, t.qtype))
        if rows > 1:
            dst[i:i + n] = block.reshape(n, *shape[1:])
        else:
            dst.copy_(block.reshape(shape))


def read_gguf_header(path: str | Path) -> tuple[ModelConfig, list[_TensorInfo]]:
    """``(config, tensor table)`` of a GGUF file; the reader (its metadata and memory map) is
    released before returning.

    Raises:
        CheckpointError: not a (readable) GGUF file.
        ValueError: unsupported architecture or rope scaling.
    """
    reader = open_gguf(path)
    config = read_gguf_config(reader)
    table = _tensor_table(reader)
    del reader  # no reference cycles: its metadata and memory map go now
    return config, table


def read_gguf_tensors(path: str | Path, table: list[_TensorInfo], dst: dict[str, Tensor],
                      config: ModelConfig) -> None:
    """Fill ``dst[name]`` (any floating dtype) in place with each tensor of ``table``.

    Each tensor is read and dequantised straight into its destination a block of rows at a time
    (one reused byte buffer); the q/k projections (llama.cpp's interleaved RoPE
    layout) go through one temporary to be permuted back to the half layout.
    """
    path = Path(path)
    head_dim, rot = config.dim_per_head, config.rotary_dim
    buf = bytearray()
    with path.open("rb") as fh:
        for t in table:
            out = dst[t.name]
            if t.name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
                tmp = torch.empty(t.shape)
                _read_into(fh, t, tmp, buf)
                out.copy_(convert_rope_layout(tmp, head_dim, "interleaved", "half", rotary_dim=rot))
            else:
                _read_into(fh, t, out, buf)
