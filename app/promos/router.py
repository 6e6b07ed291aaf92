"""Promo codes: CRUD, eligibility, claims and the redemption list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from app.auth.dependencies import ReadKey, WriteKey
from app.core.cursors import uuid_cursor
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, page_params, uuid_page_params
from app.db.session import Session
from app.promos import service
from app.promos.exceptions import (
    INELIGIBLE,
    MaxRedemptionsBelowCount,
    PromoExists,
    PromoNotFound,
)
from app.promos.schemas import (
    ClaimIn,
    ClaimOut,
    EligibilityOut,
    PromoCreate,
    PromoOut,
    PromoPatch,
    RedemptionOut,
)
from app.routing import TransactionalRoute
from app.users.exceptions import UserNotFound
from app.users.schemas import USER_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["promos"], route_class=TransactionalRoute)

Code = Annotated[str, Path(description="The promo code, in any case")]

_ORDER = """Checks run in this fixed order; the first that fails is the `reason`:

1. `promo_not_found`: no promo with this code (case-insensitive), or it was deleted
2. `promo_inactive`: the promo's `active` is false
3. `promo_not_started`: now < `starts_at`
4. `promo_expired`: now >= `expires_at`
5. `promo_exhausted`: `redemptions_count` >= `max_redemptions`
6. `already_claimed`: the user's redemptions of this promo >= `max_per_user`
7. `not_eligible`: `eligible_user_ids` is set and does not contain the user; or
   `eligible_tier_ids` is set and does not contain the user's tier; or `new_users_only` is set
   and the user was created before the promo (a user that does not exist yet counts as new)
"""


@router.post(
    "/promos",
    operation_id="promos_create",
    summary="Create a promo code",
    description="Codes are case-insensitive and stored lower-case. The code of a deleted promo "
    "stays reserved.",
    status_code=201,
    response_model=PromoOut,
    responses=problem_responses(PromoExists),
)
async def create_promo(session: Session, principal: WriteKey, body: PromoCreate) -> PromoOut:
    return PromoOut.model_validate(await service.create(session, principal.project_id, body))


@router.get(
    "/promos",
    operation_id="promos_list",
    summary="List promo codes, by code",
    response_model=Page[PromoOut],
)
async def list_promos(
    session: Session, principal: ReadKey, page: Annotated[PageParams, Depends(page_params)]
) -> Page[PromoOut]:
    rows = await service.list_promos(
        session, principal.project_id, limit=page.limit, after=page.starting_after
    )
    return make_page([PromoOut.model_validate(r) for r in rows], page.limit, lambda p: p.code)


@router.get(
    "/promos/{code}",
    operation_id="promos_get",
    summary="Get a promo code",
    response_model=PromoOut,
    responses=problem_responses(PromoNotFound),
)
async def get_promo(session: Session, principal: ReadKey, code: Code) -> PromoOut:
    return PromoOut.model_validate(await service.get(session, principal.project_id, code))


@router.patch(
    "/promos/{code}",
    operation_id="promos_update",
    summary="Update a promo code (code and credits are immutable)",
    description="Only the fields sent change; `null` clears an optional field. "
    "`max_redemptions` cannot go below `redemptions_count` (409).",
    response_model=PromoOut,
    responses=problem_responses(PromoNotFound, MaxRedemptionsBelowCount),
)
async def patch_promo(
    session: Session, principal: WriteKey, code: Code, body: PromoPatch
) -> PromoOut:
    return PromoOut.model_validate(await service.patch(session, principal.project_id, code, body))


@router.delete(
    "/promos/{code}",
    operation_id="promos_delete",
    summary="Delete a promo code (soft: redemptions are kept and the code stays reserved)",
    status_code=204,
    response_class=Response,
    responses=problem_responses(PromoNotFound),
)
async def delete_promo(session: Session, principal: WriteKey, code: Code) -> Response:
    await service.delete(session, principal.project_id, code)
    return Response(status_code=204)


@router.get(
    "/promos/{code}/eligibility",
    operation_id="promos_eligibility",
    summary="Could this user claim the promo now? No side effect",
    description="Always 200 for a well-formed request; `reason` is null when eligible. "
    "An unknown user is evaluated as the brand-new user a claim would create (on the "
    "project's default tier, if any), and is not created.\n\n" + _ORDER,
    response_model=EligibilityOut,
)
async def eligibility(
    session: Session,
    principal: ReadKey,
    code: Code,
    user_id: Annotated[str, Query(pattern=USER_ID_PATTERN, description="The user's id")],
) -> EligibilityOut:
    return await service.eligibility(session, principal.project_id, code, user_id)


@router.post(
    "/promos/{code}/claim",
    operation_id="promos_claim",
    summary="Claim a promo for a user: grant its credits atomically",
    description="Claims of one promo are serialized, so `max_redemptions` and `max_per_user` "
    "hold under any concurrency. An ineligible claim changes nothing and answers 409 with the "
    "reason as the problem `type` (404 for `promo_not_found`). An unknown user is created "
    "when the project auto-creates users, else 404 `user_not_found` (checked after checks "
    "1-5).\n\n" + _ORDER,
    status_code=201,
    response_model=ClaimOut,
    responses=problem_responses(PromoNotFound, UserNotFound, *INELIGIBLE.values()),
)
async def claim(session: Session, principal: WriteKey, code: Code, body: ClaimIn) -> ClaimOut:
    return await service.claim(session, principal, code, body.user_id)


@router.get(
    "/promos/{code}/redemptions",
    operation_id="promos_list_redemptions",
    summary="List a promo's redemptions, oldest first",
    response_model=Page[RedemptionOut],
    responses=problem_responses(PromoNotFound),
)
async def list_redemptions(
    session: Session,
    principal: ReadKey,
    code: Code,
    page: Annotated[PageParams, Depends(uuid_page_params)],
) -> Page[RedemptionOut]:
    rows = await service.list_redemptions(
        session,
        principal.project_id,
        code,
        limit=page.limit,
        after=uuid_cursor(page.starting_after),
    )
    return make_page([RedemptionOut.model_validate(r) for r in rows], page.limit, lambda r: r.id)
