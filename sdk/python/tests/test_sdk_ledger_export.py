"""``credits.export_ledger`` (async and sync) against the live server: every line of the
project's export, parsed exactly as the raw bytes say, whose SHA-256 chain and trailer verify;
resuming after the trailer; ``export_incomplete`` when the trailer never comes."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from conftest import Project
from creditd_sdk import AsyncCreditd, Creditd
from creditd_sdk.errors import CreditdError
from sdk_testkit import ServerProcess

GENESIS = "0" * 64


def _chain(lines: list[bytes], prev: str = GENESIS) -> str:
    """The README's check: hash = SHA-256(prev_hash + line[:-154] + "}")."""
    for number, line in enumerate(lines, 1):
        assert line[-140:-76].decode() == prev, f"line {number}: chain broken"
        prev = hashlib.sha256(prev.encode() + line[:-154] + b"}").hexdigest()
        assert line[-66:-2].decode() == prev, f"line {number}: hash mismatch"
    return prev


def _raw(live: ServerProcess, key: str, entries: int, **params: Any) -> list[bytes]:
    """The export's raw lines, once its horizon (about a second back) covers ``entries``."""
    for _ in range(60):
        r = httpx.get(
            f"{live.url}/v1/ledger/export",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = r.content.splitlines()
        if len(lines) - 1 >= entries:
            return lines
        time.sleep(0.5)
    raise AssertionError(f"the export never covered {entries} entries")


def _team_ledger(c: Creditd) -> None:
    """A user's grant and usage, a team's grant and a member's usage on it."""
    c.users.create("alice")
    c.credits.grant("alice", Decimal("10.5"))
    c.usage.record(user_id="alice", model="gpt-4o", tokens={"input_tokens": 1000})  # 1 credit
    c.teams.create("t_export")
    c.teams.put_member("t_export", "alice")
    c.teams.grant("t_export", 100)
    c.usage.record(
        user_id="alice", model="gpt-4o", tokens={"output_tokens": 1000}, team_id="t_export"
    )


def _check(lines: list[dict[str, Any]], raw: list[bytes], project: Project) -> None:
    # The same entries as the raw bytes say (the trailers differ in their horizon only).
    assert lines[:-1] == [json.loads(line, parse_float=Decimal) for line in raw[:-1]]
    raw_end = json.loads(raw[-1])
    assert raw_end["hash"] == _chain(raw)
    *entries, end = lines
    assert [(e["kind"], e["user_id"], e["team_id"], e["amount"]) for e in entries] == [
        ("grant", "alice", None, Decimal("10.5")),
        ("usage", "alice", None, Decimal(-1)),
        ("grant", None, "t_export", Decimal(100)),
        ("usage", "alice", "t_export", Decimal(-2)),
    ]
    assert all(isinstance(e["amount"], Decimal) for e in entries)
    assert end["object"] == "ledger_export_end"
    assert (end["project_id"], end["entries"]) == (project.id, 4)
    assert end["next_after"] == entries[-1]["id"]
    assert end["prev_hash"] == raw_end["prev_hash"] == entries[-1]["hash"]
    assert {k: v for k, v in end.items() if k not in ("horizon", "hash")} == {
        k: v for k, v in raw_end.items() if k not in ("horizon", "hash")
    }


def test_sync_export_ledger_yields_every_line_of_a_verified_chain(
    priced: Creditd, live: ServerProcess, project: Project
) -> None:
    _team_ledger(priced)
    raw = _raw(live, project.key, 4)
    lines = list(priced.credits.export_ledger())
    _check(lines, raw, project)
    end = lines[-1]
    resumed = list(priced.credits.export_ledger(after=end["next_after"], prev_hash=end["hash"]))
    assert [line["object"] for line in resumed] == ["ledger_export_end"]
    assert (resumed[0]["entries"], resumed[0]["prev_hash"]) == (0, end["hash"])
    tail = _raw(live, project.key, 0, after=end["next_after"], prev_hash=end["hash"])
    _chain(tail, end["hash"])


async def test_async_export_ledger_yields_every_line_of_a_verified_chain(
    priced: Creditd, aclient: AsyncCreditd, live: ServerProcess, project: Project
) -> None:
    _team_ledger(priced)
    raw = _raw(live, project.key, 4)
    lines = [line async for line in aclient.credits.export_ledger()]
    _check(lines, raw, project)
    since = datetime.fromisoformat(lines[2]["created_at"])  # from the team's grant on
    part = [line async for line in aclient.credits.export_ledger(since=since)]
    assert [line.get("kind") for line in part] == ["grant", "usage", None]
    assert part[0]["prev_hash"] == GENESIS


def _cut(request: httpx.Request) -> httpx.Response:
    """An export whose trailer never arrives (the database failed mid-stream)."""
    line = b'{"object":"ledger_entry","id":1}\n'
    return httpx.Response(200, content=line, headers={"content-type": "application/x-ndjson"})


def test_sync_export_without_its_trailer_raises_export_incomplete() -> None:
    http = httpx.Client(transport=httpx.MockTransport(_cut), base_url="http://creditd")
    with Creditd("ck_test", base_url="http://creditd", spool=None, http_client=http) as c:
        seen: list[dict[str, Any]] = []
        with pytest.raises(CreditdError) as raised:
            seen.extend(c.credits.export_ledger())
    assert raised.value.code == "export_incomplete"
    assert [line["id"] for line in seen] == [1]


async def test_async_export_without_its_trailer_raises_export_incomplete() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(_cut), base_url="http://creditd")
    async with AsyncCreditd(
        "ck_test", base_url="http://creditd", spool=None, http_client=http
    ) as c:
        seen: list[dict[str, Any]] = []

        async def drain() -> None:
            async for line in c.credits.export_ledger():
                seen.append(line)

        with pytest.raises(CreditdError) as raised:
            await drain()
    assert raised.value.code == "export_incomplete"
    assert [line["id"] for line in seen] == [1]
    await http.aclose()
