"""The outbound webhook dispatcher: fans events out to endpoints and delivers them, at least once.

Three loops share one process (``Dispatcher.run``):

- **fan-out** turns committed events into one pending delivery per subscribed enabled endpoint,
  in (fanout_xid, id) order below the oldest running transaction, so an event committed late
  is never skipped (``fan_out_once``; one transaction per batch; one dispatcher at a time).
- **claim** leases due deliveries (``FOR UPDATE SKIP LOCKED``; the lease token and the attempt
  count are set and committed *before* the request is sent) and starts one task per attempt:
  at most ``max_in_flight`` at once and ``max_in_flight_per_endpoint`` per endpoint. Both
  limits are per dispatcher process: N dispatchers may send N times as much to one endpoint.
  A slot that frees up is refilled at once, from any endpoint with room, so a slow endpoint
  never holds the others up.
- **record** writes what each attempt came to, in batches (one transaction for whatever has
  finished meanwhile): always an attempt row, and a change of the delivery only while the
  lease token still matches (a dispatcher that outlived its lease changes nothing).

Housekeeping (in the fan-out loop): the pending deliveries of disabled endpoints are canceled
in bounded batches (``cancel_disabled``); disabling an endpoint only flips it, and the claim
never takes a delivery of a disabled endpoint.

An endpoint is disabled (reason ``failing``) after a *continuous* run of failures longer than
``disable_after_seconds``: the run starts at a failure and ends at a success, or when a failure
comes more than ``QUIET_FACTOR`` times the schedule's longest wait after the endpoint's previous
attempt (then that failure starts a new run).

Every database fault ends in a retry with back-off, never in a lost delivery: a claim that
fails leases nothing (or leases rows that come due again when the lease runs out), a result
that cannot be written is retried (a batch that keeps failing is written one result at a time,
and a result that still fails is written without its excerpt and error text), and a process
that dies leaves its leases to run out.
Delivery order is not guaranteed; receivers order one user's events by ``sequence``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog

from app.core.clock import utcnow
from app.core.ids import uuid7
from app.core.secrets import SecretBox, SecretUnreadable
from app.core.settings import WebhookSettings
from app.db.exceptions import DatabaseFault
from app.db.session import Database
from app.events import service as events
from app.webhooks import dispatch_repository as repo
from app.webhooks import metrics, payload, signing
from app.webhooks.sender import Outcome, Sender

log = structlog.get_logger("creditd.webhooks")

DISABLED_EVENT = "webhook_endpoint.disabled"
SHUTDOWN_GRACE_SECONDS = 2.0  # on stop, attempts in flight get this long to finish
_SECRET_CACHE_SIZE = 4096
# Rows chosen but locked: another dispatcher is committing its claim of them. Look again in a
# moment, a few times, then wait as usual (a row someone keeps locked must not make us spin).
_CONTENDED_PAUSE = 0.005
_CONTENDED_ROUNDS = 5
# Pending deliveries of disabled endpoints are canceled this many per transaction.
CANCEL_BATCH = 1000
SWEEP_SECONDS = 10.0
# A batch of results that fails this many times in a row is recorded one result at a time; one
# result that fails this many times (or once, not transiently) is recorded without its text.
_RECORD_TRIES = 3
# A failure this long (times the schedule's longest wait) after the endpoint's previous attempt
# starts a new failure run instead of continuing the old one.
QUIET_FACTOR = 1.5


@dataclass(frozen=True)
class Attempted:
    """One attempt of a claimed delivery and what came of it (not yet recorded)."""

    claimed: repo.Claimed
    outcome: Outcome
    started_at: datetime
    attempt_id: uuid.UUID = field(default_factory=uuid7)


def retry_delay(
    settings: WebhookSettings, attempt: int, retry_after: float | None, rng: random.Random
) -> float | None:
    """Seconds from failed attempt number ``attempt`` to the next one; None when it was the
    last. The schedule's wait, +/- ``retry_jitter``, or the receiver's Retry-After if later
    (capped at the schedule's longest wait, so no answer can park a delivery for months)."""
    schedule = settings.retry_schedule_seconds
    if attempt > len(schedule):
        return None
    wait = schedule[attempt - 1]
    if settings.retry_jitter:
        wait *= 1 + rng.uniform(-settings.retry_jitter, settings.retry_jitter)
    if retry_after is not None:
        wait = max(wait, min(retry_after, max(schedule)))
    return max(wait, 0.0)


# The sender's words for an attempt without an answer, as the ``reason`` label (a fixed set).
_NO_ANSWER = {
    "dns_error": "dns",
    "tls_error": "tls",
    "protocol_error": "protocol",
    "read_error": "read",
    "write_error": "write",
    "transport_error": "transport",
    "secret_unreadable": "signing",  # never sent: the dispatcher could not sign it
    "signing_failed": "signing",
}


def failure_reason(outcome: Outcome) -> str:
    """The ``reason`` label of a failed attempt: ``refused``, ``http_<status>``, ``timeout``,
    ``dns``, ``tls``, ``protocol``, ``read``, ``write``, ``transport``, ``signing`` or
    ``connect`` (anything else)."""
    if outcome.refused:
        return "refused"
    if outcome.status_code is not None:
        return f"http_{outcome.status_code}"
    error = (outcome.error or "").lower()
    if error in _NO_ANSWER:
        return _NO_ANSWER[error]
    if "timeout" in error:
        return "timeout"
    return "connect"


def db_text(text: str | None) -> str | None:
    """Text PostgreSQL can store: NUL (never allowed in a text column) becomes U+FFFD, and
    anything UTF-8 cannot encode (a lone surrogate) becomes "?"."""
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _host(url: str) -> str:
    """The URL's host, for logs: never its path or query (they may carry tokens)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


@dataclass
class _Plan:
    """What a batch of results changes, decided under the delivery row locks."""

    attempts: list[repo.AttemptRow] = field(default_factory=list)
    updates: list[repo.DeliveryUpdate] = field(default_factory=list)
    succeeded: list[repo.EndpointKey] = field(default_factory=list)
    failed: list[repo.EndpointKey] = field(default_factory=list)
    restarted: list[repo.EndpointKey] = field(default_factory=list)
    # endpoint -> (reason, failing since, the status code that ended it, its URL)
    disable: dict[repo.EndpointKey, tuple[str, datetime | None, int | None, str]] = field(
        default_factory=dict
    )
    outcomes: Counter[str] = field(default_factory=Counter)
    stale: int = 0


class Dispatcher:
    """Fans events out to endpoints and delivers them; ``run()`` until cancelled.

    ``fan_out_once`` and ``dispatch_once`` are the same work as single steps (tests, tools).
    The sender is shared by the process (closed by whoever made it); without one, the
    dispatcher makes its own and closes it when ``run()`` ends or on ``aclose()``.
    """

    def __init__(
        self,
        db: Database,
        settings: WebhookSettings,
        box: SecretBox,
        sender: Sender | None = None,
        *,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self._db = db
        self._settings = settings
        self._box = box
        self._own_sender = sender is None
        self._sender = sender if sender is not None else Sender(settings)
        self._max_backoff = max_backoff_seconds
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        self._secrets: dict[tuple[uuid.UUID, str], str] = {}
        # The request itself is bounded by the sender; this is a backstop that keeps every
        # attempt inside its lease, whatever the transport does.
        self._deadline = settings.timeout_seconds + min(
            1.0, (settings.lease_seconds - settings.timeout_seconds) / 2
        )
        self._busy: Counter[uuid.UUID] = Counter()  # endpoint id -> attempts in flight here
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: asyncio.Queue[tuple[Attempted, asyncio.Future[None]]] = asyncio.Queue()
        self._kick = asyncio.Event()  # a slot freed up or new deliveries exist: claim now
        self._kick_sweep = asyncio.Event()  # an endpoint was disabled here: cancel its backlog

    # -- fan-out ------------------------------------------------------------------------------

    async def fan_out_once(self) -> int:
        """Fan one batch of events out to deliveries, in one transaction; returns how many
        events it covered (0: none new, or another dispatcher is fanning out right now)."""
        limit = self._settings.batch_size
        created = 0
        async with self._db.transaction() as session:
            start = await repo.lock_cursor(session)
            if start is None:
                return 0
            if not start.any_enabled:
                # Nobody to deliver to: skip to the horizon without reading a single event.
                if start.fanout_xid < start.horizon:
                    await repo.move_cursor(session, start.horizon, None)
                return 0
            rows = await repo.fanout_batch(session, start, limit=limit)
            if not rows:
                return 0
            created = await repo.insert_deliveries(
                session,
                [
                    (uuid7(), r.project_id, r.endpoint_id, r.event_id)
                    for r in rows
                    if r.endpoint_id is not None
                ],
            )
            last = rows[-1]
            await repo.move_cursor(session, last.fanout_xid, last.event_id)
            covered = len({r.event_id for r in rows})
        if created:
            log.debug("webhook_fanout", events=covered, deliveries=created)
            self._kick.set()
        return covered

    async def fan_out(self) -> int:
        """Fan out batches until one is not full; returns how many events were covered."""
        total = 0
        while True:
            count = await self.fan_out_once()
            total += count
            if count < self._settings.batch_size:
                return total

    # -- housekeeping -----------------------------------------------------------------------------

    async def cancel_disabled_once(self) -> int:
        """Cancel one bounded batch (``CANCEL_BATCH``) of the pending deliveries of disabled
        endpoints, in its own transaction; returns how many."""
        async with self._db.transaction() as session:
            canceled = await repo.cancel_disabled(session, limit=CANCEL_BATCH)
        if canceled:
            log.info("webhook_deliveries_canceled", count=canceled)
        return canceled

    async def cancel_disabled(self) -> int:
        """Cancel the pending deliveries of disabled endpoints, batch by batch; returns how
        many. Until then the claim skips them and they count as canceled (``delivery_status``)."""
        total = 0
        while True:
            count = await self.cancel_disabled_once()
            total += count
            if count < CANCEL_BATCH:
                return total

    # -- claim and attempt --------------------------------------------------------------------

    async def _claim(self, free: int, *, shuffle: bool = False) -> tuple[list[repo.Claimed], int]:
        cap = self._settings.max_in_flight_per_endpoint
        full = [e for e, n in self._busy.items() if n >= cap]
        busy = {e: n for e, n in self._busy.items() if 0 < n < cap}
        async with self._db.transaction() as session:
            return await repo.claim(
                session,
                busy=busy,
                full=full,
                per_endpoint=cap,
                limit=free,
                scan=max(self._settings.batch_size, free),
                lease_seconds=self._settings.lease_seconds,
                shuffle=shuffle,
            )

    def _secret(self, endpoint_id: uuid.UUID, ciphertext: str) -> str:
        key = (endpoint_id, ciphertext)
        secret = self._secrets.get(key)
        if secret is None:
            if len(self._secrets) >= _SECRET_CACHE_SIZE:
                self._secrets.clear()
            secret = self._secrets[key] = self._box.decrypt(ciphertext)
        return secret

    async def attempt(self, claimed: repo.Claimed) -> Attempted:
        """Send one claimed delivery (outside any transaction); never raises but to cancel."""
        c = claimed
        started_at = utcnow()
        began = time.perf_counter()
        body = payload.render(
            event_id=c.event_id,
            type=c.event_type,
            created_at=c.created_at,
            user_id=c.user_id,
            sequence=c.sequence,
            data_json=c.data_json,
        )
        try:
            keys = [self._secret(c.endpoint_id, c.secret_ciphertext)]
            if c.previous_secret_ciphertext is not None:
                keys.append(self._secret(c.endpoint_id, c.previous_secret_ciphertext))
            headers = signing.headers(keys, str(c.event_id), int(started_at.timestamp()), body)
        except Exception as exc:  # recorded as a failed attempt, retried like any other
            unreadable = isinstance(exc, SecretUnreadable)
            log.error(
                "webhook_signing_failed", project_id=str(c.project_id),
                endpoint_id=str(c.endpoint_id), error=type(exc).__name__,
                exc_info=None if unreadable else exc,
            )  # fmt: skip
            error = "secret_unreadable" if unreadable else "signing_failed"
            outcome = Outcome(False, None, 0, None, error)
        else:
            try:
                async with asyncio.timeout(self._deadline):
                    outcome = await self._sender.send(c.url, headers, body)
            except TimeoutError:
                outcome = Outcome(False, None, _ms(began), None, "timeout")
            except Exception as exc:  # a transport bug must not take the loop down
                log.exception("webhook_send_crashed", endpoint_id=str(c.endpoint_id))
                outcome = Outcome(False, None, _ms(began), None, type(exc).__name__)
        metrics.LATENCY.observe(outcome.latency_ms / 1000)
        if not outcome.ok:
            metrics.FAILURES.labels(failure_reason(outcome)).inc()
        return Attempted(c, outcome, started_at)

    async def dispatch_once(self) -> int:
        """Claim what is due (within the limits), send it all, record the results; returns
        how many attempts were made."""
        claimed, _ = await self._claim(self._settings.max_in_flight)
        done = await asyncio.gather(*(self.attempt(c) for c in claimed))
        if done:
            await self.record(done)
        return len(done)

    # -- results --------------------------------------------------------------------------------

    def _plan(
        self,
        done: Sequence[Attempted],
        states: dict[tuple[uuid.UUID, uuid.UUID], repo.DeliveryState],
        now: datetime,
    ) -> _Plan:
        settings = self._settings
        plan = _Plan()
        ok_seen: set[repo.EndpointKey] = set()
        last_failed: dict[repo.EndpointKey, bool] = {}
        quiet = max(settings.retry_schedule_seconds) * QUIET_FACTOR
        restarted: set[repo.EndpointKey] = set()
        for a in done:
            c, o = a.claimed, a.outcome
            state = states.get((c.project_id, c.delivery_id))
            if state is None:  # deleted meanwhile (its endpoint or event went): nothing to log
                plan.stale += 1
                continue
            live = state.status == "pending" and state.lease_token == c.lease_token
            next_at: datetime | None = None
            if live:
                key = (c.project_id, c.endpoint_id)
                if o.ok:
                    status, label = "succeeded", "succeeded"
                    ok_seen.add(key)
                    last_failed[key] = False
                elif not state.enabled:
                    # Disabled while this attempt was in flight: canceled like its other
                    # pending deliveries, and no longer counted against the endpoint.
                    status, label = "canceled", "canceled"
                elif o.gone:
                    status, label = "failed", "gone"
                    plan.disable[key] = ("gone", state.failing_since, o.status_code, c.url)
                else:
                    last_failed[key] = True
                    since = None if key in ok_seen else state.failing_since
                    last = state.last_attempt_at
                    if key in restarted or (
                        since is not None and (last is None or (now - last).total_seconds() > quiet)
                    ):
                        # Quiet for longer than any retry waits (or its attempts are gone):
                        # the old run ended (its deliveries were given up on); this failure
                        # starts a new one.
                        restarted.add(key)
                        since = None
                    delay = retry_delay(settings, c.attempt, o.retry_after, self._rng)
                    if since is not None and (now - since).total_seconds() > (
                        settings.disable_after_seconds
                    ):
                        status, label = "failed", "failed"
                        plan.disable.setdefault(key, ("failing", since, o.status_code, c.url))
                    elif delay is None:
                        status, label = "failed", "failed"
                    else:
                        status, label = "pending", "retry"
                        next_at = now + timedelta(seconds=delay)
                    if o.refused:
                        label = "refused"
                plan.outcomes[label] += 1
                plan.updates.append(
                    repo.DeliveryUpdate(
                        c.project_id, c.delivery_id, status, next_at, a.started_at, o.status_code
                    )
                )
                if not o.ok:
                    retry_in = None if next_at is None else (next_at - now).total_seconds()
                    log.info(
                        "webhook_attempt_failed", project_id=str(c.project_id),
                        endpoint_id=str(c.endpoint_id), event_id=str(c.event_id),
                        attempt=c.attempt, status_code=o.status_code, error=o.error,
                        host=_host(c.url), outcome=label, retry_in=retry_in,
                    )  # fmt: skip
            else:
                plan.stale += 1
            plan.attempts.append(
                repo.AttemptRow(
                    id=a.attempt_id,
                    project_id=c.project_id,
                    delivery_id=c.delivery_id,
                    endpoint_id=c.endpoint_id,
                    event_id=c.event_id,
                    attempt=c.attempt,
                    status_code=o.status_code,
                    latency_ms=o.latency_ms,
                    response_excerpt=db_text(o.excerpt),
                    error=db_text(o.error),
                    succeeded=o.ok,
                    next_attempt_at=next_at,
                    created_at=a.started_at,
                )
            )
        plan.succeeded = sorted(ok_seen)
        plan.failed = sorted(k for k, failed in last_failed.items() if failed)
        plan.restarted = sorted(k for k in restarted if last_failed.get(k))
        return plan

    async def record(self, done: Sequence[Attempted]) -> None:
        """Record a batch of attempts in one transaction (see the module docstring)."""
        disabled: list[tuple[repo.EndpointKey, str]] = []
        async with self._db.transaction() as session:
            keys = [(a.claimed.project_id, a.claimed.delivery_id) for a in done]
            states, now = await repo.lock_deliveries(session, keys)
            plan = self._plan(done, states, now or utcnow())
            await repo.insert_attempts(session, plan.attempts)
            await repo.update_deliveries(session, plan.updates)
            await repo.mark_endpoints(
                session, succeeded=plan.succeeded, failed=plan.failed, restarted=plan.restarted
            )
            # Only the endpoints: their pending deliveries are canceled by ``cancel_disabled``,
            # in bounded batches (a backlog of millions would not fit in one statement here).
            for key, (reason, since, status_code, url) in sorted(plan.disable.items()):
                if await repo.disable_endpoint(session, key, reason=reason):
                    # The tenant's own event (user_id NULL): its URL may appear here, never in
                    # logs.
                    data: dict[str, Any] = {
                        "endpoint_id": str(key[1]),
                        "url": url,
                        "reason": reason,
                        "failing_since": since,
                        "last_status_code": status_code,
                    }
                    await events.record(session, project_id=key[0], type=DISABLED_EVENT, data=data)
                    disabled.append((key, reason))
        # Counted once committed: a batch retried after a fault is not counted twice.
        for label, count in plan.outcomes.items():
            metrics.DELIVERIES.labels(label).inc(count)
        for key, reason in disabled:
            metrics.ENDPOINTS_DISABLED.labels(reason).inc()
            log.warning(
                "webhook_endpoint_disabled", project_id=str(key[0]), endpoint_id=str(key[1]),
                reason=reason,
            )  # fmt: skip
        if disabled:
            self._kick_sweep.set()
        if plan.stale:
            log.info("webhook_attempts_stale", count=plan.stale)

    # -- the loops ------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        poll = self._settings.poll_interval_seconds
        return float(min(poll * 2.0 ** (failures - 1), max(self._max_backoff, poll)))

    async def _after_failure(self, loop: str, exc: Exception, failures: int) -> None:
        if isinstance(exc, DatabaseFault):
            log.warning("webhook_database_fault", loop=loop, code=exc.slug, failures=failures)
        else:
            log.error("webhook_loop_failed", loop=loop, failures=failures, exc_info=exc)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # The driver turned our cancellation into its own error (asyncpg does, mid-query).
            raise asyncio.CancelledError
        await asyncio.sleep(self._backoff(failures))

    async def _fan_out_loop(self) -> None:
        # Housekeeping shares this loop: the pending deliveries of disabled endpoints (here,
        # by the API, or by another dispatcher) are canceled a batch at a time, at once after
        # a disable here, else every SWEEP_SECONDS; a full batch is followed by the next.
        failures = 0
        swept_at = -SWEEP_SECONDS
        while True:
            try:
                count = await self.fan_out_once()
                canceled = 0
                if self._kick_sweep.is_set() or time.monotonic() - swept_at >= SWEEP_SECONDS:
                    self._kick_sweep.clear()
                    canceled = await self.cancel_disabled_once()
                    swept_at = time.monotonic() if canceled < CANCEL_BATCH else -SWEEP_SECONDS
            except Exception as exc:
                failures += 1
                await self._after_failure("fanout", exc, failures)
                continue
            if failures:
                log.info("webhook_loop_recovered", loop="fanout", failures=failures)
                failures = 0
            if count < self._settings.batch_size and canceled < CANCEL_BATCH:
                await asyncio.sleep(self._settings.poll_interval_seconds)

    def _start(self, claimed: repo.Claimed) -> None:
        self._busy[claimed.endpoint_id] += 1
        task = asyncio.create_task(self._attempt_and_record(claimed))
        self._tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._busy[claimed.endpoint_id] -= 1
            if self._busy[claimed.endpoint_id] <= 0:
                del self._busy[claimed.endpoint_id]
            self._kick.set()

        task.add_done_callback(finished)

    async def _attempt_and_record(self, claimed: repo.Claimed) -> None:
        # The slot stays taken until the result is written: unwritten results are bounded by
        # max_in_flight, and a database outage stops new claims instead of piling them up.
        done = await self.attempt(claimed)
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._results.put_nowait((done, written))
        await written

    async def _claim_loop(self) -> None:
        failures = contended = 0
        limit = self._settings.max_in_flight
        shuffle = False
        while True:
            self._kick.clear()
            free = limit - len(self._tasks)
            again = False
            if free > 0:
                try:
                    claimed, chosen = await self._claim(free, shuffle=shuffle)
                except Exception as exc:
                    failures += 1
                    await self._after_failure("claim", exc, failures)
                    continue
                if failures:
                    log.info("webhook_loop_recovered", loop="claim", failures=failures)
                    failures = 0
                for c in claimed:
                    self._start(c)
                shuffle = chosen > len(claimed)  # met another dispatcher's claim
                contended = contended + 1 if shuffle and not claimed else 0
                if 0 < contended <= _CONTENDED_ROUNDS:
                    await asyncio.sleep(_CONTENDED_PAUSE)
                    continue
                # Room left after a claim: endpoints that just filled up were in the way.
                again = bool(claimed) and len(claimed) < free
            if again:
                continue
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation
            # that arrives just as the kick does, and the loop would outlive its stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval_seconds):
                    await self._kick.wait()

    async def _record_loop(self) -> None:
        limit = max(self._settings.batch_size, self._settings.max_in_flight)
        while True:
            batch = [await self._results.get()]
            while len(batch) < limit and not self._results.empty():
                batch.append(self._results.get_nowait())
            done = [a for a, _ in batch]
            failures = 0
            while True:
                try:
                    await self.record(done)
                except DatabaseFault as exc:
                    failures += 1
                    await self._after_failure("record", exc, failures)
                    if failures < _RECORD_TRIES:
                        continue
                    # The same batch keeps failing: whatever it is, it must not stall every
                    # result behind it. One by one, the others get through.
                    await self._record_each(done)
                except Exception as exc:
                    # Not transient (a bug, a row that broke a constraint): one by one.
                    log.error("webhook_record_failed", count=len(done), exc_info=exc)
                    await self._record_each(done)
                if failures:
                    log.info("webhook_loop_recovered", loop="record", failures=failures)
                break
            for _, written in batch:
                if not written.done():
                    written.set_result(None)

    async def _record_each(self, done: Sequence[Attempted]) -> None:
        """Record results one by one. A result that fails ``_RECORD_TRIES`` times (a database
        fault) or once otherwise is recorded without its excerpt and error text (the likely
        culprits); only if even that fails is it dropped (and sent again when its lease runs
        out)."""
        for one in done:
            failures = 0
            while True:
                try:
                    await self.record([one])
                    break
                except DatabaseFault as exc:
                    failures += 1
                    await self._after_failure("record", exc, failures)
                    if failures < _RECORD_TRIES:
                        continue
                except Exception as exc:
                    log.error(
                        "webhook_record_failed", count=1, delivery_id=str(one.claimed.delivery_id),
                        exc_info=exc,
                    )  # fmt: skip
                await self._record_bare(one)
                break

    async def _record_bare(self, one: Attempted) -> None:
        o = one.outcome
        bare = dataclasses.replace(
            one,
            outcome=dataclasses.replace(
                o, excerpt=None, error=None if o.error is None else "unrecordable"
            ),
        )
        for failures in range(1, _RECORD_TRIES + 1):
            try:
                await self.record([bare])
            except DatabaseFault as exc:
                if failures < _RECORD_TRIES:
                    await self._after_failure("record", exc, failures)
                    continue
            except Exception:  # noqa: S110 - logged below
                pass
            else:
                log.warning(
                    "webhook_result_recorded_bare", delivery_id=str(one.claimed.delivery_id),
                    attempt=one.claimed.attempt,
                )  # fmt: skip
                return
            break
        log.error(
            "webhook_result_dropped", delivery_id=str(one.claimed.delivery_id),
            attempt=one.claimed.attempt,
        )  # fmt: skip

    async def run(self) -> None:
        """Fan out, claim, send and record until cancelled; survives database outages."""
        claiming = asyncio.create_task(self._claim_loop())
        fanning = asyncio.create_task(self._fan_out_loop())
        recording = asyncio.create_task(self._record_loop())
        loops = {claiming, fanning, recording}
        try:
            await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop in loops:  # a loop never ends on its own: say why it did
                if loop.done() and not loop.cancelled() and loop.exception() is not None:
                    raise RuntimeError("a webhook dispatcher loop ended") from loop.exception()
        finally:
            await self._stop(claiming, fanning, recording)

    async def _stop(self, *loops: asyncio.Task[None]) -> None:
        claiming, fanning, recording = loops
        try:
            # No new claims; attempts in flight get a moment to finish and be recorded, the
            # rest are cut off (their leases run out and another dispatcher sends them again).
            await cancel_and_wait([claiming, fanning])
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_SECONDS)
            await cancel_and_wait([*self._tasks, recording])
            if self._own_sender:
                await self._sender.aclose()
        finally:  # stopped again meanwhile: leave nothing running, at least
            for t in (*loops, *self._tasks):
                t.cancel()

    async def aclose(self) -> None:
        """Close the sender if this dispatcher made it (``run()`` does this on its way out)."""
        if self._own_sender:
            await self._sender.aclose()


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], *, every: float = 1.0) -> None:
    """Cancel the tasks and wait until all have ended, cancelling again every ``every`` seconds:
    a library may swallow one cancellation (``asyncio.wait_for`` on Python 3.11 does, when its
    awaitable completes at that moment), and a stop must not wait on it forever."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for t in tasks:  # retrieve outcomes, so none is reported as never retrieved
        if not t.cancelled():
            t.exception()


def _ms(began: float) -> int:
    return round((time.perf_counter() - began) * 1000)
