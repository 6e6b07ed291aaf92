"""Applying provider facts: one grant per payment whatever arrives, in any order, at once;
refunds and disputes take back the payment's share from its own grant only."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from decimal import Decimal

from app.db.models import Payment
from app.db.session import Database
from app.integrations.base import (
    DisputeChanged,
    PaymentExpired,
    PaymentFailed,
    PaymentIdentified,
    PaymentPending,
    PaymentRef,
    PaymentRefunded,
    PaymentSucceeded,
)
from app.payments import repository as repo
from app.payments import service
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, ledger
from tests.payments.helpers import (
    apply,
    event_types,
    grants,
    new_payment,
    paid,
    payment_json,
)


async def test_success_grants_the_credits_once_as_a_paid_grant(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project, credits=Decimal("100.5"))

    assert await apply(db, project, paid(payment)) == "applied"
    assert await apply(db, project, paid(payment)) == "ignored"

    assert (await balance(project, "u"))["total"] == Decimal("100.5")
    [grant] = await grants(project)
    assert grant["category"] == "paid"
    assert grant["payment_id"] == str(payment.id)
    out = await payment_json(project, payment)
    assert out["status"] == "succeeded"
    assert out["credits_granted"] == Decimal("100.5")
    assert out["provider_payment_id"] == "pay_1"
    assert [e["kind"] for e in await ledger(project, "u")] == ["purchase"]
    assert len(await event_types(project, "payment.succeeded")) == 1
    assert len(await event_types(project, "credits.granted")) == 1
    await assert_ledger_consistent(db)


async def test_twenty_concurrent_successes_grant_once(project: Project, db: Database) -> None:
    await project.user("u")
    payment = await new_payment(db, project)

    outcomes = await asyncio.gather(*(apply(db, project, paid(payment)) for _ in range(20)))

    assert sorted(outcomes) == ["applied"] + ["ignored"] * 19
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


def _razorpay_trio(payment: Payment, ppid: str, order_id: str) -> list[PaymentSucceeded]:
    """payment_link.paid (our reference id), payment.captured (order), order.paid (link)."""
    by_ours = PaymentRef(payment_id=payment.id)
    by_order = PaymentRef(order_id=order_id)
    by_link = PaymentRef(reference=payment.provider_reference)
    return [
        PaymentSucceeded(ref=ref, amount_minor=1000, currency="USD", provider_payment_id=ppid)
        for ref in (by_ours, by_order, by_link)
    ]


async def test_three_razorpay_events_for_one_payment_in_every_order_grant_once(
    project: Project, db: Database
) -> None:
    for n, order in enumerate(itertools.permutations(range(3))):
        user = f"u{n}"
        await project.user(user)
        payment = await new_payment(db, project, user_id=user, order_id=f"order_{n}")
        trio = _razorpay_trio(payment, f"pay_{n}", f"order_{n}")
        outcomes = [await apply(db, project, trio[i]) for i in order]
        assert outcomes == ["applied", "ignored", "ignored"], (order, outcomes)
        assert (await balance(project, user))["total"] == 100
        assert len(await grants(project, user)) == 1
    await assert_ledger_consistent(db)


async def test_three_razorpay_events_for_one_payment_concurrently_grant_once(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project, order_id="order_c")
    trio = _razorpay_trio(payment, "pay_c", "order_c")

    outcomes = await asyncio.gather(*(apply(db, project, f) for f in trio * 5))

    assert sorted(outcomes) == ["applied"] + ["ignored"] * 14
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


async def test_amount_mismatch_credits_nothing_and_tells_the_operator(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    short = PaymentSucceeded(
        ref=PaymentRef(payment_id=payment.id),
        amount_minor=999,
        currency="USD",
        provider_payment_id="pay_x",
    )

    assert await apply(db, project, short) == "amount_mismatch"

    assert (await balance(project, "u"))["total"] == 0
    assert await grants(project) == []
    [event] = await event_types(project, "payment.amount_mismatch")
    assert event["data"]["expected"] == {"amount_minor": 1000, "currency": "USD"}
    assert event["data"]["got"] == {"amount_minor": 999, "currency": "USD"}
    assert (await payment_json(project, payment))["status"] == "created"
    await assert_ledger_consistent(db)


async def test_currency_mismatch_credits_nothing(project: Project, db: Database) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    other = PaymentSucceeded(
        ref=PaymentRef(payment_id=payment.id),
        amount_minor=1000,
        currency="inr",
        provider_payment_id="pay_x",
    )

    assert await apply(db, project, other) == "amount_mismatch"

    assert (await balance(project, "u"))["total"] == 0
    assert len(await event_types(project, "payment.amount_mismatch")) == 1


async def test_a_fact_for_no_known_payment_is_unmatched(project: Project, db: Database) -> None:
    await project.user("u")
    stray = PaymentSucceeded(
        ref=PaymentRef(reference="plink_nobody", provider_payment_id="pay_nobody"),
        amount_minor=1000,
        currency="USD",
        provider_payment_id="pay_nobody",
    )

    assert await apply(db, project, stray) == "unmatched"
    assert (await balance(project, "u"))["total"] == 0


async def test_a_payment_of_another_project_is_unmatched(
    project: Project, other_project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project)

    assert await apply(db, other_project, paid(payment)) == "unmatched"
    assert (await balance(project, "u"))["total"] == 0


async def test_failed_after_succeeded_is_stale(project: Project, db: Database) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    await apply(db, project, paid(payment))

    failed = PaymentFailed(ref=PaymentRef(payment_id=payment.id), reason="card_declined")
    assert await apply(db, project, failed) == "stale"
    assert await apply(db, project, PaymentExpired(ref=PaymentRef(payment_id=payment.id))) == (
        "stale"
    )
    assert await apply(db, project, PaymentPending(ref=PaymentRef(payment_id=payment.id))) == (
        "stale"
    )

    out = await payment_json(project, payment)
    assert out["status"] == "succeeded"
    assert out["failure_reason"] is None
    assert (await balance(project, "u"))["total"] == 100


async def test_money_arriving_after_a_failure_is_still_credited(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    first_try = PaymentFailed(
        ref=PaymentRef(payment_id=payment.id, provider_payment_id="pay_declined"), reason="no"
    )
    assert await apply(db, project, first_try) == "applied"
    assert (await payment_json(project, payment))["status"] == "failed"

    assert await apply(db, project, paid(payment, ppid="pay_ok")) == "applied"

    out = await payment_json(project, payment)
    assert out["status"] == "succeeded"
    assert out["provider_payment_id"] == "pay_ok"
    assert (await balance(project, "u"))["total"] == 100
    await assert_ledger_consistent(db)


async def test_a_refund_before_the_success_is_applied_right_after_the_grant(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    refund = PaymentRefunded(
        ref=PaymentRef(provider_payment_id="pay_1", payment_id=payment.id),
        amount_refunded_minor=250,
        currency="USD",
    )
    assert await apply(db, project, refund) == "applied"
    assert (await payment_json(project, payment))["status"] == "created"
    assert (await balance(project, "u"))["total"] == 0

    assert await apply(db, project, paid(payment)) == "applied"

    out = await payment_json(project, payment)
    assert out["status"] == "partially_refunded"
    assert out["credits_clawed_back"] == 25
    assert out["amount_refunded"] == Decimal("2.5")
    assert (await balance(project, "u"))["total"] == 75
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


async def test_partial_refund_after_partial_spend_takes_the_share_and_leaves_debt(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    await apply(db, project, paid(payment))
    r = await project.post("/v1/users/u/debits", {"amount": 80})
    assert r.status_code == 201, r.text
    promo = await project.grant("u", 10)  # after the spend: must never be touched

    refund = PaymentRefunded(
        ref=PaymentRef(provider_payment_id="pay_1"), amount_refunded_minor=500, currency="USD"
    )
    assert await apply(db, project, refund) == "applied"
    # Cumulative amounts merge with max(): an older, smaller total changes nothing.
    older = PaymentRefunded(
        ref=PaymentRef(provider_payment_id="pay_1"), amount_refunded_minor=100, currency="USD"
    )
    assert await apply(db, project, older) == "stale"

    # 50 of the payment's 100 credits go back: its grant had 20 left, 30 become debt.
    assert await balance(project, "u") == {
        "available": Decimal(-20),
        "held": Decimal(0),
        "total": Decimal(-20),
    }
    by_id = {g["id"]: g for g in await grants(project)}
    assert by_id[promo["id"]]["remaining"] == 10
    paid_grant = next(g for g in by_id.values() if g["payment_id"] == str(payment.id))
    assert paid_grant["remaining"] == 0
    out = await payment_json(project, payment)
    assert out["status"] == "partially_refunded"
    assert out["credits_clawed_back"] == 50
    [clawback] = [e for e in await ledger(project, "u") if e["kind"] == "clawback"]
    assert clawback["amount"] == -50
    assert len(await event_types(project, "payment.refunded")) == 1
    assert len(await event_types(project, "credits.clawed_back")) == 1
    await assert_ledger_consistent(db)

    full = PaymentRefunded(
        ref=PaymentRef(provider_payment_id="pay_1"), amount_refunded_minor=1000, currency="USD"
    )
    assert await apply(db, project, full) == "applied"
    assert (await payment_json(project, payment))["status"] == "refunded"
    assert (await balance(project, "u"))["total"] == -70
    await assert_ledger_consistent(db)


def _dispute(state: str, amount_minor: int = 1000) -> DisputeChanged:
    return DisputeChanged(
        ref=PaymentRef(provider_payment_id="pay_1"),
        state=state,  # type: ignore[arg-type]
        amount_minor=amount_minor,
        currency="USD",
        dispute_id="dp_1",
    )


async def test_dispute_withdrawn_claws_back_and_reinstated_restores(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    await apply(db, project, paid(payment))

    assert await apply(db, project, _dispute("open")) == "applied"
    assert (await balance(project, "u"))["total"] == 100  # an open dispute moves no money
    assert (await payment_json(project, payment))["status"] == "disputed"

    assert await apply(db, project, _dispute("withdrawn")) == "applied"
    assert (await balance(project, "u"))["total"] == 0
    await assert_ledger_consistent(db)

    assert await apply(db, project, _dispute("reinstated")) == "applied"
    assert (await balance(project, "u"))["total"] == 100
    out = await payment_json(project, payment)
    assert out["status"] == "won"
    assert out["credits_clawed_back"] == 0
    # Stripe closes a dispute whose funds came back as won: the verdict, and no money moves.
    assert await apply(db, project, _dispute("won")) == "applied"
    out = await payment_json(project, payment)
    assert (out["status"], out["dispute_status"]) == ("won", "won")
    assert (await balance(project, "u"))["total"] == 100
    assert await apply(db, project, _dispute("reinstated")) == "stale"
    assert await apply(db, project, _dispute("open")) == "stale"
    kinds = [e["kind"] for e in await ledger(project, "u")]
    assert kinds == ["purchase", "clawback", "clawback_reversal"]
    assert len(await event_types(project, "credits.restored")) == 1
    await assert_ledger_consistent(db)


async def test_dispute_lost_takes_everything_even_spent_credits(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    await apply(db, project, paid(payment))
    r = await project.post("/v1/users/u/debits", {"amount": 40})
    assert r.status_code == 201, r.text

    assert await apply(db, project, _dispute("lost")) == "applied"

    assert (await balance(project, "u"))["total"] == -40
    out = await payment_json(project, payment)
    assert out["status"] == "lost"
    assert out["credits_clawed_back"] == 100
    assert await apply(db, project, _dispute("won")) == "stale"
    assert (await balance(project, "u"))["total"] == -40
    await assert_ledger_consistent(db)


async def test_dispute_won_without_withdrawal_moves_nothing(project: Project, db: Database) -> None:
    await project.user("u")
    payment = await new_payment(db, project)
    await apply(db, project, paid(payment))

    assert await apply(db, project, _dispute("inquiry")) == "applied"
    assert await apply(db, project, _dispute("won")) == "applied"

    assert (await balance(project, "u"))["total"] == 100
    assert (await payment_json(project, payment))["status"] == "won"
    assert [e["kind"] for e in await ledger(project, "u")] == ["purchase"]
    await assert_ledger_consistent(db)


async def test_the_same_money_on_two_payments_is_a_conflict_credited_once(
    project: Project, db: Database
) -> None:
    await project.user("u")
    first = await new_payment(db, project)
    second = await new_payment(db, project)
    await apply(db, project, paid(first, ppid="pay_same"))

    assert await apply(db, project, paid(second, ppid="pay_same")) == "conflict"

    assert (await balance(project, "u"))["total"] == 100
    assert (await payment_json(project, second))["status"] == "created"
    [event] = await event_types(project, "payment.conflict")
    assert event["data"]["held_by_payment_id"] == str(first.id)
    await assert_ledger_consistent(db)


# --- identification (Stripe invoice_payment.paid) ----------------------------------------------


def _identified(reference: str | None, ppid: str) -> PaymentIdentified:
    return PaymentIdentified(ref=PaymentRef(reference=reference), provider_payment_id=ppid)


async def test_identification_ties_the_intent_so_its_refund_claws_back(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment = await new_payment(db, project, provider="stripe")
    # Paid, but the success named no intent (a Stripe invoice since 2025-03-31).
    assert await apply(db, project, paid(payment, ppid=None), "stripe") == "applied"
    refund = PaymentRefunded(
        ref=PaymentRef(provider_payment_id="pi_1"), amount_refunded_minor=250, currency="USD"
    )
    assert await apply(db, project, refund, "stripe") == "unmatched", "nothing names pi_1 yet"

    identified = _identified(payment.provider_reference, "pi_1")
    assert await apply(db, project, identified, "stripe") == "applied"
    assert await apply(db, project, identified, "stripe") == "ignored"
    assert await apply(db, project, refund, "stripe") == "applied"

    out = await payment_json(project, payment)
    assert (out["provider_payment_id"], out["status"]) == ("pi_1", "partially_refunded")
    assert out["credits_clawed_back"] == 25
    assert (await balance(project, "u"))["total"] == 75
    await assert_ledger_consistent(db)


async def test_identification_with_another_intent_or_a_taken_one_is_a_conflict(
    project: Project, db: Database
) -> None:
    await project.user("u")
    first = await new_payment(db, project, provider="stripe", provider_payment_id="pi_a")
    second = await new_payment(db, project, provider="stripe")

    outcome = await apply(db, project, _identified(first.provider_reference, "pi_b"), "stripe")
    assert outcome == "conflict", "the payment already has other money"
    outcome = await apply(db, project, _identified(second.provider_reference, "pi_a"), "stripe")
    assert outcome == "conflict", "pi_a is the first payment's"

    assert (await payment_json(project, first))["provider_payment_id"] == "pi_a"
    assert (await payment_json(project, second))["provider_payment_id"] is None
    assert len(await event_types(project, "payment.conflict")) == 2


async def test_identification_before_its_payment_is_claimed_when_it_is_recorded(
    project: Project, db: Database
) -> None:
    await project.user("u")
    project_id = uuid.UUID(project.id)
    fact = _identified("in_early", "pi_early")
    assert await apply(db, project, fact, "stripe") == "unmatched"
    async with db.transaction() as session:
        # What receive_webhook stores for it.
        assert await repo.insert_event(
            session,
            project_id=project_id,
            provider="stripe",
            event_id="evt_inpay",
            type="invoice_payment.paid",
            payload={},
        )
        await repo.set_event_outcome(
            session,
            project_id=project_id,
            provider="stripe",
            event_id="evt_inpay",
            outcome="unmatched",
            payment_id=None,
            subscription_id=None,
            **service._pending_identification([fact], "unmatched"),
        )

    async with db.transaction() as session:
        recorded = await service.record_subscription_payment(
            session,
            project_id=project_id,
            provider="stripe",
            subscription_id=uuid.uuid4(),
            user_id="u",
            charge_id="in_early",
            provider_payment_id=None,
            amount_minor=1000,
            currency="usd",
            credits=Decimal(100),
            plan_id="pro",
        )
    assert recorded is not None
    assert recorded.provider_payment_id == "pi_early"
    async with db.transaction() as session:
        event = await repo.get_event(session, project_id, "stripe", "evt_inpay")
    assert event is not None
    assert (event.outcome, event.payment_id) == ("applied", recorded.id)
    assert (event.reference, event.provider_payment_id) == ("in_early", "pi_early")
    assert (await payment_json(project, recorded))["provider_payment_id"] == "pi_early"


async def test_an_unmatched_event_of_another_kind_remembers_no_identification() -> None:
    refund = PaymentRefunded(
        ref=PaymentRef(reference="in_x", provider_payment_id="pi_x"),
        amount_refunded_minor=1,
        currency="USD",
    )
    assert service._pending_identification([refund], "unmatched") == {}
    assert service._pending_identification([_identified("in_x", "pi_x")], "applied") == {}
    assert service._pending_identification([_identified("in_x", "pi_x")], "unmatched") == {
        "reference": "in_x",
        "provider_payment_id": "pi_x",
    }
