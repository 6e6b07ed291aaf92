"""The dispatcher's pure rules: when the next attempt is due, and how a failure is labelled."""

from __future__ import annotations

import random

import pytest

from app.core.settings import WebhookSettings
from app.webhooks.dispatcher import failure_reason, retry_delay
from app.webhooks.sender import Outcome

SCHEDULE = [5.0, 300.0, 1800.0]


def _settings(jitter: float = 0.0) -> WebhookSettings:
    return WebhookSettings(retry_schedule_seconds=SCHEDULE, retry_jitter=jitter)


def test_each_failed_attempt_waits_its_step_of_the_schedule_and_the_last_one_none() -> None:
    rng = random.Random(1)
    waits = [retry_delay(_settings(), n, None, rng) for n in (1, 2, 3, 4)]
    assert waits == [5.0, 300.0, 1800.0, None]  # 1 + len(schedule) attempts in all


def test_jitter_stays_within_its_share_of_the_wait_and_varies() -> None:
    rng = random.Random(7)
    waits = [retry_delay(_settings(jitter=0.2), 2, None, rng) for _ in range(200)]
    assert all(w is not None and 240.0 <= w <= 360.0 for w in waits)
    assert len({round(w or 0, 3) for w in waits}) > 100


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(1.0, 5.0), (60.0, 60.0), (10**9, 1800.0)],  # the later one, at most the longest step
)
def test_retry_after_counts_when_it_is_later_than_the_schedule(
    retry_after: float, expected: float
) -> None:
    assert retry_delay(_settings(), 1, retry_after, random.Random()) == expected


def test_retry_after_does_not_extend_an_exhausted_schedule() -> None:
    assert retry_delay(_settings(), 4, 60.0, random.Random()) is None


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (Outcome(False, 503, 5, "", None), "http_503"),
        (Outcome(False, 302, 5, "", None), "http_302"),
        (Outcome(False, None, 15000, None, "ReadTimeout"), "timeout"),
        (Outcome(False, None, 900, None, "timeout"), "timeout"),
        (Outcome(False, None, 3, None, "ConnectError"), "connect"),
        (Outcome(False, None, 0, None, "secret_unreadable"), "signing"),
        (Outcome(False, None, 40, None, "dns_error"), "dns"),
        (Outcome(False, None, 40, None, "tls_error"), "tls"),
        (Outcome(False, None, 0, None, "refused: loopback address", refused=True), "refused"),
    ],
)
def test_a_failed_attempt_is_labelled_by_what_went_wrong(outcome: Outcome, reason: str) -> None:
    assert failure_reason(outcome) == reason
