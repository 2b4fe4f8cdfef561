"""The quantizer registry: every entry has its own test module and builds by name; the package
stays a low layer (torch, numpy and formerlab.registry/config/nn only)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

import formerlab.quantize as quantize
from formerlab.quantize import QUANTIZERS, build_quantizer

HERE = Path(__file__).parent
TESTED = {"vq": ("test_vq.py", {"num_codes": 8, "dim": 4}),
          "fsq": ("test_fsq.py", {"levels": [5, 4, 3, 3]})}


def test_every_registered_quantizer_is_covered():
    assert set(QUANTIZERS) == set(TESTED)
    for module, _ in TESTED.values():
        assert (HERE / module).is_file()


@pytest.mark.parametrize("name", sorted(TESTED))
def test_build_by_name_and_usage_stats(name):
    q = build_quantizer(name, **TESTED[name][1])
    out = q(torch.randn(2, 6, 4))
    assert out.quantized.shape == (2, 6, 4) and out.indices.shape == (2, 6)
    stats = q.usage_stats()
    assert stats["total"] == 12 and isinstance(stats["perplexity"], float)
    with pytest.raises(ValueError, match="vq"):
        build_quantizer("rvq")


def test_quantize_is_a_low_layer():
    allowed_rel = {"registry", "config", "nn", "common", "fsq", "vq"}
    stdlib = set(sys.stdlib_module_names)
    for path in Path(quantize.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                head = (node.module or "").split(".")[0]
                assert head in allowed_rel, f"{path.name} imports ..{node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for n in names:
                    top = n.split(".")[0]
                    assert top in {"torch", "numpy", "__future__"} or top in stdlib, (path.name, n)
