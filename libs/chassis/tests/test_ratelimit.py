"""Token buckets: exact behaviour on a fake clock, and the rate over a measured interval."""

from __future__ import annotations

import asyncio
import time

import pytest

from infermesh_chassis import errors
from infermesh_chassis.ratelimit import RateLimiter, TokenBucket, enforce


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_rate_up_to_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.try_acquire().allowed for _ in range(6)] == [True] * 5 + [False]
    refused = bucket.try_acquire()
    assert refused.retry_after_s == pytest.approx(0.1)
    clock.now += 0.1
    assert bucket.try_acquire().allowed
    clock.now += 60
    assert [bucket.try_acquire().allowed for _ in range(6)] == [True] * 5 + [False]


def test_bucket_rejects_bad_parameters():
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst must be >= 1"):
        TokenBucket(rate=1, burst=0.5)


def test_limiter_keys_are_independent_and_bounded():
    clock = FakeClock()
    limiter = RateLimiter(rate=1, burst=1, max_keys=2, clock=clock)
    assert limiter.try_acquire("a").allowed
    assert not limiter.try_acquire("a").allowed
    assert limiter.try_acquire("b").allowed
    assert limiter.try_acquire("c").allowed  # evicts "a", the least recently used
    assert limiter.try_acquire("a").allowed


async def test_enforce_raises_resource_exhausted_with_retry_hint():
    limiter = RateLimiter(rate=2, burst=1)
    await enforce(limiter, "key-1", "api key key-1")
    with pytest.raises(errors.ResourceExhausted, match="rate limit exceeded for api key key-1") as refused:
        await enforce(limiter, "key-1", "api key key-1")
    assert 0 < refused.value.retry_after_s <= 0.5
    assert refused.value.metadata[0][0] == "retry-after-ms"


@pytest.mark.parametrize("rate", [50.0, 400.0])
async def test_measured_rate_within_five_percent(rate):
    """Callers hammering one key for a measured interval get the configured rate, +-5%."""
    limiter = RateLimiter(rate=rate, burst=1)
    allowed = 0
    began = time.monotonic()
    deadline = began + 1.5
    while time.monotonic() < deadline:
        if (await limiter.acquire("scene")).allowed:
            allowed += 1
        await asyncio.sleep(0)
    elapsed = time.monotonic() - began
    measured = (allowed - 1) / elapsed
    assert measured == pytest.approx(rate, rel=0.05)
