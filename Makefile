# Two entry points for newcomers: `make demo` and `make test`. Both install what they use.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        := $(CURDIR)/.venv
COLLECTIONS := $(CURDIR)/.cache/collections
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export PYTHONPATH := $(COLLECTIONS)
export ANSIBLE_PYTHON_INTERPRETER := $(VENV)/bin/python

# `make test` runs these in order and stops at the first that fails.
TEST_STEPS  := unit integration sanity lint build molecule
# Extra pytest options, e.g. `make unit PYTEST_ARGS="-k manifest -x"`.
PYTEST_ARGS ?=
PYTEST      := python -m pytest -c tests/pytest.ini
# Extra ansible-test options, e.g. `make sanity SANITY_ARGS="--test pylint"`.
SANITY_ARGS ?=

.PHONY: help setup demo test unit integration sanity lint changelog build molecule bench clean

help:  ## this list
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/' | expand -t 20

# Every target that needs the toolchain depends on setup; `make test` runs it once and tells the
# steps it runs not to repeat it (SETUP_DONE).
setup:  ## install system packages, the virtualenv and the collection tree (idempotent)
	@[ -n "$${SETUP_DONE:-}" ] || scripts/bootstrap

demo: setup  ## throwaway registry, the incident reproduced, diagnosed, then healed by the loop
	scripts/demo

test: setup  ## every check, as CI runs it; stops at the first failure
	@results=(); status=0; started=$$SECONDS
	for step in $(TEST_STEPS); do
	  echo; echo "===== make $$step ====="
	  start=$$SECONDS
	  if SETUP_DONE=1 $(MAKE) --no-print-directory $$step; then
	    results+=("passed  $$step ($$((SECONDS - start)) s)")
	  else
	    status=$$?
	    results+=("FAILED  $$step ($$((SECONDS - start)) s), exit status $$status")
	    break
	  fi
	done
	echo; echo "===== make test summary ($$((SECONDS - started)) s) ====="
	printf '  %s\n' "$${results[@]}"
	# A pattern match, not `printf | grep -q`: grep quitting early fails the pipe under pipefail.
	for step in $(TEST_STEPS); do
	  [[ " $${results[*]} " == *" $$step ("* ]] || echo "  not run $$step"
	done
	if [ "$$status" -ne 0 ]; then echo "make test: FAILED"; exit "$$status"; fi
	echo "make test: all $(words $(TEST_STEPS)) steps passed"

# pytest's own exit status decides: 5 (nothing collected) fails the step like any other
# non-zero status, and tests/pytest_strict_outcomes.py makes a skipped test fail the run.
unit: setup  ## unit tests
	$(PYTEST) $(PYTEST_ARGS) tests/unit

# Two workers, a whole file each: the detection drill spends its 7 minutes waiting on cron and Prometheus,
# so the other files run beside it. `make integration INTEGRATION_WORKERS=0` runs them in one process.
INTEGRATION_WORKERS ?= 2
integration: setup  ## integration tests: real registry, garbage collector, sshd, ansible-playbook, the drill
	$(PYTEST) $(if $(filter-out 0,$(INTEGRATION_WORKERS)),-n $(INTEGRATION_WORKERS) --dist loadfile) $(PYTEST_ARGS) tests/integration

sanity: setup  ## ansible-test sanity, every test, Python 3.11
	scripts/sanity $(SANITY_ARGS)

lint: setup  ## ansible-lint (production profile), changelog fragments, shellcheck
	scripts/lint

changelog: setup  ## lint the changelog fragments (a release runs `antsibull-changelog release`)
	antsibull-changelog lint
	antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

build: setup  ## build the collection artifact and run Galaxy's importer on it
	scripts/build-and-import

molecule: setup  ## the registry_vm role's scenario on a real Docker engine
	scripts/molecule

bench: setup  ## benchmarks, each against the method a user would otherwise use
	scripts/bench

clean:  ## remove build, sanity and test output (keeps .venv, the checked downloads in .cache/downloads and the root file systems in .cache/rootfs)
	rm -rf .cache/build .cache/sanity .cache/collections tests/output benchmarks/results *.tar.gz
