# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build by default; on a GPU machine install your CUDA torch into .venv first and pass TORCH_SPEC=
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=
# Tests marked `slow` run in CI (CI=true) and in `make test-all`; a local `make test` skips them.
PYTEST_MARKS ?= $(if $(CI),slow or not slow,not slow)

.PHONY: demo ablate test test-all test-fast lint docs install install-dev clean

demo: $(VENV)/.installed
	$(BIN)/pairuni demo

# The ShapesWorld ablation (docs/shapes.md): 6 settings x 3 seeds, about half an hour on 2 cores.
ablate: $(VENV)/.installed
	$(BIN)/pairuni shapes ablate --out runs/ablate

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "$(PYTEST_MARKS)" $(PYTEST_ARGS)

# The default suite plus the tests marked `slow` (CI runs this through .ci/run when it has time).
test-all: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "slow or not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(VENV)/.installed
	$(BIN)/pairuni config docs --out docs/config.md

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The CPU torch goes in first: a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(if $(TORCH_SPEC),$(PIP) install --quiet "$(TORCH_SPEC)")
	$(PIP) install --quiet $(if $(TORCH_SPEC),-c constraints.txt) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet $(if $(TORCH_SPEC),-c constraints.txt) -e ".[dev]"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
