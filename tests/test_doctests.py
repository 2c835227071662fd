"""Every ``>>>`` example in netvis's docstrings runs and prints what it claims.

The modules are found by walking the installed ``netvis`` package, so a new module's examples run without
being listed here; a module that fails to import fails its test (it is not skipped).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch


def _modules_with_examples() -> list[str]:
    """Dotted names of netvis's modules whose source holds ``>>>``, found on disk (nothing is imported here,
    so that a module that fails to import fails its own test)."""
    spec = importlib.util.find_spec("netvis")
    assert spec is not None and spec.submodule_search_locations, "netvis is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    names = []
    for path in sorted(root.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = ("netvis",) + path.relative_to(root).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_the_walk_finds_the_modules_with_examples():
    assert len(MODULES) >= 25
    assert {"netvis.hooks", "netvis.bn", "netvis.saliency.occlusion", "netvis.app.experiments.metrics"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, one_thread, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    # examples of objects imported from elsewhere are run where they are defined
    tests = [t for t in tests if t.filename == module.__file__ or t.filename is None]
    assert tests, f"{name} has '>>>' in its source but no docstring example doctest can find"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for test in tests:
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"
