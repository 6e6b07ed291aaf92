#!/usr/bin/env bash
# CI entry point of the TypeScript SDK: install the locked dev dependencies, build, and run the
# tests against a live creditd (started by the tests from the repo's .venv: run `make install`
# in the repo root first). Works from a clean clone: dist/, build/ and node_modules/ are made here.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x ../../.venv/bin/creditd ]; then
  echo "sdk/typescript/ci.sh: ../../.venv/bin/creditd is missing; run 'make install' in the repo root first" >&2
  exit 2
fi
npm ci --no-audit --no-fund
npm test
