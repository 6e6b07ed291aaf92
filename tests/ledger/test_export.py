"""GET /v1/ledger/export and `creditd ledger`: order, chain, resume, bounds, completeness."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.cli import main as cli
from app.credits import repository as credits_repo
from app.credits import service as credits
from app.db.session import Database, driver
from app.ledger import chain
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import ledger
from tests.ledger.helpers import seed


async def export(project: Project, **params: Any) -> bytes:
    r = await project.get("/v1/ledger/export", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-ndjson"
    return r.content


def lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def objects(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(x, parse_float=Decimal) for x in lines(data)]


async def test_export_lists_every_entry_in_order_chained_and_ends_with_a_trailer(
    project: Project,
) -> None:
    await project.user("alice", 10)
    await project.user("bob", 5)
    r = await project.post("/v1/users/alice/debits", {"amount": "2.5", "reason": 'näive "q"'})
    assert r.status_code == 201
    data = await export(project)
    summary = chain.summarize(lines(data))
    assert summary.complete
    assert summary.segments == 1
    assert summary.entries == 3
    objs = objects(data)
    entries, end = objs[:-1], objs[-1]
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    stored = {e["id"]: e for e in await ledger(project, "alice") + await ledger(project, "bob")}
    for e in entries:
        s = stored[e["id"]]
        for key in ("kind", "amount", "held_amount", "total_after", "held_after", "reason"):
            assert e[key] == s[key], key
        assert e["user_id"] in ("alice", "bob")
    assert end["object"] == "ledger_export_end"
    assert end["entries"] == 3
    assert end["project_id"] == project.id
    assert end["next_after"] == entries[-1]["id"]
    # The hash as README tells an outside verifier to compute it.
    prev = chain.GENESIS
    for full_line in lines(data):
        raw = full_line.rstrip(b"\n")
        assert raw[-140:-76].decode() == prev
        prev = hashlib.sha256(prev.encode() + raw[:-154] + b"}").hexdigest()
        assert raw[-66:-2].decode() == prev == json.loads(raw)["hash"]


async def test_one_changed_byte_anywhere_is_detected_on_its_line(project: Project) -> None:
    await project.user("alice", 10)
    await project.post("/v1/users/alice/debits", {"amount": 1, "reason": "x"})
    data = await export(project)
    starts = [0]
    for raw in lines(data):
        starts.append(starts[-1] + len(raw))
    for pos in range(len(data)):
        for new in {data[pos] ^ 0x01, ord("0") if data[pos] != ord("0") else ord("1")}:
            changed = data[:pos] + bytes([new]) + data[pos + 1 :]
            with pytest.raises(chain.ChainBroken) as broken:
                chain.summarize(lines(changed))
            number = next(i for i in range(len(starts)) if starts[i + 1] > pos) + 1
            assert broken.value.line == number, (pos, new)


async def test_a_resumed_export_continues_the_chain(project: Project) -> None:
    await project.user("alice", 10)
    for _ in range(5):
        await project.post("/v1/users/alice/debits", {"amount": 1})
    full = lines(await export(project))
    last = json.loads(full[2])
    rest = lines(await export(project, after=last["id"], prev_hash=last["hash"]))
    assert rest[:-1] == full[3:-1]  # the same bytes: the same chain
    summary = chain.summarize(full[:3] + rest)
    assert summary.complete
    assert summary.entries == 6
    # A complete file is extended after its trailer.
    end = json.loads(full[-1])
    await project.post("/v1/users/alice/debits", {"amount": 1})
    more = lines(await export(project, after=end["next_after"], prev_hash=end["hash"]))
    summary = chain.summarize(full + more)
    assert summary.entries == 7
    assert summary.segments == 2


async def test_since_and_until_bound_the_export(project: Project, db: Database) -> None:
    await project.user("alice", 10)
    for _ in range(4):
        await project.post("/v1/users/alice/debits", {"amount": 1})
    entries = objects(await export(project))[:-1]
    since, until = entries[1]["created_at"], entries[3]["created_at"]
    end = objects(await export(project, since=since, until=until))
    assert [e["id"] for e in end[:-1]] == [e["id"] for e in entries[1:3]]
    assert end[-1]["horizon"] == until
    assert end[-1]["since"] == since


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00"},  # no zone
        {"format": "csv"},
        {"after": 0},
        {"after": "x"},
        {"prev_hash": "ABC"},
    ],
)
async def test_invalid_parameters_are_a_422_problem(
    project: Project, params: dict[str, Any]
) -> None:
    r = await project.get("/v1/ledger/export", params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "validation_error"


async def test_an_export_holds_only_the_keys_project(
    project: Project, other_project: Project
) -> None:
    await project.user("alice", 10)
    await other_project.user("alice", 7)
    mine = objects(await export(project))
    theirs = objects(await export(other_project))
    assert {e["id"] for e in mine[:-1]}.isdisjoint(e["id"] for e in theirs[:-1])
    assert theirs[0]["amount"] == 7
    assert theirs[-1]["project_id"] == other_project.id
    r = await other_project.get("/v1/ledger/export", params={"after": mine[0]["id"]})
    assert r.status_code == 404
    assert r.json()["code"] == "ledger_entry_not_found"


async def test_an_entry_committed_late_with_a_lower_id_is_not_skipped_on_resume(
    project: Project, db: Database
) -> None:
    """A writer draws its id, then commits after a later writer: the export stops before the
    open writer's start, and the resumed export picks up both entries in (created_at, id)."""
    await project.user("alice")
    await project.user("bob", 1)
    opened, release = asyncio.Event(), asyncio.Event()
    late: dict[str, Any] = {}

    async def slow_writer() -> None:
        async with db.transaction() as session:
            account = await credits_repo.lock_for_user(session, uuid.UUID(project.id), "alice")
            assert account is not None
            _, late["id"] = await credits.grant(
                session, account, amount=Decimal(3), source="adjustment"
            )
            opened.set()
            await release.wait()

    writer = asyncio.create_task(slow_writer())
    await opened.wait()
    r = await project.post("/v1/users/bob/credits", {"amount": 2})  # commits a higher id
    assert r.status_code == 201
    first = lines(await export(project))
    got = objects(b"".join(first))
    ids = [e["id"] for e in got[:-1]]
    higher = max(e["id"] for e in await ledger(project, "bob"))
    assert higher > late["id"]
    assert higher not in ids
    assert late["id"] not in ids
    release.set()
    await writer
    end = got[-1]
    rest = lines(await export(project, after=end["next_after"], prev_hash=end["hash"]))
    resumed = [e["id"] for e in objects(b"".join(rest))[:-1]]
    assert resumed == [late["id"], higher]
    # An export by id alone, resumed after the id already exported, would have lost it:
    assert late["id"] < higher
    # The two parts equal a fresh export's entries, byte for byte.
    fresh = lines(await export(project))
    assert [x[:-155] for x in first + rest if b"ledger_entry" in x[:30]] == [
        x[:-155] for x in fresh[:-1]
    ]
    await assert_ledger_consistent(db)


async def test_cli_export_appends_and_verifies_against_the_database(
    project: Project, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database.url)
    await project.user("alice", 10)
    out = tmp_path / "ledger.jsonl"
    assert (
        await asyncio.to_thread(
            cli, ["ledger", "export", "--project", project.id, "--output", str(out)]
        )
        == 0
    )
    await project.post("/v1/users/alice/debits", {"amount": 1})
    assert (
        await asyncio.to_thread(cli, ["ledger", "export", "--project", project.id, "-o", str(out)])
        == 2
    )
    with out.open("ab") as f:
        f.write(b'{"object":"ledger_en')  # a write cut short
    assert (
        await asyncio.to_thread(
            cli, ["ledger", "export", "--project", project.id, "-o", str(out), "--append"]
        )
        == 0
    )
    summary = chain.summarize(lines(out.read_bytes()))
    assert summary.entries == 2
    assert summary.segments == 2
    assert summary.complete
    assert await asyncio.to_thread(cli, ["ledger", "verify-export", str(out), "--against-db"]) == 0
    http = lines(await export(project))  # the same entries (the file's chain has 2 trailers)
    assert [x[:-155] for x in lines(out.read_bytes()) if b"ledger_entry" in x[:30]] == [
        x[:-155] for x in http[:-1]
    ]
    # One entry changed in the database (a forged amount) is found, as is one missing.
    data = out.read_bytes()
    target = json.loads(lines(data)[0])["id"]
    conn = await asyncpg.connect(settings.database.url)
    try:
        await conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ALL")
        await conn.execute("UPDATE ledger_entries SET reason = 'forged' WHERE id = $1", target)
    finally:
        await conn.close()
    assert await asyncio.to_thread(cli, ["ledger", "verify-export", str(out), "--against-db"]) == 1
    # A changed byte offline.
    pos = data.index(b'"amount":') + 9
    out.write_bytes(data[:pos] + b"9" + data[pos + 1 :])
    assert await asyncio.to_thread(cli, ["ledger", "verify-export", str(out)]) == 1


async def test_cli_verify_finds_an_entry_missing_from_the_file(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database.url)
    await project.user("alice", 10)
    await project.post("/v1/users/alice/debits", {"amount": 1})
    await project.post("/v1/users/alice/debits", {"amount": 1})
    full = lines(await export(project))
    # Rebuild a chain that leaves out the middle entry: intact offline, incomplete vs the db.
    prev, out = chain.GENESIS, []
    for raw in [full[0], full[2]]:
        content = raw.rstrip(b"\n")[:-154].decode() + "}"
        line, prev = chain.seal(content, prev)
        out.append(line)
    end = json.loads(full[-1])
    content = chain.end_content(
        project_id=project.id,
        since=None,
        until=None,
        horizon=chain.parse_timestamp(end["horizon"]),
        after=None,
        entries=2,
        next_after=end["next_after"],
    )
    out.append(chain.seal(content, prev)[0])
    path = tmp_path / "gap.jsonl"
    path.write_text("".join(out))
    assert await asyncio.to_thread(cli, ["ledger", "verify-export", str(path)]) == 0
    assert await asyncio.to_thread(cli, ["ledger", "verify-export", str(path), "--against-db"]) == 1


async def test_a_seeded_export_matches_the_database(
    project: Project, db: Database, settings: Any
) -> None:
    await project.user("alice")
    conn = await asyncpg.connect(settings.database.url)
    try:
        await seed(conn, project.id, "alice", 3000)
    finally:
        await conn.close()
    data = await export(project)
    summary = chain.summarize(lines(data))
    assert summary.entries == 3000
    assert summary.complete
    ats = [(e["created_at"], e["id"]) for e in objects(data)[:-1]]
    assert ats == sorted(ats)
    assert [a[1] for a in ats] != sorted(a[1] for a in ats)
    await assert_ledger_consistent(db)


async def test_an_idle_open_transaction_does_not_hold_the_horizon_back(
    project: Project, settings: Any
) -> None:
    """A session left in `BEGIN; SELECT 1` (psql, a BI tool) has written nothing and holds no
    xid: whatever it writes later is dated then, so the horizon passes it."""
    conn = await asyncpg.connect(settings.database.url)
    idle = conn.transaction()
    await idle.start()
    try:
        opened_at = await conn.fetchval("SELECT now()")
        await project.user("alice", 10)
        end = objects(await export(project))[-1]
        assert end["entries"] == 1
        assert chain.parse_timestamp(end["horizon"]) > opened_at
    finally:
        await idle.rollback()
        await conn.close()


async def test_a_transaction_that_writes_after_idling_is_not_skipped_on_resume(
    project: Project, db: Database
) -> None:
    """A transaction opened before an export, idle (no xid) while it runs, then writing: its
    entry is dated when written, after that export's horizon (and after the entries exported),
    so resuming picks it up; while it holds its xid, it holds the horizon back. Dated at its
    transaction's start (now()), the entry would sort before the exported one and be skipped."""
    async with db.transaction() as session:
        await driver(session).fetchval("SELECT 1")
        await project.user("alice", 1)  # committed after the transaction started
        first = objects(await export(project))
        end = first[-1]
        assert end["entries"] == 1
        account = await credits_repo.lock_for_user(session, uuid.UUID(project.id), "alice")
        assert account is not None
        _, late = await credits.grant(session, account, amount=Decimal(3), source="adjustment")
        resume = {"after": end["next_after"], "prev_hash": end["hash"]}
        pinned = objects(await export(project, **resume))[-1]
        assert pinned["entries"] == 0
        assert pinned["horizon"] < end["horizon"]  # held back to the writer's start
    rest = objects(await export(project, **resume))
    assert [e["id"] for e in rest[:-1]] == [late]
    assert rest[0]["created_at"] >= end["horizon"]
    await assert_ledger_consistent(db)


async def test_timestamps_before_year_1000_are_rfc3339(project: Project) -> None:
    await project.user("alice", 1)
    data = await export(project, until="0001-01-01T00:00:01Z")
    end = objects(data)[-1]
    assert end["entries"] == 0
    assert end["until"] == end["horizon"] == "0001-01-01T00:00:01.000000Z"
    assert chain.parse_timestamp(end["horizon"]) == datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
    data = await export(project, since="0999-12-31T23:59:59.5Z", until="1000-01-01T00:00:00Z")
    end = objects(data)[-1]
    assert end["since"] == "0999-12-31T23:59:59.500000Z"
    assert end["until"] == "1000-01-01T00:00:00.000000Z"
    assert chain.summarize(lines(data)).complete
    for value in (datetime(1, 1, 1, tzinfo=UTC), datetime(999, 12, 31, 23, 59, 59, 9, tzinfo=UTC)):
        assert chain.parse_timestamp(chain.timestamp(value)) == value
