# The two commands a fresh machine needs:
#   make demo   -- set up the environment and run the main job (netvis demo)
#   make test   -- set up the environment and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.netvis-installed

# torch/torchvision pinned to the builds this project is tested with.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/netvis demo

# One torch thread per test process: the tests run many small models, where a second thread only spins.
test: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# ruff, the import contracts of pyproject.toml ([tool.importlinter]; docs/architecture.md draws them) and mypy
# on the library ([tool.mypy]).
lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) netvis-report
