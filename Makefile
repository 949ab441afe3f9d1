# Convenience targets; the README's two commands stay the source of truth.
.DEFAULT_GOAL := help
PY := venv/bin/python

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## Install the venv and the Debian packages (root)
	scripts/setup-host.sh

lab: setup ## Bring the whole two-DC cluster up in the namespace lab (root)
	$(PY) -m cluster.lab up

fast: ## Unit tests only: Pulumi mocks, plan, config (no root, seconds)
	$(PY) -m pytest -m "not checkers and not lab and not drill"

test: setup ## Everything CI runs
	$(PY) -m pytest

lint: ## ruff and mypy
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy cluster __main__.py bench

.PHONY: help setup lab fast test lint
