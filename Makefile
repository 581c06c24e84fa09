# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up their own virtualenv in .venv from the package registries.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo bench venv clean dist dist-check

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## Run the whole test suite (unit tests, and integration tests against a real
## Salt master + minion running the SpiroFS server on loopback).
test: venv
	$(PY) -m pytest
	$(MAKE) --no-print-directory dist-check

## Deploy examples/hello through a throwaway local master + minion + SpiroFS.
demo: venv
	$(PY) -m tests.saltbed.demo

## Benchmark against GNU tar, curl and spiro-deploy 0.4.
bench: venv
	$(PY) bench/run.py

## Build the wheel and the sdist into dist/ (the wheel is built from the
## sdist, so a broken sdist fails here).  The tools get their own venv:
## they need packaging>=24.2, and Salt 3008.3 pins packaging==24.0.
DIST_VENV := .cache/dist-venv
DIST_PY := $(DIST_VENV)/bin/python
DIST_TOOLS := 'setuptools>=77' 'build>=1.2' 'twine>=6.1' 'check-wheel-contents>=0.6' 'packaging>=24.2'

$(DIST_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_PY) -m pip install --quiet $(DIST_TOOLS)
	touch $@

dist: $(DIST_VENV)/.installed
	rm -rf dist build
	$(DIST_PY) -m build --no-isolation --outdir dist .

## Check what would be uploaded to PyPI: metadata and README rendering,
## the wheel's layout, and that the sdist holds what the README refers to.
dist-check: dist
	$(DIST_VENV)/bin/twine check --strict dist/*
	$(DIST_VENV)/bin/check-wheel-contents dist/*.whl
	$(DIST_PY) .ci/check_dist.py dist

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
