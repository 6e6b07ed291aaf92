"""A bound on the requests of one process that wait for one account's row lock.

Each waiter holds a pooled connection, so without a bound a locked account soaks up the whole
pool and every tenant stalls. A request for an account that already has ``limit`` waiters
fails fast with 503 ``account_busy``, but only while the account is stuck: none of this
process's requests holds its lock, and none got or released it for ``stall_seconds``. That is
a lock held from elsewhere (a long transaction, a psql session). A hot account that keeps
handing its lock on (a burst of one user's starts) is never refused. When this process's own
holds grow slow (a starved CPU, several processes taking turns on one hot account), the stall
it tolerates grows with them, up to ``MAX_STALL_FACTOR`` times ``stall_seconds``.
No I/O: a few dict operations per account lock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.credits.exceptions import AccountBusy
from app.db.session import on_end

_SESSION_KEY = "creditd.account_gate"
Key = tuple[uuid.UUID, str]
# A stall counts only once it is this many times the usual hold (another process may be
# taking its turns on the account meanwhile) ...
HOLD_FACTOR = 10
# ... and is always counted past this many times ``stall_seconds``.
MAX_STALL_FACTOR = 8


@dataclass
class _Account:
    waiting: int  # requests of this process in a statement that waits for the lock
    holding: int  # requests of this process that got the lock, until their transaction ends
    progress_at: float  # when one of them last got or released it (or the first one came)


class AccountGate:
    def __init__(
        self,
        *,
        limit: int,
        stall_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._accounts: dict[Key, _Account] = {}
        self._hold = 0.0  # moving average of how long this process holds an account lock

    @property
    def stall_after(self) -> float:
        """How long an account may go without progress here before it counts as stuck."""
        usual = max(self.stall_seconds, HOLD_FACTOR * self._hold)
        return min(usual, MAX_STALL_FACTOR * self.stall_seconds)

    def enter(self, key: Key) -> _Account:
        """Count one more waiter, or raise ``AccountBusy`` when the account is stuck."""
        now = self._clock()
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = _Account(0, 0, now)
        elif (
            account.waiting >= self.limit
            and account.holding == 0
            and now - account.progress_at >= self.stall_after
        ):
            raise AccountBusy(
                f"{account.waiting} requests are already waiting for this user's account, "
                f"which nobody here got for {now - account.progress_at:.1f} s; retry shortly."
            )
        account.waiting += 1
        return account

    def acquired(self, key: Key, account: _Account) -> float:
        """The waiter got the lock; returns when, for ``released``."""
        account.waiting -= 1
        account.holding += 1
        account.progress_at = self._clock()
        return account.progress_at

    def now(self) -> float:
        return self._clock()

    def passed(self, key: Key, account: _Account, since: float) -> None:
        """A waiter whose one statement, begun at ``since``, got and released the lock (the
        fast path, app/transactions/fast.py): the statement's time counts as its hold."""
        self.acquired(key, account)
        self.released(key, account, since)

    def gave_up(self, key: Key, account: _Account) -> None:
        account.waiting -= 1
        self._forget_if_idle(key, account)

    def released(self, key: Key, account: _Account, since: float) -> None:
        """Its transaction ended; ``since`` is what ``acquired`` returned."""
        account.holding -= 1
        account.progress_at = self._clock()
        self._hold += (account.progress_at - since - self._hold) / 10
        self._forget_if_idle(key, account)

    def _forget_if_idle(self, key: Key, account: _Account) -> None:
        if account.waiting == 0 and account.holding == 0:
            self._accounts.pop(key, None)

    def waiters(self, project_id: uuid.UUID, user_id: str) -> int:
        found = self._accounts.get((project_id, user_id))
        return 0 if found is None else found.waiting


def attach(session: AsyncSession, gate: AccountGate) -> None:
    """Bound the account-lock waits of this (request) session by ``gate``."""
    session.info[_SESSION_KEY] = gate


@contextmanager
def waiting(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> Iterator[None]:
    """Around the statement that locks the user's account. Sessions without a gate (workers)
    wait as long as ``lock_timeout`` lets them."""
    gate: AccountGate | None = session.info.get(_SESSION_KEY)
    if gate is None:
        yield
        return
    key = (project_id, user_id)
    account = gate.enter(key)
    try:
        yield
    except BaseException:
        gate.gave_up(key, account)
        raise
    since = gate.acquired(key, account)
    on_end(session, lambda: gate.released(key, account, since))
