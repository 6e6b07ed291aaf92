"""capture_usage: hold, run the model call, then charge its real usage or release the hold."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from creditd_sdk import (
    AsyncCreditd,
    Creditd,
    CreditsNotAdmitted,
    InsufficientCredits,
    NotAdmitted,
    SpendCapReached,
    current_capture,
    metered,
)
from creditd_sdk.capture import _key_part


class ModelDown(Exception):
    pass


def _ledger(client: Creditd, user_id: str) -> list[tuple[str, Decimal, Decimal]]:
    return [(e.kind, e.amount, e.held_amount) for e in client.credits.list_ledger(user_id).data]


def _funded(client: Creditd, user_id: str, credits: int) -> None:
    client.users.create(user_id)
    if credits:
        client.credits.grant(user_id, credits)


PROVISIONAL: Any = {"input_tokens": 1000, "output_tokens": 1000}  # holds 3 credits


async def test_async_block_charges_the_usage_reported_inside_it(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    async with aclient.capture_usage(
        user_id="u", model="gpt-4o", provisional_tokens=PROVISIONAL, feature_identifier="chat"
    ) as cap:
        assert cap.admitted
        assert priced.users.get("u").balance.held == Decimal(3)  # held while the call runs
        cap.set_usage(input_tokens=200, output_tokens=100)
    assert cap.result is not None
    assert cap.result.status == "completed"
    assert cap.result.credits_used == Decimal("0.4")
    assert cap.spooled is None
    assert _ledger(priced, "u") == [
        ("grant", Decimal(10), Decimal(0)),
        ("hold", Decimal(0), Decimal(3)),
        ("usage", Decimal("-0.4"), Decimal(-3)),
    ]
    assert cap.transaction_id is not None
    txn = priced.transactions.get(cap.transaction_id)
    assert txn.feature_identifier == "chat"
    assert txn.credits_used == Decimal("0.4")


async def test_async_block_releases_the_hold_and_reraises_when_the_model_fails(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    with pytest.raises(ModelDown):
        async with aclient.capture_usage(
            user_id="u", model="m", provisional_tokens=PROVISIONAL
        ) as cap:
            raise ModelDown("503 from the model provider")
    assert cap.result is not None
    assert (cap.result.status, cap.result.credits_used) == ("failed", Decimal(0))
    balance = priced.users.get("u").balance
    assert (balance.total, balance.held, balance.available) == (
        Decimal(10),
        Decimal(0),
        Decimal(10),
    )
    assert [kind for kind, _, _ in _ledger(priced, "u")] == ["grant", "hold", "hold_release"]
    assert all(amount == 0 for kind, amount, _ in _ledger(priced, "u") if kind != "grant")


async def test_async_block_does_not_run_when_credits_are_short(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 1)
    ran = False
    with pytest.raises(CreditsNotAdmitted) as caught:
        async with aclient.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL):
            ran = True
    assert not ran
    err = caught.value
    assert isinstance(err, InsufficientCredits)
    assert isinstance(err, NotAdmitted)
    assert err.reason == "insufficient_credits"
    assert err.result.status == "denied"
    assert priced.transactions.get(err.result.transaction_id).status == "denied"
    assert _ledger(priced, "u") == [("grant", Decimal(1), Decimal(0))]


async def test_a_cancelled_call_releases_its_hold_through_the_spool(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    entered = asyncio.Event()

    async def call() -> None:
        async with aclient.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL):
            entered.set()
            await asyncio.sleep(3600)  # a model call that never answers

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancellation does not wait on the network: the release waits in the spool.
    assert priced.users.get("u").balance.held == Decimal(3)
    flushed = await aclient.flush_spool()
    assert [(r.status, r.credits_used) for r in flushed.delivered] == [("failed", Decimal(0))]
    balance = priced.users.get("u").balance
    assert (balance.total, balance.held) == (Decimal(10), Decimal(0))


def test_a_spend_cap_denial_is_its_own_not_admitted(priced: Creditd) -> None:
    _funded(priced, "u", 10)
    priced.spend_caps.put("u", "day", limit=1, action="deny")
    with (
        pytest.raises(SpendCapReached) as caught,
        priced.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL),
    ):
        pytest.fail("the body must not run")
    assert caught.value.reason == "spend_cap_reached"


def test_sync_block_charges_the_real_usage(priced: Creditd) -> None:
    _funded(priced, "u", 10)
    with priced.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL) as cap:
        cap.set_usage(input_tokens=1000, output_tokens=500, metadata={"request": "r1"})
    assert cap.result is not None
    assert cap.result.credits_used == Decimal(2)
    assert cap.result.balance == Decimal(8)
    assert cap.transaction_id is not None
    assert priced.transactions.get(cap.transaction_id).metadata == {"request": "r1"}


def test_sync_block_without_reported_usage_charges_the_provisional_tokens(
    priced: Creditd,
) -> None:
    _funded(priced, "u", 10)
    with priced.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL) as cap:
        pass
    assert cap.result is not None
    assert cap.result.credits_used == Decimal(3)


async def test_async_decorator_charges_the_usage_its_extractor_reads(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "alice", 10)
    _funded(priced, "bob", 10)

    @aclient.capture_usage(
        user_id=lambda user, prompt: user,
        model="gpt-4o",
        provisional_tokens=PROVISIONAL,
        usage=lambda reply: {"input_tokens": reply["in"], "output_tokens": reply["out"]},
    )
    async def chat(user: str, prompt: str) -> dict[str, Any]:
        return {"text": prompt.upper(), "in": len(prompt) * 100, "out": 50}

    assert (await chat("alice", "hi"))["text"] == "HI"
    assert (await chat("bob", "hello"))["text"] == "HELLO"
    assert priced.users.get("alice").balance.total == Decimal("9.7")  # 200 in + 50 out
    assert priced.users.get("bob").balance.total == Decimal("9.4")  # 500 in + 50 out


async def test_async_decorator_releases_and_reraises_on_error(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)

    @aclient.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL)
    async def chat() -> str:
        raise ModelDown

    with pytest.raises(ModelDown):
        await chat()
    assert priced.users.get("u").balance.total == Decimal(10)
    assert [t.status for t in priced.transactions.list(user_id="u").data] == ["failed"]


def test_sync_decorator_reports_usage_through_current_capture(priced: Creditd) -> None:
    _funded(priced, "u", 10)

    @priced.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL)
    def stream() -> list[str]:
        chunks = ["a", "b", "c"]
        capture = current_capture()
        assert capture is not None
        capture.set_usage(output_tokens=len(chunks) * 1000)
        return chunks

    assert stream() == ["a", "b", "c"]
    assert current_capture() is None
    assert priced.users.get("u").balance.total == Decimal(4)  # 3000 output tokens = 6


def test_sync_decorator_does_not_call_the_model_when_not_admitted(priced: Creditd) -> None:
    _funded(priced, "u", 0)
    calls: list[str] = []

    @priced.capture_usage(user_id="u", model="m", provisional_tokens=PROVISIONAL)
    def chat(prompt: str) -> str:
        calls.append(prompt)
        return prompt

    with pytest.raises(InsufficientCredits):
        chat("hi")
    assert calls == []


def test_a_block_runs_once(priced: Creditd) -> None:
    _funded(priced, "u", 10)
    capture = priced.capture_usage(user_id="u", model="m")
    with capture:
        pass
    with pytest.raises(RuntimeError), capture:
        pass


# --- @metered and the keys of request captures (creditd_sdk.capture) --------------------------


async def test_metered_refuses_generator_functions(priced: Creditd, aclient: AsyncCreditd) -> None:
    # Calling a generator function only creates the generator: metering the call would charge
    # before any of the work ran, so the decorator refuses it up front.
    with pytest.raises(TypeError, match="generator function"):

        @metered(priced, user_id="u", model="m")
        def chunks() -> Iterator[str]:
            yield "a"

    with pytest.raises(TypeError, match="generator function"):

        @metered(aclient, user_id="u", model="m")
        async def achunks() -> AsyncIterator[str]:
            yield "a"

    assert priced.transactions.list().data == []


def test_model_ids_in_idempotency_keys_are_plain_ascii_and_stable() -> None:
    plain = ["gpt-4o", "text-embedding-3-small", "claude-3.5:beta_1", "m" * 64]
    for model in plain:
        assert _key_part(model) == model
    odd = ["模型-ß", "gpt 4o", "org/model", "m" * 65, "", "a\nb", "x=y"]
    parts = [_key_part(model) for model in odd]
    for model, part in zip(odd, parts, strict=True):
        assert part == "sha256=" + hashlib.sha256(model.encode()).hexdigest()[:32]
        assert part.isascii()
        assert part == _key_part(model)  # stable: a retry sends the same key
    assert len(set(parts)) == len(odd)
