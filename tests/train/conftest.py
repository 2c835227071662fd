"""Fixtures for the training tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one intra-op thread (restored afterwards).

    The training tests run tiny models, where OpenMP's parallel regions cost more than they save and,
    on a busy 2-core machine, stall while waiting for a second core: one thread is up to 10x faster.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
