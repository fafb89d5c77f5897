# photochat — the two commands: `make demo` (the main job) and `make test` (the suite).
# Both create or reuse .venv in the repo root. The exact torch pins live here and only here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The one place the torch pins are kept (x86_64 Linux: wheels that pair with PyPI's torchvision).
TORCH_PINS_X86_64 := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.photochat-installed

.PHONY: install demo test test-fast bench clean-venv

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then \
	  echo "installing $(TORCH_PINS_X86_64)"; $(PIP) install --quiet $(TORCH_PINS_X86_64); \
	else echo "not x86_64 Linux: torch comes from the package's range in pyproject.toml"; fi
	$(PIP) install --quiet -e ".[dev,docs]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/photochat demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/dvtm.py

clean-venv:
	rm -rf $(VENV)
