"""Razorpay top-ups end to end: the API creates a Payment Link through the real adapter and the
official SDK on the fake Razorpay (tests/fakes/razorpay_server.py), the fake "pays" it and signs
its webhooks with Razorpay's scheme, and those exact bytes are POSTed to the receiver.
Balances, grants and payments are read back through the API; `creditd verify` after each."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import text

from app.cli import run_migrations
from app.core.clock import utcnow
from app.core.settings import DatabaseSettings, Settings
from app.credits.verify import verify
from app.db.session import Database
from app.main import create_app
from app.payments import reconcile
from tests.conftest import Project, assert_ledger_consistent, create_project
from tests.fakes.razorpay_server import Delivery, FakeRazorpay, sign
from tests.faults.test_retries import lose_next_commit  # noqa: F401 - a fixture
from tests.fixtures.own_server import OwnServer, own_server
from tests.helpers import balance, body, complete, start
from tests.payments.helpers import event_types, grants

SIGNATURE = "X-Razorpay-Signature"


async def configure(project: Project, fake: FakeRazorpay, **extra: Any) -> None:
    r = await project.put(
        "/v1/providers/razorpay",
        {
            "key_id": fake.key_id,
            "key_secret": fake.key_secret,
            "webhook_secret": fake.webhook_secret,
            **extra,
        },
    )
    assert r.status_code == 200, r.text


async def top_up(project: Project, **extra: Any) -> dict[str, Any]:
    """500.00 INR for 100 credits (unless told otherwise), for user u."""
    payload = {
        "user_id": "u",
        "provider": "razorpay",
        "amount": "500.00",
        "currency": "INR",
        "credits": 100,
        **extra,
    }
    r = await project.post("/v1/payments", payload)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = body(r)
    return out


async def deliver(
    project: Project, delivery: Delivery, client: httpx.AsyncClient | None = None
) -> httpx.Response:
    return await (client or project.client).post(
        f"/v1/webhooks/razorpay/{project.id}", content=delivery.body, headers=delivery.headers
    )


async def delivered(project: Project, delivery: Delivery) -> dict[str, Any]:
    r = await deliver(project, delivery)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def payment(project: Project, payment_id: str) -> dict[str, Any]:
    r = await project.get(f"/v1/payments/{payment_id}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = body(r)
    return out


async def events_stored(db: Database, project: Project) -> int:
    async with db.transaction() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM provider_events WHERE project_id = :p"),
            {"p": uuid.UUID(project.id)},
        )
    return int(count or 0)


async def assert_paid_once(project: Project, db: Database, payment_id: str, credits: int) -> None:
    """Exactly one paid grant, for this payment, and the balance it bought."""
    [grant] = await grants(project)
    assert grant["category"] == "paid"
    assert grant["payment_id"] == payment_id
    assert grant["amount"] == credits
    assert grant["source"] == "purchase"
    assert (await balance(project, "u"))["total"] == credits
    assert (await payment(project, payment_id))["credits_granted"] == credits
    await assert_ledger_consistent(db)


async def spend(project: Project, credits: int) -> None:
    """Charge user u `credits` (1 credit per input token)."""
    await project.price("_default", 1000, 1000)
    txn = await start(project, "u", inp=credits)
    r = await complete(project, txn["transaction_id"], inp=credits)
    assert r.status_code == 200, r.text


# --- the happy path -----------------------------------------------------------------------------


async def test_a_razorpay_top_up_is_credited_once_from_its_three_signed_webhooks(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project, metadata={"order": "42"})

    assert created["status"] == "created"
    assert created["provider"] == "razorpay"
    assert created["amount_minor"] == 50000
    link = fake_razorpay.links[created["provider_reference"]]
    assert created["checkout_url"] == link["short_url"]
    assert (link["amount"], link["currency"], link["reference_id"]) == (
        50000,
        "INR",
        created["id"],
    )
    assert link["notes"]["order"] == "42"
    assert (await balance(project, "u"))["total"] == 0

    deliveries = fake_razorpay.pay(created["provider_reference"])
    assert [d.event for d in deliveries] == ["payment_link.paid", "payment.captured", "order.paid"]
    outcomes = [(await delivered(project, d))["outcome"] for d in deliveries]

    assert outcomes == ["applied", "ignored", "ignored"]
    paid = await payment(project, created["id"])
    assert paid["status"] == "succeeded"
    pay_id = deliveries[0].payload["payload"]["payment"]["entity"]["id"]
    assert paid["provider_payment_id"] == pay_id
    assert paid["succeeded_at"] is not None
    await assert_paid_once(project, db, created["id"], 100)
    [grant] = await grants(project)
    assert grant["cost_basis"] == Decimal("5")  # 500.00 INR / 100 credits
    assert grant["cost_currency"] == "INR"
    assert len(await event_types(project, "payment.succeeded")) == 1
    assert len(await event_types(project, "credits.granted")) == 1


async def test_an_amount_only_top_up_buys_credits_at_the_projects_rate(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    r = await project.patch("/v1/project", {"settings": {"credits_per_unit": {"INR": "0.25"}}})
    assert r.status_code == 200, r.text
    created = await top_up(project, amount="123.45", credits=None)
    assert created["credits"] == Decimal("30.8625")
    assert fake_razorpay.links[created["provider_reference"]]["amount"] == 12345

    for d in fake_razorpay.pay(created["provider_reference"]):
        await delivered(project, d)

    [grant] = await grants(project)
    assert (grant["amount"], grant["payment_id"]) == (Decimal("30.8625"), created["id"])
    assert (await balance(project, "u"))["total"] == Decimal("30.8625")
    await assert_ledger_consistent(db)


async def payments_stored(project: Project) -> list[Any]:
    r = await project.get("/v1/payments")
    assert r.status_code == 200, r.text
    return list(body(r)["data"])


async def test_razorpay_down_is_503_stores_nothing_and_the_keyed_retry_opens_one_link(
    project: Project, fake_razorpay: FakeRazorpay
) -> None:
    await configure(project, fake_razorpay)
    payload = {"user_id": "u", "provider": "razorpay", "amount": "500", "currency": "INR"}
    key = {"Idempotency-Key": "topup-1"}
    fake_razorpay.fail_next(status=503)

    r = await project.post("/v1/payments", {**payload, "credits": 100}, headers=key)

    assert r.status_code == 503, r.text
    assert r.json()["code"] == "provider_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert await payments_stored(project) == []
    assert fake_razorpay.links == {}
    retried = await project.post("/v1/payments", {**payload, "credits": 100}, headers=key)
    assert retried.status_code == 201, retried.text
    replayed = await project.post("/v1/payments", {**payload, "credits": 100}, headers=key)
    assert replayed.json()["id"] == retried.json()["id"]
    assert list(fake_razorpay.links) == [retried.json()["provider_reference"]]
    assert len(await payments_stored(project)) == 1


async def test_razorpay_refusing_the_link_is_502_and_stores_nothing(
    project: Project, fake_razorpay: FakeRazorpay
) -> None:
    # Razorpay's minimum is INR 1.00; and a key secret Razorpay does not know.
    await configure(project, fake_razorpay)
    r = await project.post(
        "/v1/payments",
        {"user_id": "u", "provider": "razorpay", "amount": "0.50", "currency": "INR", "credits": 1},
    )
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "provider_error"
    await configure(project, fake_razorpay, key_secret="not-the-key-secret")
    r = await project.post(
        "/v1/payments",
        {"user_id": "u", "provider": "razorpay", "amount": "5", "currency": "INR", "credits": 1},
    )
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "provider_error"
    assert await payments_stored(project) == []
    assert fake_razorpay.links == {}


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_the_three_events_of_one_payment_in_any_order_grant_once(
    project: Project, fake_razorpay: FakeRazorpay, db: Database, order: tuple[int, ...]
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    deliveries = fake_razorpay.pay(created["provider_reference"])

    outcomes = [(await delivered(project, deliveries[i]))["outcome"] for i in order]

    assert sorted(outcomes) == ["applied", "ignored", "ignored"]
    assert outcomes[0] == "applied"
    assert (await payment(project, created["id"]))["status"] == "succeeded"
    await assert_paid_once(project, db, created["id"], 100)


async def test_the_three_events_concurrently_over_http_grant_once(
    live_project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    project = live_project
    await configure(project, fake_razorpay)
    created = await top_up(project)
    deliveries = fake_razorpay.pay(created["provider_reference"])

    responses = await asyncio.gather(*(deliver(project, d) for d in deliveries))

    assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
    assert sorted(r.json()["outcome"] for r in responses) == ["applied", "ignored", "ignored"]
    await assert_paid_once(project, db, created["id"], 100)


async def test_one_delivery_twenty_times_concurrently_over_http_grants_once(
    live_project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    project = live_project
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_paid = fake_razorpay.pay(created["provider_reference"])[0]

    responses = await asyncio.gather(*(deliver(project, link_paid) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert await events_stored(db, project) == 1
    await assert_paid_once(project, db, created["id"], 100)


async def test_a_failed_attempt_then_a_successful_retry_on_the_link_credits_once(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_id = created["provider_reference"]

    failed = fake_razorpay.fail(link_id, reason="Card declined")
    assert (await delivered(project, failed))["outcome"] == "applied"
    after_failure = await payment(project, created["id"])
    # Only the attempt failed: the link stays payable, and so the payment stays open.
    assert (after_failure["status"], after_failure["failure_reason"]) == (
        "created",
        "Card declined",
    )
    [reported] = await event_types(project, "payment.failed")
    assert reported["data"]["reason"] == "Card declined"
    assert reported["data"]["checkout_open"] is True
    assert (await balance(project, "u"))["total"] == 0

    for d in fake_razorpay.pay(link_id):
        await delivered(project, d)

    paid = await payment(project, created["id"])
    assert paid["status"] == "succeeded"
    assert paid["failure_reason"] is None
    assert paid["provider_payment_id"] != failed.payload["payload"]["payment"]["entity"]["id"]
    await assert_paid_once(project, db, created["id"], 100)
    assert len(await event_types(project, "payment.failed")) == 1


async def test_a_failure_delivered_after_the_success_changes_nothing(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    failed = fake_razorpay.fail(created["provider_reference"])
    for d in fake_razorpay.pay(created["provider_reference"]):
        await delivered(project, d)

    assert (await delivered(project, failed))["outcome"] == "stale"

    assert (await payment(project, created["id"]))["status"] == "succeeded"
    await assert_paid_once(project, db, created["id"], 100)


async def test_a_refund_delivered_before_the_success_is_applied_right_after_the_grant(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    deliveries = fake_razorpay.pay(created["provider_reference"])
    pay_id = deliveries[1].payload["payload"]["payment"]["entity"]["id"]
    refund = fake_razorpay.refund(pay_id, 10000)  # 100.00 of 500.00 INR: 20 credits

    assert (await delivered(project, refund))["outcome"] == "applied"
    assert (await balance(project, "u"))["total"] == 0
    for d in reversed(deliveries):
        await delivered(project, d)

    out = await payment(project, created["id"])
    assert out["status"] == "partially_refunded"
    assert out["credits_clawed_back"] == 20
    assert (await balance(project, "u"))["total"] == 80
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


# --- signatures -------------------------------------------------------------------------------


def _signature_failures() -> float:
    value = REGISTRY.get_sample_value(
        "creditd_webhook_signature_failures_total", {"provider": "razorpay"}
    )
    return value or 0.0


def _with(delivery: Delivery, raw: bytes | None = None, /, **headers: str | None) -> Delivery:
    changed = {k: v for k, v in {**delivery.headers, **headers}.items() if v is not None}
    return Delivery(
        delivery.event, delivery.event_id, raw or delivery.body, changed, delivery.payload
    )


async def test_forged_tampered_or_unsigned_webhooks_are_400_and_credit_nothing(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_paid = fake_razorpay.pay(created["provider_reference"])[0]
    raw = link_paid.body
    # One byte changed after signing: the amount 50000 becomes 50001.
    tampered = raw.replace(b'"amount":50000', b'"amount":50001', 1)
    assert len(tampered) == len(raw)
    assert tampered != raw
    before = _signature_failures()

    refused = [
        _with(link_paid, **{SIGNATURE: secrets.token_hex(32)}),  # forged
        _with(link_paid, **{SIGNATURE: sign(raw, "whsec_someone_elses")}),  # wrong secret
        _with(link_paid, tampered),  # body changed by one byte
        _with(link_paid, **{SIGNATURE: None}),  # no signature header
        _with(link_paid, **{SIGNATURE: link_paid.headers[SIGNATURE].upper()}),  # not hex(HMAC)
    ]
    for forged in refused:
        r = await deliver(project, forged)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "invalid_signature"

    assert _signature_failures() == before + len(refused)
    assert await events_stored(db, project) == 0
    assert (await balance(project, "u"))["total"] == 0
    assert (await payment(project, created["id"]))["status"] == "created"
    assert await grants(project) == []


async def test_webhooks_without_a_configured_secret_are_refused_not_trusted(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    r = await project.delete("/v1/providers/razorpay")
    assert r.status_code == 204, r.text
    deliveries = fake_razorpay.pay(created["provider_reference"])

    for d in deliveries:
        r = await deliver(project, d)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "webhook_not_configured"

    assert await events_stored(db, project) == 0
    assert (await balance(project, "u"))["total"] == 0
    assert (await payment(project, created["id"]))["status"] == "created"


async def test_a_body_with_php_json_escapes_verifies_over_the_raw_bytes(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project, metadata={"note": "café/ünïcode ✓", "site": "https://x.in/a"})
    link_paid = fake_razorpay.pay(created["provider_reference"])[0]
    raw = link_paid.body
    for escape in (b"\\/", b"\\u00e9", b"\\u2713"):
        assert escape in raw
    # Any re-serialisation gives other bytes, so an HMAC over it would not match.
    document = json.loads(raw)
    for reencoded in (
        json.dumps(document).encode(),
        json.dumps(document, separators=(",", ":")).encode(),
        json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode(),
    ):
        assert reencoded != raw

    assert (await delivered(project, link_paid))["outcome"] == "applied"

    await assert_paid_once(project, db, created["id"], 100)
    out = await payment(project, created["id"])
    assert out["metadata"] == {"note": "café/ünïcode ✓", "site": "https://x.in/a"}


async def test_one_razorpay_account_shared_by_two_projects_credits_only_the_payments_own(
    project: Project, other_project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    """Razorpay sends every event of an account to each webhook URL configured on it."""
    await configure(project, fake_razorpay)
    await configure(other_project, fake_razorpay)
    created = await top_up(project)
    deliveries = fake_razorpay.pay(created["provider_reference"])

    elsewhere = [(await delivered(other_project, d))["outcome"] for d in deliveries]
    assert elsewhere == ["unmatched"] * 3
    assert (await other_project.get(f"/v1/payments/{created['id']}")).status_code == 404
    r = await other_project.get("/v1/users/u")
    assert r.status_code == 404, r.text

    for d in deliveries:
        await delivered(project, d)
    await assert_paid_once(project, db, created["id"], 100)


# --- amounts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paid", "got"),
    [
        ({"amount": 49900}, {"amount_minor": 49900, "currency": "INR"}),
        ({"currency": "USD"}, {"amount_minor": 50000, "currency": "USD"}),
    ],
)
async def test_money_differing_from_the_recorded_payment_credits_nothing(
    project: Project,
    fake_razorpay: FakeRazorpay,
    db: Database,
    paid: dict[str, Any],
    got: dict[str, Any],
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)

    deliveries = fake_razorpay.pay(created["provider_reference"], **paid)
    outcomes = [(await delivered(project, d))["outcome"] for d in deliveries]

    assert outcomes == ["amount_mismatch"] * 3
    assert (await balance(project, "u"))["total"] == 0
    assert await grants(project) == []
    out = await payment(project, created["id"])
    assert (out["status"], out["credits_granted"]) == ("created", 0)
    # Three events say it, the operator is told once.
    mismatches = await event_types(project, "payment.amount_mismatch")
    assert len(mismatches) == 1
    data = mismatches[0]["data"]
    assert data["expected"] == {"amount_minor": 50000, "currency": "INR"}
    assert data["got"] == got
    assert data["payment_id"] == created["id"]
    assert mismatches[0]["user_id"] == "u"
    await assert_ledger_consistent(db)


async def test_a_mismatched_payment_is_reported_once_and_not_looked_up_forever(
    project: Project, fake_razorpay: FakeRazorpay, db: Database, app: FastAPI
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_id = created["provider_reference"]
    for d in fake_razorpay.pay(link_id, amount=100):
        await delivered(project, d)
    assert len(await event_types(project, "payment.amount_mismatch")) == 1
    settings = app.state.settings
    now = utcnow()

    # Hours and days later, past the give-up: the link is paid, there is nothing left to ask.
    for hours in (1, 2, 5, 24, 24 * 8):
        await reconcile.reconcile_once(
            db, settings, batch_size=1000, now=now + timedelta(hours=hours)
        )

    assert not [r for r in fake_razorpay.requests if r.path == f"/v1/payment_links/{link_id}"]
    assert len(await event_types(project, "payment.amount_mismatch")) == 1
    out = await payment(project, created["id"])
    assert (out["status"], out["credits_granted"]) == ("created", 0)
    assert out["failure_reason"] == "amount_mismatch: paid 100 INR, expected 50000 INR"
    assert (await balance(project, "u"))["total"] == 0


# --- refunds and disputes -----------------------------------------------------------------------


async def paid_top_up(project: Project, fake: FakeRazorpay) -> tuple[dict[str, Any], str]:
    """A configured project with a credited 500.00 INR / 100 credits top-up for u; returns the
    payment and Razorpay's payment id."""
    await configure(project, fake)
    created = await top_up(project)
    deliveries = fake.pay(created["provider_reference"])
    for d in deliveries:
        await delivered(project, d)
    assert (await balance(project, "u"))["total"] == 100
    return created, deliveries[1].payload["payload"]["payment"]["entity"]["id"]


async def test_a_partial_refund_after_partial_spend_claws_back_its_share_as_debt_then_all(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    created, pay_id = await paid_top_up(project, fake_razorpay)
    await project.grant("u", 50)  # promotional: burned first, never clawed back
    await spend(project, 130)  # all 50 promotional, then 80 of the paid 100
    assert (await balance(project, "u"))["total"] == 20

    # Half the money back: 50 credits out of the grant's 20 left, the other 30 become debt.
    refund = fake_razorpay.refund(pay_id, 25000)
    assert (await delivered(project, refund))["outcome"] == "applied"

    out = await payment(project, created["id"])
    assert out["status"] == "partially_refunded"
    assert out["amount_refunded"] == Decimal("250")
    assert out["credits_clawed_back"] == 50
    assert (await balance(project, "u"))["total"] == -30
    paid = next(g for g in await grants(project) if g["category"] == "paid")
    assert paid["remaining"] == 0
    [clawed] = await event_types(project, "credits.clawed_back")
    assert (clawed["data"]["from_grant"], clawed["data"]["debt"]) == (20, 30)
    await assert_ledger_consistent(db)

    # The rest refunded: the whole purchase is gone, all of it as debt now.
    assert (await delivered(project, fake_razorpay.refund(pay_id)))["outcome"] == "applied"
    out = await payment(project, created["id"])
    assert (out["status"], out["credits_clawed_back"]) == ("refunded", 100)
    assert out["amount_refunded"] == Decimal("500")
    assert (await balance(project, "u"))["total"] == -80
    assert len(await event_types(project, "payment.refunded")) == 2
    await assert_ledger_consistent(db)


async def test_a_full_refund_of_an_unspent_top_up_takes_all_its_credits(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    created, pay_id = await paid_top_up(project, fake_razorpay)
    await project.grant("u", 7)

    refund = fake_razorpay.refund(pay_id)
    assert (await delivered(project, refund))["outcome"] == "applied"
    assert (await delivered(project, refund))["duplicate"] is True

    out = await payment(project, created["id"])
    assert (out["status"], out["credits_clawed_back"]) == ("refunded", 100)
    assert await balance(project, "u") == {"available": 7, "held": 0, "total": 7}
    await assert_ledger_consistent(db)


async def test_a_dispute_takes_the_credits_when_raised_and_lost_keeps_them_taken(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    created, pay_id = await paid_top_up(project, fake_razorpay)
    await spend(project, 40)

    # Razorpay deducts the disputed money at once (Deduct at Onset): so do the credits.
    opened = fake_razorpay.dispute(pay_id, "created")
    assert (await delivered(project, opened))["outcome"] == "applied"
    out = await payment(project, created["id"])
    assert (out["status"], out["dispute_status"], out["credits_clawed_back"]) == (
        "disputed",
        "withdrawn",
        100,
    )
    assert (await balance(project, "u"))["total"] == -40, "60 from the grant, 40 as debt"
    await assert_ledger_consistent(db)
    review = fake_razorpay.dispute(pay_id, "under_review")
    assert (await delivered(project, review))["outcome"] == "stale"

    lost = fake_razorpay.dispute(pay_id, "lost")
    assert (await delivered(project, lost))["outcome"] == "applied"
    out = await payment(project, created["id"])
    assert (out["status"], out["dispute_status"], out["credits_clawed_back"]) == (
        "lost",
        "lost",
        100,
    )
    assert (await balance(project, "u"))["total"] == -40
    await assert_ledger_consistent(db)

    # Lost is final: a late "won" moves nothing back.
    won = fake_razorpay.dispute(pay_id, "won")
    assert (await delivered(project, won))["outcome"] == "stale"
    assert (await balance(project, "u"))["total"] == -40
    assert len(await event_types(project, "payment.disputed")) == 2
    await assert_ledger_consistent(db)


async def test_a_won_dispute_restores_what_the_dispute_took_not_what_a_refund_took(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    created, pay_id = await paid_top_up(project, fake_razorpay)
    # A fifth refunded first: 20 credits gone for good.
    assert (await delivered(project, fake_razorpay.refund(pay_id, 10000)))["outcome"] == "applied"
    assert (await balance(project, "u"))["total"] == 80

    await delivered(project, fake_razorpay.dispute(pay_id, "created"))
    assert (await balance(project, "u"))["total"] == 0
    assert (await delivered(project, fake_razorpay.dispute(pay_id, "won")))["outcome"] == (
        "applied"
    )

    out = await payment(project, created["id"])
    assert (out["status"], out["dispute_status"], out["credits_clawed_back"]) == (
        "won",
        "won",
        20,
    )
    assert (await balance(project, "u"))["total"] == 80
    [restored] = await event_types(project, "credits.restored")
    assert restored["data"]["amount"] == 80
    await assert_ledger_consistent(db)


async def test_a_retrieval_request_moves_no_credits(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    created, pay_id = await paid_top_up(project, fake_razorpay)

    asked = fake_razorpay.dispute(pay_id, "created", phase="retrieval")
    assert (await delivered(project, asked))["outcome"] == "applied"

    out = await payment(project, created["id"])
    assert (out["status"], out["dispute_status"], out["credits_clawed_back"]) == (
        "disputed",
        "inquiry",
        0,
    )
    assert (await balance(project, "u"))["total"] == 100
    await assert_ledger_consistent(db)


# --- secret rotation --------------------------------------------------------------------------


async def test_a_rotated_webhook_secret_keeps_the_old_one_for_the_grace_only(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    first = await top_up(project)
    second = await top_up(project, credits=10)
    old_secret = fake_razorpay.webhook_secret
    signed_with_old = fake_razorpay.pay(first["provider_reference"])

    new_secret = fake_razorpay.rotate_webhook_secret()
    await configure(project, fake_razorpay)  # the default grace: 24 h

    # Deliveries Razorpay signed (or retries) with the old secret still verify...
    assert (await delivered(project, signed_with_old[0]))["outcome"] == "applied"
    assert (await balance(project, "u"))["total"] == 100
    # ...and so do the new secret's.
    signed_with_new = fake_razorpay.pay(second["provider_reference"])
    assert (await delivered(project, signed_with_new[1]))["outcome"] == "applied"
    assert (await balance(project, "u"))["total"] == 110

    # Rotated again without grace: the replaced one stops at once (the first one long since).
    third = await top_up(project, credits=1)
    late = fake_razorpay.pay(third["provider_reference"])
    fake_razorpay.rotate_webhook_secret()
    await configure(project, fake_razorpay, webhook_secret_grace_seconds=0)
    r = await project.get("/v1/providers")
    [account] = body(r)["data"]
    assert account["previous_webhook_secret_expires_at"] is None
    for secret in (new_secret, old_secret):
        r = await deliver(project, _with(late[0], **{SIGNATURE: sign(late[0].body, secret)}))
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "invalid_signature"
    assert (await balance(project, "u"))["total"] == 110
    resigned = _with(late[0], **{SIGNATURE: fake_razorpay.sign(late[0].body)})
    assert (await delivered(project, resigned))["outcome"] == "applied"
    assert (await balance(project, "u"))["total"] == 111
    await assert_ledger_consistent(db)


# --- reconciliation ---------------------------------------------------------------------------


async def test_a_lost_webhook_is_recovered_by_reconciliation_once_even_when_it_arrives_later(
    project: Project, fake_razorpay: FakeRazorpay, db: Database, app: FastAPI
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_id = created["provider_reference"]
    lost = fake_razorpay.pay(link_id)  # paid at Razorpay; none of its webhooks arrive (yet)
    settings = app.state.settings
    later = utcnow() + timedelta(seconds=settings.payments.reconcile_after_seconds + 1)

    def looked_up() -> bool:
        return any(
            r.method == "GET" and r.path == f"/v1/payment_links/{link_id}"
            for r in fake_razorpay.requests
        )

    # Other tests' due payments may be claimed in the same batches: ours must come up.
    for _ in range(50):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=later)
        if looked_up():
            break
    assert looked_up()

    out = await payment(project, created["id"])
    assert out["status"] == "succeeded"
    assert out["provider_payment_id"] == lost[1].payload["payload"]["payment"]["entity"]["id"]
    await assert_paid_once(project, db, created["id"], 100)

    # The webhooks turn up after all: stored, nothing granted again.
    outcomes = [(await delivered(project, d))["outcome"] for d in lost]
    assert outcomes == ["ignored"] * 3
    await assert_paid_once(project, db, created["id"], 100)
    # Settled: the job does not ask about it again.
    asked = len(fake_razorpay.requests)
    much_later = later + timedelta(days=1)
    await reconcile.reconcile_once(db, settings, batch_size=100, now=much_later)
    assert not any(r.path == f"/v1/payment_links/{link_id}" for r in fake_razorpay.requests[asked:])


# --- the database failing ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[OwnServer]:
    """A PostgreSQL of this module's own, to stop and start (never the shared one)."""
    with own_server() as server:
        run_migrations(server.url)
        yield server


@pytest.fixture
async def outage_project(
    pg: OwnServer, settings: Settings, tmp_path: Path
) -> AsyncIterator[Project]:
    """A project on an app served from ``pg`` (the session's fake providers, as usual)."""
    own = settings.model_copy(
        update={"database": DatabaseSettings(url=pg.url, pool_size=4), "data_dir": tmp_path}
    )
    app = create_app(own)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            made = await create_project(http)
            yield made
            async with app.state.db.transaction() as session:
                _, violations = await verify(session)
            assert violations == [], violations


async def test_a_webhook_during_a_database_outage_is_503_and_its_redelivery_grants_once(
    outage_project: Project, fake_razorpay: FakeRazorpay, pg: OwnServer
) -> None:
    project = outage_project
    await configure(project, fake_razorpay)
    created = await top_up(project)
    deliveries = fake_razorpay.pay(created["provider_reference"])

    pg.stop()
    try:
        during = [await deliver(project, d) for d in deliveries]
    finally:
        pg.start()

    for r in during:
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "database_unavailable"
        assert int(r.headers["retry-after"]) >= 1
    # Razorpay redelivers until it gets a 2xx; the pool may still hand out a dead connection
    # once after the restart, which is another 503 and another redelivery.
    answers = []
    for d in deliveries:
        for _ in range(10):
            r = await deliver(project, d)
            if r.status_code != 503:
                break
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert [a["duplicate"] for a in answers] == [False] * 3
    assert sorted(a["outcome"] for a in answers) == ["applied", "ignored", "ignored"]
    [grant] = await grants(project)
    assert (grant["category"], grant["payment_id"]) == ("paid", created["id"])
    assert (await balance(project, "u"))["total"] == 100


@pytest.mark.parametrize("committed", [False, True])
async def test_a_webhook_whose_commit_reply_is_lost_is_503_and_its_redelivery_grants_once(
    project: Project,
    fake_razorpay: FakeRazorpay,
    db: Database,
    lose_next_commit: dict[str, bool],  # noqa: F811 - the imported fixture
    committed: bool,
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_paid = fake_razorpay.pay(created["provider_reference"])[0]

    lose_next_commit.update(armed=True, applied=committed)
    r = await deliver(project, link_paid)

    # Whether the COMMIT happened is unknown to the app: 503, and Razorpay redelivers.
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "commit_outcome_unknown"
    again = await delivered(project, link_paid)
    # Stored with its grant in one transaction: either both happened, or neither did.
    assert again["duplicate"] is committed
    await assert_paid_once(project, db, created["id"], 100)


async def reconcile_until(db: Database, app: FastAPI, done: Any, *, seconds: float) -> None:
    """Run the job ``seconds`` from now until ``done()`` (other tests' due payments share the
    batches)."""
    settings = app.state.settings
    later = utcnow() + timedelta(seconds=seconds)
    for _ in range(50):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=later)
        if await done():
            return


async def test_a_link_paid_after_a_failed_attempt_is_still_reconciled_when_its_webhooks_are_lost(
    project: Project, fake_razorpay: FakeRazorpay, db: Database, app: FastAPI
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_id = created["provider_reference"]
    # The first attempt fails (and says so); the retry on the same link pays, unheard.
    await delivered(project, fake_razorpay.fail(link_id, reason="Card declined"))
    lost = fake_razorpay.pay(link_id)

    async def credited() -> bool:
        return (await balance(project, "u"))["total"] != 0

    after = app.state.settings.payments.reconcile_after_seconds + 1
    await reconcile_until(db, app, credited, seconds=after)

    out = await payment(project, created["id"])
    assert out["status"] == "succeeded"
    assert out["provider_payment_id"] == lost[1].payload["payload"]["payment"]["entity"]["id"]
    await assert_paid_once(project, db, created["id"], 100)
    assert [(await delivered(project, d))["outcome"] for d in lost] == ["ignored"] * 3
    await assert_paid_once(project, db, created["id"], 100)


async def test_a_link_that_only_failed_is_expired_when_reconciliation_gives_up(
    project: Project, fake_razorpay: FakeRazorpay, db: Database, app: FastAPI
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    await delivered(project, fake_razorpay.fail(created["provider_reference"]))

    async def ended() -> bool:
        status: str = (await payment(project, created["id"]))["status"]
        return status == "expired"

    give_up = app.state.settings.payments.reconcile_give_up_seconds + 1
    await reconcile_until(db, app, ended, seconds=give_up)

    out = await payment(project, created["id"])
    assert (out["status"], out["failure_reason"]) == ("expired", "Payment failed")
    assert (await balance(project, "u"))["total"] == 0


@pytest.mark.parametrize(("ending", "status"), [("expire", "expired"), ("cancel_link", "canceled")])
async def test_reconciliation_ends_a_link_that_expired_or_was_cancelled_unpaid(
    project: Project,
    fake_razorpay: FakeRazorpay,
    db: Database,
    app: FastAPI,
    ending: str,
    status: str,
) -> None:
    await configure(project, fake_razorpay)
    created = await top_up(project)
    link_id = created["provider_reference"]
    getattr(fake_razorpay, ending)(link_id)  # its webhook is lost
    settings = app.state.settings
    later = utcnow() + timedelta(seconds=settings.payments.reconcile_after_seconds + 1)

    for _ in range(50):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=later)
        if (await payment(project, created["id"]))["status"] != "created":
            break

    assert (await payment(project, created["id"]))["status"] == status
    assert (await balance(project, "u"))["total"] == 0
    assert len(await event_types(project, f"payment.{status}")) == 1
