"""A minimal HTTP/1.1 keep-alive JSON client: far cheaper per request than httpx."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson


class HttpError(Exception):
    """The server answered in a way this minimal client does not handle."""


@dataclass(frozen=True)
class Response:
    """A status code and a raw body."""

    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body decoded as JSON."""
        return orjson.loads(self.body)


class Connection:
    """One keep-alive connection to 127.0.0.1:port; reconnects when the server closes it."""

    def __init__(self, port: int, token: str) -> None:
        self._port = port
        self._auth = f"Authorization: Bearer {token}\r\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, payload: object = None, idempotency_key: str | None = None
    ) -> Response:
        """Send one request and read its whole response."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        assert self._reader is not None
        body = b"" if payload is None else orjson.dumps(payload)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        if idempotency_key is not None:
            head += f"Idempotency-Key: {idempotency_key}\r\n".encode()
        try:
            self._writer.write(head + self._auth + b"\r\n" + body)
            return await self._read_response(self._reader)
        except Exception:
            await self.close()
            raise

    async def _read_response(self, reader: asyncio.StreamReader) -> Response:
        """Parse the status line, the headers and a Content-Length body."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise HttpError(f"response without Content-Length (status {status})")
        body = await reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, body)

    async def close(self) -> None:
        """Close the socket, if open."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
