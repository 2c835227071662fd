"""Fixtures for the experiment tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every test in this folder runs on one thread (the fixture is in tests/conftest.py)."""
    return one_thread
