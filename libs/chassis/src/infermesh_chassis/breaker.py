"""An asyncio circuit breaker over pybreaker, through its public API only.

pybreaker's own async support is Tornado-only (danielfm/pybreaker #7, #103), and its open state
calls the guarded function synchronously once the reset timeout has passed, so
:class:`AsyncCircuitBreaker` wraps it once for asyncio:

- *admission* is decided before the coroutine runs, from ``current_state``: while the breaker is
  open, calls are refused at once with :class:`CircuitOpenError` (an UNAVAILABLE error); once the
  reset timeout has passed (measured on ``clock``, monotonic by default, tests inject their own;
  the moment it opened is noted by a state-change listener) it is moved to half-open with
  ``half_open()``, and one trial call goes through while the others are refused;
- the *outcome* of the awaited call is then replayed through pybreaker's synchronous ``call()``
  (a function that returns, or raises the call's exception), so pybreaker's own state machine
  counts the failure (or, for an excluded exception, the success), trips, and closes after a
  successful trial. An outcome that arrives while the breaker is open, or half-open with another
  call as the trial (a call admitted before it opened), is not counted: it says nothing new.

The call that trips the breaker raises its own exception, not pybreaker's. Since pybreaker is only
asked to ``call()`` while it is closed or half-open, its wall clock never decides anything.
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
            listeners=[_OnOpen(self._opened), *listeners],
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

    def _opened(self) -> None:
        self._opened_at = self._clock()

    def _admit(self) -> bool:
        """Decide whether a call may go ahead (else raise :class:`CircuitOpenError`); True for a trial."""
        state = self._breaker.current_state
        if state == pybreaker.STATE_OPEN:
            wait = self._seconds_until_trial()
            if wait > 0:
                raise CircuitOpenError(self.name, wait)
            self._breaker.half_open()
            state = pybreaker.STATE_HALF_OPEN
        if state == pybreaker.STATE_HALF_OPEN:
            if self._trial_in_flight:
                raise CircuitOpenError(self.name, 0.0)
            self._trial_in_flight = True
            return True
        return False

    def _counts(self, trial: bool) -> bool:
        """Whether the outcome of a call admitted as ``trial`` (or not) is reported to pybreaker now."""
        return trial or self._breaker.current_state == pybreaker.STATE_CLOSED

    async def call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` under the breaker."""
        trial = self._admit()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            if self._counts(trial):
                # pybreaker counts it (unless excluded) and trips if needed; it raises it again, and
                # what the caller gets is the call's own exception in every case
                with contextlib.suppress(BaseException):
                    self._breaker.call(_raise, exc)
            raise
        else:
            if self._counts(trial):
                self._breaker.call(_succeed)
            return result
        finally:
            if trial:
                self._trial_in_flight = False


def _raise(exc: BaseException) -> None:
    raise exc


def _succeed() -> None:
    return None


class _OnOpen(pybreaker.CircuitBreakerListener):
    """Calls ``opened`` whenever pybreaker opens the breaker (the reset timeout counts from there)."""

    def __init__(self, opened: Callable[[], None]) -> None:
        self._opened = opened

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        """Call ``opened`` when ``new_state`` is open."""
        if new_state.name == pybreaker.STATE_OPEN:
            self._opened()
