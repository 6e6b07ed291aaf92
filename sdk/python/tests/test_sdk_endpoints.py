"""Every operation in openapi/openapi.json is reachable through the SDK, with typed results.

The tour goes through the recording proxy, so the test sees which operations were really called
(and answered 2xx), not just which methods exist. The server's Stripe and Razorpay SDKs talk to
the fakes of tests/fakes/ (see conftest.py).
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from creditd_sdk import AsyncCreditd, Creditd
from creditd_sdk.models import Event, Grant, Page, Payment, Tier, Transaction, WebhookEndpoint
from sdk_testkit import ADMIN_TOKEN, ROOT, Exchange, FaultProxy, ServerProcess

from tests.fakes.razorpay_server import FakeRazorpay
from tests.fakes.stripe_server import FakeStripe

SPEC = json.loads((ROOT / "openapi" / "openapi.json").read_text())

# Operations that are not the client's to call, each with the reason. Only provider webhook
# receivers belong here (a test holds the list to that).
NOT_CLIENT_OPERATIONS = {
    "webhooks_stripe": "called by Stripe, signed with the project's webhook secret",
    "webhooks_razorpay": "called by Razorpay, signed with the project's webhook secret",
}


def _operations() -> list[tuple[str, str, re.Pattern[str]]]:
    ops = []
    for template, methods in SPEC["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
        for method, op in methods.items():
            ops.append((op["operationId"], method.upper(), pattern))
    return ops


def _operation_of(exchange: Exchange, ops: list[tuple[str, str, re.Pattern[str]]]) -> str:
    matches = [
        (pattern.pattern.count("[^/]+"), op_id)
        for op_id, method, pattern in ops
        if method == exchange.method and pattern.match(exchange.path)
    ]
    assert matches, f"no operation for {exchange.method} {exchange.path}"
    return min(matches)[1]  # a literal segment beats a parameter (/transactions/start)


def _tour(
    proxy: FaultProxy, server: ServerProcess, stripe: FakeStripe, razorpay: FakeRazorpay
) -> None:
    admin = Creditd(ADMIN_TOKEN, base_url=proxy.url, spool=None)
    created = admin.admin.create_project(name="tour")
    assert created.api_key.scopes == ["admin"]
    assert admin.admin.get_project(created.id).name == "tour"
    assert any(p.id == created.id for p in admin.paginate(admin.admin.list_projects, limit=100))
    admin.close()

    c = Creditd(created.api_key.key, base_url=proxy.url, spool=None)
    assert c.service.healthz().status == "ok"
    assert c.service.readyz().status == "ok"
    assert "creditd" in c.service.metrics() or "python_info" in c.service.metrics()

    assert c.project.get().id == created.id
    patched = c.project.update(
        settings={"default_hold_ttl_seconds": 300, "credits_per_unit": {"INR": Decimal("1.5")}}
    )
    assert patched.settings.default_hold_ttl_seconds == 300
    assert patched.settings.credits_per_unit == {"INR": Decimal("1.5")}

    key = c.api_keys.create(name="reader", scopes=["read"])
    assert key.key
    assert key.key.startswith(key.prefix)
    assert [k.id for k in c.api_keys.list().data if k.id == key.id] == [key.id]
    c.api_keys.revoke(key.id)

    c.models.put("_default", input_price_per_1k=1, output_price_per_1k=2)
    c.models.put("gpt-4o", input_price_per_1k="2.5", output_price_per_1k=10)
    assert c.models.get("gpt-4o").input_price_per_1k == Decimal("2.5")
    assert {m.id for m in c.models.list().data} == {"_default", "gpt-4o"}
    c.models.delete("gpt-4o")

    tier = c.tiers.create("free", name="Free", credits=5, refill_interval="month")
    assert isinstance(tier, Tier)
    assert tier.credits == Decimal(5)
    assert c.tiers.get("free").refill_interval == "month"
    assert [t.id for t in c.tiers.list().data] == ["free"]
    assert c.tiers.update("free", name="Free tier", rollover_cap=None).name == "Free tier"
    c.tiers.create("temp", name="Temporary")
    c.tiers.delete("temp")

    c.users.create("u1", metadata={"a": 1})
    assert [u.id for u in c.users.list().data] == ["u1"]
    assert c.users.update("u1", metadata={"b": 2}).metadata == {"a": 1, "b": 2}
    assert c.users.assign_tier("u1", tier_id="free").tier_id == "free"
    assert c.users.get("u1").balance.total == Decimal(5)

    granted = c.credits.grant("u1", 10, reason="top-up", category="paid")
    assert isinstance(granted, Grant)
    assert (granted.category, granted.payment_id, granted.cost_basis) == ("paid", None, None)
    assert c.credits.debit("u1", 1).balance == Decimal(14)
    assert len(c.credits.list_grants("u1").data) == 2
    assert [e.kind for e in c.credits.list_ledger("u1").data] == ["grant", "grant", "debit"]

    start = c.transactions.start(
        user_id="u1", model="m", provisional_tokens={"input_tokens": 1000}, feature_identifier="f"
    )
    extended = c.transactions.extend(start.transaction_id, hold_ttl_seconds=900)
    assert isinstance(extended, Transaction)
    assert extended.expires_at is not None
    done = c.transactions.complete(start.transaction_id, success=True)
    assert done.credits_used == Decimal(1)
    refund = c.transactions.refund(start.transaction_id, amount="0.5", reason="bad answer")
    assert refund.refunded_total == Decimal("0.5")
    assert c.transactions.get(start.transaction_id).refunded_total == Decimal("0.5")
    listed = c.transactions.list(user_id="u1", status="completed")
    assert [t.id for t in listed.data] == [start.transaction_id]

    _tour_teams(c)
    _tour_pricing_jobs_and_export(c)

    used = c.usage.record(user_id="u1", model="m", tokens={"output_tokens": 500})
    assert used.credits_used == Decimal(1)
    check = c.usage.check(user_id="u1", amount=Decimal(1000))
    assert (check.allowed, check.reason) == (False, "insufficient_credits")

    plan = c.plans.create(
        "pro",
        name="Pro",
        price={"amount": Decimal("9.99"), "currency": "USD"},
        interval="month",
        credits_per_period=100,
    )
    assert plan.price.amount == Decimal("9.99")
    assert c.plans.get("pro").credits_per_period == Decimal(100)
    assert [p.id for p in c.plans.list().data] == ["pro"]
    assert c.plans.update("pro", name="Pro plan").name == "Pro plan"
    sub = c.subscriptions.create(
        "u1", plan_id="pro", provider="manual", success_url="https://example.com/ok"
    )
    assert sub.subscription.status == "active"
    assert sub.checkout_url is None
    assert [s.id for s in c.subscriptions.list("u1").data] == [sub.subscription.id]
    assert c.subscriptions.get(sub.subscription.id).plan_id == "pro"
    assert c.subscriptions.cancel(sub.subscription.id, at_period_end=False).status == "canceled"
    c.plans.delete("pro")

    expires = datetime.now(UTC) + timedelta(days=30)
    promo = c.promos.create("WELCOME", credits="2.5", expires_at=expires)
    assert promo.code == "welcome"
    assert c.promos.get("WELCOME").credits == Decimal("2.5")
    assert [p.code for p in c.promos.list().data] == ["welcome"]
    assert c.promos.update("welcome", description="hello").description == "hello"
    assert c.promos.eligibility("welcome", user_id="u1").eligible is True
    claim = c.promos.claim("welcome", user_id="u1")
    assert claim.grant.amount == Decimal("2.5")
    assert [r.user_id for r in c.promos.list_redemptions("welcome").data] == ["u1"]
    c.promos.delete("welcome")

    cap = c.spend_caps.put("u1", "day", limit=Decimal("100.5"), action="warn")
    assert cap.limit == Decimal("100.5")
    assert [(x.period, x.action) for x in c.spend_caps.list("u1")] == [("day", "warn")]
    c.spend_caps.delete("u1", "day")

    events: Page[Event] = c.events.list(type="credits.granted")
    assert events.data
    assert c.events.get(events.data[0].id).type == "credits.granted"

    spend = c.analytics.spend(group_by="model")
    assert spend.group_by == "model"
    assert c.analytics.summary().credits_consumed >= 0

    _tour_payments(c, server, stripe, razorpay)
    _tour_webhooks(c)

    c.users.create("u2")
    c.users.delete("u2")
    c.close()


def _tour_pricing_jobs_and_export(c: Creditd) -> None:
    c.models.put("expr", expression="input_tokens * 0.01 + search_queries * 0.5")
    preview = c.pricing.evaluate(model="expr", tokens={"input_tokens": 100, "search_queries": 2})
    assert preview.credits == Decimal(2)
    assert preview.breakdown["kind"] == "expression"
    assert c.usage.record(
        user_id="u1", model="expr", tokens={"input_tokens": 100, "search_queries": 2}
    ).credits_used == Decimal(2)
    assert c.jobs.put("batch_job", price="0.25").price == Decimal("0.25")
    assert c.jobs.get("batch_job").name == "batch_job"
    assert [j.name for j in c.jobs.list().data] == ["batch_job"]
    assert c.usage.record(user_id="u1", job="batch_job", quantity=4).credits_used == Decimal(1)
    c.jobs.delete("batch_job")
    c.models.delete("expr")
    lines = list(c.credits.export_ledger())
    assert lines[-1]["object"] == "ledger_export_end"  # complete (recent entries come later)


def _tour_teams(c: Creditd) -> None:
    team = c.teams.create("t1", name="Acme", metadata={"a": 1})
    assert team.balance.total == Decimal(0)
    assert [t.id for t in c.teams.list().data] == ["t1"]
    assert c.teams.update("t1", name="Acme Inc").name == "Acme Inc"
    member = c.teams.put_member(
        "t1", "u1", role="owner", spend_caps=[{"period": "day", "limit": 50}]
    )
    assert member.spend_caps[0].limit == Decimal(50)
    assert [m.user_id for m in c.teams.list_members("t1").data] == ["u1"]
    assert c.teams.grant("t1", 20).balance == Decimal(20)
    assert c.teams.debit("t1", 1).balance == Decimal(19)
    assert len(c.teams.list_grants("t1").data) == 1
    started = c.transactions.start(
        user_id="u1", model="m", team_id="t1", provisional_tokens={"input_tokens": 1000}
    )
    assert started.hold_amount == Decimal(1)
    c.transactions.complete(started.transaction_id, success=True)
    assert c.transactions.get(started.transaction_id).team_id == "t1"
    assert (
        c.usage.record(user_id="u1", model="m", team_id="t1", tokens={"input_tokens": 1000}).balance
        == 17
    )
    assert c.usage.check(user_id="u1", team_id="t1", amount=1).allowed
    ledger = c.teams.list_ledger("t1").data
    assert [e.user_id for e in ledger if e.kind == "usage"] == ["u1", "u1"]
    assert c.analytics.spend(group_by="member", team_id="t1").data[0].key == "u1"
    assert c.teams.get("t1").balance.held == Decimal(0)
    c.teams.remove_member("t1", "u1")
    c.teams.delete("t1")


def _tour_payments(
    c: Creditd, server: ServerProcess, stripe: FakeStripe, razorpay: FakeRazorpay
) -> None:
    """Provider accounts, a paid top-up and the liability it leaves."""
    # The fake's own secret_key may contain "-" (token_urlsafe), which the server's key
    # pattern refuses; a hex key on the same fake account never does.
    secret_key = stripe.add_key("sk_test_" + secrets.token_hex(16))
    account = c.providers.put_stripe(
        secret_key=secret_key,
        webhook_secret=stripe.webhook_secret,
        webhook_secret_grace_seconds=60,
    )
    assert account.provider == "stripe"
    assert account.secret_key != secret_key  # masked
    rzp = c.providers.put_razorpay(
        key_id=razorpay.key_id,
        key_secret=razorpay.key_secret,
        webhook_secret=razorpay.webhook_secret,
    )
    assert rzp.key_id == razorpay.key_id
    assert sorted(a.provider for a in c.providers.list()) == ["razorpay", "stripe"]
    c.providers.delete("razorpay")
    assert [a.provider for a in c.providers.list()] == ["stripe"]

    payment = c.payments.create(
        user_id="u1",
        provider="stripe",
        amount="9.99",
        currency="USD",
        credits=500,
        success_url="https://example.com/ok",
        cancel_url="https://example.com/cancel",
        metadata={"order": "42"},
    )
    assert isinstance(payment, Payment)
    assert (payment.status, payment.amount, payment.amount_minor) == (
        "created",
        Decimal("9.99"),
        999,
    )
    assert payment.checkout_url
    assert payment.provider_reference is not None
    assert payment.metadata == {"order": "42"}

    # The webhook goes straight to the server: Stripe calls it, not the client (not proxied).
    (event,) = stripe.pay(payment.provider_reference)
    raw, headers = stripe.sign(event)
    delivered = httpx.post(
        f"{server.url}/v1/webhooks/stripe/{c.project.get().id}",
        content=raw,
        headers=headers,
        timeout=30,
    )
    assert delivered.status_code == 200, delivered.text

    paid = c.payments.get(payment.id)
    assert (paid.status, paid.credits_granted) == ("succeeded", Decimal(500))
    listed = c.payments.list(user_id="u1", provider="stripe", status="succeeded")
    assert [p.id for p in listed.data] == [payment.id]
    grant = next(g for g in c.credits.list_grants("u1").data if g.payment_id == payment.id)
    assert (grant.category, grant.cost_currency) == ("paid", "USD")

    liability = c.analytics.liability()
    # The top-up, and the period of the tour's manual "pro" subscription (9.99 for 100).
    assert [(p.currency, p.credits, p.value) for p in liability.paid] == [
        ("USD", Decimal(600), Decimal("19.98"))
    ]
    assert liability.paid_unpriced_credits > 0  # the hand-made paid grant of the tour


def _tour_webhooks(c: Creditd) -> None:
    """Outbound webhook endpoints, a test event, its attempts and a redelivery."""
    endpoint = c.webhook_endpoints.create(
        url="https://hooks.invalid/tour", events=["credits.*"], metadata={"team": "core"}
    )
    assert isinstance(endpoint, WebhookEndpoint)
    assert endpoint.secret is not None
    assert endpoint.secret.startswith("whsec_")
    assert c.webhook_endpoints.get(endpoint.id).secret is None
    assert [e.id for e in c.webhook_endpoints.list().data] == [endpoint.id]
    patched = c.webhook_endpoints.update(endpoint.id, description="tour", events=["*"])
    assert (patched.description, patched.events) == ("tour", ["*"])
    rotated = c.webhook_endpoints.rotate_secret(endpoint.id, grace_seconds=60)
    assert rotated.secret not in (None, endpoint.secret)
    assert rotated.previous_secret_expires_at is not None
    test = c.webhook_endpoints.test(endpoint.id)
    assert (test.type, test.delivery_status) == ("webhook.test", "pending")
    attempts = c.webhook_endpoints.list_deliveries(endpoint.id, event_id=test.id)
    assert all(a.event_id == test.id for a in attempts.data)  # hooks.invalid never answers
    granted = c.events.list(type="credits.granted").data[0]
    redelivered = c.events.redeliver(granted.id)
    assert [(d.endpoint_id, d.status) for d in redelivered.deliveries] == [(endpoint.id, "pending")]
    assert c.events.get(granted.id).delivery_status == "pending"
    c.webhook_endpoints.delete(endpoint.id)


def test_only_provider_webhooks_are_excluded_from_the_sdk() -> None:
    paths = {op["operationId"]: path for path, ms in SPEC["paths"].items() for op in ms.values()}
    excluded = {op: paths.get(op, "(not in the spec)") for op in NOT_CLIENT_OPERATIONS}
    assert all(path.startswith("/v1/webhooks/") for path in excluded.values()), excluded


def test_every_openapi_operation_is_called_through_the_sdk(
    proxy: FaultProxy, live: ServerProcess, fake_stripe: FakeStripe, fake_razorpay: FakeRazorpay
) -> None:
    _tour(proxy, live, fake_stripe, fake_razorpay)
    ops = _operations()
    called: dict[str, list[int | None]] = {}
    for exchange in proxy.exchanges:
        called.setdefault(_operation_of(exchange, ops), []).append(exchange.status)
    expected = {op_id for op_id, _, _ in ops} - set(NOT_CLIENT_OPERATIONS)
    assert set(called) == expected
    failed = {
        op: statuses
        for op, statuses in called.items()
        if any(s not in {200, 201, 202, 204} for s in statuses)
    }
    assert failed == {}


def test_both_clients_expose_the_same_methods() -> None:
    sync = Creditd("ck_x", base_url="http://127.0.0.1:9", spool=None)
    async_ = AsyncCreditd("ck_x", base_url="http://127.0.0.1:9", spool=None)
    resources = [n for n, v in vars(sync).items() if not n.startswith("_") and hasattr(v, "_c")]
    assert len(resources) == 22
    for name in resources:
        methods = {m for m in dir(getattr(sync, name)) if not m.startswith("_")}
        assert methods == {m for m in dir(getattr(async_, name)) if not m.startswith("_")}, name
    sync.close()
