"""Every ```python block of the README and of the docs pages runs as written, each on its own
(a fresh namespace, in an empty working directory). Blocks that are not meant to run use another
fence (```text, ```bash)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from formerlab.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = [(page, i, code) for page in PAGES
          for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(),
                                              flags=re.S | re.M))]


def test_the_docs_have_examples():
    pages = {p.name for p, _, _ in BLOCKS}
    assert "README.md" in pages and len(pages) >= 4


@pytest.mark.parametrize("page, index, code", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}[{i}]" for p, i, _ in BLOCKS])
def test_block_runs(page, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = _registries()
    module = types.ModuleType("__docs__")  # dataclasses defined in an example need a module
    monkeypatch.setitem(sys.modules, "__docs__", module)
    try:
        exec(compile(code, f"{page.relative_to(ROOT)}[{index}]", "exec"), module.__dict__)
    finally:  # an example that registers a toy mixer or experiment leaves no trace
        for reg, (items, aliases, meta) in saved.items():
            reg._items, reg._aliases, reg._meta = items, aliases, meta


def _registries() -> dict[Registry, tuple[dict, dict, dict]]:
    regs = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("formerlab") and mod is not None:
            for value in vars(mod).values():
                if isinstance(value, Registry):
                    regs[value] = (dict(value._items), dict(value._aliases), dict(value._meta))
    return regs
