"""Outbound webhook endpoints through both clients: the secret shown only on create and
rotate, partial updates, errors by code, and redelivery."""

from __future__ import annotations

import base64

import pytest
from creditd_sdk import AsyncCreditd, Creditd
from creditd_sdk.errors import Conflict, NotFound, ValidationError

URL = "https://hooks.invalid/sdk"  # a reserved name: never resolves, nothing is sent


def test_create_shows_the_secret_once(client: Creditd) -> None:
    endpoint = client.webhook_endpoints.create(url=URL)
    assert endpoint.events == ["*"]
    assert endpoint.enabled is True
    assert endpoint.secret is not None
    assert len(base64.b64decode(endpoint.secret.removeprefix("whsec_"))) >= 24
    assert client.webhook_endpoints.get(endpoint.id).secret is None
    assert all(e.secret is None for e in client.webhook_endpoints.list().data)
    assert "secret" not in client.webhook_endpoints.get(endpoint.id).raw


def test_update_sends_only_the_given_fields(client: Creditd) -> None:
    endpoint = client.webhook_endpoints.create(
        url=URL, description="billing", metadata={"a": 1, "b": 2}
    )
    updated = client.webhook_endpoints.update(endpoint.id, metadata={"a": None})
    assert (updated.description, updated.metadata, updated.url) == ("billing", {"b": 2}, URL)
    cleared = client.webhook_endpoints.update(endpoint.id, description=None, enabled=False)
    assert cleared.description is None
    assert (cleared.enabled, cleared.disabled_reason) == (False, "manual")


def test_errors_carry_the_problem_code(client: Creditd) -> None:
    with pytest.raises(ValidationError) as refused:
        client.webhook_endpoints.create(url="http://hooks.invalid/x")
    assert refused.value.code == "invalid_webhook_url"
    disabled = client.webhook_endpoints.create(url=URL, enabled=False)
    with pytest.raises(Conflict) as conflict:
        client.webhook_endpoints.test(disabled.id)
    assert conflict.value.code == "webhook_endpoint_disabled"
    client.webhook_endpoints.delete(disabled.id)
    with pytest.raises(NotFound) as gone:
        client.webhook_endpoints.get(disabled.id)
    assert gone.value.code == "webhook_endpoint_not_found"


async def test_the_async_client_rotates_tests_and_redelivers(aclient: AsyncCreditd) -> None:
    endpoint = await aclient.webhook_endpoints.create(url=URL, events=["webhook.test"])
    rotated = await aclient.webhook_endpoints.rotate_secret(endpoint.id)
    assert rotated.secret is not None
    assert rotated.secret != endpoint.secret
    assert rotated.previous_secret_expires_at is not None
    retired = await aclient.webhook_endpoints.rotate_secret(endpoint.id, grace_seconds=0)
    assert retired.previous_secret_expires_at is None

    event = await aclient.webhook_endpoints.test(endpoint.id)
    assert event.data["endpoint_id"] == endpoint.id
    again = await aclient.events.redeliver(event.id, endpoint_id=endpoint.id)
    assert [(d.endpoint_id, d.attempts) for d in again.deliveries] == [(endpoint.id, 0)]
    page = await aclient.webhook_endpoints.list_deliveries(endpoint.id, event_id=event.id)
    # A dispatcher may have tried already: hooks.invalid never answers, so none succeeded.
    assert all(a.event_id == event.id and not a.succeeded for a in page.data)
    await aclient.webhook_endpoints.delete(endpoint.id)
