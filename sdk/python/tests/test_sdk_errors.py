"""Problems become typed exceptions carrying every problem+json field."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from creditd_sdk import (
    APIStatusError,
    AsyncCreditd,
    Conflict,
    Creditd,
    CreditdError,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientCredits,
    NotFound,
    PromoIneligible,
    ServerError,
    TransactionAlreadyCompleted,
    TransactionNotFound,
    Unauthorized,
    UnknownModel,
    UserExists,
    UserNotFound,
    ValidationError,
)
from creditd_sdk.errors import ServiceUnavailable, from_response
from sdk_testkit import ServerProcess


def test_a_missing_user_is_a_typed_not_found_with_the_problem_fields(client: Creditd) -> None:
    with pytest.raises(UserNotFound) as caught:
        client.users.get("nobody")
    err = caught.value
    assert isinstance(err, NotFound)
    assert isinstance(err, CreditdError)
    assert err.status == 404
    assert err.code == "user_not_found"
    assert err.type == "/errors/user_not_found"
    assert err.title
    assert err.detail
    assert err.instance == "/v1/users/nobody"
    assert err.request_id
    assert err.request_id == err.headers["x-request-id"]
    assert err.errors is None


async def test_async_client_raises_the_same_typed_errors(aclient: AsyncCreditd) -> None:
    with pytest.raises(TransactionNotFound) as caught:
        await aclient.transactions.get(str(uuid.uuid4()))
    assert caught.value.code == "transaction_not_found"
    assert caught.value.status == 404


def test_a_validation_error_lists_what_is_wrong(client: Creditd) -> None:
    client.users.create("u")
    with pytest.raises(ValidationError) as caught:
        client.credits.grant("u", Decimal("0.0000001"))  # 7 fractional digits
    err = caught.value
    assert err.status == 422
    assert err.code == "validation_error"
    assert err.errors
    assert err.errors[0]["loc"][-1] == "amount"
    assert client.users.get("u").balance.total == 0


def test_an_unpriced_model_is_unknown_model(client: Creditd) -> None:
    with pytest.raises(UnknownModel) as caught:
        client.transactions.start(user_id="u", model="nothing-priced")
    assert isinstance(caught.value, ValidationError)
    assert caught.value.code == "unknown_model"


def test_a_debit_beyond_the_balance_is_insufficient_credits(client: Creditd) -> None:
    client.users.create("u")
    client.credits.grant("u", 1)
    with pytest.raises(InsufficientCredits) as caught:
        client.credits.debit("u", 2)
    assert caught.value.status == 402
    assert client.users.get("u").balance.total == Decimal(1)


def test_conflicts_map_by_slug(client: Creditd) -> None:
    client.users.create("u")
    with pytest.raises(UserExists) as caught:
        client.users.create("u")
    assert isinstance(caught.value, Conflict)
    client.promos.create("once", credits=1)
    client.promos.claim("once", user_id="u")
    with pytest.raises(PromoIneligible) as ineligible:
        client.promos.claim("once", user_id="u")
    assert ineligible.value.code == "already_claimed"


def test_a_second_completion_with_another_body_is_already_completed(priced: Creditd) -> None:
    priced.users.create("u")
    priced.credits.grant("u", 5)
    start = priced.transactions.start(user_id="u", model="m")
    priced.transactions.complete(start.transaction_id, success=True)
    with pytest.raises(TransactionAlreadyCompleted):
        priced.transactions.complete(start.transaction_id, success=False)


def test_reusing_an_idempotency_key_for_another_body_is_refused(client: Creditd) -> None:
    client.users.create("u")
    client.credits.grant("u", 1, idempotency_key="grant-1")
    with pytest.raises(IdempotencyKeyReused) as caught:
        client.credits.grant("u", 2, idempotency_key="grant-1")
    assert caught.value.status == 409
    assert client.users.get("u").balance.total == Decimal(1)


def test_a_bad_key_is_unauthorized(live: ServerProcess) -> None:
    with (
        Creditd("ck_not_a_key", base_url=live.url, spool=None) as bad,
        pytest.raises(Unauthorized) as caught,
    ):
        bad.users.list()
    assert caught.value.status == 401


def test_a_key_without_the_scope_is_forbidden(client: Creditd, live: ServerProcess) -> None:
    reader = client.api_keys.create(name="reader", scopes=["read"])
    assert reader.key is not None
    with Creditd(reader.key, base_url=live.url, spool=None) as read_only:
        read_only.users.list()
        with pytest.raises(Forbidden) as caught:
            read_only.users.create("u")
    assert caught.value.status == 403


def test_classes_fall_back_to_the_status_when_no_slug_class_exists() -> None:
    problem = {"type": "/errors/plan_in_use", "code": "plan_in_use", "status": 409}
    assert type(from_response(409, {}, problem)) is Conflict
    assert type(from_response(404, {}, {"code": "tier_not_found"})) is NotFound
    assert type(from_response(500, {}, {"code": "internal_error"})) is ServerError
    assert type(from_response(418, {}, None)) is APIStatusError
    unavailable = from_response(503, {"retry-after": "7"}, None)
    assert isinstance(unavailable, ServiceUnavailable)
    assert unavailable.retry_after == 7.0
    # A problem with only its `type` still maps by slug.
    assert type(from_response(404, {}, {"type": "/errors/user_not_found"})) is UserNotFound
