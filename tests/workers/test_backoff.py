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


async def test_a_job_loop_stops_when_the_driver_turns_its_cancellation_into_an_error() -> None:
    """asyncpg answers a cancel mid-query with its own error; the loop must still end."""
    import asyncio

    from app.workers.runner import _every

    started = asyncio.Event()

    async def job() -> int:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("connection was closed in the middle of operation") from None
        return 0

    loop = asyncio.create_task(_every("probe", 0.01, job, max_backoff=0.01))
    await started.wait()
    loop.cancel()
    done, _ = await asyncio.wait({loop}, timeout=2)
    assert done == {loop}
    assert loop.cancelled()
