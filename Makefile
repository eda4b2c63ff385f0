# One venv, built from pyproject.toml; every target uses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install tools lint format test demo docs bench soak constraints clean

help:
	@echo "make demo   - run the monitor against the built-in simulator (metrics on :10464)"
	@echo "make test   - lint, then the whole test suite (installs what it needs; builds the docs)"
	@echo "make docs   - the documentation site, into site/ (mkdocs build --strict)"
	@echo "make lint   - ruff (lint + format check) and mypy --strict"
	@echo "make bench  - performance benchmarks (results in tests/benchmarks/results/)"
	@echo "make soak   - an hour of simulated time at 1,000 promotions with faults"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,docs]'
	touch $(STAMP)

install: $(STAMP)

# promtool/amtool/prometheus/alertmanager and chromium (the status page's browser test) from Debian; needs root,
# otherwise the tests that need them skip loudly.
tools:
	@sh tests/tools/install-tools.sh
	@sh tests/tools/install-browser.sh

lint: $(STAMP)
	$(BIN)/ruff check monitor tests docs
	$(BIN)/ruff format --check monitor tests docs
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format monitor tests docs
	$(BIN)/ruff check --fix monitor tests docs

test: lint tools
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/promo-monitor demo

# The reference pages are generated from monitor/ at build time (docs/hooks.py); tests/test_docs.py
# runs the same strict build, so `make test` checks it too.
docs: $(STAMP)
	cd docs && NO_MKDOCS_2_WARNING=1 ../$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks

# An hour of simulated time at 1,000 promotions with random faults (a few minutes); not part of `make test`.
soak: $(STAMP)
	$(BIN)/python -m tests.benchmarks.soak

# Re-pin deploy/constraints.txt (the image's exact dependency versions) from a clean venv that has
# only the runtime dependencies of pyproject.toml.
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/pip install --quiet .
	sed -n '/^#/p' deploy/constraints.txt > build/constraints.txt
	build/constraints-venv/bin/pip freeze --exclude promo-monitor >> build/constraints.txt
	mv build/constraints.txt deploy/constraints.txt
	rm -rf build/constraints-venv

clean:
	rm -rf $(VENV) build site *.egg-info .mypy_cache .pytest_cache .ruff_cache
