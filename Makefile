# creditd — every developer and CI entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
# uv from PATH or, without one, a pinned uv bootstrapped into a private directory by
# scripts/bootstrap_uv.py: nothing is ever installed into the system or user Python (PEP 668).
UV_VERSION := 0.13.9
UV_HOME := .creditd/uv-venv
UV ?= $(or $(shell command -v uv 2>/dev/null),$(UV_HOME)/bin/uv)
RUN := $(UV) run --frozen
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help install run test check lint format typecheck openapi openapi-check sdk-sync contract fuzz bench bench-prune bench-webhooks bench-export bench-floor migrate worker verify clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: | $(filter $(UV_HOME)/bin/uv,$(UV)) ## Install the locked dependencies into .venv
	$(UV) sync --frozen

$(UV_HOME)/bin/uv:
	@python3 scripts/bootstrap_uv.py $(UV_VERSION) $(UV_HOME) >/dev/null

run: install ## Serve on :8000 with the embedded database and a demo project (prints its API key)
	$(RUN) creditd serve --demo --host $(HOST) --port $(PORT)

test: install ## Run the test suite (embedded PostgreSQL unless DATABASE_URL is set)
	$(RUN) pytest $(PYTEST_ARGS)

check: install lint typecheck openapi-check ## ruff, format, mypy --strict, OpenAPI drift

lint:
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) python sdk/python/scripts/unasync.py --check

format: install ## Fix lint and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

typecheck:
	$(RUN) mypy app tests bench migrations sdk/python/src sdk/python/tests scripts

sdk-sync: install ## Regenerate the Python SDK's sync client from its async one
	$(RUN) python sdk/python/scripts/unasync.py

openapi: install ## Regenerate openapi/openapi.json from the app
	$(RUN) creditd openapi --output openapi/openapi.json

openapi-check:
	@$(RUN) creditd openapi | diff -u openapi/openapi.json - >/dev/null \
		|| { echo "openapi/openapi.json is stale: run 'make openapi'"; exit 1; }

contract: install ## Generate Python and TypeScript clients from the spec and run them against a live server
	UV=$(UV) bash contract/run.sh

fuzz: install ## Fuzz a live server with schemathesis: 0 server errors, responses match the spec
	bash .ci/schemathesis.sh $(FUZZ_ARGS)

bench: install ## Benchmark start/complete/check against pgbench TPC-B on the same PostgreSQL
	$(RUN) python -m bench $(BENCH_ARGS)

bench-prune: install ## Prune a 10 M-event table with the retention job, measure it (bench/RESULTS.md)
	$(RUN) python -m bench.prune_events $(BENCH_PRUNE_ARGS)

bench-webhooks: install ## Benchmark webhook dispatch: deliveries per second to a local receiver
	$(RUN) python -m bench.webhooks $(BENCH_ARGS)

bench-export: install ## Export 1 M seeded ledger entries over HTTP and the CLI: peak RSS, rate (bench/RESULTS.md)
	$(RUN) python -m bench.ledger_export $(BENCH_EXPORT_ARGS)

bench-floor: install ## A minimal Python service's start/complete against pgbench, same run (bench/FLOOR.md)
	$(RUN) python -m bench.floor $(BENCH_FLOOR_ARGS)

migrate: install ## Apply migrations (DATABASE_URL, or the embedded database)
	$(RUN) creditd migrate

worker: install ## Run the background workers only
	$(RUN) creditd worker

verify: install ## Check every money invariant
	$(RUN) creditd verify

clean: ## Remove local data (embedded database, caches)
	rm -rf .creditd .pytest_cache .mypy_cache .ruff_cache contract/build
