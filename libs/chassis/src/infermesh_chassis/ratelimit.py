"""Token-bucket rate limiting, local to one process or global across processes with Redis.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a call
takes one token or is refused with the time until one is available. :class:`RateLimiter`
keeps one bucket per key (API key, scene...) in memory, with a bound on the number of keys.
:class:`RedisRateLimiter` keeps the buckets in Redis and updates each with one atomic Lua
script on Redis' own clock, so every instance of a service shares one limit; when Redis
cannot answer it falls back to a local limiter (each instance then enforces the limit on its
own) rather than failing the call. Both provide the :class:`Limiter` protocol.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from infermesh_chassis.errors import ResourceExhausted, retry_after_ms
from infermesh_chassis.logs import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["TOKEN_BUCKET_LUA", "Decision", "Limiter", "RateLimiter", "RedisRateLimiter", "TokenBucket", "enforce"]

_log = get_logger("infermesh_chassis.ratelimit")


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


TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
local retry = 0
if requested > burst then
  retry = -1
elseif tokens + 1e-9 >= requested then
  tokens = tokens - requested
  allowed = 1
else
  retry = (requested - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry), tostring(tokens)}
"""
"""One token-bucket step, atomic in Redis: refill by Redis' clock, take ``ARGV[3]`` tokens if
there, store, and expire an idle bucket once it would be full again. Returns ``{allowed,
retry_after_s (-1: never), tokens left}`` (numbers as strings: Lua floats would be truncated)."""


class RedisRateLimiter:
    """Token buckets in Redis shared by every instance (see the module docstring).

    Keys are ``prefix + key``. ``redis`` is a ``redis.asyncio.Redis`` client; give it a short
    socket timeout so that a slow Redis costs little of a request's deadline. When Redis
    fails, ``fallback`` decides (by default a local :class:`RateLimiter` with the same rate)
    and the failure is logged at most once per ``warn_interval_s``.
    """

    def __init__(
        self,
        redis: Redis,
        rate: float,
        burst: float,
        *,
        prefix: str = "infermesh:ratelimit:",
        fallback: Limiter | None = None,
        warn_interval_s: float = 10.0,
    ) -> None:
        from redis.exceptions import RedisError  # noqa: PLC0415  (only the global mode needs the redis package)

        TokenBucket(rate, burst)  # validates the parameters once, at construction
        self.rate = rate
        self.burst = burst
        self._prefix = prefix
        self._script: Callable[..., Awaitable[Any]] = redis.register_script(TOKEN_BUCKET_LUA)
        self._fallback = fallback or RateLimiter(rate, burst)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._warn_interval_s = warn_interval_s
        self._last_warning = float("-inf")

    async def acquire(self, key: str, tokens: float = 1.0) -> Decision:
        """Take ``tokens`` from ``key``'s shared bucket (or the fallback's when Redis fails)."""
        try:
            allowed, retry, remaining = await self._script(
                keys=[self._prefix + key], args=[repr(self.rate), repr(self.burst), repr(tokens)]
            )
        except self._errors as exc:
            now = time.monotonic()
            if now - self._last_warning >= self._warn_interval_s:
                self._last_warning = now
                _log.warning("rate_limit_redis_unavailable", error=str(exc) or type(exc).__name__, key=key)
            return await self._fallback.acquire(key, tokens)
        retry_after = float(retry)
        return Decision(bool(int(allowed)), float("inf") if retry_after < 0 else retry_after, float(remaining))


async def enforce(limiter: Limiter, key: str, what: str, tokens: float = 1.0) -> None:
    """Take ``tokens`` from ``key`` or raise RESOURCE_EXHAUSTED with a retry-after hint naming ``what``.

    The hint is whole milliseconds, at least 1 (a token due in a few microseconds is still "retry
    in 1 ms", never "0"), the same in the message and in ``retry-after-ms``; a call larger than
    the bucket's burst, which no wait can admit, is refused without a hint.
    """
    decision = await limiter.acquire(key, tokens)
    if decision.allowed:
        return
    if not math.isfinite(decision.retry_after_s):
        raise ResourceExhausted(
            f"rate limit exceeded for {what}: a call of {tokens:g} tokens is larger than the limit's burst"
        )
    retry_ms = retry_after_ms(decision.retry_after_s)
    raise ResourceExhausted(f"rate limit exceeded for {what}; retry in {retry_ms} ms", retry_after_s=retry_ms / 1000)
