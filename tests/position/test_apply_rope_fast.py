"""apply_rope's in-place half-layout path equals the textbook formula and has exact gradients."""

import torch

from formerlab.position import apply_rope, rope_cos_sin, rope_frequencies


def textbook(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def test_matches_textbook_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    inv_freq, _ = rope_frequencies(8, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(5) * 1.5, inv_freq)
    torch.testing.assert_close(apply_rope(x, cos, sin), textbook(x, cos, sin), rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))
    # partial rotary: the pass-through channels keep their gradient of 1
    y = apply_rope(x, cos[..., :4], sin[..., :4], rotary_dim=4)
    y[..., 4:].sum().backward()
    assert torch.equal(x.grad[..., 4:], torch.ones_like(x.grad[..., 4:]))
    assert torch.equal(x.grad[..., :4], torch.zeros_like(x.grad[..., :4]))
