# The two commands a new user needs:  `make train`  and  `make test`.
# Both create .venv and install the project with the tested versions pinned in constraints.txt.

VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
CONFIG  ?= configs/mpe_spread.yaml
ARGS    ?=
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install train test lint typecheck unit

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## Train CommFormer on the default config with an embedded local Ray (override: make train ARGS="run.seed=3").
train: install
	$(BIN)/commformer train $(CONFIG) $(ARGS)

## Lint, type-check and run the whole test suite (what .ci/run calls).
test: install lint typecheck unit

lint:
	$(BIN)/ruff check commformer envs agents tests benchmarks
	$(BIN)/ruff format --check commformer envs agents tests benchmarks

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest -q $(PYTEST_ARGS)
