"""README examples are tests: the self-contained Python blocks must run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# blocks that run on their own (others show fragments on a user's own tensors or files)
RUNNABLE = [b for b in BLOCKS if "CausalLM(ModelConfig" in b or "UnigramTokenizer.train" in b]


def test_found_the_examples():
    assert len(RUNNABLE) == 2


@pytest.mark.parametrize("block", RUNNABLE, ids=["tour", "tokenizer"])
def test_readme_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tokenizer example saves vocab.json
    exec(compile(block, str(README), "exec"), {})
