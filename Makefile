# The two commands of the README:
#   make retrain   set everything up, then run `senti retrain` on the bundled corpus
#   make test      set everything up, then run ruff and the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands (`senti stage ...`) are run by DVC in a shell: put this venv first on PATH.
export PATH := $(BIN):$(PATH)
export GX_ANALYTICS_ENABLED := False
export DO_NOT_TRACK := 1

.PHONY: setup retrain test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "senti needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(STAMP)

retrain: setup
	$(BIN)/senti retrain

lint: setup
	$(BIN)/ruff check src flows tests bench

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
