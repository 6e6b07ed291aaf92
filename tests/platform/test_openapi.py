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
