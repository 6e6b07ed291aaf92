"""The event catalogue is exhaustive and exact: every event the flows store has a type in it
and data its model accepts with no key left over, and the webhook body rendered from it
matches the published OpenAPI schema; every event type literal in app/ is catalogued; the
spec's `webhooks` and the README's table list exactly the catalogue."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import text

from app.cli import openapi_document
from app.core.clock import utcnow
from app.credits import service as credits
from app.db.session import Database
from app.events import catalogue
from app.integrations.base import (
    DisputeChanged,
    PaymentCanceled,
    PaymentExpired,
    PaymentFailed,
    PaymentRef,
    PaymentRefunded,
)
from app.payments import service as payments
from app.webhooks import payload
from app.workers.runner import renew_subscriptions_once, sweep_holds_once
from tests.conftest import Project
from tests.helpers import body, complete, start
from tests.payments.helpers import apply, new_payment, paid
from tests.plans.test_plans import cancel, make_plan, subscribed
from tests.plans.test_provider_subscriptions import (  # noqa: F401 - an autouse fixture
    _provider_subscription_id,
    linked,
    status,
)
from tests.plans.test_provider_subscriptions import apply as apply_to_subscription
from tests.plans.test_provider_subscriptions import paid as period_paid
from tests.plans.test_provider_subscriptions import start as start_provider_subscription
from tests.plans.test_renewals import age_subscription
from tests.tiers.test_tiers import make_tier

ROOT = Path(__file__).resolve().parents[2]
# Emitted by the dispatcher (tests/webhooks/test_dispatch*.py check its data), not these flows.
EMITTED_BY_WEBHOOK_DELIVERY = {"webhook_endpoint.disabled"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(openapi_document())
    return document


# --- flows -------------------------------------------------------------------------------------


async def _ok(response: Any, status_code: int = 201) -> Any:
    assert response.status_code == status_code, response.text
    return body(response) if response.content else None


async def usage_flows(project: Project, db: Database) -> None:
    """transaction.*, spend_cap.exceeded, credits.*, balance.*, promo.claimed, tiers."""
    await project.patch("/v1/project", {"settings": {"low_balance_thresholds": [50]}})
    await project.price("_default", 1000, 0)  # 1 credit per input token
    await project.user("u", credits=100)  # credits.granted, balance.recovered
    first = await start(project, "u", inp=30)  # transaction.started
    await _ok(await complete(project, first["transaction_id"], inp=20), 200)  # .completed
    failed = await start(project, "u", inp=5)
    await _ok(await complete(project, failed["transaction_id"], success=False), 200)  # .failed
    await _ok(  # transaction.refunded
        await project.post(f"/v1/transactions/{first['transaction_id']}/refund", {"amount": 5})
    )
    usage = {"user_id": "u", "model": "m", "tokens": {"input_tokens": 10}}
    await _ok(await project.post("/v1/usage", usage))  # transaction.completed, no hold
    cap = {"limit": 1, "action": "warn"}
    await _ok(await project.put("/v1/users/u/spend-caps/day", cap), 200)
    over = await start(project, "u", inp=5)  # spend_cap.exceeded
    await _ok(await complete(project, over["transaction_id"], inp=5), 200)
    await _ok(await project.delete("/v1/users/u/spend-caps/day"), 204)
    lapsed = await start(project, "u", inp=5)
    async with db.transaction() as session:
        await session.execute(
            text("UPDATE transactions SET expires_at = now() - interval '1 second' WHERE id = :t"),
            {"t": lapsed["transaction_id"]},
        )
    assert await sweep_holds_once(db, batch_size=100) >= 1  # transaction.expired
    left = (await project.balance("u"))["available"]
    await _ok(await project.post("/v1/users/u/debits", {"amount": left}))  # low, depleted
    denied = await start(project, "u", inp=10)  # transaction.denied
    assert denied["continue"] is False
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    await project.grant("u", 5, expires_at=soon)  # balance.recovered
    async with db.transaction() as session:  # credits.expiring, then credits.expired
        await credits.announce_expiring(session, now=utcnow(), days=7, limit=1000)
    async with db.transaction() as session:
        await credits.expire_due(session, now=utcnow() + timedelta(hours=2), limit=1000)
    await _ok(await project.post("/v1/promos", {"code": "WELCOME", "credits": 5}))
    await _ok(await project.post("/v1/promos/WELCOME/claim", {"user_id": "u"}))
    await make_tier(project, "gold", credits=5)
    await _ok(await project.post("/v1/users/u/tier", {"tier_id": "gold"}), 200)


async def team_flows(project: Project, db: Database) -> None:
    """team.*, and transaction.*, credits.* and balance.* of a team's account (team_id)."""
    for user_id in ("tm1", "tm2"):
        await project.user(user_id)
    await _ok(await project.post("/v1/teams", {"id": "t1", "name": "Acme"}))  # team.created
    await _ok(await project.patch("/v1/teams/t1", {"name": "Acme Inc"}), 200)  # team.updated
    await _ok(await project.put("/v1/teams/t1/members/tm1", {"role": "owner"}), 200)  # added
    caps = {"role": "owner", "spend_caps": [{"period": "day", "limit": 1000}]}
    await _ok(await project.put("/v1/teams/t1/members/tm1", caps), 200)  # .member_updated
    await _ok(await project.put("/v1/teams/t1/members/tm2", {}), 200)
    await _ok(await project.post("/v1/teams/t1/credits", {"amount": 100}))  # granted, recovered
    first = await start(project, "tm1", inp=30, team_id="t1")
    await _ok(await complete(project, first["transaction_id"], inp=20), 200)
    failed = await start(project, "tm2", inp=5, team_id="t1")
    await _ok(await complete(project, failed["transaction_id"], success=False), 200)
    await _ok(
        await project.post(f"/v1/transactions/{first['transaction_id']}/refund", {"amount": 5})
    )
    usage = {"user_id": "tm2", "model": "m", "team_id": "t1", "tokens": {"input_tokens": 10}}
    await _ok(await project.post("/v1/usage", usage))
    lapsed = await start(project, "tm2", inp=5, team_id="t1")
    async with db.transaction() as session:
        await session.execute(
            text("UPDATE transactions SET expires_at = now() - interval '1 second' WHERE id = :t"),
            {"t": lapsed["transaction_id"]},
        )
    assert await sweep_holds_once(db, batch_size=100) >= 1
    left = body(await project.get("/v1/teams/t1"))["balance"]["available"]
    await _ok(await project.post("/v1/teams/t1/debits", {"amount": left}))  # low, depleted
    denied = await start(project, "tm1", inp=10, team_id="t1")
    assert denied["continue"] is False
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    await _ok(await project.post("/v1/teams/t1/credits", {"amount": 5, "expires_at": soon}))
    async with db.transaction() as session:
        await credits.announce_expiring(session, now=utcnow(), days=7, limit=1000)
    async with db.transaction() as session:
        await credits.expire_due(session, now=utcnow() + timedelta(hours=2), limit=1000)
    await _ok(await project.delete("/v1/teams/t1/members/tm2"), 204)  # .member_removed
    await _ok(await project.delete("/v1/users/tm1"), 204)  # .member_removed (user_deleted)
    await _ok(await project.delete("/v1/teams/t1"), 204)  # team.deleted


async def subscription_flows(project: Project, db: Database) -> None:
    """subscription.* (manual and provider) and their credits.granted."""
    await make_plan(project, "pro", stripe_price_id="price_pro")
    for user_id in ("s1", "s2", "w"):
        await project.user(user_id)
    ending = await subscribed(project, "s1")  # subscription.created (manual)
    await _ok(await cancel(project, ending["id"], at_period_end=True), 200)  # .canceled
    renewing = await subscribed(project, "s2")
    for sub in (ending, renewing):
        await age_subscription(db, sub["id"], 40)
    await renew_subscriptions_once(db, batch_size=100)  # .ended (s1), .renewed (s2)
    sub_id, _ = await start_provider_subscription(db, project, "w")  # .created (provider)
    await linked(db, project, sub_id)
    assert await apply_to_subscription(db, project, period_paid(0)) == "applied"  # .activated
    assert await apply_to_subscription(db, project, period_paid(1)) == "applied"  # .renewed
    second = period_paid(1, charge="in_other")  # the same period again: .charge_not_granted
    assert await apply_to_subscription(db, project, second) == "not_granted"
    assert await apply_to_subscription(db, project, status("past_due")) == "applied"
    assert await apply_to_subscription(db, project, status("ended")) == "applied"


async def payment_flows(project: Project, db: Database) -> None:
    """payment.* and the credits they grant, claw back and restore."""
    for user_id in ("p", "gone"):
        await project.user(user_id)
    tag = uuid.uuid4().hex[:8]  # provider payment ids are unique per provider
    bought = await new_payment(db, project, user_id="p")
    assert await apply(db, project, paid(bought, ppid=f"pay_{tag}")) == "applied"
    ref = PaymentRef(payment_id=bought.id)
    refund = PaymentRefunded(ref=ref, amount_refunded_minor=250, currency="USD")
    assert await apply(db, project, refund) == "applied"  # .refunded, credits.clawed_back
    other_currency = PaymentRefunded(ref=ref, amount_refunded_minor=300, currency="EUR")
    assert await apply(db, project, other_currency) == "amount_mismatch"
    for state in ("withdrawn", "reinstated"):  # .disputed, clawed back then restored
        dispute = DisputeChanged(ref=ref, state=state, amount_minor=500, currency="USD")
        assert await apply(db, project, dispute) == "applied"
    wrong = await new_payment(db, project, user_id="p")
    short = dataclasses.replace(paid(wrong, ppid=f"pay_{tag}_short"), amount_minor=1)
    assert await apply(db, project, short) == "amount_mismatch"
    taken = await new_payment(db, project, user_id="p")
    assert await apply(db, project, paid(taken, ppid=f"pay_{tag}")) == "conflict"
    attempt = await new_payment(db, project, user_id="p")
    declined = PaymentFailed(ref=PaymentRef(payment_id=attempt.id), reason="card_declined")
    open_attempt = PaymentFailed(ref=declined.ref, reason="card_declined", checkout_open=True)
    assert await apply(db, project, open_attempt) == "applied"
    assert await apply(db, project, declined) == "applied"
    for fact in (PaymentExpired, PaymentCanceled):
        unpaid = await new_payment(db, project, user_id="p")
        assert await apply(db, project, fact(ref=PaymentRef(payment_id=unpaid.id))) == "applied"
    orphan = await new_payment(db, project, user_id="gone")
    await _ok(await project.delete("/v1/users/gone"), 204)
    assert await apply(db, project, paid(orphan, ppid=f"pay_{tag}_gone")) == "unmatched"
    lost = await new_payment(db, project, user_id="p")
    async with db.transaction() as session:
        await payments.reconciliation_failed(
            session, uuid.UUID(project.id), lost.id, reason="never_seen"
        )


async def webhook_flows(project: Project) -> None:
    created = await _ok(
        await project.post("/v1/webhook-endpoints", {"url": "https://hooks.example.com/creditd"})
    )
    await _ok(await project.post(f"/v1/webhook-endpoints/{created['id']}/test"), 202)


async def stored_events(db: Database, project: Project) -> list[Any]:
    async with db.transaction() as session:
        found = await session.execute(
            text(
                "SELECT id, type, user_id, seq, created_at, data::text AS data FROM events"
                " WHERE project_id = :p ORDER BY id"
            ),
            {"p": uuid.UUID(project.id)},
        )
        return list(found.all())


def body_validator(spec: dict[str, Any], type: str) -> jsonschema.Draft202012Validator:
    """The published request body schema of ``type``'s webhook, its references resolvable."""
    schema = spec["webhooks"][type]["post"]["requestBody"]["content"]["application/json"]
    return jsonschema.Draft202012Validator(
        {"$ref": schema["schema"]["$ref"], "components": spec["components"]}
    )


async def test_every_event_the_flows_store_is_catalogued_and_matches_its_schema(
    project: Project, db: Database, spec: dict[str, Any]
) -> None:
    await usage_flows(project, db)
    await team_flows(project, db)
    await subscription_flows(project, db)
    await payment_flows(project, db)
    await webhook_flows(project)
    rows = await stored_events(db, project)
    problems: list[str] = []
    for row in rows:
        if row.type not in catalogue.CATALOGUE:
            problems.append(f"{row.type}: not in the catalogue")
            continue
        model = catalogue.data_model(row.type)
        try:  # extra keys forbidden: an emitter that adds or renames one fails here
            model.model_validate_json(row.data, strict=True, extra="forbid")
        except ValueError as exc:
            problems.append(f"{row.type} {row.data}: {exc}")
        rendered = payload.render(
            event_id=row.id,
            type=row.type,
            created_at=row.created_at,
            user_id=row.user_id,
            sequence=row.seq,
            data_json=row.data,
        )
        # The body a receiver gets, against the schema it is promised (amounts as numbers...).
        sent = json.loads(rendered, parse_float=Decimal)
        for error in body_validator(spec, row.type).iter_errors(sent):
            problems.append(f"{row.type} {list(error.absolute_path)}: {error.message}")
    assert problems == []
    seen = {row.type for row in rows}
    assert seen == set(catalogue.TYPES) - EMITTED_BY_WEBHOOK_DELIVERY, "a flow is missing"


def test_a_model_refuses_data_with_a_key_it_does_not_describe() -> None:
    model = catalogue.data_model("credits.debited")
    good = '{"amount": 5, "ledger_entry_id": 7, "balance": 10}'
    parsed = model.model_validate_json(good, strict=True, extra="forbid")
    assert parsed.model_dump()["amount"] == 5
    with pytest.raises(ValueError, match="extra"):
        model.model_validate_json(good[:-1] + ', "renamed": 1}', strict=True, extra="forbid")


# --- every literal type in app/ is catalogued --------------------------------------------------

# The providers' own (inbound) event names share the look ("payment.captured").
_NOT_OURS = ("app/integrations/", "app/events/catalogue.py")
_TYPE_LITERAL = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# Types built at run time: each prefix's completions are covered by the flows above.
DYNAMIC = {"payment.", "transaction."}


def _sources() -> list[tuple[str, ast.AST]]:
    found: list[tuple[str, ast.AST]] = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if not name.startswith(_NOT_OURS):
            found.append((name, ast.parse(path.read_text(), name)))
    return found


def test_every_event_type_literal_in_the_source_is_catalogued() -> None:
    families = {t.split(".")[0] for t in catalogue.TYPES}
    literals: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for name, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                if _TYPE_LITERAL.match(value) and value.split(".")[0] in families:
                    literals[value] = name
            elif isinstance(node, ast.JoinedStr) and node.values:
                head = node.values[0]
                if isinstance(head, ast.Constant) and isinstance(head.value, str):
                    family = head.value.removesuffix(".")
                    if head.value.endswith(".") and family in families:
                        prefixes[head.value] = name
    assert len(literals) > 25
    missing = {value: where for value, where in literals.items() if value not in catalogue.TYPES}
    assert missing == {}
    assert set(prefixes) == DYNAMIC, "a type built at run time: cover it by a flow above"


# --- the spec's webhooks, the README -----------------------------------------------------------


def test_the_spec_has_one_webhook_per_catalogued_type(spec: dict[str, Any]) -> None:
    webhooks = spec["webhooks"]
    assert sorted(webhooks) == list(catalogue.TYPES)
    schemas = spec["components"]["schemas"]
    for name, item in webhooks.items():
        op = item["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        envelope = schemas[ref.removeprefix("#/components/schemas/")]
        fields = envelope["properties"]
        assert fields["type"]["const"] == name
        data_model = catalogue.data_model(name).__name__
        assert fields["data"]["$ref"] == f"#/components/schemas/{data_model}"
        assert set(envelope["required"]) == {
            "id", "type", "timestamp", "created_at", "user_id", "sequence", "data",
        }  # fmt: skip
        headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
        assert sorted(headers) == ["webhook-id", "webhook-signature", "webhook-timestamp"]
        assert all(h["required"] and h["schema"]["type"] == "string" for h in headers.values())
        assert "200" in op["responses"]
        assert op["security"] == []


def test_the_readme_lists_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    table = catalogue.markdown_table()
    assert table in readme, f"paste into README.md (Events and outbound webhooks):\n{table}"
    assert catalogue.shared_fields() in readme
