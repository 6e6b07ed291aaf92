"""The published contract's shared parts: security schemes, common headers, problem schemas.

Routes declare their own request, response and error schemas; the route class
(``app.routing``) adds what every operation of its kind shares — its security requirement,
the ``Idempotency-Key`` and ``X-Project-Id`` headers — and ``build_openapi`` adds the
components those declarations point at.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.core.errors import FieldError, Problem, ValidationProblem

API_KEY_BEARER = "ApiKeyBearer"
API_KEY_HEADER = "ApiKeyHeader"
OPERATOR_TOKEN = "OperatorToken"  # noqa: S105 - a scheme name, not a secret

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    API_KEY_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "A project API key: `Authorization: Bearer <key>`.",
    },
    API_KEY_HEADER: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A project API key in the `X-API-Key` header (instead of Bearer).",
    },
    OPERATOR_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator token (setting `CREDITD_ADMIN_TOKEN`).",
    },
}

# Either header carries a project key (a list of requirements means "any one of them").
API_KEY_SECURITY: list[dict[str, list[str]]] = [{API_KEY_BEARER: []}, {API_KEY_HEADER: []}]
OPERATOR_SECURITY: list[dict[str, list[str]]] = [{OPERATOR_TOKEN: []}]

IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe: the same key with the same body replays the first response"
        " (header `Idempotent-Replayed: true`) for at least 24 h; a different body answers 409"
        " `idempotency_key_reused`; a first attempt still running answers 409"
        " `idempotency_key_in_flight`. A 5xx does not hold the key."
    ),
    # Printable ASCII without surrounding spaces (HTTP strips them): what every client can send
    # and the server keeps as is.
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[!-~]([ -~]*[!-~])?$",
    },
}

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

PROJECT_ID_PARAMETER: dict[str, Any] = {
    "name": "X-Project-Id",
    "in": "header",
    "required": False,
    "description": (
        "When present, must be the API key's project id, a UUID (else 403 project_mismatch)."
    ),
    # A pattern, not "format: uuid": openapi-python-client types a uuid header as UUID and
    # puts the object into the headers as-is, which httpx refuses (TypeError).
    "schema": {"type": "string", "pattern": UUID_PATTERN},
}


def scope_note(scopes: frozenset[str]) -> str:
    allowed = " or ".join(f"`{s}`" for s in sorted({"admin", *scopes}))
    return f"Requires an API key with scope {allowed}."


def _problem_schemas() -> dict[str, Any]:
    ref = "#/components/schemas/{model}"
    schemas: dict[str, Any] = {}
    for model in (Problem, FieldError, ValidationProblem):
        schema = model.model_json_schema(ref_template=ref, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _optional_bodies_without_null(document: dict[str, Any]) -> None:
    """An optional body (``body: X | None = None``) is published as ``X`` with the body not
    required, not as ``anyOf [X, null]``: the generated Python client (openapi-python-client)
    cannot send a call without such a body, and "no body" is what ``required: false`` says."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            if not body or body.get("required"):
                continue
            for media in body.get("content", {}).values():
                variants = media.get("schema", {}).get("anyOf", [])
                refs = [v for v in variants if v != {"type": "null"}]
                if len(variants) == 2 and len(refs) == 1 and "$ref" in refs[0]:
                    media["schema"] = refs[0]


def _json_lines_schemas(document: dict[str, Any]) -> None:
    """A JSON-lines response (``application/x-ndjson``) is published as what its body is: bytes
    (``type: string, format: binary``), one JSON object per line, with the schema of one line
    as the JSON Schema ``contentSchema`` (and ``contentMediaType``).

    Not the line's schema as the body's ``schema``: the body is not one JSON value, and the
    generated clients believed it (issue 11, contract): @hey-api/openapi-ts typed the answer as
    one line object while its fetch client hands back a ``Blob`` for this media type, and
    openapi-python-client (mapping the media type to bytes) generated a parser that fails on
    every answer. As bytes, the TypeScript client types it ``Blob | File`` (what it returns)
    and the Python client ``File`` (the raw body); the line types stay generated from
    ``components`` (``LedgerExportEntry``, ``LedgerExportEnd``)."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                media = response.get("content", {}).get("application/x-ndjson")
                if not media:
                    continue
                line = dict(media.get("schema", {}))
                line.pop("type", None)  # FastAPI types every non-JSON body as a string
                line.pop("title", None)
                media["schema"] = {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        "JSON lines: one object per line (its schema: `contentSchema`), the"
                        " entries, then a `ledger_export_end` trailer"
                    ),
                    "contentMediaType": "application/x-ndjson",
                    "contentSchema": line,
                }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``, cached on it (FastAPI's ``app.openapi`` hook)."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
            webhooks=app.webhooks.routes,
            tags=app.openapi_tags,
            servers=app.servers,
            license_info=app.license_info,
        )
        _optional_bodies_without_null(document)
        _json_lines_schemas(document)
        components = document.setdefault("components", {})
        components.setdefault("schemas", {}).update(_problem_schemas())
        components["schemas"] = dict(sorted(components["schemas"].items()))
        components["securitySchemes"] = SECURITY_SCHEMES
        app.openapi_schema = document
    return app.openapi_schema
