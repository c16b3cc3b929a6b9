# The two commands a newcomer needs: `make setup` then `make test` (or `make quickstart`).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test lint unit pytest crds quickstart

setup:
	scripts/setup.sh

# Every check CI runs: lint, types, then the whole test suite (unit, integration on a real control plane, e2e).
test: lint pytest

# The whole platform on this machine: dev cluster, operator, examples/quickstart.yaml, predictions over HTTP.
# Stops everything at the end; `make quickstart ARGS=--keep` leaves the dev cluster running.
quickstart:
	scripts/quickstart $(ARGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

pytest:
	$(PY) -m pytest

unit:
	$(PY) -m pytest tests/unit

# Regenerate crds/*.yaml and the field reference in docs/api.md from deepseek_operator.api (never edit by hand),
# and the Helm chart's copy of the CRDs (charts/deepseek-operator/files/crds, installed and upgraded by the chart).
crds:
	$(PY) -m deepseek_operator.api.crdgen
	rm -f charts/deepseek-operator/files/crds/*.yaml
	cp crds/*.yaml charts/deepseek-operator/files/crds/
