# ruff: noqa: F811 - the fixtures imported below are parameters of the tests
"""Fan-out: no event is skipped however transactions interleave, each goes to its own
project's subscribed endpoints only, and events not meant for fan-out stay out of it."""

from __future__ import annotations

import uuid

import asyncpg

from app.core.ids import uuid7
from app.core.secrets import SecretBox
from app.db.session import Database, driver
from tests.conftest import Project
from tests.fakes.webhook_receiver import webhook_receiver
from tests.webhooks.dispatch_helpers import (  # noqa: F401 - fixtures
    _quiet_endpoints,
    add_endpoint,
    add_event,
    box,
    deliveries,
    dispatch_app,
    dispatch_client,
    dispatch_database_url,
    dispatch_db,
    dispatch_settings,
    dispatcher,
    fanned_out,
    fetch,
    running,
    until,
    wh_other_project,
    wh_project,
    write_event,
)


async def _delivered(db: Database, project_id: str, count: int) -> bool:
    rows = await deliveries(db, project_id)
    return len(rows) == count and all(r["status"] == "succeeded" for r in rows)


async def _cursor_xid(db: Database) -> int:
    (row,) = await fetch(db, "SELECT fanout_xid FROM webhook_fanout_cursor")
    return int(row["fanout_xid"])


async def _event_xid(db: Database, event_id: uuid.UUID) -> int:
    (row,) = await fetch(db, "SELECT fanout_xid FROM events WHERE id = $1", event_id)
    return int(row["fanout_xid"])


async def test_an_event_committed_after_a_newer_one_is_not_skipped(
    dispatch_db: Database, dispatch_database_url: str, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        d = dispatcher(dispatch_db)
        older = await asyncpg.connect(dispatch_database_url)
        try:
            tx = older.transaction()
            await tx.start()
            late = await write_event(older, wh_project.id, "credits.granted", {"n": "late"})
            early = await add_event(dispatch_db, wh_project.id, "credits.granted", {"n": "early"})
            # The newer event is committed, but the older transaction may still add events
            # before it: fan-out waits for it rather than moving past it.
            for _ in range(5):
                await d.fan_out()
            assert await deliveries(dispatch_db, wh_project.id) == []
            assert await _cursor_xid(dispatch_db) < await _event_xid(dispatch_db, early)
            await tx.commit()
        finally:
            await older.close()
        await fanned_out(d, dispatch_db, wh_project.id, 2)
        async with running(d):
            await until(lambda: _delivered(dispatch_db, wh_project.id, 2), what="delivered")
    assert {q.id for q in rx.requests} == {str(late), str(early)}


async def test_an_event_written_by_an_older_transaction_after_fan_out_moved_on_is_delivered(
    dispatch_db: Database, dispatch_database_url: str, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        d = dispatcher(dispatch_db)
        older = await asyncpg.connect(dispatch_database_url)
        try:
            tx = older.transaction()
            await tx.start()
            await older.fetchval("SELECT count(*) FROM events")  # began, nothing written yet
            first = await add_event(dispatch_db, wh_project.id, "credits.granted", {"n": 1})
            await fanned_out(d, dispatch_db, wh_project.id, 1)
            assert await _cursor_xid(dispatch_db) >= await _event_xid(dispatch_db, first)
            second = await write_event(older, wh_project.id, "credits.granted", {"n": 2})
            await tx.commit()
        finally:
            await older.close()
        await fanned_out(d, dispatch_db, wh_project.id, 2)
        async with running(d):
            await until(lambda: _delivered(dispatch_db, wh_project.id, 2), what="delivered")
    assert sorted(q.id for q in rx.requests) == sorted([str(first), str(second)])


async def test_events_of_another_project_never_reach_this_projects_endpoint(
    dispatch_db: Database, box: SecretBox, wh_project: Project, wh_other_project: Project
) -> None:
    async with webhook_receiver() as mine, webhook_receiver() as theirs:
        await add_endpoint(dispatch_db, box, wh_project.id, mine.url)
        await add_endpoint(dispatch_db, box, wh_other_project.id, theirs.url)
        own = {await add_event(dispatch_db, wh_project.id, "credits.granted") for _ in range(3)}
        other = {
            await add_event(dispatch_db, wh_other_project.id, "credits.granted") for _ in range(4)
        }
        async with running(dispatcher(dispatch_db)):
            await until(lambda: _delivered(dispatch_db, wh_project.id, 3), what="mine")
            await until(lambda: _delivered(dispatch_db, wh_other_project.id, 4), what="theirs")
    assert {q.id for q in mine.requests} == {str(e) for e in own}
    assert {q.id for q in theirs.requests} == {str(e) for e in other}


async def test_an_endpoint_gets_only_the_types_it_subscribed_to(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    types = [
        "payment.succeeded",
        "payment.refunded",
        "payments.other",  # not of the payment.* family
        "credits.granted",
        "transaction.completed",
        "transaction.started",
    ]
    async with webhook_receiver() as family, webhook_receiver() as exact:
        await add_endpoint(dispatch_db, box, wh_project.id, family.url, ["payment.*"])
        await add_endpoint(
            dispatch_db, box, wh_project.id, exact.url, ["credits.granted", "transaction.completed"]
        )
        for t in types:
            await add_event(dispatch_db, wh_project.id, t)
        async with running(dispatcher(dispatch_db)):
            await until(lambda: _delivered(dispatch_db, wh_project.id, 4), what="delivered")
    assert sorted(q.json()["type"] for q in family.requests) == [
        "payment.refunded",
        "payment.succeeded",
    ]
    assert sorted(q.json()["type"] for q in exact.requests) == [
        "credits.granted",
        "transaction.completed",
    ]


async def test_an_event_without_fanout_xid_is_not_fanned_out_but_its_own_delivery_is_sent(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        endpoint_id, _ = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        probe = await add_event(dispatch_db, wh_project.id, "webhook.test", fanout=False)
        after = await add_event(dispatch_db, wh_project.id, "credits.granted")
        d = dispatcher(dispatch_db)
        await fanned_out(d, dispatch_db, wh_project.id, 1)
        (only,) = await deliveries(dispatch_db, wh_project.id)
        assert only["event_id"] == after
        # What `POST /v1/webhook-endpoints/{id}/test` does: one delivery, for that endpoint.
        async with dispatch_db.transaction() as session:
            await driver(session).execute(
                "INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id,"
                " next_attempt_at) VALUES ($1, $2, $3, $4, now())",
                uuid7(), uuid.UUID(wh_project.id), endpoint_id, probe,
            )  # fmt: skip
        async with running(d):
            await until(lambda: _delivered(dispatch_db, wh_project.id, 2), what="delivered")
    assert sorted(q.json()["type"] for q in rx.requests) == ["credits.granted", "webhook.test"]
    assert len(rx.requests) == 2


async def test_with_no_endpoint_anywhere_fan_out_moves_on_and_a_later_endpoint_gets_later_events(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    (enabled,) = await fetch(dispatch_db, "SELECT count(*) FROM webhook_endpoints WHERE enabled")
    assert enabled["count"] == 0  # each test disables what it made
    before = await add_event(dispatch_db, wh_project.id, "credits.granted")
    xid = await _event_xid(dispatch_db, before)
    d = dispatcher(dispatch_db)

    async def passed() -> bool:
        await d.fan_out()
        return await _cursor_xid(dispatch_db) > xid

    await until(passed, what="the cursor passing the event")
    async with webhook_receiver() as rx:
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        after = await add_event(dispatch_db, wh_project.id, "credits.granted")
        async with running(d):
            await until(lambda: _delivered(dispatch_db, wh_project.id, 1), what="delivered")
    assert [q.id for q in rx.requests] == [str(after)]
    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    assert delivery["event_id"] == after
