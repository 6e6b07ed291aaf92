from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.auth.dependencies import ReadKey, UserReadKey, WriteKey
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, page_params
from app.db.session import Session
from app.routing import TransactionalRoute
from app.users import service
from app.users.exceptions import UserExists, UserHasOpenTransactions, UserNotFound
from app.users.schemas import UserCreate, UserOut, UserPatch

router = APIRouter(prefix="/v1/users", tags=["users"], route_class=TransactionalRoute)


@router.post(
    "",
    operation_id="users_create",
    summary="Create a user",
    status_code=201,
    response_model=UserOut,
    responses=problem_responses(UserExists),
)
async def create_user(session: Session, principal: WriteKey, body: UserCreate) -> UserOut:
    return await service.create(session, principal.project_id, body)


@router.get("", operation_id="users_list", summary="List users", response_model=Page[UserOut])
async def list_users(
    session: Session, principal: ReadKey, page: Annotated[PageParams, Depends(page_params)]
) -> Page[UserOut]:
    users = await service.list_users(
        session, principal.project_id, limit=page.limit, after=page.starting_after
    )
    return make_page(users, page.limit, lambda u: u.id)


@router.get(
    "/{user_id}",
    operation_id="users_get",
    summary="Get a user with its balance",
    response_model=UserOut,
    responses=problem_responses(UserNotFound),
)
async def get_user(session: Session, principal: UserReadKey, user_id: str) -> UserOut:
    return await service.get(session, principal.project_id, user_id)


@router.patch(
    "/{user_id}",
    operation_id="users_update",
    summary="Update a user's metadata",
    response_model=UserOut,
    responses=problem_responses(UserNotFound),
)
async def patch_user(
    session: Session, principal: WriteKey, user_id: str, body: UserPatch
) -> UserOut:
    return await service.patch(session, principal.project_id, user_id, body)


@router.delete(
    "/{user_id}",
    operation_id="users_delete",
    summary="Delete a user (soft: its ledger is kept and its id is not reused)",
    status_code=204,
    response_class=Response,
    responses=problem_responses(UserNotFound, UserHasOpenTransactions),
)
async def delete_user(session: Session, principal: WriteKey, user_id: str) -> Response:
    await service.delete(session, principal.project_id, user_id)
    return Response(status_code=204)
