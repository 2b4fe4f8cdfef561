"""The dialogue experiment: the synthetic dialogues follow their rules, the byte tokenizer's
layout, and the micro run trains every loss layout and scores it."""

from __future__ import annotations

import math

import torch

from formerlab.generate.dialog import build_dialogue_lm_example
from formerlab.lab import run_experiment
from formerlab.lab.experiments.dialog import NAMES, THINGS, byte_tokenizer, synthetic_dialogue


def test_bot_turns_follow_from_the_history():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        turns = synthetic_dialogue(g, 4)
        assert len(turns) == 8
        name = thing = None
        for user, bot in zip(turns[::2], turns[1::2]):
            if user.startswith("i am "):
                name = user[5:]
                assert name in NAMES and bot == f"hi {name}"
            elif user.startswith("i like "):
                thing = user[7:]
                assert thing in THINGS and bot == f"{thing} is fun"
            elif user == "who am i":
                assert bot == (name or "no idea")
            elif user == "what do i like":
                assert bot == (thing or "no idea")
            else:
                a, _, b = user.split()
                assert bot == str(int(a) + int(b))
        assert turns[-2] in ("who am i", "what do i like") or "plus" in turns[-2]


def test_byte_tokenizer_layout():
    tok = byte_tokenizer()
    ex = build_dialogue_lm_example(["hi", "yo"], tok)
    assert ex.token_ids == [1, 3 + ord("h"), 3 + ord("i"), 2, 3 + ord("y"), 3 + ord("o"), 2]
    assert tok.decode(ex.token_ids[4:6]) == "yo"


def test_micro_run_trains_and_scores_every_layout(tmp_path):
    data, _ = run_experiment("dialog", preset="micro", out_dir=tmp_path, progress=False)
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"all", "responses", "last"}
    for r in rows.values():
        assert math.isfinite(r["response_nll"]) and math.isfinite(r["last_nll"])
        assert 0.0 <= r["last_accuracy"] <= 1.0
        assert r["response_nll"] < math.log(259) + 1.0  # a trained byte model beats random ids
    assert {c["id"] for c in data["claims"]} == {"one-pass-beats-one-response",
                                                 "no-need-to-mask-users"}
