"""The metering fast path: start, complete and one-shot usage in two statements, the lock in one.

The general path (``service.start``, ``service.complete`` under ``TransactionalRoute``) locks
the account in one round trip, decides in Python, and writes in a second one with COMMIT: the
lock is held across two network hops and a turn of the event loop, which caps one user's
requests at well under the database's pace and costs a BEGIN, a COMMIT and a statement per
request. Here, for the common case, each request is:

1. one read without locks (the account with the price and tier rules, or the transaction;
   and whether the ``Idempotency-Key`` has a row), with no transaction around it;
2. Python works out everything that does not depend on the balance: the price and charge,
   the ids, the response and event texts (the balance marked ``@B@``);
3. one call of ``creditd_fast_start``, ``_complete`` or ``_usage`` (migration 0015), which
   commits on its own: it locks, decides what depends on the locked rows (admission, the
   balance, the grants burned, the balance events), writes everything (the key's stored
   response included) and returns the response body it stored.

Anything else takes the general path, which answers exactly as it always has: a team, spend
caps, a concurrency limit, a user to auto-create, a key that has a row (a retry), a
transaction not pending or started before price snapshots, a price that fails, and any
refusal (a business error is answered and stored by the general path). The call returns NULL
having changed nothing when the rows it locks are no longer as read (the transaction no longer
pending with that hold, the user or account gone), and a key stored meanwhile fails it as a
unique violation: both go to the general path too, which then replays or refuses. The tier,
price, caps and team membership come from the read, as the general path's locking statement
reads them in a snapshot taken before its lock wait: here that window is one round trip longer.

The call commits on its own, so a request cancelled while it runs (a client that hung up) is
rolled back only while the call waits for a lock (``client_connection_check_interval``); once
it holds the locks it completes. That outcome, and a connection lost meanwhile, are settled
through the key's stored response, as a lost COMMIT is on the general path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.auth.dependencies import get_principal
from app.auth.service import Principal
from app.core.errors import AppError
from app.core.freeform import require_freeform
from app.core.http import JSONResponse, render_json
from app.core.ids import uuid7
from app.core.money import ZERO, fmt
from app.credits.gate import AccountGate
from app.db.exceptions import CommitOutcomeUnknown, DatabaseFault
from app.db.session import Database
from app.idempotency import repository as idem_repo
from app.pricing import service as pricing
from app.pricing.exceptions import CostTooLarge, ExpressionFailed
from app.pricing.schemas import TokenUsage
from app.routing import Claim, TransactionalRoute, claim_for, settle_lost_commit, store_once
from app.tiers.rules import Rules
from app.transactions import repository as repo
from app.transactions.schemas import (
    CheckIn,
    CheckOut,
    CompleteIn,
    CompleteOut,
    StartIn,
    StartOut,
    UsageIn,
    UsageOut,
)
from app.transactions.service import MESSAGES, admits, completion_hash, tokens_json

# Where the function puts the balance (a canonical decimal) and a hold's expiry (a UTC time)
# into the prepared texts: raw \x01 never occurs in rendered JSON otherwise (creditd_fill).
_BALANCE = orjson.Fragment(b"\x01B\x01")
_EXPIRES = orjson.Fragment(b"\x01E\x01")
_JSON = "application/json"
_HEADERS = orjson.dumps({"content-type": _JSON}).decode()
_START = "SELECT creditd_fast_start(" + ", ".join(f"${i}" for i in range(1, 24)) + ")"
_COMPLETE = "SELECT creditd_fast_complete(" + ", ".join(f"${i}" for i in range(1, 21)) + ")"
_USAGE = "SELECT creditd_fast_usage(" + ", ".join(f"${i}" for i in range(1, 21)) + ")"


async def _claim(request: Request, route: TransactionalRoute) -> tuple[Principal, Claim | None]:
    """The caller, authorised as the route does it, and its key's claim (None: no key)."""
    principal = await get_principal(request)
    scope = await route.idempotency_scope(request)
    key = request.headers.get("idempotency-key")
    return principal, None if key is None else await claim_for(request, scope, key)


def _key_args(claim: Claim | None) -> tuple[Any, ...]:
    if claim is None:
        return (None, None, None, None, None, None)
    return (claim.key, claim.method, claim.path, claim.request_hash, _HEADERS, claim.ttl)


def _with_balance(out: StartOut | CompleteOut | UsageOut) -> dict[str, Any]:
    data = out.model_dump(mode="python", by_alias=True)
    data["balance"] = _BALANCE
    return data


async def execute(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> str | None:
    """The fast call, on its connection: the one place it leaves (fault tests lose its reply
    here)."""
    body: str | None = await conn.fetchval(sql, *args)
    return body


@dataclass(frozen=True)
class _Call:
    """A prepared fast call: its statement and arguments, the status of its answer, and the
    account gate's key when it waits for a user's account lock."""

    sql: str
    args: tuple[Any, ...]
    status_code: int
    gate_key: tuple[uuid.UUID, str] | None = None


async def _serve(
    request: Request,
    claim: Claim | None,
    read: tuple[Any, ...],
    prepare: Callable[[Any], _Call | None],
) -> Response | None:
    """Read (``read``: the statement and its arguments), ``prepare`` the call from the row,
    and make it, on one pooled connection with no transaction around either statement. None:
    the general path (the row did not qualify, or the call found the rows moved).

    The call commits on its own, so a connection lost while it runs leaves its outcome
    unknown: with a key, the stored response says what happened (as for a lost COMMIT, and
    that response is the answer); without one, a 503 that says so."""
    db: Database = request.app.state.db
    gate: AccountGate = request.app.state.account_gate
    server_pid: int | None = None
    lost = False

    async def work(conn: asyncpg.Connection) -> Response | None:
        nonlocal server_pid, lost
        call = prepare(await conn.fetchrow(*read))
        if call is None:
            return None
        server_pid = conn.get_server_pid()
        # The call waits for the account's lock and releases it before it returns: it counts
        # as waiting until then, and its whole time as the hold (app/credits/gate.py).
        key = call.gate_key
        waiter = gate.enter(key) if key is not None else None
        began, ended = gate.now(), False
        try:
            try:
                body = await execute(conn, call.sql, call.args)
            except asyncpg.UniqueViolationError as exc:
                if not idem_repo.duplicate(exc):
                    raise
                body = None  # the key's row was written meanwhile: replayed by the general path
            ended = True
        except BaseException:
            lost = conn.is_closed()
            raise
        finally:
            if key is not None and waiter is not None:
                if ended:
                    gate.passed(key, waiter, began)
                else:
                    gate.gave_up(key, waiter)
        if body is None:
            return None
        return Response(body.encode(), status_code=call.status_code, media_type=_JSON)

    try:
        return await db.autocommit(work)
    except DatabaseFault:
        if not lost:
            raise
    if claim is None:
        unknown = CommitOutcomeUnknown(
            "The connection broke while the change was committing: it may or may not be "
            "applied. Send an Idempotency-Key to have a retry apply it exactly once."
        )
        unknown.server_pid = server_pid
        raise unknown
    return await settle_lost_commit(db, claim, None, server_pid)


async def start(request: Request, route: TransactionalRoute, body: StartIn) -> Response | None:
    """A start on the user's own account, or None: the general path."""
    principal, claim = await _claim(request, route)
    settings = principal.settings
    if body.team_id is not None or settings.team_usage_default != "user":
        return None
    key = None if claim is None else claim.key
    read = (repo.FAST_START_READ, principal.project_id, body.user_id, body.model, key)

    def prepare(row: Any) -> _Call | None:
        if row is None or row["key_found"] or row["has_spend_caps"] or row["in_teams"]:
            return None
        rules = Rules.from_row(row)
        if rules.max_concurrent is not None:
            return None
        try:
            found, multiplier = pricing.for_tier(
                pricing.optional_price(row), rules.price_multiplier, rules.override(body.model)
            )
            price = pricing.require(found, body.model)
            hold = pricing.cost(price, body.provisional_tokens, multiplier)
        except AppError:
            return None
        txn_id = uuid7()
        ttl = timedelta(seconds=body.hold_ttl_seconds or settings.default_hold_ttl_seconds)
        admitted = StartOut(
            transaction_id=txn_id, continue_=True, balance=ZERO, credits_used=hold,
            hold_amount=hold, status="pending", expires_at=None, message=MESSAGES[None],
            reason=None,
        )  # fmt: skip
        denied = StartOut(
            transaction_id=txn_id, continue_=False, balance=ZERO, credits_used=ZERO,
            hold_amount=ZERO, status="denied", expires_at=None,
            message=MESSAGES["insufficient_credits"], reason="insufficient_credits",
        )  # fmt: skip
        admitted_data, denied_data = _with_balance(admitted), _with_balance(denied)
        admitted_data["expires_at"] = _EXPIRES  # the lock's time plus the ttl
        args = (
            principal.project_id,
            body.user_id,
            txn_id,
            body.model,
            body.feature_identifier,
            hold,
            rules.floor,
            ttl,
            repo.json_text(tokens_json(body.provisional_tokens)),
            repo.json_text(body.metadata),
            repo.json_text(price.snapshot(multiplier)),
            _thresholds(settings.low_balance_thresholds),
            [uuid7(), uuid7(), uuid7()],
            render_json(admitted_data).decode(),
            render_json(denied_data).decode(),
            render_json({**admitted_data, "model": body.model}).decode(),
            render_json({**denied_data, "model": body.model}).decode(),
            *_key_args(claim),
        )
        return _Call(_START, args, 201, (principal.project_id, body.user_id))

    return await _serve(request, claim, read, prepare)


async def complete(
    request: Request, route: TransactionalRoute, transaction_id: str, body: CompleteIn
) -> Response | None:
    """A completion of a pending transaction on a user's own account, or None."""
    principal, claim = await _claim(request, route)
    try:
        txn_id = uuid.UUID(transaction_id)
    except ValueError:
        return None
    key = None if claim is None else claim.key
    read = (repo.FAST_COMPLETE_READ, principal.project_id, txn_id, key)

    def prepare(row: Any) -> _Call | None:
        if (
            row is None
            or row["key_found"]
            or row["status"] != "pending"
            or row["team_id"] is not None
            or row["price_snapshot"] is None
        ):
            return None
        release: Decimal = row["hold_amount"]
        metadata = {**row["metadata"], **body.metadata}
        tokens = body.finalized_tokens
        if tokens is None and row["provisional_tokens"] is not None:
            tokens = TokenUsage.model_validate(row["provisional_tokens"])
        if tokens is None:
            tokens = TokenUsage()
        charge = ZERO
        try:
            if body.metadata:
                what = "metadata, merged into the transaction's,"
                require_freeform(metadata, what=what, loc=("body", "metadata"))
            if body.success:
                price, multiplier = pricing.Price.from_snapshot(row["price_snapshot"])
                charge = pricing.cost(price, tokens, multiplier)
        except (AppError, ExpressionFailed, CostTooLarge):
            return None
        status = "completed" if body.success else "failed"
        out = CompleteOut(
            transaction_id=txn_id,
            status=status,
            credits_used=charge,
            balance=ZERO,
            balance_adjustment=release - charge,
            late=False,
        )
        data = _with_balance(out)
        event = {**data, "model": row["model"], "hold_amount": release}
        args = (
            principal.project_id,
            txn_id,
            status,
            "usage" if body.success else "hold_release",
            charge,
            release,
            repo.json_text(tokens_json(tokens if body.success else body.finalized_tokens)),
            repo.json_text(metadata),
            completion_hash(body),
            _thresholds(principal.settings.low_balance_thresholds),
            [uuid7(), uuid7(), uuid7()],
            render_json(data).decode(),
            render_json(event).decode(),
            body.success,
            *_key_args(claim),
        )
        return _Call(_COMPLETE, args, 200)

    return await _serve(request, claim, read, prepare)


async def usage(request: Request, route: TransactionalRoute, body: UsageIn) -> Response | None:
    """One-shot usage on the user's own account, or None: the general path."""
    principal, claim = await _claim(request, route)
    if body.team_id is not None or principal.settings.team_usage_default != "user":
        return None
    name = body.job if body.job is not None else body.model
    assert name is not None  # the schema asks for one of them
    is_job = body.job is not None
    key = None if claim is None else claim.key
    sql = repo.FAST_JOB_READ if is_job else repo.FAST_START_READ
    read = (sql, principal.project_id, body.user_id, name, key)

    def prepare(row: Any) -> _Call | None:
        if row is None or row["key_found"]:
            return None
        rules = Rules.from_row(row)
        found = pricing.optional_price(row)
        try:
            if is_job:
                if found is None:
                    return None
                price, multiplier = found, rules.price_multiplier
            else:
                tiered, multiplier = pricing.for_tier(
                    found, rules.price_multiplier, rules.override(name)
                )
                price = pricing.require(tiered, name)
            charge = pricing.cost(price, body.tokens, multiplier, quantity=body.quantity or 1)
        except AppError:
            return None
        txn_id = uuid7()
        out = UsageOut(transaction_id=txn_id, status="completed", credits_used=charge, balance=ZERO)
        data = _with_balance(out)
        # The keys of a completion's event: no hold, so all of the charge is the adjustment.
        event = {**data, "model": name, "hold_amount": ZERO, "balance_adjustment": ZERO - charge,
                 "late": False}  # fmt: skip
        args = (
            principal.project_id,
            body.user_id,
            txn_id,
            name,
            body.feature_identifier,
            charge,
            repo.json_text(tokens_json(body.tokens)),
            repo.json_text(body.metadata),
            repo.json_text(price.snapshot(multiplier)),
            is_job,
            _thresholds(principal.settings.low_balance_thresholds),
            [uuid7(), uuid7(), uuid7()],
            render_json(data).decode(),
            render_json(event).decode(),
            *_key_args(claim),
        )
        return _Call(_USAGE, args, 201, (principal.project_id, body.user_id))

    return await _serve(request, claim, read, prepare)


async def check(request: Request, route: TransactionalRoute, body: CheckIn) -> Response | None:
    """``POST /v1/check`` for an existing user without spend caps or a concurrency limit, on
    their own account: its read and (with a key) the statement storing its answer on one
    pooled connection, without the general path's session. None: the general path."""
    principal, claim = await _claim(request, route)
    if body.team_id is not None or principal.settings.team_usage_default != "user":
        return None
    model = body.model or ""
    key = None if claim is None else claim.key
    read = (repo.FAST_START_READ, principal.project_id, body.user_id, model, key)

    async def work(conn: asyncpg.Connection) -> Response | None:
        row = await conn.fetchrow(*read)
        if row is None or row["key_found"] or row["has_spend_caps"]:
            return None
        rules = Rules.from_row(row)
        if rules.max_concurrent is not None:
            return None
        available: Decimal = row["total"] - row["held"]
        try:
            if body.amount is not None:
                required = body.amount
            elif body.model is not None:
                price, multiplier = pricing.for_tier(
                    pricing.optional_price(row), rules.price_multiplier, rules.override(model)
                )
                price = pricing.require(price, model)
                required = pricing.cost(price, body.provisional_tokens, multiplier)
            else:
                required = ZERO
        except AppError:
            return None
        allowed = admits(available, required, rules.floor)
        out = CheckOut(
            allowed=allowed,
            reason=None if allowed else "insufficient_credits",
            available=available,
            required=required,
        )
        response = JSONResponse(out, status_code=200)
        if claim is None:
            return response
        return await store_once(conn, claim, response)

    db: Database = request.app.state.db
    return await db.autocommit(work)


def _thresholds(thresholds: Any) -> list[str]:
    """The project's low-balance thresholds as canonical decimal texts."""
    return [fmt(Decimal(t)) for t in thresholds or ()]
