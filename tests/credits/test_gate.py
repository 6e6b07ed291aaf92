"""The per-account bound on lock waiters: refuses only while an account is stuck."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits.exceptions import AccountBusy
from app.credits.gate import AccountGate, attach, waiting

PROJECT = uuid.UUID(int=1)
KEY = (PROJECT, "u")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock) -> AccountGate:
    return AccountGate(limit=2, stall_seconds=0.25, clock=clock)


def test_waiters_up_to_the_limit_are_admitted_however_long_they_wait() -> None:
    clock = Clock()
    g = gate(clock)
    g.enter(KEY)
    clock.now += 10
    g.enter(KEY)
    assert g.waiters(PROJECT, "u") == 2


def test_one_more_waiter_on_a_stuck_account_is_refused_with_503() -> None:
    clock = Clock()
    g = gate(clock)
    g.enter(KEY)
    g.enter(KEY)
    g.enter(KEY)  # within stall_seconds of the first: it may just be busy
    clock.now += 0.25
    with pytest.raises(AccountBusy) as refused:
        g.enter(KEY)
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    assert g.waiters(PROJECT, "u") == 3


def test_an_account_whose_lock_is_handed_on_is_never_refused() -> None:
    clock = Clock()
    g = gate(clock)
    waiting = [g.enter(KEY) for _ in range(5)]
    for account in waiting:  # slow, but each waiter gets the lock in turn
        clock.now += 1.0
        since = g.acquired(KEY, account)
        g.enter(KEY)
        clock.now += 1.0
        g.released(KEY, account, since)
        g.enter(KEY)
    assert g.waiters(PROJECT, "u") == 10


def test_while_one_of_ours_holds_the_lock_the_account_is_not_stuck() -> None:
    clock = Clock()
    g = gate(clock)
    holder = g.enter(KEY)
    since = g.acquired(KEY, holder)
    g.enter(KEY)
    g.enter(KEY)
    clock.now += 60  # a long transaction of ours: its waiters queue behind it
    g.enter(KEY)
    g.released(KEY, holder, since)
    clock.now += g.stall_after
    with pytest.raises(AccountBusy):
        g.enter(KEY)


def test_slow_holds_of_this_process_make_it_wait_longer_before_calling_an_account_stuck() -> None:
    clock = Clock()
    g = gate(clock)
    assert g.stall_after == 0.25
    other = (PROJECT, "other")
    for _ in range(50):  # this process's holds take 100 ms (a starved CPU, say)
        since = g.acquired(other, g.enter(other))
        clock.now += 0.1
        g.released(other, g._accounts[other], since)
    assert 0.9 < g.stall_after <= 1.0
    for _ in range(3):
        g.enter(KEY)
    clock.now += 0.5
    g.enter(KEY)  # 0.5 s without progress is not stuck for this slow process
    clock.now += 0.5
    with pytest.raises(AccountBusy):
        g.enter(KEY)


def test_the_tolerated_stall_has_a_ceiling() -> None:
    clock = Clock()
    g = gate(clock)
    since = g.acquired(KEY, g.enter(KEY))
    clock.now += 3600
    g.released(KEY, g._accounts[KEY], since)
    assert g.stall_after == 8 * 0.25


def test_other_accounts_are_not_affected() -> None:
    clock = Clock()
    g = gate(clock)
    for _ in range(2):
        g.enter(KEY)
    clock.now += 1
    with pytest.raises(AccountBusy):
        g.enter(KEY)
    g.enter((PROJECT, "other"))
    g.enter((uuid.UUID(int=2), "u"))


def test_an_idle_account_is_forgotten() -> None:
    clock = Clock()
    g = gate(clock)
    a = g.enter(KEY)
    b = g.enter(KEY)
    g.gave_up(KEY, a)
    g.released(KEY, b, g.acquired(KEY, b))
    assert g.waiters(PROJECT, "u") == 0
    assert g._accounts == {}


def test_the_session_helper_counts_a_waiter_until_the_lock_statement_returns() -> None:
    g = gate(Clock())
    session = cast(AsyncSession, SimpleNamespace(info={}))  # the helper only uses .info
    attach(session, g)
    with waiting(session, PROJECT, "u"):
        assert g.waiters(PROJECT, "u") == 1
    assert g.waiters(PROJECT, "u") == 0
    assert g._accounts[KEY].holding == 1  # until the transaction ends
    for callback in session.info["creditd.on_end"]:
        callback()
    assert g._accounts == {}
