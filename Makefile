# Parley — `make` (or `make help`) lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
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

.PHONY: dev
dev: install ## Run locally on SQLite + in-memory layer at http://127.0.0.1:$(PORT) (no services needed)
	DEBUG=1 $(PY) src/manage.py migrate --noinput
	DEBUG=1 $(PY) src/manage.py runserver 127.0.0.1:$(PORT)

.PHONY: test
test: install ## Run the test suite against the local Postgres and Redis
	PATH=$(CURDIR)/.tools/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: stack
stack: install ## Start the production layout on loopback (nginx :8080 or STACK_PORT, gunicorn, 2 daphne; ./run/stack)
	STACK_PORT=$(STACK_PORT) $(PY) deploy/stack/stackctl.py up

.PHONY: stack-down
stack-down: install ## Stop `make stack` (every process it started, workers included)
	$(PY) deploy/stack/stackctl.py down

.PHONY: stack-reload
stack-reload: install ## Reload the stack's nginx config (nginx -s reload; websockets reconnect and replay)
	$(PY) deploy/stack/stackctl.py reload

.PHONY: stack-status
stack-status: install ## Show which `make stack` processes are running
	$(PY) deploy/stack/stackctl.py status

.PHONY: test-stack
test-stack: install ## Run only the native-stack tests (tests/stack: nginx, gunicorn, two daphne)
	$(PY) -m pytest tests/stack $(PYTEST_ARGS)

.PHONY: test-browser
test-browser: install browser-deps ## Browser end-to-end tests: Chromium drives the UI on a private stack (screenshots in test-artifacts/)
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

.PHONY: docs-screenshot
docs-screenshot: install browser-deps ## Regenerate docs/screenshot-conversation.png from the real UI
	$(PY) -m tests.browser.docs_screenshot

.PHONY: browser-deps
browser-deps: ## Install Debian's chromium for the browser tests (Playwright never downloads one)
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 || { echo "run: sudo apt-get install -y chromium" >&2; exit 1; }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

.PHONY: lint
lint: install ## ruff check and format check
	$(VENV)/bin/ruff check src tests deploy
	$(VENV)/bin/ruff format --check src tests deploy

.PHONY: fmt
fmt: install ## ruff fix and format
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

.PHONY: seed
seed: install ## Create load-test users: ROOMS, MEMBERS, PASSWORD, OUT (uses DATABASE_URL)
	$(PY) src/manage.py seed_loadtest --rooms $${ROOMS:-10} --members $${MEMBERS:-10} --password $${PASSWORD:-loadtest-pass} --out $${OUT:-results/users.json}

TOOLS := .tools/bin
$(TOOLS)/promtool:
	mkdir -p .tools/deb $(TOOLS)
	# Debian's prometheus package carries promtool; extract it rather than install the
	# package, which would start a Prometheus server.
	cd .tools/deb && apt-get download prometheus && dpkg-deb -x prometheus_*.deb x
	cp .tools/deb/x/usr/bin/promtool $@

.PHONY: observability-check
observability-check: install $(TOOLS)/promtool ## Validate the Grafana dashboard and Prometheus alert rules
	$(TOOLS)/promtool check rules deploy/observability/alerts.yml
	PATH=$(CURDIR)/$(TOOLS):$$PATH $(PY) -m pytest -q tests/parley/test_observability_files.py

.PHONY: certs
certs: ## Self-signed TLS certificate for HOST (default localhost) into certs/ (git-ignored)
	deploy/tls/make-certs.sh $${HOST:-localhost} certs
