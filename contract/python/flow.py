"""The contract flow through the client that openapi-python-client generates, untouched.

Run by contract/run.sh against a live server: CREDITD_URL and CREDITD_ADMIN_TOKEN name it, and
CONTRACT_STRIPE_URL, CONTRACT_STRIPE_SECRET_KEY, CONTRACT_STRIPE_WEBHOOK_SECRET the fake Stripe
the server talks to (tests/fakes/stripe_server.py). It imports only the generated package
``creditd_client``, the standard library and ``standardwebhooks`` (with its sibling modules
``checks`` and ``outbound``), is checked with ``mypy --strict``, and exits non-zero on the first
mismatch. Before writing any event it registers a webhook endpoint on a receiver of its own,
and at the end ``outbound.prove`` checks every outbound webhook the flow caused (see there).

Amounts: the generator maps every JSON ``number`` to ``float`` whatever its ``format``
(``decimal`` included), so the typed models hold binary floats. They are exact for the values
used here (at most 15 significant digits round-trip through a float), and the program checks
them; the exact reading, for any amount, is the raw body the generated ``Response`` keeps
(``response.content``) parsed with ``json.loads(..., parse_float=Decimal)``, and that is what
the numbers are compared with. Amounts are sent as decimal strings, which the generated
request models accept (``float | str``) and the server reads exactly.
"""

from __future__ import annotations

import os
import sys
import uuid
from decimal import Decimal

import outbound
import teams
from checks import Mismatch, exact, expect, parsed
from creditd_client import AuthenticatedClient, Client
from creditd_client.api.analytics import analytics_liability
from creditd_client.api.credits_ import credits_grant, credits_list_ledger
from creditd_client.api.models import models_put
from creditd_client.api.operator import admin_projects_create
from creditd_client.api.payments import payments_create, payments_get, payments_list
from creditd_client.api.providers import providers_list, providers_put_stripe
from creditd_client.api.usage import transactions_complete, transactions_start
from creditd_client.api.users import users_create, users_get
from creditd_client.models import (
    CompleteIn,
    CompleteOut,
    CreditIn,
    GrantCreated,
    LiabilityOut,
    ModelPriceIn,
    ModelPriceOut,
    PageLedgerEntryOut,
    PagePaymentOut,
    PaymentCreate,
    PaymentCreateProvider,
    PaymentOut,
    Problem,
    ProjectCreate,
    ProjectCreated,
    ProviderAccountList,
    ProviderAccountOut,
    StartIn,
    StartOut,
    StripeAccountIn,
    TokenUsage,
    UserCreate,
    UserOut,
    WebhookReceived,
)


def same_amount(typed: float, text: Decimal, wanted: str) -> bool:
    """The exact body holds ``wanted``, and the generated float model holds its nearest float."""
    return text == Decimal(wanted) and typed == float(wanted)


def run(base_url: str, admin_token: str) -> int:
    """The flow; returns how many webhook requests the receiver checked."""
    operator = AuthenticatedClient(base_url=base_url, token=admin_token)
    created = admin_projects_create.sync_detailed(
        client=operator, body=ProjectCreate(name="contract-python")
    )
    project = parsed(created, ProjectCreated, 201)
    expect([s.value for s in project.api_key.scopes] == ["admin"], "admin key scopes")

    receiver = outbound.Receiver()
    with (
        receiver.running(),
        AuthenticatedClient(base_url=base_url, token=project.api_key.key) as api,
    ):
        # Registered before any event is written: an endpoint gets the events written after it.
        endpoint = outbound.register(api, receiver)

        price = models_put.sync_detailed(
            "gpt-4o",
            client=api,
            body=ModelPriceIn(input_price_per_1k="0.123456", output_price_per_1k="0.654321"),
            x_project_id=str(project.id),
        )
        model = parsed(price, ModelPriceOut, 200)
        expect(model.id == "gpt-4o", "model id")
        expect(exact(price)["input_price_per_1k"] == Decimal("0.123456"), "input price exact")

        user_id = f"u_{uuid.uuid4().hex}"
        user = parsed(
            users_create.sync_detailed(client=api, body=UserCreate(id=user_id)), UserOut, 201
        )
        expect(user.id == user_id, "user id")

        grant = credits_grant.sync_detailed(
            user_id, client=api, body=CreditIn(amount="10.5", reason="contract")
        )
        granted = parsed(grant, GrantCreated, 201)
        expect(same_amount(granted.amount, exact(grant)["amount"], "10.5"), "grant amount")
        expect(same_amount(granted.balance, exact(grant)["balance"], "10.5"), "grant balance")

        # 1000 x 0.123456/1k + 2000 x 0.654321/1k = 0.123456 + 1.308642
        start_body = StartIn(
            user_id=user_id,
            model="gpt-4o",
            provisional_tokens=TokenUsage(input_tokens=1000, output_tokens=2000),
        )
        key = f"contract-{uuid.uuid4()}"
        first = transactions_start.sync_detailed(client=api, body=start_body, idempotency_key=key)
        started = parsed(first, StartOut, 201)
        expect(started.continue_, "admitted")
        expect(same_amount(started.hold_amount, exact(first)["hold_amount"], "1.432098"), "hold")
        expect(same_amount(started.balance, exact(first)["balance"], "9.067902"), "held balance")
        expect(first.headers.get("Idempotent-Replayed") is None, "first start is not a replay")

        again = transactions_start.sync_detailed(client=api, body=start_body, idempotency_key=key)
        replayed = parsed(again, StartOut, 201)
        expect(replayed.transaction_id == started.transaction_id, "replay: same transaction")
        expect(again.headers.get("Idempotent-Replayed") == "true", "replay header")
        expect(again.content == first.content, "replay is byte-identical")

        # 800 x 0.123456/1k + 1200 x 0.654321/1k = 0.0987648 + 0.7851852 = 0.88395
        done = transactions_complete.sync_detailed(
            str(started.transaction_id),
            client=api,
            body=CompleteIn(
                success=True, finalized_tokens=TokenUsage(input_tokens=800, output_tokens=1200)
            ),
        )
        completed = parsed(done, CompleteOut, 200)
        expect(completed.status.value == "completed", "completed")
        body = exact(done)
        expect(same_amount(completed.credits_used, body["credits_used"], "0.88395"), "charge")
        expect(same_amount(completed.balance, body["balance"], "9.61605"), "balance after")
        expect(
            same_amount(completed.balance_adjustment, body["balance_adjustment"], "0.548148"),
            "balance_adjustment = hold - charge",
        )

        read = users_get.sync_detailed(user_id, client=api)
        balance = parsed(read, UserOut, 200).balance
        exact_balance = exact(read)["balance"]
        for name, typed, wanted in (
            ("available", balance.available, "9.61605"),
            ("held", balance.held, "0"),
            ("total", balance.total, "9.61605"),
        ):
            expect(same_amount(typed, exact_balance[name], wanted), f"balance.{name}")

        ledger = credits_list_ledger.sync_detailed(user_id, client=api)
        entries = parsed(ledger, PageLedgerEntryOut, 200).data
        rows = [
            (e["kind"], e["amount"], e["held_amount"], e["balance_after"], e["total_after"])
            for e in exact(ledger)["data"]
        ]
        wanted_rows = [
            ("grant", "10.5", "0", "10.5", "10.5"),
            ("hold", "0", "1.432098", "9.067902", "10.5"),
            ("usage", "-0.88395", "-1.432098", "9.61605", "9.61605"),
        ]
        expect(
            rows == [(k, *map(Decimal, amounts)) for k, *amounts in wanted_rows],
            f"ledger {rows}",
        )
        expect([e.kind for e in entries] == ["grant", "hold", "usage"], "typed ledger kinds")
        expect(entries[2].transaction_id == started.transaction_id, "usage entry's transaction")

        missing = users_get.sync_detailed(f"nobody-{uuid.uuid4().hex}", client=api)
        problem = parsed(missing, Problem, 404)
        expect(problem.code == "user_not_found", f"problem code {problem.code}")
        expect(problem.status == 404, "problem status")

        pay_with_stripe(api, base_url, project.id, user_id)
        return outbound.prove(api, receiver, endpoint, user_id)


def pay_with_stripe(
    api: AuthenticatedClient, base_url: str, project_id: uuid.UUID, user_id: str
) -> None:
    """Configure Stripe, top up 10.00 USD for 100 credits, pay it at the fake Stripe and deliver
    the signed webhook: the payment succeeds once and the user's balance grows by 100."""
    secret_key = os.environ["CONTRACT_STRIPE_SECRET_KEY"]
    webhook_secret = os.environ["CONTRACT_STRIPE_WEBHOOK_SECRET"]
    account = parsed(
        providers_put_stripe.sync_detailed(
            client=api, body=StripeAccountIn(secret_key=secret_key, webhook_secret=webhook_secret)
        ),
        ProviderAccountOut,
        200,
    )
    expect(account.provider.value == "stripe" and account.key_id is None, "stripe account")
    for name, shown, real in (
        ("secret_key", account.secret_key, secret_key),
        ("webhook_secret", account.webhook_secret, webhook_secret),
    ):
        expect(shown != real and shown.endswith(real[-4:]), f"{name} masked: {shown}")
    expect(not account.livemode, "test keys are not live")
    accounts = parsed(providers_list.sync_detailed(client=api), ProviderAccountList, 200)
    expect([a.provider.value for a in accounts.data] == ["stripe"], "one provider account")
    expect(accounts.data[0].secret_key == account.secret_key, "listed account is masked")

    not_configured = payments_create.sync_detailed(
        client=api,
        body=PaymentCreate(
            user_id=user_id,
            provider=PaymentCreateProvider.RAZORPAY,
            amount="10",
            currency="inr",
            credits_="100",
        ),
    )
    problem = parsed(not_configured, Problem, 409)
    expect(problem.code == "provider_not_configured", f"razorpay: {problem.code}")

    create = payments_create.sync_detailed(
        client=api,
        body=PaymentCreate(
            user_id=user_id,
            provider=PaymentCreateProvider.STRIPE,
            amount="10.00",
            currency="usd",
            credits_="100",
            success_url="https://example.com/paid",
        ),
        idempotency_key=f"contract-pay-{uuid.uuid4()}",
    )
    payment = parsed(create, PaymentOut, 201)
    body = exact(create)
    expect(payment.status.value == "created", f"payment status {payment.status}")
    expect(payment.kind.value == "top_up" and payment.provider.value == "stripe", "top-up")
    expect(isinstance(payment.checkout_url, str) and payment.checkout_url != "", "checkout_url")
    expect(same_amount(payment.amount, body["amount"], "10.00"), f"amount {body['amount']}")
    expect(same_amount(payment.credits_, body["credits"], "100"), "credits")
    expect(payment.currency == "USD" and payment.amount_minor == 1000, "currency, minor units")
    expect(same_amount(payment.credits_granted, body["credits_granted"], "0"), "nothing yet")
    session_id = payment.provider_reference
    expect(isinstance(session_id, str) and session_id.startswith("cs_"), f"session {session_id}")
    assert isinstance(session_id, str)

    page = parsed(payments_list.sync_detailed(client=api, user_id=user_id), PagePaymentOut, 200)
    expect([p.id for p in page.data] == [payment.id] and not page.has_more, "payments page")

    # The fake's control path (it exists only in the test fake) pays the checkout and returns
    # the checkout.session.completed delivery exactly as Stripe would send it.
    with Client(base_url=os.environ["CONTRACT_STRIPE_URL"]) as fake_stripe:
        answer = fake_stripe.get_httpx_client().post(f"/_test/pay/{session_id}")
    expect(answer.status_code == 200, f"fake Stripe: {answer.status_code} {answer.text}")
    delivery = answer.json()
    # The spec cannot describe the webhook's body (only the exact bytes verify), so the
    # generated webhooks_stripe function sends none: the raw body goes through the generated
    # Client's own httpx client, and the answer is read with the generated model.
    with Client(base_url=base_url) as stripe_side:
        received = stripe_side.get_httpx_client().post(
            f"/v1/webhooks/stripe/{project_id}",
            content=delivery["body"].encode(),
            headers={
                "Stripe-Signature": delivery["signature"],
                "Content-Type": "application/json; charset=utf-8",
            },
        )
    expect(received.status_code == 200, f"webhook: {received.status_code} {received.text}")
    outcome = WebhookReceived.from_dict(received.json())
    expect(not outcome.duplicate and outcome.outcome == "applied", f"webhook: {outcome}")

    paid = payments_get.sync_detailed(str(payment.id), client=api)
    succeeded = parsed(paid, PaymentOut, 200)
    expect(succeeded.status.value == "succeeded", f"paid status {succeeded.status}")
    expect(
        same_amount(succeeded.credits_granted, exact(paid)["credits_granted"], "100"),
        "credits_granted",
    )
    expect(succeeded.provider_payment_id is not None, "payment intent recorded")

    read = users_get.sync_detailed(user_id, client=api)
    balance = parsed(read, UserOut, 200).balance
    # 9.61605 left from the usage above + the 100 paid credits
    expect(same_amount(balance.available, exact(read)["balance"]["available"], "109.61605"), "+100")

    liability = analytics_liability.sync_detailed(client=api)
    owed = parsed(liability, LiabilityOut, 200)
    figures = exact(liability)
    expect([p.currency for p in owed.paid] == ["USD"], f"paid currencies {figures['paid']}")
    expect(figures["paid"][0]["credits"] == Decimal("100"), "paid credits outstanding")
    expect(figures["paid"][0]["value"] == Decimal("10"), "deferred revenue 10.00 USD")
    expect(owed.paid[0].value == 10.0, "typed deferred revenue")


def main() -> int:
    base_url = os.environ["CREDITD_URL"]
    token = os.environ["CREDITD_ADMIN_TOKEN"]
    try:
        requests = run(base_url, token)
        lines = teams.run(base_url, token)
    except Mismatch as exc:
        print(f"python contract flow: MISMATCH: {exc}", file=sys.stderr)
        return 1
    print(
        "python contract flow: ok (generated openapi-python-client, exact amounts, typed 404,"
        f" Stripe top-up, {requests} outbound webhook requests verified with standardwebhooks;"
        f" teams, expression prices, jobs, evaluate, {lines} ledger export lines chained)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
