"""Teams, their members, and the credits, grants and ledger of their shared account."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.auth.dependencies import ReadKey, WriteKey
from app.core.clock import utcnow
from app.core.cursors import int_cursor, uuid_cursor
from app.core.errors import ExpiryInPast, problem_responses
from app.core.pagination import (
    Page,
    PageParams,
    int_page_params,
    make_page,
    page_params,
    uuid_page_params,
)
from app.credits import service as credits
from app.credits.exceptions import InsufficientCredits
from app.credits.schemas import CreditIn, DebitIn, DebitOut, GrantCreated, GrantOut, LedgerEntryOut
from app.db.session import Session
from app.routing import TransactionalRoute
from app.teams import service
from app.teams.exceptions import (
    TeamExists,
    TeamHasOpenTransactions,
    TeamMemberNotFound,
    TeamNotFound,
)
from app.teams.schemas import MemberIn, MemberOut, TeamCreate, TeamOut, TeamPatch
from app.users.exceptions import UserNotFound

router = APIRouter(prefix="/v1/teams", tags=["teams"], route_class=TransactionalRoute)


@router.post(
    "",
    operation_id="teams_create",
    summary="Create a team with an empty shared account",
    status_code=201,
    response_model=TeamOut,
    responses=problem_responses(TeamExists),
)
async def create_team(session: Session, principal: WriteKey, body: TeamCreate) -> TeamOut:
    return await service.create(session, principal, body)


@router.get("", operation_id="teams_list", summary="List teams", response_model=Page[TeamOut])
async def list_teams(
    session: Session, principal: ReadKey, page: Annotated[PageParams, Depends(page_params)]
) -> Page[TeamOut]:
    teams = await service.list_teams(
        session, principal.project_id, limit=page.limit, after=page.starting_after
    )
    return make_page(teams, page.limit, lambda t: t.id)


@router.get(
    "/{team_id}",
    operation_id="teams_get",
    summary="Get a team with its balance",
    response_model=TeamOut,
    responses=problem_responses(TeamNotFound),
)
async def get_team(session: Session, principal: ReadKey, team_id: str) -> TeamOut:
    return await service.get(session, principal.project_id, team_id)


@router.patch(
    "/{team_id}",
    operation_id="teams_update",
    summary="Update a team's name or metadata",
    response_model=TeamOut,
    responses=problem_responses(TeamNotFound),
)
async def patch_team(
    session: Session, principal: WriteKey, team_id: str, body: TeamPatch
) -> TeamOut:
    return await service.patch(session, principal, team_id, body)


@router.delete(
    "/{team_id}",
    operation_id="teams_delete",
    summary="Delete a team (soft: its account is closed, its members leave, its id is kept)",
    status_code=204,
    response_class=Response,
    responses=problem_responses(TeamNotFound, TeamHasOpenTransactions),
)
async def delete_team(session: Session, principal: WriteKey, team_id: str) -> Response:
    await service.delete(session, principal, team_id)
    return Response(status_code=204)


@router.put(
    "/{team_id}/members/{user_id}",
    operation_id="teams_put_member",
    summary="Add a user to a team, or change its role and team spend caps",
    response_model=MemberOut,
    responses=problem_responses(TeamNotFound, UserNotFound),
)
async def put_member(
    session: Session, principal: WriteKey, team_id: str, user_id: str, body: MemberIn
) -> MemberOut:
    member, _ = await service.put_member(session, principal, team_id, user_id, body)
    return member


@router.get(
    "/{team_id}/members",
    operation_id="teams_list_members",
    summary="List a team's members",
    response_model=Page[MemberOut],
    responses=problem_responses(TeamNotFound),
)
async def list_members(
    session: Session,
    principal: ReadKey,
    team_id: str,
    page: Annotated[PageParams, Depends(page_params)],
) -> Page[MemberOut]:
    members = await service.list_members(
        session, principal.project_id, team_id, limit=page.limit, after=page.starting_after
    )
    return make_page(members, page.limit, lambda m: m.user_id)


@router.delete(
    "/{team_id}/members/{user_id}",
    operation_id="teams_remove_member",
    summary="Remove a user from a team",
    status_code=204,
    response_class=Response,
    responses=problem_responses(TeamNotFound, TeamMemberNotFound),
)
async def remove_member(
    session: Session, principal: WriteKey, team_id: str, user_id: str
) -> Response:
    await service.remove_member(session, principal, team_id, user_id)
    return Response(status_code=204)


@router.post(
    "/{team_id}/credits",
    operation_id="teams_grant_credits",
    summary="Grant credits to a team's shared account",
    status_code=201,
    response_model=GrantCreated,
    responses=problem_responses(TeamNotFound, ExpiryInPast),
)
async def grant_credits(
    session: Session, principal: WriteKey, team_id: str, body: CreditIn
) -> GrantCreated:
    if body.expires_at is not None and body.expires_at <= utcnow():
        raise ExpiryInPast()
    account = await service.lock_account(session, principal, team_id)
    return await credits.grant_by_api(session, account, body)


@router.post(
    "/{team_id}/debits",
    operation_id="teams_debit_credits",
    summary="Remove credits from a team's shared account",
    status_code=201,
    response_model=DebitOut,
    responses=problem_responses(TeamNotFound, InsufficientCredits),
)
async def debit_credits(
    session: Session, principal: WriteKey, team_id: str, body: DebitIn
) -> DebitOut:
    account = await service.lock_account(session, principal, team_id)
    return await credits.debit_by_api(session, account, body)


@router.get(
    "/{team_id}/grants",
    operation_id="teams_list_grants",
    summary="List a team's grants with their remaining credits",
    response_model=Page[GrantOut],
    responses=problem_responses(TeamNotFound),
)
async def list_grants(
    session: Session,
    principal: ReadKey,
    team_id: str,
    page: Annotated[PageParams, Depends(uuid_page_params)],
) -> Page[GrantOut]:
    await service.get(session, principal.project_id, team_id)
    rows = await credits.list_team_grants(
        session,
        principal.project_id,
        team_id,
        limit=page.limit,
        after=uuid_cursor(page.starting_after),
    )
    return make_page([GrantOut.model_validate(r) for r in rows], page.limit, lambda g: g.id)


@router.get(
    "/{team_id}/ledger",
    operation_id="teams_list_ledger",
    summary="List a team's ledger entries, oldest first (user_id: the member who charged)",
    response_model=Page[LedgerEntryOut],
    responses=problem_responses(TeamNotFound),
)
async def list_ledger(
    session: Session,
    principal: ReadKey,
    team_id: str,
    page: Annotated[PageParams, Depends(int_page_params)],
) -> Page[LedgerEntryOut]:
    await service.get(session, principal.project_id, team_id)
    rows = await credits.list_team_ledger(
        session,
        principal.project_id,
        team_id,
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
