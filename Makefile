# Two entry points for newcomers: `make demo` and `make test`. Both install what they use.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV        := $(CURDIR)/.venv
COLLECTIONS := $(CURDIR)/.cache/collections
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export PYTHONPATH := $(COLLECTIONS)
export ANSIBLE_PYTHON_INTERPRETER := $(VENV)/bin/python

.PHONY: setup demo test unit integration sanity lint build molecule bench clean

setup:  ## install system packages, the virtualenv and the collection tree (idempotent)
	scripts/bootstrap

demo: setup  ## throwaway registry, the incident reproduced, the verifier's diagnosis
	scripts/demo

test: setup unit integration sanity lint build molecule  ## every check, as CI runs it

unit:
	python -m pytest -c tests/pytest.ini tests/unit

integration:
	python -m pytest -c tests/pytest.ini tests/integration

sanity:
	scripts/sanity

lint:
	scripts/lint

build:
	scripts/build-and-import

molecule:
	scripts/molecule

bench: setup  ## benchmarks, each against the method a user would otherwise use
	scripts/bench

clean:
	rm -rf .cache tests/output benchmarks/results *.tar.gz
