# photochat — the two commands: `make demo` (the main job) and `make test` (the suite).
# Both create or reuse .venv in the repo root. The exact torch pins live here and only here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The one place the torch pins are kept (x86_64 Linux: wheels that pair with PyPI's torchvision).
TORCH_PINS_X86_64 := torch==2.14.1 torchvision==0.29.1
# Which build of those pins to install (x86_64 Linux). Empty, the default: PyPI's wheels, CUDA 13.0, kernels for
# sm_75..sm_120 (CPU, Colab's T4, A100, H100). A V100 (sm_70) needs `make install TORCH_CUDA=cu126`: PyTorch dropped
# Volta from its CUDA 12.8/13.x builds in release 2.11 and only the CUDA 12.6 builds keep it. That installs the same
# versions from https://download.pytorch.org/whl/cu126 (any tag that index serves works, e.g. cpu). The tag goes into
# the pins (+cu126) because pip counts an installed X+cu130 as satisfying a plain ==X and would keep it. Each build
# has its own stamp, so the call reinstalls torch in a venv that plain `make install` made; pass the same TORCH_CUDA
# to later make calls (or export it) so a rebuild keeps that build. `photochat doctor` checks torch against the GPU.
TORCH_CUDA ?=
STAMP := $(VENV)/.photochat-installed$(if $(TORCH_CUDA),-$(TORCH_CUDA))
ifeq ($(TORCH_CUDA),)
TORCH_INSTALL := $(TORCH_PINS_X86_64)
else
TORCH_INSTALL := $(addsuffix +$(TORCH_CUDA),$(TORCH_PINS_X86_64)) --index-url https://download.pytorch.org/whl/$(TORCH_CUDA)
endif

NBVAL := --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: install demo test test-fast test-min dist bench notebooks course-links book book-test clean-venv

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then \
	  echo "installing $(TORCH_INSTALL)"; $(PIP) install --quiet $(TORCH_INSTALL); \
	else echo "not x86_64 Linux: torch comes from the package's range in pyproject.toml"; fi
	$(PIP) install --quiet -e ".[dev,docs]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/photochat demo --reports photochat_lib/reports

# the library's tests and the course's notebooks (nbval: stored outputs must reproduce)
test: $(STAMP)
	$(PY) -m pytest -q tests notebooks $(NBVAL)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# the lowest versions pyproject.toml allows (tests/min_versions.py pins each range to its floor; torch: the pins
# above), in a venv of their own, then the smoke test (load, generate, train 2 steps and resume, toy FID/IS).
# Not in CI (a second set of packages): 1 min 52 s from an empty .venv-min on a 2-core machine (2026-12-03).
MIN_VENV ?= .venv-min
test-min:
	@test -x $(MIN_VENV)/bin/python || python3 -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python tests/min_versions.py --with pytest > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pip install --quiet $(TORCH_INSTALL) -e . pytest -c $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/test_min_versions.py

bench: $(STAMP)
	$(PY) benchmarks/dvtm.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/chat_latency.py
	$(PY) benchmarks/toy_sd_accuracy.py

# the wheel (dist/photochat_lib-VERSION-py3-none-any.whl: the package, its configs, the shipped toy checkpoints,
# the wording set and py.typed); tests/test_repo.py builds one the same way and runs it from outside the repo
dist: $(STAMP)
	rm -rf dist && $(PIP) wheel --quiet --no-deps --wheel-dir dist .

# re-execute every notebook in place (an author updates the course's stored outputs in one step)
notebooks: $(STAMP)
	cd notebooks && for nb in [0-9][0-9]_*.ipynb; do \
	  echo "executing $$nb"; ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=1200 "$$nb" || exit 1; done

MATHJAX := book/_mathjax/mathjax/tex-mml-chtml.js

# MathJax for offline math rendering (not in _static/, whose .js files Jupyter Book loads on every page), from the npm registry (the CDN copy Sphinx links by default
# is unreachable offline); kept out of git
$(MATHJAX):
	rm -rf book/_build/npm && mkdir -p book/_build/npm
	cd book/_build/npm && npm install --no-save --silent --prefix . mathjax@3.2.2
	mkdir -p book/_mathjax/mathjax/output/chtml
	cp book/_build/npm/node_modules/mathjax/es5/tex-mml-chtml.js book/_mathjax/mathjax/
	cp -r book/_build/npm/node_modules/mathjax/es5/output/chtml/fonts book/_mathjax/mathjax/output/chtml/
	mkdir -p book/_mathjax/mathjax/input/tex
	cp -r book/_build/npm/node_modules/mathjax/es5/input/tex/extensions book/_mathjax/mathjax/input/tex/

# point every Colab badge, install cell and the book's repository link at [tool.photochat.course] in pyproject.toml
course-links: $(STAMP)
	$(PY) book/course_links.py

# the Jupyter Book site (1.x, offline; stored outputs rendered, nothing executed)
book: $(STAMP) $(MATHJAX)
	$(PY) book/sync_notebooks.py
	$(VENV)/bin/jupyter-book build book/ --warningiserror

# open the built site in headless Chromium; screenshots go to book/_build/screenshots/
book-test: book
	$(PY) -m pytest -q book/tests

clean-venv:
	rm -rf $(VENV)
