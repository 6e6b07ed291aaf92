"""A webhook receiver on 127.0.0.1 for tests: records every request, answers as scripted.

    async with webhook_receiver() as rx:
        rx.respond = lambda req, n: Reply(status=500) if n <= 2 else Reply()  # n: attempt of its id
        ... point an endpoint at rx.url ...
        await rx.wait_for(lambda reqs: len(reqs) >= 3)

``respond(request, n)`` gets the request and how many times its ``webhook-id`` has been seen
(this one included), and returns the ``Reply`` (status, headers, body, delay before answering).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fixtures.serving import serve


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() on arrival
    attempt: int  # how many times this webhook-id has arrived, this one included

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Received] = []
        self.respond: Callable[[Received, int], Reply] = lambda _req, _n: Reply()
        self._seen: dict[str, int] = {}
        self._changed = asyncio.Condition()

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        msg_id = headers.get("webhook-id", "")
        self._seen[msg_id] = n = self._seen.get(msg_id, 0) + 1
        received = Received(request.url.path, headers, body, time.monotonic(), n)
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
        reply = self.respond(received, n)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return Response(reply.body, status_code=reply.status, headers=reply.headers)

    async def wait_for(
        self, condition: Callable[[list[Received]], bool], within: float = 15.0
    ) -> list[Received]:
        """Wait until ``condition(requests)`` holds; fail the test after ``within`` seconds."""
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(lambda: condition(self.requests))
        return list(self.requests)

    def by_id(self, msg_id: str) -> list[Received]:
        return [r for r in self.requests if r.id == msg_id]


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = Starlette(routes=[Route("/{path:path}", rx._handle, methods=["POST", "GET", "PUT"])])
    async with serve(app) as url:  # type: ignore[arg-type]  # any ASGI app serves
        rx.url = url
        yield rx
