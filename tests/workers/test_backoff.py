"""Background jobs back off after failures and come back to their interval on success."""

from __future__ import annotations

from app.workers.runner import backoff


def test_a_healthy_job_waits_its_interval() -> None:
    assert backoff(1.0, 0, cap=5.0) == 1.0
    assert backoff(300.0, 0, cap=5.0) == 300.0


def test_failures_double_the_wait_up_to_the_cap() -> None:
    assert [backoff(1.0, n, cap=5.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_slow_job_never_waits_longer_than_its_interval_for_failing() -> None:
    assert backoff(300.0, 4, cap=5.0) == 300.0
