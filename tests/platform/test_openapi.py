"""The committed OpenAPI document is generated from the app and is a contract clients can use."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import JSONResponse as StarletteJSONResponse

from app.cli import openapi_document
from app.core.http import JSONResponse, ProblemResponse

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
# Operations that no API key guards: probes, metrics, the document itself.
PUBLIC = {"/healthz", "/readyz", "/metrics"}
# Providers' webhooks: authenticated only by the provider's signature over the raw body, and
# deduplicated by the provider's event id (providers send no Idempotency-Key).
PROVIDER_WEBHOOKS = {"/v1/webhooks/stripe/{project_id}", "/v1/webhooks/razorpay/{project_id}"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(openapi_document())
    return document


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict)
    ]


def test_committed_openapi_matches_the_app() -> None:
    assert SPEC.read_text() == openapi_document(), "run `make openapi`"


def test_response_classes_stay_starlette_json_responses() -> None:
    # FastAPI publishes response_model schemas only for JSONResponse subclasses.
    assert issubclass(JSONResponse, StarletteJSONResponse)
    assert issubclass(ProblemResponse, StarletteJSONResponse)


def test_every_operation_has_an_id_a_summary_and_error_responses(spec: dict[str, Any]) -> None:
    seen: set[str] = set()
    for path, method, op in _operations(spec):
        assert op.get("operationId"), (method, path)
        assert op["operationId"] not in seen
        seen.add(op["operationId"])
        assert op.get("summary"), (method, path)
        if path.startswith("/v1/"):
            errors = {code for code in op["responses"] if code.startswith(("4", "5"))}
            assert errors, (method, path, "declares no error responses")


def test_every_success_response_has_a_real_schema(spec: dict[str, Any]) -> None:
    for path, method, op in _operations(spec):
        for code, response in op["responses"].items():
            if not code.startswith("2") or code == "204" or path == "/metrics":
                continue
            # JSON everywhere; the ledger export streams JSON lines, each with a real schema.
            media = "application/x-ndjson" if path == "/v1/ledger/export" else "application/json"
            assert list(response["content"]) == [media], (method, path, code)
            schema = response["content"][media]["schema"]
            if media == "application/x-ndjson":
                # Bytes, one JSON object per line: the line's schema is the contentSchema.
                assert (schema["type"], schema["format"]) == ("string", "binary"), schema
                assert schema["contentMediaType"] == media, schema
                schema = schema["contentSchema"]
            assert schema != {"type": "string"}, (method, path, code)
            one_of = schema.get("oneOf", [])
            assert (
                "$ref" in schema
                or schema.get("type") in ("object", "array")
                or (one_of and all("$ref" in s for s in one_of))
            ), (path, schema)


def test_every_error_response_is_problem_json(spec: dict[str, Any]) -> None:
    for path, method, op in _operations(spec):
        for code, response in op["responses"].items():
            if not code.startswith(("4", "5")) or path == "/readyz":
                continue
            assert list(response["content"]) == ["application/problem+json"], (method, path)
            ref = response["content"]["application/problem+json"]["schema"]["$ref"]
            wanted = "ValidationProblem" if code == "422" else "Problem"
            assert ref == f"#/components/schemas/{wanted}", (method, path, code)
    problem = spec["components"]["schemas"]["ValidationProblem"]
    assert "errors" in problem["required"]


def test_security_schemes_and_requirements(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyBearer"] == {
        **schemes["ApiKeyBearer"],
        "type": "http",
        "scheme": "bearer",
    }
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    assert schemes["OperatorToken"]["scheme"] == "bearer"
    for path, method, op in _operations(spec):
        if path in PUBLIC | PROVIDER_WEBHOOKS:
            assert op["security"] == [], (method, path)
        elif path.startswith("/v1/admin/"):
            assert op["security"] == [{"OperatorToken": []}], (method, path)
        else:
            assert op["security"] == [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}], (method, path)
            assert "401" in op["responses"], (method, path)
            headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
            assert "X-Project-Id" in headers, (method, path)


def test_header_parameters_are_plain_strings_generated_clients_can_send(
    spec: dict[str, Any],
) -> None:
    # openapi-python-client types a `format: uuid` header as UUID and passes the object to
    # httpx, which refuses it (TypeError): a header's schema is a string, at most patterned.
    seen = 0
    for path, method, op in _operations(spec):
        for param in op.get("parameters", []):
            if param["in"] == "header":
                seen += 1
                assert param["schema"]["type"] == "string", (method, path, param["name"])
                assert "format" not in param["schema"], (method, path, param["name"])
    assert seen > 50
    project_id = next(
        p for p in spec["paths"]["/v1/users"]["post"]["parameters"] if p["name"] == "X-Project-Id"
    )
    pattern = project_id["schema"]["pattern"]
    assert re.search(pattern, str(uuid.uuid4()))
    assert re.search(pattern, str(uuid.uuid4()).upper())
    assert not re.search(pattern, "not-a-project")


def test_every_post_takes_an_idempotency_key(spec: dict[str, Any]) -> None:
    posts = [(path, op) for path, method, op in _operations(spec) if method == "post"]
    assert len(posts) > 15
    for path, op in posts:
        if path in PROVIDER_WEBHOOKS:
            headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
            assert "Idempotency-Key" not in headers, path
            continue
        params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "header"}
        assert params["Idempotency-Key"]["schema"]["maxLength"] == 255, path
        assert "idempotency_key_reused" in op["responses"]["409"]["x-problem-codes"], path


def test_amount_inputs_take_exact_numbers_or_decimal_strings(spec: dict[str, Any]) -> None:
    amount = spec["components"]["schemas"]["CreditIn"]["properties"]["amount"]
    number, string = amount["anyOf"]
    assert number["type"] == "number"
    assert number["exclusiveMinimum"] == 0
    assert number["exclusiveMaximum"] == 10**15
    assert number["multipleOf"] == 0.000001
    assert string == {
        "type": "string",
        "pattern": r"^[0-9]{1,15}(\.[0-9]{1,6})?$",
        "not": {"pattern": r"^0+(\.0+)?$"},  # a positive amount is not "0" or "0.00"
    }
    balance = spec["components"]["schemas"]["Balance"]["properties"]["available"]
    assert balance["type"] == "number"
    assert balance["format"] == "decimal"


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    prefix = "#/components/schemas/"
    assert refs
    assert all(ref.startswith(prefix) for ref in refs), refs
    assert {ref.removeprefix(prefix) for ref in refs} <= set(spec["components"]["schemas"])


def test_shared_enums_and_token_counts_are_named_components(spec: dict[str, Any]) -> None:
    # Generated clients get one named type per concept (DenyReason, not StartOutReasonType0
    # and CheckOutReasonType0), and typed token counts on a transaction.
    schemas = spec["components"]["schemas"]

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    for name in ("DenyReason", "TransactionStatus", "ApiKeyScope", "EligibilityReason"):
        assert schemas[name]["type"] == "string", name
        assert schemas[name]["enum"], name
    for model in ("StartOut", "CheckOut"):
        assert schemas[model]["properties"]["reason"]["anyOf"][0] == ref("DenyReason")
    assert schemas["TransactionOut"]["properties"]["status"] == ref("TransactionStatus")
    for model in ("ApiKeyCreate", "ApiKeyOut", "BootstrapKey"):
        assert schemas[model]["properties"]["scopes"]["items"] == ref("ApiKeyScope"), model
    for field in ("provisional_tokens", "finalized_tokens"):
        tokens = schemas["TransactionOut"]["properties"][field]
        assert tokens["anyOf"] == [ref("TokenUsage"), {"type": "null"}], field


def test_list_limits_are_published(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/v1/users"]["get"]
    limit = next(p for p in op["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1
    assert limit["schema"]["maximum"] == 100


def test_every_v1_operation_documents_the_transient_503s_with_retry_after(
    spec: dict[str, Any],
) -> None:
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
