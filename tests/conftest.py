"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread, restoring the previous setting afterwards.

    The tests run tiny models, where OpenMP's parallel regions cost more than they save and, on a busy
    2-core machine, stall while waiting for a second core: one thread is several (up to 10) times faster.
    Not autouse: a folder's conftest, a module or a test asks for it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
