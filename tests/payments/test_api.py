"""POST/GET /v1/payments and the webhook receivers, over HTTP, with a stand-in provider.

Needs the providers helper's work (PUT /v1/providers/..., app.core.secrets): on the payments
branch alone only the validation tests can pass.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import text

from app.core.clock import utcnow
from app.db.session import Database
from app.integrations import registry
from app.integrations.base import PaymentRef, PaymentSucceeded, ProviderError
from app.payments import reconcile
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body
from tests.payments.fake_provider import HEADER, FakeProvider, sign, succeeded_event
from tests.payments.helpers import grants

WEBHOOK_SECRET = "whsec_test_0123456789"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    provider = FakeProvider()
    monkeypatch.setattr(registry, "get", lambda name: provider)
    return provider


async def configure(project: Project) -> None:
    r = await project.put(
        "/v1/providers/stripe",
        {"secret_key": "sk_test_123", "webhook_secret": WEBHOOK_SECRET},
    )
    assert r.status_code == 200, r.text


async def create(
    project: Project, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    payload = {"user_id": "u", "provider": "stripe", "amount": "10.00", "currency": "usd"}
    return await project.post("/v1/payments", {**payload, **extra}, headers=headers or {})


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
    project: Project, fake: FakeProvider
) -> None:
    await configure(project)
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
    assert out["checkout_url"].startswith("https://checkout.example/cs_")
    assert out["provider_reference"].startswith("cs_")
    assert out["metadata"] == {"order": "42"}
    [req] = fake.checkouts
    assert req.idempotency_key == out["id"]
    assert req.amount_minor == 1050
    assert (await balance(project, "u"))["total"] == 0  # created, credited only when paid


async def test_a_provider_not_configured_is_409(project: Project, fake: FakeProvider) -> None:
    r = await create(project, credits=10)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "provider_not_configured"
    assert await payments_stored(project) == []


@pytest.mark.parametrize(
    ("transient", "status", "code"),
    [(True, 503, "provider_unavailable"), (False, 502, "provider_error")],
)
async def test_a_provider_failure_stores_nothing(
    project: Project, fake: FakeProvider, transient: bool, status: int, code: str
) -> None:
    await configure(project)
    fake.fail = ProviderError("boom", transient=transient, status=500)

    r = await create(project, credits=10, headers={"Idempotency-Key": "k1"})

    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    if transient:
        assert int(r.headers["Retry-After"]) >= 1
    assert await payments_stored(project) == []
    # A 5xx does not hold the key: the retry runs.
    fake.fail = None
    r = await create(project, credits=10, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 201, r.text


async def test_payments_are_listed_filtered_and_isolated_per_project(
    project: Project, other_project: Project, fake: FakeProvider
) -> None:
    await configure(project)
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


def _failures() -> float:
    value = REGISTRY.get_sample_value(
        "creditd_webhook_signature_failures_total", {"provider": "stripe"}
    )
    return value or 0.0


async def _deliver(project: Project, raw: bytes, secret: str = WEBHOOK_SECRET, **kw: Any) -> Any:
    headers = {HEADER: sign(raw, secret), "Content-Type": "application/json", **kw}
    return await project.client.post(
        f"/v1/webhooks/stripe/{project.id}", content=raw, headers=headers
    )


async def _events_stored(db: Database, project: Project) -> int:
    async with db.transaction() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM provider_events WHERE project_id = :p"),
            {"p": uuid.UUID(project.id)},
        )
    return int(count or 0)


async def test_a_signed_webhook_credits_once_and_a_redelivery_is_a_duplicate(
    project: Project, fake: FakeProvider, db: Database
) -> None:
    await configure(project)
    payment = body(await create(project, credits=100))
    raw = succeeded_event("evt_1", payment["provider_reference"])

    r = await _deliver(project, raw, **{"Idempotency-Key": "providers-never-send-this"})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "duplicate": False, "outcome": "applied"}
    r = await _deliver(project, raw)
    assert r.json() == {"received": True, "duplicate": True, "outcome": None}

    assert (await balance(project, "u"))["total"] == 100
    assert body(await project.get(f"/v1/payments/{payment['id']}"))["status"] == "succeeded"
    await assert_ledger_consistent(db)


async def test_twenty_concurrent_deliveries_of_one_webhook_grant_once(
    project: Project, fake: FakeProvider, db: Database
) -> None:
    await configure(project)
    payment = body(await create(project, credits=100))
    raw = succeeded_event("evt_many", payment["provider_reference"])

    responses = await asyncio.gather(*(_deliver(project, raw) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


async def test_a_forged_webhook_is_400_counted_and_stores_nothing(
    project: Project, fake: FakeProvider, db: Database
) -> None:
    await configure(project)
    payment = body(await create(project, credits=100))
    raw = succeeded_event("evt_forged", payment["provider_reference"])
    before = _failures()

    wrong_secret = await _deliver(project, raw, secret="whsec_someone_else")
    tampered = await project.client.post(
        f"/v1/webhooks/stripe/{project.id}",
        content=raw.replace(b"1000", b"1001"),
        headers={HEADER: sign(raw, WEBHOOK_SECRET)},
    )

    for r in (wrong_secret, tampered):
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "invalid_signature"
    assert _failures() == before + 2
    assert await _events_stored(db, project) == 0
    assert (await balance(project, "u"))["total"] == 0


async def test_webhooks_for_unconfigured_or_unknown_projects_are_refused_alike(
    project: Project, fake: FakeProvider
) -> None:
    raw = succeeded_event("evt_x", "cs_nothing")
    unconfigured = await _deliver(project, raw)
    unknown = await project.client.post(
        f"/v1/webhooks/stripe/{uuid.uuid4()}", content=raw, headers={HEADER: sign(raw, "x")}
    )
    for r in (unconfigured, unknown):
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "webhook_not_configured"
    r = await project.client.post("/v1/webhooks/stripe/not-a-uuid", content=raw)
    assert r.status_code == 404


async def test_a_verified_body_that_is_no_event_is_400_malformed(
    project: Project, fake: FakeProvider
) -> None:
    await configure(project)
    r = await _deliver(project, b"not json")
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_webhook"


async def test_an_event_creditd_does_not_act_on_is_stored_and_ignored(
    project: Project, fake: FakeProvider, db: Database
) -> None:
    await configure(project)
    r = await _deliver(project, b'{"id": "evt_other", "type": "customer.created"}')
    assert r.json() == {"received": True, "duplicate": False, "outcome": "ignored"}
    assert await _events_stored(db, project) == 1


async def test_reconciliation_credits_a_lost_webhook_once_even_when_it_arrives_later(
    project: Project, fake: FakeProvider, db: Database, app: FastAPI
) -> None:
    await configure(project)
    payment = body(await create(project, credits=100))
    reference = payment["provider_reference"]
    fake.lookups[reference] = [
        PaymentSucceeded(
            ref=PaymentRef(payment_id=uuid.UUID(payment["id"])),
            amount_minor=1000,
            currency="USD",
            provider_payment_id="pay_evt_late",
        )
    ]
    settings = app.state.settings
    later = utcnow() + timedelta(seconds=settings.payments.reconcile_after_seconds + 1)

    # Other projects' due payments may be claimed too: ours must be among them.
    for _ in range(100):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=later)
        if any(p.reference == reference for p in fake.looked_up):
            break
    assert (await balance(project, "u"))["total"] == 100

    r = await _deliver(project, succeeded_event("evt_late", reference))
    assert r.json()["outcome"] == "ignored"
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


async def test_reconciliation_gives_up_on_a_payment_nobody_paid(
    project: Project, fake: FakeProvider, db: Database, app: FastAPI
) -> None:
    await configure(project)
    payment = body(await create(project, credits=100))
    settings = app.state.settings
    much_later = utcnow() + timedelta(seconds=settings.payments.reconcile_give_up_seconds + 1)

    for _ in range(100):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=much_later)
        status = body(await project.get(f"/v1/payments/{payment['id']}"))["status"]
        if status != "created":
            break
    assert status == "expired"
    # Claimed and pushed back: the same instant finds nothing of ours due again.
    looked = len(fake.looked_up)
    await reconcile.reconcile_once(db, settings, batch_size=100, now=much_later)
    assert all(p.payment_id != uuid.UUID(payment["id"]) for p in fake.looked_up[looked:])
