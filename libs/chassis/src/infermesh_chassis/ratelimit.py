"""Token-bucket rate limiting, local to one process.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a call
takes one token or is refused with the time until one is available. :class:`RateLimiter`
keeps one bucket per key (API key, scene...) with a bound on the number of keys. The
business center adds a Redis-backed global mode behind the same :class:`Limiter` protocol.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from infermesh_chassis.errors import ResourceExhausted

__all__ = ["Decision", "Limiter", "RateLimiter", "TokenBucket", "enforce"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of asking for tokens."""

    allowed: bool
    retry_after_s: float
    """0 when allowed; otherwise seconds until enough tokens will be there."""
    remaining: float
    """Tokens left in the bucket after this decision."""


_EPSILON = 1e-9
"""Tolerance for floating-point refill arithmetic (a token due exactly now is there)."""


class TokenBucket:
    """One token bucket; not thread-safe (use it from one event loop)."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 tokens/s, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1 token, got {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def try_acquire(self, tokens: float = 1.0) -> Decision:
        """Take ``tokens`` if the bucket has them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens > self.burst:
            return Decision(False, float("inf"), self._tokens)
        if self._tokens + _EPSILON >= tokens:
            self._tokens -= tokens
            return Decision(True, 0.0, self._tokens)
        return Decision(False, (tokens - self._tokens) / self.rate, self._tokens)


class Limiter(Protocol):
    """What a caller of a rate limiter needs; local and Redis-backed limiters both provide it."""

    async def acquire(self, key: str, tokens: float = 1.0) -> Decision: ...


class RateLimiter:
    """One :class:`TokenBucket` per key, created on first use; the least recently used key is
    forgotten beyond ``max_keys`` (a forgotten key starts again with a full bucket)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        TokenBucket(rate, burst, clock)  # validates the parameters once, at construction
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def try_acquire(self, key: str, tokens: float = 1.0) -> Decision:
        """Take ``tokens`` from ``key``'s bucket, synchronously."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.try_acquire(tokens)

    async def acquire(self, key: str, tokens: float = 1.0) -> Decision:
        """:meth:`try_acquire`, as the :class:`Limiter` protocol asks."""
        return self.try_acquire(key, tokens)


async def enforce(limiter: Limiter, key: str, what: str, tokens: float = 1.0) -> None:
    """Take ``tokens`` from ``key`` or raise RESOURCE_EXHAUSTED with a retry-after hint naming ``what``."""
    decision = await limiter.acquire(key, tokens)
    if not decision.allowed:
        raise ResourceExhausted(
            f"rate limit exceeded for {what}; retry in {decision.retry_after_s:.3f}s",
            retry_after_s=decision.retry_after_s,
        )
