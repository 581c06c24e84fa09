# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up their own virtualenv in .venv from the package registries.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo bench venv clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## Run the whole test suite (unit tests, and integration tests against a real
## Salt master + minion running the SpiroFS server on loopback).
test: venv
	$(PY) -m pytest

## Deploy examples/hello through a throwaway local master + minion + SpiroFS.
demo: venv
	$(PY) -m tests.saltbed.demo

## Benchmark against GNU tar, curl and spiro-deploy 0.4.
bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
