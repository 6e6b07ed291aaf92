"""Migrations round-trip and match the models; `creditd verify` catches violations."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli import run_migrations
from app.core.settings import to_async_url
from app.db import models  # noqa: F401
from app.db.base import Base
from app.db.session import Database
from tests.conftest import Project
from tests.fixtures.database import fresh_database


def _diff(url: str) -> list[object]:
    async def run() -> list[object]:
        engine = create_async_engine(to_async_url(url))
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
        await engine.dispose()
        return list(diff)

    return asyncio.run(run())


def test_migrations_upgrade_downgrade_upgrade_and_match_models() -> None:
    with fresh_database() as (url, _):
        run_migrations(url)
        assert _diff(url) == [], "models and migrations disagree"
        run_migrations(url, "base", downgrade=True)
        run_migrations(url)
        assert _diff(url) == []


async def test_verify_cli_passes_then_fails_on_a_tampered_balance(
    project: Project, db: Database, database_url: str
) -> None:
    await project.user("u", credits=10)
    env = {**os.environ, "DATABASE_URL": database_url}
    cmd = [sys.executable, "-m", "app.cli", "verify"]
    ok = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 violation(s)" in ok.stdout

    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE accounts SET total = total + 1 WHERE id = "
                "(SELECT account_id FROM users WHERE project_id = :p AND id = 'u')"
            ),
            {"p": project.id},
        )
    try:
        bad = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
        assert bad.returncode == 1
        assert "VIOLATION total_equals_sum_of_ledger" in bad.stdout
        assert "VIOLATION grants_minus_debt_equals_total" in bad.stdout
    finally:
        async with db.transaction() as session:
            await session.execute(
                text(
                    "UPDATE accounts SET total = total - 1 WHERE id = "
                    "(SELECT account_id FROM users WHERE project_id = :p AND id = 'u')"
                ),
                {"p": project.id},
            )
