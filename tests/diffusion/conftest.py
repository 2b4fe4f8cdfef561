"""Diffusion tests run single-threaded BLAS as well (tiny tensors, shared CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield
