"""Every ```python block of the README and of the docs pages runs as written, each on its own
(a fresh namespace, in an empty working directory). Blocks that are not meant to run use another
fence (```text, ```bash)."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def hooks():
    """The mkdocs hooks module (``docs/_hooks.py``), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_docs_hooks", ROOT / "docs" / "_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_numbers_are_the_stored_ones(hooks):
    """The README's measured parts equal what ``python docs/_hooks.py readme`` writes from the
    stored result files (the headline lab table, the fresh-clone times)."""
    for name, make in hooks.README_PARTS.items():
        assert hooks.readme_part(name) == make().strip(), (
            f"README part {name!r} differs from the stored results: run "
            "`python docs/_hooks.py readme`")


def test_architecture_page_lists_every_registry():
    """Every public registry of the package has its row in the architecture page's table."""
    import importlib
    import pkgutil

    import formerlab
    from formerlab.registry import Registry

    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for info in pkgutil.walk_packages(formerlab.__path__, "formerlab."):
        if info.name.startswith(("formerlab.lab.experiments.", "formerlab.__main__")):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, Registry) and not name.startswith("_") and (
                    f"| `{name}` |" not in page):
                missing.append(f"{info.name}.{name}")
    assert not missing, f"registries missing from docs/architecture.md: {sorted(set(missing))}"


def test_every_quoted_measurement_is_in_the_stored_results(hooks):
    """``<!-- value: NAME keys -->`` markers resolve to a number of the stored benchmark files,
    and the family pages quote their ratios through them."""
    found = 0
    for page in sorted((ROOT / "docs").glob("*.md")):
        for m in hooks.VALUE.finditer(page.read_text()):
            float(hooks.stored_value(*m.groups()).rstrip("%"))
            found += 1
    assert found >= 25
    with pytest.raises(KeyError, match="has no 'decode.99.time_ratio'"):
        hooks.stored_value("bench_rerope", "decode.99.time_ratio")
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_vq.json").read_text())
    assert hooks.stored_value("bench_vq", "config.block_lens.1", "d") == str(
        data["config"]["block_lens"][1])


def test_lab_marker_reads_the_named_preset(hooks):
    out = hooks.on_page_markdown("<!-- generated: lab extrapolation quick -->")
    assert "benchmarks/results/lab/extrapolation-quick/results.json" in out
    assert out == hooks.on_page_markdown("<!-- generated: lab extrapolation -->")  # quick by default
    missing = hooks.on_page_markdown("<!-- generated: lab extrapolation no-such-preset -->")
    assert "--preset no-such-preset" in missing
