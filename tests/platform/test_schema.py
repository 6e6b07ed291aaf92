"""Migrations round-trip and match the models; `creditd verify` catches violations."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest
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


def test_migration_0008_adds_event_columns_without_rewriting_events() -> None:
    """events is the hot table: 0008 must not rewrite it (old rows keep a NULL seq, new rows
    draw one), and it keeps an ix_events_fanout_xid_id an operator built CONCURRENTLY first."""

    async def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    with fresh_database() as (url, _):
        run_migrations(url, "0007")
        project, old, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        insert = "INSERT INTO events (id, project_id, type, data) VALUES ($1, $2, 'x', '{}')"
        asyncio.run(sql(url, "INSERT INTO projects (id, name) VALUES ($1, 'p')", project))
        asyncio.run(sql(url, insert, old, project))
        # What the migration's docstring tells an operator with a large events table to run.
        asyncio.run(sql(url, "ALTER TABLE events ADD COLUMN IF NOT EXISTS fanout_xid bigint"))
        asyncio.run(
            sql(
                url,
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_events_fanout_xid_id"
                " ON events (fanout_xid, id) WHERE fanout_xid IS NOT NULL",
            )
        )
        index = "SELECT 'ix_events_fanout_xid_id'::regclass::oid AS i"
        built = asyncio.run(sql(url, index))[0]["i"]
        filenode = "SELECT pg_relation_filenode('events') AS f"
        before = asyncio.run(sql(url, filenode))[0]["f"]

        run_migrations(url, "0008")

        assert asyncio.run(sql(url, filenode))[0]["f"] == before, "events was rewritten"
        assert asyncio.run(sql(url, index))[0]["i"] == built, "the index was not kept"
        asyncio.run(sql(url, insert, new, project))
        rows = asyncio.run(sql(url, "SELECT id, seq, fanout_xid FROM events"))
        by_id = {r["id"]: r for r in rows}
        assert by_id[old]["seq"] is None  # written before 0008
        assert by_id[old]["fanout_xid"] is None
        assert by_id[new]["seq"] is not None
        assert by_id[new]["fanout_xid"] is not None
        run_migrations(url)
        assert _diff(url) == []


def test_migration_0010_keeps_prebuilt_team_indexes_and_refuses_to_drop_team_ledgers() -> None:
    """0010 keeps the partial indexes an operator built CONCURRENTLY beforehand (its
    docstring's recipe), and its downgrade refuses to run once a team exists."""

    async def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    with fresh_database() as (url, _):
        run_migrations(url, "0009")
        for table, index in (
            ("ledger_entries", "ix_ledger_entries_project_id_team_id_id"),
            ("grants", "ix_grants_project_id_team_id_id"),
        ):
            asyncio.run(sql(url, f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS team_id text"))
            asyncio.run(
                sql(
                    url,
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table}"
                    " (project_id, team_id, id) WHERE team_id IS NOT NULL",
                )
            )
        oids = "SELECT 'ix_ledger_entries_project_id_team_id_id'::regclass::oid AS i"
        built = asyncio.run(sql(url, oids))[0]["i"]
        run_migrations(url)
        assert asyncio.run(sql(url, oids))[0]["i"] == built, "the index was not kept"
        assert _diff(url) == []

        project, account = uuid.uuid4(), uuid.uuid4()
        asyncio.run(sql(url, "INSERT INTO projects (id, name) VALUES ($1, 'p')", project))
        asyncio.run(
            sql(url, "INSERT INTO accounts (id, project_id) VALUES ($1, $2)", account, project)
        )
        asyncio.run(
            sql(
                url,
                "INSERT INTO teams (project_id, id, account_id) VALUES ($1, 't', $2)",
                project,
                account,
            )
        )
        with pytest.raises(RuntimeError, match="teams exist"):
            run_migrations(url, "0009", downgrade=True)
        assert asyncio.run(sql(url, "SELECT id FROM teams"))[0]["id"] == "t"


def test_migration_0012_keeps_a_concurrent_index_and_does_not_rewrite_the_ledger() -> None:
    """ledger_entries is written by every balance change: 0012 only changes its catalogue
    (created_at's default) and keeps the export's index an operator built CONCURRENTLY."""

    async def sql(url: str, statement: str) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(statement))
        finally:
            await conn.close()

    default = (
        "SELECT column_default AS d FROM information_schema.columns"
        " WHERE table_name = 'ledger_entries' AND column_name = 'created_at'"
    )
    index = "SELECT to_regclass('ix_ledger_entries_project_id_created_at_id')::oid AS i"
    filenode = "SELECT pg_relation_filenode('ledger_entries') AS f"
    with fresh_database() as (url, _):
        run_migrations(url, "0011")
        # What the migration's docstring tells an operator with a large ledger to run.
        asyncio.run(
            sql(
                url,
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_ledger_entries_project_id_created_at_id"
                " ON ledger_entries (project_id, created_at, id)",
            )
        )
        built = asyncio.run(sql(url, index))[0]["i"]
        before = asyncio.run(sql(url, filenode))[0]["f"]

        run_migrations(url, "0012")

        assert asyncio.run(sql(url, filenode))[0]["f"] == before, "ledger_entries was rewritten"
        assert asyncio.run(sql(url, index))[0]["i"] == built, "the index was not kept"
        assert asyncio.run(sql(url, default))[0]["d"] == "clock_timestamp()"
        run_migrations(url, "0011", downgrade=True)
        assert asyncio.run(sql(url, index))[0]["i"] is None
        assert asyncio.run(sql(url, default))[0]["d"] == "now()"
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


async def test_hot_tables_storage_options(database_url: str) -> None:
    """Room for HOT updates where the hot path rewrites rows (0013); idempotency_keys, whose
    rows are written once, filled (0014) and never truncated by vacuum."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1::text[])",
            ["accounts", "usage_daily", "idempotency_keys"],
        )
    finally:
        await conn.close()
    options = {row["relname"]: sorted(row["reloptions"] or []) for row in rows}
    assert options == {
        "accounts": ["fillfactor=80"],
        "usage_daily": ["fillfactor=80"],
        "idempotency_keys": ["vacuum_truncate=false"],
    }
