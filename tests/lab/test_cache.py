import torch

from formerlab import ModelConfig, TrainConfig
from formerlab.lab.cache import trained_model


def test_cache_key_ignores_bookkeeping_but_not_training(tmp_path):
    mc = ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2)
    tc = TrainConfig(steps=2, batch_size=2, seq_len=8, warmup_steps=1)
    tokens = torch.arange(500) % 32

    def batch_fn(step, rows):
        from formerlab.data import window_batch

        return window_batch(tokens, 2, 8, seed=0, step=step, rows=rows), None

    kw = dict(corpus_id="toy", cache_dir=tmp_path, device=torch.device("cpu"), progress=False,
              log=lambda m: None)
    _, first = trained_model(mc, tc, batch_fn, **kw)
    _, again = trained_model(mc, tc.replace(log_every=1, checkpoint_every=1), batch_fn, **kw)
    assert first["cached"] is False and again["cached"] is True
    assert again["cache_key"] == first["cache_key"]
    _, other = trained_model(mc, tc.replace(lr=1e-4), batch_fn, **kw)
    assert other["cached"] is False and other["cache_key"] != first["cache_key"]
