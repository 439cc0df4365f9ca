# The two commands of the README:
#   make retrain   set everything up, then run `senti retrain` on the bundled corpus
#   make test      set everything up, then run ruff and the whole test suite
# and the fast loop while developing:
#   make test-fast ruff and every test that trains no model (goal: under 2 minutes)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers (tests/conftest.py keeps each module, and the team stack, on one worker)
TEST_WORKERS ?= 2
# Stage commands (`python -m senti.stages...`) run in DVC's shell: put this venv first on PATH.
export PATH := $(BIN):$(PATH)
export GX_ANALYTICS_ENABLED := False
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup retrain test test-fast lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "senti needs Python 3.11"'
	@echo "senti: installing the pinned dependencies into $(VENV) (first time: 3-5 minutes) ..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,team,stack]"
	touch $@
	@echo "senti: dependencies installed"

setup: $(STAMP)

retrain: setup
	$(BIN)/senti retrain

lint: setup
	$(BIN)/ruff check src flows tests bench

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS)

test-fast: lint
	$(BIN)/pytest -n $(TEST_WORKERS) -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
