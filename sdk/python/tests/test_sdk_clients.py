"""Both clients against a live server: a metered call end to end, exact decimals, pagination."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from conftest import Project
from creditd_sdk import AsyncCreditd, Creditd
from sdk_testkit import FaultProxy


def test_sync_client_meters_a_call_and_the_ledger_shows_it(priced: Creditd) -> None:
    client = priced
    client.users.create("u1", metadata={"plan": "free"})
    grant = client.credits.grant("u1", Decimal(10), reason="welcome")
    assert grant.amount == Decimal(10)
    assert grant.balance == Decimal(10)

    start = client.transactions.start(
        user_id="u1",
        model="gpt-4o",
        provisional_tokens={"input_tokens": 1000, "output_tokens": 1000},
    )
    assert start.admitted
    assert start.status == "pending"
    assert start.hold_amount == Decimal(3)
    assert start.balance == Decimal(7)

    done = client.transactions.complete(
        start.transaction_id,
        success=True,
        finalized_tokens={"input_tokens": 500, "output_tokens": 250},
    )
    assert (done.status, done.credits_used, done.late) == ("completed", Decimal(1), False)
    assert done.balance == Decimal(9)
    assert done.balance_adjustment == Decimal(2)

    user = client.users.get("u1")
    assert user.balance.total == Decimal(9)
    assert user.balance.held == Decimal(0)
    assert user.metadata == {"plan": "free"}
    assert isinstance(user.created_at, datetime)
    assert user.created_at.tzinfo is not None
    ledger = client.credits.list_ledger("u1").data
    assert [(e.kind, e.amount, e.held_amount) for e in ledger] == [
        ("grant", Decimal(10), Decimal(0)),
        ("hold", Decimal(0), Decimal(3)),
        ("usage", Decimal(-1), Decimal(-3)),
    ]
    txn = client.transactions.get(start.transaction_id)
    assert txn.status == "completed"
    assert txn.finalized_tokens is not None
    # Every metric is listed; only those sent are non-zero.
    assert {k: v for k, v in txn.finalized_tokens.items() if v} == {
        "input_tokens": 500,
        "output_tokens": 250,
    }
    assert "cached_input_tokens" in txn.finalized_tokens


async def test_async_client_meters_a_call_and_the_ledger_shows_it(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    await aclient.users.create("u1")
    await aclient.credits.grant("u1", 10)
    start = await aclient.transactions.start(
        user_id="u1", model="m", provisional_tokens={"input_tokens": 1000, "output_tokens": 1000}
    )
    assert start.admitted
    assert start.hold_amount == Decimal(3)
    done = await aclient.transactions.complete(
        start.transaction_id, success=True, finalized_tokens={"input_tokens": 2000}
    )
    assert done.credits_used == Decimal(2)
    assert done.balance == Decimal(8)
    ledger = (await aclient.credits.list_ledger("u1")).data
    assert [e.kind for e in ledger] == ["grant", "hold", "usage"]
    assert ledger[-1].amount == Decimal(-2)
    assert ledger[-1].balance_after == Decimal(8)


def test_decimal_grants_add_up_exactly(client: Creditd) -> None:
    client.users.create("u")
    client.credits.grant("u", Decimal("0.1"))
    client.credits.grant("u", Decimal("0.2"))
    total = client.users.get("u").balance.total
    assert isinstance(total, Decimal)
    assert total == Decimal("0.3")  # 0.1 + 0.2 as floats would be 0.30000000000000004
    amounts = [g.amount for g in client.credits.list_grants("u").data]
    assert sorted(amounts) == [Decimal("0.1"), Decimal("0.2")]


def test_amounts_keep_all_six_fractional_digits_both_ways(client: Creditd) -> None:
    price = client.models.put(
        "tiny", input_price_per_1k="0.000001", output_price_per_1k=Decimal("123456789.123456")
    )
    assert price.input_price_per_1k == Decimal("0.000001")
    assert price.output_price_per_1k == Decimal("123456789.123456")
    client.users.create("u")
    grant = client.credits.grant("u", "999999999999999.999999")
    assert grant.amount == Decimal("999999999999999.999999")


def test_float_amounts_are_refused_before_anything_is_sent(client: Creditd) -> None:
    client.users.create("u")
    with pytest.raises(TypeError, match="float"):
        client.credits.grant("u", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a decimal amount"):
        client.credits.grant("u", "ten")
    assert client.users.get("u").balance.total == Decimal(0)


def test_amounts_go_out_as_json_numbers_with_their_exact_digits(
    client: Creditd, project: Project, proxy: FaultProxy
) -> None:
    client.users.create("u")
    with Creditd(project.key, base_url=proxy.url, spool=None) as through:
        through.credits.grant("u", Decimal("0.10"))
        through.credits.grant("u", "1E+2")
        through.credits.grant("u", 7)
    bodies = [e.body for e in proxy.requests("POST", "/credits")]
    assert bodies == [b'{"amount":0.10}', b'{"amount":100}', b'{"amount":7}']
    assert client.users.get("u").balance.total == Decimal("107.1")


def test_free_form_metadata_keeps_its_numbers(client: Creditd) -> None:
    user = client.users.create("u", metadata={"temperature": 0.7, "n": 3, "tags": ["a"]})
    # JSON numbers with a fraction come back as Decimal, like every number the SDK reads.
    assert user.metadata == {"temperature": Decimal("0.7"), "n": 3, "tags": ["a"]}


def test_paginate_walks_every_page(client: Creditd) -> None:
    ids = [f"u{i:02d}" for i in range(7)]
    for user_id in ids:
        client.users.create(user_id)
    first = client.users.list(limit=3)
    assert len(first.data) == 3
    assert first.has_more
    assert first.next_cursor == "u02"
    assert [u.id for u in client.paginate(client.users.list, limit=3)] == ids


async def test_async_paginate_walks_every_page(aclient: AsyncCreditd) -> None:
    for i in range(5):
        await aclient.users.create(f"u{i}")
    seen = [u.id async for u in aclient.paginate(aclient.users.list, limit=2)]
    assert seen == [f"u{i}" for i in range(5)]
