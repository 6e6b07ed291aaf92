"""Top-ups (`/v1/payments`) and the providers' inbound webhooks (`/v1/webhooks/...`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from app.auth.dependencies import ReadKey, WriteKey
from app.core.clock import utcnow
from app.core.cursors import parse_id, uuid_cursor
from app.core.errors import NotFound, problem_responses
from app.core.pagination import Page, PageParams, make_page, uuid_page_params
from app.core.secrets import secret_box
from app.core.settings import Settings
from app.db.session import Session
from app.integrations.base import ProviderName
from app.payments import service
from app.payments.exceptions import (
    AmountNotPayable,
    CreditsRequired,
    InvalidCredits,
    InvalidWebhookSignature,
    MalformedWebhookBody,
    PaymentNotFound,
    ProviderFailed,
    ProviderNotConfigured,
    ProviderUnavailable,
    SuccessUrlRequired,
    UnknownCurrency,
    WebhookNotConfigured,
)
from app.payments.schemas import PaymentCreate, PaymentFilters, PaymentOut, WebhookReceived
from app.routing import TransactionalRoute, WebhookRoute
from app.users.exceptions import UserNotFound

router = APIRouter(prefix="/v1", tags=["payments"], route_class=TransactionalRoute)
webhooks = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=WebhookRoute)


@router.post(
    "/payments",
    operation_id="payments_create",
    summary="Start a top-up: open a checkout at the provider",
    description="Creates a Stripe Checkout Session (mode payment) or a Razorpay Payment Link "
    "for `amount` `currency` and returns its `checkout_url`. The credits are granted once, "
    "when the provider reports the money (webhook or reconciliation), as a paid grant. "
    "`amount` must be a whole number of the currency's ISO 4217 minor units and meet the "
    "provider's documented special cases (Stripe: HUF, TWD, ISK, UGX in whole units; "
    "three-decimal currencies with a last digit 0), else 422. "
    "An unknown user is created when the project auto-creates users. Nothing is stored when "
    "the provider fails: 503 `provider_unavailable` (transient, retry with the same "
    "Idempotency-Key) or 502 `provider_error`.",
    status_code=201,
    response_model=PaymentOut,
    responses=problem_responses(
        UnknownCurrency,
        AmountNotPayable,
        CreditsRequired,
        InvalidCredits,
        SuccessUrlRequired,
        UserNotFound,
        ProviderNotConfigured,
        ProviderFailed,
        ProviderUnavailable,
    ),
)
async def create_payment(
    request: Request, session: Session, principal: WriteKey, body: PaymentCreate
) -> PaymentOut:
    settings: Settings = request.app.state.settings
    quote = service.price(body, principal.settings.credits_per_unit)
    payment = await service.create_payment(
        session, principal, body, quote, settings=settings.payments, box=secret_box(request)
    )
    return service.to_out(payment)


@router.get(
    "/payments",
    operation_id="payments_list",
    summary="List payments, oldest first",
    response_model=Page[PaymentOut],
)
async def list_payments(
    session: Session,
    principal: ReadKey,
    page: Annotated[PageParams, Depends(uuid_page_params)],
    filters: Annotated[PaymentFilters, Query()],
) -> Page[PaymentOut]:
    rows = await service.list_payments(
        session,
        principal.project_id,
        filters,
        limit=page.limit,
        after=uuid_cursor(page.starting_after),
    )
    return make_page([service.to_out(p) for p in rows], page.limit, lambda p: p.id)


@router.get(
    "/payments/{payment_id}",
    operation_id="payments_get",
    summary="Get a payment",
    response_model=PaymentOut,
    responses=problem_responses(PaymentNotFound),
)
async def get_payment(session: Session, principal: ReadKey, payment_id: str) -> PaymentOut:
    pid = parse_id(payment_id, PaymentNotFound)
    return service.to_out(await service.get(session, principal.project_id, pid))


_WEBHOOK_DOC = (
    "Called by {name}, authenticated only by its signature over the exact raw body. "
    "Each event is stored once per event id, in the same transaction as its effect: a "
    "redelivery answers `duplicate: true` and changes nothing; a transient failure answers "
    "503 so {name} redelivers. Refused (400, nothing stored): no webhook secret configured "
    "for the project (or no such project), a signature that does not verify, a body that is "
    "not a {name} event."
)
_WEBHOOK_ERRORS = problem_responses(
    WebhookNotConfigured, InvalidWebhookSignature, MalformedWebhookBody, NotFound
)


async def _receive(
    request: Request, session: AsyncSession, provider: ProviderName, project_id: str
) -> WebhookReceived:
    pid = parse_id(project_id, NotFound)
    box = secret_box(request)
    return await service.receive_webhook(
        session,
        project_id=pid,
        provider=provider,
        body=await request.body(),
        headers={k.lower(): v for k, v in request.headers.items()},
        box=box,
        now=utcnow(),
    )


@webhooks.post(
    "/stripe/{project_id}",
    operation_id="webhooks_stripe",
    summary="Stripe webhook receiver",
    description=_WEBHOOK_DOC.format(name="Stripe")
    + " Configure it in the Stripe dashboard as `https://<host>/v1/webhooks/stripe/<project id>`.",
    response_model=WebhookReceived,
    responses=_WEBHOOK_ERRORS,
)
async def stripe_webhook(request: Request, session: Session, project_id: str) -> WebhookReceived:
    return await _receive(request, session, "stripe", project_id)


@webhooks.post(
    "/razorpay/{project_id}",
    operation_id="webhooks_razorpay",
    summary="Razorpay webhook receiver",
    description=_WEBHOOK_DOC.format(name="Razorpay") + " Configure it in the Razorpay dashboard as "
    "`https://<host>/v1/webhooks/razorpay/<project id>`.",
    response_model=WebhookReceived,
    responses=_WEBHOOK_ERRORS,
)
async def razorpay_webhook(request: Request, session: Session, project_id: str) -> WebhookReceived:
    return await _receive(request, session, "razorpay", project_id)
