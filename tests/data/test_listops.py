"""ListOps: LRA's semantics on hand-built trees, every generated label against an independent
stack evaluator of the token string, depth / argument / length limits, determinism, batching."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from formerlab.data.listops import (
    CLS_ID,
    LISTOPS_VOCAB,
    PAD_ID,
    generate_tree,
    listops_dataset,
    tree_tokens,
    tree_value,
)


def evaluate_tokens(tokens: list[str]) -> tuple[int, int, int]:
    """Brute-force evaluation of a token string with an explicit stack, written from the task's
    definition: returns ``(value, operator nesting depth, largest argument count)``."""
    stack: list[tuple[str, list[int]]] = []
    depth = widest = 0
    result = None
    for t in tokens:
        if t.startswith("["):
            stack.append((t[1:], []))
            depth = max(depth, len(stack))
        elif t == "]":
            op, args = stack.pop()
            widest = max(widest, len(args))
            if op == "MIN":
                v = min(args)
            elif op == "MAX":
                v = max(args)
            elif op == "SM":
                v = sum(args) % 10
            else:  # MED: the mean of the middle pair, truncated, for an even count
                v = int(statistics.median(args))
            if stack:
                stack[-1][1].append(v)
            else:
                result = v
        else:
            if stack:
                stack[-1][1].append(int(t))
            else:
                result = int(t)
    assert not stack
    return result, depth, widest


@pytest.mark.parametrize("tree, value", [
    (("MIN", [4, 7, 2]), 2),
    (("MAX", [4, 7, 2]), 7),
    (("SM", [9, 9, 3]), 1),
    (("MED", [1, 9, 3]), 3),
    (("MED", [4, 1, 2, 3]), 2),        # even count: (2 + 3) / 2 = 2.5 → 2
    (("MED", [9, 8]), 8),              # (8 + 9) / 2 = 8.5 → 8
    (("MED", [0, 0, 9, 9]), 4),        # 4.5 → 4
    (("MAX", [4, 3, ("MIN", [2, 3]), 1, 0, ("MED", [1, 5, 8, 9, 2])]), 5),
    (("SM", [("SM", [9, 8]), ("MAX", [1, ("MIN", [6, 7])]), 5]), 8),
    (7, 7),
])
def test_hand_built_trees_follow_lra_semantics(tree, value):
    assert tree_value(tree) == value
    assert evaluate_tokens(tree_tokens(tree))[0] == value


def test_token_form_and_length():
    tree = ("MAX", [4, ("MIN", [2, 3]), 1])
    assert tree_tokens(tree) == ["[MAX", "4", "[MIN", "2", "3", "]", "1", "]"]
    rng = random.Random(3)
    for _ in range(200):  # the generator's length counts 2 per operator and 1 per digit
        t, length = generate_tree(rng, 5, 4)
        assert length == len(tree_tokens(t))


def test_generated_labels_equal_the_brute_force_evaluator():
    data = listops_dataset(400, max_depth=5, max_args=6, min_len=10, max_len=80, seed=1)
    assert len(data) == 400 and data.num_labels == 10 and len(data.vocab) == 18
    seen = set()
    depths = []
    for ids, mask, label in zip(data.input_ids, data.attention_mask, data.labels):
        row = ids[mask.bool()].tolist()
        assert row[0] == CLS_ID and PAD_ID not in row
        toks = [LISTOPS_VOCAB[i] for i in row[1:]]
        value, depth, widest = evaluate_tokens(toks)
        assert value == int(label)
        assert 10 < len(toks) < 80 and depth <= 4 and 2 <= widest <= 6  # root at depth 1
        depths.append(depth)
        seen.add(tuple(toks))
    assert len(seen) == 400  # de-duplicated
    assert max(depths) == 4  # the depth limit is reached, not just respected
    assert data.attention_mask[:, -1].any() and not data.attention_mask.sum(-1).eq(0).any()


def test_determinism_splits_and_batches():
    a = listops_dataset(120, 4, 5, 8, 40, seed=7)
    b = listops_dataset(120, 4, 5, 8, 40, seed=7)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(listops_dataset(120, 4, 5, 8, 40, seed=8).labels, a.labels)
    train, test = a.split(100, 20)
    assert len(train) == 100 and len(test) == 20
    rows = {tuple(r[m.bool()].tolist()) for r, m in zip(train.input_ids, train.attention_mask)}
    assert not rows & {tuple(r[m.bool()].tolist()) for r, m in zip(test.input_ids,
                                                                    test.attention_mask)}
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    batches = list(train.batches(32, 5, g1))
    assert all(torch.equal(x["input_ids"], y["input_ids"])
               for x, y in zip(batches, train.batches(32, 5, g2)))
    assert [x["labels"].shape[0] for x in batches] == [32] * 5
    x = batches[0]
    assert x["input_ids"].shape[1] == int(x["attention_mask"].sum(-1).max())  # trimmed
    counts = torch.bincount(a.labels, minlength=10)
    assert a.majority_accuracy() == float(counts.max()) / 120


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="max_len must exceed min_len"):
        listops_dataset(5, min_len=50, max_len=40)
    with pytest.raises(ValueError, match="max_args must be an int >= 2"):
        listops_dataset(5, max_args=1)
    with pytest.raises(ValueError, match="found only 0 of 3 expressions"):
        listops_dataset(3, max_depth=2, max_args=2, min_len=10, max_len=20, max_tries=500)
    with pytest.raises(ValueError, match="split sizes"):
        listops_dataset(10, 4, 5, 8, 40).split(8, 5)
