"""GET /v1/analytics/spend and /v1/analytics/summary against real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.analytics.repository import add_past_usage, closed_through
from app.core.clock import utcnow
from app.db.session import Database
from app.workers.runner import close_usage_days_once
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import body, complete, start

PROBLEM_JSON = "application/problem+json"


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _z(day: date) -> str:
    """How the API renders a UTC midnight."""
    return f"{day.isoformat()}T00:00:00Z"


def _today() -> date:
    return utcnow().date()


def _window(first: date, last: date) -> dict[str, str]:
    """Query params covering the UTC days first..last (inclusive)."""
    return {
        "start": _midnight(first).isoformat(),
        "end": _midnight(last + timedelta(1)).isoformat(),
    }


@pytest.fixture
async def priced(project: Project) -> Project:
    # 1 credit per 1K input tokens for every model.
    await project.price("_default", 1, 1)
    return project


async def _use(
    project: Project, user: str, credits: int, model: str = "m1", feature: str | None = None
) -> None:
    """Charge ``credits`` today through the API (POST /v1/usage)."""
    payload: dict[str, Any] = {
        "user_id": user,
        "model": model,
        "tokens": {"input_tokens": credits * 1000, "output_tokens": 0},
    }
    if feature is not None:
        payload["feature_identifier"] = feature
    r = await project.post("/v1/usage", payload)
    assert r.status_code == 201, r.text


async def _use_on(
    db: Database,
    project: Project,
    day: date,
    user: str,
    credits: Decimal | int,
    model: str = "m1",
    feature: str | None = None,
) -> None:
    """Put a charge on another day straight into the rollups, as a charge that day would
    (closed days included: another test may have closed them)."""
    async with db.transaction() as session:
        await add_past_usage(
            session,
            project_id=uuid.UUID(project.id),
            at=_midnight(day) + timedelta(hours=12),
            now=utcnow(),
            user_id=user,
            model=model,
            feature=feature,
            credits=Decimal(credits),
            transactions=1,
        )


async def _spend(project: Project, group_by: str, **params: Any) -> Any:
    r = await project.get("/v1/analytics/spend", params={"group_by": group_by, **params})
    assert r.status_code == 200, r.text
    return body(r)


async def _summary(project: Project, **params: Any) -> Any:
    r = await project.get("/v1/analytics/summary", params=params)
    assert r.status_code == 200, r.text
    return body(r)


def _rows(result: Any) -> list[tuple[Any, Any, int]]:
    return [(row["key"], row["credits"], row["transactions"]) for row in result["data"]]


def _assert_problem(r: httpx.Response, status: int, code: str) -> Any:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    problem = r.json()
    assert problem["status"] == status
    assert problem["code"] == code
    return problem


# --- spend ----------------------------------------------------------------------------------


async def test_spend_by_user_orders_by_credits_highest_first(priced: Project) -> None:
    await _use(priced, "alice", 3)
    await _use(priced, "alice", 4)
    await _use(priced, "bob", 10)
    await _use(priced, "carol", 1)
    result = await _spend(priced, "user")
    assert _rows(result) == [("bob", 10, 1), ("alice", 7, 2), ("carol", 1, 1)]


async def test_spend_by_model_sums_every_user(priced: Project) -> None:
    await _use(priced, "alice", 3, model="gpt-4o")
    await _use(priced, "bob", 2, model="gpt-4o")
    await _use(priced, "bob", 4, model="claude")
    result = await _spend(priced, "model")
    assert _rows(result) == [("gpt-4o", 5, 2), ("claude", 4, 1)]


async def test_spend_by_feature_reports_usage_without_a_feature_as_null(priced: Project) -> None:
    await _use(priced, "alice", 5, feature="chat")
    await _use(priced, "alice", 2)
    await _use(priced, "bob", 1, feature="search")
    result = await _spend(priced, "feature")
    assert _rows(result) == [("chat", 5, 1), (None, 2, 1), ("search", 1, 1)]


async def test_spend_by_day_lists_utc_days_in_ascending_order(
    priced: Project, db: Database
) -> None:
    today = _today()
    await _use(priced, "alice", 1)
    await _use_on(db, priced, today - timedelta(2), "alice", 9)
    await _use_on(db, priced, today - timedelta(5), "bob", 4)
    result = await _spend(priced, "day")
    assert _rows(result) == [
        ((today - timedelta(5)).isoformat(), 4, 1),
        ((today - timedelta(2)).isoformat(), 9, 1),
        (today.isoformat(), 1, 1),
    ]


async def test_spend_by_day_limit_keeps_the_first_days(priced: Project, db: Database) -> None:
    today = _today()
    for back in (1, 2, 3):
        await _use_on(db, priced, today - timedelta(back), "alice", back)
    result = await _spend(priced, "day", limit=2)
    assert [row["key"] for row in result["data"]] == [
        (today - timedelta(3)).isoformat(),
        (today - timedelta(2)).isoformat(),
    ]


async def test_limit_returns_the_top_groups(priced: Project) -> None:
    for i, credits in enumerate([5, 9, 1, 7, 3]):
        await _use(priced, f"u{i}", credits)
    result = await _spend(priced, "user", limit=2)
    assert _rows(result) == [("u1", 9, 1), ("u3", 7, 1)]


async def test_default_limit_is_20(priced: Project, db: Database) -> None:
    for i in range(25):
        await _use_on(db, priced, _today(), f"u{i:02}", 1)
    assert len((await _spend(priced, "user"))["data"]) == 20


async def test_equal_credits_are_ordered_by_key(priced: Project) -> None:
    for user in ("c", "a", "b"):
        await _use(priced, user, 2)
    assert [row["key"] for row in (await _spend(priced, "user"))["data"]] == ["a", "b", "c"]


async def test_usage_outside_the_window_is_excluded(priced: Project, db: Database) -> None:
    today = _today()
    await _use_on(db, priced, today - timedelta(10), "alice", 1)
    await _use_on(db, priced, today - timedelta(9), "alice", 2)
    await _use_on(db, priced, today - timedelta(8), "alice", 4)
    await _use_on(db, priced, today - timedelta(7), "alice", 8)
    window = _window(today - timedelta(9), today - timedelta(8))
    assert _rows(await _spend(priced, "user", **window)) == [("alice", 6, 2)]
    summary = await _summary(priced, **window)
    assert (summary["credits_consumed"], summary["transactions"]) == (6, 2)


async def test_window_is_widened_to_whole_utc_days_and_echoed(
    priced: Project, db: Database
) -> None:
    today = _today()
    await _use_on(db, priced, today - timedelta(3), "alice", 1)
    await _use_on(db, priced, today - timedelta(2), "alice", 2)
    await _use_on(db, priced, today - timedelta(1), "alice", 4)
    # 23:00 UTC on day -3 .. 01:00 UTC on day -1, sent as +02:00 local times: days -3 to -1.
    local = timezone(timedelta(hours=2))
    start = (_midnight(today - timedelta(2)) - timedelta(hours=1)).astimezone(local)
    end = (_midnight(today - timedelta(1)) + timedelta(hours=1)).astimezone(local)
    result = await _spend(priced, "user", start=start.isoformat(), end=end.isoformat())
    assert _rows(result) == [("alice", 7, 3)]
    assert result["start"] == _z(today - timedelta(3))
    assert result["end"] == _z(today)


async def test_end_at_midnight_is_exclusive(priced: Project, db: Database) -> None:
    today = _today()
    await _use_on(db, priced, today - timedelta(2), "alice", 1)
    await _use_on(db, priced, today - timedelta(1), "alice", 2)
    params = {
        "start": _midnight(today - timedelta(2)).isoformat(),
        "end": _midnight(today - timedelta(1)).isoformat(),
    }
    assert _rows(await _spend(priced, "user", **params)) == [("alice", 1, 1)]


async def test_default_window_is_the_30_utc_days_ending_today(
    priced: Project, db: Database
) -> None:
    today = _today()
    await _use_on(db, priced, today - timedelta(30), "alice", 100)
    await _use_on(db, priced, today - timedelta(29), "alice", 2)
    await _use(priced, "alice", 1)
    result = await _spend(priced, "user")
    assert _rows(result) == [("alice", 3, 2)]
    assert result["start"] == _z(today - timedelta(29))
    assert result["end"] == _z(today + timedelta(1))


async def test_refunds_reduce_credits_but_not_charges(priced: Project) -> None:
    await priced.price("gpt-4o", 1, 1)
    await priced.user("alice", credits=100)
    txn = await start(priced, "alice", inp=5000)
    assert (await complete(priced, txn["transaction_id"], inp=5000)).status_code == 200
    r = await priced.post(
        f"/v1/transactions/{txn['transaction_id']}/refund", {"amount": Decimal("1.5")}
    )
    assert r.status_code == 201, r.text
    assert _rows(await _spend(priced, "model")) == [("gpt-4o", Decimal("3.5"), 1)]
    summary = await _summary(priced)
    assert summary["credits_consumed"] == Decimal("3.5")
    assert summary["transactions"] == 1


async def test_spend_credits_keep_fractions_exact(priced: Project, db: Database) -> None:
    await _use_on(db, priced, _today(), "alice", Decimal("0.000001"))
    await _use_on(db, priced, _today(), "alice", Decimal("0.1"), model="m2")
    assert _rows(await _spend(priced, "user")) == [("alice", Decimal("0.100001"), 2)]


async def test_closing_past_days_changes_no_answer(priced: Project, db: Database) -> None:
    """Closed days are read from the per-user and per-model day tables, open days from
    usage_daily; the API's answers are the same before and after the worker closes days."""
    today = _today()
    await _use_on(db, priced, today - timedelta(9), "alice", 4, model="big", feature="chat")
    await _use_on(db, priced, today - timedelta(2), "bob", Decimal("2.5"), model="small")
    await _use_on(db, priced, today - timedelta(2), "alice", 1, model="small", feature="chat")
    await _use(priced, "carol", 3, model="big")
    queries = [
        ("/v1/analytics/spend", {"group_by": g, **w})
        for g in ("user", "model", "feature", "day")
        for w in ({}, _window(today - timedelta(9), today - timedelta(2)))
    ] + [("/v1/analytics/summary", {}), ("/v1/analytics/summary", _window(today, today))]

    async def answers() -> list[Any]:
        return [body(await priced.get(path, params=params)) for path, params in queries]

    before = await answers()
    await close_usage_days_once(db, grace=timedelta(0))
    async with db.transaction() as session:
        closed = await closed_through(session)
    assert closed is not None
    assert closed >= today - timedelta(1)
    assert await answers() == before
    assert _rows(await _spend(priced, "user")) == [
        ("alice", 5, 2),
        ("carol", 3, 1),
        ("bob", Decimal("2.5"), 1),
    ]
    await assert_ledger_consistent(db)  # verify: closed days equal usage_daily's sums


# --- summary --------------------------------------------------------------------------------


async def test_summary_reports_totals_active_users_and_the_top_model_and_user(
    priced: Project,
) -> None:
    await _use(priced, "alice", 3, model="small")
    await _use(priced, "alice", 3, model="small")
    await _use(priced, "bob", 5, model="big")
    await _use(priced, "carol", 2, model="big")
    summary = await _summary(priced)
    assert {k: v for k, v in summary.items() if k not in {"start", "end"}} == {
        "credits_consumed": 13,
        "active_users": 3,
        "transactions": 4,
        "top_model": "big",  # 7 vs 6
        "top_user": "alice",  # 6 vs 5
    }


async def test_summary_of_a_window_without_usage_is_zeros_and_nulls(priced: Project) -> None:
    await _use(priced, "alice", 3)
    yesterday = _today() - timedelta(1)
    summary = await _summary(priced, **_window(yesterday - timedelta(5), yesterday))
    assert {k: v for k, v in summary.items() if k not in {"start", "end"}} == {
        "credits_consumed": 0,
        "active_users": 0,
        "transactions": 0,
        "top_model": None,
        "top_user": None,
    }
    assert (await _spend(priced, "user", **_window(yesterday, yesterday)))["data"] == []


async def test_summary_echoes_the_effective_window(priced: Project) -> None:
    today = _today()
    summary = await _summary(priced, start=_midnight(today - timedelta(6)).isoformat())
    assert summary["start"] == _z(today - timedelta(6))
    assert summary["end"] == _z(today + timedelta(1))


# --- validation -----------------------------------------------------------------------------


async def test_unknown_group_by_is_rejected(project: Project) -> None:
    r = await project.get("/v1/analytics/spend", params={"group_by": "tier"})
    _assert_problem(r, 422, "validation_error")


async def test_group_by_is_required(project: Project) -> None:
    _assert_problem(await project.get("/v1/analytics/spend"), 422, "validation_error")


@pytest.mark.parametrize("limit", [0, 1001, "x"])
async def test_limit_out_of_range_is_rejected(project: Project, limit: Any) -> None:
    r = await project.get("/v1/analytics/spend", params={"group_by": "user", "limit": limit})
    _assert_problem(r, 422, "validation_error")


ENDPOINTS = [("spend", {"group_by": "user"}), ("summary", {})]


@pytest.mark.parametrize(("path", "extra"), ENDPOINTS)
@pytest.mark.parametrize("hours", [0, -1])
async def test_start_not_before_end_is_rejected(
    project: Project, path: str, extra: dict[str, str], hours: int
) -> None:
    end = datetime(2026, 3, 1, 12, tzinfo=UTC)
    params = {"start": end.isoformat(), "end": (end + timedelta(hours=hours)).isoformat()}
    r = await project.get(f"/v1/analytics/{path}", params={**extra, **params})
    problem = _assert_problem(r, 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["query", "start"]


async def test_start_after_now_without_end_is_rejected(project: Project) -> None:
    start = utcnow() + timedelta(hours=1)
    r = await project.get("/v1/analytics/summary", params={"start": start.isoformat()})
    _assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize(("path", "extra"), ENDPOINTS)
async def test_window_longer_than_366_days_is_rejected(
    project: Project, path: str, extra: dict[str, str]
) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    params = {"start": start.isoformat(), "end": (start + timedelta(days=367)).isoformat()}
    r = await project.get(f"/v1/analytics/{path}", params={**extra, **params})
    problem = _assert_problem(r, 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["query", "end"]


async def test_window_of_366_days_is_allowed(project: Project) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    params = {"start": start.isoformat(), "end": (start + timedelta(days=366)).isoformat()}
    assert (await project.get("/v1/analytics/summary", params=params)).status_code == 200


@pytest.mark.parametrize("value", ["2026-03-01T00:00:00", "2026-03-01", "yesterday"])
async def test_timestamps_need_a_utc_offset(project: Project, value: str) -> None:
    r = await project.get("/v1/analytics/summary", params={"start": value})
    _assert_problem(r, 422, "validation_error")


# --- access ---------------------------------------------------------------------------------


async def test_another_projects_usage_never_appears(
    priced: Project, other_project: Project
) -> None:
    await other_project.price("_default", 1, 1)
    await _use(other_project, "alice", 50, model="secret", feature="hidden")
    await _use(priced, "bob", 1)
    for group_by in ("user", "model", "feature", "day"):
        keys = [row["key"] for row in (await _spend(priced, group_by))["data"]]
        assert "alice" not in keys
        assert "secret" not in keys
        assert "hidden" not in keys
    summary = await _summary(priced)
    assert (summary["credits_consumed"], summary["top_user"], summary["top_model"]) == (
        1,
        "bob",
        "m1",
    )


async def _keyed(project: Project, scopes: list[str]) -> Project:
    r = await project.post("/v1/api-keys", {"name": "k", "scopes": scopes})
    assert r.status_code == 201, r.text
    return Project(id=project.id, key=r.json()["key"], client=project.client)


@pytest.mark.parametrize("scope", ["read", "write", "admin"])
async def test_read_write_and_admin_keys_can_read_analytics(project: Project, scope: str) -> None:
    reader = await _keyed(project, [scope])
    assert (await reader.get("/v1/analytics/spend", params={"group_by": "user"})).is_success
    assert (await reader.get("/v1/analytics/summary")).is_success


async def test_usage_key_cannot_read_analytics(project: Project) -> None:
    metering = await _keyed(project, ["usage"])
    r = await metering.get("/v1/analytics/summary")
    _assert_problem(r, 403, "insufficient_scope")


async def test_analytics_need_an_api_key(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/analytics/summary")
    assert r.status_code == 401
