"""Outbound webhook endpoints: registration, secrets, test events, attempts, redelivery.

Decisions (also in the OpenAPI descriptions):
- A project has at most ``MAX_ENDPOINTS`` endpoints (409 ``webhook_endpoint_limit``), counted
  under a per-project advisory lock, so concurrent creations cannot pass it.
- URLs are checked when written (``check_url``): what can be known without DNS. The host is
  resolved and every address checked again at each delivery (``app/webhooks/sender.py``).
- Secrets are stored only as Fernet tokens (``app/core/secrets.py``) and shown only in the
  answers of create and rotate. A rotation keeps the replaced secret signing until now + the
  grace (the request's, else ``webhooks.secret_grace_seconds``); a second rotation within it
  drops the oldest secret.
- Disabling (PATCH ``enabled: false``) sets ``disabled_reason`` ``manual`` and cancels the
  pending deliveries; enabling clears the reason and the failure run. A URL change also
  clears the failure run (it belonged to the old URL).
- A test event is a ``webhook.test`` event written with ``fanout_xid`` NULL, plus one pending
  delivery for the endpoint: the fan-out never offers it to the other endpoints.
- Redelivery without ``endpoint_id`` goes to every enabled endpoint subscribed to the event's
  type (none: an empty list, 202); a ``webhook.test`` event only goes back to the endpoints it
  was sent to. With ``endpoint_id`` that endpoint gets it, subscribed or not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.freeform import require_freeform
from app.core.ids import uuid7
from app.core.secrets import SecretBox, SecretUnreadable
from app.core.settings import WebhookSettings
from app.db.models import Event, WebhookAttempt, WebhookEndpoint
from app.events import catalogue
from app.events import service as events
from app.events.schemas import DeliveryStatus
from app.webhooks import repository as repo
from app.webhooks import signing, ssrf
from app.webhooks.exceptions import (
    InvalidWebhookUrl,
    WebhookEndpointDisabled,
    WebhookEndpointLimit,
    WebhookEndpointNotFound,
)
from app.webhooks.schemas import (
    RedeliverOut,
    RedeliveryOut,
    WebhookAttemptOut,
    WebhookEndpointCreate,
    WebhookEndpointOut,
    WebhookEndpointPatch,
    WebhookEndpointWithSecret,
)

MAX_ENDPOINTS = 50
TEST_EVENT = "webhook.test"
TEST_MESSAGE = "A test event sent from creditd: this endpoint receives its events."

# --- URLs --------------------------------------------------------------------------------------

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
# What inet_aton might read as IPv4 ("127.1", "0x7f000001", "2130706433"): resolvers do.
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$")


def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, in any form a resolver would read, else None."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    if _LEGACY_IPV4.match(host):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))  # parsing only, no lookup
    return None


def _ascii_host(host: str) -> str:
    try:
        name = host.encode("idna").decode("ascii")  # the stdlib's IDNA 2003: enough to check
    except UnicodeError:
        raise InvalidWebhookUrl(f"the host '{host}' is not a valid host name") from None
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidWebhookUrl(f"the host '{host}' is not a valid host name")
    return name


def check_url(url: str, settings: WebhookSettings) -> str:
    """``url`` if creditd may call it, else 422 ``invalid_webhook_url`` saying why."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidWebhookUrl("the URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced or invalid [IPv6] host
        raise InvalidWebhookUrl("the URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise InvalidWebhookUrl("the URL must be absolute: https://host/path")
    if scheme == "http" and not settings.allow_http:
        raise InvalidWebhookUrl("the URL must use https (this server does not allow http)")
    if "@" in parts.netloc:
        raise InvalidWebhookUrl("the URL must not contain a user name or password")
    try:
        port = parts.port
    except ValueError:
        raise InvalidWebhookUrl("the URL's port is not a number from 1 to 65535") from None
    if port == 0:
        raise InvalidWebhookUrl("the URL's port is not a number from 1 to 65535")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidWebhookUrl("the URL has no host")
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    ip = _ip_of(host)
    if bracketed and not isinstance(ip, ipaddress.IPv6Address):
        raise InvalidWebhookUrl(f"the host '[{host}]' is not an IPv6 address")
    if ip is None:
        # The name as resolvers get it: full-width digits become an address (U+FF11 is "1").
        name = _ascii_host(host).rstrip(".")
        ip = _ip_of(name)
        local = name == "localhost" or name.endswith(".localhost")
        if ip is None and local and not settings.allow_private_targets:
            raise InvalidWebhookUrl("the URL's host is localhost: not a public target")
    if ip is not None and not settings.allow_private_targets:
        why = ssrf.forbidden(str(ip))
        if why is not None:
            raise InvalidWebhookUrl(f"the URL's host {ip} is not a public target ({why})")
    return url


# --- endpoints ---------------------------------------------------------------------------------


def _previous_expires_at(endpoint: WebhookEndpoint, now: datetime) -> datetime | None:
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_ciphertext is None or expires is None or expires <= now:
        return None
    return expires


def view(endpoint: WebhookEndpoint, now: datetime | None = None) -> WebhookEndpointOut:
    return WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.event_types),
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        failing_since=endpoint.failing_since,
        previous_secret_expires_at=_previous_expires_at(endpoint, now or utcnow()),
        metadata=endpoint.metadata_,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def _with_secret(
    endpoint: WebhookEndpoint, secret: str, now: datetime
) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(**view(endpoint, now).model_dump(), secret=secret)


def signing_secrets(endpoint: WebhookEndpoint, box: SecretBox, now: datetime) -> list[str]:
    """The secrets that sign a request to the endpoint now: the current one, then the
    replaced one while it is within its grace (until ``previous_secret_expires_at``)."""
    secrets = [box.decrypt(endpoint.secret_ciphertext)]
    if _previous_expires_at(endpoint, now) is not None:
        assert endpoint.previous_secret_ciphertext is not None
        with contextlib.suppress(SecretUnreadable):  # the current one still signs
            secrets.append(box.decrypt(endpoint.previous_secret_ciphertext))
    return secrets


async def get(
    session: AsyncSession,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> WebhookEndpoint:
    endpoint = await repo.get_endpoint(session, project_id, endpoint_id, for_update=for_update)
    if endpoint is None:
        raise WebhookEndpointNotFound()
    return endpoint


async def create(
    session: AsyncSession,
    project_id: uuid.UUID,
    body: WebhookEndpointCreate,
    *,
    settings: WebhookSettings,
    box: SecretBox,
) -> WebhookEndpointWithSecret:
    url = check_url(body.url, settings)
    await repo.lock_project_endpoints(session, project_id)
    if await repo.count_endpoints(session, project_id) >= MAX_ENDPOINTS:
        raise WebhookEndpointLimit(
            f"A project may have at most {MAX_ENDPOINTS} webhook endpoints: delete one first."
        )
    secret = signing.new_secret()
    endpoint = await repo.insert_endpoint(
        session,
        {
            "id": uuid7(),
            "project_id": project_id,
            "url": url,
            "description": body.description,
            "event_types": body.events,
            "enabled": body.enabled,
            "disabled_reason": None if body.enabled else "manual",
            "secret_ciphertext": box.encrypt(secret),
            "metadata_": body.metadata,
        },
    )
    return _with_secret(endpoint, secret, utcnow())


async def list_endpoints(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[WebhookEndpointOut]:
    now = utcnow()
    rows = await repo.list_endpoints(session, project_id, limit=limit, after=after)
    return [view(e, now) for e in rows]


async def update(
    session: AsyncSession,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    body: WebhookEndpointPatch,
    *,
    settings: WebhookSettings,
) -> WebhookEndpointOut:
    # Locked: an enable racing a disable (or the dispatcher disabling it) ends in one state.
    current = await get(session, project_id, endpoint_id, for_update=True)
    sent = body.model_fields_set
    values: dict[str, Any] = {}
    if "url" in sent and body.url is not None:
        values["url"] = check_url(body.url, settings)
        if body.url != current.url:
            values["failing_since"] = None
    if "events" in sent and body.events is not None:
        values["event_types"] = body.events
    if "description" in sent:
        values["description"] = body.description
    if body.enabled is True and not current.enabled:
        values.update(enabled=True, disabled_reason=None, failing_since=None)
    elif body.enabled is False and current.enabled:
        # Only the endpoint: its pending deliveries (maybe millions) are canceled by the
        # dispatcher in bounded batches; until then no claim takes them and they count as
        # canceled (``delivery_statuses``).
        values.update(enabled=False, disabled_reason="manual")
    updated = await repo.update_endpoint(
        session, project_id, endpoint_id, values, metadata_changes=body.metadata
    )
    if body.metadata and any(v is not None for v in body.metadata.values()):
        # Over the limits: the error rolls the request's transaction back, merge included.
        what = "metadata, merged into the endpoint's,"
        require_freeform(updated.metadata_, what=what, loc=("body", "metadata"))
    return view(updated)


async def delete(session: AsyncSession, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint with its deliveries and attempts."""
    if not await repo.delete_endpoint(session, project_id, endpoint_id):
        raise WebhookEndpointNotFound()


async def rotate_secret(
    session: AsyncSession,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    grace_seconds: int | None,
    settings: WebhookSettings,
    box: SecretBox,
) -> WebhookEndpointWithSecret:
    # Locked: two rotations at once must not both retire the same secret.
    current = await get(session, project_id, endpoint_id, for_update=True)
    now = utcnow()
    grace = settings.secret_grace_seconds if grace_seconds is None else grace_seconds
    keep = grace > 0
    secret = signing.new_secret()
    updated = await repo.update_endpoint(
        session,
        project_id,
        endpoint_id,
        {
            "secret_ciphertext": box.encrypt(secret),
            "previous_secret_ciphertext": current.secret_ciphertext if keep else None,
            "previous_secret_expires_at": now + timedelta(seconds=grace) if keep else None,
        },
    )
    return _with_secret(updated, secret, now)


async def send_test(session: AsyncSession, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> Event:
    """Write a ``webhook.test`` event owed to this endpoint only, due now."""
    endpoint = await get(session, project_id, endpoint_id)
    if not endpoint.enabled:
        raise WebhookEndpointDisabled("Enable the endpoint first: PATCH it with enabled: true.")
    event = await repo.insert_aimed_event(
        session,
        project_id=project_id,
        event_id=uuid7(),
        type=TEST_EVENT,
        data={"endpoint_id": str(endpoint_id), "message": TEST_MESSAGE},
    )
    # Re-checked under a share lock: a disable committed since the read above wins.
    if not await repo.lock_enabled(session, project_id, [endpoint_id]):
        raise WebhookEndpointDisabled("Enable the endpoint first: PATCH it with enabled: true.")
    await repo.upsert_pending_deliveries(session, project_id, event.id, [endpoint_id], [uuid7()])
    return event


async def list_attempts(
    session: AsyncSession,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
    event_id: uuid.UUID | None,
) -> list[WebhookAttemptOut]:
    await get(session, project_id, endpoint_id)
    rows = await repo.list_attempts(
        session, project_id, endpoint_id, limit=limit, before=before, event_id=event_id
    )
    return [_attempt_out(a, event_type) for a, event_type in rows]


def _attempt_out(attempt: WebhookAttempt, event_type: str) -> WebhookAttemptOut:
    return WebhookAttemptOut(
        id=attempt.id,
        delivery_id=attempt.delivery_id,
        event_id=attempt.event_id,
        event_type=event_type,
        attempt=attempt.attempt,
        status_code=attempt.status_code,
        latency_ms=attempt.latency_ms,
        response_excerpt=attempt.response_excerpt,
        error=attempt.error,
        succeeded=attempt.succeeded,
        next_attempt_at=attempt.next_attempt_at,
        created_at=attempt.created_at,
    )


# --- redelivery and delivery status ------------------------------------------------------------


async def redeliver(
    session: AsyncSession,
    project_id: uuid.UUID,
    event_id: uuid.UUID,
    *,
    endpoint_id: uuid.UUID | None,
) -> RedeliverOut:
    """Make the event's deliveries pending again (or create them), due now, attempts 0."""
    # Locked against the retention job: it skips a locked event, and never deletes one whose
    # delivery this makes pending.
    event = await events.get(session, project_id, event_id, key_share=True)
    if endpoint_id is not None:
        endpoint = await get(session, project_id, endpoint_id)
        if not endpoint.enabled:
            raise WebhookEndpointDisabled(
                "The endpoint is disabled: enable it (PATCH enabled: true) to redeliver to it."
            )
        targets = [endpoint]
    elif event.type == TEST_EVENT:
        targets = await repo.endpoints_with_delivery(session, project_id, event_id)
    else:
        targets = [
            e
            for e in await repo.all_endpoints(session, project_id)
            if catalogue.subscribed(list(e.event_types), event.type)
        ]
    # Re-checked under a share lock: a disable committing meanwhile is waited for and wins.
    ids = await repo.lock_enabled(session, project_id, [e.id for e in targets if e.enabled])
    if endpoint_id is not None and not ids:
        raise WebhookEndpointDisabled(
            "The endpoint is disabled: enable it (PATCH enabled: true) to redeliver to it."
        )
    deliveries = await repo.upsert_pending_deliveries(
        session, project_id, event_id, ids, [uuid7() for _ in ids]
    )
    return RedeliverOut(
        event_id=event_id,
        deliveries=[
            RedeliveryOut(
                id=d.id,
                endpoint_id=d.endpoint_id,
                status=d.status,
                attempts=d.attempts,
                next_attempt_at=d.next_attempt_at,
            )
            for d in deliveries
        ],
    )


def _after_cursor(event: Event, cursor: tuple[int, uuid.UUID | None]) -> bool:
    """Whether the fan-out has still to reach the event (never, for events not fanned out)."""
    if event.fanout_xid is None:
        return False
    xid, last = cursor
    if event.fanout_xid != xid:
        return event.fanout_xid > xid
    return last is None or event.id > last  # UUIDs order as PostgreSQL orders them


async def delivery_statuses(
    session: AsyncSession, project_id: uuid.UUID, rows: Sequence[Event]
) -> dict[uuid.UUID, DeliveryStatus]:
    """Each event's ``delivery_status`` (see ``app.events.schemas.DELIVERY_STATUS_DOC``), in at
    most three small queries whatever the number of events (one for a project without
    endpoints): the endpoints' subscriptions, a per-event aggregate of the deliveries on
    their unique index, and the fan-out cursor."""
    if not rows:
        return {}
    endpoints = await repo.subscriptions(session, project_id)
    if not endpoints:  # deliveries go with their endpoint: there is none
        return {e.id: "not_sent" for e in rows}
    summary = await repo.delivery_summary(session, project_id, [e.id for e in rows])
    cursor = await repo.fanout_cursor(session)
    enabled = [patterns for on, patterns in endpoints if on]
    out: dict[uuid.UUID, DeliveryStatus] = {}
    for event in rows:
        pending, failed, total = summary.get(event.id, (False, False, 0))
        awaited = _after_cursor(event, cursor) and any(
            catalogue.subscribed(p, event.type) for p in enabled
        )
        if pending or awaited:
            out[event.id] = "pending"
        elif failed:
            out[event.id] = "failed"
        elif total:
            out[event.id] = "succeeded"
        else:
            out[event.id] = "not_sent"
    return out


# --- creditd rotate-secrets --------------------------------------------------------------------


async def rotate_secrets(session: AsyncSession, box: SecretBox) -> int:
    """Re-encrypt every endpoint's secrets with the box's first key (``creditd
    rotate-secrets``); a replaced secret past its grace, or unreadable, is dropped. An
    unreadable current secret stops everything (nothing is re-encrypted). Returns the count."""
    now = utcnow()
    endpoints = await repo.lock_all_endpoints(session)
    for endpoint in endpoints:
        previous = endpoint.previous_secret_ciphertext
        if previous is not None and _previous_expires_at(endpoint, now) is not None:
            try:
                previous = box.rotate(previous)
            except SecretUnreadable:
                previous = None  # it could not sign anyway (``signing_secrets`` skips it)
        else:
            previous = None  # retired: nothing signs with it any more
        try:
            await repo.set_ciphertexts(
                session,
                endpoint,
                secret=box.rotate(endpoint.secret_ciphertext),
                previous_secret=previous,
            )
        except SecretUnreadable as unreadable:
            raise SecretUnreadable(
                f"project {endpoint.project_id}, webhook endpoint {endpoint.id}: {unreadable}"
                " (nothing was re-encrypted; rotate that endpoint's secret to replace it)"
            ) from None
    return len(endpoints)
