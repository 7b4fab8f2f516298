# Navarch developer entry points. `make test` and `make demo` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all venv testenv test unit integration lint format generate demo sim bench clean \
	crds-apply e2e-kind

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Build kube-apiserver, kube-scheduler, kube-controller-manager, kubectl, etcd, helm and KWOK
## from their pinned Go modules (cached).
testenv:
	hack/build-controlplane.sh

## The whole suite: unit tests, then integration tests against a real control plane.
test: venv testenv
	$(PY) -m pytest tests -ra

unit: venv
	$(PY) -m pytest tests/unit -ra

integration: venv testenv
	$(PY) -m pytest tests/integration -ra

lint: venv
	$(VENV)/bin/ruff check navarch tests benchmarks
	$(VENV)/bin/ruff format --check navarch tests benchmarks
	$(VENV)/bin/mypy --strict navarch

format: venv
	$(VENV)/bin/ruff check --fix navarch tests benchmarks
	$(VENV)/bin/ruff format navarch tests benchmarks

## Regenerate crds/, charts/navarch/crds/ and the chart's default policy from the code.
generate: venv
	$(PY) -m navarch.generate

## Start a local control plane, install the chart and show what is there.
demo: venv testenv
	$(VENV)/bin/navarch-demo

## Play a fleet-simulator scenario (scenarios/README.md); the report goes to sim-results/<name>/.
SCENARIO ?= scenarios/quick.yaml
sim: venv testenv
	$(VENV)/bin/navarch-sim run $(SCENARIO)

## Every benchmark; each one's output goes to benchmarks/results/<name>.txt, and the fleet
## benchmark's reports to benchmarks/results/<scenario>/.
bench: venv testenv
	@mkdir -p benchmarks/results
	@for b in benchmarks/*.py; do \
		name=$$(basename $$b .py); echo "== $$b"; \
		$(PY) $$b | tee benchmarks/results/$$name.txt; \
		test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

## Apply the chart's CRDs to the current cluster: Helm installs crds/ once and never upgrades them.
KUBECTL ?= kubectl
crds-apply:
	$(KUBECTL) apply --server-side --force-conflicts -f charts/navarch/crds/

## Needs docker and kind: a kind cluster running the image with the fake NVML library, then the
## integration suite against it (hack/e2e-kind.sh; KEEP_CLUSTER=1 keeps the cluster).
e2e-kind: venv testenv
	hack/e2e-kind.sh

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .mypy_cache .ruff_cache sim-results
