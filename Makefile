# Quartermaster — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "Installing Quartermaster's packages into $(VENV): the first time takes a few minutes ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its dev tools

run: $(STAMP) ## run the whole system locally with demo traffic (Ctrl-C stops it)
	@# gRPC's fork handlers only log "skipping fork() handlers" when make run stops
	@# PostgreSQL (a fork, then exec of pg_ctl, which uses no gRPC).
	@GRPC_ENABLE_FORK_SUPPORT=false $(PY) -m devtools.run

# The unit tests on every core (pytest-xdist): they share nothing. The tests against
# infrastructure run in two processes, each with its own session's PostgreSQL, broker
# and services on free ports, a test file at a time in one (`--dist loadfile`: a
# file's fixtures are made once). Two, not one per core: they mostly wait on brokers,
# groups and services, and on a 2-core machine two halve the time (846 s -> 478 s
# measured) with every test's own duration about as before; more would only add load.
# Given a PostgreSQL and a broker of your own (QM_DATABASE_URL, QM_KAFKA_BOOTSTRAP),
# one: two sessions' metering workers there would each count the other's events.
INFRA_PROCESSES := $(if $(QM_DATABASE_URL)$(QM_KAFKA_BOOTSTRAP),0,2)
INFRA := -m "infra or suite" -n $(INFRA_PROCESSES) --dist loadfile
UNIT := -m "not infra and not suite" -q -n auto

test: $(STAMP) ## lint, type-check, the unit tests, then every test against real infrastructure
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(MAKE) --no-print-directory test-unit
	$(PY) -m pytest $(INFRA)

test-unit: $(STAMP) ## every test that needs no PostgreSQL or broker, in under a minute
	$(PY) -m pytest $(UNIT)

lint: $(STAMP) ## ruff lint + format check and mypy strict
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: $(STAMP) ## format and auto-fix with ruff
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

protos: $(STAMP) ## regenerate quartermaster/v1 from protos/
	$(PY) scripts/gen_protos.py

migrate: $(STAMP) ## apply migrations to QM_DATABASE_URL
	$(PY) -m devtools.migrate

bench-metering: $(STAMP) ## metering events/s, RSS and freshness beside a plain consumer loop
	$(PY) scripts/bench_metering.py $(ARGS)

bench-dedupe: $(STAMP) ## bytes per remembered event id in memory and PostgreSQL, projected to 100 M/day
	$(PY) scripts/bench_dedupe.py $(ARGS)

bench-costs: $(STAMP) ## Cost API: a 30-day query over 10,000 users
	$(PY) scripts/bench_costs.py $(ARGS)

bench-policy: $(STAMP) ## policy Check with 100,000 users beside a bare grpc.aio echo service
	$(PY) scripts/bench_policy.py $(ARGS)

bench-requests: $(STAMP) ## requests: create + decide and ListAwaitingMe with 100,000 past requests
	$(PY) scripts/bench_requests.py $(ARGS)

bench-notifier: $(STAMP) ## notifier intents/s through dedupe and delivery to the Slack stand-in, lag p50/p99
	$(PY) scripts/bench_notifier.py $(ARGS)

bench-rpc-metrics: $(STAMP) ## what counting and timing a gRPC call costs, beside the OpenTelemetry SDK
	$(PY) scripts/bench_rpc_metrics.py $(ARGS)

bench-ingest: $(STAMP) ## HTTP ingest events/s (100-event and 1-event bodies) beside a bare aiohttp endpoint
	$(PY) scripts/bench_ingest.py $(ARGS)

bench-freshness: $(STAMP) ## time from producing an event to GetBudget reflecting it
	$(PY) scripts/bench_freshness.py

settings-doc: $(STAMP) ## regenerate docs/settings.md and deploy/settings.example.env from the settings classes
	$(PY) -m devtools.settings_doc

clean: ## remove the venv and local data (.run)
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache

.PHONY: help venv run test test-unit lint fmt protos migrate bench-metering bench-dedupe bench-costs bench-policy bench-requests bench-notifier bench-ingest bench-rpc-metrics bench-freshness settings-doc clean
