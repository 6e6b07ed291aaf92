#!/usr/bin/env bash
# Prove openapi/openapi.json with the generators users run (issue 7, item 3):
#   1. redocly lint: 0 errors (warnings are printed);
#   2. openapi-python-client and @hey-api/openapi-ts generate clients with no warning at all;
#   3. a Python program (mypy --strict) and a TypeScript program (tsc --strict --noEmit) type-check
#      against the generated code, untouched;
#   4. both programs run their flow against a live `creditd serve` (with its background workers,
#      the webhook dispatcher among them) with its own embedded database and the fake Stripe of
#      tests/fakes/stripe_server.py (payments paid through signed webhooks), and receive the
#      server's outbound webhooks on 127.0.0.1, verified with the standardwebhooks libraries.
# Tools are pinned: contract/package-lock.json (npm) and contract/python/uv.lock (PyPI).
# Needs `make install` first (.venv/bin/creditd), node >= 20.19 with npm, and uv.
# Everything generated goes to contract/build/ (git-ignored).
set -euo pipefail
export UV_PYTHON_DOWNLOADS=never
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
SPEC="$ROOT/openapi/openapi.json"
BUILD="$HERE/build"
PYENV="$HERE/python/.venv"
started=$SECONDS

step() { printf '\n== contract: %s (%ss)\n' "$*" "$((SECONDS - started))"; }
fail() { printf 'contract: FAILED: %s\n' "$*" >&2; exit 1; }

[ -x "$ROOT/.venv/bin/creditd" ] || fail "run 'make install' in the repository root first"

step "install the pinned tools"
if [ ! -f "$HERE/node_modules/.package-lock.json" ] \
    || [ "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]; then
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi
# make passes the uv it uses (on PATH, or bootstrapped into .creditd/uv-venv).
UV=${UV:-uv}
case "$UV" in */*) PATH="$(cd "$(dirname "$UV")" && pwd):$PATH"; UV="$(basename "$UV")";; esac
"$UV" sync --quiet --frozen --project "$HERE/python"
npx_() { (cd "$HERE" && npx --no-install "$@"); }
version() { node -p "require('$HERE/node_modules/$1/package.json').version"; }
echo "@redocly/cli $(version @redocly/cli), @hey-api/openapi-ts $(version @hey-api/openapi-ts)," \
  "typescript $(version typescript), node $(node --version)," \
  "$("$PYENV/bin/openapi-python-client" --version)"

strip_ansi() { sed -E 's/\x1b\[[0-9;]*m//g' "$1"; }
# A generator's output must be exactly its usual progress lines: anything else (a warning, a
# skipped schema, a deprecation) fails the run.
only_progress() {  # name log allowed-regex
  local leftover
  leftover="$(strip_ansi "$2" | grep -vE "^[[:space:]]*$|$3" || true)"
  if [ -n "$leftover" ]; then
    printf '%s\n' "$leftover" >&2
    fail "$1 printed a warning (above)"
  fi
}

step "redocly lint (errors fail, warnings are listed)"
npx_ redocly lint "$SPEC" --format=stylish || fail "redocly lint found errors"

step "generate the Python client (openapi-python-client)"
rm -rf "$BUILD/python" && mkdir -p "$BUILD/python"
# python/generator.yaml maps the ledger export's application/x-ndjson (bytes in the spec) to
# application/octet-stream, the generator's documented way to read a media type it does not know.
# --meta uv writes the project users install (pyproject.toml with the generator's own ruff
# settings, which its post hooks apply, run by the pinned ruff of its venv). With --meta none,
# ruff's default rules would rewrite `__exit__(*args: Any)` as `object` (PYI036), which
# fails mypy --strict against httpx.
(cd "$HERE" && PATH="$PYENV/bin:$PATH" openapi-python-client generate --path "$SPEC" \
  --output-path build/python/creditd-client --meta uv --fail-on-warning \
  --config python/generator.yaml) \
  > "$BUILD/python-generate.log" 2>&1 || { cat "$BUILD/python-generate.log"; fail "generator"; }
strip_ansi "$BUILD/python-generate.log"
only_progress openapi-python-client "$BUILD/python-generate.log" \
  '^Generating build/python/creditd-client$'
PYCLIENT=build/python/creditd-client  # holds the package creditd_client

step "generate the TypeScript client (@hey-api/openapi-ts, fetch client)"
rm -rf "$BUILD/ts" && mkdir -p "$BUILD/ts"
# Run from contract/: the generator reads tsconfig.json (NodeNext) and writes `.js` imports.
npx_ openapi-ts --no-log-file -i "$SPEC" -o build/ts/client -c @hey-api/client-fetch \
  > "$BUILD/ts-generate.log" 2>&1 || { cat "$BUILD/ts-generate.log"; fail "generator"; }
strip_ansi "$BUILD/ts-generate.log"
only_progress openapi-ts "$BUILD/ts-generate.log" \
  '^@hey-api/openapi-ts v[0-9.]+$|^\[Job 1\] (⏳ Generating from 1 input:|  \[1\] /.*/openapi\.json|✅ Done! Your output is in \./build/ts/client)$'

step "type-check: mypy --strict (flow + generated package)"
(cd "$HERE" && MYPYPATH="$PYCLIENT" "$PYENV/bin/mypy" --config-file python/pyproject.toml \
  --strict --cache-dir build/.mypy_cache python/flow.py python/outbound.py python/checks.py python/teams.py \
  "$PYCLIENT/creditd_client")

step "type-check: tsc --strict --noEmit (flow + generated client)"
npx_ tsc -p tsconfig.json --strict --noEmit
npx_ tsc -p tsconfig.json --noCheck  # emit the JavaScript that node runs (checked just above)

step "start a live server (creditd serve with its workers, own embedded PostgreSQL, free port)"
SERVER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/creditd-contract.XXXXXX")"
PORT="$("$ROOT/.venv/bin/python" -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
ADMIN_TOKEN="contract-$("$ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"
SERVER_PID=""
STRIPE_PID=""
stop_server() {
  if [ -n "$STRIPE_PID" ] && kill -0 "$STRIPE_PID" 2>/dev/null; then
    kill -TERM "$STRIPE_PID" 2>/dev/null || true
    wait "$STRIPE_PID" 2>/dev/null || true
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    # SIGINT, not SIGTERM: uvicorn re-raises the signal after its graceful shutdown, and only
    # SIGINT (KeyboardInterrupt) lets `creditd serve` run its atexit stop of the database.
    kill -INT "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  # The server stops its embedded PostgreSQL on exit; if it could not, stop it here
  # (SIGINT = PostgreSQL's fast shutdown).
  local pidfile="$SERVER_DIR/pg/postmaster.pid"
  if [ -f "$pidfile" ]; then
    local pg_pid; pg_pid="$(head -n 1 "$pidfile")"
    kill -INT "$pg_pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pg_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -rf "$SERVER_DIR"
}
trap 'stop_server' EXIT
# The server's Stripe is the test fake (tests/fakes/stripe_server.py) on a free port: one
# account whose keys it prints, and its control path POST /_test/pay/{session_id} that pays a
# checkout and returns the signed webhook. Razorpay points at a closed port: nothing reaches a
# real provider.
(cd "$ROOT" && exec "$ROOT/.venv/bin/python" -m tests.fakes.stripe_server --port 0) \
  > "$BUILD/stripe.json" 2> "$BUILD/stripe.log" &
STRIPE_PID=$!
for _ in $(seq 120); do
  [ -s "$BUILD/stripe.json" ] && break
  kill -0 "$STRIPE_PID" 2>/dev/null || { cat "$BUILD/stripe.log"; fail "the fake Stripe exited"; }
  sleep 0.25
done
stripe_field() {
  "$ROOT/.venv/bin/python" -c 'import json, sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' \
    "$1" < "$BUILD/stripe.json"
}
STRIPE_URL="$(stripe_field url)" || fail "the fake Stripe printed no JSON line"
echo "fake Stripe at $STRIPE_URL"
# One process serves and runs the background jobs, the webhook dispatcher among them (its
# default, CREDITD_WEBHOOKS__DISPATCH_IN_PROCESS): the flows' receivers listen on 127.0.0.1
# over plain http, which only these two development settings allow. A failed attempt is
# retried after about a second (a JSON list, as pydantic-settings reads complex values).
(
  exec env -u DATABASE_URL -u CREDITD_DATABASE_URL -u CREDITD_DATABASE__URL \
    CREDITD_DATA_DIR="$SERVER_DIR" CREDITD_ADMIN_TOKEN="$ADMIN_TOKEN" CREDITD_ENV=development \
    CREDITD_PAYMENTS__STRIPE_API_BASE="$STRIPE_URL" \
    CREDITD_PAYMENTS__RAZORPAY_API_BASE=http://127.0.0.1:9 \
    CREDITD_WEBHOOKS__ALLOW_HTTP=true CREDITD_WEBHOOKS__ALLOW_PRIVATE_TARGETS=true \
    CREDITD_WEBHOOKS__RETRY_SCHEDULE_SECONDS='[1,1,1]' \
    "$ROOT/.venv/bin/creditd" serve --host 127.0.0.1 --port "$PORT"
) > "$BUILD/server.log" 2>&1 &
SERVER_PID=$!
BASE_URL="http://127.0.0.1:$PORT"
for _ in $(seq 360); do  # up to 3 minutes: first start initdb's and migrates the database
  if curl -fsS -o /dev/null "$BASE_URL/readyz" 2>/dev/null; then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$BUILD/server.log"; fail "the server exited"; }
  sleep 0.5
done
curl -fsS -o /dev/null "$BASE_URL/readyz" || { cat "$BUILD/server.log"; fail "server not ready"; }
echo "ready at $BASE_URL"

export CREDITD_URL="$BASE_URL" CREDITD_ADMIN_TOKEN="$ADMIN_TOKEN"
CONTRACT_STRIPE_URL="$STRIPE_URL"
CONTRACT_STRIPE_SECRET_KEY="$(stripe_field secret_key)"
CONTRACT_STRIPE_WEBHOOK_SECRET="$(stripe_field webhook_secret)"
export CONTRACT_STRIPE_URL CONTRACT_STRIPE_SECRET_KEY CONTRACT_STRIPE_WEBHOOK_SECRET
step "run the Python flow"
(cd "$HERE" && PYTHONPATH="$PYCLIENT" "$PYENV/bin/python" python/flow.py) \
  || { tail -n 30 "$BUILD/server.log"; fail "Python flow"; }

step "run the TypeScript flow"
(cd "$HERE" && node build/ts/dist/typescript/flow.js) \
  || { tail -n 30 "$BUILD/server.log"; fail "TypeScript flow"; }

stop_server
trap - EXIT
printf '\ncontract: ok in %ss (lint, 2 generators without warnings, strict type checks, live flows)\n' \
  "$((SECONDS - started))"
