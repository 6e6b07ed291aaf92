"""Defects found by review: a NUL in a response body, a disable racing the fan-out, a large
backlog on a disabled endpoint, a result that cannot be recorded, the claim with a backlog on
an endpoint at its cap, and a failure run that is not continuous."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from app.core.ids import uuid7
from app.core.secrets import SecretBox
from app.db.exceptions import StatementTimeout
from app.db.session import Database, driver
from app.webhooks import dispatch_repository as repo
from app.webhooks import service
from app.webhooks.dispatcher import CANCEL_BATCH, Attempted, Dispatcher
from app.webhooks.schemas import WebhookEndpointPatch
from app.webhooks.sender import Outcome
from tests.conftest import Project
from tests.webhooks.dispatch_helpers import *  # noqa: F403
from tests.webhooks.dispatch_helpers import (
    _quiet_endpoints,  # noqa: F401 - autouse: earlier tests' endpoints stay out of the way
    add_endpoint,
    add_event,
    attempts,
    deliveries,
    dispatcher,
    endpoint,
    fanned_out,
    fast_webhooks,
    fetch,
    write_event,
)


class FakeSender:
    """Answers every request with ``outcome`` (or per URL), counting requests per URL."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.sent: Counter[str] = Counter()

    async def send(self, url: str, headers: Any, body: bytes) -> Outcome:
        self.sent[url] += 1
        return self.outcome

    async def aclose(self) -> None:
        return None


def with_sender(db: Database, sender: FakeSender, **overrides: Any) -> Dispatcher:
    d = dispatcher(db, **overrides)
    d._sender = sender  # type: ignore[assignment]
    return d


async def test_a_nul_in_the_response_body_or_error_is_recorded_once(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    sender = FakeSender(Outcome(True, 200, 1, "ok\x00done", None))
    await add_endpoint(dispatch_db, box, wh_project.id, "http://nul.example/ok")
    await add_event(dispatch_db, wh_project.id, "credits.granted", {})
    d = with_sender(dispatch_db, sender)
    await fanned_out(d, dispatch_db, wh_project.id, 1)
    assert await d.dispatch_once() == 1
    (row,) = await deliveries(dispatch_db, wh_project.id)
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    (attempt,) = await attempts(dispatch_db, wh_project.id)
    assert attempt["response_excerpt"] == "ok\ufffddone"

    sender.outcome = Outcome(False, 500, 1, "\x00", "boom\x00\ud800")
    await add_event(dispatch_db, wh_project.id, "credits.granted", {})
    await fanned_out(d, dispatch_db, wh_project.id, 2)
    assert await d.dispatch_once() == 1
    failed = [a for a in await attempts(dispatch_db, wh_project.id) if not a["succeeded"]]
    assert [(a["response_excerpt"], a["error"]) for a in failed] == [("\ufffd", "boom\ufffd?")]


async def test_a_disable_committed_during_fan_out_gets_no_delivery(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    pid = uuid.UUID(str(wh_project.id))
    eid, _ = await add_endpoint(dispatch_db, box, pid, "http://127.0.0.1:9/x")
    await add_event(dispatch_db, pid, "credits.granted", {})
    async with dispatch_db.transaction() as s:
        start = await repo.lock_cursor(s)
        assert start is not None
        rows = await repo.fanout_batch(s, start, limit=200)
        assert any(r.endpoint_id == eid for r in rows)
        async with dispatch_db.transaction() as s2:  # PATCH enabled: false, committed meanwhile
            patch = WebhookEndpointPatch(enabled=False)
            await service.update(s2, pid, eid, patch, settings=fast_webhooks())
        created = await repo.insert_deliveries(
            s, [(uuid7(), r.project_id, r.endpoint_id, r.event_id) for r in rows if r.endpoint_id]
        )
        await repo.move_cursor(s, rows[-1].fanout_xid, rows[-1].event_id)
    assert created == 0
    assert not (await endpoint(dispatch_db, eid))["enabled"]
    assert [d for d in await deliveries(dispatch_db, pid) if d["endpoint_id"] == eid] == []


async def _backlog(db: Database, project_id: uuid.UUID, endpoint_id: uuid.UUID, n: int) -> None:
    """``n`` events of the project with a pending delivery each to the endpoint, due now."""
    async with db.transaction() as session:
        conn = driver(session)
        for i in range(n):
            await write_event(conn, project_id, "credits.granted", {"i": i}, fanout=False)
        await conn.execute(
            "INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id, status,"
            " next_attempt_at) SELECT gen_random_uuid(), e.project_id, $2, e.id, 'pending',"
            " now() - interval '1 minute' FROM events e WHERE e.project_id = $1"
            " ON CONFLICT DO NOTHING",
            project_id,
            endpoint_id,
        )


async def test_a_disable_leaves_the_backlog_to_bounded_sweeps(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    pid = uuid.UUID(str(wh_project.id))
    url = "http://gone.example/hook"
    eid, _ = await add_endpoint(dispatch_db, box, pid, url)
    total = CANCEL_BATCH + 200
    await _backlog(dispatch_db, pid, eid, total)
    d = with_sender(
        dispatch_db, FakeSender(Outcome(False, 410, 1, "", None, gone=True)),
        max_in_flight_per_endpoint=1,
    )  # fmt: skip
    assert await d.dispatch_once() == 1  # the 410 disables the endpoint, and only that
    assert (await endpoint(dispatch_db, eid))["disabled_reason"] == "gone"
    statuses = Counter(r["status"] for r in await deliveries(dispatch_db, pid))
    assert statuses == {"pending": total - 1, "failed": 1}
    assert await d.dispatch_once() == 0  # a disabled endpoint's deliveries are never claimed

    event_ids = [r["event_id"] for r in await deliveries(dispatch_db, pid)]
    events = await fetch(dispatch_db, "SELECT * FROM events WHERE project_id = $1", pid)
    async with dispatch_db.transaction() as session:
        statuses_seen = await service.delivery_statuses(
            session, pid, [_event(e) for e in events if e["id"] in set(event_ids)][:50]
        )
    assert "pending" not in set(statuses_seen.values())  # canceled-to-be

    assert await d.cancel_disabled_once() == CANCEL_BATCH
    assert await d.cancel_disabled() == total - 1 - CANCEL_BATCH
    statuses = Counter(r["status"] for r in await deliveries(dispatch_db, pid))
    assert statuses == {"canceled": total - 1, "failed": 1}


def _event(row: Any) -> Any:
    from app.db.models import Event

    return Event(id=row["id"], project_id=row["project_id"], type=row["type"],
                 fanout_xid=row["fanout_xid"])  # fmt: skip


async def test_a_claim_skips_an_endpoint_at_its_cap_without_scanning_its_backlog(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    pid = uuid.UUID(str(wh_project.id))
    slow, _ = await add_endpoint(dispatch_db, box, pid, "http://slow.example/hook")
    await _backlog(dispatch_db, pid, slow, 300)
    fast, _ = await add_endpoint(dispatch_db, box, pid, "http://fast.example/hook")
    event_id = await add_event(dispatch_db, pid, "credits.granted", {}, fanout=False)
    async with dispatch_db.transaction() as session:
        await repo.insert_deliveries(session, [(uuid7(), pid, fast, event_id)])
        claimed, _ = await repo.claim(
            session, busy={}, full=[slow], per_endpoint=8, limit=10, lease_seconds=60
        )
    # The fast endpoint's one delivery, though 300 of the full endpoint's are older.
    assert [c.endpoint_id for c in claimed] == [fast]
    async with dispatch_db.transaction() as session:
        claimed, _ = await repo.claim(
            session, busy={slow: 6}, full=[], per_endpoint=8, limit=10, lease_seconds=60
        )
    assert [c.endpoint_id for c in claimed] == [slow, slow]  # its room: 8 - 6


async def test_a_batch_that_keeps_failing_is_recorded_one_by_one_and_bare_if_need_be(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    sender = FakeSender(Outcome(True, 200, 1, "poison", None))
    await add_endpoint(dispatch_db, box, wh_project.id, "http://rec.example/hook")
    for i in range(3):
        await add_event(dispatch_db, wh_project.id, "credits.granted", {"i": i})
    d = with_sender(dispatch_db, sender, max_backoff_seconds=0.01)
    await fanned_out(d, dispatch_db, wh_project.id, 3)
    claimed, _ = await d._claim(10)
    done = [await d.attempt(c) for c in claimed]
    poisoned = done[0].claimed.delivery_id
    done = [
        a if a.claimed.delivery_id == poisoned
        else Attempted(a.claimed, Outcome(True, 200, 1, "fine", None), a.started_at)
        for a in done
    ]  # fmt: skip
    record = d.record
    batches: list[int] = []

    async def flaky(batch: Sequence[Attempted]) -> None:
        batches.append(len(batch))
        if len(batch) > 1:
            raise StatementTimeout()  # the same batch every time: never recorded as one
        if batch[0].outcome.excerpt == "poison":
            raise ValueError("not transient")
        await record(batch)

    d.record = flaky  # type: ignore[method-assign, assignment]

    loop = asyncio.create_task(d._record_loop())
    futures = []
    for a in done:
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        d._results.put_nowait((a, f))
        futures.append(f)
    await asyncio.wait_for(asyncio.gather(*futures), 20)
    loop.cancel()
    rows = await deliveries(dispatch_db, wh_project.id)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    tries = {a["delivery_id"]: a for a in await attempts(dispatch_db, wh_project.id)}
    assert tries[poisoned]["response_excerpt"] is None  # recorded bare, not dropped
    assert len(tries) == 3


async def test_a_failure_after_a_quiet_spell_starts_a_new_failure_run(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    pid = uuid.UUID(str(wh_project.id))
    eid, _ = await add_endpoint(dispatch_db, box, pid, "http://flaky.example/hook")
    d = with_sender(
        dispatch_db, FakeSender(Outcome(False, 500, 1, "", None)),
        retry_schedule_seconds=[3600.0], max_in_flight_per_endpoint=1,
    )  # fmt: skip
    days6 = "now() - interval '6 days'"

    # Failed on day 0, then quiet: the run is over; day 6's failure starts a new one.
    await add_event(dispatch_db, pid, "credits.granted", {})
    await fanned_out(d, dispatch_db, pid, 1)
    assert await d.dispatch_once() == 1
    await fetch(
        dispatch_db, f"UPDATE webhook_endpoints SET failing_since = {days6} WHERE id = $1", eid
    )
    await fetch(
        dispatch_db, f"UPDATE webhook_attempts SET created_at = {days6} WHERE endpoint_id = $1", eid
    )
    await add_event(dispatch_db, pid, "credits.granted", {})
    await fanned_out(d, dispatch_db, pid, 2)
    assert await d.dispatch_once() == 1
    ep = await endpoint(dispatch_db, eid)
    assert ep["enabled"]
    (fresh,) = await fetch(
        dispatch_db,
        "SELECT now() - $1::timestamptz < interval '1 minute' AS ok",
        ep["failing_since"],
    )
    assert fresh["ok"]

    # Failing continuously (its previous failure moments ago) for 6 days: disabled.
    await fetch(
        dispatch_db, f"UPDATE webhook_endpoints SET failing_since = {days6} WHERE id = $1", eid
    )
    await add_event(dispatch_db, pid, "credits.granted", {})
    await fanned_out(d, dispatch_db, pid, 3)
    assert await d.dispatch_once() == 1
    ep = await endpoint(dispatch_db, eid)
    assert (ep["enabled"], ep["disabled_reason"]) == (False, "failing")
