"""Provider accounts: upsert, masked reads, delete, scopes, tenants, webhook secret rotation,
secrets encrypted at rest, and `creditd rotate-secrets`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from app import cli
from app.core.clock import utcnow
from app.core.secrets import SecretBox, SecretUnreadable, parse_keys
from app.core.settings import Settings, get_settings
from app.db.session import Database
from app.integrations.base import ProviderName
from app.providers import service as providers
from app.providers.exceptions import ProviderNotConfigured
from tests.conftest import Project

SK = "sk_test_51HxQ2eLkdIwHu7ix0123456789abcdefGHIJ"
RK_LIVE = "rk_live_51HxQ2eLkdIwHu7ixZYXWVUTSRQPonmlk"
WHSEC = "whsec_4b8c1d2e3f405162738495a6b7c8d9e0"
WHSEC_NEW = "whsec_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
RZP_KEY = "rzp_test_1DP5mmOlF5G5ag"
RZP_SECRET = "thisisasecretkeysecret24"
RZP_HOOK = "my-razorpay-webhook-secret"


def stripe_body(**extra: Any) -> dict[str, Any]:
    return {"secret_key": SK, "webhook_secret": WHSEC, **extra}


def razorpay_body(**extra: Any) -> dict[str, Any]:
    return {"key_id": RZP_KEY, "key_secret": RZP_SECRET, "webhook_secret": RZP_HOOK, **extra}


async def put(project: Project, provider: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = await project.put(f"/v1/providers/{provider}", payload)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    """A box with the app's keys (the development key in the test data dir)."""
    return SecretBox.from_settings(settings)


async def secrets_at(
    db: Database,
    project: Project,
    box: SecretBox,
    now: datetime,
    provider: ProviderName = "stripe",
) -> list[str]:
    async with db.transaction() as session:
        return await providers.webhook_secrets(
            session, uuid.UUID(project.id), provider, box=box, now=now
        )


async def stored_row(db: Database, project: Project, provider: str) -> dict[str, Any]:
    async with db.transaction() as session:
        row = await session.execute(
            text("SELECT * FROM provider_accounts WHERE project_id = :p AND provider = :v"),
            {"p": project.id, "v": provider},
        )
        return dict(row.mappings().one())


# --- the API -----------------------------------------------------------------------------------


async def test_put_stripe_answers_the_account_with_its_secrets_masked(project: Project) -> None:
    account = await put(project, "stripe", stripe_body())
    assert account["provider"] == "stripe"
    assert account["key_id"] is None
    assert account["secret_key"] == "sk_test_…GHIJ"
    assert account["webhook_secret"] == "whsec_…d9e0"
    assert account["livemode"] is False
    assert account["previous_webhook_secret_expires_at"] is None
    assert account["created_at"] == account["updated_at"]


async def test_put_razorpay_shows_the_key_id_and_masks_the_secrets(project: Project) -> None:
    account = await put(project, "razorpay", razorpay_body())
    assert account["provider"] == "razorpay"
    assert account["key_id"] == RZP_KEY
    assert account["secret_key"] == "…et24"
    assert account["webhook_secret"] == "…cret"
    assert account["livemode"] is False
    live = await put(project, "razorpay", razorpay_body(key_id="rzp_live_1DP5mmOlF5G5ag"))
    assert live["livemode"] is True


async def test_live_and_restricted_stripe_keys_are_accepted(project: Project) -> None:
    account = await put(project, "stripe", stripe_body(secret_key=RK_LIVE))
    assert account["secret_key"] == "rk_live_…nmlk"
    assert account["livemode"] is True


async def test_a_short_secret_shows_no_characters_at_all(project: Project) -> None:
    account = await put(project, "razorpay", razorpay_body(webhook_secret="short-12"))
    assert account["webhook_secret"] == "…"


async def test_list_shows_every_configured_provider_as_one_page(project: Project) -> None:
    assert (await project.get("/v1/providers")).json() == {
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
    stripe = await put(project, "stripe", stripe_body())
    razorpay = await put(project, "razorpay", razorpay_body())
    r = await project.get("/v1/providers")
    assert r.status_code == 200
    assert r.json() == {"data": [razorpay, stripe], "has_more": False, "next_cursor": None}


async def test_put_again_replaces_the_account(project: Project) -> None:
    first = await put(project, "stripe", stripe_body())
    second = await put(project, "stripe", stripe_body(secret_key=RK_LIVE, webhook_secret=WHSEC))
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]
    assert second["secret_key"] == "rk_live_…nmlk"
    assert len((await project.get("/v1/providers")).json()["data"]) == 1


async def test_delete_forgets_the_account(project: Project, db: Database, box: SecretBox) -> None:
    await put(project, "stripe", stripe_body())
    r = await project.delete("/v1/providers/stripe")
    assert r.status_code == 204
    assert (await project.get("/v1/providers")).json()["data"] == []
    assert await secrets_at(db, project, box, utcnow()) == []


@pytest.mark.parametrize("provider", ["stripe", "razorpay", "paypal"])
async def test_delete_of_an_unconfigured_provider_is_404(project: Project, provider: str) -> None:
    r = await project.delete(f"/v1/providers/{provider}")
    assert r.status_code == 404
    assert r.json()["code"] == "provider_not_found"


@pytest.mark.parametrize(
    ("provider", "payload"),
    [
        ("stripe", stripe_body(secret_key="pk_test_51HxQ2eLkdIwHu7ix")),  # publishable key
        ("stripe", stripe_body(secret_key="sk_test_with space")),
        ("stripe", stripe_body(secret_key="sk_" + "a" * 300)),
        ("stripe", stripe_body(secret_key="sk_a")),
        ("stripe", stripe_body(webhook_secret="4b8c1d2e3f405162738495a6")),  # no whsec_
        ("stripe", stripe_body(webhook_secret="whsec_abc\n")),
        ("stripe", {"secret_key": SK}),
        ("stripe", stripe_body(key_id=RZP_KEY)),
        ("stripe", stripe_body(webhook_secret_grace_seconds=7 * 86400 + 1)),
        ("stripe", stripe_body(webhook_secret_grace_seconds=-1)),
        ("razorpay", razorpay_body(key_id="key_1DP5mmOlF5G5ag")),
        ("razorpay", razorpay_body(key_secret="short")),
        ("razorpay", razorpay_body(webhook_secret="with a space")),
        ("razorpay", razorpay_body(webhook_secret="")),
        ("razorpay", {"key_id": RZP_KEY, "key_secret": RZP_SECRET}),
    ],
)
async def test_malformed_credentials_are_422_and_not_echoed(
    project: Project, provider: str, payload: dict[str, Any]
) -> None:
    r = await project.put(f"/v1/providers/{provider}", payload)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"
    for value in payload.values():
        if isinstance(value, str) and len(value) >= 8:
            assert value.strip() not in r.text
    assert (await project.get("/v1/providers")).json()["data"] == []


@pytest.mark.parametrize("scopes", [["write"], ["read"], ["usage"], ["write", "read"]])
async def test_only_admin_keys_manage_providers(project: Project, scopes: list[str]) -> None:
    await put(project, "stripe", stripe_body())
    r = await project.post("/v1/api-keys", {"name": "k", "scopes": scopes})
    assert r.status_code == 201, r.text
    key = Project(id=project.id, key=r.json()["key"], client=project.client)
    for response in (
        await key.put("/v1/providers/stripe", stripe_body()),
        await key.put("/v1/providers/razorpay", razorpay_body()),
        await key.get("/v1/providers"),
        await key.delete("/v1/providers/stripe"),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "insufficient_scope"
    assert len((await project.get("/v1/providers")).json()["data"]) == 1


async def test_another_projects_account_is_invisible(
    project: Project, other_project: Project, db: Database, box: SecretBox
) -> None:
    await put(project, "stripe", stripe_body())
    assert (await other_project.get("/v1/providers")).json()["data"] == []
    r = await other_project.delete("/v1/providers/stripe")
    assert r.status_code == 404
    assert r.json()["code"] == "provider_not_found"
    assert await secrets_at(db, other_project, box, utcnow()) == []
    async with db.transaction() as session:
        with pytest.raises(ProviderNotConfigured):
            await providers.credentials(
                session, uuid.UUID(other_project.id), "stripe", settings=Settings().payments,
                box=box,
            )  # fmt: skip
    # Its own PUT makes its own account; the first project's is unchanged.
    await put(other_project, "stripe", stripe_body(secret_key=RK_LIVE))
    [mine] = (await project.get("/v1/providers")).json()["data"]
    assert mine["secret_key"] == "sk_test_…GHIJ"


# --- secrets at rest ---------------------------------------------------------------------------


async def test_secrets_are_stored_encrypted_and_never_shown_or_logged(
    project: Project, db: Database, box: SecretBox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [
        await project.put("/v1/providers/stripe", stripe_body()),
        await project.put("/v1/providers/razorpay", razorpay_body()),
        await project.put("/v1/providers/stripe", stripe_body(webhook_secret=WHSEC_NEW)),
        await project.get("/v1/providers"),
    ]
    shown = "".join(r.text for r in responses) + caplog.text
    stored = {**await stored_row(db, project, "stripe")}
    razorpay = await stored_row(db, project, "razorpay")
    at_rest = repr(stored) + repr(razorpay)
    for secret in (SK, WHSEC, WHSEC_NEW, RZP_SECRET, RZP_HOOK):
        assert secret not in shown
        assert secret not in at_rest
    # ... yet they are all there, under the key.
    assert SK in box.decrypt(stored["credentials_ciphertext"])
    assert box.decrypt(stored["webhook_secret_ciphertext"]) == WHSEC_NEW
    assert box.decrypt(stored["previous_webhook_secret_ciphertext"]) == WHSEC
    assert RZP_SECRET in box.decrypt(razorpay["credentials_ciphertext"])


async def test_credentials_are_decrypted_with_the_configured_api_base(
    project: Project, db: Database, box: SecretBox
) -> None:
    await put(project, "stripe", stripe_body())
    await put(project, "razorpay", razorpay_body())
    payments = Settings(
        payments={"stripe_api_base": "http://127.0.0.1:1/s", "razorpay_api_base": "http://r"}
    ).payments
    async with db.transaction() as session:
        stripe = await providers.credentials(
            session, uuid.UUID(project.id), "stripe", settings=payments, box=box
        )
        razorpay = await providers.credentials(
            session, uuid.UUID(project.id), "razorpay", settings=payments, box=box
        )
    assert (stripe.provider, stripe.secret_key, stripe.key_id, stripe.api_base) == (
        "stripe", SK, None, "http://127.0.0.1:1/s",
    )  # fmt: skip
    assert (razorpay.provider, razorpay.secret_key, razorpay.key_id, razorpay.api_base) == (
        "razorpay", RZP_SECRET, RZP_KEY, "http://r",
    )  # fmt: skip


async def test_credentials_of_an_unconfigured_provider_are_a_409_conflict(
    project: Project, db: Database, box: SecretBox
) -> None:
    async with db.transaction() as session:
        with pytest.raises(ProviderNotConfigured) as raised:
            await providers.credentials(
                session, uuid.UUID(project.id), "razorpay", settings=Settings().payments, box=box
            )
    assert (raised.value.status, raised.value.slug) == (409, "provider_not_configured")


# --- webhook secret rotation -------------------------------------------------------------------


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_replaced_webhook_secret_verifies_until_its_grace_ends(
    project: Project, db: Database, box: SecretBox
) -> None:
    await put(project, "stripe", stripe_body())
    before = utcnow()
    rotated = await put(project, "stripe", stripe_body(webhook_secret=WHSEC_NEW))
    ends = _at(rotated["previous_webhook_secret_expires_at"])
    assert timedelta(hours=24) <= ends - before <= timedelta(hours=24, minutes=1)

    assert await secrets_at(db, project, box, ends - timedelta(seconds=1)) == [WHSEC_NEW, WHSEC]
    assert await secrets_at(db, project, box, ends) == [WHSEC_NEW]
    assert await secrets_at(db, project, box, ends + timedelta(days=1)) == [WHSEC_NEW]


async def test_the_grace_can_be_chosen_per_rotation(
    project: Project, db: Database, box: SecretBox
) -> None:
    await put(project, "razorpay", razorpay_body())
    before = utcnow()
    body = razorpay_body(webhook_secret="new-secret-123", webhook_secret_grace_seconds=60)
    rotated = await put(project, "razorpay", body)
    ends = _at(rotated["previous_webhook_secret_expires_at"])
    assert timedelta(seconds=60) <= ends - before <= timedelta(seconds=90)
    now = ends - timedelta(seconds=30)
    assert await secrets_at(db, project, box, now, "razorpay") == ["new-secret-123", RZP_HOOK]
    assert await secrets_at(db, project, box, ends, "razorpay") == ["new-secret-123"]


async def test_a_grace_of_zero_retires_the_old_secret_at_once(
    project: Project, db: Database, box: SecretBox
) -> None:
    await put(project, "stripe", stripe_body())
    rotated = await put(
        project, "stripe", stripe_body(webhook_secret=WHSEC_NEW, webhook_secret_grace_seconds=0)
    )
    assert rotated["previous_webhook_secret_expires_at"] is None
    assert await secrets_at(db, project, box, utcnow()) == [WHSEC_NEW]


async def test_the_same_webhook_secret_again_keeps_the_running_grace(
    project: Project, db: Database, box: SecretBox
) -> None:
    await put(project, "stripe", stripe_body())
    rotated = await put(project, "stripe", stripe_body(webhook_secret=WHSEC_NEW))
    again = await put(project, "stripe", stripe_body(secret_key=RK_LIVE, webhook_secret=WHSEC_NEW))
    assert (
        again["previous_webhook_secret_expires_at"] == rotated["previous_webhook_secret_expires_at"]
    )
    now = utcnow()
    assert await secrets_at(db, project, box, now) == [WHSEC_NEW, WHSEC]


async def test_a_second_rotation_retires_the_first_secret(
    project: Project, db: Database, box: SecretBox
) -> None:
    await put(project, "stripe", stripe_body())
    await put(project, "stripe", stripe_body(webhook_secret=WHSEC_NEW))
    third = "whsec_third0000000000000000000000"
    await put(project, "stripe", stripe_body(webhook_secret=third))
    now = utcnow()
    assert await secrets_at(db, project, box, now) == [third, WHSEC_NEW]


async def test_no_account_means_no_webhook_secret(
    project: Project, db: Database, box: SecretBox
) -> None:
    assert await secrets_at(db, project, box, utcnow(), "razorpay") == []


# --- creditd rotate-secrets --------------------------------------------------------------------


def _current_key(settings: Settings) -> str:
    return (settings.data_dir / "secrets.key").read_text().strip()


async def _run_cli(monkeypatch: pytest.MonkeyPatch, database_url: str, keys: str) -> int:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CREDITD_ENV", "test")
    monkeypatch.setenv("CREDITD_PAYMENTS__SECRETS_KEY", keys)
    get_settings.cache_clear()
    try:
        # In a thread: the command runs its own event loop, as from a shell.
        return await asyncio.to_thread(cli.main, ["rotate-secrets"])
    finally:
        get_settings.cache_clear()


async def _encrypt_row_with(db: Database, project: Project, old: SecretBox) -> None:
    """Make the project's stripe row look written before the current key existed."""
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE provider_accounts SET credentials_ciphertext = :c,"
                " webhook_secret_ciphertext = :w WHERE project_id = :p AND provider = 'stripe'"
            ),
            {
                "c": old.encrypt('{"secret_key": "' + SK + '"}'),
                "w": old.encrypt(WHSEC),
                "p": project.id,
            },
        )


async def test_rotate_secrets_reencrypts_everything_with_the_first_key(
    project: Project,
    db: Database,
    box: SecretBox,
    settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await put(project, "stripe", stripe_body())
    old_key = Fernet.generate_key().decode()
    await _encrypt_row_with(db, project, SecretBox(parse_keys(old_key)))
    with pytest.raises(SecretUnreadable):
        await secrets_at(db, project, box, utcnow())

    code = await _run_cli(monkeypatch, database_url, f"{_current_key(settings)},{old_key}")

    assert code == 0
    out = capsys.readouterr().out
    count = int(out.split("re-encrypted the secrets of ")[1].split()[0])
    assert count >= 1
    # The current key alone reads it now: the old one can be dropped.
    assert await secrets_at(db, project, box, utcnow()) == [WHSEC]
    row = await stored_row(db, project, "stripe")
    with pytest.raises(SecretUnreadable):
        SecretBox(parse_keys(old_key)).decrypt(row["credentials_ciphertext"])


async def test_rotate_secrets_changes_nothing_when_a_secret_is_unreadable(
    project: Project,
    db: Database,
    box: SecretBox,
    settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await put(project, "stripe", stripe_body())
    lost = SecretBox(parse_keys(Fernet.generate_key().decode()))
    await _encrypt_row_with(db, project, lost)
    before = await stored_row(db, project, "stripe")
    try:
        code = await _run_cli(monkeypatch, database_url, _current_key(settings))
        assert code == 1
        assert project.id in capsys.readouterr().err
        assert await stored_row(db, project, "stripe") == before
    finally:  # leave no unreadable row behind for later rotations
        assert (await project.delete("/v1/providers/stripe")).status_code == 204
