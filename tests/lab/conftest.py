"""One micro run per experiment per test session, shared by the contract and browser tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """``micro_run(name, seeds=1) -> (results dict, paths)``, computed once per session."""
    from formerlab.lab import run_experiment

    done: dict[tuple[str, int], tuple[dict, dict]] = {}
    cache = tmp_path_factory.mktemp("lab-cache")

    def run(name: str, seeds: int = 1):
        key = (name, seeds)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{name}-micro")
            done[key] = run_experiment(name, preset="micro", seeds=seeds, out_dir=out,
                                       progress=False, cache_dir=cache)
        return done[key]

    return run
