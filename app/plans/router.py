"""Plans (recurring offers) and users' subscriptions to them."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request, Response

from app.auth.dependencies import ReadKey, WriteKey
from app.core.cursors import parse_id, uuid_cursor
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, page_params, uuid_page_params
from app.core.secrets import secret_box
from app.core.settings import Settings
from app.db.session import Session
from app.integrations import registry
from app.integrations.base import Credentials, PaymentProvider, ProviderName
from app.payments.exceptions import SuccessUrlRequired
from app.plans import service
from app.plans.exceptions import (
    PlanExists,
    PlanInactive,
    PlanInUse,
    PlanNotAvailable,
    PlanNotFound,
    ProviderFailed,
    ProviderNotConfigured,
    ProviderUnavailable,
    SubscriptionExists,
    SubscriptionNotFound,
)
from app.plans.schemas import (
    CancelIn,
    PlanCreate,
    PlanOut,
    PlanPatch,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionOut,
)
from app.providers import service as providers
from app.routing import TransactionalRoute
from app.tiers.exceptions import TierNotFound
from app.users import service as users
from app.users.exceptions import UserNotFound

# TransactionalRoute merges the transient database causes into this 503.
_PROVIDER_ERRORS = problem_responses(ProviderFailed, ProviderUnavailable)

router = APIRouter(prefix="/v1", tags=["plans"], route_class=TransactionalRoute)

_SUBSCRIBE = """For `manual` subscriptions creditd is the provider:

- the first period starts now and ends one plan `interval` later; the plan's
  `credits_per_period` are granted at once (source `subscription`), and again at the start of
  every next period by the renewal worker (exactly once per period; after downtime, once for the
  current period only);
- if the plan has a `tier_id`, the user moves to that tier (which grants the tier's own
  allocation); when the subscription ends the user goes back to the tier it was on before (if it
  still exists, else the project's default tier, else no tier), unless its tier was changed
  meanwhile;
- subscription credits do not expire and are kept when the subscription ends;
- `checkout_url` is null.

`stripe` (Checkout in subscription mode on the plan's `stripe_price_id`) and `razorpay` (a
Razorpay subscription on the plan's `razorpay_plan_id`):

- the subscription is created `incomplete`, with nothing granted, and `checkout_url` is where
  the user pays (`success_url`/`cancel_url` are where Stripe Checkout sends the user back);
- each period the provider collects (Stripe `invoice.paid`, Razorpay `subscription.charged`)
  is recorded as a payment and grants `credits_per_period` once (paid credits, linked to the
  payment); the first one makes the subscription `active` and moves the user to the plan's
  tier, as above;
- a failed renewal makes it `past_due` while the provider retries; when the provider gives up
  or the subscription is deleted/cancelled there, it ends (`canceled`) and the user goes back to
  its previous tier;
- the provider must be configured for the project (409 `provider_not_configured`) and the plan
  must have that provider's id (409 `plan_not_available`); if the provider cannot be reached
  (503 `provider_unavailable`, retry) or refuses (502 `provider_error`), nothing is created.

A user may hold one subscription that has not ended, `incomplete` ones included (409
`subscription_exists`): cancel an abandoned checkout's subscription to start another."""

_CANCEL = """`at_period_end: true` (the default) keeps the subscription `active` with
`cancel_at_period_end: true` until `current_period_end`; it is then ended (no renewal).
`at_period_end: false` ends it now: status `canceled`, `ended_at` set, the user back on its
previous tier. `canceled_at` is when the cancellation was asked for. Credits already granted are
kept. Canceling a subscription that has already ended returns it unchanged.

A `stripe`/`razorpay` subscription is canceled at the provider first (503
`provider_unavailable` / 502 `provider_error` if that fails: nothing changes here). With
`at_period_end: true` the provider ends it at the period end and its event ends it here. An
`incomplete` subscription (never paid) has no period: it ends now either way."""


# --- plans -------------------------------------------------------------------------------------


@router.post(
    "/plans",
    operation_id="plans_create",
    summary="Create a plan",
    status_code=201,
    response_model=PlanOut,
    responses=problem_responses(PlanExists, TierNotFound),
)
async def create_plan(session: Session, principal: WriteKey, body: PlanCreate) -> PlanOut:
    return service.plan_out(await service.create_plan(session, principal.project_id, body))


@router.get("/plans", operation_id="plans_list", summary="List plans", response_model=Page[PlanOut])
async def list_plans(
    session: Session, principal: ReadKey, page: Annotated[PageParams, Depends(page_params)]
) -> Page[PlanOut]:
    rows = await service.list_plans(
        session, principal.project_id, limit=page.limit, after=page.starting_after
    )
    return make_page([service.plan_out(p) for p in rows], page.limit, lambda p: p.id)


@router.get(
    "/plans/{plan_id}",
    operation_id="plans_get",
    summary="Get a plan",
    response_model=PlanOut,
    responses=problem_responses(PlanNotFound),
)
async def get_plan(session: Session, principal: ReadKey, plan_id: str) -> PlanOut:
    return service.plan_out(await service.get_plan(session, principal.project_id, plan_id))


@router.patch(
    "/plans/{plan_id}",
    operation_id="plans_update",
    summary="Update a plan (applies to new subscriptions and to existing ones' next renewals)",
    description="`interval` cannot change: create a new plan. A new `tier_id` applies to new "
    "subscriptions; current subscribers stay where they are.",
    response_model=PlanOut,
    responses=problem_responses(PlanNotFound, TierNotFound),
)
async def patch_plan(
    session: Session, principal: WriteKey, plan_id: str, body: PlanPatch
) -> PlanOut:
    return service.plan_out(await service.patch_plan(session, principal.project_id, plan_id, body))


@router.delete(
    "/plans/{plan_id}",
    operation_id="plans_delete",
    summary="Delete a plan that has no running subscription",
    status_code=204,
    response_class=Response,
    responses=problem_responses(PlanNotFound, PlanInUse),
)
async def delete_plan(session: Session, principal: WriteKey, plan_id: str) -> Response:
    await service.delete_plan(session, principal.project_id, plan_id)
    return Response(status_code=204)


# --- subscriptions -----------------------------------------------------------------------------


@router.post(
    "/users/{user_id}/subscriptions",
    operation_id="subscriptions_create",
    summary="Subscribe a user to a plan",
    description=_SUBSCRIBE,
    status_code=201,
    response_model=SubscriptionCreated,
    responses=problem_responses(
        UserNotFound,
        PlanNotFound,
        TierNotFound,
        PlanInactive,
        PlanNotAvailable,
        ProviderNotConfigured,
        SubscriptionExists,
        SuccessUrlRequired,
    )
    | _PROVIDER_ERRORS,
)
async def create_subscription(
    request: Request, session: Session, principal: WriteKey, user_id: str, body: SubscriptionCreate
) -> SubscriptionCreated:
    user_id = users.check_path_id(user_id)
    if body.provider == service.MANUAL:
        sub = await service.subscribe(session, principal.project_id, user_id, body)
        return SubscriptionCreated(subscription=service.subscription_out(sub), checkout_url=None)
    impl, creds = await _provider(request, session, principal.project_id, body.provider)
    sub, checkout_url = await service.start_provider_subscription(
        session, principal.project_id, user_id, body, provider_impl=impl, creds=creds
    )
    return SubscriptionCreated(
        subscription=service.subscription_out(sub), checkout_url=checkout_url
    )


async def _provider(
    request: Request, session: Session, project_id: uuid.UUID, provider: str
) -> tuple[PaymentProvider, Credentials]:
    """The provider's adapter and the project's credentials for it (409
    ``provider_not_configured`` when the project has none)."""
    name = cast(ProviderName, provider)
    settings: Settings = request.app.state.settings
    creds = await providers.credentials(
        session, project_id, name, settings=settings.payments, box=secret_box(request)
    )
    return registry.get(name), creds


@router.get(
    "/users/{user_id}/subscriptions",
    operation_id="subscriptions_list",
    summary="List a user's subscriptions, oldest first (ended ones included)",
    response_model=Page[SubscriptionOut],
    responses=problem_responses(UserNotFound),
)
async def list_subscriptions(
    session: Session,
    principal: ReadKey,
    user_id: str,
    page: Annotated[PageParams, Depends(uuid_page_params)],
) -> Page[SubscriptionOut]:
    await users.get(session, principal.project_id, user_id)
    rows = await service.list_subscriptions(
        session,
        principal.project_id,
        user_id,
        limit=page.limit,
        after=uuid_cursor(page.starting_after),
    )
    return make_page([service.subscription_out(s) for s in rows], page.limit, lambda s: s.id)


@router.get(
    "/subscriptions/{subscription_id}",
    operation_id="subscriptions_get",
    summary="Get a subscription",
    response_model=SubscriptionOut,
    responses=problem_responses(SubscriptionNotFound),
)
async def get_subscription(
    session: Session, principal: ReadKey, subscription_id: str
) -> SubscriptionOut:
    sub = await service.get_subscription(
        session, principal.project_id, parse_id(subscription_id, SubscriptionNotFound)
    )
    return service.subscription_out(sub)


@router.post(
    "/subscriptions/{subscription_id}/cancel",
    operation_id="subscriptions_cancel",
    summary="Cancel a subscription now or at the end of its current period",
    description=_CANCEL,
    response_model=SubscriptionOut,
    responses=problem_responses(SubscriptionNotFound, ProviderNotConfigured) | _PROVIDER_ERRORS,
)
async def cancel_subscription(
    request: Request,
    session: Session,
    principal: WriteKey,
    subscription_id: str,
    body: CancelIn | None = None,
) -> SubscriptionOut:
    sub_id = parse_id(subscription_id, SubscriptionNotFound)
    at_period_end = (body or CancelIn()).at_period_end
    sub = await service.get_subscription(session, principal.project_id, sub_id)
    impl = creds = None
    if service.provider_cancel_needed(sub, at_period_end=at_period_end):
        impl, creds = await _provider(request, session, principal.project_id, sub.provider)
    sub = await service.cancel(
        session,
        principal.project_id,
        sub_id,
        at_period_end=at_period_end,
        provider_impl=impl,
        creds=creds,
    )
    return service.subscription_out(sub)
