from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.auth.dependencies import ReadKey, UsageKey, WriteKey
from app.auth.exceptions import InsufficientScope, ProjectMismatch
from app.core.cursors import parse_id, uuid_cursor
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, uuid_page_params
from app.db.session import Session
from app.jobs.exceptions import UnknownJob
from app.pricing.exceptions import CostTooLarge, ExpressionFailed, UnknownModel
from app.routing import TransactionalRoute, read_only
from app.teams.exceptions import NotATeamMember, TeamNotFound
from app.transactions import service
from app.transactions.exceptions import (
    OverRefund,
    TransactionAlreadyCompleted,
    TransactionDenied,
    TransactionNotCompleted,
    TransactionNotFound,
    TransactionNotPending,
)
from app.transactions.schemas import (
    CheckIn,
    CheckOut,
    CompleteIn,
    CompleteOut,
    ExtendIn,
    RefundIn,
    RefundOut,
    StartIn,
    StartOut,
    TransactionFilters,
    TransactionOut,
    UsageIn,
    UsageOut,
)
from app.users.exceptions import UserNotFound

# A route's 403 replaces the router's: the scope and project errors are listed again with
# not_a_team_member (a charge to a team the user is no member of).
_USAGE_ERRORS = (
    UnknownModel,
    CostTooLarge,
    UserNotFound,
    TeamNotFound,
    NotATeamMember,
    InsufficientScope,
    ProjectMismatch,
)

router = APIRouter(prefix="/v1", tags=["usage"], route_class=TransactionalRoute)


@router.post(
    "/transactions/start",
    operation_id="transactions_start",
    summary="Start a usage transaction: admit it and hold its provisional price",
    status_code=201,
    response_model=StartOut,
    responses=problem_responses(*_USAGE_ERRORS, ExpressionFailed),
)
async def start(session: Session, principal: UsageKey, body: StartIn) -> StartOut:
    return await service.start(session, principal, body)


@router.post(
    "/transactions/{transaction_id}/complete",
    operation_id="transactions_complete",
    summary="Complete a transaction: charge the real usage or release the hold",
    response_model=CompleteOut,
    responses=problem_responses(
        TransactionNotFound,
        TransactionAlreadyCompleted,
        TransactionDenied,
        UnknownModel,
        ExpressionFailed,
    ),
)
async def complete(
    session: Session, principal: UsageKey, transaction_id: str, body: CompleteIn
) -> CompleteOut:
    txn_id = parse_id(transaction_id, TransactionNotFound)
    return await service.complete(session, principal, txn_id, body)


@router.post(
    "/transactions/{transaction_id}/extend",
    operation_id="transactions_extend",
    summary="Extend a pending transaction's hold",
    response_model=TransactionOut,
    responses=problem_responses(TransactionNotFound, TransactionNotPending),
)
async def extend(
    session: Session, principal: UsageKey, transaction_id: str, body: ExtendIn
) -> TransactionOut:
    txn_id = parse_id(transaction_id, TransactionNotFound)
    return TransactionOut.model_validate(await service.extend(session, principal, txn_id, body))


@router.post(
    "/transactions/{transaction_id}/refund",
    operation_id="transactions_refund",
    summary="Refund (part of) a completed transaction's charge",
    status_code=201,
    response_model=RefundOut,
    responses=problem_responses(TransactionNotFound, TransactionNotCompleted, OverRefund),
)
async def refund(
    session: Session, principal: WriteKey, transaction_id: str, body: RefundIn
) -> RefundOut:
    txn_id = parse_id(transaction_id, TransactionNotFound)
    return await service.refund(session, principal, txn_id, body)


@router.get(
    "/transactions",
    operation_id="transactions_list",
    summary="List transactions, oldest first",
    response_model=Page[TransactionOut],
)
async def list_transactions(
    session: Session,
    principal: ReadKey,
    page: Annotated[PageParams, Depends(uuid_page_params)],
    filters: Annotated[TransactionFilters, Query()],
) -> Page[TransactionOut]:
    rows = await service.list_transactions(
        session, principal, filters, limit=page.limit, after=uuid_cursor(page.starting_after)
    )
    return make_page([TransactionOut.model_validate(r) for r in rows], page.limit, lambda t: t.id)


@router.get(
    "/transactions/{transaction_id}",
    operation_id="transactions_get",
    summary="Get a transaction",
    response_model=TransactionOut,
    responses=problem_responses(TransactionNotFound),
)
async def get_transaction(
    session: Session, principal: ReadKey, transaction_id: str
) -> TransactionOut:
    txn_id = parse_id(transaction_id, TransactionNotFound)
    return TransactionOut.model_validate(await service.get(session, principal, txn_id))


@router.post(
    "/usage",
    operation_id="usage_record",
    summary="Record usage in one call (charged in full; send an Idempotency-Key)",
    status_code=201,
    response_model=UsageOut,
    responses=problem_responses(*_USAGE_ERRORS, UnknownJob, ExpressionFailed),
)
async def record_usage(session: Session, principal: UsageKey, body: UsageIn) -> UsageOut:
    return await service.record_usage(session, principal, body)


@router.post(
    "/check",
    operation_id="usage_check",
    summary="Would this usage be admitted? No side effect",
    response_model=CheckOut,
    responses=problem_responses(*_USAGE_ERRORS, ExpressionFailed),
)
@read_only
async def check(session: Session, principal: UsageKey, body: CheckIn) -> CheckOut:
    return await service.check(session, principal, body)
