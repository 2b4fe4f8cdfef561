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


def test_initial_weights_follow_the_train_seed_not_the_global_rng(tmp_path):
    """A cache key names one model: the global RNG state of the caller does not change it."""
    mc = ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2)
    tc = TrainConfig(steps=1, batch_size=2, seq_len=8, warmup_steps=0, seed=3)
    tokens = torch.arange(500) % 32

    def batch_fn(step, rows):
        from formerlab.data import window_batch

        return window_batch(tokens, 2, 8, seed=tc.seed, step=step, rows=rows), None

    def weights(cache, global_seed, train):
        torch.manual_seed(global_seed)
        model, _ = trained_model(mc, train, batch_fn, corpus_id="toy", cache_dir=tmp_path / cache,
                                 device=torch.device("cpu"), progress=False, log=lambda m: None)
        return model.state_dict()

    a, b = weights("a", 1, tc), weights("b", 2, tc)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = weights("c", 1, tc.replace(seed=4))
    assert not all(torch.equal(a[k], c[k]) for k in a)
