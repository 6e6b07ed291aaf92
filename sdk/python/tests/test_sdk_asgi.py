"""CreditdMiddleware and @metered: a FastAPI app served by uvicorn, metered by a live creditd."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from creditd_sdk import (
    AsyncCreditd,
    Creditd,
    CreditdMiddleware,
    InsufficientCredits,
    NoActiveCapture,
    RequestCapture,
    add_llm_usage,
    add_usage,
    current_transaction,
    metered,
)
from creditd_sdk.asgi import Message
from creditd_sdk.errors import APIConnectionError
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from sdk_testkit import free_port

from tests.fixtures.serving import serve

PROVISIONAL: Any = {"input_tokens": 1000, "output_tokens": 1000}  # holds 3 credits
UNICODE_MODEL = "模型-ß"  # not ASCII: cannot be in an HTTP header as is


class ModelDown(Exception):
    pass


class Completions:
    """The captures the middleware finished, in order (its ``on_complete`` hook)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[RequestCapture] = asyncio.Queue()

    def __call__(self, capture: RequestCapture) -> None:
        self.queue.put_nowait(capture)

    async def next(self) -> RequestCapture:
        return await asyncio.wait_for(self.queue.get(), timeout=30)


def _app(calls: list[str], gate: asyncio.Event | None = None) -> FastAPI:
    app = FastAPI()

    @app.post("/api/chat")
    async def chat(body: dict[str, int]) -> dict[str, Any]:
        calls.append("chat")
        add_usage(input_tokens=body.get("in", 0), output_tokens=body.get("out", 0))
        txn = current_transaction()
        assert txn is not None
        return {"transaction_id": txn.transaction_id, "user": txn.user_id}

    @app.post("/api/agent")
    async def agent() -> dict[str, str]:
        calls.append("agent")
        add_llm_usage("gpt-4o", 500, 250, metadata={"step": "answer"})
        add_llm_usage("embed-small", input_tokens=3000, provider="openai")
        add_llm_usage("embed-small", input_tokens=1000, provider="openai")
        return {"ok": "yes"}

    @app.get("/api/plain")
    async def plain() -> dict[str, str]:
        calls.append("plain")
        return {"ok": "yes"}

    @app.get("/api/threaded")
    def threaded() -> dict[str, str]:  # a sync handler: FastAPI runs it in a worker thread
        calls.append("threaded")
        add_usage(output_tokens=500)
        return {"ok": "yes"}

    @app.get("/api/boom")
    async def boom() -> dict[str, str]:
        calls.append("boom")
        add_usage(input_tokens=9000)
        raise ModelDown("the model provider failed")

    @app.get("/api/busy")
    async def busy() -> JSONResponse:
        calls.append("busy")
        add_usage(input_tokens=9000)
        return JSONResponse({"error": "upstream overloaded"}, status_code=503)

    @app.get("/api/health")
    async def health() -> dict[str, bool]:
        calls.append("health")
        with pytest.raises(NoActiveCapture):
            add_usage(input_tokens=1)
        return {"metered": current_transaction() is not None}

    @app.get("/public")
    async def public() -> dict[str, bool]:
        calls.append("public")
        return {"metered": current_transaction() is not None}

    @app.get("/api/stream")
    async def stream() -> StreamingResponse:
        calls.append("stream")
        txn = current_transaction()
        assert txn is not None
        assert txn.transaction_id is not None

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                add_usage(output_tokens=1000)
                yield f"chunk{i}\n".encode()
                if i == 0 and gate is not None:
                    await gate.wait()  # the test looks at the transaction mid-stream

        return StreamingResponse(
            chunks(), media_type="text/plain", headers={"x-transaction-id": txn.transaction_id}
        )

    @app.get("/api/stream-break")
    async def stream_break() -> StreamingResponse:
        calls.append("stream-break")

        async def chunks() -> AsyncIterator[bytes]:
            add_usage(output_tokens=1000)
            yield b"chunk0\n"
            raise ModelDown("the model's stream broke mid-way")

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.post("/api/unicode-model")
    async def unicode_model() -> dict[str, str]:
        calls.append("unicode-model")
        add_llm_usage(UNICODE_MODEL, input_tokens=1000, provider="local")
        return {"ok": "yes"}

    return app


@asynccontextmanager
async def _served(
    client: AsyncCreditd, calls: list[str], gate: asyncio.Event | None = None, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Completions]]:
    completions = Completions()
    app = _app(calls, gate)
    settings: dict[str, Any] = {
        "model": "gpt-4o",
        "path_prefixes": ["/api"],
        "skip_paths": ["/api/health"],
        "provisional_tokens": PROVISIONAL,
        "feature_identifier": "chat",
        "on_complete": completions,
    }
    settings.update(options)
    if "resolve_user" not in settings:
        # The tests stand in for the trusted proxy that sets this header.
        settings.setdefault("user_header", "X-User-Id")
    app.add_middleware(CreditdMiddleware, client=client, **settings)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http, completions


def _funded(client: Creditd, user_id: str, credits: int) -> None:
    client.users.create(user_id)
    if credits:
        client.credits.grant(user_id, credits)


def _ledger(client: Creditd, user_id: str) -> list[tuple[str, Decimal, Decimal]]:
    return [(e.kind, e.amount, e.held_amount) for e in client.credits.list_ledger(user_id).data]


def _balance(client: Creditd, user_id: str) -> tuple[Decimal, Decimal, Decimal]:
    b = client.users.get(user_id).balance
    return (b.total, b.held, b.available)


U = {"X-User-Id": "u"}


async def test_handler_reported_usage_is_charged_exactly(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    calls: list[str] = []
    async with _served(aclient, calls) as (http, done):
        response = await http.post("/api/chat", json={"in": 200, "out": 100}, headers=U)
        assert response.status_code == 200
        capture = await done.next()
    txn_id = response.json()["transaction_id"]
    assert response.json()["user"] == "u"
    assert capture.transaction_id == txn_id
    assert capture.result is not None
    assert (capture.result.status, capture.result.credits_used) == ("completed", Decimal("0.4"))
    assert _balance(priced, "u") == (Decimal("9.6"), Decimal(0), Decimal("9.6"))
    assert _ledger(priced, "u") == [
        ("grant", Decimal(10), Decimal(0)),
        ("hold", Decimal(0), Decimal(3)),
        ("usage", Decimal("-0.4"), Decimal(-3)),
    ]
    txn = priced.transactions.get(txn_id)
    assert (txn.status, txn.credits_used, txn.feature_identifier) == (
        "completed",
        Decimal("0.4"),
        "chat",
    )
    assert txn.finalized_tokens is not None
    assert (txn.finalized_tokens["input_tokens"], txn.finalized_tokens["output_tokens"]) == (
        200,
        100,
    )
    assert calls == ["chat"]


async def test_every_request_is_charged_the_request_price(
    client: Creditd, aclient: AsyncCreditd
) -> None:
    client.models.put(
        "per-call", input_price_per_1k=0, output_price_per_1k=0, request_price=Decimal("0.25")
    )
    _funded(client, "u", 10)
    calls: list[str] = []
    async with _served(aclient, calls, model="per-call", provisional_tokens=None) as (http, done):
        for _ in range(3):
            assert (await http.get("/api/plain", headers=U)).status_code == 200
            await done.next()
        # A sync handler (run in a thread) reports through the same contextvars.
        assert (await http.get("/api/threaded", headers=U)).status_code == 200
        threaded = await done.next()
    assert threaded.usage() == {"output_tokens": 500}
    assert _balance(client, "u") == (Decimal(9), Decimal(0), Decimal(9))
    txns = client.transactions.list(user_id="u").data
    assert [(t.status, t.credits_used) for t in txns] == [("completed", Decimal("0.25"))] * 4


async def test_another_models_usage_is_charged_once_with_its_own_usage_call(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    priced.models.put("embed-small", input_price_per_1k=Decimal("0.01"), output_price_per_1k=0)
    _funded(priced, "u", 10)
    async with _served(aclient, []) as (http, done):
        assert (await http.post("/api/agent", headers=U)).status_code == 200
        capture = await done.next()
    assert capture.errors == []
    assert capture.result is not None
    assert capture.result.credits_used == Decimal(1)  # 500 in + 250 out of gpt-4o
    assert capture.charges["embed-small"].credits_used == Decimal("0.04")  # 4000 in, summed
    assert _balance(priced, "u")[0] == Decimal("8.96")
    main = priced.transactions.get(capture.transaction_id or "")
    assert main.metadata == {"step": "answer"}
    (embed,) = priced.transactions.list(user_id="u", model="embed-small").data
    assert embed.metadata == {"provider": "openai", "capture_transaction_id": main.id}
    assert embed.feature_identifier == "chat"


async def test_a_raising_handler_releases_the_hold_and_charges_nothing(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    calls: list[str] = []
    async with _served(aclient, calls) as (http, done):
        assert (await http.get("/api/boom", headers=U)).status_code == 500
        capture = await done.next()
    assert calls == ["boom"]
    assert capture.success is False
    assert capture.result is not None
    assert (capture.result.status, capture.result.credits_used) == ("failed", Decimal(0))
    assert _balance(priced, "u") == (Decimal(10), Decimal(0), Decimal(10))
    assert [k for k, _, _ in _ledger(priced, "u")] == ["grant", "hold", "hold_release"]
    assert priced.transactions.get(capture.transaction_id or "").status == "failed"


async def test_a_5xx_answer_is_a_failed_transaction(priced: Creditd, aclient: AsyncCreditd) -> None:
    _funded(priced, "u", 10)
    async with _served(aclient, []) as (http, done):
        assert (await http.get("/api/busy", headers=U)).status_code == 503
        capture = await done.next()
    assert (capture.status_code, capture.success) == (503, False)
    assert priced.transactions.get(capture.transaction_id or "").status == "failed"
    assert _balance(priced, "u") == (Decimal(10), Decimal(0), Decimal(10))


async def test_a_user_without_credits_gets_402_and_the_handler_does_not_run(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "poor", 1)
    calls: list[str] = []
    async with _served(aclient, calls) as (http, _):
        response = await http.post("/api/chat", json={"in": 1}, headers={"X-User-Id": "poor"})
    assert calls == []  # the handler never ran
    assert response.status_code == 402
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["type"], problem["code"], problem["status"]) == (
        "/errors/insufficient_credits",
        "insufficient_credits",
        402,
    )
    assert priced.transactions.get(problem["transaction_id"]).status == "denied"
    assert Decimal(str(problem["balance"])) == Decimal(1)
    assert _ledger(priced, "poor") == [("grant", Decimal(1), Decimal(0))]


async def test_the_servers_reason_is_carried_in_the_402(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    priced.spend_caps.put("u", "day", limit=1, action="deny")
    calls: list[str] = []
    async with _served(aclient, calls) as (http, _):
        response = await http.post("/api/chat", json={}, headers=U)
    assert (response.status_code, response.json()["code"]) == (402, "spend_cap_reached")
    assert calls == []


async def test_skipped_and_unmatched_paths_are_untouched(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    calls: list[str] = []
    async with _served(aclient, calls) as (http, _):
        assert (await http.get("/api/health")).json() == {"metered": False}
        assert (await http.get("/public")).json() == {"metered": False}
        assert (await http.options("/api/chat", headers=U)).status_code == 405
        missing = await http.post("/api/chat", json={})  # metered path, no user
    assert missing.status_code == 401
    assert missing.json()["code"] == "user_not_identified"
    assert calls == ["health", "public"]
    assert priced.transactions.list().data == []


async def test_a_resolver_names_the_user_and_unreported_usage_may_charge_the_hold(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "alice", 10)

    async def resolve_user(scope: Any) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization" and value.startswith(b"Bearer user:"):
                return str(value.removeprefix(b"Bearer user:").decode())
        return None

    options: Any = {
        "resolve_user": resolve_user,
        "unreported_usage": "provisional",
        "metadata": lambda scope: {"path": scope["path"]},
        "match": lambda scope: scope["method"] == "GET",
    }
    calls: list[str] = []
    async with _served(aclient, calls, **options) as (http, done):
        auth = {"Authorization": "Bearer user:alice"}
        assert (await http.get("/api/plain", headers=auth)).status_code == 200
        capture = await done.next()
        assert (await http.get("/api/plain", headers=U)).status_code == 401  # header not used
        # POSTs do not match the predicate: served without a transaction.
        unmatched = await http.post("/api/chat", json={}, headers=auth)
    assert unmatched.status_code == 500  # the handler insists on a transaction
    assert capture.user_id == "alice"
    assert capture.result is not None
    assert capture.result.credits_used == Decimal(3)  # the provisional tokens
    txn = priced.transactions.get(capture.transaction_id or "")
    assert txn.metadata == {"path": "/api/plain"}
    assert calls == ["plain", "chat"]


async def test_a_streamed_response_is_completed_after_its_last_chunk(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    gate = asyncio.Event()
    async with (
        _served(aclient, [], gate) as (http, done),
        http.stream("GET", "/api/stream", headers=U) as response,
    ):
        txn_id = response.headers["x-transaction-id"]
        lines = response.aiter_lines()
        assert await anext(lines) == "chunk0"
        mid = await aclient.transactions.get(txn_id)
        assert (mid.status, mid.hold_amount) == ("pending", Decimal(3))
        gate.set()
        assert [line async for line in lines] == ["chunk1", "chunk2"]
        capture = await done.next()
    assert capture.result is not None
    assert capture.result.credits_used == Decimal(6)  # 3 chunks x 1000 output tokens
    assert priced.transactions.get(txn_id).status == "completed"
    assert _balance(priced, "u") == (Decimal(4), Decimal(0), Decimal(4))


async def test_unreachable_creditd_fails_closed_with_503_or_open_on_request(
    live: Any, project: Any
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    calls: list[str] = []
    async with AsyncCreditd(project.key, base_url=dead, max_retries=0, spool=None) as down:
        async with _served(down, calls) as (http, _):
            response = await http.post("/api/chat", json={}, headers=U)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["code"] == "credits_unavailable"
        assert calls == []
        async with _served(down, calls, on_unavailable="fail_open") as (http, done):
            response = await http.post("/api/chat", json={"in": 10}, headers=U)
            capture = await done.next()
    assert response.status_code == 200
    assert calls == ["chat"]
    assert isinstance(capture.unavailable, APIConnectionError)
    assert capture.start is None
    assert capture.success is True
    # creditd was still down at the end: the charge could not be sent, and says so.
    assert [type(e) for e in capture.errors] == [APIConnectionError]


async def test_fail_open_charges_the_usage_when_creditd_is_back_at_the_end(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    real = aclient.request
    starts = 0

    async def flaky(method: str, path: str, **kw: Any) -> Any:
        nonlocal starts
        if path == "/v1/transactions/start":
            starts += 1
            raise APIConnectionError("connection refused")
        return await real(method, path, **kw)

    aclient.request = flaky  # type: ignore[method-assign]
    async with _served(aclient, [], on_unavailable="fail_open") as (http, done):
        assert (await http.post("/api/chat", json={"in": 1000}, headers=U)).status_code == 200
        capture = await done.next()
    assert starts == 1
    assert capture.errors == []
    assert capture.charges["gpt-4o"].credits_used == Decimal(1)
    assert _balance(priced, "u")[0] == Decimal(9)


# --- what is charged when the app or charging goes wrong -----------------------------------


def _scope() -> dict[str, Any]:
    """An ASGI ``http`` scope of a metered request by user ``u``, for calling the middleware."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/direct",
        "raw_path": b"/api/direct",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"x-user-id", b"u")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _middleware(app: Any, client: AsyncCreditd, done: Completions) -> CreditdMiddleware:
    return CreditdMiddleware(
        app,
        client=client,
        model="gpt-4o",
        user_header="X-User-Id",
        provisional_tokens=PROVISIONAL,
        on_complete=done,
    )


async def test_a_non_ascii_model_is_charged_exactly_once(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    async with _served(aclient, []) as (http, done):
        assert (await http.post("/api/unicode-model", headers=U)).status_code == 200
        capture = await done.next()
    assert capture.errors == []
    charge = capture.charges[UNICODE_MODEL]
    assert charge.credits_used == Decimal(1)  # 1000 input tokens at the default price
    # A retry sends the same key (the model's part is a stable hash): replayed, not charged.
    shots = [shot for shot in capture._one_shots("none", PROVISIONAL) if shot[0] == UNICODE_MODEL]
    ((_, body, key),) = shots
    assert key.isascii()
    assert key == f"creditd-capture:{capture.transaction_id}:usage:" + (
        "sha256=" + hashlib.sha256(UNICODE_MODEL.encode()).hexdigest()[:32]
    )
    again = await aclient.request("POST", "/v1/usage", body=body, idempotency_key=key)
    assert again["transaction_id"] == charge.transaction_id
    (txn,) = priced.transactions.list(user_id="u", model=UNICODE_MODEL).data
    assert (txn.model, txn.credits_used) == (UNICODE_MODEL, Decimal(1))
    assert txn.metadata == {"provider": "local", "capture_transaction_id": capture.transaction_id}
    assert _balance(priced, "u") == (Decimal(9), Decimal(0), Decimal(9))


async def test_charging_errors_never_escape_the_middleware(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    real = aclient.request

    async def buggy(method: str, path: str, **kw: Any) -> Any:
        if path == "/v1/usage" and kw["body"]["model"] == "embed-small":
            raise RuntimeError("not a creditd error: a bug while charging")
        return await real(method, path, **kw)

    aclient.request = buggy  # type: ignore[method-assign]
    sent: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        add_usage(input_tokens=1000)
        add_llm_usage("embed-small", input_tokens=1000)
        add_llm_usage(UNICODE_MODEL, input_tokens=1000)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Message) -> None:
        sent.append(message)

    done = Completions()
    await _middleware(app, aclient, done)(_scope(), _receive, send)  # does not raise
    capture = await done.next()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert [type(e) for e in capture.errors] == [RuntimeError]
    assert capture.result is not None
    assert capture.result.credits_used == Decimal(1)
    # The models after the failed one are still charged.
    assert list(capture.charges) == [UNICODE_MODEL]
    assert capture.charges[UNICODE_MODEL].credits_used == Decimal(1)
    assert _balance(priced, "u") == (Decimal(8), Decimal(0), Decimal(8))


async def test_a_stream_broken_after_it_started_is_charged_the_usage_reported(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)
    calls: list[str] = []
    async with _served(aclient, calls) as (http, done):
        async with http.stream("GET", "/api/stream-break", headers=U) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert await anext(lines) == "chunk0"  # the client got content ...
            with pytest.raises(httpx.RemoteProtocolError):  # ... then the body broke off
                await anext(lines)
        capture = await done.next()
    assert calls == ["stream-break"]
    assert (capture.status_code, capture.success, capture.errors) == (200, True, [])
    assert capture.result is not None
    assert (capture.result.status, capture.result.credits_used) == ("completed", Decimal(2))
    assert _ledger(priced, "u") == [
        ("grant", Decimal(10), Decimal(0)),
        ("hold", Decimal(0), Decimal(3)),
        ("usage", Decimal(-2), Decimal(-3)),  # the 1000 output tokens reported
    ]


async def test_a_cancelled_request_is_charged_only_if_its_response_had_started(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    _funded(priced, "u", 10)

    async def cancelled(respond_first: bool) -> RequestCapture:
        waiting = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            add_usage(output_tokens=1000)
            if respond_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"chunk0", "more_body": True})
            waiting.set()
            await asyncio.sleep(3600)  # the client goes away, the server shuts down ...

        async def send(message: Message) -> None:
            pass

        done = Completions()
        task = asyncio.create_task(_middleware(app, aclient, done)(_scope(), _receive, send))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await done.next()

    streamed = await cancelled(respond_first=True)
    assert streamed.success is True
    assert streamed.result is not None
    assert (streamed.result.status, streamed.result.credits_used) == ("completed", Decimal(2))
    silent = await cancelled(respond_first=False)
    assert silent.success is False
    assert silent.result is not None
    assert (silent.result.status, silent.result.credits_used) == ("failed", Decimal(0))
    assert _balance(priced, "u") == (Decimal(8), Decimal(0), Decimal(8))


async def test_the_middleware_must_be_told_where_the_user_comes_from() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    async with AsyncCreditd("ck_test", base_url="http://creditd", spool=None) as c:
        with pytest.raises(TypeError, match="trusted proxy or gateway"):
            CreditdMiddleware(app, client=c, model="m")  # no default X-User-Id any more
        with pytest.raises(TypeError, match="not both"):
            CreditdMiddleware(
                app, client=c, model="m", user_header="X-User-Id", resolve_user=lambda s: "u"
            )
        with pytest.raises(ValueError, match="user_header"):
            CreditdMiddleware(app, client=c, model="m", user_header=" ")
        CreditdMiddleware(app, client=c, model="m", resolve_user=lambda s: "u")
        CreditdMiddleware(app, client=c, model="m", user_header="X-Authenticated-User")


# --- the requests the middleware sends ------------------------------------------------------


class Recorder:
    """A creditd stand-in that admits everything and records each request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        txn = "00000000-0000-0000-0000-000000000001"
        if request.url.path.endswith("/start"):
            return httpx.Response(
                201,
                json={
                    "transaction_id": txn,
                    "continue": True,
                    "balance": 1,
                    "credits_used": 0,
                    "hold_amount": 0,
                    "status": "pending",
                    "expires_at": None,
                    "message": "ok",
                    "reason": None,
                },
            )
        if request.url.path.endswith("/complete"):
            return httpx.Response(
                200,
                json={
                    "transaction_id": txn,
                    "status": "completed",
                    "credits_used": 0,
                    "balance": 1,
                    "balance_adjustment": 0,
                    "late": False,
                },
            )
        return httpx.Response(
            201,
            json={"transaction_id": txn, "status": "completed", "credits_used": 0, "balance": 1},
        )

    def sent(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        return [
            (r.url.path, r.headers.get("idempotency-key"), json.loads(r.content))
            for r in self.requests
        ]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def test_team_id_is_sent_only_when_configured_and_every_post_has_a_key(
    recorder: Recorder,
) -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    async with AsyncCreditd(
        "ck_test", base_url="http://creditd", spool=None, http_client=http
    ) as c:
        async with _served(c, []) as (app, done):
            await app.post("/api/agent", headers=U)
            await done.next()
        plain = recorder.sent()
        recorder.requests.clear()
        team: Any = {"team_id": lambda scope: "t_1"}
        async with _served(c, [], **team) as (app, done):
            await app.post("/api/agent", headers=U)
            await done.next()
        teamed = recorder.sent()
    await http.aclose()
    txn = "00000000-0000-0000-0000-000000000001"
    assert [path for path, _, _ in plain] == [
        "/v1/transactions/start",
        f"/v1/transactions/{txn}/complete",
        "/v1/usage",
    ]
    assert all("team_id" not in body for _, _, body in plain)
    assert all(body.get("team_id") == "t_1" for path, _, body in teamed if "complete" not in path)
    start_key = plain[0][1]
    assert start_key is not None
    assert start_key.startswith("creditd-capture:")
    assert plain[1][1] == f"creditd-capture:{txn}:complete"
    assert plain[2][1] == f"creditd-capture:{txn}:usage:embed-small"
    assert teamed[0][1] != start_key  # one start key per request


async def test_a_team_id_from_the_middleware_charges_the_team_live(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    """Live: the middleware's ``team_id`` (resolved from the request) reaches the server, so
    the team's balance pays, its ledger names the member, and the member's own account (no
    credits: without the team the start would be refused with 402) is untouched."""
    priced.users.create("u")
    priced.teams.create("t_asgi")
    priced.teams.put_member("t_asgi", "u")
    priced.teams.grant("t_asgi", 10)
    team: Any = {"team_id": lambda scope: dict(scope["headers"]).get(b"x-team-id", b"").decode()}
    async with _served(aclient, [], **team) as (http, done):
        response = await http.post(
            "/api/chat", json={"in": 200, "out": 100}, headers={**U, "X-Team-Id": "t_asgi"}
        )
        assert response.status_code == 200, response.text
        capture = await done.next()
    assert capture.result is not None
    assert (capture.result.status, capture.result.credits_used) == ("completed", Decimal("0.4"))
    txn = priced.transactions.get(response.json()["transaction_id"])
    assert (txn.status, txn.credits_used, txn.user_id) == ("completed", Decimal("0.4"), "u")
    assert txn.team_id == "t_asgi"
    balance = priced.teams.get("t_asgi").balance
    assert (balance.total, balance.held, balance.available) == (
        Decimal("9.6"),
        Decimal(0),
        Decimal("9.6"),
    )
    entries = priced.teams.list_ledger("t_asgi").data
    assert [(e.kind, e.user_id, e.amount, e.held_amount) for e in entries] == [
        ("grant", None, Decimal(10), Decimal(0)),
        ("hold", "u", Decimal(0), Decimal(3)),
        ("usage", "u", Decimal("-0.4"), Decimal(-3)),
    ]
    assert _balance(priced, "u") == (Decimal(0), Decimal(0), Decimal(0))
    assert _ledger(priced, "u") == []


# --- the decorator ----------------------------------------------------------------------------


def test_sync_decorator_charges_the_usage_reported_inside(priced: Creditd) -> None:
    _funded(priced, "alice", 10)
    _funded(priced, "bob", 0)
    runs: list[str] = []

    @metered(
        priced, user_id=lambda user, prompt: user, model="gpt-4o", provisional_tokens=PROVISIONAL
    )
    def chat(user: str, prompt: str) -> str:
        runs.append(user)
        add_usage(input_tokens=len(prompt) * 100, output_tokens=50)
        return prompt.upper()

    assert chat("alice", "hi") == "HI"
    assert current_transaction() is None
    assert priced.users.get("alice").balance.total == Decimal("9.7")  # 200 in + 50 out
    with pytest.raises(InsufficientCredits):
        chat("bob", "hi")
    assert runs == ["alice"]  # bob's call never ran


async def test_async_decorator_charges_or_releases(priced: Creditd, aclient: AsyncCreditd) -> None:
    _funded(priced, "u", 10)

    @metered(aclient, user_id="u", model="gpt-4o", provisional_tokens=PROVISIONAL)
    async def answer(fail: bool) -> str:
        add_llm_usage("gpt-4o", 1000, 500)
        if fail:
            raise ModelDown
        return "ok"

    assert await answer(False) == "ok"
    assert priced.users.get("u").balance.total == Decimal(8)
    with pytest.raises(ModelDown):
        await answer(True)
    assert _balance(priced, "u") == (Decimal(8), Decimal(0), Decimal(8))
    statuses = sorted(t.status for t in priced.transactions.list(user_id="u").data)
    assert statuses == ["completed", "failed"]


async def test_the_decorator_wants_the_client_matching_the_function(
    priced: Creditd, aclient: AsyncCreditd
) -> None:
    with pytest.raises(TypeError):

        @metered(aclient, user_id="u", model="m")
        def sync_fn() -> None:
            pass

    with pytest.raises(TypeError):

        @metered(priced, user_id="u", model="m")
        async def async_fn() -> None:
            pass


def test_usage_outside_a_capture_is_refused() -> None:
    with pytest.raises(NoActiveCapture):
        add_usage(input_tokens=1)
    with pytest.raises(NoActiveCapture):
        add_llm_usage("m", 1)
