"""The "can't stop" problem (kexue.fm/archives/7500, arXiv 2002.02492): the self-terminating
parameterisation against the paper's recursion, its bounds (greedy within ⌈ln ½/ln(1−ε)⌉ steps,
the expected length of sampling), the bounded-state floor on p(eos), and consistent sampling
terminating where plain top-k does not."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from formerlab import ModelConfig
from formerlab.generate import (
    SelfTerminatingHead,
    SelfTerminatingLogits,
    eos_probability_floor,
    expected_length_bound,
    generate,
    greedy_termination_bound,
    non_termination_ratio,
    sample,
    self_terminating_log_probs,
)
from formerlab.models import CausalLM

F64 = torch.float64
EOS = 2


def _paper_recursion(logits, eos, eps):
    """The paper's decoder, step by step in probability space: α_t = σ̂(u_eos,t)·(1 − p_eos,t−1),
    p_eos,t = 1 − α_t, p(v) = α_t·softmax_{V∖eos}(u)_v."""
    b, n, v = logits.shape
    probs = torch.empty(b, n, v, dtype=F64)
    p_prev = torch.zeros(b, dtype=F64)
    others = [i for i in range(v) if i != eos]
    for t in range(n):
        alpha = (1 - eps) * torch.sigmoid(logits[:, t, eos]) * (1 - p_prev)
        probs[:, t, others] = alpha[:, None] * torch.softmax(logits[:, t, others], -1)
        probs[:, t, eos] = 1 - alpha
        p_prev = 1 - alpha
    return probs


def test_self_terminating_probabilities_follow_the_paper():
    logits = 3 * torch.randn(3, 40, 11, generator=torch.Generator().manual_seed(0), dtype=F64)
    for eps in (1e-3, 0.05):
        lp, cum = self_terminating_log_probs(logits, EOS, eps)
        p = lp.exp()
        torch.testing.assert_close(p, _paper_recursion(logits, EOS, eps), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(p.sum(-1), torch.ones(3, 40, dtype=F64), rtol=0, atol=1e-13)
        p_eos = p[..., EOS]
        assert bool((p_eos[:, 1:] >= p_eos[:, :-1]).all())  # non-decreasing in t
        t = torch.arange(40, dtype=F64)
        assert bool((p_eos >= 1 - (1 - eps) ** (t + 1) - 1e-15).all())
        torch.testing.assert_close(cum.exp(), 1 - p_eos[:, -1], rtol=1e-9, atol=1e-15)


def test_incremental_equals_full_sequence_and_padding_adds_nothing():
    logits = 2 * torch.randn(2, 12, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
    full, _ = self_terminating_log_probs(logits, EOS, 0.01)
    past, steps = None, []
    for t in range(12):  # one position at a time, carrying Σ log β
        lp, past = self_terminating_log_probs(logits[:, t], EOS, 0.01, past_log_beta=past)
        steps.append(lp)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-12, atol=1e-12)
    padded = torch.cat([torch.randn(2, 3, 9, dtype=F64), logits], 1)
    mask = torch.cat([torch.zeros(2, 3), torch.ones(2, 12)], 1).long()
    lp, _ = self_terminating_log_probs(padded, EOS, 0.01, attention_mask=mask)
    torch.testing.assert_close(lp[:, 3:], full, rtol=1e-12, atol=1e-12)


def test_self_terminating_head_modes_and_gradients():
    torch.manual_seed(0)
    head = SelfTerminatingHead(16, 10, eos_id=EOS, eps=0.01).double()
    h = torch.randn(2, 7, 16, dtype=F64, requires_grad=True)
    out = head(h)
    assert out.log_probs.shape == (2, 7, 10)
    first = head(h[:, :4])
    rest = head(h[:, 4:], past_log_beta=first.log_beta_sum)
    torch.testing.assert_close(torch.cat([first.log_probs, rest.log_probs], 1), out.log_probs)
    step = head(h[:, 4], past_log_beta=first.log_beta_sum)  # (B, hidden): one step
    torch.testing.assert_close(step.log_probs, out.log_probs[:, 4])
    loss = -out.log_probs[..., 3].sum()
    loss.backward()
    assert head.proj.bias.grad is not None and bool(torch.isfinite(h.grad).all())
    with pytest.raises(ValueError, match="eps .* must lie in \\(0, 1\\), got 1.5"):
        SelfTerminatingHead(16, 10, eos_id=EOS, eps=1.5)
    with pytest.raises(ValueError, match="eos_token_id must be a token id in \\[0, 10\\)"):
        SelfTerminatingHead(16, 10, eos_id=12)


def test_greedy_bound_values():
    assert math.log(0.5) / math.log(1 - 1e-3) == pytest.approx(692.8, abs=0.05)
    assert greedy_termination_bound(1e-3) == 693
    assert greedy_termination_bound(1e-2) == 69


class BiasedLM(CausalLM):
    """A CausalLM whose output layer has a bias: the eos bias sets β regardless of the state."""

    def build_heads(self):
        c = self.config
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=True)


def _biased(eos_bias, *, vocab=12, hidden=16, weight_std=None, dominant=None, seed=0):
    torch.manual_seed(seed)
    model = BiasedLM(ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=1, num_heads=2,
                                 tie_word_embeddings=False)).double().eval()
    with torch.no_grad():
        if weight_std is not None:
            model.lm_head.weight.normal_(0.0, weight_std)
        model.lm_head.bias.zero_()
        model.lm_head.bias[EOS] = eos_bias
        if dominant is not None:  # one other token always wins the non-eos softmax
            model.lm_head.bias[dominant] = 60.0
    return model


PROMPT = torch.tensor([[5]])  # one token: the first new token is step t = 0


@pytest.mark.parametrize("eps", [0.01, 0.05])
def test_self_terminating_greedy_and_beam_stop_within_the_bound(eps):
    bound = greedy_termination_bound(eps)
    # worst case: β = 1 − ε at every step and one token beating eos until p_eos > ½
    worst = _biased(60.0, dominant=7)
    out = generate(worst, PROMPT, max_new_tokens=bound + 10, eos_token_id=EOS, self_terminating=eps)
    assert out.shape[1] - 1 == bound and int(out[0, -1]) == EOS  # tight: exactly the bound
    for seed in range(3):  # random ST-LMs: never later than the bound, greedy or beam
        model = _biased(float(3 * seed), seed=seed)
        for beams in (1, 3):
            out = generate(model, PROMPT, max_new_tokens=bound + 10, eos_token_id=EOS,
                           self_terminating=eps, num_beams=beams)
            assert out.shape[1] - 1 <= bound and int(out[0, -1]) == EOS
    # a plain LM whose eos logit is hugely negative never stops; as an ST-LM it stops at once
    never = _biased(-60.0)
    for kw in ({}, {"num_beams": 3}, {"do_sample": True, "top_k": 3}):
        out = generate(never, PROMPT, max_new_tokens=bound + 10, eos_token_id=EOS,
                       generator=torch.Generator().manual_seed(0), **kw)
        assert out.shape[1] - 1 == bound + 10 and EOS not in out[0].tolist()
    assert generate(never, PROMPT, max_new_tokens=50, eos_token_id=EOS,
                    self_terminating=eps).tolist() == [[5, EOS]]


def test_sampling_length_meets_the_expected_length_bound():
    eps = 0.05
    model = _biased(60.0)  # β = 1 − ε exactly: the bound holds with equality
    rows = 600
    out = generate(model, PROMPT.repeat(rows, 1), max_new_tokens=60, eos_token_id=EOS,
                   pad_token_id=0, do_sample=True, self_terminating=eps,
                   generator=torch.Generator().manual_seed(0))
    lengths = ((out[:, 1:] == EOS).long().argmax(-1) + 1).double()
    assert bool((out[:, 1:] == EOS).any(-1).all())
    # P(L > T) = (1 − ε)^{T(T+1)/2}: mean and spread of that law
    surv = [(1 - eps) ** (t * (t + 1) / 2) for t in range(200)]
    mean = expected_length_bound(eps)
    assert mean == pytest.approx(sum(surv), rel=1e-9)
    var = sum((2 * t + 1) * s for t, s in enumerate(surv)) - mean**2
    assert abs(float(lengths.mean()) - mean) < 4 * math.sqrt(var / rows)
    random = _biased(0.0, seed=3)  # any ST-LM: at most the bound
    lengths = ((generate(random, PROMPT.repeat(rows, 1), max_new_tokens=60, eos_token_id=EOS,
                         pad_token_id=0, do_sample=True, self_terminating=eps,
                         generator=torch.Generator().manual_seed(1))[:, 1:] == EOS)
               .long().argmax(-1) + 1).double()
    assert float(lengths.mean()) < mean


def test_decoded_scores_equal_the_full_sequence_parameterisation():
    model = _biased(1.0, seed=5)
    ids = torch.tensor([[1, 1, 4, 6, 8], [3, 9, 4, 6, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = generate(model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=1,
                   self_terminating=0.1, return_dict_in_generate=True, output_scores=True)
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(2, seq.shape[1] - 5, dtype=torch.long)], 1)
    with torch.no_grad():
        logits = model(seq, attention_mask=full_mask).logits
    ref, _ = self_terminating_log_probs(logits, EOS, 0.1, attention_mask=full_mask)
    for t, step in enumerate(out.scores):  # includes the prompt's β, skips the padding
        live = seq[:, 5 + t - 1] != EOS if t else torch.ones(2, dtype=torch.bool)
        torch.testing.assert_close(step[live], ref[live, 4 + t], rtol=1e-9, atol=1e-9)


def test_state_follows_reorder_and_dropped_rows():
    st = SelfTerminatingLogits(EOS, 0.1, include_prompt=False)
    s = torch.randn(3, 6, dtype=F64)
    st(None, s)
    before = st.log_beta.clone()
    st.reorder(torch.tensor([2, 2, 0]))
    assert torch.equal(st.log_beta, before[[2, 2, 0]])
    st.batch_select(torch.tensor([True, False, True]))
    assert torch.equal(st.log_beta, before[[2, 0]])
    st.batch_repeat_interleave(2)
    assert torch.equal(st.log_beta, before[[2, 2, 0, 0]])
    assert st.p_eos().shape == (4,)


def test_bounded_states_give_an_eos_floor_and_consistent_sampling_stops():
    model = _biased(-4.0, vocab=8, hidden=8, weight_std=0.1, seed=2)
    g = model.norm.weight.detach().abs().max()
    radius = float(math.sqrt(8) * g)  # RMSNorm output: ‖h‖ ≤ √d · max|gain|
    delta = eos_probability_floor(model.lm_head.weight, EOS, radius, model.lm_head.bias)
    assert 0 < delta < 0.05
    rows, cap = 100, 200
    prompt = torch.randint(3, 8, (rows, 3), generator=torch.Generator().manual_seed(0))
    out = generate(model, prompt, max_new_tokens=cap, eos_token_id=EOS, pad_token_id=0,
                   do_sample=True, return_dict_in_generate=True, output_scores=True,
                   generator=torch.Generator().manual_seed(0))
    p_eos = torch.stack([s.softmax(-1)[:, EOS] for s in out.scores])
    assert float(p_eos.min()) >= delta  # at every step of every row
    new = out.sequences[:, 3:]
    lengths = torch.where((new == EOS).any(-1), (new == EOS).long().argmax(-1) + 1, cap)
    assert float(lengths.double().mean()) <= 1 / delta  # E[L] ≤ 1/δ
    # top-2 sampling drops the unlikely eos forever; consistent top-2 keeps it (q ≥ p ≥ δ)
    cap = 120
    kw = dict(max_new_tokens=cap, eos_token_id=EOS, pad_token_id=0, do_sample=True, top_k=2,
              return_dict_in_generate=True, output_scores=True)

    def lengths_of(out):
        new = out.sequences[:, 3:]
        return torch.where((new == EOS).any(-1), (new == EOS).long().argmax(-1) + 1, cap)

    plain = generate(model, prompt[:40], generator=torch.Generator().manual_seed(0), **kw)
    assert non_termination_ratio(lengths_of(plain), cap) == 1.0
    cons = generate(model, prompt[:40], consistent=True,
                    generator=torch.Generator().manual_seed(0), **kw)
    q_eos = torch.stack([s.softmax(-1)[:, EOS] for s in cons.scores])
    assert float(q_eos.min()) >= delta
    assert non_termination_ratio(lengths_of(cons), cap) < 0.5


def test_consistent_sample_keeps_eos_with_its_share():
    logits = torch.tensor([[4.0, 0.0, 1.0, 0.5, -1.0]]).repeat(4000, 1)
    draws = sample(logits, top_k=1, eos_id=4, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 4}
    share = math.exp(-1.0) / (math.exp(4.0) + math.exp(-1.0))
    assert abs(float((draws == 4).double().mean()) - share) < 4 * math.sqrt(share / 4000)
    plain = sample(logits, top_k=1, always_include_eos=False, generator=torch.Generator())
    assert set(plain.tolist()) == {0}
    nucleus = sample(logits[:1], top_p=0.5, eos_id=4, generator=torch.Generator().manual_seed(1))
    assert int(nucleus) in (0, 4)
    with pytest.raises(ValueError, match="always_include_eos=True needs eos_id"):
        sample(logits, top_k=2)
    state = torch.get_rng_state()
    sample(logits, eos_id=4)
    assert torch.equal(state, torch.get_rng_state())


def test_non_termination_ratio():
    assert non_termination_ratio([3, 10, 10, 7], 10) == 0.5
    assert non_termination_ratio(torch.tensor([1, 2]), 1) == 1.0
    with pytest.raises(ValueError, match="non-empty 1-D"):
        non_termination_ratio([], 3)
