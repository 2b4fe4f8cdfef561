"""Every ```python block of docs/diffusion.md runs on its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "diffusion.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_found_the_examples():
    assert len(BLOCKS) >= 3


# blocks that fit many models or compile the transport kernels take a few seconds
SLOW = ("sklearn", "transport_topk", "ddim_sample")


@pytest.mark.parametrize("index", [
    pytest.param(i, marks=pytest.mark.slow) if any(w in b for w in SLOW) else i
    for i, b in enumerate(BLOCKS)
])
def test_docs_block_runs(index, capsys):
    if "sklearn" in BLOCKS[index]:
        pytest.importorskip("sklearn")
    exec(compile(BLOCKS[index], f"{PAGE}:block{index}", "exec"), {})
