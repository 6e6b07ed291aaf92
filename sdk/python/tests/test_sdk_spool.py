"""The durable completion spool: usage is never lost when creditd is briefly unreachable."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKOFF_BASE, BACKOFF_MAX, Project
from creditd_sdk import (
    APIConnectionError,
    AsyncCreditd,
    CompletionSpooled,
    Creditd,
    FileSpool,
    MemorySpool,
    Spool,
    SpoolEntry,
)
from creditd_sdk.spool import spool_target
from sdk_testkit import Fault, FaultProxy, ServerProcess

PROVISIONAL: Any = {"input_tokens": 1000, "output_tokens": 1000}  # holds 3 credits
USED: Any = {"input_tokens": 500, "output_tokens": 500}  # costs 1.5


def _kinds(client: Creditd, user_id: str) -> list[str]:
    return [e.kind for e in client.credits.list_ledger(user_id, limit=100).data]


def _client(project: Project, base_url: str, spool_dir: Path, **options: Any) -> Creditd:
    options.setdefault("backoff_base", BACKOFF_BASE)
    options.setdefault("backoff_max", BACKOFF_MAX)
    return Creditd(project.key, base_url=base_url, spool_dir=spool_dir, **options)


def _start(client: Creditd, user_id: str = "u", **extra: Any) -> str:
    client.users.create(user_id)
    client.credits.grant(user_id, 10)
    start = client.transactions.start(
        user_id=user_id, model="m", provisional_tokens=PROVISIONAL, **extra
    )
    assert start.admitted
    return start.transaction_id


def test_a_completion_made_while_creditd_is_down_lands_exactly_once_after_restart(
    priced: Creditd, live: ServerProcess, spool_dir: Path
) -> None:
    txn = _start(priced)
    url = live.url
    live.stop()
    with pytest.raises(CompletionSpooled) as caught:
        priced.transactions.complete(txn, success=True, finalized_tokens=USED)
    assert isinstance(caught.value.cause, APIConnectionError)
    entry = caught.value.entry
    files = list(spool_dir.glob("*.json"))
    assert [f.name for f in files] == [f"{entry.id}.json"]
    stored = json.loads(files[0].read_text())
    assert stored["transaction_id"] == txn
    assert stored["idempotency_key"] == entry.idempotency_key
    assert json.loads(stored["body"]) == {"success": True, "finalized_tokens": USED}
    assert list(spool_dir.glob(".*")) == []  # no temp file left behind

    live.start()
    assert live.url == url  # same port: the client needs no change
    flushed = priced.flush_spool()
    assert [r.transaction_id for r in flushed.delivered] == [txn]
    assert flushed.delivered[0].credits_used == Decimal("1.5")
    assert flushed.delivered[0].late is False
    assert (flushed.pending, flushed.rejected) == ([], [])
    assert list(spool_dir.glob("*.json")) == []
    assert priced.transactions.get(txn).status == "completed"
    assert _kinds(priced, "u") == ["grant", "hold", "usage"]
    balance = priced.users.get("u").balance
    assert (balance.total, balance.held) == (Decimal("8.5"), Decimal(0))

    again = priced.flush_spool()
    assert (again.delivered, again.pending, again.rejected) == ([], [], [])
    assert _kinds(priced, "u") == ["grant", "hold", "usage"]
    assert priced.users.get("u").balance.total == Decimal("8.5")
    live.verify()


async def test_capture_usage_spools_when_creditd_goes_down_during_the_model_call(
    priced: Creditd, project: Project, proxy: FaultProxy, spool_dir: Path
) -> None:
    priced.users.create("u")
    priced.credits.grant("u", 10)
    async with AsyncCreditd(
        project.key, base_url=proxy.url, spool_dir=spool_dir, backoff_base=BACKOFF_BASE
    ) as aclient:
        async with aclient.capture_usage(
            user_id="u", model="m", provisional_tokens=PROVISIONAL
        ) as cap:
            proxy.go_down()  # creditd becomes unreachable while the model answers
            cap.set_usage(**USED)
        assert cap.result is None  # no exception: the usage is safe in the spool
        assert cap.spooled is not None
        assert isinstance(cap.spooled.cause, APIConnectionError)
        files = await asyncio.to_thread(lambda: list(spool_dir.glob("*.json")))
        assert [f.name for f in files] == [f"{cap.spooled.entry.id}.json"]

        proxy.come_back()
        flushed = await aclient.flush_spool()
    assert [r.credits_used for r in flushed.delivered] == [Decimal("1.5")]
    assert cap.transaction_id is not None
    assert priced.transactions.get(cap.transaction_id).status == "completed"
    assert _kinds(priced, "u") == ["grant", "hold", "usage"]


def test_a_later_call_delivers_spooled_completions_by_itself(
    priced: Creditd, project: Project, proxy: FaultProxy, spool_dir: Path
) -> None:
    txn = _start(priced)
    with _client(project, proxy.url, spool_dir, spool_flush_interval=0) as client:
        proxy.go_down()
        with pytest.raises(CompletionSpooled):
            client.transactions.complete(txn, success=True, finalized_tokens=USED)
        proxy.come_back()
        assert client.users.get("u").balance.total == Decimal("8.5")  # flushed before the call
    assert list(spool_dir.glob("*.json")) == []
    assert _kinds(priced, "u") == ["grant", "hold", "usage"]


def test_another_client_replays_what_an_earlier_process_left_in_the_spool(
    priced: Creditd, project: Project, proxy: FaultProxy, spool_dir: Path
) -> None:
    txn = _start(priced)
    proxy.go_down()
    with _client(project, proxy.url, spool_dir) as crashed, pytest.raises(CompletionSpooled):
        crashed.transactions.complete(txn, success=True, finalized_tokens=USED)
    proxy.come_back()
    with _client(project, proxy.url, spool_dir) as fresh:
        assert [r.transaction_id for r in fresh.flush_spool().delivered] == [txn]
    assert priced.transactions.get(txn).credits_used == Decimal("1.5")


def test_a_completion_whose_answers_were_all_lost_is_replayed_with_its_original_key(
    priced: Creditd, project: Project, proxy: FaultProxy, spool_dir: Path
) -> None:
    txn = _start(priced)
    proxy.add(Fault("POST", "/complete", "drop_after_forward", times=4))
    with _client(project, proxy.url, spool_dir, max_retries=3) as client:
        with pytest.raises(CompletionSpooled) as caught:
            client.transactions.complete(txn, success=True, finalized_tokens=USED)
        flushed = client.flush_spool()
    assert [r.credits_used for r in flushed.delivered] == [Decimal("1.5")]
    posts = proxy.requests("POST", "/complete")
    assert [p.status for p in posts] == [None, None, None, None, 200]
    assert {p.idempotency_key for p in posts} == {caught.value.entry.idempotency_key}
    assert len({p.body for p in posts}) == 1  # the exact bytes, so the key matches
    assert _kinds(priced, "u") == ["grant", "hold", "usage"]


def test_a_spooled_completion_after_the_hold_expired_is_still_charged_late(
    priced: Creditd, project: Project, proxy: FaultProxy, live: ServerProcess, spool_dir: Path
) -> None:
    txn = _start(priced, hold_ttl_seconds=1)
    with _client(project, proxy.url, spool_dir) as client:
        proxy.go_down()
        with pytest.raises(CompletionSpooled):
            client.transactions.complete(txn, success=True, finalized_tokens=USED)
        # While the client cannot reach creditd, the hold sweeper releases the expired hold.
        deadline = time.monotonic() + 60
        while priced.transactions.get(txn).status != "expired":
            assert time.monotonic() < deadline, "the hold sweeper did not run"
            time.sleep(0.2)
        proxy.come_back()
        flushed = client.flush_spool()
    assert len(flushed.delivered) == 1
    assert flushed.delivered[0].late is True
    assert flushed.delivered[0].credits_used == Decimal("1.5")
    assert _kinds(priced, "u") == ["grant", "hold", "hold_expired", "usage"]
    assert priced.users.get("u").balance.total == Decimal("8.5")
    live.verify()


def test_an_entry_the_server_refuses_for_good_is_set_aside(
    priced: Creditd, project: Project, proxy: FaultProxy, spool_dir: Path
) -> None:
    txn = _start(priced)
    with _client(project, proxy.url, spool_dir) as client:
        proxy.go_down()
        with pytest.raises(CompletionSpooled):
            client.transactions.complete(txn, success=True, finalized_tokens=USED)
        # Meanwhile the transaction was completed differently, by other means.
        priced.transactions.complete(txn, success=False)
        proxy.come_back()
        flushed = client.flush_spool()
        assert flushed.delivered == []
        assert [err.code for _, err in flushed.rejected] == ["transaction_already_completed"]
        assert list(spool_dir.glob("*.json")) == []
        rejected = list((spool_dir / "rejected").glob("*.json"))
        assert len(rejected) == 1
        reason = json.loads(rejected[0].read_text())["rejected_reason"]
        assert "transaction_already_completed" in reason
        assert client.flush_spool().rejected == []  # not replayed again


def test_a_custom_spool_plugs_in_through_the_protocol(
    priced: Creditd, project: Project, proxy: FaultProxy
) -> None:
    memory = MemorySpool()
    assert isinstance(memory, Spool)
    target = spool_target(proxy.url, project.key)
    txn = _start(priced)
    with Creditd(project.key, base_url=proxy.url, spool=memory, backoff_base=BACKOFF_BASE) as c:
        proxy.go_down()
        with pytest.raises(CompletionSpooled):
            c.transactions.complete(txn, success=True, finalized_tokens=USED)
        assert [e.transaction_id for e in memory.entries(target)] == [txn]
        proxy.come_back()
        assert len(c.flush_spool().delivered) == 1
        assert memory.entries(target) == []
    assert priced.transactions.get(txn).status == "completed"


def test_without_a_spool_the_network_error_is_raised(
    priced: Creditd, project: Project, proxy: FaultProxy
) -> None:
    txn = _start(priced)
    with Creditd(project.key, base_url=proxy.url, spool=None, backoff_base=BACKOFF_BASE) as c:
        proxy.go_down()
        with pytest.raises(APIConnectionError):
            c.transactions.complete(txn, success=True)
    assert priced.transactions.get(txn).status == "pending"


def _entry(target: str, txn: str) -> SpoolEntry:
    return SpoolEntry.new(
        target=target, base_url="http://x", transaction_id=txn, idempotency_key="k", body="{}"
    )


def test_file_spool_keeps_entries_per_target_oldest_first(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "s")
    assert spool.entries("a") == []  # no directory yet
    first, second, other = _entry("a", "t1"), _entry("a", "t2"), _entry("b", "t3")
    for entry in (second, other, first):
        spool.put(entry)
    assert [e.transaction_id for e in spool.entries("a")] == ["t1", "t2"]
    assert spool.entries("b") == [other]
    path = tmp_path / "s" / f"{first.id}.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    spool.remove(first)
    spool.remove(first)  # already gone: no error
    assert spool.entries("a") == [second]


def test_file_spool_sets_unreadable_files_aside(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    good = _entry("a", "t1")
    spool.put(good)
    (tmp_path / "0-broken.json").write_text("{not json")
    assert spool.entries("a") == [good]
    assert (tmp_path / "rejected" / "0-broken.json").exists()
