# creditd — every developer and CI entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
UV ?= uv
RUN := $(UV) run --frozen
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help install run test check lint format typecheck openapi openapi-check fuzz bench migrate worker verify clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: ## Install the locked dependencies into .venv
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen

run: install ## Serve on :8000 with the embedded database and a demo project (prints its API key)
	$(RUN) creditd serve --demo --host $(HOST) --port $(PORT)

test: install ## Run the test suite (embedded PostgreSQL unless DATABASE_URL is set)
	$(RUN) pytest $(PYTEST_ARGS)

check: install lint typecheck openapi-check ## ruff, format, mypy --strict, OpenAPI drift

lint:
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install ## Fix lint and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

typecheck:
	$(RUN) mypy app tests bench migrations

openapi: install ## Regenerate openapi/openapi.json from the app
	$(RUN) creditd openapi --output openapi/openapi.json

openapi-check:
	@$(RUN) creditd openapi | diff -u openapi/openapi.json - >/dev/null \
		|| { echo "openapi/openapi.json is stale: run 'make openapi'"; exit 1; }

fuzz: install ## Fuzz a live server with schemathesis: 0 server errors, responses match the spec
	bash .ci/schemathesis.sh $(FUZZ_ARGS)

bench: install ## Benchmark start/complete/check against pgbench TPC-B on the same PostgreSQL
	$(RUN) python -m bench $(BENCH_ARGS)

migrate: install ## Apply migrations (DATABASE_URL, or the embedded database)
	$(RUN) creditd migrate

worker: install ## Run the background workers only
	$(RUN) creditd worker

verify: install ## Check every money invariant
	$(RUN) creditd verify

clean: ## Remove local data (embedded database, caches)
	rm -rf .creditd .pytest_cache .mypy_cache .ruff_cache
