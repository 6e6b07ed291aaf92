"""The route class every /v1 route uses: one request = one database transaction.

It opens the session, runs the handler, and commits before the response leaves. For a POST
with ``Idempotency-Key`` it locks the key and looks for its row with the transaction's BEGIN,
replays a stored response, and stores the new one with its COMMIT, *in the same transaction*
as the effect it describes, so a stored response exists exactly when its effect was committed.

Transient database failures leave ``Database.transaction()`` as 503s. When only the reply to
COMMIT was lost, a request with a key reads its stored response back to learn whether the
commit happened, and answers accordingly.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import structlog
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from app.auth.dependencies import check_scopes, get_principal, require_operator
from app.core.errors import (
    AppError,
    InvalidRequest,
    NotFound,
    merge_responses,
    problem_responses,
)
from app.core.http import DecimalRequest, JSONResponse, problem_from_error
from app.core.openapi import (
    API_KEY_SECURITY,
    IDEMPOTENCY_KEY_PARAMETER,
    OPERATOR_SECURITY,
    PROJECT_ID_PARAMETER,
    scope_note,
)
from app.core.settings import Settings
from app.credits import gate
from app.credits.exceptions import AccountBusy
from app.db.exceptions import (
    CommitOutcomeUnknown,
    DatabaseFault,
    DatabaseUnavailable,
    DeadlockDetected,
    LockTimeout,
    PoolTimeout,
    SerializationFailure,
    StatementTimeout,
)
from app.db.models.idempotency_key import OPERATOR_SCOPE
from app.db.session import Database, Opening, driver
from app.idempotency import repository as idem_repo
from app.idempotency.exceptions import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
)

REPLAY_HEADER = "Idempotent-Replayed"
# How long a request whose COMMIT reply was lost keeps asking whether it committed.
COMMIT_CHECK_SECONDS = 3.0

log = structlog.get_logger("creditd.http")


READ_ONLY = "creditd_read_only"


def read_only(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an endpoint that only reads: its statements run without a transaction around
    them (each sees its own snapshot), which saves BEGIN and COMMIT. For endpoints whose
    answer may come from several statements that need not agree with each other."""
    setattr(endpoint, READ_ONLY, True)
    return endpoint


class UnstorableInput(InvalidRequest):
    title = "The path or query contains a NUL character"
    loc = ("path",)


def unstorable(scope: Any) -> bool:
    """A NUL character in the path or query: ``UnstorableInput`` (PostgreSQL cannot store it)."""
    return "\x00" in scope["path"] or b"%00" in scope["query_string"]


_STORED_HEADERS = ("content-type", "location")


def _render_models(endpoint: Callable[..., Any], status_code: int) -> Callable[..., Any]:
    """Wrap an endpoint so a returned pydantic model becomes exact-decimal JSON."""

    @functools.wraps(endpoint)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = endpoint(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, BaseModel | dict | list):
            return JSONResponse(result, status_code=status_code)
        return result

    return wrapper


_IDEMPOTENCY_ERRORS = problem_responses(
    IdempotencyKeyReused, IdempotencyKeyInFlight, InvalidIdempotencyKey
)
# A path parameter that is empty or holds a '/' ("/v1/users/", "/v1/users/a%2Fb/credits")
# leaves the path to no route at all: the router's own 404 `not_found`.
_NO_ROUTE = problem_responses(NotFound)
# Every transient cause of a 503 (``app.main`` documents them on each router). A route that
# declares a 503 of its own (a provider being unavailable) would replace that entry, as
# FastAPI does not merge responses of one status: the route's list gets them merged in here.
TRANSIENT_ERRORS = (
    DatabaseUnavailable,
    LockTimeout,
    StatementTimeout,
    SerializationFailure,
    DeadlockDetected,
    PoolTimeout,
    CommitOutcomeUnknown,
    AccountBusy,
)
_TRANSIENT = problem_responses(*TRANSIENT_ERRORS)


class TransactionalRoute(APIRoute):
    """A project route: API-key auth, and ``Idempotency-Key`` on every POST."""

    idempotent: bool = True  # POSTs take an Idempotency-Key

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        status_code = kwargs.get("status_code") or 200
        methods = {m.upper() for m in kwargs.get("methods") or ()}
        takes_key = self.idempotent and "POST" in methods
        if takes_key:
            kwargs["responses"] = merge_responses(
                kwargs.get("responses") or {}, _IDEMPOTENCY_ERRORS
            )
        if "{" in path:
            kwargs["responses"] = merge_responses(kwargs.get("responses") or {}, _NO_ROUTE)
        if 503 in (kwargs.get("responses") or {}):
            kwargs["responses"] = merge_responses(kwargs["responses"], _TRANSIENT)
        self.read_only: bool = getattr(endpoint, READ_ONLY, False)
        super().__init__(path, _render_models(endpoint, status_code), **kwargs)
        # The scopes the endpoint demands: a replayed response must pass the same check.
        scopes = [getattr(dep.call, "required_scopes", None) for dep in self.dependant.dependencies]
        self.required_scopes: frozenset[str] | None = next(
            (s for s in scopes if s is not None), None
        )
        self._declare_contract(takes_key=takes_key)

    def _declare_contract(self, *, takes_key: bool) -> None:
        """Publish the security and shared headers this route enforces (OpenAPI only)."""
        extra = self._contract()
        if takes_key:
            extra["parameters"].append(IDEMPOTENCY_KEY_PARAMETER)
        self.openapi_extra = {**extra, **(self.openapi_extra or {})}

    def _contract(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"security": API_KEY_SECURITY, "parameters": [PROJECT_ID_PARAMETER]}
        if self.required_scopes is not None:
            note = scope_note(self.required_scopes)
            self.description = f"{self.description}\n\n{note}".strip()
            extra["x-required-scopes"] = sorted({"admin", *self.required_scopes})
        return extra

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        solved = super().get_route_handler()
        handler = _direct(self.dependant, solved)
        self.calls_directly = handler is not solved

        async def route_handler(request: Request) -> Response:
            if unstorable(request.scope):
                raise UnstorableInput()
            if not isinstance(request, DecimalRequest):  # the lane's has its body parsed
                request = DecimalRequest(request.scope, request.receive)
            db: Database = request.app.state.db
            key = request.headers.get("idempotency-key")
            keyed = self.idempotent and key is not None and request.method == "POST"
            if self.read_only:
                return await _read(self, request, handler, db, key if keyed else None)
            if keyed:
                assert key is not None
                return await _keyed(self, request, handler, db, key)
            async with db.transaction() as session:
                gate.attach(session, request.app.state.account_gate)
                request.state.session = session
                return await handler(request)

        # For the metering lane (app/lane.py): the handler, for a body that validates.
        self.lane_handler: Callable[[Request], Coroutine[Any, Any, Response]] | None = (
            route_handler if self.calls_directly else None
        )
        return route_handler

    @property
    def body_model(self) -> type[BaseModel] | None:
        """The route's one JSON body model, if it takes one."""
        params = self.dependant.body_params
        if len(params) != 1:
            return None
        annotation = params[0].field_info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return None

    async def idempotency_scope(self, request: Request) -> uuid.UUID:
        """Authorise the caller and name the scope its idempotency keys live in (its project).

        This runs before anything can be replayed: a stored response is only for callers
        allowed to make the request (the handler's own dependency checks the same again).
        """
        principal = await get_principal(request)
        check_scopes(principal, self.required_scopes or frozenset())
        return principal.project_id


_SPECIAL_PARAMS = (
    "request_param_name",
    "websocket_param_name",
    "http_connection_param_name",
    "response_param_name",
    "background_tasks_param_name",
    "security_scopes_param_name",
)


def _plain(dependant: Dependant) -> bool:
    """No query, header or cookie parameters and no special ones (a request-taking function
    dependency may take the request)."""
    return not (
        dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or any(getattr(dependant, name) for name in _SPECIAL_PARAMS[1:])
    )


def _direct(
    dependant: Dependant, solved: Callable[[Request], Coroutine[Any, Any, Response]]
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    """The endpoint called directly when the request is well-formed, else FastAPI's handler.

    For an endpoint whose parameters are request-taking dependencies (the session, the key's
    principal), unconstrained string path parameters and at most one JSON body model,
    FastAPI's general dependency solving costs more than the rest of a metering request. The
    direct call keeps FastAPI's order (parse the body, run the dependencies, validate the
    body), takes the path parameters and calls the endpoint. Anything
    else - no JSON content type, a body that does not parse or validate - goes to FastAPI's
    handler, which answers exactly as it always does (the principal is cached on the
    request, so nothing is authenticated or rate-limited twice).
    """
    if not _plain(dependant) or dependant.request_param_name or len(dependant.body_params) > 1:
        return solved
    for field in dependant.path_params:
        # A plain `str`: constraints (a pattern, a length) sit in the metadata and need
        # FastAPI's validation.
        if field.field_info.annotation is not str or field.field_info.metadata:
            return solved
    calls: list[tuple[str, Callable[[Request], Awaitable[Any]]]] = []
    for sub in dependant.dependencies:
        call = sub.call
        if sub.dependencies or sub.path_params or sub.body_params or not _plain(sub):
            return solved
        if sub.name is None or sub.request_param_name is None or call is None:
            return solved
        if not inspect.iscoroutinefunction(call):
            return solved
        calls.append((sub.name, call))
    model: type[BaseModel] | None = None
    body_name = ""
    if dependant.body_params:
        field = dependant.body_params[0]
        annotation = field.field_info.annotation
        if getattr(field.field_info, "embed", False) or not (
            isinstance(annotation, type) and issubclass(annotation, BaseModel)
        ):
            return solved
        model, body_name = annotation, field.name
    endpoint = dependant.call
    if endpoint is None:
        return solved
    path_names = [field.name for field in dependant.path_params]

    async def direct(request: Request) -> Response:
        data: Any = None
        if model is not None:
            # FastAPI's order: the body is parsed first (malformed JSON: 422 before any
            # dependency runs), then the dependencies, then the body is validated.
            if not is_json(request.headers.get("content-type", "")):
                return await solved(request)
            try:
                data = await request.json()
            except json.JSONDecodeError:
                return await solved(request)
        kwargs: dict[str, Any] = {}
        for name, call in calls:
            kwargs[name] = await call(request)
        for name in path_names:
            kwargs[name] = request.path_params[name]
        if model is not None:
            validated = getattr(request, "validated", None)  # by the lane (app/lane.py)
            if type(validated) is model:
                kwargs[body_name] = validated
            else:
                try:
                    kwargs[body_name] = model.model_validate(data)
                except ValidationError:
                    return await solved(request)  # FastAPI's own 422, word for word
        response: Response = await endpoint(**kwargs)
        return response

    return direct


def is_json(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "application/json"


async def _read(
    route: TransactionalRoute,
    request: Request,
    handler: Callable[[Request], Awaitable[Response]],
    db: Database,
    key: str | None,
) -> Response:
    """A ``read_only`` route: its statements run on their own (autocommit: no BEGIN and no
    COMMIT to wait for). With ``Idempotency-Key``, the response (or business error) is then
    stored in one statement, or the one stored first is replayed: a read has no effect for
    a claim to guard, so the key is taken when there is a response to keep."""
    claim = None
    if key is not None:
        claim = await claim_for(request, await route.idempotency_scope(request), key)
    async with db.transaction(autocommit=True) as session:
        request.state.session = session
        refused: AppError | None = None
        try:
            response = await handler(request)
        except AppError as exc:
            if exc.status >= 500 or claim is None:
                raise
            refused = exc
        if refused is not None:
            # Made outside the except block, so the business error does not chain to what
            # storing it may raise.
            response = problem_from_error(request, refused)
        elif claim is None or response.status_code >= 500:
            return response
        assert claim is not None
        return await store_once(driver(session), claim, response)


@dataclass(frozen=True)
class Claim:
    """A keyed request: where its key lives and what it asked."""

    scope: uuid.UUID
    key: str
    method: str
    path: str
    request_hash: str
    ttl: timedelta

    def opening(self) -> Opening:
        return idem_repo.key_opening(project_id=self.scope, key=self.key)

    def store_with_commit(
        self, session: AsyncSession, response: Response, *, claimed: bool
    ) -> None:
        """Store ``response`` with the COMMIT: into the row this transaction claimed, or as
        the key's new row."""
        status_code, headers = response.status_code, _stored_headers(response)
        body = bytes(response.body)
        if claimed:
            idem_repo.store_with_commit(
                session,
                project_id=self.scope,
                key=self.key,
                status_code=status_code,
                headers=headers,
                body=body,
            )
            return
        idem_repo.insert_with_commit(
            session,
            project_id=self.scope,
            key=self.key,
            method=self.method,
            path=self.path,
            request_hash=self.request_hash,
            ttl=self.ttl,
            status_code=status_code,
            headers=headers,
            body=body,
        )

    async def take(self, conn: Any) -> bool:
        """Claim the key's existing row for this transaction (an expired one is taken over);
        False when a live row holds it."""
        return await idem_repo.claim(
            conn,
            project_id=self.scope,
            key=self.key,
            method=self.method,
            path=self.path,
            request_hash=self.request_hash,
            ttl=self.ttl,
        )


class _Refused(Exception):
    """The handler raised a business error: its transaction is rolled back, the error stored."""

    def __init__(self, response: Response) -> None:
        self.response = response


async def _keyed(
    route: TransactionalRoute,
    request: Request,
    handler: Callable[[Request], Awaitable[Response]],
    db: Database,
    key: str,
) -> Response:
    """A POST with ``Idempotency-Key``: replay its stored response, or run it and store one.

    Common path, one transaction and no round trip of its own: the lock on the key and the
    look-up of its row ride with BEGIN; with no row, the handler runs and the key's row is
    inserted, response and all, with COMMIT: written once. A key that has a row (a retry, an
    expired key) is claimed in the same transaction: replayed, or taken over and updated with
    the response at COMMIT. No savepoint: a business error rolls the whole transaction back
    (its effects and the lock) and is stored by a second, short transaction instead.
    """
    # Authorised before anything can be replayed; a key this process has not verified lately
    # is looked up in a short transaction of its own (app/auth/dependencies.py).
    scope = await route.idempotency_scope(request)
    claim = await claim_for(request, scope, key)
    try:
        return await _keyed_once(request, handler, db, claim)
    except asyncpg.UniqueViolationError as exc:
        if not idem_repo.duplicate(exc):
            raise
    # A writer that does not take the lock (a business error or a read stored by
    # ``store_once``) wrote the key's row between our look-up and our COMMIT, which failed
    # and rolled everything back. Once more: the look-up now finds that row, so this ends in
    # its replay or a 409, never in a second effect.
    log.info("idempotency_key_stored_meanwhile")
    return await _keyed_once(request, handler, db, claim)


async def _keyed_once(
    request: Request,
    handler: Callable[[Request], Awaitable[Response]],
    db: Database,
    claim: Claim,
) -> Response:
    """One transaction of a keyed request (``_keyed``)."""
    response: Response | None = None
    try:
        try:
            async with db.transaction(opening=claim.opening()) as session:
                gate.attach(session, request.app.state.account_gate)
                request.state.session = session
                found = idem_repo.found(session)
                if found and not await claim.take(driver(session)):
                    return await _replay(driver(session), claim)
                response = await _run_keyed(request, handler, session, claim, claimed=found)
        except _Refused as refused:
            response = refused.response
            async with db.transaction() as session:
                response = await store_once(driver(session), claim, response)
    except CommitOutcomeUnknown as unknown:
        if response is not None and response.status_code < 500:
            return await settle_lost_commit(db, claim, response, unknown.server_pid)
        raise
    return response


async def claim_for(request: Request, scope: uuid.UUID, key: str) -> Claim:
    if not key or len(key) > 255 or not key.isprintable():
        raise InvalidIdempotencyKey()
    body = await request.body()
    path = request.url.path
    request_hash = hashlib.sha256(
        request.method.encode() + b" " + path.encode() + b"\n" + body
    ).hexdigest()
    settings: Settings = request.app.state.settings
    ttl = timedelta(hours=settings.api.idempotency_ttl_hours)
    return Claim(scope, key, request.method, path, request_hash, ttl)


def _stored_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k in _STORED_HEADERS}


async def _replay(conn: Any, claim: Claim) -> Response:
    """The live response stored under the claim's key, for this same request."""
    stored = await idem_repo.get_live(conn, claim.scope, claim.key)
    if stored is None or stored.status_code == idem_repo.IN_FLIGHT:
        # Gone between the claim and this read (expired meanwhile): as good as in flight.
        raise IdempotencyKeyInFlight()
    if stored.request_hash != claim.request_hash:
        raise IdempotencyKeyReused()
    headers = {**stored.headers, REPLAY_HEADER: "true"}
    return Response(stored.body, status_code=stored.status_code, headers=headers)


async def _run_keyed(
    request: Request,
    handler: Callable[[Request], Awaitable[Response]],
    session: AsyncSession,
    claim: Claim,
    *,
    claimed: bool,
) -> Response:
    """Run the handler under the locked key; its response is stored with the COMMIT, as the
    key's new row or (``claimed``) into the row this transaction claimed."""
    refused: AppError | None = None
    try:
        response = await handler(request)
    except AppError as exc:
        if exc.status >= 500:
            raise  # a 5xx does not hold the key: everything rolls back
        refused = exc
    if refused is not None:
        # Raised outside the except block, so the business error does not chain to it and
        # the transaction's rollback does not mistake it for a database fault.
        raise _Refused(problem_from_error(request, refused))
    if response.status_code >= 500:
        if claimed:
            await idem_repo.release(driver(session), project_id=claim.scope, key=claim.key)
        return response
    claim.store_with_commit(session, response, claimed=claimed)
    return response


async def store_once(conn: Any, claim: Claim, response: Response) -> Response:
    """Store a response that changed nothing (a business error whose effects were rolled
    back, or a read) under the key, in one statement.

    This takes no lock on the key: the key was free while the response was made, and a
    concurrent request may have taken it since. Its response committed first: that one is
    replayed (its row still uncommitted past 100 ms: 409 in flight). Ours first: its COMMIT
    meets our row and it runs again to replay ours (``_keyed``). Either way every answer for
    one key is its one stored response or a 409.
    """
    claimed = await idem_repo.claim(
        conn,
        project_id=claim.scope,
        key=claim.key,
        method=claim.method,
        path=claim.path,
        request_hash=claim.request_hash,
        ttl=claim.ttl,
        status_code=response.status_code,
        headers=_stored_headers(response),
        body=bytes(response.body),
    )
    if not claimed:
        return await _replay(conn, claim)
    return response


_BACKEND_ALIVE = "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)"


async def settle_lost_commit(
    db: Database, claim: Claim, response: Response | None, server_pid: int | None
) -> Response:
    """The reply to COMMIT was lost. The response was stored under the key in the same
    transaction, so reading it back says whether the commit happened: answer the response,
    or a 503 that changed nothing. Asks for ``COMMIT_CHECK_SECONDS`` at most. Without the
    response (a statement that committed on its own and built its answer in the database,
    app/transactions/fast.py): the one stored for this same request is the answer.

    Only once the server process that was committing is gone: until then its COMMIT (and the
    last write sent with it, which may be waiting for a lock) can still go either way, and a
    read that finds nothing proves nothing. (A reused pid only makes this wait longer.)
    """
    deadline = time.monotonic() + COMMIT_CHECK_SECONDS
    while True:
        try:
            async with db.transaction(autocommit=True) as session:
                conn = driver(session)
                if server_pid is not None and await conn.fetchval(_BACKEND_ALIVE, server_pid):
                    raise _StillCommitting()
                stored = await idem_repo.get_live(conn, claim.scope, claim.key)
            break
        except (DatabaseFault, _StillCommitting):
            if time.monotonic() >= deadline:
                raise CommitOutcomeUnknown(
                    "The connection broke while committing and the outcome could not be "
                    "learned in time: retry with the same Idempotency-Key to get the first "
                    "result or apply it once."
                ) from None
            await asyncio.sleep(0.1)
    # A different stored body is a retry that ran after ours failed: ours did not commit.
    if response is None:
        if stored is not None and stored.request_hash == claim.request_hash:
            log.info("lost_commit_applied", status=stored.status_code)
            return Response(stored.body, status_code=stored.status_code, headers=stored.headers)
    elif stored is not None and stored.body == bytes(response.body):
        log.info("lost_commit_applied", status=response.status_code)
        return response
    log.info("lost_commit_not_applied")
    raise DatabaseUnavailable("The connection to the database was lost; nothing was changed.")


class _StillCommitting(Exception):
    """The server process that was committing still runs."""


class OperatorRoute(TransactionalRoute):
    """An operator route: the operator token; its idempotency keys live in OPERATOR_SCOPE."""

    async def idempotency_scope(self, request: Request) -> uuid.UUID:
        await require_operator(request)
        return OPERATOR_SCOPE

    def _contract(self) -> dict[str, Any]:
        return {"security": OPERATOR_SECURITY, "parameters": []}


class WebhookRoute(TransactionalRoute):
    """A provider's webhook: no API key (the handler verifies the provider's signature) and
    no ``Idempotency-Key`` (providers send none; the event id deduplicates instead)."""

    idempotent = False

    def _contract(self) -> dict[str, Any]:
        return {"security": [], "parameters": []}
