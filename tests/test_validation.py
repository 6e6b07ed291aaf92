"""Bad input on every money field (and the token, TTL and envelope checks) → 422 problem+json.

Bodies are sent as raw bytes so that NaN, Infinity, 1e30 and friends reach the server exactly
as written. After every rejected request the project's observable state must be unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import Project

PROBLEM_JSON = "application/problem+json"
USER = "u_1"
MAX_AMOUNT = "999999999999999.999999"


def exact(r: httpx.Response) -> Any:
    """The response body with every JSON number with a fraction parsed as an exact Decimal."""
    return json.loads(r.text, parse_float=Decimal)


async def send(p: Project, method: str, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return await p.client.request(
        method,
        path,
        content=raw,
        headers={**p.headers, "content-type": "application/json", **headers},
    )


def assert_validation_problem(r: httpx.Response, loc: list[str] | None = None) -> dict[str, Any]:
    """A 422 validation_error problem; with ``loc``, one error points exactly there."""
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["type"] == "/errors/validation_error"
    assert body["code"] == "validation_error"
    assert body["status"] == 422
    assert isinstance(body["errors"], list)
    assert body["errors"], body
    if loc is not None:
        locs = [e["loc"] for e in body["errors"]]
        assert loc in locs, locs
    return body


@dataclass
class Env:
    p: Project
    completed_id: str  # credits_used 200
    pending_id: str  # hold 1


@pytest.fixture
async def env(project: Project) -> Env:
    p = project
    await p.price("_default", 1, 10)
    await p.price("gpt-4o", 2, 20, cached_input_price_per_1k=0.5, request_price=0.01)
    await p.user(USER, credits=1000)
    r = await p.post(
        "/v1/transactions/start",
        {"user_id": USER, "model": "_default", "provisional_tokens": {"output_tokens": 100}},
    )
    assert r.status_code == 201, r.text
    completed = r.json()["transaction_id"]
    r = await p.post(
        f"/v1/transactions/{completed}/complete",
        {"success": True, "finalized_tokens": {"output_tokens": 20000}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["credits_used"] == 200
    r = await p.post(
        "/v1/transactions/start",
        {"user_id": USER, "model": "_default", "provisional_tokens": {"input_tokens": 1000}},
    )
    assert r.status_code == 201, r.text
    return Env(p=p, completed_id=completed, pending_id=r.json()["transaction_id"])


async def snapshot(env: Env) -> dict[str, Any]:
    """Balances, ledger, grants, prices, transactions, settings and events of the project."""
    out: dict[str, Any] = {}
    for name, path in {
        "users": "/v1/users?limit=100",
        "ledger": f"/v1/users/{USER}/ledger?limit=100",
        "grants": f"/v1/users/{USER}/grants?limit=100",
        "models": "/v1/models?limit=100",
        "transactions": "/v1/transactions?limit=100",
        "project": "/v1/project",
        "events": "/v1/events?limit=100",
    }.items():
        r = await env.p.get(path)
        assert r.status_code == 200, (path, r.text)
        out[name] = exact(r)
    return out


# --- money fields ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MoneyField:
    method: str
    path: str  # may contain {completed}
    template: str  # JSON body with {v} where the value goes
    loc: list[str]
    positive: bool  # else non-negative
    required: bool  # else null means "absent"

    def url(self, env: Env) -> str:
        return self.path.format(completed=env.completed_id)

    def body(self, literal: str) -> bytes:
        return self.template.replace("{v}", literal).encode()


MONEY_FIELDS = {
    "credits.amount": MoneyField(
        "POST", f"/v1/users/{USER}/credits", '{"amount": {v}}', ["body", "amount"], True, True
    ),
    "debits.amount": MoneyField(
        "POST", f"/v1/users/{USER}/debits", '{"amount": {v}}', ["body", "amount"], True, True
    ),
    "refund.amount": MoneyField(
        "POST",
        "/v1/transactions/{completed}/refund",
        '{"amount": {v}}',
        ["body", "amount"],
        True,
        False,
    ),
    "models.input_price_per_1k": MoneyField(
        "PUT",
        "/v1/models/gpt-4o",
        '{"input_price_per_1k": {v}, "output_price_per_1k": 1}',
        ["body", "input_price_per_1k"],
        False,
        True,
    ),
    "models.output_price_per_1k": MoneyField(
        "PUT",
        "/v1/models/gpt-4o",
        '{"input_price_per_1k": 1, "output_price_per_1k": {v}}',
        ["body", "output_price_per_1k"],
        False,
        True,
    ),
    "models.cached_input_price_per_1k": MoneyField(
        "PUT",
        "/v1/models/gpt-4o",
        '{"input_price_per_1k": 1, "output_price_per_1k": 1, "cached_input_price_per_1k": {v}}',
        ["body", "cached_input_price_per_1k"],
        False,
        False,
    ),
    "models.request_price": MoneyField(
        "PUT",
        "/v1/models/gpt-4o",
        '{"input_price_per_1k": 1, "output_price_per_1k": 1, "request_price": {v}}',
        ["body", "request_price"],
        False,
        False,
    ),
    "check.amount": MoneyField(
        "POST",
        "/v1/check",
        '{"user_id": "' + USER + '", "amount": {v}}',
        ["body", "amount"],
        False,
        False,
    ),
    "project.low_balance_thresholds": MoneyField(
        "PATCH",
        "/v1/project",
        '{"settings": {"low_balance_thresholds": [{v}]}}',
        ["body", "settings", "low_balance_thresholds", "0"],
        True,
        True,
    ),
}

# Invalid for every money field.
ALWAYS_BAD = {
    "minus_one": "-1",
    "minus_micro": "-0.000001",
    "nan": "NaN",
    "infinity": "Infinity",
    "minus_infinity": "-Infinity",
    "1e30": "1e30",
    "1e15": "1e15",
    "int_10_pow_15": "1000000000000000",
    "just_over_max": "1000000000000000.000000",
    "seven_decimals": "0.1234567",
    "seven_decimals_exponent": "1e-7",
    "string_nan": '"NaN"',
    "string_exponent": '"1e3"',
    "string_spaces": '" 10"',
    "string_empty": '""',
    "string_seven_decimals": '"0.1234567"',
    "string_too_large": '"1000000000000000"',
    "string_minus_one": '"-1"',
    "true": "true",
    "false": "false",
    "empty_list": "[]",
    "empty_object": "{}",
}
ZERO_AND_NULL = {"zero": "0", "zero_decimal": "0.0", "null": "null"}


def _bad_cases() -> list[Any]:
    cases = []
    for field_name, field in MONEY_FIELDS.items():
        bad = dict(ALWAYS_BAD)
        if field.positive:
            bad["zero"] = "0"
            bad["zero_decimal"] = "0.0"
        if field.required:
            bad["null"] = "null"
        for case_name, literal in bad.items():
            cases.append(pytest.param(field_name, literal, id=f"{field_name}-{case_name}"))
    return cases


@pytest.mark.parametrize(("field_name", "literal"), _bad_cases())
async def test_money_field_rejects_bad_value(env: Env, field_name: str, literal: str) -> None:
    field = MONEY_FIELDS[field_name]
    before = await snapshot(env)
    r = await send(env.p, field.method, field.url(env), field.body(literal))
    assert_validation_problem(r, field.loc)
    assert await snapshot(env) == before


VALID_EDGES = {
    "micro": ("0.000001", Decimal("0.000001")),
    "max": (MAX_AMOUNT, Decimal(MAX_AMOUNT)),
    "exponent_form": ("1.5e2", Decimal(150)),
    "trailing_zeros": ("10.100000", Decimal("10.1")),
    "integer": ("42", Decimal(42)),
}

# Amounts may also be sent as decimal strings, for clients whose numbers are binary floats.
VALID_STRINGS = {
    "micro": '"0.000001"',
    "tenth": '"0.1"',
    "max": f'"{MAX_AMOUNT}"',
    "integer": '"42"',
    "leading_zero": '"007.5"',
}


@pytest.mark.parametrize(
    ("field_name", "literal"),
    [
        pytest.param(f, v, id=f"{f}-{k}")
        for f in MONEY_FIELDS
        for k, v in VALID_STRINGS.items()
        if f != "refund.amount"  # refunds are bounded by the charge; covered below
    ],
)
async def test_money_field_accepts_decimal_string(env: Env, field_name: str, literal: str) -> None:
    field = MONEY_FIELDS[field_name]
    if field_name == "debits.amount":
        await _fund(env.p, str(Decimal(literal.strip('"'))))
    r = await send(env.p, field.method, field.url(env), field.body(literal))
    assert r.status_code in (200, 201), r.text


async def test_decimal_string_amount_is_exactly_the_number(env: Env) -> None:
    for text in ("0.1", "0.2", "123456789012345.123456"):
        as_string = await send(
            env.p, "POST", f"/v1/users/{USER}/credits", f'{{"amount": "{text}"}}'.encode()
        )
        as_number = await send(
            env.p, "POST", f"/v1/users/{USER}/credits", f'{{"amount": {text}}}'.encode()
        )
        assert as_string.status_code == as_number.status_code == 201, as_string.text
        assert exact(as_string)["amount"] == exact(as_number)["amount"] == Decimal(text)
        assert as_string.json()["amount"] == as_number.json()["amount"]
        assert b'"amount":' + text.encode() + b"," in as_string.content


async def _fund(p: Project, amount: str) -> None:
    r = await send(p, "POST", f"/v1/users/{USER}/credits", f'{{"amount": {amount}}}'.encode())
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("literal", [v[0] for v in VALID_EDGES.values()], ids=list(VALID_EDGES))
async def test_credit_amount_accepts_valid_edge(env: Env, literal: str) -> None:
    before = Decimal((exact(await env.p.get(f"/v1/users/{USER}")))["balance"]["available"])
    r = await send(env.p, "POST", f"/v1/users/{USER}/credits", f'{{"amount": {literal}}}'.encode())
    assert r.status_code == 201, r.text
    body = exact(r)
    assert body["amount"] == Decimal(literal)
    assert body["remaining"] == Decimal(literal)
    assert body["balance"] == before + Decimal(literal)
    grants = exact(await env.p.get(f"/v1/users/{USER}/grants?limit=100"))["data"]
    assert Decimal(literal) in [g["amount"] for g in grants]


@pytest.mark.parametrize("literal", [v[0] for v in VALID_EDGES.values()], ids=list(VALID_EDGES))
async def test_debit_amount_accepts_valid_edge(env: Env, literal: str) -> None:
    await _fund(env.p, literal)
    before = exact(await env.p.get(f"/v1/users/{USER}"))["balance"]["available"]
    r = await send(env.p, "POST", f"/v1/users/{USER}/debits", f'{{"amount": {literal}}}'.encode())
    assert r.status_code == 201, r.text
    body = exact(r)
    assert body["amount"] == Decimal(literal)
    assert body["balance"] == Decimal(before) - Decimal(literal)


@pytest.mark.parametrize("literal", [v[0] for v in VALID_EDGES.values()], ids=list(VALID_EDGES))
async def test_refund_amount_accepts_valid_edge(env: Env, literal: str) -> None:
    # A completed transaction whose charge is the largest amount there is.
    p = env.p
    put = f'{{"input_price_per_1k": {MAX_AMOUNT}, "output_price_per_1k": 0}}'.encode()
    assert (await send(p, "PUT", "/v1/models/big", put)).status_code == 200
    await _fund(p, MAX_AMOUNT)
    r = await p.post(
        "/v1/usage", {"user_id": USER, "model": "big", "tokens": {"input_tokens": 1000}}
    )
    assert r.status_code == 201, r.text
    assert exact(r)["credits_used"] == Decimal(MAX_AMOUNT)
    txn = r.json()["transaction_id"]
    balance = exact(r)["balance"]

    r = await send(p, "POST", f"/v1/transactions/{txn}/refund", f'{{"amount": {literal}}}'.encode())
    assert r.status_code == 201, r.text
    body = exact(r)
    assert body["amount"] == Decimal(literal)
    assert body["refunded_total"] == Decimal(literal)
    assert body["balance"] == Decimal(balance) + Decimal(literal)


MODEL_PRICE_FIELDS = [
    "input_price_per_1k",
    "output_price_per_1k",
    "cached_input_price_per_1k",
    "request_price",
]


@pytest.mark.parametrize("price_field", MODEL_PRICE_FIELDS)
@pytest.mark.parametrize(
    "literal",
    ["0", *(v[0] for v in VALID_EDGES.values())],
    ids=["zero", *VALID_EDGES],
)
async def test_model_price_accepts_valid_edge(env: Env, price_field: str, literal: str) -> None:
    prices = dict.fromkeys(MODEL_PRICE_FIELDS, "1") | {price_field: literal}
    raw = "{" + ", ".join(f'"{k}": {v}' for k, v in prices.items()) + "}"
    r = await send(env.p, "PUT", "/v1/models/edge", raw.encode())
    assert r.status_code == 200, r.text
    assert exact(r)[price_field] == Decimal(literal)
    stored = exact(await env.p.get("/v1/models/edge"))
    assert stored[price_field] == Decimal(literal)
    assert all(stored[f] == 1 for f in MODEL_PRICE_FIELDS if f != price_field)


@pytest.mark.parametrize(
    "literal",
    ["0", *(v[0] for v in VALID_EDGES.values())],
    ids=["zero", *VALID_EDGES],
)
async def test_check_amount_accepts_valid_edge(env: Env, literal: str) -> None:
    before = await snapshot(env)
    raw = f'{{"user_id": "{USER}", "amount": {literal}}}'.encode()
    r = await send(env.p, "POST", "/v1/check", raw)
    assert r.status_code == 200, r.text
    body = exact(r)
    assert body["required"] == Decimal(literal)
    assert body["allowed"] is (Decimal(literal) <= body["available"])
    assert await snapshot(env) == before


@pytest.mark.parametrize("literal", [v[0] for v in VALID_EDGES.values()], ids=list(VALID_EDGES))
async def test_low_balance_threshold_accepts_valid_edge(env: Env, literal: str) -> None:
    raw = f'{{"settings": {{"low_balance_thresholds": [{literal}]}}}}'.encode()
    r = await send(env.p, "PATCH", "/v1/project", raw)
    assert r.status_code == 200, r.text
    assert exact(r)["settings"]["low_balance_thresholds"] == [Decimal(literal)]
    stored = exact(await env.p.get("/v1/project"))
    assert stored["settings"]["low_balance_thresholds"] == [Decimal(literal)]


@pytest.mark.parametrize(
    "literal",
    ["1e99999999999999999999", "1" + "0" * 5000, "1e-99999999999999999999"],
    ids=["huge_exponent", "5000_digit_integer", "tiny_exponent"],
)
async def test_credit_amount_beyond_the_json_parser_limits_is_422(env: Env, literal: str) -> None:
    """Too large / too precise however it is written: still a 422, never a 400 or 500."""
    before = await snapshot(env)
    raw = f'{{"amount": {literal}}}'.encode()
    r = await send(env.p, "POST", f"/v1/users/{USER}/credits", raw)
    assert_validation_problem(r)
    assert await snapshot(env) == before


async def test_low_balance_thresholds_reject_one_bad_item_among_good_ones(env: Env) -> None:
    before = await snapshot(env)
    raw = b'{"settings": {"low_balance_thresholds": [10, 5, -1]}}'
    r = await send(env.p, "PATCH", "/v1/project", raw)
    assert_validation_problem(r, ["body", "settings", "low_balance_thresholds", "2"])
    assert await snapshot(env) == before


async def test_money_error_names_the_field_and_the_reason(env: Env) -> None:
    r = await send(env.p, "POST", f"/v1/users/{USER}/credits", b'{"amount": 0.1234567}')
    body = assert_validation_problem(r, ["body", "amount"])
    assert "amount" in body["detail"]
    assert "6 fractional digits" in body["detail"]


# --- token counts ---------------------------------------------------------------------------

TOKEN_FIELDS = ["input_tokens", "output_tokens", "cached_input_tokens"]
BAD_TOKENS = {
    "negative": "-1",
    "fraction": "1.5",
    "string": '"10"',
    "over_max": str(10**12 + 1),
    "null": "null",
    "true": "true",
    "nan": "NaN",
}


@dataclass(frozen=True)
class TokenTarget:
    path: str
    template: str  # {f} = token field, {v} = value
    container: str

    def url(self, env: Env) -> str:
        return self.path.format(pending=env.pending_id)


TOKEN_TARGETS = {
    "start": TokenTarget(
        "/v1/transactions/start",
        '{"user_id": "' + USER + '", "model": "gpt-4o", "provisional_tokens": {"{f}": {v}}}',
        "provisional_tokens",
    ),
    "complete": TokenTarget(
        "/v1/transactions/{pending}/complete",
        '{"success": true, "finalized_tokens": {"{f}": {v}}}',
        "finalized_tokens",
    ),
    "usage": TokenTarget(
        "/v1/usage",
        '{"user_id": "' + USER + '", "model": "gpt-4o", "tokens": {"{f}": {v}}}',
        "tokens",
    ),
    "check": TokenTarget(
        "/v1/check",
        '{"user_id": "' + USER + '", "model": "gpt-4o", "provisional_tokens": {"{f}": {v}}}',
        "provisional_tokens",
    ),
}


@pytest.mark.parametrize("value", list(BAD_TOKENS.values()), ids=list(BAD_TOKENS))
@pytest.mark.parametrize("token_field", TOKEN_FIELDS)
@pytest.mark.parametrize("target_name", list(TOKEN_TARGETS))
async def test_token_count_rejects_bad_value(
    env: Env, target_name: str, token_field: str, value: str
) -> None:
    target = TOKEN_TARGETS[target_name]
    before = await snapshot(env)
    raw = target.template.replace("{f}", token_field).replace("{v}", value).encode()
    r = await send(env.p, "POST", target.url(env), raw)
    assert_validation_problem(r, ["body", target.container, token_field])
    assert await snapshot(env) == before


@pytest.mark.parametrize("token_field", TOKEN_FIELDS)
async def test_token_count_accepts_the_maximum(env: Env, token_field: str) -> None:
    raw = TOKEN_TARGETS["check"].template.replace("{f}", token_field).replace("{v}", str(10**12))
    r = await send(env.p, "POST", "/v1/check", raw.encode())
    assert r.status_code == 200, r.text
    price = {
        "input_tokens": Decimal(2),
        "output_tokens": Decimal(20),
        "cached_input_tokens": Decimal("0.5"),
    }
    # 10**12 tokens at the gpt-4o price per 1k, plus its request price.
    assert exact(r)["required"] == price[token_field] * 10**9 + Decimal("0.01")


# --- hold TTL -------------------------------------------------------------------------------

BAD_TTLS = {
    "zero": "0",
    "negative": "-1",
    "fraction": "1.5",
    "string": '"60"',
    "true": "true",
    "over_a_week": "604801",
}


@pytest.mark.parametrize("value", list(BAD_TTLS.values()), ids=list(BAD_TTLS))
async def test_start_hold_ttl_rejects_bad_value(env: Env, value: str) -> None:
    before = await snapshot(env)
    raw = f'{{"user_id": "{USER}", "model": "gpt-4o", "hold_ttl_seconds": {value}}}'
    r = await send(env.p, "POST", "/v1/transactions/start", raw.encode())
    assert_validation_problem(r, ["body", "hold_ttl_seconds"])
    assert await snapshot(env) == before


@pytest.mark.parametrize("value", [*BAD_TTLS.values(), "null"], ids=[*BAD_TTLS, "null"])
async def test_extend_hold_ttl_rejects_bad_value(env: Env, value: str) -> None:
    before = await snapshot(env)
    raw = f'{{"hold_ttl_seconds": {value}}}'.encode()
    r = await send(env.p, "POST", f"/v1/transactions/{env.pending_id}/extend", raw)
    assert_validation_problem(r, ["body", "hold_ttl_seconds"])
    assert await snapshot(env) == before


async def test_extend_hold_ttl_accepts_the_maximum(env: Env) -> None:
    raw = b'{"hold_ttl_seconds": 604800}'
    r = await send(env.p, "POST", f"/v1/transactions/{env.pending_id}/extend", raw)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"


# --- unknown fields -------------------------------------------------------------------------

EXTRA_FIELD_BODIES: dict[str, tuple[str, str, dict[str, Any], list[str]]] = {
    "credits": ("POST", f"/v1/users/{USER}/credits", {"amount": 1}, ["body"]),
    "debits": ("POST", f"/v1/users/{USER}/debits", {"amount": 1}, ["body"]),
    "refund": ("POST", "/v1/transactions/{completed}/refund", {"amount": 1}, ["body"]),
    "start": ("POST", "/v1/transactions/start", {"user_id": USER, "model": "gpt-4o"}, ["body"]),
    "start.provisional_tokens": (
        "POST",
        "/v1/transactions/start",
        {"user_id": USER, "model": "gpt-4o", "provisional_tokens": {"input_tokens": 1}},
        ["body", "provisional_tokens"],
    ),
    "complete": ("POST", "/v1/transactions/{pending}/complete", {"success": True}, ["body"]),
    "extend": ("POST", "/v1/transactions/{pending}/extend", {"hold_ttl_seconds": 60}, ["body"]),
    "usage": (
        "POST",
        "/v1/usage",
        {"user_id": USER, "model": "gpt-4o", "tokens": {"input_tokens": 1}},
        ["body"],
    ),
    "check": ("POST", "/v1/check", {"user_id": USER, "amount": 1}, ["body"]),
    "models": (
        "PUT",
        "/v1/models/gpt-4o",
        {"input_price_per_1k": 1, "output_price_per_1k": 1},
        ["body"],
    ),
    "users.create": ("POST", "/v1/users", {"id": "u_extra"}, ["body"]),
    "users.patch": ("PATCH", f"/v1/users/{USER}", {"metadata": {"a": 1}}, ["body"]),
    "project": ("PATCH", "/v1/project", {"name": "renamed"}, ["body"]),
    "project.settings": (
        "PATCH",
        "/v1/project",
        {"settings": {"auto_create_users": False}},
        ["body", "settings"],
    ),
    "api_keys": ("POST", "/v1/api-keys", {"name": "k", "scopes": ["read"]}, ["body"]),
}


def _with_extra(body: dict[str, Any], where: list[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    target = out
    for part in where[1:]:
        target = target[part]
    target["bogus"] = 1
    return dict(out)


@pytest.mark.parametrize("name", list(EXTRA_FIELD_BODIES))
async def test_unknown_field_is_rejected(env: Env, name: str) -> None:
    method, path, body, where = EXTRA_FIELD_BODIES[name]
    url = path.format(completed=env.completed_id, pending=env.pending_id)
    before = await snapshot(env)
    r = await send(env.p, method, url, json.dumps(_with_extra(body, where)).encode())
    problem = assert_validation_problem(r, [*where, "bogus"])
    assert any(e["type"] == "extra_forbidden" for e in problem["errors"])
    assert await snapshot(env) == before


@pytest.mark.parametrize("name", list(EXTRA_FIELD_BODIES))
async def test_the_same_body_without_the_unknown_field_is_accepted(env: Env, name: str) -> None:
    """Control for the test above: only `bogus` made those requests invalid."""
    method, path, body, _ = EXTRA_FIELD_BODIES[name]
    url = path.format(completed=env.completed_id, pending=env.pending_id)
    r = await send(env.p, method, url, json.dumps(body).encode())
    assert r.is_success, r.text


# --- malformed bodies -----------------------------------------------------------------------

MALFORMED = {
    "truncated": b'{"amount": ',
    "unquoted_key": b"{amount: 1}",
    "single_quotes": b"{'amount': 1}",
    "trailing_garbage": b'{"amount": 1} x',
    "trailing_comma": b'{"amount": 1,}',
    "not_utf8": b'{"amount": 1, "reason": "\xff\xfe"}',
    "bare_word": b"amount",
    "minus_nan": b'{"amount": -NaN}',
}
MALFORMED_ROUTES = {
    "credits": ("POST", f"/v1/users/{USER}/credits"),
    "start": ("POST", "/v1/transactions/start"),
    "models": ("PUT", "/v1/models/gpt-4o"),
    "project": ("PATCH", "/v1/project"),
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
@pytest.mark.parametrize("route", list(MALFORMED_ROUTES))
async def test_malformed_json_is_a_validation_problem(env: Env, route: str, raw: bytes) -> None:
    method, path = MALFORMED_ROUTES[route]
    before = await snapshot(env)
    r = await send(env.p, method, path, raw)
    assert_validation_problem(r)
    assert await snapshot(env) == before


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'"amount"', b"1", b"null", b""],
    ids=["list", "string", "number", "null", "empty"],
)
async def test_non_object_body_is_a_validation_problem(env: Env, raw: bytes) -> None:
    before = await snapshot(env)
    r = await send(env.p, "POST", f"/v1/users/{USER}/credits", raw)
    assert_validation_problem(r)
    assert await snapshot(env) == before


# --- idempotency key ------------------------------------------------------------------------


BAD_IDEMPOTENCY_KEYS = pytest.mark.parametrize("key", ["k" * 256, ""], ids=["256_chars", "empty"])


@BAD_IDEMPOTENCY_KEYS
async def test_bad_idempotency_key_is_rejected(env: Env, key: str) -> None:
    before = await snapshot(env)
    r = await send(
        env.p, "POST", f"/v1/users/{USER}/credits", b'{"amount": 5}', **{"Idempotency-Key": key}
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert r.json()["type"] == "/errors/validation_error"
    assert r.json()["code"] == "validation_error"
    assert await snapshot(env) == before


@BAD_IDEMPOTENCY_KEYS
async def test_bad_idempotency_key_problem_lists_its_errors(env: Env, key: str) -> None:
    """API.md: a `validation_error` problem carries `errors: [...]`."""
    r = await send(
        env.p, "POST", f"/v1/users/{USER}/credits", b'{"amount": 5}', **{"Idempotency-Key": key}
    )
    assert_validation_problem(r)


async def test_idempotency_key_of_255_chars_is_accepted(env: Env) -> None:
    headers = {"Idempotency-Key": "k" * 255}
    first = await send(env.p, "POST", f"/v1/users/{USER}/credits", b'{"amount": 5}', **headers)
    assert first.status_code == 201, first.text
    again = await send(env.p, "POST", f"/v1/users/{USER}/credits", b'{"amount": 5}', **headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content


# --- unknown model --------------------------------------------------------------------------

UNKNOWN_MODEL_CALLS = {
    "start": (
        "/v1/transactions/start",
        {"user_id": "u_new", "model": "gpt-5", "provisional_tokens": {"input_tokens": 10}},
    ),
    "usage": ("/v1/usage", {"user_id": "u_new", "model": "gpt-5", "tokens": {"input_tokens": 10}}),
    "check": ("/v1/check", {"user_id": "u_new", "model": "gpt-5"}),
}


@pytest.mark.parametrize("call", list(UNKNOWN_MODEL_CALLS))
async def test_unknown_model_without_default_price_is_422_unknown_model(
    project: Project, call: str
) -> None:
    await project.price("gpt-4o", 1, 1)  # a model of its own, but no `_default`
    path, body = UNKNOWN_MODEL_CALLS[call]
    r = await project.post(path, body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    problem = r.json()
    assert problem["type"] == "/errors/unknown_model"
    assert problem["code"] == "unknown_model"
    assert problem["status"] == 422
    # Nothing happened: the usage call did not even auto-create its user.
    assert (await project.get("/v1/users/u_new")).status_code == 404
    assert (await project.get("/v1/transactions")).json()["data"] == []


async def test_unknown_model_is_priced_by_default_once_it_exists(project: Project) -> None:
    """Control for the test above: the same call succeeds when `_default` is priced."""
    await project.price("_default", 1, 1)
    await project.user("u_new", credits=1)
    path, body = UNKNOWN_MODEL_CALLS["start"]
    r = await project.post(path, body)
    assert r.status_code == 201, r.text
    assert Decimal(str(r.json()["hold_amount"])) == Decimal("0.01")
