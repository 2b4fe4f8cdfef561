"""generate on formerlab models: greedy against a full-forward argmax loop, cached equals uncached
for every mixer and position method, ragged left-padded batches equal their rows alone, stopping,
seeding (and the untouched global RNG), streaming, outputs, and the errors users meet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from formerlab import ModelConfig
from formerlab.generate import GenerateOutput, LogitsFilter, TextStreamer, generate, sequence_limit
from formerlab.models import MIXERS, CausalLM

BASE = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64)


def _mixer_cases() -> dict[str, dict]:
    """The per-mixer model cases of tests/models/test_mixers.py (which must cover every
    registered mixer), so a new mixer is decoded here as soon as it has its case there."""
    path = Path(__file__).resolve().parents[1] / "models" / "test_mixers.py"
    spec = importlib.util.spec_from_file_location("_formerlab_mixer_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.CASES)


CASES = _mixer_cases()
METHODS = [
    {"relpos": {"name": "rerope", "window": 4}},
    {"relpos": {"name": "leaky", "window": 4, "factor": 4.0}},
    {"rope_type": "ntk_old", "rope_params": {"factor": 2.0}},
    {"rope_type": "dynamic", "rope_params": {"factor": 2.0}},
    {"logn": "dagger", "train_len": 6},
    {"rope_type": "linear", "rope_params": {"factor": 2.0}},
    {"rope_type": "ntk_mixed", "rope_params": {"factor": 2.0}},
    {"rope_type": "yarn", "rope_params": {"factor": 2.0, "original_max_position_embeddings": 8}},
    {"rope_type": "llama3", "rope_params": {"factor": 2.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8}},
]


def test_every_registered_mixer_has_a_case():
    assert set(MIXERS) <= set(CASES), f"mixers without a generate case: {set(MIXERS) - set(CASES)}"


def _model(name="mha", seed=0, **extra) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(ModelConfig(**{**BASE, **CASES[name], **extra})).double().eval()
    with torch.no_grad():  # peaked distributions: greedy ties are impossible, eos gets chosen
        model.lm_head.weight.mul_(40.0)
    return model


def _ids(b=3, n=6, seed=0):
    return torch.randint(3, 61, (b, n), generator=torch.Generator().manual_seed(seed))


def _padded(rows, pad=0):
    n = max(r.numel() for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - r.numel():], mask[i, n - r.numel():] = r, 1
    return ids, mask


def _argmax_loop(model, ids, steps):
    """The oracle: re-run the whole sequence and take the argmax, step after step."""
    for _ in range(steps):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


@pytest.mark.parametrize("name", sorted(CASES))
def test_greedy_equals_the_full_forward_argmax_loop(name):
    model = _model(name)
    ids = _ids()
    with torch.no_grad():
        ref = _argmax_loop(model, ids, 8)
    assert torch.equal(model.generate(ids, max_new_tokens=8), ref)
    assert torch.equal(generate(model, ids, max_new_tokens=8, use_cache=False), ref)
    assert torch.equal(generate(model, ids, max_new_tokens=8, num_beams=1), ref)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: repr(m)[:40])
@pytest.mark.parametrize("name", [n for n in sorted(CASES) if MIXERS.get(n).positional])
def test_cached_equals_uncached_under_position_methods(name, method):
    model = _model(name)
    model.set_position_method(**method)
    rows = [_ids(1, n, seed=n)[0] for n in (9, 5, 7)]
    ids, mask = _padded(rows)
    kw = dict(max_new_tokens=7, pad_token_id=0)
    for extra in ({}, {"num_beams": 3}):
        cached = generate(model, ids, mask, **kw, **extra)
        assert torch.equal(cached, generate(model, ids, mask, use_cache=False, **kw, **extra))
    alone = generate(model, ids[:1], max_new_tokens=7)  # the unpadded row: 1-D positions
    assert torch.equal(alone, generate(model, ids[:1], max_new_tokens=7, use_cache=False))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("beams", [1, 3])
def test_ragged_left_padded_batch_equals_each_row_alone(name, beams):
    model = _model(name)
    rows = [_ids(1, n, seed=10 + n)[0] for n in (4, 9, 6)]
    ids, mask = _padded(rows, pad=1)
    kw = dict(max_new_tokens=6, pad_token_id=1, num_beams=beams, repetition_penalty=1.3)
    cont = generate(model, rows[0][None], **kw)[0, 4:].tolist()
    eos = cont[2]  # row 0 ends early, at the first occurrence of this token
    end = cont.index(eos)
    kw["eos_token_id"] = eos
    batch = generate(model, ids, mask, **kw)
    for i, r in enumerate(rows):
        one = generate(model, r[None], **kw)[0]
        got = batch[i, ids.shape[1] - r.numel():]
        tail = got[one.numel():]
        assert torch.equal(got[:one.numel()], one), i
        assert bool((tail == 1).all())  # finished rows are padded with pad_token_id
    if beams == 1:
        n = ids.shape[1]
        assert int(batch[0, n + end]) == eos and bool((batch[0, n + end + 1:] == 1).all())


def test_stops_at_any_eos_and_at_max_new_tokens():
    model = _model()
    ids = _ids(2)
    free = generate(model, ids, max_new_tokens=10)
    first, second = int(free[0, 6 + 2]), int(free[1, 6 + 4])
    out = generate(model, ids, max_new_tokens=10, eos_token_id=[first, second], pad_token_id=0)
    ends = [int((row[6:] == first).logical_or(row[6:] == second).nonzero()[0]) for row in out]
    assert out.shape[1] == 6 + max(ends) + 1  # stops when the last row has ended
    for row, e in zip(out, ends):
        assert bool((row[6 + e + 1:] == 0).all())
    assert generate(model, ids, max_new_tokens=4).shape == (2, 10)
    assert generate(model, ids, max_length=9).shape == (2, 9)
    assert torch.equal(generate(model, ids, max_new_tokens=0), ids)
    assert generate(model, ids).shape == (2, 26)  # transformers' default: 20 new tokens


def test_min_new_tokens_delays_eos():
    model = _model()
    ids = _ids(1)
    eos = int(generate(model, ids, max_new_tokens=1)[0, -1])
    assert generate(model, ids, max_new_tokens=5, eos_token_id=eos).shape[1] == 7
    out = generate(model, ids, max_new_tokens=5, eos_token_id=eos, min_new_tokens=3)
    assert eos not in out[0, 6:9].tolist()


def test_sampling_is_seeded_and_never_touches_the_global_rng():
    model = _model()
    model.lm_head.weight.data.div_(40.0)  # a flat distribution: samples differ
    ids = _ids(2)
    kw = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=30, top_p=0.95)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(model, ids, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, ids, generator=torch.Generator().manual_seed(7), **kw)
    c = generate(model, ids, generator=torch.Generator().manual_seed(8), **kw)
    unseeded = [generate(model, ids, **kw) for _ in range(2)]
    beams = generate(model, ids, num_beams=2, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was never drawn from
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(*unseeded)
    assert beams.shape[0] == 2


def test_low_temperature_sampling_is_greedy():
    model = _model()
    ids = _ids()
    greedy = generate(model, ids, max_new_tokens=8)
    cold = generate(model, ids, max_new_tokens=8, do_sample=True, temperature=1e-4,
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    assert torch.equal(generate(model, ids, max_new_tokens=8, do_sample=True, top_k=1), greedy)


def test_num_return_sequences():
    model = _model()
    ids = _ids(2)
    beams = generate(model, ids, max_new_tokens=5, num_beams=4, num_return_sequences=3,
                     return_dict_in_generate=True, output_scores=True)
    assert beams.sequences.shape[0] == 6 and beams.sequences_scores.shape == (6,)
    assert bool((beams.sequences_scores.view(2, 3).diff(dim=-1) <= 0).all())  # best first
    samples = generate(model, ids, max_new_tokens=5, do_sample=True, num_return_sequences=3,
                       generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, 11) and torch.equal(samples[:3, :6], ids[[0, 0, 0]])


def test_streaming_put_end_and_callable():
    model = _model()
    ids = _ids(2)
    events = []

    class Recorder:
        def put(self, value):
            events.append(("put", value.clone()))

        def end(self):
            events.append(("end", None))

    out = generate(model, ids, max_new_tokens=5, streamer=Recorder())
    assert torch.equal(events[0][1], ids) and events[-1][0] == "end"
    assert torch.equal(torch.stack([v for _, v in events[1:-1]], 1), out[:, 6:])
    steps = []
    generate(model, ids, max_new_tokens=5, streamer=steps.append)
    assert torch.equal(torch.stack(steps, 1), out[:, 6:])


class _ByteTokenizer:
    """Token ids are bytes: a multi-byte character spans several tokens."""

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_streamer_prints_whole_characters():
    pieces = []
    streamer = TextStreamer(_ByteTokenizer(), skip_prompt=True, callback=pieces.append)
    text = "naïve 東京\nok"
    data = list(text.encode())
    streamer.put(torch.tensor([data[:2]]))  # the prompt, skipped
    for b in data[2:]:
        streamer.put(torch.tensor([b]))
    streamer.end()
    assert "".join(pieces) == text[2:]
    assert all("\ufffd" not in p for p in pieces)
    with pytest.raises(ValueError, match="batch of one"):
        TextStreamer(_ByteTokenizer()).put(torch.zeros(2, 3, dtype=torch.long))


def test_transformers_processors_plug_in():
    hf = pytest.importorskip("transformers.generation.logits_process")
    model = _model()
    ids = _ids()
    ban = int(generate(model, ids, max_new_tokens=1)[0, -1])
    theirs = hf.LogitsProcessorList([hf.SuppressTokensLogitsProcessor([ban])])
    out = generate(model, ids, max_new_tokens=1, logits_processor=theirs)
    assert int(out[0, -1]) != ban
    ours = generate(model, ids, max_new_tokens=3, logits_processor=LogitsFilter("top_k", top_k=1))
    assert torch.equal(ours, generate(model, ids, max_new_tokens=3))


def test_dict_output_scores_logits_and_cache():
    model = _model()
    ids = _ids(2)
    out = generate(model, ids, max_new_tokens=4, return_dict_in_generate=True, output_scores=True,
                   output_logits=True, repetition_penalty=2.0)
    assert isinstance(out, GenerateOutput) and out.sequences.shape == (2, 10)
    assert len(out.scores) == len(out.logits) == 4 and out.scores[0].shape == (2, 61)
    assert torch.equal(out.sequences[:, 6:], torch.stack([s.argmax(-1) for s in out.scores], 1))
    assert not torch.equal(out.scores[1], out.logits[1])  # the penalty acted
    assert out.past_key_values.length == 9  # every token but the last one went through the model
    assert "sequences" in out.keys()


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": -1}, "max_new_tokens must be an int >= 0, got -1"),
    ({"top_p": 0.0}, "top_p must lie in \\(0, 1\\], got top_p=0.0"),
    ({"top_p": 1.2, "do_sample": True}, "top_p must lie in \\(0, 1\\], got top_p=1.2"),
    ({"temperature": 0.0, "do_sample": True}, "temperature must be > 0 .*temperature=0.0"),
    ({"temperature": -1, "do_sample": True}, "temperature=-1"),
    ({"num_beams": 0}, "num_beams must be an int >= 1, got 0"),
    ({"top_k": -2}, "top_k must be an int >= 0, got -2"),
    ({"min_p": 2.0}, "min_p must lie in \\[0, 1\\], got min_p=2.0"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ({"num_return_sequences": 2}, "num_return_sequences=2 needs do_sample=True"),
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences=3 exceeds num_beams=2"),
    ({"early_stopping": "sometimes"}, "early_stopping must be True, False or 'never'"),
    ({"eos_token_id": 99}, "eos_token_id must be token ids in \\[0, 61\\), got 99"),
    ({"num_beams": 2, "streamer": print}, "streamer cannot be used with beam search"),
    ({"max_new_tokens": 3, "max_length": 9}, "give max_new_tokens or max_length, not both"),
    ({"do_sample": True, "top_k": 3, "consistent": True}, "consistent=True .* give eos_token_id"),
    ({"self_terminating": 0.01}, "self_terminating=0.01 needs eos_token_id"),
])
def test_bad_arguments_are_named(kwargs, match):
    model = _model()
    with pytest.raises(ValueError, match=match):
        generate(model, _ids(), **kwargs)


def test_bad_prompts_are_named():
    model = _model()
    ids, mask = _padded([_ids(1, 3)[0], _ids(1, 5)[0]])
    with pytest.raises(ValueError, match="prompt is padded .* pad_token_id is None"):
        generate(model, ids, mask)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask.flip(-1), pad_token_id=0)
    with pytest.raises(ValueError, match="input_ids must be \\(batch, seq\\)"):
        generate(model, ids[0])
    with pytest.raises(TypeError, match="integer token ids"):
        generate(model, ids.float())
    with pytest.raises(ValueError, match="outside|must lie in \\[0, 61\\)"):
        generate(model, ids + 100)
    with pytest.raises(TypeError, match="logits_processor entries must be callables"):
        generate(model, ids[:1], logits_processor=[3])
    with pytest.raises(TypeError, match="streamer must have put"):
        generate(model, ids[:1], streamer=3)


def test_prompts_beyond_learned_positions_or_synthesizer_matrices():
    learned = CausalLM(ModelConfig(**{**BASE, "position": "learned", "max_position_embeddings": 12}))
    assert sequence_limit(learned)[0] == 12
    with pytest.raises(ValueError, match="input_ids has 13 tokens but learned position embeddings "
                                         "cover 12 positions"):
        generate(learned, _ids(1, 13))
    with pytest.raises(ValueError, match="max_new_tokens=5 after a prompt of 10 tokens exceeds the "
                                         "12 positions.*max_new_tokens <= 2"):
        generate(learned, _ids(1, 10), max_new_tokens=5)
    # positions count real tokens: a padded row of 8 tokens still has room for 4
    ids, mask = _padded([_ids(1, 8)[0], _ids(1, 10)[0][:10]])
    with pytest.raises(ValueError, match="prompt of 10 tokens"):
        generate(learned, ids, mask, pad_token_id=0, max_new_tokens=3)
    assert generate(learned, ids[:1, 2:], max_new_tokens=4).shape == (1, 12)
    synth = _model("synthesizer", max_position_embeddings=10)
    with pytest.raises(ValueError, match="synthesizer's matrices cover max_len=10"):
        generate(synth, _ids(1, 8), max_new_tokens=3)
    rope = _model()  # RoPE: no limit (extrapolation is the caller's choice)
    assert sequence_limit(rope) is None
    assert generate(rope, _ids(1, 60), max_new_tokens=10).shape == (1, 70)


def test_logits_to_keep_is_the_last_positions_of_the_full_logits():
    model = _model()
    ids = _ids(2, 7)
    with torch.no_grad():
        full = model(ids).logits
        close = dict(rtol=1e-12, atol=1e-12)  # the head's matmul on fewer rows: last-bit rounding
        torch.testing.assert_close(model(ids, logits_to_keep=1).logits, full[:, -1:], **close)
        torch.testing.assert_close(model(ids, logits_to_keep=3).logits, full[:, -3:], **close)
        assert torch.equal(model(ids, logits_to_keep=0).logits, full)
    with pytest.raises(ValueError, match="logits_to_keep must be an int >= 0"):
        model(ids, logits_to_keep=-1)
    with pytest.raises(ValueError, match="labels need the logits of every position"):
        model(ids, labels=ids, logits_to_keep=1)


def test_beam_search_with_one_beam_is_greedy():
    from formerlab.generate import LogitsProcessorList, ModelRunner, beam_search

    model = _model("gau")
    ids = _ids()
    one = beam_search(ModelRunner(model), ids, None, num_beams=1, max_new_tokens=8,
                      chain=LogitsProcessorList())
    assert torch.equal(one.sequences, generate(model, ids, max_new_tokens=8))


@pytest.mark.parametrize("kind", ["alibi", "sinusoidal", "learned", "nope"])
def test_cached_equals_uncached_for_every_position_kind(kind):
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**BASE, position={"kind": kind})).double().eval()
    rows = [_ids(1, n, seed=n)[0] for n in (9, 5, 7)]
    ids, mask = _padded(rows)
    for extra in ({}, {"num_beams": 3}):
        kw = dict(max_new_tokens=7, pad_token_id=0, **extra)
        cached = generate(model, ids, mask, **kw)
        assert torch.equal(cached, generate(model, ids, mask, use_cache=False, **kw))
    assert torch.equal(generate(model, ids[:1], max_new_tokens=7),
                       _argmax_loop(model, ids[:1], 7))


def test_a_user_registered_filter_is_applied_by_name():
    from formerlab.generate import LOGITS_FILTERS, register_logits_filter

    @register_logits_filter("ban_token")
    def ban_token(input_ids, scores, *, token: int):
        return scores.index_fill(-1, torch.tensor([token]), float("-inf"))

    try:
        model = _model("mha")
        ids = _ids(2, 5)
        greedy = generate(model, ids, max_new_tokens=6)
        banned = int(greedy[0, 5])
        out = generate(model, ids, max_new_tokens=6,
                       logits_processor=[LogitsFilter("ban_token", token=banned)])
        assert banned not in out[0, 5:].tolist() and not torch.equal(out, greedy)
    finally:
        LOGITS_FILTERS.remove("ban_token")
    assert "ban_token" not in LOGITS_FILTERS
