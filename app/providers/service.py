"""A project's own Stripe and Razorpay accounts: secrets encrypted at rest, webhook secrets
rotated with a grace period.

Decisions (also in the OpenAPI descriptions):
- ``PUT`` is an upsert answering 200 with the masked account, first time or not.
- Secrets are stored only as Fernet tokens (``app/core/secrets.py``); the masked forms shown by
  ``GET`` are computed when they are written (``hints``), so reading never decrypts anything.
- A ``PUT`` with a different webhook secret keeps the old one verifying until now + the grace
  (the request's ``webhook_secret_grace_seconds``, else the server setting); 0 drops it at once.
  The same webhook secret again leaves any running grace untouched.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.secrets import SecretBox, SecretUnreadable
from app.core.security import constant_time_equals
from app.core.settings import PaymentsSettings
from app.db.models import ProviderAccount
from app.integrations.base import PROVIDERS, Credentials, ProviderName
from app.providers import repository as repo
from app.providers.exceptions import ProviderNotConfigured, ProviderNotFound
from app.providers.schemas import ProviderAccountOut, RazorpayAccountIn, StripeAccountIn

# A secret's prefix that says what it is, shown unmasked: "sk_test_", "whsec_", "rzp_live_".
_PREFIX = re.compile(r"^[a-z]{2,5}_(?:(?:test|live)_)?")
# Fewer characters than this after the prefix and the last 4 are not shown either.
_TAIL_SHOWN_FROM = 12


def mask(secret: str) -> str:
    """``sk_test_…abcd``: the secret's prefix and its last 4 characters, never more."""
    found = _PREFIX.match(secret)
    prefix = found.group(0) if found else ""
    rest = secret[len(prefix) :]
    return f"{prefix}…{rest[-4:] if len(rest) >= _TAIL_SHOWN_FROM else ''}"


async def put_stripe(
    session: AsyncSession,
    project_id: uuid.UUID,
    body: StripeAccountIn,
    *,
    settings: PaymentsSettings,
    box: SecretBox,
) -> ProviderAccountOut:
    hints = {
        "key_id": None,
        "secret_key": mask(body.secret_key),
        "livemode": body.secret_key.startswith(("sk_live_", "rk_live_")),
    }
    return await _put(
        session,
        project_id,
        "stripe",
        credentials={"secret_key": body.secret_key},
        webhook_secret=body.webhook_secret,
        grace_seconds=body.webhook_secret_grace_seconds,
        hints=hints,
        settings=settings,
        box=box,
    )


async def put_razorpay(
    session: AsyncSession,
    project_id: uuid.UUID,
    body: RazorpayAccountIn,
    *,
    settings: PaymentsSettings,
    box: SecretBox,
) -> ProviderAccountOut:
    hints = {
        "key_id": body.key_id,
        "secret_key": mask(body.key_secret),
        "livemode": body.key_id.startswith("rzp_live_"),
    }
    return await _put(
        session,
        project_id,
        "razorpay",
        credentials={"key_id": body.key_id, "key_secret": body.key_secret},
        webhook_secret=body.webhook_secret,
        grace_seconds=body.webhook_secret_grace_seconds,
        hints=hints,
        settings=settings,
        box=box,
    )


async def _put(
    session: AsyncSession,
    project_id: uuid.UUID,
    provider: ProviderName,
    *,
    credentials: dict[str, str],
    webhook_secret: str,
    grace_seconds: int | None,
    hints: dict[str, Any],
    settings: PaymentsSettings,
    box: SecretBox,
) -> ProviderAccountOut:
    now = utcnow()
    values: dict[str, Any] = {
        "credentials_ciphertext": box.encrypt(json.dumps(credentials)),
        "webhook_secret_ciphertext": box.encrypt(webhook_secret),
        "hints": {**hints, "webhook_secret": mask(webhook_secret)},
    }
    # Locked first: two PUTs at once must not both think they replaced the same old secret.
    current = await repo.get(session, project_id, provider, for_update=True)
    if current is None:
        created = await repo.insert_new(session, project_id, provider, values)
        if created is not None:
            return view(created, now)
        current = await repo.get(session, project_id, provider, for_update=True)
        assert current is not None  # the row that won the insert race, now committed
    if not _same_secret(box, current.webhook_secret_ciphertext, webhook_secret):
        grace = settings.webhook_secret_grace_seconds if grace_seconds is None else grace_seconds
        keep = grace > 0
        values["previous_webhook_secret_ciphertext"] = (
            current.webhook_secret_ciphertext if keep else None
        )
        values["previous_webhook_secret_expires_at"] = (
            now + timedelta(seconds=grace) if keep else None
        )
    return view(await repo.update(session, project_id, provider, values), now)


def _same_secret(box: SecretBox, ciphertext: str, secret: str) -> bool:
    try:
        return constant_time_equals(box.decrypt(ciphertext), secret)
    except SecretUnreadable:  # its key is gone: it could not verify anything anyway
        return False


def _previous_valid_until(account: ProviderAccount, now: datetime) -> datetime | None:
    expires = account.previous_webhook_secret_expires_at
    if account.previous_webhook_secret_ciphertext is None or expires is None or expires <= now:
        return None
    return expires


def view(account: ProviderAccount, now: datetime) -> ProviderAccountOut:
    hints = account.hints
    return ProviderAccountOut(
        provider=account.provider,
        key_id=hints.get("key_id"),
        secret_key=hints["secret_key"],
        webhook_secret=hints["webhook_secret"],
        previous_webhook_secret_expires_at=_previous_valid_until(account, now),
        livemode=bool(hints.get("livemode")),
        created_at=account.created_at,
        updated_at=account.updated_at,
    )


async def list_accounts(session: AsyncSession, project_id: uuid.UUID) -> list[ProviderAccountOut]:
    now = utcnow()
    return [view(a, now) for a in await repo.list_accounts(session, project_id)]


async def delete(session: AsyncSession, project_id: uuid.UUID, provider: str) -> None:
    """Forget the account and its secrets; its webhooks are refused from then on."""
    if provider not in PROVIDERS or not await repo.delete(session, project_id, provider):
        raise ProviderNotFound(f"No {provider} account is configured for this project.")


async def credentials(
    session: AsyncSession,
    project_id: uuid.UUID,
    provider: ProviderName,
    *,
    settings: PaymentsSettings,
    box: SecretBox,
) -> Credentials:
    """The project's decrypted API credentials, with the API base URL from settings."""
    account = await repo.get(session, project_id, provider)
    if account is None:
        raise ProviderNotConfigured(
            f"Configure {provider} first: PUT /v1/providers/{provider} with its API keys."
        )
    stored = json.loads(box.decrypt(account.credentials_ciphertext))
    if provider == "stripe":
        return Credentials(
            provider="stripe", secret_key=stored["secret_key"], api_base=settings.stripe_api_base
        )
    return Credentials(
        provider="razorpay",
        secret_key=stored["key_secret"],
        key_id=stored["key_id"],
        api_base=settings.razorpay_api_base,
    )


async def webhook_secrets(
    session: AsyncSession,
    project_id: uuid.UUID,
    provider: ProviderName,
    *,
    box: SecretBox,
    now: datetime,
) -> list[str]:
    """The secrets a webhook may be signed with: the current one first, then the replaced one
    while it is within its grace (until ``previous_webhook_secret_expires_at``, exclusive);
    [] when the provider is not configured (the caller refuses, never skips verification)."""
    account = await repo.get(session, project_id, provider)
    if account is None:
        return []
    secrets = [box.decrypt(account.webhook_secret_ciphertext)]
    if _previous_valid_until(account, now) is not None:
        assert account.previous_webhook_secret_ciphertext is not None
        # A retiring secret whose key is gone: the current one still works.
        with contextlib.suppress(SecretUnreadable):
            secrets.append(box.decrypt(account.previous_webhook_secret_ciphertext))
    return secrets


async def rotate_secrets(session: AsyncSession, box: SecretBox) -> int:
    """Re-encrypt every stored secret of every project with the box's first key (for
    ``creditd rotate-secrets``); returns the number of provider accounts."""
    now = utcnow()
    accounts = await repo.lock_all(session)
    for account in accounts:
        previous = account.previous_webhook_secret_ciphertext
        if _previous_valid_until(account, now) is None:
            previous = None  # retired: nothing verifies with it any more
        try:
            await repo.set_ciphertexts(
                session,
                account,
                credentials=box.rotate(account.credentials_ciphertext),
                webhook_secret=box.rotate(account.webhook_secret_ciphertext),
                previous_webhook_secret=None if previous is None else box.rotate(previous),
            )
        except SecretUnreadable as unreadable:
            raise SecretUnreadable(
                f"project {account.project_id}, {account.provider}: {unreadable}"
                " (nothing was re-encrypted; PUT that provider's secrets again to replace them)"
            ) from None
    return len(accounts)
