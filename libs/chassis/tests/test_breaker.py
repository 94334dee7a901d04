"""The asyncio circuit breaker really counts async failures and refuses calls while open. Time is a
clock the tests move (no sleeps): what is checked holds however slow the machine is."""

from __future__ import annotations

import asyncio

import pybreaker
import pytest

from infermesh_chassis import errors
from infermesh_chassis.breaker import AsyncCircuitBreaker, CircuitOpenError


class Clock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Downstream:
    """A coroutine that fails while ``failing`` and counts how often it really ran."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    async def __call__(self, value: int) -> int:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failing:
            raise errors.Unavailable("down")
        return value * 2


async def test_opens_after_n_async_failures_and_refuses_without_calling():
    downstream = Downstream()
    breaker = AsyncCircuitBreaker("dg", fail_max=3, reset_timeout_s=60)
    for expected_count in (1, 2):
        with pytest.raises(errors.Unavailable, match="down"):
            await breaker.call(downstream, 1)
        assert breaker.fail_counter == expected_count
        assert breaker.state == "closed"
    with pytest.raises(errors.Unavailable, match="down"):  # the tripping call raises its own error
        await breaker.call(downstream, 1)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError, match="circuit breaker 'dg' is open") as refused:
        await breaker.call(downstream, 1)
    assert refused.value.status_code.name == "UNAVAILABLE"
    assert downstream.calls == 3


async def test_closes_after_reset_timeout_on_successful_trial():
    downstream, clock = Downstream(), Clock()
    breaker = AsyncCircuitBreaker("mg", fail_max=2, reset_timeout_s=0.2, clock=clock)
    for _ in range(2):
        with pytest.raises(errors.Unavailable):
            await breaker.call(downstream, 1)
    assert breaker.state == "open"
    clock.now += 0.19
    with pytest.raises(CircuitOpenError, match=r"next trial in 0\.0s"):
        await breaker.call(downstream, 1)
    assert downstream.calls == 2
    clock.now += 0.01
    downstream.failing = False
    assert await breaker.call(downstream, 21) == 42
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0


async def test_failed_trial_reopens():
    downstream, clock = Downstream(), Clock()
    breaker = AsyncCircuitBreaker("mg", fail_max=1, reset_timeout_s=10, clock=clock)
    with pytest.raises(errors.Unavailable):
        await breaker.call(downstream, 1)
    clock.now += 10
    with pytest.raises(errors.Unavailable, match="down"):
        await breaker.call(downstream, 1)
    assert breaker.state == "open"
    clock.now += 9.9  # the reset timeout counts again from the failed trial
    with pytest.raises(CircuitOpenError):
        await breaker.call(downstream, 1)
    assert downstream.calls == 2
    clock.now += 0.1
    downstream.failing = False
    assert await breaker.call(downstream, 1) == 2


async def test_half_open_lets_one_trial_through():
    clock = Clock()
    breaker = AsyncCircuitBreaker("mg", fail_max=1, reset_timeout_s=0.05, clock=clock)
    gate, started = asyncio.Event(), asyncio.Event()

    async def slow_ok() -> str:
        started.set()
        await gate.wait()
        return "ok"

    with pytest.raises(errors.Unavailable):
        await breaker.call(Downstream(), 1)
    clock.now += 0.05
    trial = asyncio.ensure_future(breaker.call(slow_ok))
    await started.wait()
    assert breaker.state == "half-open"
    with pytest.raises(CircuitOpenError):
        await breaker.call(slow_ok)
    gate.set()
    assert await trial == "ok"
    assert breaker.state == "closed"


async def test_client_errors_and_cancellation_do_not_count():
    breaker = AsyncCircuitBreaker("dg", fail_max=2, reset_timeout_s=60)

    async def bad_request() -> None:
        raise errors.InvalidArgument("caller's fault")

    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    for _ in range(5):
        with pytest.raises(errors.InvalidArgument):
            await breaker.call(bad_request)
    for _ in range(3):
        started.clear()
        task = asyncio.ensure_future(breaker.call(hangs))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0


async def test_success_resets_consecutive_failures():
    downstream = Downstream()
    breaker = AsyncCircuitBreaker("dg", fail_max=3, reset_timeout_s=60)
    for _ in range(5):
        downstream.failing = True
        for _ in range(2):
            with pytest.raises(errors.Unavailable):
                await breaker.call(downstream, 1)
        downstream.failing = False
        assert await breaker.call(downstream, 1) == 2
    assert breaker.state == "closed"


async def test_concurrent_failures_are_counted_and_a_late_outcome_changes_nothing():
    breaker = AsyncCircuitBreaker("dg", fail_max=2, reset_timeout_s=60)
    gate, started = asyncio.Event(), asyncio.Event()
    running = 0

    async def fails_when_released() -> None:
        nonlocal running
        running += 1
        if running == 3:
            started.set()
        await gate.wait()
        raise errors.Unavailable("down")

    async def late_success() -> str:
        await gate.wait()
        await asyncio.sleep(0)
        return "late"

    calls = [asyncio.ensure_future(breaker.call(fails_when_released)) for _ in range(3)]
    late = asyncio.ensure_future(breaker.call(late_success))
    await started.wait()
    assert breaker.state == "closed" and breaker.fail_counter == 0
    gate.set()
    for call in calls:
        with pytest.raises(errors.Unavailable, match="down"):
            await call
    assert await late == "late"  # admitted before the breaker opened: answered, but not counted
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await breaker.call(late_success)


async def test_listeners_see_pybreakers_own_transitions():
    seen: list[tuple[str, str]] = []

    class Recorder(pybreaker.CircuitBreakerListener):
        def state_change(self, cb, old_state, new_state) -> None:
            seen.append((old_state.name if old_state else "", new_state.name))

    downstream, clock = Downstream(), Clock()
    breaker = AsyncCircuitBreaker("mg", fail_max=1, reset_timeout_s=1, listeners=[Recorder()], clock=clock)
    with pytest.raises(errors.Unavailable):
        await breaker.call(downstream, 1)
    clock.now += 1
    downstream.failing = False
    assert await breaker.call(downstream, 2) == 4
    assert seen == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
