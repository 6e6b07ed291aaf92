"""Manual credits and debits, and the read side of grants and the ledger."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.auth.dependencies import ReadKey, WriteKey
from app.core.clock import utcnow
from app.core.cursors import int_cursor, uuid_cursor
from app.core.errors import ExpiryInPast, problem_responses
from app.core.pagination import (
    Page,
    PageParams,
    int_page_params,
    make_page,
    uuid_page_params,
)
from app.credits import service as credits
from app.credits.exceptions import InsufficientCredits
from app.credits.schemas import CreditIn, DebitIn, DebitOut, GrantCreated, GrantOut, LedgerEntryOut
from app.db.session import Session
from app.routing import TransactionalRoute
from app.users import service as users
from app.users.exceptions import UserNotFound

router = APIRouter(prefix="/v1/users/{user_id}", tags=["credits"], route_class=TransactionalRoute)


@router.post(
    "/credits",
    operation_id="credits_grant",
    summary="Grant credits to a user",
    status_code=201,
    response_model=GrantCreated,
    responses=problem_responses(UserNotFound, ExpiryInPast),
)
async def grant_credits(
    session: Session, principal: WriteKey, user_id: str, body: CreditIn
) -> GrantCreated:
    if body.expires_at is not None and body.expires_at <= utcnow():
        raise ExpiryInPast()
    account = await users.lock_account(
        session, principal, users.check_path_id(user_id), auto_create=False
    )
    return await credits.grant_by_api(session, account, body)


@router.post(
    "/debits",
    operation_id="credits_debit",
    summary="Remove credits from a user",
    status_code=201,
    response_model=DebitOut,
    responses=problem_responses(UserNotFound, InsufficientCredits),
)
async def debit_credits(
    session: Session, principal: WriteKey, user_id: str, body: DebitIn
) -> DebitOut:
    account = await users.lock_account(
        session, principal, users.check_path_id(user_id), auto_create=False
    )
    return await credits.debit_by_api(session, account, body)


@router.get(
    "/grants",
    operation_id="credits_list_grants",
    summary="List a user's grants with their remaining credits",
    response_model=Page[GrantOut],
    responses=problem_responses(UserNotFound),
)
async def list_grants(
    session: Session,
    principal: ReadKey,
    user_id: str,
    page: Annotated[PageParams, Depends(uuid_page_params)],
) -> Page[GrantOut]:
    await users.get(session, principal.project_id, user_id)
    rows = await credits.list_grants(
        session,
        principal.project_id,
        user_id,
        limit=page.limit,
        after=uuid_cursor(page.starting_after),
    )
    return make_page([GrantOut.model_validate(r) for r in rows], page.limit, lambda g: g.id)


@router.get(
    "/ledger",
    operation_id="credits_list_ledger",
    summary="List a user's ledger entries, oldest first",
    response_model=Page[LedgerEntryOut],
    responses=problem_responses(UserNotFound),
)
async def list_ledger(
    session: Session,
    principal: ReadKey,
    user_id: str,
    page: Annotated[PageParams, Depends(int_page_params)],
) -> Page[LedgerEntryOut]:
    await users.get(session, principal.project_id, user_id)
    rows = await credits.list_ledger(
        session,
        principal.project_id,
        user_id,
        limit=page.limit,
        after=int_cursor(page.starting_after),
    )
    items = [
        LedgerEntryOut.model_validate(
            {**{c: getattr(r, c) for c in LedgerEntryOut.model_fields if hasattr(r, c)},
             "balance_after": r.total_after - r.held_after}
        )
        for r in rows
    ]  # fmt: skip
    return make_page(items, page.limit, lambda e: e.id)
