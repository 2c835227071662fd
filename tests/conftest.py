"""Fixtures shared by every test folder, and the suite's isolation from global state and test order."""

from __future__ import annotations

import os
import random

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption(
        "--test-order", default="default",
        help="run the collected tests in their 'default' order, 'reverse'd, or 'shuffle:SEED' (a seeded shuffle): "
             "a test that passes only after another one depends on global state",
    )


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--test-order")
    if order == "default":
        return
    if order == "reverse":
        items.reverse()
    elif order.startswith("shuffle:"):
        random.Random(int(order.split(":", 1)[1])).shuffle(items)
    else:
        raise pytest.UsageError(f"--test-order must be default, reverse or shuffle:SEED, got {order!r}")


def pytest_report_header(config):
    return (f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
            f"test order {config.getoption('--test-order')}")


@pytest.fixture(autouse=True)
def _isolated_global_state():
    """Every test starts from the same global state and leaves none behind, whatever ran before it.

    The global random generators (torch's CPU generator, Python's ``random``) are seeded with 0 before the
    test and restored after it; the intra-op thread count, grad mode, deterministic-algorithms flag,
    default dtype and working directory are restored after it.
    """
    cwd = os.getcwd()
    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    dtype = torch.get_default_dtype()
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random.seed(0)
        try:
            yield
        finally:
            random.setstate(py_state)
            os.chdir(cwd)
            torch.set_num_threads(threads)
            torch.set_grad_enabled(grad)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.set_default_dtype(dtype)


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
