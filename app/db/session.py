"""Transactions: one per request (or worker batch), owned by asyncpg, shared by the ORM session.

The engine runs in SQLAlchemy's AUTOCOMMIT mode, so SQLAlchemy never begins or commits on its
own; ``Database.transaction()`` opens a real transaction on the pooled asyncpg connection and
binds an ``AsyncSession`` to that same connection. ORM queries and the hot paths' raw
statements (``driver(session)``) therefore run in one transaction, committed on success and
rolled back on any exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.requests import Request

_DRIVER = "creditd.driver"


class Database:
    """The engine, owned by the app's lifespan or a worker."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            async with raw.transaction():
                session = AsyncSession(bind=conn, expire_on_commit=False, autoflush=False)
                session.info[_DRIVER] = raw
                try:
                    yield session
                finally:
                    await session.close()

    async def dispose(self) -> None:
        await self.engine.dispose()


def driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session's transaction, for lean hot-path statements."""
    return session.info[_DRIVER]


async def get_session(request: Request) -> AsyncSession:
    """The request's session; the transactional route class opened it and commits it."""
    session: AsyncSession = request.state.session
    return session


Session = Annotated[AsyncSession, Depends(get_session)]
