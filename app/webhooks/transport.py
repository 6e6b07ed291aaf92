"""The SSRF guard at the connect seam: an httpcore network backend that resolves, checks, connects.

httpx hands the connection pool the URL's host; ``GuardedBackend.connect_tcp`` resolves it,
checks every address with ``ssrf.forbidden`` and opens the TCP connection to a checked address
itself, so a DNS answer that changes between the check and the connect (rebinding) cannot
redirect it. TLS is untouched: httpcore wraps the returned stream with ``start_tls`` using the
URL's host as SNI and for certificate verification (httpcore ``_async/connection.py``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence

import httpcore
import httpx
import structlog
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

from app.webhooks import ssrf

log = structlog.get_logger("creditd.webhooks")

# httpcore's own alias for (level, option, value) tuples; private there, so spelled out here.
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)

# (host, port) -> the addresses to connect to, in order. Only called for names, never for IPs.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


class TargetRefused(Exception):
    """The target may not be called (SSRF guard); ``reason`` is safe to record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TargetUnresolvable(Exception):
    """The host did not resolve to any address."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to via the system resolver (getaddrinfo), deduplicated."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


class GuardedBackend(AsyncNetworkBackend):
    """Resolve through ``resolver``, refuse forbidden addresses, connect via ``connector``."""

    def __init__(
        self,
        *,
        allow_private_targets: bool,
        resolver: Resolver | None = None,
        connector: AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow_private = allow_private_targets
        self._resolver: Resolver = resolver or system_resolver
        self._connector: AsyncNetworkBackend = connector or httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses for ``host`` (raises TargetRefused if any is forbidden)."""
        literal = _literal_ip(host)
        if literal is not None:
            found = [literal]
        else:
            try:
                found = list(await self._resolver(host, port))
            except OSError as exc:  # socket.gaierror
                raise TargetUnresolvable(host) from exc
            if not found:
                raise TargetUnresolvable(host)
        if not self._allow_private:
            # Every answer, not just the one we would use: a name that resolves to a mix is
            # refused outright rather than trusted on its public half.
            for address in found:
                reason = ssrf.forbidden(address)
                if reason is not None:
                    # The address stays server-side: the recorded error is shown to the
                    # tenant, and naming it would turn delivery into an oracle on internal DNS.
                    log.debug("webhook_target_refused", host=host, address=address, reason=reason)
                    raise TargetRefused(f"the host resolves to a {reason}")
        return found

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                found = await self.addresses(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("resolving the host timed out") from exc
        # Only addresses from this one checked answer are ever used; on a fast failure (no
        # route to an IPv6 answer, refused) the next is tried, within the connect timeout.
        *others, final = found
        for address in others:
            try:
                return await self._connect(address, port, deadline, local_address, socket_options)
            except httpcore.ConnectError:
                continue
        return await self._connect(final, port, deadline, local_address, socket_options)

    async def _connect(
        self,
        address: str,
        port: int,
        deadline: float | None,
        local_address: str | None,
        socket_options: Iterable[SocketOption] | None,
    ) -> AsyncNetworkStream:
        remaining = (
            None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        )
        return await self._connector.connect_tcp(
            address,
            port,
            timeout=remaining,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        raise TargetRefused("unix sockets are never a webhook target")

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its connection pool built on a ``GuardedBackend``.

    ``AsyncHTTPTransport`` does not take a network backend, so the pool it builds is replaced
    by an identical one that does (no proxy: environment proxies could route around the guard).
    """

    def __init__(
        self,
        backend: GuardedBackend,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits,
    ) -> None:
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )
