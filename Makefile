# Convenience targets; the README's two commands stay the source of truth. Run as root (a fresh
# Debian 12 has no sudo); `fast` and, with a cached base, `checkers` also work without root.
.DEFAULT_GOAL := help
PY := venv/bin/python

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## Install the venv and the lab's few Debian packages; no daemons (root)
	scripts/setup-host.sh

lab: setup ## Bring the whole two-DC cluster up in the namespace lab (root)
	$(PY) -m cluster.lab up

base: ## Build and cache the lab's base root filesystem (root: debootstrap)
	$(PY) -m cluster.lab base

fast: ## Unit tests only: Pulumi mocks, plan, config (no root, seconds)
	$(PY) -m pytest -m "not checkers and not lab and not drill"

checkers: ## The daemons' checkers, inside the lab's base (root, or a user namespace + cached base)
	$(PY) -m pytest -m "checkers$(if $(filter 0,$(shell id -u)),, and not root)" tests/render

test: setup ## Everything CI runs (root)
	$(PY) -m pytest

lint: ## ruff and mypy
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy cluster mailnode __main__.py bench

.PHONY: help setup lab base fast checkers test lint
