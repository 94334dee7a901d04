"""The one retry loop of the chassis: capped exponential backoff, optional jitter, injectable sleep.

:func:`retry` awaits an attempt until it returns, sleeping a :class:`Backoff` delay after each
failure it may retry. What differs between callers is passed in, not written again:

- which failures are retried (``retry_on``) and how many attempts at most (``attempts``, or forever);
- what happens on a failure before the wait (``on_failure``: log it, count it, note it; raising
  there gives up at once, e.g. when a deadline would pass during the wait or the owner is stopping);
- how the wait is done (``sleep``: a test's or a stoppable one that raises to end the loop).

Used by the client's retries of idempotent calls, the Consul watch, the JetStream consumer's
reconnects, the event emitter's sends and the spool's replay. Process supervisors (the chassis'
worker supervisor, the local stack, the model gateway's Triton supervisor) are not retries of one
operation and keep their own restart policies.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Backoff", "retry"]

T = TypeVar("T")


class Backoff:
    """Capped exponential delays: ``initial_s``, doubled after each use, at most ``max_s``.

    With ``jitter`` j in (0, 1], each delay is drawn uniformly from ``[(1 - j) * d, d]``, so that
    many clients that failed together do not retry together.
    """

    __slots__ = ("_next", "initial_s", "jitter", "max_s")

    def __init__(self, initial_s: float, max_s: float, *, jitter: float = 0.0) -> None:
        if initial_s <= 0 or max_s <= 0 or not 0.0 <= jitter <= 1.0:
            raise ValueError(f"bad backoff: initial {initial_s}s, max {max_s}s, jitter {jitter}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self._next = min(initial_s, max_s)

    def next_delay(self) -> float:
        """The delay before the next attempt (and the one after it doubles)."""
        delay = self._next
        self._next = min(self.max_s, self._next * 2)
        return delay * random.uniform(1.0 - self.jitter, 1.0) if self.jitter else delay

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self._next = min(self.initial_s, self.max_s)


def _always(exc: Exception) -> bool:
    return True


def _nothing(exc: Exception, delay_s: float) -> None:
    return None


async def retry(
    attempt: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retry_on: Callable[[Exception], bool] = _always,
    attempts: int | None = None,
    on_failure: Callable[[Exception, float], None] = _nothing,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await ``attempt()`` until it returns its result (see the module docstring).

    A failure that ``retry_on`` refuses, or the last of ``attempts``, is raised as it is. Otherwise
    ``on_failure(exc, delay_s)`` runs (it may raise to give up), then ``sleep(delay_s)``, then the
    next attempt. ``backoff`` is not reset here: a caller that keeps one across calls resets it.
    Cancellation and other BaseExceptions are never retried.
    """
    tried = 0
    while True:
        tried += 1
        try:
            return await attempt()
        except Exception as exc:
            if not retry_on(exc) or (attempts is not None and tried >= attempts):
                raise
            delay = backoff.next_delay()
            on_failure(exc, delay)
        await sleep(delay)
