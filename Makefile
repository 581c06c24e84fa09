# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up their own virtualenv in .venv from the package registries.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo bench venv browser lint clean dist dist-check test-matrix test-image check-python-floor

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## Debian's chromium, for the HTML report's browser tests: installed when
## missing and we may (root with apt-get), else a clear message.
browser:
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "make test needs Debian's chromium (/usr/bin/chromium): apt-get install chromium" >&2; exit 1; }

## Lint: ruff (ruff.toml), the one style for the repository.
lint: venv
	$(PY) -m ruff check .

## Run the whole test suite (lint, unit tests, and integration tests against a
## real Salt master + minion running the SpiroFS server on loopback).
test: venv browser
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory dist-check

## The suite on every supported Salt and Python version, each in its own
## .venv-<leg> (.ci/matrix.py --list shows the legs).
test-matrix:
	$(PYTHON) .ci/matrix.py

## Build the container image with podman and smoke-test it (root; installs
## podman, mmdebstrap and runc from Debian's packages if missing).
test-image: venv
	$(PY) -m pytest -m image tests/integration/test_image.py

## Static check that the library, CLI and Salt modules need no Python newer than 3.10.
check-python-floor: venv
	$(VENV)/bin/vermin --target=3.10- --violations --no-tips --eval-annotations spirodeploy _modules _runners _states _output

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
	rm -rf $(VENV) .venv-* .cache build dist *.egg-info
