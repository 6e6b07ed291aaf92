"""The committed OpenAPI document is generated from the app and describes every operation."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import openapi_document

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    assert SPEC.read_text() == openapi_document(), "run `make openapi`"


def test_every_operation_has_an_id_a_summary_and_error_responses() -> None:
    spec = json.loads(openapi_document())
    seen: set[str] = set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId"), (method, path)
            assert op["operationId"] not in seen
            seen.add(op["operationId"])
            assert op.get("summary"), (method, path)
            if path.startswith("/v1/"):
                errors = {code for code in op["responses"] if code.startswith(("4", "5"))}
                assert errors, (method, path, "declares no error responses")


def test_amounts_are_documented_as_json_numbers() -> None:
    spec = json.loads(openapi_document())
    amount = spec["components"]["schemas"]["CreditIn"]["properties"]["amount"]
    assert amount["type"] == "number"


def test_every_v1_operation_documents_the_transient_503s_with_retry_after() -> None:
    spec = json.loads(openapi_document())
    slugs = (
        "account_busy",
        "commit_outcome_unknown",
        "database_unavailable",
        "deadlock_detected",
        "lock_timeout",
        "pool_timeout",
        "serialization_failure",
        "statement_timeout",
    )
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            unavailable = op["responses"].get("503")
            assert unavailable is not None, (method, path)
            assert all(slug in unavailable["description"] for slug in slugs), (method, path)
            assert "Retry-After" in unavailable["headers"], (method, path)
            assert "application/problem+json" in unavailable["content"]
