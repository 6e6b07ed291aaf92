"""Free-form JSON that was accepted reads back exactly, through every read endpoint.

A hypothesis fuzz sends nested JSON values (int64 edges, decimals written with exponents and
trailing zeros, unicode strings, bools, nulls, lists, objects) as user metadata, transaction
metadata (one-shot, start and complete) and tier features, and reads each back through the
object's GET and its list. Rows stored before the limits existed (integers beyond 64 bits,
nesting past the encoder's depth limit) must not break a read endpoint either.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from app.core.freeform import INT64_MAX, INT64_MIN, MAX_BYTES, freeform_problem
from app.core.http import _render_tolerant, render_json
from app.db.session import Database, driver
from tests.conftest import Project, create_project
from tests.helpers import body

JSON = {"Content-Type": "application/json"}

# --- the strategy ---------------------------------------------------------------------------

_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # storable text
_INTS = st.one_of(
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MIN + 1, INT64_MAX - 1, INT64_MAX, 0, -1, 2**53 + 1]),
)
# Decimals with digits after the point, written as Python prints them: "1.50", "-0.0",
# "5E-40", "123456789012345678901234567890.5". Those without a fraction ("100.0") must fit
# in 64 bits, like any integer.
_FRACTIONS = st.builds(
    lambda digits, places: Decimal(digits).scaleb(-places),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=1, max_value=40),
).filter(lambda d: d != d.to_integral_value() or INT64_MIN <= d <= INT64_MAX)
# Decimals with nothing after the point, inside the int64 range: "1E+5", "-9.99E+17".
_INTEGRAL_DECIMALS = st.builds(
    lambda digits, exponent: Decimal(f"{digits}E{exponent}"),
    st.integers(min_value=-999, max_value=999),
    st.integers(min_value=0, max_value=15),
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    _INTS,
    _FRACTIONS,
    _INTEGRAL_DECIMALS,
    st.text(_CHARS, max_size=30),
)
_KEYS = st.text(_CHARS, max_size=20)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=16,
)
METADATA = st.dictionaries(_KEYS, _VALUES, max_size=6)


def encode(value: Any) -> str:
    """JSON text with every Decimal written as Python prints it (exponents, trailing zeros)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{encode(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def same(sent: Any, got: Any) -> bool:
    """Equal as JSON: numbers by exact value (1E+5 == 100000, 1.50 == 1.5), never bool for int."""
    if isinstance(sent, dict):
        return (
            isinstance(got, dict)
            and sent.keys() == got.keys()
            and all(same(v, got[k]) for k, v in sent.items())
        )
    if isinstance(sent, list):
        return (
            isinstance(got, list)
            and len(sent) == len(got)
            and all(same(a, b) for a, b in zip(sent, got, strict=True))
        )
    numbers = (int, Decimal)
    if isinstance(sent, numbers) and not isinstance(sent, bool):
        return isinstance(got, numbers) and not isinstance(got, bool) and sent == got
    return type(sent) is type(got) and sent == got


# --- the fuzz, through the API --------------------------------------------------------------


async def _read_back(p: Project, one: str, listing: str, field: str, sent: Any) -> None:
    """GET of the object and the list endpoint both answer 200 with ``sent`` in ``field``."""
    r = await p.get(one)
    assert r.status_code == 200, r.text
    assert same(sent, body(r)[field]), (sent, body(r)[field])
    r = await p.get(listing)
    assert r.status_code == 200, r.text
    [item] = body(r)["data"]
    assert same(sent, item[field]), (sent, item[field])


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run: a CI failure reproduces locally
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=METADATA, second=METADATA)
async def test_accepted_free_form_json_reads_back_through_every_endpoint(
    client: httpx.AsyncClient, first: dict[str, Any], second: dict[str, Any]
) -> None:
    merged = {**first, **second}
    # The strategy stays well inside the limits, so every example must be accepted.
    assert freeform_problem(merged) is None
    p = await create_project(client)  # one project per example: each list holds one object
    await p.price("_default", 1, 1)
    grant = {"amount": 1000}  # a start without tokens is admitted only with credits

    async def send(method: str, path: str, raw: str) -> httpx.Response:
        return await p.client.request(method, path, content=raw.encode(), headers=p.headers | JSON)

    # User metadata: create, then patch (merge; a null value removes its key).
    r = await send("POST", "/v1/users", '{"id": "u", "metadata": ' + encode(first) + "}")
    assert r.status_code == 201, r.text
    assert same(first, body(r)["metadata"])
    await _read_back(p, "/v1/users/u", "/v1/users", "metadata", first)
    assert (await p.post("/v1/users/u/credits", grant)).status_code == 201
    r = await send("PATCH", "/v1/users/u", '{"metadata": ' + encode(second) + "}")
    assert r.status_code == 200, r.text
    patched = {k: v for k, v in merged.items() if k not in second or second[k] is not None}
    await _read_back(p, "/v1/users/u", "/v1/users", "metadata", patched)

    # Tier features, and the user's view of them.
    raw = '{"id": "t", "name": "T", "features": ' + encode(first) + "}"
    assert (await send("POST", "/v1/tiers", raw)).status_code == 201
    await _read_back(p, "/v1/tiers/t", "/v1/tiers", "features", first)
    assert (await p.post("/v1/users/u/tier", {"tier_id": "t"})).status_code == 200
    await _read_back(p, "/v1/users/u", "/v1/users", "features", first)

    # Transaction metadata: start with the first value, complete with the second (merged).
    raw = '{"user_id": "u", "model": "m", "metadata": ' + encode(first) + "}"
    r = await send("POST", "/v1/transactions/start", raw)
    assert r.status_code == 201, r.text
    txn = body(r)["transaction_id"]
    await _read_back(p, f"/v1/transactions/{txn}", "/v1/transactions", "metadata", first)
    raw = '{"success": true, "metadata": ' + encode(second) + "}"
    r = await send("POST", f"/v1/transactions/{txn}/complete", raw)
    assert r.status_code == 200, r.text
    await _read_back(p, f"/v1/transactions/{txn}", "/v1/transactions", "metadata", merged)

    # One-shot usage.
    raw = '{"user_id": "u", "model": "m", "tokens": {"input_tokens": 1}, "metadata": '
    r = await send("POST", "/v1/usage", raw + encode(second) + "}")
    assert r.status_code == 201, r.text
    usage = body(r)["transaction_id"]
    r = await p.get(f"/v1/transactions/{usage}")
    assert same(second, body(r)["metadata"])
    listed = {t["id"]: t["metadata"] for t in body(await p.get("/v1/transactions"))["data"]}
    assert same(second, listed[usage])
    assert same(merged, listed[txn])

    for path in ("/v1/users/u/ledger", "/v1/events"):
        r = await p.get(path)
        assert r.status_code == 200, (path, r.text)


# --- rows stored before the limits ----------------------------------------------------------

BIG = 2**70
LEGACY = {"big": BIG, "neg": -(2**80), "u64": 2**64 - 1, "deep": [[[[]]]], "n": Decimal("1.5")}


def deep(levels: int) -> Any:
    value: Any = {"end": BIG}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


async def test_rows_stored_before_the_limits_still_read_back(
    project: Project, db: Database
) -> None:
    """1e20 stored as a 21-digit integer and nesting 253 deep (the most the old code stored):
    the lists add three levels on top, past orjson's limit; both must still answer 200."""
    await project.price("_default", 1, 1)
    await project.user("u", credits=10)
    assert (await project.post("/v1/tiers", {"id": "t", "name": "T"})).status_code == 201
    r = await project.post("/v1/usage", {"user_id": "u", "model": "m", "tokens": {}})
    txn = body(r)["transaction_id"]
    stored = {**LEGACY, "twenty": 10**20, "nest": deep(252)}
    text = _render_tolerant(stored).decode()
    async with db.transaction() as session:
        conn = driver(session)
        pid = uuid.UUID(project.id)
        sql = "UPDATE {} SET {} = $1::jsonb WHERE project_id = $2 AND id = $3"
        await conn.execute(sql.format("transactions", "metadata"), text, pid, uuid.UUID(txn))
        await conn.execute(sql.format("users", "metadata"), text, pid, "u")
        await conn.execute(sql.format("tiers", "features"), text, pid, "t")
    assert (await project.post("/v1/users/u/tier", {"tier_id": "t"})).status_code == 200

    for path, field in [
        (f"/v1/transactions/{txn}", "metadata"),
        ("/v1/users/u", "metadata"),
        ("/v1/users/u", "features"),
        ("/v1/tiers/t", "features"),
    ]:
        r = await project.get(path)
        assert r.status_code == 200, r.text
        assert body(r)[field] == stored
        assert '"twenty":100000000000000000000' in r.text
    for path, fields in [
        ("/v1/transactions", ["metadata"]),
        ("/v1/users", ["metadata", "features"]),
        ("/v1/tiers", ["features"]),
    ]:
        r = await project.get(path)
        assert r.status_code == 200, r.text
        [item] = body(r)["data"]
        assert [item[f] for f in fields] == [stored] * len(fields)


# --- render_json and the size rule, without the database ------------------------------------


def test_render_json_writes_integers_beyond_64_bits_exactly() -> None:
    value = {"a": [BIG, -BIG, 2**64 - 1, -(2**63)], "b": Decimal("0.10")}
    expected = {"a": [BIG, -BIG, 2**64 - 1, -(2**63)], "b": Decimal("0.1")}
    text = render_json(value)
    assert json.loads(text, parse_float=Decimal) == expected
    assert b"1180591620717411303424,-1180591620717411303424,18446744073709551615," in text


def test_render_json_writes_any_depth() -> None:
    value: Any = 1
    for _ in range(600):  # past orjson's 254 levels, within what json.loads can read back
        value = [value, {"k": None}]
    assert json.loads(render_json(value)) == value


class _Out(BaseModel):
    at: datetime
    amount: Decimal
    id: uuid.UUID
    data: dict[str, Any]


def test_the_tolerant_path_writes_what_orjson_writes() -> None:
    model = _Out(
        at=datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        amount=Decimal("12.500"),
        id=uuid.UUID(int=7),
        data={"s": 'é"\\\n\u2028', "t": (1, True), "f": False, "n": None},
    )
    content = {"model": model, "list": [model], "x": Decimal("-0.000001")}
    assert _render_tolerant(content) == render_json(content)
    assert orjson.loads(render_json(content))["model"]["amount"] == 12.5


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(value=METADATA)
def test_the_size_limit_counts_the_bytes_render_json_writes(value: dict[str, Any]) -> None:
    """Padded to exactly MAX_BYTES as rendered, a value is accepted; one byte more is not."""
    base = len(render_json({**value, "\x7fpad": ""}))
    room = MAX_BYTES - base
    assert room > 0
    exact = {**value, "\x7fpad": "p" * room}
    assert len(render_json(exact)) == MAX_BYTES
    assert freeform_problem(exact) is None
    over = {**value, "\x7fpad": "p" * (room + 1)}
    assert freeform_problem(over) == f"is larger than {MAX_BYTES} bytes as JSON"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"x": Decimal("1E+19")}, "the number at /x is an integer outside"),
        ({"x": Decimal("9223372036854775807E0")}, None),
        ({"x": Decimal("-9.223372036854775808E+18")}, None),
        ({"x": Decimal("-9.223372036854775809E+18")}, "the number at /x is an integer outside"),
        ({"x": Decimal("1E+19").scaleb(-1)}, None),  # 1E+18: an integer, in range
        ({"x": Decimal("1.5E+19")}, "the number at /x is an integer outside"),
        ({"x": Decimal("150000000000000000000.5")}, None),  # a fraction: jsonb keeps it
        ({"x": Decimal("100000000000000000000.00")}, "the number at /x is an integer outside"),
        ({"x": Decimal("9223372036854775807.000")}, None),
        ({"x": Decimal("0E-50")}, None),
        ({"x": Decimal("NaN")}, "the number at /x is not a finite number"),
        ({"x": float("-inf")}, "the number at /x is not a finite number"),
        ({"a/b": {"~": [0, 2**63]}}, "the number at /a~1b/~0/1 is an integer outside"),
    ],
)
def test_the_number_rule(value: dict[str, Any], problem: str | None) -> None:
    found = freeform_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem), found
