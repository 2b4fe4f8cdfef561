"""Shared fixtures: small configs, a tiny corpus folder, an isolated lab cache."""

from __future__ import annotations

import pytest
import torch

from formerlab import ModelConfig


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/formerlab from tests."""
    monkeypatch.setenv("FORMERLAB_CACHE", str(tmp_path_factory.mktemp("formerlab-cache")))


@pytest.fixture
def text_folder(tmp_path):
    """A small corpus folder of generated text files (by-file split needs several files)."""
    root = tmp_path / "corpus"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "class", "self", "import"]
    for i in range(40):
        idx = torch.randint(0, len(words), (400,), generator=g).tolist()
        (root / f"doc{i:02d}.txt").write_text(" ".join(words[j] for j in idx) + "\n")
    return root


@pytest.fixture(autouse=True)
def _single_thread():
    """Run tests single-threaded: the tensors are tiny, and on a shared 2-core machine intra-op
    threads only oversubscribe the CPU (a tiny decode step went from 3 ms to 170 ms under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
