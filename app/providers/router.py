from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from app.auth.dependencies import AdminKey
from app.core.errors import problem_responses
from app.core.secrets import Secrets
from app.core.settings import PaymentsSettings, Settings
from app.db.session import Session
from app.providers import service
from app.providers.exceptions import ProviderNotFound
from app.providers.schemas import (
    ProviderAccountList,
    ProviderAccountOut,
    RazorpayAccountIn,
    StripeAccountIn,
)
from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1/providers", tags=["providers"], route_class=TransactionalRoute)

_PUT = (
    " An upsert: 200 with the account (secrets masked) whether it existed or not. Secrets are"
    " stored encrypted and never shown again. A different `webhook_secret` replaces the"
    " current one, which keeps verifying webhooks for `webhook_secret_grace_seconds` (default"
    " 24 h; 0: not at all), shown as `previous_webhook_secret_expires_at`."
)


def _payments_settings(request: Request) -> PaymentsSettings:
    settings: Settings = request.app.state.settings
    return settings.payments


Payments = Annotated[PaymentsSettings, Depends(_payments_settings)]


@router.put(
    "/stripe",
    operation_id="providers_put_stripe",
    summary="Configure the project's Stripe account",
    description="The API key that creates Checkout Sessions and the signing secret of the"
    " webhook endpoint `/v1/webhooks/stripe/{project_id}`." + _PUT,
    response_model=ProviderAccountOut,
)
async def put_stripe(
    session: Session,
    principal: AdminKey,
    settings: Payments,
    box: Secrets,
    body: StripeAccountIn,
) -> ProviderAccountOut:
    return await service.put_stripe(session, principal.project_id, body, settings=settings, box=box)


@router.put(
    "/razorpay",
    operation_id="providers_put_razorpay",
    summary="Configure the project's Razorpay account",
    description="The API key pair that creates Payment Links and subscriptions, and the"
    " secret of the webhook `/v1/webhooks/razorpay/{project_id}`." + _PUT,
    response_model=ProviderAccountOut,
)
async def put_razorpay(
    session: Session,
    principal: AdminKey,
    settings: Payments,
    box: Secrets,
    body: RazorpayAccountIn,
) -> ProviderAccountOut:
    return await service.put_razorpay(
        session, principal.project_id, body, settings=settings, box=box
    )


@router.get(
    "",
    operation_id="providers_list",
    summary="List the configured providers (secrets masked)",
    description="At most one account per provider, so never more than one page.",
    response_model=ProviderAccountList,
)
async def list_providers(session: Session, principal: AdminKey) -> ProviderAccountList:
    return ProviderAccountList(data=await service.list_accounts(session, principal.project_id))


@router.delete(
    "/{provider}",
    operation_id="providers_delete",
    summary="Remove a provider account and its secrets",
    description="Its webhooks are refused from then on; payments already made keep their"
    " records. 404 `provider_not_found` when none is configured.",
    status_code=204,
    response_class=Response,
    responses=problem_responses(ProviderNotFound),
)
async def delete_provider(
    session: Session,
    principal: AdminKey,
    provider: Annotated[str, Path(max_length=64, description="`stripe` or `razorpay`")],
) -> Response:
    await service.delete(session, principal.project_id, provider)
    return Response(status_code=204)
