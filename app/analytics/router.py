from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from app.analytics import service
from app.analytics.exceptions import TeamFilterNeedsTeamGroup, WindowOutOfOrder, WindowTooLong
from app.analytics.schemas import GroupBy, LiabilityOut, SpendOut, SummaryOut
from app.auth.dependencies import ReadKey
from app.core.clock import utcnow
from app.core.errors import problem_responses
from app.db.session import Session
from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1", tags=["analytics"], route_class=TransactionalRoute)

_WINDOW = (
    " Windows are whole UTC days: `start` is rounded down to its UTC midnight and `end` up to"
    " the next UTC midnight (unless already at one); the response echoes the effective"
    " `start` and (exclusive) `end`. Default: the 30 UTC days ending with today. At most 366"
    " days; `start` must be before `end` (422 otherwise)."
)
Start = Annotated[
    AwareDatetime | None,
    Query(description="RFC 3339 timestamp; default: 30 days before the effective end"),
]
End = Annotated[AwareDatetime | None, Query(description="RFC 3339 timestamp; default: now")]


@router.get(
    "/analytics/spend",
    operation_id="analytics_spend",
    summary="Credits spent per user, model, feature or day over a time window",
    description="Credits are net of refunds (a refund counts on the day of the charge it"
    " refunds). Groups are ordered by credits, highest first (ties by key), and the top"
    " `limit` are returned; `group_by=day` returns days in ascending order, the first `limit`"
    " of them. Only groups with usage appear. The `feature` key is null for usage recorded"
    " without a `feature_identifier`; a `day` key is a UTC date (YYYY-MM-DD). `team` and"
    " `member` count only charges to team accounts (`member`: per member's user id, across"
    " teams unless `team_id` narrows it); `user` counts a user's charges to any account." + _WINDOW,
    response_model=SpendOut,
    responses=problem_responses(WindowOutOfOrder, WindowTooLong, TeamFilterNeedsTeamGroup),
)
async def spend(
    session: Session,
    principal: ReadKey,
    group_by: Annotated[GroupBy, Query(description="What to group by")],
    start: Start = None,
    end: End = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Groups to return (1-1000)")] = 20,
    team_id: Annotated[
        str | None,
        Query(max_length=255, description="Only this team's charges (group_by=team|member)"),
    ] = None,
) -> SpendOut:
    return await service.spend(
        session,
        principal,
        group_by=group_by,
        start=start,
        end=end,
        limit=limit,
        team_id=team_id,
    )


@router.get(
    "/analytics/summary",
    operation_id="analytics_summary",
    summary="Credits consumed, active users, charges and the top model and user over a window",
    description="Credits are net of refunds; `active_users` counts users with at least one"
    " successful charge; `top_model` and `top_user` are those with the most credits (ties by"
    " name) and null when the window has no usage." + _WINDOW,
    response_model=SummaryOut,
    responses=problem_responses(WindowOutOfOrder, WindowTooLong),
)
async def summary(
    session: Session, principal: ReadKey, start: Start = None, end: End = None
) -> SummaryOut:
    return await service.summary(session, principal, start=start, end=end)


@router.get(
    "/analytics/liability",
    operation_id="analytics_liability",
    summary="Outstanding paid credits and their money value; promotional credits; debt",
    description="Outstanding credits are the unspent remainders of unexpired grants of"
    " existing users. Paid credits are valued at their cost basis (what their payment or"
    " subscription period cost per credit) and grouped by the currency paid, each value"
    " rounded half-up to that currency's minor units: the deferred revenue. Paid credits of"
    " unknown price (granted by hand as `paid`) are counted apart. `debt` is what users owe:"
    " usage beyond their credits and clawbacks of credits already spent.",
    response_model=LiabilityOut,
)
async def liability(session: Session, principal: ReadKey) -> LiabilityOut:
    return await service.liability(session, principal, now=utcnow())
