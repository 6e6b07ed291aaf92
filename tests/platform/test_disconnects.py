"""A client that hangs up mid-request is logged as such and counted as 499, never as a 500."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY

from tests.conftest import Project


def _count(status: str) -> float:
    labels = {"method": "POST", "route": "/v1/users", "status": status}
    return REGISTRY.get_sample_value("creditd_http_requests_total", labels) or 0.0


async def _hang_up_mid_body(url: str, key: str, extra: bytes = b"") -> None:
    """Send the head and half of the body it announces, then close the socket."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        b"POST /v1/users HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n" + extra
        + b"Content-Length: 100\r\n\r\n" + b'{"id": "gone", '
    )  # fmt: skip
    await writer.drain()
    await asyncio.sleep(0.2)  # the request is under way, waiting for the rest of the body
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("extra", [b"", b"Idempotency-Key: k-gone\r\n"], ids=["plain", "keyed"])
async def test_a_client_hanging_up_mid_body_is_logged_and_counted_as_499(
    live_project: Project, live_url: str, caplog: pytest.LogCaptureFixture, extra: bytes
) -> None:
    before = {status: _count(status) for status in ("400", "499", "500")}
    caplog.set_level(logging.INFO)
    await _hang_up_mid_body(live_url, live_project.key, extra)
    for _ in range(500):  # the server notices the hang-up on its own schedule
        if _count("499") > before["499"]:
            break
        await asyncio.sleep(0.01)
    assert _count("499") == before["499"] + 1
    assert _count("500") == before["500"]
    assert _count("400") == before["400"]
    events = [r.msg.get("event") for r in caplog.records if isinstance(r.msg, dict)]
    assert "client_disconnected" in events
    assert "unhandled_error" not in events
    assert (await live_project.get("/v1/users/gone")).status_code == 404
