"""Closing finished UTC days into the per-user and per-model day tables, and analytics that
read closed days from them: against a database of their own, so the tests can choose "now"
and the days closed without touching the shared one."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from app.analytics import repository as repo
from app.analytics import rollup
from app.cli import run_migrations
from app.core.settings import DatabaseSettings
from app.credits.verify import CHECKS
from app.db.engine import create_engine
from app.db.session import Database, driver
from app.workers.runner import close_usage_days_once
from tests.fixtures.database import fresh_database

D = date(2031, 3, 15)  # the tests' "today", a Saturday
MONDAY = D - timedelta(5)  # this week's Monday
NOON = datetime.combine(D, time(12), UTC)
GRACE = timedelta(minutes=15)
ROLLUP_CHECKS = (
    "closed_user_days_equal_usage_daily",
    "closed_user_weeks_equal_user_days",
    "closed_model_days_equal_usage_daily",
)


@pytest.fixture(scope="module")
def rollup_url() -> Iterator[str]:
    with fresh_database() as (url, _):
        run_migrations(url)
        yield url


@pytest.fixture(scope="module")
async def rdb(rollup_url: str) -> AsyncIterator[Database]:
    database = Database(create_engine(DatabaseSettings(url=rollup_url), pool_size=25))
    yield database
    await database.dispose()


@dataclass(frozen=True)
class Usage:
    day: date
    user: str
    model: str
    feature: str | None
    credits: Decimal
    transactions: int


@pytest.fixture
async def pid(rdb: Database) -> uuid.UUID:
    """A new project, with every day reopened and the usage tables empty."""
    project_id = uuid.uuid4()
    async with rdb.transaction() as session:
        await driver(session).execute(
            "TRUNCATE usage_daily, usage_user_days, usage_user_weeks, usage_model_days;"
            "UPDATE usage_rollup SET closed_through = NULL, closed_at = NULL"
        )
        await session.execute(
            text("INSERT INTO projects (id, name) VALUES (:id, 'rollup')"), {"id": project_id}
        )
    return project_id


async def _add(rdb: Database, project_id: uuid.UUID, u: Usage) -> None:
    async with rdb.transaction() as session:
        await repo.add_past_usage(
            session,
            project_id=project_id,
            at=datetime.combine(u.day, time(9, 30), UTC),
            now=NOON,
            user_id=u.user,
            model=u.model,
            feature=u.feature,
            credits=u.credits,
            transactions=u.transactions,
        )


async def _closed_through(rdb: Database) -> date | None:
    async with rdb.transaction() as session:
        return await repo.closed_through(session)


async def _violations(rdb: Database) -> list[Any]:
    found = []
    async with rdb.transaction() as session:
        for name in ROLLUP_CHECKS:
            found += [(name, *row) for row in await session.execute(text(CHECKS[name]))]
    return found


async def _table(rdb: Database, sql: str) -> list[Any]:
    async with rdb.transaction() as session:
        return [tuple(r) for r in await driver(session).fetch(sql)]


# --- closing ------------------------------------------------------------------------------


async def test_first_close_without_usage_marks_the_last_finished_day(
    rdb: Database, pid: uuid.UUID
) -> None:
    async with rdb.transaction() as session:
        assert await rollup.close_next_day(session, now=NOON) == D - timedelta(1)
    async with rdb.transaction() as session:
        assert await rollup.close_next_day(session, now=NOON) is None
    assert await _closed_through(rdb) == D - timedelta(1)


async def test_a_day_closes_only_after_the_grace_period(rdb: Database, pid: uuid.UUID) -> None:
    midnight = datetime.combine(D, time(), UTC)
    assert rollup.last_closable_day(midnight + GRACE - timedelta(seconds=1), GRACE) == D - (
        timedelta(2)
    )
    assert rollup.last_closable_day(midnight + GRACE, GRACE) == D - timedelta(1)
    await _add(rdb, pid, Usage(D - timedelta(1), "u", "m", None, Decimal(5), 1))
    # Ten minutes into D, D-1 (which has usage) is not due: only the empty day before is.
    assert await close_usage_days_once(rdb, grace=GRACE, now=midnight + timedelta(minutes=10)) == 1
    assert await _closed_through(rdb) == D - timedelta(2)
    assert await _table(rdb, "SELECT count(*) FROM usage_user_days") == [(0,)]
    assert await close_usage_days_once(rdb, grace=GRACE, now=midnight + GRACE) == 1
    assert await _closed_through(rdb) == D - timedelta(1)
    assert await _table(rdb, "SELECT day, credits FROM usage_user_days") == [
        (D - timedelta(1), Decimal(5))
    ]


async def test_catch_up_after_downtime_closes_every_missed_day_once(
    rdb: Database, pid: uuid.UUID
) -> None:
    usage = [
        Usage(D - timedelta(5), "alice", "small", "chat", Decimal("1.25"), 1),
        Usage(D - timedelta(5), "alice", "small", "chat", Decimal("0.75"), 1),
        Usage(D - timedelta(5), "alice", "large", None, Decimal(10), 1),
        Usage(D - timedelta(5), "bob", "small", "chat", Decimal(2), 1),
        Usage(D - timedelta(3), "bob", "large", "search", Decimal("0.000001"), 1),
        Usage(D, "carol", "small", None, Decimal(7), 1),  # still open at NOON
    ]
    for u in usage:
        await _add(rdb, pid, u)
    # Down since before D-5; back at noon on D: D-5 .. D-1 are closed, one transaction each.
    assert await close_usage_days_once(rdb, grace=GRACE, now=NOON) == 5
    assert await _closed_through(rdb) == D - timedelta(1)
    assert await _table(
        rdb, "SELECT day, user_id, credits, transactions FROM usage_user_days ORDER BY 1, 2"
    ) == [
        (D - timedelta(5), "alice", Decimal(12), 3),
        (D - timedelta(5), "bob", Decimal(2), 1),
        (D - timedelta(3), "bob", Decimal("0.000001"), 1),
    ]
    assert await _table(
        rdb,
        "SELECT day, model, feature, credits, transactions FROM usage_model_days ORDER BY 1, 2, 3",
    ) == [
        (D - timedelta(5), "large", "", Decimal(10), 1),
        (D - timedelta(5), "small", "chat", Decimal(4), 3),
        (D - timedelta(3), "large", "search", Decimal("0.000001"), 1),
    ]
    assert await _violations(rdb) == []
    assert await close_usage_days_once(rdb, grace=GRACE, now=NOON) == 0


async def test_closing_a_day_again_changes_nothing(rdb: Database, pid: uuid.UUID) -> None:
    await _add(rdb, pid, Usage(D - timedelta(1), "u", "m", "f", Decimal(3), 2))
    await close_usage_days_once(rdb, grace=GRACE, now=NOON)
    before = await _table(rdb, "SELECT * FROM usage_user_days ORDER BY 1, 2, 3")
    async with rdb.transaction() as session:
        await repo.close_day(session, D - timedelta(1), at=NOON)
    assert await _table(rdb, "SELECT * FROM usage_user_days ORDER BY 1, 2, 3") == before
    assert await _violations(rdb) == []


async def test_closing_an_earlier_day_again_keeps_later_days_closed(
    rdb: Database, pid: uuid.UUID
) -> None:
    await _add(rdb, pid, Usage(D - timedelta(3), "u", "m", None, Decimal(2), 1))
    await close_usage_days_once(rdb, grace=GRACE, now=NOON)
    async with rdb.transaction() as session:
        await repo.close_day(session, D - timedelta(3), at=NOON)
    assert await _closed_through(rdb) == D - timedelta(1)
    assert await _violations(rdb) == []


async def test_past_usage_waits_for_a_running_close_and_lands_in_its_rows(
    rdb: Database, pid: uuid.UUID
) -> None:
    day = D - timedelta(1)
    await _add(rdb, pid, Usage(day, "u", "m", None, Decimal(10), 1))
    async with rdb.transaction() as session:  # every day before ``day``
        await rollup.close_next_day(session, now=NOON - timedelta(days=1))
    async with rdb.transaction() as session:
        assert await rollup.close_next_day(session, now=NOON) == day
        refund = asyncio.create_task(_add(rdb, pid, Usage(day, "u", "m", None, Decimal(-4), 0)))
        today = asyncio.create_task(_add(rdb, pid, Usage(D, "u", "m", None, Decimal(1), 1)))
        await asyncio.wait_for(today, 5)  # today's usage never waits for a close
        await asyncio.sleep(0.3)
        assert not refund.done()  # a refund to a past day does, until the close commits
    await asyncio.wait_for(refund, 5)
    assert await _table(rdb, "SELECT credits FROM usage_user_days") == [(Decimal(6),)]
    assert await _table(rdb, "SELECT credits FROM usage_model_days") == [(Decimal(6),)]
    assert await _violations(rdb) == []


async def test_a_close_skips_while_a_past_day_refund_is_running(
    rdb: Database, pid: uuid.UUID
) -> None:
    day = D - timedelta(1)
    async with rdb.transaction() as session:
        await repo.add_past_usage(
            session,
            project_id=pid,
            at=datetime.combine(day, time(10), UTC),
            now=NOON,
            user_id="u",
            model="m",
            feature=None,
            credits=Decimal(3),
            transactions=1,
        )
        # Another worker's close finds the lock taken and leaves the day for its next run.
        assert await close_usage_days_once(rdb, grace=GRACE, now=NOON) == 0
    assert await close_usage_days_once(rdb, grace=GRACE, now=NOON) >= 1
    assert await _table(rdb, "SELECT day, credits FROM usage_user_days") == [(day, Decimal(3))]
    assert await _violations(rdb) == []


async def test_two_closers_at_once_close_each_day_once(rdb: Database, pid: uuid.UUID) -> None:
    for back in range(1, 31):
        await _add(rdb, pid, Usage(D - timedelta(back), f"u{back % 4}", "m", None, Decimal(1), 1))
    counts = await asyncio.gather(
        *(close_usage_days_once(rdb, grace=GRACE, now=NOON) for _ in range(4))
    )
    assert await _closed_through(rdb) == D - timedelta(1)
    assert sum(counts) == 30  # each day once, whoever closed it
    assert await _violations(rdb) == []


async def test_later_usage_on_a_closed_day_updates_the_closed_rows(
    rdb: Database, pid: uuid.UUID
) -> None:
    await _add(rdb, pid, Usage(D - timedelta(2), "u", "m", None, Decimal(10), 1))
    await close_usage_days_once(rdb, grace=GRACE, now=NOON)
    # A refund of 4 of that charge: credits down, charges unchanged.
    await _add(rdb, pid, Usage(D - timedelta(2), "u", "m", None, Decimal(-4), 0))
    # Usage today (open) stays out of the closed tables.
    await _add(rdb, pid, Usage(D, "u", "m", None, Decimal(1), 1))
    assert await _table(rdb, "SELECT day, credits, transactions FROM usage_user_days") == [
        (D - timedelta(2), Decimal(6), 1)
    ]
    assert await _table(rdb, "SELECT day, credits, transactions FROM usage_model_days") == [
        (D - timedelta(2), Decimal(6), 1)
    ]
    assert await _violations(rdb) == []


async def test_past_usage_racing_the_close_of_its_day_is_counted_once(
    rdb: Database, pid: uuid.UUID
) -> None:
    day = D - timedelta(1)
    await _add(rdb, pid, Usage(day, "u0", "m", None, Decimal(100), 1))
    refunds = [Usage(day, f"u{i % 3}", "m", None, Decimal("-0.5"), 0) for i in range(60)]
    results = await asyncio.gather(
        *(_add(rdb, pid, u) for u in refunds[:30]),
        close_usage_days_once(rdb, grace=GRACE, now=NOON),
        *(_add(rdb, pid, u) for u in refunds[30:]),
        close_usage_days_once(rdb, grace=GRACE, now=NOON),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    # A closer that found the row share-locked by a refund leaves the day to the next run.
    await close_usage_days_once(rdb, grace=GRACE, now=NOON)
    assert await _closed_through(rdb) == day
    assert await _violations(rdb) == []
    assert await _table(rdb, "SELECT sum(credits) FROM usage_user_days") == [(Decimal(70),)]


async def test_a_closed_sunday_closes_its_week_per_user(rdb: Database, pid: uuid.UUID) -> None:
    last_week = MONDAY - timedelta(7)
    usage = [
        Usage(last_week, "alice", "small", None, Decimal(1), 1),  # Monday
        Usage(last_week + timedelta(3), "alice", "large", "chat", Decimal("2.5"), 1),
        Usage(last_week + timedelta(6), "alice", "small", None, Decimal(3), 2),  # Sunday
        Usage(last_week + timedelta(6), "bob", "small", None, Decimal(4), 1),
        Usage(MONDAY, "alice", "small", None, Decimal(100), 1),  # this week: not over
    ]
    for u in usage:
        await _add(rdb, pid, u)
    await close_usage_days_once(rdb, grace=GRACE, now=NOON)
    weeks = "SELECT week, user_id, credits, transactions FROM usage_user_weeks ORDER BY 1, 2"
    assert await _table(rdb, weeks) == [
        (last_week, "alice", Decimal("6.5"), 4),
        (last_week, "bob", Decimal(4), 1),
    ]
    # A refund to a day of a closed week comes off the week too; one to this week does not.
    await _add(rdb, pid, Usage(last_week + timedelta(1), "bob", "small", None, Decimal(-1), 0))
    await _add(rdb, pid, Usage(MONDAY, "alice", "small", None, Decimal(-1), 0))
    assert await _table(rdb, weeks) == [
        (last_week, "alice", Decimal("6.5"), 4),
        (last_week, "bob", Decimal(3), 1),
    ]
    assert await _violations(rdb) == []


@pytest.mark.parametrize(
    ("start", "end", "closed", "expected"),
    [
        # Nothing closed: everything from usage_daily.
        (MONDAY - timedelta(30), D, None, [("usage_daily", MONDAY - timedelta(30), D)]),
        # Ragged days, whole weeks, ragged days, then the open days.
        (
            MONDAY - timedelta(16),  # a Saturday
            D + timedelta(1),
            D - timedelta(1),
            [
                ("usage_user_days", MONDAY - timedelta(16), MONDAY - timedelta(14)),
                ("usage_user_weeks", MONDAY - timedelta(14), MONDAY),
                ("usage_user_days", MONDAY, D),
                ("usage_daily", D, D + timedelta(1)),
            ],
        ),
        # A window inside one week: days only.
        (
            MONDAY + timedelta(1),
            MONDAY + timedelta(4),
            D,
            [("usage_user_days", MONDAY + timedelta(1), MONDAY + timedelta(4))],
        ),
        # Closed through a Sunday, window aligned on weeks: weeks only.
        (
            MONDAY - timedelta(14),
            MONDAY,
            MONDAY - timedelta(1),
            [("usage_user_weeks", MONDAY - timedelta(14), MONDAY)],
        ),
    ],
)
def test_per_user_windows_read_whole_weeks_and_their_ragged_ends(
    start: date, end: date, closed: date | None, expected: list[tuple[str, date, date]]
) -> None:
    got = repo._sources(start, end, closed, per_user=True)
    assert [(table.__tablename__, lo, hi) for table, lo, hi in got] == expected


async def test_verify_reports_a_closed_day_that_disagrees(rdb: Database, pid: uuid.UUID) -> None:
    await _add(rdb, pid, Usage(D - timedelta(7), "u", "m", None, Decimal(10), 1))
    await close_usage_days_once(rdb, grace=GRACE, now=NOON)
    async with rdb.transaction() as session:
        await session.execute(text("UPDATE usage_user_days SET credits = credits + 1"))
        await session.execute(text("UPDATE usage_model_days SET transactions = 2"))
    found = await _violations(rdb)
    assert sorted(v[0] for v in found) == sorted(ROLLUP_CHECKS)


# --- analytics over closed and open days ----------------------------------------------------


def _expected_spend(
    usage: list[Usage], group_by: str, start: date, end: date
) -> list[tuple[Any, Decimal, int]]:
    credits: dict[Any, Decimal] = defaultdict(Decimal)
    charges: dict[Any, int] = defaultdict(int)
    for u in usage:
        if start <= u.day < end:
            key = {"user": u.user, "model": u.model, "feature": u.feature or "", "day": u.day}
            credits[key[group_by]] += u.credits
            charges[key[group_by]] += u.transactions
    rows = [(k, credits[k], charges[k]) for k in credits]
    if group_by == "day":
        return sorted(rows, key=lambda r: r[0])
    return sorted(rows, key=lambda r: (-r[1], r[0]))


async def test_analytics_are_the_same_whichever_days_are_closed(
    rdb: Database, pid: uuid.UUID
) -> None:
    rng = random.Random(7)
    usage = []
    for _ in range(400):
        day = D - timedelta(rng.randrange(0, 45))
        refund = rng.random() < 0.1
        usage.append(
            Usage(
                day,
                f"user-{rng.randrange(12)}",
                rng.choice(["small", "medium", "large"]),
                rng.choice([None, "chat", "search"]),
                Decimal(rng.randrange(1, 10**6)) / 10**4 * (-1 if refund else 1),
                0 if refund else 1,
            )
        )
    for u in usage:
        await _add(rdb, pid, u)
    await close_usage_days_once(rdb, grace=GRACE, now=NOON)
    last_closed = D - timedelta(1)
    assert await _closed_through(rdb) == last_closed
    windows = [(D - timedelta(n), D + timedelta(1)) for n in (0, 1, 7, 30, 44)]
    windows += [(D - timedelta(20), D - timedelta(10)), (D - timedelta(60), D - timedelta(40))]
    # The closed tables hold every day up to last_closed; any earlier "closed" splits the
    # window between them and usage_daily differently, and the answer must not change.
    splits = [None, D - timedelta(50), D - timedelta(15), last_closed]
    async with rdb.transaction() as session:
        for start, end in windows:
            for group_by in ("user", "model", "feature", "day"):
                expected = _expected_spend(usage, group_by, start, end)
                for closed in splits:
                    stmt = repo.spend_query(
                        pid, group_by=group_by, start=start, end=end, limit=1000, closed=closed
                    )
                    got = [tuple(r) for r in await session.execute(stmt)]
                    assert got == expected, (group_by, start, end, closed)
            by_user = _expected_spend(usage, "user", start, end)
            by_model = _expected_spend(usage, "model", start, end)
            for closed in splits:
                row = (
                    await session.execute(
                        repo.summary_query(pid, start=start, end=end, closed=closed)
                    )
                ).one()
                assert row.credits == sum((r[1] for r in by_model), Decimal(0))
                assert row.transactions == sum(r[2] for r in by_model)
                assert row.active_users == sum(1 for r in by_user if r[2] > 0)
                assert row.top_user == (by_user[0][0] if by_user else None)
                assert row.top_model == (by_model[0][0] if by_model else None)
    # And through the functions the service calls, which read closed_through themselves.
    window = (D - timedelta(30), D + timedelta(1))
    async with rdb.transaction() as session:
        rows = await repo.spend(
            session, pid, group_by="user", start=window[0], end=window[1], limit=5
        )
        summary = await repo.summary(session, pid, start=window[0], end=window[1])
    assert [tuple(r) for r in rows] == _expected_spend(usage, "user", *window)[:5]
    assert summary.top_user == rows[0][0]
