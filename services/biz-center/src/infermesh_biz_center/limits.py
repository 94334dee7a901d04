"""Admission: token-bucket rate limits per caller and per scene, and load shedding per scene.

Rate limits use the chassis' limiters: a local :class:`~infermesh_chassis.ratelimit.RateLimiter`
or, in global mode, a :class:`~infermesh_chassis.ratelimit.RedisRateLimiter` shared by every
instance. One limiter exists per distinct (rate, burst, mode), so a changed limit starts a
fresh bucket. Refusals are RESOURCE_EXHAUSTED with a retry-after hint.

A limit is per instance: with ``workers`` processes serving one instance, a local bucket (and the
local fallback of a global one) gets ``rate / workers`` and ``ceil(burst / workers)``, since the kernel
spreads connections evenly between them; a global limit lives in Redis and is shared as it is.

Shedding bounds the calls a scene has in flight on this instance: beyond ``max_concurrency``
a call is refused at once (RESOURCE_EXHAUSTED) instead of queuing behind the others; the hint
is the scene's recent mean latency, the time a slot is likely to take to free.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from infermesh_biz_center.catalog import CompiledScene
from infermesh_biz_center.domain import Principal
from infermesh_biz_center.settings import RateLimitSettings
from infermesh_chassis.errors import ResourceExhausted
from infermesh_chassis.ratelimit import Limiter, RateLimiter, RedisRateLimiter, enforce

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RateLimits", "SceneGate"]

_EWMA_WEIGHT = 0.1


class RateLimits:
    """The rate limits of callers and scenes (see the module docstring)."""

    def __init__(
        self,
        settings: RateLimitSettings,
        redis: Redis | None = None,
        *,
        workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._workers = workers
        self._clock = clock
        self._limiters: dict[tuple[float, int, str], Limiter] = {}

    def _limiter(self, rate: float, burst: int, mode: str) -> Limiter:
        mode = self._settings.default_mode if mode == "default" else mode
        burst = burst or max(1, int(-(-rate // 1)))
        key = (rate, burst, mode)
        limiter = self._limiters.get(key)
        if limiter is None:
            local = RateLimiter(rate / self._workers, max(1, -(-burst // self._workers)), clock=self._clock)
            if mode == "global":
                if self._redis is None:
                    raise RuntimeError("a global rate limit needs rate_limit.redis_url")
                limiter = RedisRateLimiter(self._redis, rate, burst, prefix=self._settings.key_prefix, fallback=local)
            else:
                limiter = local
            self._limiters[key] = limiter
        return limiter

    async def admit(self, principal: Principal, scene: CompiledScene) -> None:
        """Take one token from the caller's bucket, then from the scene's; RESOURCE_EXHAUSTED when either is empty."""
        if principal.rate_per_s > 0:
            limiter = self._limiter(principal.rate_per_s, principal.burst, principal.limit_mode)
            await enforce(limiter, f"caller:{principal.name}", f"caller {principal.name}")
        if scene.rate_per_s > 0:
            limiter = self._limiter(scene.rate_per_s, scene.burst, scene.limit_mode)
            await enforce(limiter, f"scene:{scene.name}", f"scene {scene.name}")


class SceneGate:
    """Bounded concurrency per scene on this instance (see the module docstring)."""

    def __init__(self) -> None:
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._mean_s: defaultdict[str, float] = defaultdict(lambda: 0.01)

    def in_flight(self, scene: str) -> int:
        """Calls of ``scene`` in flight now."""
        return self._in_flight[scene]

    def acquire(self, scene: CompiledScene) -> None:
        """Take a slot of ``scene``, or raise RESOURCE_EXHAUSTED at once when none is free."""
        name = scene.name
        if scene.max_concurrency and self._in_flight[name] >= scene.max_concurrency:
            raise ResourceExhausted(
                f"scene {name} is at its limit of {scene.max_concurrency} concurrent calls",
                retry_after_s=self._mean_s[name],
            )
        self._in_flight[name] += 1

    def release(self, scene: str, latency_s: float) -> None:
        """Give back a slot taken by :meth:`acquire`, with the call's latency (for the retry-after hint)."""
        self._in_flight[scene] -= 1
        self._mean_s[scene] += _EWMA_WEIGHT * (latency_s - self._mean_s[scene])
