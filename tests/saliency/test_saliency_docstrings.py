"""The examples in the docstrings of netvis.hooks and netvis.saliency run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "netvis.hooks",
    "netvis.saliency.occlusion",
    "netvis.saliency.gradient",
    "netvis.saliency.guided",
    "netvis.saliency.cam",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
