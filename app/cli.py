"""The `creditd` command: serve, worker, migrate, bootstrap, verify, openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from app.core.settings import Settings, get_settings
from app.db import embedded


def _database(settings: Settings, *, migrate: bool) -> embedded.EmbeddedServer | None:
    """Use DATABASE_URL, or start the embedded server (and migrate it: it is ours alone)."""
    server = None
    if not settings.database.url:
        server = embedded.start(settings.data_dir)
        settings.database.url = server.url()
        migrate = True
    if migrate:
        run_migrations(settings.database.url)
    return server


def run_migrations(url: str, revision: str = "head", *, downgrade: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    from app.core.paths import ALEMBIC_INI

    cfg = Config(str(ALEMBIC_INI))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logging"] = False
    if downgrade:
        command.downgrade(cfg, revision)
    else:
        command.upgrade(cfg, revision)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


async def _bootstrap(settings: Settings, name: str) -> dict[str, str]:
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.projects import service as projects

    db = Database(create_engine(settings.database, pool_size=1))
    try:
        async with db.transaction() as session:
            project, key, secret = await projects.create(session, name=name)
        return {"project_id": str(project.id), "api_key_id": str(key.id), "api_key": secret}
    finally:
        await db.dispose()


async def _demo_key(settings: Settings) -> str:
    """The demo project's key: created on first start and kept in the local data folder."""
    key_file = settings.data_dir / "demo-api-key"
    if key_file.exists():
        return key_file.read_text().strip()
    created = await _bootstrap(settings, "demo")
    key_file.write_text(created["api_key"] + "\n")
    key_file.chmod(0o600)
    return created["api_key"]


def cmd_serve(args: argparse.Namespace) -> int:
    from app import server
    from app.main import create_app

    settings = get_settings()
    _database(settings, migrate=args.migrate)
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.demo:
        key = asyncio.run(_demo_key(settings))
        shown_host = "localhost" if args.host in ("0.0.0.0", "127.0.0.1") else args.host  # noqa: S104
        base = f"http://{shown_host}:{args.port}"
        print(
            f"\n  creditd demo project ready.\n  API key: {key}\n\n"
            f"  curl -s -X POST {base}/v1/transactions/start \\\n"
            f"    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
            '    -d \'{"user_id": "u_1", "model": "gpt-4o", '
            '"provisional_tokens": {"input_tokens": 100, "output_tokens": 500}}\'\n'
            "  (price models first: PUT /v1/models/_default; see README.md)\n",
            flush=True,
        )
    if args.workers > 1:
        # Worker processes build the app from the environment, so hand them what this
        # process resolved: the database URL and whether they also run background jobs.
        os.environ["DATABASE_URL"] = settings.database.url or ""
        os.environ["CREDITD_WORKERS__IN_PROCESS"] = "false" if args.no_workers else "true"
        return server.serve_workers(args.workers, args.host, args.port)
    server.serve(create_app(settings, run_background=not args.no_workers), args.host, args.port)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.core.logging import configure_logging
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.workers.runner import run_workers

    settings = get_settings()
    configure_logging(level=settings.log.level, json_output=settings.json_logs)
    _database(settings, migrate=False)

    async def main() -> None:
        db = Database(create_engine(settings.database, pool_size=4))
        task = asyncio.create_task(run_workers(db, settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await db.dispose()

    asyncio.run(main())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    _database(settings, migrate=False)
    assert settings.database.url
    run_migrations(settings.database.url, args.revision, downgrade=args.downgrade)
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    settings = get_settings()
    _database(settings, migrate=False)
    _print(asyncio.run(_bootstrap(settings, args.name)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from app.credits.verify import verify
    from app.db.engine import create_engine
    from app.db.session import Database

    settings = get_settings()
    _database(settings, migrate=False)

    async def main() -> tuple[int, list[Any]]:
        db = Database(create_engine(settings.database, pool_size=1))
        try:
            async with db.transaction() as session:
                return await verify(session)
        finally:
            await db.dispose()

    accounts, violations = asyncio.run(main())
    for v in violations:
        print(f"VIOLATION {v.check} project={v.project_id} {v.subject}: {v.detail}")
    print(f"verified {accounts} accounts: {len(violations)} violation(s)")
    return 1 if violations else 0


def cmd_expire(args: argparse.Namespace) -> int:
    from app.core.clock import utcnow
    from app.credits import service as credits
    from app.db.engine import create_engine
    from app.db.session import Database

    settings = get_settings()
    _database(settings, migrate=False)

    async def main() -> list[Any]:
        db = Database(create_engine(settings.database, pool_size=1))
        found: list[Any] = []
        try:
            while True:
                async with db.transaction() as session:
                    batch = await credits.expire_due(
                        session, now=utcnow(), limit=100, dry_run=args.dry_run
                    )
                found.extend(batch)
                if not batch or args.dry_run:
                    return found
        finally:
            await db.dispose()

    found = asyncio.run(main())
    verb = "would expire" if args.dry_run else "expired"
    for item in found:
        print(
            f"{verb} project={item.project_id} user={item.user_id} grant={item.grant_id} "
            f"remaining={item.amount} expires_at={item.expires_at.isoformat()}"
        )
    print(f"{len(found)} grant(s) {verb}")
    return 0


def openapi_document() -> str:
    from app.core.settings import DatabaseSettings
    from app.main import create_app

    settings = Settings(database=DatabaseSettings(url="postgresql://unused/unused"))
    spec = create_app(settings).openapi()
    return json.dumps(spec, indent=2, sort_keys=False) + "\n"


def cmd_openapi(args: argparse.Namespace) -> int:
    doc = openapi_document()
    if args.output:
        Path(args.output).write_text(doc)
    else:
        sys.stdout.write(doc)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the HTTP API (and the background workers)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-workers", action="store_true", help="Do not run background jobs here")
    serve.add_argument(
        "--workers", type=int, default=1, help="HTTP worker processes (e.g. one per core)"
    )
    serve.add_argument("--migrate", action="store_true", help="Migrate DATABASE_URL first")
    serve.add_argument("--demo", action="store_true", help="Bootstrap and print a demo project")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="Run the background jobs only")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="Apply database migrations")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--downgrade", action="store_true")
    migrate.set_defaults(func=cmd_migrate)

    boot = sub.add_parser("bootstrap", help="Create a project and print its admin API key")
    boot.add_argument("--name", required=True)
    boot.set_defaults(func=cmd_bootstrap)

    ver = sub.add_parser("verify", help="Check every money invariant; non-zero exit on violation")
    ver.set_defaults(func=cmd_verify)

    expire = sub.add_parser("expire", help="Expire grants past their expiry now")
    expire.add_argument("--dry-run", action="store_true", help="Only list what would expire")
    expire.set_defaults(func=cmd_expire)

    spec = sub.add_parser("openapi", help="Print the OpenAPI document")
    spec.add_argument("--output", "-o")
    spec.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
