from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.auth.dependencies import ReadKey, WriteKey
from app.core.errors import problem_responses
from app.db.session import Session
from app.routing import TransactionalRoute
from app.spend_caps import service
from app.spend_caps.schemas import SpendCapIn, SpendCapList, SpendCapOut, SpendCapPeriod
from app.users import service as users
from app.users.exceptions import UserNotFound

router = APIRouter(
    prefix="/v1/users/{user_id}/spend-caps", tags=["spend caps"], route_class=TransactionalRoute
)


@router.put(
    "/{period}",
    operation_id="spend_caps_put",
    summary="Set a user's spend cap for a UTC day or month (per model with `model`)",
    response_model=SpendCapOut,
    responses=problem_responses(UserNotFound),
)
async def put_cap(
    session: Session, principal: WriteKey, user_id: str, period: SpendCapPeriod, body: SpendCapIn
) -> SpendCapOut:
    await users.get(session, principal.project_id, user_id)
    cap = await service.put(session, principal.project_id, user_id, period, body)
    return service.to_out(cap)


@router.get(
    "",
    operation_id="spend_caps_list",
    summary="List a user's spend caps",
    response_model=SpendCapList,
    responses=problem_responses(UserNotFound),
)
async def list_caps(session: Session, principal: ReadKey, user_id: str) -> SpendCapList:
    await users.get(session, principal.project_id, user_id)
    caps = await service.list_caps(session, principal.project_id, user_id)
    return SpendCapList(data=[service.to_out(c) for c in caps])


@router.delete(
    "/{period}",
    operation_id="spend_caps_delete",
    summary="Remove a user's spend cap (the one for `model`, or the all-models one)",
    status_code=204,
    response_class=Response,
    responses=problem_responses(UserNotFound, service.SpendCapNotFound),
)
async def delete_cap(
    session: Session,
    principal: WriteKey,
    user_id: str,
    period: SpendCapPeriod,
    model: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    await users.get(session, principal.project_id, user_id)
    await service.delete(session, principal.project_id, user_id, period, model)
    return Response(status_code=204)
