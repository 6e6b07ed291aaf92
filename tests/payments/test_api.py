"""POST/GET /v1/payments and the Stripe webhook receiver over HTTP, with the real Stripe
adapter and the official SDK talking to the fake Stripe (tests/fakes/stripe_server.py), and
webhooks signed by the fake with Stripe's scheme."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core.clock import utcnow
from app.db.session import Database
from app.integrations.stripe.webhooks import signature_header
from app.payments import reconcile
from tests.conftest import Project, assert_ledger_consistent
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import balance, body
from tests.payments.helpers import grants
from tests.payments.stripe_helpers import (
    configure,
    created,
    deliver,
    intent_of,
    payment,
    post_raw,
    provider_events,
    signature_failures,
    top_up,
)


async def create(
    project: Project, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    return await top_up(project, headers, **extra)


async def payments_stored(project: Project) -> list[Any]:
    r = await project.get("/v1/payments")
    assert r.status_code == 200, r.text
    return list(body(r)["data"])


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"currency": "ZZZ", "credits": 1}, "currency"),
        ({"currency": "XXX", "credits": 1}, "currency"),
        ({"amount": "10.001", "credits": 1}, "amount"),
        ({"amount": "10.5", "currency": "JPY", "credits": 1}, "amount"),
        ({"amount": "999999999999999", "currency": "CLF", "credits": 1}, "amount"),
        ({"amount": 0, "credits": 1}, "amount"),
        ({"amount": "-1", "credits": 1}, "amount"),
        ({"credits": 0}, "credits"),
        ({}, "credits"),  # no credits and no credits_per_unit for USD
        ({"currency": "US", "credits": 1}, "currency"),
        ({"provider": "paypal", "credits": 1}, "provider"),
        ({"credits": 1, "success_url": "javascript:alert(1)"}, "success_url"),
    ],
)
async def test_invalid_top_ups_are_422_and_store_nothing(
    project: Project, extra: dict[str, Any], loc: str
) -> None:
    r = await create(project, **extra)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "validation_error"
    assert loc in problem["errors"][0]["loc"]
    assert await payments_stored(project) == []


async def test_credits_per_unit_rates_are_upper_cased_and_validated(project: Project) -> None:
    r = await project.patch("/v1/project", {"settings": {"credits_per_unit": {"usd": "100"}}})
    assert r.status_code == 200, r.text
    assert body(r)["settings"]["credits_per_unit"] == {"USD": 100}
    for bad in ({"usd": 0}, {"ZZZ": 1}, {"usd": "1.0000001"}):
        r = await project.patch("/v1/project", {"settings": {"credits_per_unit": bad}})
        assert r.status_code == 422, (bad, r.text)


async def test_a_top_up_opens_a_checkout_and_creates_the_user(
    project: Project, fake_stripe: FakeStripe
) -> None:
    await configure(project, fake_stripe)
    r = await project.patch("/v1/project", {"settings": {"credits_per_unit": {"USD": "12.5"}}})
    assert r.status_code == 200, r.text

    r = await create(project, amount="10.50", metadata={"order": "42"})

    assert r.status_code == 201, r.text
    out = body(r)
    assert out["status"] == "created"
    assert out["credits"] == Decimal("131.25")
    assert out["amount"] == Decimal("10.5")
    assert out["amount_minor"] == 1050
    assert out["currency"] == "USD"
    assert out["provider_reference"].startswith("cs_test_")
    assert out["checkout_url"] == f"https://checkout.stripe.com/c/pay/{out['provider_reference']}"
    assert out["metadata"] == {"order": "42"}
    [req] = [q for q in fake_stripe.requests if q.path == "/v1/checkout/sessions"]
    assert req.method == "POST"
    assert req.headers["idempotency-key"] == out["id"]
    assert req.params["line_items"][0]["price_data"]["unit_amount"] == "1050"
    assert req.params["metadata"]["order"] == "42"
    assert fake_stripe.session_ids() == [out["provider_reference"]]
    assert (await project.get("/v1/users/u")).status_code == 200
    assert (await balance(project, "u"))["total"] == 0  # created, credited only when paid


async def test_a_provider_not_configured_is_409(project: Project, fake_stripe: FakeStripe) -> None:
    r = await create(project, credits=10)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "provider_not_configured"
    assert await payments_stored(project) == []
    assert fake_stripe.requests == []


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        # The SDK retries a 5xx twice itself: all three attempts fail.
        ({"count": 3, "status": 500}, 503, "provider_unavailable"),
        (
            {
                "count": 1,
                "status": 400,
                "body": {"error": {"type": "invalid_request_error", "message": "No."}},
            },
            502,
            "provider_error",
        ),
    ],
)
async def test_a_provider_failure_stores_nothing(
    project: Project, fake_stripe: FakeStripe, failure: dict[str, Any], status: int, code: str
) -> None:
    await configure(project, fake_stripe)
    fake_stripe.fail_next(**failure)

    r = await create(project, credits=10, headers={"Idempotency-Key": "k1"})

    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    if status == 503:
        assert int(r.headers["Retry-After"]) >= 1
    assert await payments_stored(project) == []
    assert fake_stripe.session_ids() == []
    # A 5xx or 502 does not hold the key: the retry runs.
    r = await create(project, credits=10, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 201, r.text
    assert fake_stripe.session_ids() == [body(r)["provider_reference"]]


async def test_payments_are_listed_filtered_and_isolated_per_project(
    project: Project, other_project: Project, fake_stripe: FakeStripe
) -> None:
    await configure(project, fake_stripe)
    first = body(await create(project, credits=1))
    second = body(await create(project, credits=2, user_id="v"))

    r = await project.get("/v1/payments", params={"user_id": "v"})
    assert [p["id"] for p in body(r)["data"]] == [second["id"]]
    r = await project.get("/v1/payments", params={"status": "created", "provider": "stripe"})
    assert [p["id"] for p in body(r)["data"]] == [first["id"], second["id"]]
    r = await project.get("/v1/payments", params={"status": "succeeded"})
    assert body(r)["data"] == []
    r = await project.get("/v1/payments", params={"limit": 1})
    page = body(r)
    assert page["has_more"] is True
    assert page["next_cursor"] == first["id"]

    assert (await other_project.get(f"/v1/payments/{first['id']}")).status_code == 404
    assert body(await other_project.get("/v1/payments"))["data"] == []
    r = await project.get("/v1/payments/not-a-uuid")
    assert r.status_code == 404
    assert r.json()["code"] == "payment_not_found"


async def test_a_signed_webhook_credits_once_and_a_redelivery_is_a_duplicate(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    [completed] = fake_stripe.pay(out["provider_reference"])
    raw, headers = fake_stripe.sign(completed)

    r = await post_raw(project, raw, {**headers, "Idempotency-Key": "providers-never-send-this"})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "duplicate": False, "outcome": "applied"}
    r = await post_raw(project, raw, headers)
    assert r.json() == {"received": True, "duplicate": True, "outcome": None}

    assert (await balance(project, "u"))["total"] == 100
    assert (await payment(project, out["id"]))["status"] == "succeeded"
    await assert_ledger_consistent(db)


async def test_twenty_concurrent_deliveries_of_one_webhook_grant_once(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    [completed] = fake_stripe.pay(out["provider_reference"])
    raw, headers = fake_stripe.sign(completed)

    responses = await asyncio.gather(*(post_raw(project, raw, headers) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


async def test_a_forged_webhook_is_400_counted_and_stores_nothing(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    [completed] = fake_stripe.pay(out["provider_reference"])
    raw, headers = fake_stripe.sign(completed)
    before = signature_failures()

    wrong_secret = await deliver(project, fake_stripe, completed, secret="whsec_someone_else")
    tampered = await post_raw(project, raw.replace(b"1000", b"1001"), headers)
    unsigned = await post_raw(project, raw, {"content-type": "application/json"})

    for r in (wrong_secret, tampered, unsigned):
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "invalid_signature"
    assert signature_failures() == before + 3
    assert await provider_events(db, project) == []
    assert (await balance(project, "u"))["total"] == 0


async def test_webhooks_for_unconfigured_or_unknown_projects_are_refused_alike(
    project: Project, fake_stripe: FakeStripe
) -> None:
    event = {"id": "evt_x", "type": "customer.created", "data": {"object": {}}}
    raw, headers = fake_stripe.sign(event)
    unconfigured = await post_raw(project, raw, headers)
    unknown = await project.client.post(
        f"/v1/webhooks/stripe/{uuid.uuid4()}", content=raw, headers=headers
    )
    for r in (unconfigured, unknown):
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "webhook_not_configured"
    assert unconfigured.json()["detail"] == unknown.json()["detail"]
    r = await project.client.post("/v1/webhooks/stripe/not-a-uuid", content=raw, headers=headers)
    assert r.status_code == 404


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"type": "charge.refunded"}', b'{"id": "evt_1", "type": "x"}'[:-1]],
)
async def test_a_verified_body_that_is_no_event_is_400_malformed(
    project: Project, fake_stripe: FakeStripe, db: Database, raw: bytes
) -> None:
    await configure(project, fake_stripe)
    headers = {"stripe-signature": _signature(raw, fake_stripe.webhook_secret)}
    r = await post_raw(project, raw, headers)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_webhook"
    assert await provider_events(db, project) == []


def _signature(raw: bytes, secret: str) -> str:
    return signature_header(raw, secret, int(time.time()))


async def test_an_event_creditd_does_not_act_on_is_stored_and_ignored(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    event = {"id": "evt_other", "type": "customer.created", "data": {"object": {}}}
    r = await deliver(project, fake_stripe, event)
    assert r.json() == {"received": True, "duplicate": False, "outcome": "ignored"}
    assert [(e.event_id, e.outcome) for e in await provider_events(db, project)] == [
        ("evt_other", "ignored")
    ]


async def test_reconciliation_credits_a_lost_webhook_once_even_when_it_arrives_later(
    project: Project, fake_stripe: FakeStripe, db: Database, app: FastAPI
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    session_id = out["provider_reference"]
    [completed] = fake_stripe.pay(session_id)  # the payer paid; the webhook got lost
    settings = app.state.settings
    later = utcnow() + timedelta(seconds=settings.payments.reconcile_after_seconds + 1)

    # Other projects' due payments may be claimed too: ours must be among them.
    for _ in range(50):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=later)
        if (await payment(project, out["id"]))["status"] != "created":
            break
    assert (await payment(project, out["id"]))["status"] == "succeeded"
    assert (await balance(project, "u"))["total"] == 100

    r = await deliver(project, fake_stripe, completed)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "ignored"
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    assert (
        intent_of(fake_stripe, session_id)
        == (await payment(project, out["id"]))["provider_payment_id"]
    )
    await assert_ledger_consistent(db)


async def test_reconciliation_gives_up_on_a_payment_nobody_paid(
    project: Project, fake_stripe: FakeStripe, db: Database, app: FastAPI
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    session_id = out["provider_reference"]
    settings = app.state.settings
    much_later = utcnow() + timedelta(seconds=settings.payments.reconcile_give_up_seconds + 1)

    for _ in range(50):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=much_later)
        status = (await payment(project, out["id"]))["status"]
        if status != "created":
            break
    assert status == "expired"
    assert fake_stripe.session(session_id)["status"] == "open", "Stripe was only asked"

    def lookups() -> int:
        return sum(q.method == "GET" and q.path.endswith(session_id) for q in fake_stripe.requests)

    # Claimed and pushed back: the same instant finds nothing of ours due again.
    looked = lookups()
    assert looked >= 1
    await reconcile.reconcile_once(db, settings, batch_size=100, now=much_later)
    assert lookups() == looked
