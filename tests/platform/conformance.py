"""Validation of real responses against the committed openapi/openapi.json (openapi-core).

A response conforms when its status code and content type are documented for its operation,
its body matches the documented schema with every documented property present and no
undocumented one, output amounts are exact decimals of at most 6 fractional digits, and a
problem+json body carries a problem code that the operation documents for that status, with
``type``, ``status``, ``instance`` and ``request_id`` telling the truth about the response.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_schema_validator import OAS31Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from app.core.errors import PROBLEM_CODES
from app.core.money import SCALE

SPEC_FILE = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
SPEC: dict[str, Any] = json.loads(SPEC_FILE.read_text())
# The walk's requests go to httpx's test host; they are judged as if sent to the spec's server.
SERVER: str = SPEC["servers"][0]["url"]
METHODS = ("get", "put", "post", "patch", "delete")
OPERATIONS: dict[str, tuple[str, str]] = {
    op["operationId"]: (method.upper(), path)
    for path, item in SPEC["paths"].items()
    for method, op in item.items()
    if method in METHODS
}


def _exact_json(value: bytes, **_parameters: str) -> Any:
    # Amounts are checked as the exact decimals the server sent, never through a float.
    return json.loads(value, parse_float=Decimal)


def _is_decimal_amount(value: Any) -> bool:
    """``format: decimal``: a finite number with at most 6 fractional digits."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return isinstance(exponent, int) and exponent >= -SCALE
    return True  # integers are exact; other types are judged by the schema's ``type``


VALIDATOR = OpenAPI.from_dict(
    SPEC,
    config=Config(
        extra_media_type_deserializers={
            "application/json": _exact_json,
            "application/problem+json": _exact_json,
        },
        extra_format_validators={"decimal": _is_decimal_amount},
        # Every documented property is sent, and nothing undocumented is.
        response_properties_default_policy="required",
        additional_properties_default_policy="forbid",
    ),
)


def _pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")


# Fewest parameters first: /v1/transactions/start is not /v1/transactions/{transaction_id}.
_TEMPLATES = sorted(
    (
        (path.count("{"), _pattern(path), method, op_id)
        for op_id, (method, path) in OPERATIONS.items()
    ),
    key=lambda template: template[0],
)


def operation_of(method: str, path: str) -> str | None:
    """The operationId that serves ``method path`` (literal segments win over parameters)."""
    for _, pattern, op_method, op_id in _TEMPLATES:
        if op_method == method.upper() and pattern.match(path):
            return op_id
    return None


class _OpenAPIRequest:
    """An httpx request as openapi-core reads it."""

    def __init__(self, request: httpx.Request) -> None:
        query = parse_qsl(request.url.query.decode(), keep_blank_values=True)
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )
        self.host_url = SERVER
        self.path = request.url.raw_path.decode("ascii").partition("?")[0]
        self.method = request.method.lower()
        self.body: bytes | None = request.content or None
        self.content_type = request.headers.get("content-type", "")


class _OpenAPIResponse:
    """An httpx response as openapi-core reads it."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(list(response.headers.items()))
        self.data: bytes | None = response.content


def documented_response(op_id: str, status: int) -> dict[str, Any]:
    method, path = OPERATIONS[op_id]
    responses: dict[str, Any] = SPEC["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{op_id}: status {status} is not documented"
    response: dict[str, Any] = responses[str(status)]
    return response


def check_response(response: httpx.Response) -> str:
    """Assert that ``response`` matches the spec; return its operationId."""
    request = response.request
    # Matched as sent: "/v1/users/a%2Fb" is users_get with the user id "a/b".
    raw_path = request.url.raw_path.decode("ascii").partition("?")[0]
    where = f"{request.method} {raw_path} -> {response.status_code}"
    op_id = operation_of(request.method, raw_path)
    assert op_id is not None, f"{where}: no operation in the spec serves this request"
    documented = documented_response(op_id, response.status_code)
    if response.headers.get("content-type") == "application/x-ndjson":
        _check_json_lines(response, documented, where)
        return op_id
    errors = list(
        VALIDATOR.iter_response_errors(_OpenAPIRequest(request), _OpenAPIResponse(response))
    )
    details = [f"{e!r} {getattr(e, '__cause__', None)!r}" for e in errors]
    assert not errors, f"{where} ({op_id}) does not match the spec: {details}\n{response.text}"
    if response.headers.get("content-type") == "application/problem+json":
        check_problem(response, codes=documented.get(PROBLEM_CODES))
    return op_id


def _check_json_lines(response: httpx.Response, documented: dict[str, Any], where: str) -> None:
    """A JSON-lines body: bytes whose ``contentSchema`` is one line's schema."""
    schema = documented["content"]["application/x-ndjson"]["schema"]["contentSchema"]
    validator = OAS31Validator(
        {**schema, "components": SPEC["components"]}, format_checker=OAS31Validator.FORMAT_CHECKER
    )
    lines = response.content.splitlines()
    assert lines, f"{where}: an empty JSON-lines body"
    for number, line in enumerate(lines, 1):
        errors = [e.message for e in validator.iter_errors(json.loads(line))]
        assert not errors, f"{where}: line {number} does not match the spec: {errors}"


_PROBLEM_SCHEMAS = {
    name: OAS31Validator(
        {**SPEC["components"]["schemas"][name], "components": SPEC["components"]},
        format_checker=OAS31Validator.FORMAT_CHECKER,
    )
    for name in ("Problem", "ValidationProblem")
}


def check_problem(response: httpx.Response, *, codes: list[str] | None = None) -> dict[str, Any]:
    """Assert that ``response`` is a truthful problem+json (of ``codes``, when given)."""
    assert response.headers["content-type"] == "application/problem+json", response.headers
    problem: dict[str, Any] = response.json()
    schema = "ValidationProblem" if response.status_code == 422 else "Problem"
    errors = [e.message for e in _PROBLEM_SCHEMAS[schema].iter_errors(problem)]
    assert not errors, (errors, problem)
    assert problem["status"] == response.status_code, problem
    assert problem["type"] == f"/errors/{problem['code']}", problem
    assert problem["instance"] == response.request.url.path, problem
    assert problem["request_id"] == response.headers["x-request-id"], problem
    if codes is not None:
        assert problem["code"] in codes, f"undocumented problem code: {problem} not in {codes}"
    return problem


class Recorder:
    """Which statuses each operation answered, across every checked response."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = defaultdict(set)

    def record(self, response: httpx.Response) -> None:
        self.seen[check_response(response)].add(response.status_code)
