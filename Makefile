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
	$(PY) -m pytest $(PYTEST_ARGS)

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

.PHONY: lint
lint: install ## ruff check and format check
	$(VENV)/bin/ruff check src tests deploy loadtest
	$(VENV)/bin/ruff format --check src tests deploy loadtest

.PHONY: fmt
fmt: install ## ruff fix and format
	$(VENV)/bin/ruff check --fix src tests deploy loadtest
	$(VENV)/bin/ruff format src tests deploy loadtest

.PHONY: seed
seed: install ## Create load-test users: ROOMS, MEMBERS, PASSWORD, OUT (uses DATABASE_URL)
	$(PY) src/manage.py seed_loadtest --rooms $${ROOMS:-10} --members $${MEMBERS:-10} --password $${PASSWORD:-loadtest-pass} --out $${OUT:-results/users.json}

# --- load test (loadtest/README.md) -------------------------------------------------------
LOADTEST_URL ?= http://127.0.0.1:$(STACK_PORT)
# Logins go to gunicorn directly: nginx allows 20 login POSTs a minute per client address.
STACK_WEB_PORT ?= 8000
LOADTEST_LOGIN_URL ?= http://127.0.0.1:$(STACK_WEB_PORT)
LOADTEST_DB ?= postgres://postgres@127.0.0.1:5432/parley_stack
ROOMS ?= 10
MEMBERS ?= 10
SEND_RATE ?= 1
DURATION ?= 60s
P99_MS ?= 100
LOCUST := $(VENV)/bin/locust --config loadtest/locust.conf
LOADTEST_KNOBS = --host $(LOADTEST_URL) --login-host $(LOADTEST_LOGIN_URL) --rooms $(ROOMS) \
	--members $(MEMBERS) --users $$(($(ROOMS) * $(MEMBERS))) --spawn-rate 20 \
	--send-rate $(SEND_RATE) --p99-threshold-ms $(P99_MS)

# Seeding is a database-only command, so it runs in DEBUG mode (no SECRET_KEY needed).
define loadtest_seed
	DEBUG=1 DATABASE_URL=$${DATABASE_URL:-$(LOADTEST_DB)} $(PY) src/manage.py seed_loadtest \
		--rooms $(ROOMS) --members $(MEMBERS) --password loadtest-pass --out $(1)
endef

.PHONY: loadtest
loadtest: install ## Headless load test against a running stack (LOADTEST_URL); report in results/<time>/
	@out=results/$$(date -u +%Y%m%dT%H%M%SZ); mkdir -p $$out; \
	$(call loadtest_seed,$$out/users.json) && \
	$(LOCUST) --headless $(LOADTEST_KNOBS) --users-file $$out/users.json --run-time $(DURATION) \
		--html $$out/report.html --csv $$out/stats --summary-json $$out/summary.json \
		2>&1 | tee $$out/locust.log; code=$${PIPESTATUS[0]}; \
	echo "loadtest: report, CSVs and summary in $$out (exit $$code)"; exit $$code

.PHONY: loadtest-ui
loadtest-ui: install ## Locust web UI on http://127.0.0.1:8089 against a running stack (LOADTEST_URL)
	$(call loadtest_seed,results/users.json)
	$(LOCUST) $(LOADTEST_KNOBS) --users-file results/users.json --web-host 127.0.0.1

.PHONY: bench
bench: install ## Benchmark on the native stack: rate sweep for both channel layers, idle sockets -> loadtest/RESULTS.md
	$(PY) -m loadtest.bench $(BENCH_ARGS)
