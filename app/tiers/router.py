from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.auth.dependencies import ReadKey, WriteKey
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, page_params
from app.db.session import Session
from app.routing import TransactionalRoute
from app.tiers import service
from app.tiers.exceptions import InvalidRollover, TierExists, TierInUse, TierNotFound
from app.tiers.schemas import AssignTier, TierCreate, TierOut, TierPatch
from app.users import service as users
from app.users.exceptions import UserNotFound
from app.users.schemas import UserOut

router = APIRouter(prefix="/v1", tags=["tiers"], route_class=TransactionalRoute)


@router.post(
    "/tiers",
    operation_id="tiers_create",
    summary="Create a tier",
    status_code=201,
    response_model=TierOut,
    responses=problem_responses(TierExists, InvalidRollover),
)
async def create_tier(session: Session, principal: WriteKey, body: TierCreate) -> TierOut:
    return service.to_out(await service.create(session, principal.project_id, body))


@router.get("/tiers", operation_id="tiers_list", summary="List tiers", response_model=Page[TierOut])
async def list_tiers(
    session: Session, principal: ReadKey, page: Annotated[PageParams, Depends(page_params)]
) -> Page[TierOut]:
    rows = await service.list_tiers(
        session, principal.project_id, limit=page.limit, after=page.starting_after
    )
    return make_page([service.to_out(t) for t in rows], page.limit, lambda t: t.id)


@router.get(
    "/tiers/{tier_id}",
    operation_id="tiers_get",
    summary="Get a tier",
    response_model=TierOut,
    responses=problem_responses(TierNotFound),
)
async def get_tier(session: Session, principal: ReadKey, tier_id: str) -> TierOut:
    return service.to_out(await service.get(session, principal.project_id, tier_id))


@router.patch(
    "/tiers/{tier_id}",
    operation_id="tiers_update",
    summary="Update a tier (applies to its users' next starts, completions and refills)",
    response_model=TierOut,
    responses=problem_responses(TierNotFound, InvalidRollover),
)
async def patch_tier(
    session: Session, principal: WriteKey, tier_id: str, body: TierPatch
) -> TierOut:
    return service.to_out(await service.patch(session, principal.project_id, tier_id, body))


@router.delete(
    "/tiers/{tier_id}",
    operation_id="tiers_delete",
    summary="Delete a tier that no user or plan uses",
    status_code=204,
    response_class=Response,
    responses=problem_responses(TierNotFound, TierInUse),
)
async def delete_tier(session: Session, principal: WriteKey, tier_id: str) -> Response:
    await service.delete(session, principal.project_id, tier_id)
    return Response(status_code=204)


@router.post(
    "/users/{user_id}/tier",
    operation_id="users_assign_tier",
    summary="Move a user to a tier: refills re-anchor now and the tier's allocation is granted",
    description="`reset_balance: true` first removes what is left of the user's earlier tier "
    "allocations; purchased, promo and other credits are never touched.",
    response_model=UserOut,
    responses=problem_responses(UserNotFound, TierNotFound),
)
async def assign_tier(
    session: Session, principal: WriteKey, user_id: str, body: AssignTier
) -> UserOut:
    await service.assign(
        session,
        principal.project_id,
        users.check_path_id(user_id),
        body.tier_id,
        reset_balance=body.reset_balance,
    )
    return await users.get(session, principal.project_id, user_id)
