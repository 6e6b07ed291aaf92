"""The async engine: asyncpg, sane timeouts, JSON that keeps decimals exact, and a pool that
never hands out a connection asyncpg knows to be closed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.core.http import render_json
from app.core.settings import DatabaseSettings, to_async_url


def _json_dumps(value: Any) -> str:
    return render_json(value).decode()


_INT64 = 2**63 - 1


def _exact_int(text: str) -> int | Decimal:
    # PostgreSQL writes jsonb numbers without exponents, so a stored 1e30 comes back as 31
    # digits: keep integers past 64 bits as Decimal, which the JSON renderer writes exactly
    # (orjson refuses such ints, and the response would be a 500).
    value = int(text)
    return value if -_INT64 <= value <= _INT64 else Decimal(text)


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_exact_int)


def _json_loads(value: str) -> Any:
    return _DECODER.decode(value)  # json.loads(value, ...) would build a decoder per value


def _discard_if_closed(
    dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """Pool checkout: a connection whose socket closed while it sat in the pool (backend
    terminated, server restarted) is replaced by a fresh one. No I/O: asyncpg saw the close
    on its own, so this costs an attribute check where ``pool_pre_ping`` costs a round trip."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("connection closed while idle in the pool")


def create_engine(settings: DatabaseSettings, *, pool_size: int | None = None) -> AsyncEngine:
    if not settings.url:
        raise RuntimeError("no database URL configured")
    engine = create_async_engine(
        to_async_url(settings.url),
        pool_size=pool_size or settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=1800,
        echo=settings.echo,
        # SQLAlchemy issues no BEGIN/COMMIT of its own: Database.transaction() owns the
        # transaction through asyncpg, so ORM statements and raw hot-path statements share it.
        isolation_level="AUTOCOMMIT",
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "server_settings": {
                "application_name": "creditd",
                "statement_timeout": str(settings.statement_timeout_ms),
                "lock_timeout": str(settings.lock_timeout_ms),
                "client_connection_check_interval": str(settings.client_check_interval_ms),
                "idle_in_transaction_session_timeout": "60000",
                "timezone": "UTC",
                # app/db/literals.py quotes for this (the default since 9.1): pinned anyway.
                "standard_conforming_strings": "on",
            },
        },
    )
    event.listen(engine.sync_engine.pool, "checkout", _discard_if_closed)
    return engine
