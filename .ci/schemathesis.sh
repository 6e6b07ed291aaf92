#!/usr/bin/env bash
# Fuzz a live `creditd serve` with schemathesis against the committed openapi/openapi.json.
#
# Fails on any server error, undocumented status code or content type, or response (body or
# headers) that does not match its schema; then `creditd verify` checks every money invariant
# of what the fuzzing left in the database.
#
# Assumes `make install` ran (.venv/bin/creditd and .venv/bin/schemathesis exist). The server
# runs its own embedded PostgreSQL in a temporary folder on a free port; both are stopped and
# removed at the end. Budget knobs (environment): SCHEMATHESIS_MAX_EXAMPLES (per operation
# and phase), SCHEMATHESIS_SEED, SCHEMATHESIS_WORKERS, SCHEMATHESIS_PHASES, SCHEMATHESIS_TIMEOUT;
# arguments are passed on to `schemathesis run` (--include-operation-id users_get, --report har).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
SEED="${SCHEMATHESIS_SEED:-20240607}"
WORKERS="${SCHEMATHESIS_WORKERS:-2}"
PHASES="${SCHEMATHESIS_PHASES:-examples,coverage,fuzzing,stateful}"
TIMEOUT="${SCHEMATHESIS_TIMEOUT:-1200}" # seconds: a stuck run fails instead of eating CI's time

work="$(mktemp -d -t creditd-schemathesis.XXXXXX)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        # SIGINT, not SIGTERM: uvicorn re-raises the signal it caught once it has shut down,
        # and a SIGTERM then ends the process before its exit hook stops the embedded
        # PostgreSQL (KeyboardInterrupt lets the hook run).
        kill -INT "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    local pidfile="$work/data/pg/postmaster.pid"
    if [[ -f "$pidfile" ]]; then # still up (the server died some other way): fast shutdown
        kill -INT "$(head -n 1 "$pidfile")" 2>/dev/null || true
        for _ in $(seq 1 50); do [[ -f "$pidfile" ]] || break; sleep 0.2; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:${port}"
export CREDITD_ENV=test
export CREDITD_DATA_DIR="$work/data"
CREDITD_ADMIN_TOKEN="st-operator-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')"
export CREDITD_ADMIN_TOKEN
export CREDITD_LOG__LEVEL=WARNING
# The fuzzer sends thousands of requests, many with bad credentials on purpose: lift the rate
# limits (tests/auth covers them) so every operation is exercised, not answered 429.
export CREDITD_API__RATE_LIMIT="1000000 per second"
export CREDITD_API__PROJECT_RATE_LIMIT="1000000 per second"
export CREDITD_API__AUTH_FAILURE_RATE_LIMIT="1000000 per second"
unset DATABASE_URL CREDITD_DATABASE_URL CREDITD_DATABASE__URL
# Provider APIs on a closed port: a configured provider's calls fail fast as 503
# provider_unavailable (documented) and the fuzzer never reaches the real Stripe or Razorpay.
export CREDITD_PAYMENTS__STRIPE_API_BASE="http://127.0.0.1:9"
export CREDITD_PAYMENTS__RAZORPAY_API_BASE="http://127.0.0.1:9"
export CREDITD_PAYMENTS__PROVIDER_TIMEOUT_SECONDS=2

.venv/bin/creditd serve --host 127.0.0.1 --port "$port" >"$work/server.log" 2>&1 &
server_pid=$!

# Waits for readiness, creates the fuzzer's project and prints SCHEMATHESIS_* exports.
if ! exports="$(.venv/bin/python .ci/schemathesis_setup.py "$base")"; then
    echo "schemathesis: creditd did not come up:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
eval "$exports"
export SCHEMATHESIS_HOOKS=.ci/schemathesis_hooks.py

echo "schemathesis: ${base}, max-examples ${MAX_EXAMPLES}, seed ${SEED}, workers ${WORKERS}, phases ${PHASES}"
started=$SECONDS
status=0
# The config file gives each security scheme its credential (project key / operator token).
timeout "$TIMEOUT" .venv/bin/schemathesis --config-file .ci/schemathesis.toml run openapi/openapi.json \
    --url "$base" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --phases "$PHASES" \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers "$WORKERS" \
    --generation-database none \
    --request-timeout 30 \
    --no-color \
    "$@" \
    || status=$?
echo "schemathesis: finished in $((SECONDS - started)) s (exit ${status})"

if [[ $status -ne 0 ]]; then
    echo "--- server log (errors) ---" >&2
    grep -iE 'error|exception|traceback' "$work/server.log" | tail -n 50 >&2 || true
    exit "$status"
fi

# The fuzzing moved real money: every invariant must still hold.
.venv/bin/creditd verify
