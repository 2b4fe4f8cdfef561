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


@pytest.fixture
def torchrun_worker(tmp_path):
    """``run(worker)``: launch ``worker`` (a script beside the test) under torchrun with 2 gloo
    processes, one thread each; returns ``(what rank 0 saved with torch.save, the worker module
    imported in this process)`` so the test can compute the one-process oracle."""
    import importlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    def run(worker: Path):
        out = tmp_path / "rank0.pt"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(worker), str(out)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        sys.path.insert(0, str(worker.parent))
        try:
            module = importlib.import_module(worker.stem)
        finally:
            sys.path.pop(0)
        return torch.load(out, weights_only=True), module

    return run
