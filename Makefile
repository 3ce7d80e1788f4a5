SHELL := /bin/bash
PYTHON ?= python3
# torch is installed first on its own: 2.13.0 is the version this project is tested with (a local CPU wheel on
# the project's build machines); with torch already present nothing is reinstalled.
TORCH_VERSION ?= 2.13.0

.PHONY: install install-benchmarks demo test test-all lint format doc clean

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -q -e ".[tests,docs,zoo]"

# The peer (d3rlpy) and rliable for benchmarks/scores.py; d3rlpy without its gymnasium==1.0.0 pin.
D3RLPY_VERSION ?= 2.8.1
install-benchmarks: install
	$(PYTHON) -m pip install -q -r benchmarks/requirements.txt
	$(PYTHON) -m pip install -q --no-deps "d3rlpy==$(D3RLPY_VERSION)"

# The main job: offline IQL against behaviour cloning on a small PointMaze dataset made on first use.
demo: install
	$(PYTHON) examples/quickstart.py

# Fast suite (slow learning checks excluded); `make test-all` runs everything. Each test runs torch on one thread,
# so the tests are spread over one process per core (pytest-xdist), at most TEST_PROCESSES.
TEST_PROCESSES ?= 4
test: install-benchmarks
	$(PYTHON) -m pytest tests -m "not slow" -q -n auto --maxprocesses $(TEST_PROCESSES)

test-all: install-benchmarks
	$(PYTHON) -m pytest tests -q -n auto --maxprocesses $(TEST_PROCESSES)

lint:
	$(PYTHON) -m ruff check sb3_iql tests examples benchmarks
	$(PYTHON) -m ruff format --check sb3_iql tests examples benchmarks

format:
	$(PYTHON) -m ruff format sb3_iql tests examples benchmarks
	$(PYTHON) -m ruff check --fix sb3_iql tests examples benchmarks

doc:
	$(PYTHON) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf docs/_build build dist *.egg-info .pytest_cache
