"""The floor service (bench/floor.py): the simplest Python HTTP service doing a start's and a
complete's database work, run as `python -m bench.floor_app --port P --workers N DSN`.

uvicorn with creditd's options (app/server.py: httptools and uvloop, one SO_REUSEPORT socket
per worker process) serves a raw ASGI callable with an asyncpg pool per worker. Each variant is
a path prefix in front of creditd's paths (`/rt3/v1/transactions/start`,
`/rt3/v1/transactions/{id}/complete`), so that bench/loadgen.py drives it unchanged:

- `/rt3`: 3 round trips per request, as creditd today (bench/floor_sql.py);
- `/rt1`: 1 round trip, a PL/pgSQL function;
- `/fastapi-rt3`, `/fastapi-rt1`: the same behind FastAPI routes with pydantic models for the
  bodies and the responses, to see what the framework costs.

There is no authentication (the bearer token is ignored) and no price lookup: a model costs
what creditd's bench prices `_default` at (1 and 2 credits per 1k input and output tokens).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import FrameType
from typing import Annotated, Any, Protocol

import asyncpg
import orjson
import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from app.db import literals as lit
from app.server import UVICORN_OPTIONS, Server, _listen
from bench import floor_sql as sql

HOLD_TTL = timedelta(minutes=15)
INPUT_PER_1K, OUTPUT_PER_1K = Decimal(1), Decimal(2)
THOUSAND = Decimal(1000)
# creditd's pool (app/core/settings.py) and session settings (app/db/engine.py).
POOL_MIN, POOL_MAX = 4, 20
SERVER_SETTINGS = {
    "application_name": "creditd-floor",
    "statement_timeout": "15000",
    "lock_timeout": "5000",
    "idle_in_transaction_session_timeout": "60000",
    "timezone": "UTC",
    "standard_conforming_strings": "on",
}
ERRORS = {
    402: b'{"type":"insufficient_credits"}',
    404: b'{"type":"not_found"}',
    409: b'{"type":"conflict"}',
    422: b'{"type":"invalid_request"}',
}


@dataclass(frozen=True)
class Start:
    user_id: str
    model: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Complete:
    success: bool
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Outcome:
    """A request's answer: a status code and, for a success, the response's fields."""

    status: int
    body: dict[str, Any] | None = None


def cost(input_tokens: int, output_tokens: int) -> Decimal:
    """The price of some tokens."""
    return (input_tokens * INPUT_PER_1K + output_tokens * OUTPUT_PER_1K) / THOUSAND


def started(txn_id: uuid.UUID, available: Decimal, hold: Decimal, expires: datetime) -> Outcome:
    """A start's success (creditd's StartOut fields)."""
    body = {
        "transaction_id": txn_id,
        "continue": True,
        "balance": available,
        "credits_used": Decimal(0),
        "hold_amount": hold,
        "status": "pending",
        "expires_at": expires,
        "message": "ok",
        "reason": None,
    }
    return Outcome(201, body)


def completed(txn_id: uuid.UUID, success: bool, charged: Decimal, available: Decimal) -> Outcome:
    """A complete's success (creditd's CompleteOut fields)."""
    body = {
        "transaction_id": txn_id,
        "status": "completed" if success else "failed",
        "credits_used": charged,
        "balance": available,
        "balance_adjustment": Decimal(0),
        "late": False,
    }
    return Outcome(200, body)


def _number(value: object) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # an exact JSON number, as creditd writes it
    raise TypeError(f"cannot serialize {type(value).__name__}")


def render(outcome: Outcome) -> bytes:
    """The JSON body of an outcome."""
    if outcome.body is None:
        return ERRORS[outcome.status]
    return orjson.dumps(outcome.body, default=_number)


class Backend(Protocol):
    """The database work of one variant."""

    async def start(self, key: str | None, req: Start) -> Outcome: ...

    async def complete(self, key: str | None, txn_id: uuid.UUID, req: Complete) -> Outcome: ...


class ThreeTrips:
    """rt3: `BEGIN; claim`, the lock/read, then `writes; store; COMMIT`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def start(self, key: str | None, req: Start) -> Outcome:
        txn_id, hold = uuid.uuid4(), cost(req.input_tokens, req.output_tokens)
        async with self.pool.acquire() as conn:
            if not await _begin(conn, key):
                return Outcome(409)
            row = await conn.fetchrow(sql.LOCK_ACCOUNT, req.user_id)
            if row is None or row["balance"] - row["held"] < hold:
                return await _finish(conn, key, Outcome(404 if row is None else 402))
            expires = datetime.now(UTC) + HOLD_TTL
            write = _execute("floor_hold", txn_id, req.user_id, req.model, hold, expires)
            outcome = started(txn_id, row["balance"] - row["held"] - hold, hold, expires)
            return await _finish(conn, key, outcome, write)

    async def complete(self, key: str | None, txn_id: uuid.UUID, req: Complete) -> Outcome:
        used = cost(req.input_tokens, req.output_tokens) if req.success else Decimal(0)
        async with self.pool.acquire() as conn:
            if not await _begin(conn, key):
                return Outcome(409)
            row = await conn.fetchrow(sql.LOCK_HOLD, txn_id)
            if row is None or row["status"] != "pending":
                return await _finish(conn, key, Outcome(404 if row is None else 409))
            status = "completed" if req.success else "failed"
            account, hold = row["account_id"], row["amount"]
            write = _execute("floor_charge", txn_id, account, used, hold, status)
            available = row["balance"] - used - (row["held"] - hold)
            return await _finish(conn, key, completed(txn_id, req.success, used, available), write)


async def _begin(conn: asyncpg.Connection, key: str | None) -> bool:
    """Round trip 1: BEGIN, with the key's claim; False (rolled back) when the key is taken."""
    if key is None:
        await conn.execute("BEGIN")
        return True
    if await conn.execute(f"BEGIN; {_execute('floor_claim', key)}") == sql.CLAIMED:
        return True
    await conn.execute("ROLLBACK")
    return False


async def _finish(
    conn: asyncpg.Connection, key: str | None, outcome: Outcome, write: str | None = None
) -> Outcome:
    """The last round trip: the writes, the stored response and COMMIT in one simple query."""
    statements = [] if write is None else [write]
    if key is not None:
        statements.append(_execute("floor_store", key, outcome.status, render(outcome).decode()))
    await conn.execute("; ".join([*statements, "COMMIT"]))
    return outcome


def _execute(name: str, *args: object) -> str:
    """`EXECUTE name(literals)`, for a statement prepared on every connection."""
    return f"EXECUTE {name}({', '.join(lit.value(arg) for arg in args)})"


class OneTrip:
    """rt1: one call of a PL/pgSQL function, in autocommit."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def start(self, key: str | None, req: Start) -> Outcome:
        txn_id, hold = uuid.uuid4(), cost(req.input_tokens, req.output_tokens)
        args = (key, txn_id, req.user_id, req.model, hold, HOLD_TTL)
        code, available, expires = await self.pool.fetchrow(sql.CALL_START, *args)
        return started(txn_id, available, hold, expires) if code == 201 else Outcome(code)

    async def complete(self, key: str | None, txn_id: uuid.UUID, req: Complete) -> Outcome:
        used = cost(req.input_tokens, req.output_tokens)
        args = (key, txn_id, used, req.success)
        code, available, charged = await self.pool.fetchrow(sql.CALL_COMPLETE, *args)
        return completed(txn_id, req.success, charged, available) if code == 200 else Outcome(code)


async def _rollback_if_open(conn: asyncpg.Connection) -> None:
    """The pool's reset: only a ROLLBACK when a failed request left a transaction open.
    (asyncpg's default resets every session state on every release, a round trip each time;
    creditd's SQLAlchemy pool, in autocommit, sends nothing.)"""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def open_pool(dsn: str) -> asyncpg.Pool:
    """A worker's pool, sized and set up as creditd's."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=POOL_MIN,
        max_size=POOL_MAX,
        max_queries=2**62,  # no reconnect every 50,000 queries (asyncpg's default)
        init=sql.prepare,
        reset=_rollback_if_open,
        server_settings=SERVER_SETTINGS,
    )
    return pool


class Tokens(BaseModel):
    input_tokens: int = Field(ge=0, le=10**9)
    output_tokens: int = Field(ge=0, le=10**9)


class StartIn(BaseModel):
    user_id: str = Field(min_length=1, max_length=255)
    model: str = Field(min_length=1, max_length=255)
    provisional_tokens: Tokens


class StartOut(BaseModel):
    transaction_id: uuid.UUID
    continue_: bool = Field(alias="continue")
    balance: Decimal
    credits_used: Decimal
    hold_amount: Decimal
    status: str
    expires_at: datetime | None
    message: str
    reason: str | None


class CompleteIn(BaseModel):
    success: bool
    finalized_tokens: Tokens


class CompleteOut(BaseModel):
    transaction_id: uuid.UUID
    status: str
    credits_used: Decimal
    balance: Decimal
    balance_adjustment: Decimal
    late: bool


def fastapi_app(prefix: str, backend: Callable[[], Backend]) -> FastAPI:
    """One variant behind FastAPI: pydantic bodies, response models, an error response."""
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    IdempotencyKey = Annotated[str | None, Header()]

    @api.post(f"{prefix}/v1/transactions/start", status_code=201, response_model=StartOut)
    async def start(body: StartIn, idempotency_key: IdempotencyKey = None) -> Any:
        tokens = body.provisional_tokens
        req = Start(body.user_id, body.model, tokens.input_tokens, tokens.output_tokens)
        outcome = await backend().start(idempotency_key, req)
        if outcome.body is None:
            return JSONResponse(orjson.loads(ERRORS[outcome.status]), outcome.status)
        return StartOut.model_validate(outcome.body)

    @api.post(f"{prefix}/v1/transactions/{{transaction_id}}/complete", response_model=CompleteOut)
    async def complete(
        transaction_id: uuid.UUID, body: CompleteIn, idempotency_key: IdempotencyKey = None
    ) -> Any:
        tokens = body.finalized_tokens
        req = Complete(body.success, tokens.input_tokens, tokens.output_tokens)
        outcome = await backend().complete(idempotency_key, transaction_id, req)
        if outcome.body is None:
            return JSONResponse(orjson.loads(ERRORS[outcome.status]), outcome.status)
        return CompleteOut.model_validate(outcome.body)

    return api


class FloorApp:
    """The raw ASGI app of one worker: the pool (opened at lifespan startup) and the routes."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self.backends: dict[str, Backend] = {}
        self.fastapi = {
            f"fastapi-{name}": fastapi_app(f"/fastapi-{name}", self._backend(name))
            for name in ("rt3", "rt1")
        }

    def _backend(self, name: str) -> Callable[[], Backend]:
        return lambda: self.backends[name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            path: str = scope["path"]
            api = self.fastapi.get(path.split("/", 2)[1])
            if api is not None:
                await api(scope, receive, send)
            else:
                status, body = await self._route(path, scope, await _body(receive))
                await _respond(send, status, body)

    async def _route(self, path: str, scope: Scope, raw: bytes) -> tuple[int, bytes]:
        """Dispatch /<variant>/v1/transactions/start and .../<id>/complete."""
        if path == "/readyz":
            return 200, b'{"status":"ok"}'
        parts = path.split("/")
        backend = self.backends.get(parts[1])
        if backend is None or scope["method"] != "POST" or parts[2:4] != ["v1", "transactions"]:
            return 404, ERRORS[404]
        key = _idempotency_key(scope)
        try:
            if len(parts) == 5 and parts[4] == "start":
                outcome = await backend.start(key, _parse_start(raw))
            elif len(parts) == 6 and parts[5] == "complete":
                outcome = await backend.complete(key, uuid.UUID(parts[4]), _parse_complete(raw))
            else:
                return 404, ERRORS[404]
        except (KeyError, TypeError, ValueError):  # orjson.JSONDecodeError is a ValueError
            return 422, ERRORS[422]
        return outcome.status, render(outcome)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._pool = await open_pool(self.dsn)
                self.backends = {"rt3": ThreeTrips(self._pool), "rt1": OneTrip(self._pool)}
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._pool is not None:
                    await self._pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _parse_start(raw: bytes) -> Start:
    data = orjson.loads(raw)
    tokens = data["provisional_tokens"]
    user_id, model = data["user_id"], data["model"]
    if not isinstance(user_id, str) or not isinstance(model, str):
        raise TypeError("user_id and model are strings")
    return Start(user_id, model, _count(tokens["input_tokens"]), _count(tokens["output_tokens"]))


def _parse_complete(raw: bytes) -> Complete:
    data = orjson.loads(raw)
    tokens, success = data["finalized_tokens"], data["success"]
    if not isinstance(success, bool):
        raise TypeError("success is a boolean")
    return Complete(success, _count(tokens["input_tokens"]), _count(tokens["output_tokens"]))


def _count(value: object) -> int:
    if type(value) is not int or not 0 <= value <= 10**9:
        raise ValueError("a token count is an integer in [0, 1e9]")
    return value


def _idempotency_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            key: str = value.decode("latin-1")
            return key
    return None


async def _body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    return body


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _worker(port: int, dsn: str) -> None:
    """One uvicorn worker with its own SO_REUSEPORT socket, as `creditd serve --workers`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    sock = _listen("127.0.0.1", port, reuse_port=True)
    Server(uvicorn.Config(FloorApp(dsn), **UVICORN_OPTIONS)).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    """Run the workers until one exits or SIGINT/SIGTERM arrives."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor_app", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("dsn", help="the database, with the floor schema (bench/floor_sql.py)")
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(args.port, args.dsn)) for _ in range(args.workers)]
    for proc in procs:
        proc.start()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    multiprocessing.connection.wait([p.sentinel for p in procs])
    stop(signal.SIGTERM, None)
    for proc in procs:
        proc.join(timeout=15)
        if proc.is_alive():
            proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
