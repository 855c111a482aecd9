# anytok — the README's commands. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest workers: 2 by default (CI machines have 2 cores)
WORKERS ?= 2
# The tested package set (see its header); `make setup CONSTRAINTS=` installs without it.
CONSTRAINTS ?= constraints.txt

.PHONY: setup demo test test-fast lint format bench-cpu lock clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/anytok demo --out demo_out

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(WORKERS) --durations=15 tests

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -x -q -n $(WORKERS) -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-cpu: $(STAMP)
	$(BIN)/python benchmarks/quantizers_cpu.py

# Resolve pyproject.toml afresh in a scratch venv and write its versions to constraints.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e ".[test]"
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable \
	  | grep -v -i '^anytok'; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .hypothesis
