"""The chassis' one retry loop: delays double up to their cap, jitter stays in its band, and the
caller's rules decide what is retried, how often, and when to give up. Sleeps are recorded, not slept."""

from __future__ import annotations

import asyncio

import pytest

from infermesh_chassis.retry import Backoff, retry


class Flaky:
    """Fails with the given exceptions, in order, then answers."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


def test_delays_double_up_to_the_cap_and_reset():
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    assert Backoff(1.0, 0.2).next_delay() == 0.2


def test_jitter_stays_within_its_band():
    backoff = Backoff(1.0, 1.0, jitter=0.5)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(0.0, 1.0)


async def test_retries_until_it_answers_and_reports_each_failure():
    flaky, sleeps, seen = Flaky(OSError("a"), OSError("b")), Sleeps(), []
    result = await retry(
        flaky, Backoff(0.1, 1.0), on_failure=lambda exc, delay: seen.append((str(exc), delay)), sleep=sleeps
    )
    assert result == "ok" and flaky.calls == 3
    assert seen == [("a", 0.1), ("b", 0.2)] and sleeps.delays == [0.1, 0.2]


async def test_what_is_not_retried_is_raised_at_once():
    flaky, sleeps = Flaky(KeyError("no")), Sleeps()
    with pytest.raises(KeyError):
        await retry(flaky, Backoff(0.1, 1.0), retry_on=lambda exc: isinstance(exc, OSError), sleep=sleeps)
    assert flaky.calls == 1 and sleeps.delays == []


async def test_attempts_bound_the_calls_and_the_last_failure_is_raised():
    flaky, sleeps = Flaky(OSError("1"), OSError("2"), OSError("3")), Sleeps()
    with pytest.raises(OSError, match="2"):
        await retry(flaky, Backoff(0.1, 1.0), attempts=2, sleep=sleeps)
    assert flaky.calls == 2 and sleeps.delays == [0.1]


async def test_on_failure_and_sleep_can_give_up():
    def deadline(exc: Exception, delay_s: float) -> None:
        if delay_s > 0.15:
            raise exc

    flaky, sleeps = Flaky(OSError("1"), OSError("2"), OSError("3")), Sleeps()
    with pytest.raises(OSError, match="2"):
        await retry(flaky, Backoff(0.1, 1.0), on_failure=deadline, sleep=sleeps)
    assert flaky.calls == 2 and sleeps.delays == [0.1]

    class Stopped(Exception):
        pass

    async def stopping(delay_s: float) -> None:
        raise Stopped

    flaky = Flaky(OSError("1"))
    with pytest.raises(Stopped):
        await retry(flaky, Backoff(0.1, 1.0), sleep=stopping)
    assert flaky.calls == 1


async def test_cancellation_is_never_retried():
    flaky, sleeps = Flaky(asyncio.CancelledError()), Sleeps()
    with pytest.raises(asyncio.CancelledError):
        await retry(flaky, Backoff(0.1, 1.0), sleep=sleeps)
    assert flaky.calls == 1 and sleeps.delays == []
