# Parley — `make` (or `make help`) lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
CHECKOV_VENV ?= .venv-checkov
OVERLAY ?= dev
STACK_PORT ?= 8080
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help
help: ## List every target with a one-line description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements-dev.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) -q -r requirements-dev.lock
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install the locked dependencies (dev included)

.PHONY: lock
lock: ## Re-resolve requirements*.lock from pyproject.toml
	$(VENV)/bin/uv pip compile -q pyproject.toml -o requirements.lock
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev -o requirements-dev.lock
	$(VENV)/bin/uv pip compile -q deploy/k8s/checkov.in -o deploy/k8s/checkov.lock

.PHONY: dev
dev: install ## Run locally on SQLite + in-memory layer at http://127.0.0.1:$(PORT) (no services needed)
	DEBUG=1 $(PY) src/manage.py migrate --noinput
	DEBUG=1 $(PY) src/manage.py runserver 127.0.0.1:$(PORT)

.PHONY: test
test: install ## Run the test suite against the local Postgres and Redis
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff check and format check
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

.PHONY: fmt
fmt: install ## ruff fix and format
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

.PHONY: seed
seed: install ## Create load-test users: ROOMS, MEMBERS, PASSWORD, OUT (uses DATABASE_URL)
	$(PY) src/manage.py seed_loadtest --rooms $${ROOMS:-10} --members $${MEMBERS:-10} --password $${PASSWORD:-loadtest-pass} --out $${OUT:-results/users.json}

# checkov has its own virtualenv: ~200 MB of cloud SDKs whose pins would fight the dev deps.
$(CHECKOV_VENV)/.installed: deploy/k8s/checkov.lock | $(VENV)/.installed
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(VENV)/bin/uv pip install --python $(CHECKOV_VENV)/bin/python -q -r deploy/k8s/checkov.lock
	touch $@

.PHONY: k8s-validate
k8s-validate: install $(CHECKOV_VENV)/.installed ## Render every deploy/k8s overlay: strict schemas, checkov scan, invariant tests
	REDIS_URL= $(PY) -m pytest tests/k8s $(PYTEST_ARGS)

.PHONY: k8s-secrets
k8s-secrets: ## Write an overlay's git-ignored secrets.env from its example (OVERLAY=dev|production)
	$(PYTHON) deploy/k8s/gen_secrets.py deploy/k8s/overlays/$(OVERLAY)
