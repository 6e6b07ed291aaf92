"""Stripe API calls through the official SDK: Checkout Sessions, subscription cancels, lookups.

Each call builds its own ``stripe.StripeClient`` from the project's credentials (a project's
key is never global state) on the SDK's asynchronous HTTPX client, and closes it afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import anyio.to_thread
import stripe
from stripe import RequestOptions
from stripe.params.checkout import SessionCreateParams

from app.integrations.base import (
    Checkout,
    CheckoutRequest,
    Credentials,
    Fact,
    PaymentLookup,
    ProviderError,
    SubscriptionCheckoutRequest,
)
from app.integrations.stripe.webhooks import (
    PAYMENT_ID_KEY,
    PROJECT_ID_KEY,
    SUBSCRIPTION_ID_KEY,
    USER_ID_KEY,
    session_facts,
)

# The version this SDK release is generated for, pinned so a Stripe account's default version
# never changes the shapes webhooks.py reads. Webhook payloads follow the version set on the
# endpoint in the Stripe dashboard: it has to be this one (README).
API_VERSION = "2026-10-28.endive"

T = TypeVar("T")

# Stripe accepts a Checkout Session's expires_at 30 minutes to 24 hours ahead; the margin
# covers the time the request takes to get there.
SESSION_MIN_LIFETIME = timedelta(minutes=30)
SESSION_MAX_LIFETIME = timedelta(hours=24)
_MARGIN = timedelta(minutes=1)


def session_expiry(expires_at: datetime | None, *, now: datetime) -> int | None:
    """``expires_at`` as the session's, when Stripe takes it; else None (Stripe's default,
    24 hours, which reconciliation outlives unless configured shorter than that)."""
    if expires_at is None:
        return None
    ahead = expires_at - now
    if ahead < SESSION_MIN_LIFETIME + _MARGIN or ahead > SESSION_MAX_LIFETIME:
        return None
    return int(expires_at.timestamp())


class StripeApi:
    """Outbound calls; ``creds.timeout_seconds`` bounds each HTTP attempt and the SDK retries
    connection errors, 409 and 5xx up to ``max_network_retries`` times with an
    idempotency key, so a retry never creates a second session."""

    def __init__(self, *, max_network_retries: int = 2) -> None:
        self.max_network_retries = max_network_retries

    async def create_checkout(self, creds: Credentials, req: CheckoutRequest) -> Checkout:
        if not req.success_url:
            # Hosted Checkout has to send the payer somewhere afterwards; the payments layer
            # turns this into a 422 instead of a provider error.
            raise ValueError("success_url is required for Stripe Checkout")
        ids = {
            PAYMENT_ID_KEY: str(req.payment_id),
            PROJECT_ID_KEY: str(req.project_id),
            USER_ID_KEY: req.user_id,
        }
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": req.currency.lower(),
                        "unit_amount": req.amount_minor,
                        "product_data": {"name": req.description},
                    },
                    "quantity": 1,
                }
            ],
            "client_reference_id": str(req.payment_id),
            # Ours last: caller metadata can never redirect a payment to another record.
            "metadata": {**req.metadata, **ids},
            # Charges, refunds and disputes are about the PaymentIntent, not the session.
            "payment_intent_data": {"metadata": ids},
            "success_url": req.success_url,
        }
        if req.cancel_url:
            params["cancel_url"] = req.cancel_url
        expiry = session_expiry(req.expires_at, now=datetime.now(UTC))
        if expiry is not None:
            params["expires_at"] = expiry
        return await self._create_session(creds, params, req.idempotency_key)

    async def create_subscription_checkout(
        self, creds: Credentials, req: SubscriptionCheckoutRequest
    ) -> Checkout:
        if not req.success_url:
            raise ValueError("success_url is required for Stripe Checkout")
        ids = {
            SUBSCRIPTION_ID_KEY: str(req.subscription_id),
            PROJECT_ID_KEY: str(req.project_id),
            USER_ID_KEY: req.user_id,
            "creditd_plan_id": req.plan_id,
        }
        params: SessionCreateParams = {
            "mode": "subscription",
            "line_items": [{"price": req.provider_plan, "quantity": 1}],
            "client_reference_id": str(req.subscription_id),
            "metadata": ids,
            # Copied onto every invoice as parent.subscription_details.metadata.
            "subscription_data": {"metadata": ids},
            "success_url": req.success_url,
        }
        if req.cancel_url:
            params["cancel_url"] = req.cancel_url
        return await self._create_session(creds, params, req.idempotency_key)

    async def cancel_subscription(
        self, creds: Credentials, provider_subscription_id: str, *, at_period_end: bool
    ) -> None:
        async def call(client: stripe.StripeClient) -> object:
            subscriptions = client.v1.subscriptions
            if at_period_end:
                return await subscriptions.update_async(
                    provider_subscription_id, {"cancel_at_period_end": True}
                )
            return await subscriptions.cancel_async(provider_subscription_id)

        await self._call(creds, call)

    async def lookup_payment(self, creds: Credentials, payment: PaymentLookup) -> list[Fact]:
        async def call(client: stripe.StripeClient) -> stripe.checkout.Session:
            # The charge tells whether a payment nobody heard of was also refunded meanwhile.
            return await client.v1.checkout.sessions.retrieve_async(
                payment.reference, {"expand": ["payment_intent.latest_charge"]}
            )

        session = (await self._call(creds, call)).to_dict()
        try:
            return session_facts(session, payment_id=payment.payment_id)
        except ValueError as exc:  # the reference is stale or wrong: nothing to reconcile
            raise ProviderError(str(exc), transient=False) from exc

    async def _create_session(
        self, creds: Credentials, params: SessionCreateParams, idempotency_key: str | None
    ) -> Checkout:
        options: RequestOptions = {}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key

        async def call(client: stripe.StripeClient) -> stripe.checkout.Session:
            return await client.v1.checkout.sessions.create_async(params, options)

        session = await self._call(creds, call)
        if not session.url:
            raise ProviderError("Stripe returned a Checkout Session without a url", transient=False)
        return Checkout(url=session.url, reference=session.id)

    async def _call(
        self, creds: Credentials, call: Callable[[stripe.StripeClient], Awaitable[T]]
    ) -> T:
        async with self._client(creds) as client:
            try:
                return await call(client)
            except stripe.StripeError as exc:
                raise provider_error(exc) from exc

    @asynccontextmanager
    async def _client(self, creds: Credentials) -> AsyncIterator[stripe.StripeClient]:
        # The HTTPX client loads the CA bundle from disk when built: off the event loop.
        http = await anyio.to_thread.run_sync(
            functools.partial(stripe.HTTPXClient, timeout=creds.timeout_seconds)
        )
        try:
            yield stripe.StripeClient(
                creds.secret_key,
                base_addresses={"api": creds.api_base} if creds.api_base else {},
                stripe_version=API_VERSION,
                http_client=http,
                max_network_retries=self.max_network_retries,
            )
        finally:
            await http.close_async()  # type: ignore[no-untyped-call]  # untyped in the SDK


def provider_error(exc: stripe.StripeError) -> ProviderError:
    """Network trouble, rate limits, lock conflicts and Stripe's 5xx are worth retrying;
    refusals (bad key, invalid request, idempotency conflict) need someone to act."""
    status = exc.http_status
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        transient = True
    elif isinstance(
        exc,
        stripe.AuthenticationError
        | stripe.PermissionError
        | stripe.InvalidRequestError
        | stripe.IdempotencyError
        | stripe.CardError,
    ):
        transient = False
    else:
        transient = status is None or status >= 500 or status == 409
    # The SDK's message names the request and Stripe's reason, never the key.
    message = exc.user_message or type(exc).__name__
    return ProviderError(f"stripe: {message}", transient=transient, status=status)
