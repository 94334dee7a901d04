"""An asyncio circuit breaker over pybreaker.

pybreaker's own async support is Tornado-only, and its open state calls the guarded
function synchronously once the reset timeout has passed, so :class:`AsyncCircuitBreaker`
drives pybreaker's state machine itself: it awaits the call, then reports the outcome to
the current state (which counts failures, trips, and closes after a successful trial).
While the breaker is open, calls are refused at once with :class:`CircuitOpenError` (an
UNAVAILABLE error); while half-open, one trial call goes through and the others are refused.
The call that trips the breaker raises its own exception, not pybreaker's. The reset timeout is
measured on ``clock`` (monotonic by default; tests inject their own), not on pybreaker's wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import pybreaker

from infermesh_chassis.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = ["CLIENT_ERRORS", "AsyncCircuitBreaker", "CircuitOpenError"]

T = TypeVar("T")

CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
)
"""Errors that say the request was wrong, not that the downstream is sick: never counted."""


class CircuitOpenError(Unavailable):
    """Refused without calling: the breaker for this downstream is open."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit breaker '{name}' is open; next trial in {retry_in_s:.1f}s")
        self.breaker = name
        self.retry_in_s = retry_in_s


class AsyncCircuitBreaker:
    """A circuit breaker for coroutines (see the module docstring).

    ``fail_max`` consecutive failures open it; after ``reset_timeout_s`` (on ``clock``) one trial
    call is let through; ``success_threshold`` successful trials close it again. Exceptions in
    ``exclude`` (by default the client errors) and cancellations never count as failures.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout_s: float = 30.0,
        success_threshold: int = 1,
        exclude: Iterable[type[BaseException]] = CLIENT_ERRORS,
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self._reset_timeout_s = reset_timeout_s
        self._opened_at = 0.0
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            success_threshold=success_threshold,
            exclude=[*exclude, asyncio.CancelledError],
            listeners=list(listeners),
            name=name,
            throw_new_error_on_trip=False,
        )
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return self._breaker.current_state

    @property
    def fail_counter(self) -> int:
        """Consecutive failures counted so far."""
        return self._breaker.fail_counter

    @property
    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when it is not open or a trial is due)."""
        if self._breaker.current_state != pybreaker.STATE_OPEN:
            return 0.0
        return self._seconds_until_trial()

    def _seconds_until_trial(self) -> float:
        return max(0.0, self._opened_at + self._reset_timeout_s - self._clock())

    def _admit(self) -> tuple[pybreaker.CircuitBreakerState, bool]:
        """Decide whether a call may go ahead; returns the state to report to and whether it is a trial."""
        state = self._breaker.state
        if state.name == pybreaker.STATE_OPEN:
            wait = self._seconds_until_trial()
            if wait > 0:
                raise CircuitOpenError(self.name, wait)
            self._breaker.half_open()
            state = self._breaker.state
        if state.name == pybreaker.STATE_HALF_OPEN:
            if self._trial_in_flight:
                raise CircuitOpenError(self.name, 0.0)
            self._trial_in_flight = True
            return state, True
        return state, False

    async def call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` under the breaker."""
        state, trial = self._admit()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            # pybreaker counts the failure and trips if needed; it re-raises `exc` itself when
            # the failure threshold is reached, which is not what decides what we raise.
            with contextlib.suppress(BaseException):
                state._handle_error(exc, reraise=False)
            if self._breaker.current_state == pybreaker.STATE_OPEN:  # it just opened (or a trial reopened it)
                self._opened_at = self._clock()
            raise
        else:
            state._handle_success()
            return result
        finally:
            if trial:
                self._trial_in_flight = False
