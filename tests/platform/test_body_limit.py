"""Request bodies over CREDITD_API__MAX_BODY_BYTES: 413 problem+json before parsing or auth."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from app.cli import openapi_document
from app.core.settings import ApiSettings, Settings
from app.main import create_app
from tests.conftest import Project, create_project
from tests.helpers import body

LIMIT = 1024 * 1024  # the default
JSON = {"Content-Type": "application/json"}
CHUNK = 64 * 1024


def assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == "/errors/payload_too_large"
    assert problem["code"] == "payload_too_large"
    assert problem["status"] == 413
    assert str(LIMIT) in problem["detail"]
    assert problem["request_id"] == r.headers["x-request-id"]


def padded(prefix: bytes, size: int) -> bytes:
    """A valid JSON body of exactly ``size`` bytes (trailing whitespace)."""
    return prefix + b" " * (size - len(prefix))


async def test_a_2_MiB_body_without_credentials_is_413_not_401(
    client: httpx.AsyncClient,
) -> None:
    raw = padded(b'{"id": "u_big"}', 2 * LIMIT)
    r = await client.post("/v1/users", content=raw, headers=JSON)
    assert_too_large(r)
    # The same without credentials but within the limit: authentication answers.
    r = await client.post("/v1/users", content=b'{"id": "u_big"}', headers=JSON)
    assert r.status_code == 401, r.text


async def test_an_oversized_body_with_a_bad_key_is_413_too(client: httpx.AsyncClient) -> None:
    headers = {**JSON, "Authorization": "Bearer ck_not_a_key"}
    r = await client.post("/v1/usage", content=b"x" * (2 * LIMIT), headers=headers)
    assert_too_large(r)


async def test_an_oversized_body_changes_nothing(project: Project) -> None:
    raw = padded(b'{"id": "u_big"}', LIMIT + 1)
    assert_too_large(await project.post("/v1/users", content=raw, headers=JSON))
    assert (await project.get("/v1/users/u_big")).status_code == 404
    assert body(await project.get("/v1/users"))["data"] == []


async def test_a_body_of_exactly_the_limit_is_accepted(project: Project) -> None:
    r = await project.post("/v1/users", content=padded(b'{"id": "u_pad"}', LIMIT), headers=JSON)
    assert r.status_code == 201, r.text
    assert body(r)["id"] == "u_pad"


async def test_a_chunked_body_over_the_limit_is_413_without_reading_the_rest(
    project: Project,
) -> None:
    total = 50 * LIMIT
    sent = 0

    async def stream() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        nonlocal sent
        while sent < total:
            sent += CHUNK
            yield b" " * CHUNK

    r = await project.post("/v1/users", content=stream(), headers=JSON)
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_too_large(r)
    # Reading stopped at the first chunk past the limit.
    assert sent == LIMIT + CHUNK
    assert body(await project.get("/v1/users"))["data"] == []


async def test_a_chunked_body_within_the_limit_is_processed(project: Project) -> None:
    raw = json.dumps({"id": "u_chunked", "metadata": {"note": "x" * 5000}}).encode()

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    r = await project.post("/v1/users", content=stream(), headers=JSON)
    assert r.status_code == 201, r.text
    assert body(await project.get("/v1/users/u_chunked"))["metadata"] == {"note": "x" * 5000}


async def test_the_limit_is_the_max_body_bytes_setting(settings: Settings, app: FastAPI) -> None:
    small = create_app(
        settings.model_copy(update={"api": settings.api.model_copy(update={"max_body_bytes": 64})})
    )
    small.state.db = app.state.db  # share the running engine; lifespan is not needed here
    transport = httpx.ASGITransport(app=small)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        project = await create_project(c)
        r = await project.post("/v1/users", content=padded(b'{"id": "u"}', 65), headers=JSON)
        assert r.status_code == 413, r.text
        r = await project.post("/v1/users", content=padded(b'{"id": "u"}', 64), headers=JSON)
        assert r.status_code == 201, r.text


def test_the_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITD_API__MAX_BODY_BYTES", "2048")
    assert Settings().api.max_body_bytes == 2048
    assert ApiSettings().max_body_bytes == LIMIT


def test_every_api_operation_documents_the_413() -> None:
    spec = json.loads(openapi_document())
    for path, ops in spec["paths"].items():
        if path.startswith("/v1/"):
            for method, op in ops.items():
                assert "413" in op["responses"], (method, path)


# --- over a real socket (uvicorn) -----------------------------------------------------------


async def _connect(live_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(live_url)
    assert url.hostname is not None
    assert url.port is not None
    return await asyncio.open_connection(url.hostname, url.port)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 60)


async def test_a_server_refuses_a_declared_50_MB_body_without_waiting_for_it(
    live_url: str,
) -> None:
    reader, writer = await _connect(live_url)
    try:
        writer.write(
            b"POST /v1/usage HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\n\r\n"
        )
        await writer.drain()
        # Not a byte of the body is sent: the answer comes anyway, before authentication.
        head, payload = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert json.loads(payload)["code"] == "payload_too_large"
    finally:
        writer.close()


async def test_a_server_answers_a_streamed_oversized_body_and_keeps_the_connection(
    live_url: str,
) -> None:
    """The client streams 50 MiB chunked while reading: it gets its 413, and once its body is
    over, the same connection serves the next request (the rest was discarded, not kept)."""
    reader, writer = await _connect(live_url)
    writer.write(
        b"POST /v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    async def pump() -> None:
        chunk = b"%x\r\n" % CHUNK + b" " * CHUNK + b"\r\n"
        for _ in range(50 * LIMIT // CHUNK):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    sender = asyncio.create_task(pump())
    try:
        head, payload = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert json.loads(payload)["code"] == "payload_too_large"
        await asyncio.wait_for(sender, 120)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head, _ = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 "), head
    finally:
        sender.cancel()
        writer.close()


async def test_concurrent_unauthenticated_50_MB_bodies_are_413_and_never_buffered(
    live_url: str,
) -> None:
    """The issue's attack: 8 clients at once, each sending 50 MiB without credentials (half
    with a Content-Length, half chunked). Buffering them would add 400 MiB to the peak
    memory of this process (the server runs in it); discarding them adds next to nothing."""
    size = 50 * LIMIT
    piece = b" " * CHUNK  # one buffer, sent again and again: the clients allocate nothing

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(size // CHUNK):
            yield piece

    async def attack(c: httpx.AsyncClient, declared: bool) -> int:
        headers = {**JSON, **({"Content-Length": str(size)} if declared else {})}
        r = await c.post("/v1/usage", content=stream(), headers=headers)
        assert r.json()["code"] == "payload_too_large"
        return r.status_code

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    async with httpx.AsyncClient(base_url=live_url, timeout=120) as c:
        statuses = await asyncio.gather(*(attack(c, i % 2 == 0) for i in range(8)))
    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert statuses == [413] * 8
    assert peak_growth_mib < 100, peak_growth_mib
