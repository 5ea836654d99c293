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
	@# --universal: markers instead of this interpreter's answers, so the same lock installs on
	@# any Python 3.11.x (Debian's 3.11.2 needs async-timeout for redis-py, 3.11.3+ does not).
	@# --generate-hashes: pip and uv then install only the exact files that were locked.
	$(VENV)/bin/uv pip compile -q --universal --generate-hashes pyproject.toml -o requirements.lock
	$(VENV)/bin/uv pip compile -q --universal --generate-hashes pyproject.toml --extra dev \
	  -o requirements-dev.lock
	$(VENV)/bin/uv pip compile -q --universal deploy/k8s/checkov.in -o deploy/k8s/checkov.lock
	$(VENV)/bin/uv pip compile -q --universal --generate-hashes loadtest/requirements.in \
	  -c requirements-dev.lock -o loadtest/requirements.lock

.PHONY: dev
dev: install ## Run locally on SQLite + in-memory layer at http://127.0.0.1:$(PORT) (no services needed)
	DEBUG=1 $(PY) src/manage.py migrate --noinput
	DEBUG=1 $(PY) src/manage.py runserver 127.0.0.1:$(PORT)

.PHONY: test
# tests/lanes.py: a preflight (tests/preflight.py: Postgres, Redis, nginx, Chromium, Docker,
# found, started or installed), the tiers in two lanes (the container tests, mostly waiting
# for Docker, in a pytest process beside everything else), then a summary of every tier.
# TEST_LANES=0: the runs one after the other. PYTEST_ARGS: one pytest process with them.
# SKIP_TIERS=containers,browser: leave those tiers out; any other tier that cannot run, for
# want of something, fails the run.
TEST_LANES ?= 2
test: install ## Run every tier, after finding or starting what they need; SKIP_TIERS=a,b leaves tiers out
	TEST_LANES=$(TEST_LANES) $(PY) -m tests.lanes $(PYTEST_ARGS)

.PHONY: test-deps
test-deps: install ## Find, start or install what the tiers need (Postgres, Redis, nginx, Chromium, Docker); say what is missing
	$(PY) -m tests.preflight $(DEPS)

.PHONY: test-stock
test-stock: install ## The websocket and consumer tests on the stock runtime (PARLEY_RUNTIME=stock; docs/runtime.md)
	PARLEY_RUNTIME=stock $(PY) -m pytest tests/chat tests/parley_runtime \
		-m "not slow and not stack and not browser and not containers" $(PYTEST_ARGS)

.PHONY: test-upstream
test-upstream: install ## daphne's and channels-redis' own tests against the tuned runtime (part of `make test`; docs/runtime.md)
	$(PY) -m pytest tests/parley_runtime/test_upstream.py $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: install ## Unit and consumer tests only (no native stack, browser, containers or slow tests; ~2 min)
	$(PY) -m pytest -m "not slow and not stack and not browser and not containers" $(PYTEST_ARGS)

.PHONY: stack
stack: install ## Start the production layout on loopback (nginx :8080 or STACK_PORT, gunicorn, 2 daphne; ./run/stack); TLS=1: https on :8443; PGBOUNCER=1: Postgres through PgBouncer on :6432
	STACK_PORT=$(STACK_PORT) STACK_TLS=$(TLS) STACK_HSTS=$(HSTS) \
	  STACK_PGBOUNCER_PORT=$(if $(filter-out 0,$(PGBOUNCER)),$(or $(STACK_PGBOUNCER_PORT),6432),0) \
	  $(PY) deploy/stack/stackctl.py up

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
test-browser: install ## Browser end-to-end tests: Chromium drives the UI on a private stack (screenshots in test-artifacts/)
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

.PHONY: docs-screenshot
docs-screenshot: install browser-deps ## Regenerate the docs' screenshots (conversation, phone, edits and people, search) from the real UI
	$(PY) -m tests.browser.docs_screenshot

.PHONY: browser-deps
browser-deps: install ## Install Debian's chromium for the browser tests (Playwright never downloads one)
	$(PY) -m tests.preflight chromium

.PHONY: lint
lint: install ## ruff check and format check, the import layers (lint-imports)
	$(VENV)/bin/ruff check src tests deploy loadtest
	cd src && PYTHONPATH=. ../$(VENV)/bin/lint-imports ../pyproject.toml --no-cache
	$(VENV)/bin/ruff format --check src tests deploy loadtest
	$(MAKE) --no-print-directory lint-docker

.PHONY: fmt
fmt: install ## ruff fix and format
	$(VENV)/bin/ruff check --fix src tests deploy loadtest
	$(VENV)/bin/ruff format src tests deploy loadtest

.PHONY: seed
seed: install ## Create load-test users: ROOMS, MEMBERS, PASSWORD, OUT in DATABASE_URL (default: the native stack's)
	$(call loadtest_seed,$${OUT:-results/users.json})

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

# --- Docker Compose (docs/compose.md) ----------------------------------
DOCKER ?= docker
# `docker compose` (v2) when the plugin is there, else Debian's docker-compose 1.29.
COMPOSE ?= $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo "$(DOCKER) compose" || echo docker-compose)
# Letters and digits only: docker-compose 1.29 strips anything else from project names.
COMPOSE_PROJECT ?= parley
ENV_FILE ?= .env
PARLEY_IMAGE ?= parley:latest
LOADTEST_IMAGE ?= parley-loadtest:latest
# Behind a TLS-intercepting proxy: the proxy's CA bundle, for the image's build stage only.
EXTRA_CA_BUNDLE ?=
# STANDINS=1 selects the images deploy/standins/build.sh makes from Debian packages (for
# machines without a registry); otherwise the official images (or *_IMAGE from the env).
ifeq ($(STANDINS),1)
PYTHON_IMAGE ?= parley-standin/python:3.11
POSTGRES_IMAGE ?= parley-standin/postgres:15
REDIS_IMAGE ?= parley-standin/redis:7
NGINX_IMAGE ?= parley-standin/nginx:1.22
endif
PYTHON_IMAGE ?= python:3.11-slim-bookworm
# Handed to compose commands only (never exported: `make test` must not pass them on).
# The postgres/redis/nginx images only when set, so values in $(ENV_FILE) still apply.
COMPOSE_ENV = PARLEY_IMAGE=$(PARLEY_IMAGE) PYTHON_IMAGE=$(PYTHON_IMAGE) PARLEY_ENV_FILE=$(ENV_FILE) \
	$(if $(POSTGRES_IMAGE),POSTGRES_IMAGE=$(POSTGRES_IMAGE)) \
	$(if $(REDIS_IMAGE),REDIS_IMAGE=$(REDIS_IMAGE)) \
	$(if $(NGINX_IMAGE),NGINX_IMAGE=$(NGINX_IMAGE))
# SCALE=1: the scale profile on top (docker-compose.scale.yml: ws x4, two Redis shards that
# Sentinel fails over); every compose target then takes it, so pass it to each.
COMPOSE_FILES = -f docker-compose.prod.yml $(if $(filter 1,$(SCALE)),-f docker-compose.scale.yml)
DC = env $(COMPOSE_ENV) $(COMPOSE) -p $(COMPOSE_PROJECT) $(COMPOSE_FILES) --env-file $(ENV_FILE)

$(ENV_FILE):
	deploy/docker/make-env.sh .env.example $@

.PHONY: env
env: $(ENV_FILE) ## Create .env from .env.example with a fresh SECRET_KEY and database password (if missing)

.PHONY: build
build: ## Build the app image (PYTHON_IMAGE base, EXTRA_CA_BUNDLE for a TLS-intercepting proxy)
	deploy/docker/build.sh "$(PARLEY_IMAGE)" "$(PYTHON_IMAGE)" "$(EXTRA_CA_BUNDLE)"

.PHONY: build-loadtest
build-loadtest: ## Build the load generator's image for loadtest/k8s (LOADTEST_IMAGE, default parley-loadtest:latest)
	deploy/docker/build.sh "$(LOADTEST_IMAGE)" "$(PYTHON_IMAGE)" "$(EXTRA_CA_BUNDLE)" loadtest/Dockerfile

.PHONY: up
up: $(ENV_FILE) build ## Start the production stack with Docker Compose and wait until it is healthy (SCALE=1: ws x4, Redis shards with Sentinel)
	deploy/docker/check-tls.sh $(ENV_FILE)
	$(DC) up -d --remove-orphans
	deploy/docker/wait-healthy.sh $(COMPOSE_PROJECT) $${UP_TIMEOUT:-300}
	deploy/docker/refresh-nginx.sh $(COMPOSE_PROJECT)

.PHONY: down
down: ## Stop and remove the stack's containers (volumes, i.e. the database, are kept)
	$(DC) down --remove-orphans

.PHONY: wipe-volumes
wipe-volumes: ## DESTROYS DATA: stop the stack and delete its volumes (the Postgres database)
	$(DC) down --remove-orphans --volumes

# --- operations (docs/operations.md) ---------------------------------------------------
BACKUP_DIR ?= backups
# The one-off `backup` service (profile ops) runs deploy/backup/pg-backup.sh as this user, so
# the dumps on the host belong to whoever ran make.
BACKUP_RUN = $(DC) --profile ops run --rm --no-deps -T -u "$$(id -u):$$(id -g)"
RESTORE_FILE = -e FORCE=$(FORCE) -v "$(abspath $(FILE)):/restore/parley.dump:ro"

.PHONY: backup
backup: ## Dump the running stack's Postgres (pg_dump custom format) to BACKUP_DIR (backups/)/parley-<UTC time>.dump; prunes by BACKUP_KEEP_DAYS
	@mkdir -p $(BACKUP_DIR)
	$(BACKUP_RUN) -v "$(abspath $(BACKUP_DIR)):/backups" \
		$(if $(BACKUP_KEEP_DAYS),-e BACKUP_KEEP_DAYS=$(BACKUP_KEEP_DAYS)) backup

.PHONY: restore
restore: $(ENV_FILE) ## Restore FILE=<dump> into a fresh stack (after wipe-volumes), then start it; FORCE=1 replaces a non-empty database
	@test -n "$(FILE)" || { echo "restore: say which dump: make restore FILE=$(BACKUP_DIR)/parley-<time>.dump" >&2; exit 2; }
	@test -f "$(FILE)" && test -r "$(FILE)" || { echo "restore: $(FILE) is not a readable file" >&2; exit 2; }
	$(DC) up -d --no-deps postgres
	deploy/docker/wait-healthy.sh $(COMPOSE_PROJECT) $${UP_TIMEOUT:-300} postgres
	@# Refuses (and stops nothing) unless FILE is a dump and the database is empty or FORCE=1.
	$(BACKUP_RUN) $(RESTORE_FILE) backup sh /scripts/pg-backup.sh check /restore/parley.dump
	@# Nothing may write while the database is replaced: only Postgres runs until it is done.
	$(DC) stop nginx web ws
	$(BACKUP_RUN) $(RESTORE_FILE) backup sh /scripts/pg-backup.sh restore /restore/parley.dump
	@# The restored history is older than what open pages have shown: a new epoch per
	@# conversation makes them start over instead of skipping reused sequence numbers.
	$(DC) run --rm --no-deps migrate
	$(DC) run --rm --no-deps migrate manage history_new_epoch
	$(MAKE) --no-print-directory up

.PHONY: upgrade
upgrade: $(ENV_FILE) build ## Zero-downtime upgrade: build, migrate, then replace web and ws one container at a time
	@# Migrations first, while the old version still serves: they must be backward
	@# compatible (expand now, contract in a later release; docs/operations.md "Upgrades without downtime").
	$(DC) run --rm --no-deps migrate
	deploy/docker/roll.sh $(COMPOSE_PROJECT) $(DC)

.PHONY: logs
logs: ## Follow the stack's logs (SERVICE=ws for one service)
	$(DC) logs -f --tail=100 $(SERVICE)

.PHONY: ps
ps: ## List the stack's containers and their health
	$(DC) ps

.PHONY: migrate
migrate: ## Run the migrate one-shot again (after an upgrade)
	$(DC) run --rm --no-deps migrate

.PHONY: createsuperuser
createsuperuser: ## Create a Django admin user in the running stack
	$(DC) exec web parley-entrypoint manage createsuperuser

.PHONY: shell
shell: ## Django shell in the running stack
	$(DC) exec web parley-entrypoint manage shell

.PHONY: lint-docker
lint-docker: install ## hadolint the Dockerfiles, shellcheck the container scripts
	$(VENV)/bin/hadolint Dockerfile loadtest/Dockerfile deploy/standins/*/Dockerfile
	$(VENV)/bin/shellcheck deploy/docker/*.sh deploy/backup/*.sh deploy/tls/*.sh deploy/standins/build.sh deploy/standins/*/*.sh

.PHONY: standins
standins: ## Build stand-in base images from Debian packages (for machines without a registry)
	deploy/standins/build.sh

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
# WORKERS=N: Locust's master and N worker processes on this machine (one core each); the
# master merges their ledgers and checks the whole run. Workers on other machines:
# loadtest/README.md, "Distributed".
WORKERS ?= 0
LOADTEST_KNOBS = --host $(LOADTEST_URL) --login-host $(LOADTEST_LOGIN_URL) --rooms $(ROOMS) \
	--members $(MEMBERS) --users $$(($(ROOMS) * $(MEMBERS))) --spawn-rate 20 \
	--send-rate $(SEND_RATE) --p99-threshold-ms $(P99_MS) \
	$(if $(filter-out 0 1,$(WORKERS)),--processes $(WORKERS))

# Seeding is a database-only command, so it runs in DEBUG mode (no SECRET_KEY needed);
# DATABASE_URL is always set, so DEBUG never means the embedded SQLite here.
define loadtest_seed
	DEBUG=1 DATABASE_URL=$${DATABASE_URL:-$(LOADTEST_DB)} $(PY) src/manage.py seed_loadtest \
		--rooms $(ROOMS) --members $(MEMBERS) --password $${PASSWORD:-loadtest-pass} --out $(1)
endef

.PHONY: loadtest
loadtest: install ## Headless load test against a running stack (LOADTEST_URL); WORKERS=N: N Locust workers; report in results/<time>/
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

.PHONY: soak
# DURATION is shared with `make loadtest` (60s); SEED empty: a new one, printed.
RUNTIME ?= tuned
soak: install ## Delivery checker under faults for DURATION (30m, 2h) on a private stack (SEED=, RUNTIME=tuned|stock|both)
	$(PY) -m loadtest.checker --duration $(DURATION) --runtime $(RUNTIME) $(if $(SEED),--seed $(SEED)) $(SOAK_ARGS)

.PHONY: bench
bench: install ## Benchmark on the native stack: rate sweep past the knee, idle sockets, a big room, a reconnect storm -> loadtest/RESULTS.md
	$(PY) -m loadtest.bench $(BENCH_ARGS)

.PHONY: bench-scale
bench-scale: install ## What scale costs: one load on 1, 2, 4 and 8 daphne (CPU and Redis per delivery) -> loadtest/SCALE.json
	$(PY) -m loadtest.scale --json loadtest/SCALE.json $(BENCH_ARGS)

.PHONY: capacity
capacity: install ## Pods, Redis shards, PgBouncer and Postgres for a peak of S sockets and R deliveries/s (docs/capacity.md)
	@test -n "$(S)" -a -n "$(R)" || { echo "usage: make capacity S=<sockets> R=<deliveries/s> [M=<room size>]"; exit 2; }
	$(PY) -m loadtest.capacity $(S) $(R) $(if $(M),--room-size $(M))

.PHONY: bench-runtimes
bench-runtimes: install ## Tuned runtime against stock, side by side (broadcast, idle memory, page) -> loadtest/RUNTIMES.md
	$(PY) -m loadtest.runtimes $(BENCH_ARGS)
