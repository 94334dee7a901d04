"""Rate limits per scene and per API key, local and global (a real Redis shared by two instances).

Through the gRPC front the tests count, never time: with a refill too slow to matter a bucket admits its
burst exactly, and a global one is one bucket shared by both instances. Each limit's rate is checked on an
injected clock (a measured rate through a loaded box is set by its callers, not by the limiter)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from bizcenter_support import (
    ADMIN_KEY,
    SCORING_KEY,
    Doubles,
    Harness,
    api_key_settings,
    biz_settings,
    churn_request,
    edit_scene,
    redis_server,
    run_biz,
    scoring,
)

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh_biz_center.domain import Principal
from infermesh_biz_center.limits import RateLimits
from infermesh_biz_center.settings import RateLimitSettings
from infermesh_chassis.errors import ResourceExhausted

BURST = 10


def _limit(rate: float, burst: int, mode: int):
    def edit(scene: pb.Scene) -> None:
        scene.rate_limit.CopyFrom(pb.RateLimit(requests_per_second=rate, burst=burst, mode=mode))
        scene.max_concurrency = 0

    return edit


async def _burst(biz: Harness, key: str, calls: int) -> tuple[int, list[grpc.aio.AioRpcError]]:
    """``calls`` Predicts at once: (how many were answered, the refusals)."""
    outcomes = await asyncio.gather(
        *(biz.predict.Predict(churn_request(1 + i % 4), metadata=scoring(key)) for i in range(calls)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) + sum(not isinstance(o, BaseException) for o in outcomes) == calls, outcomes
    for refusal in refused:
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.details()
        assert "rate limit exceeded" in refusal.details()
    return calls - len(refused), refused


async def test_a_scene_limit_admits_its_burst_then_refuses_with_a_hint(biz: Harness, doubles: Doubles):
    """Through the front: with a refill too slow to matter, the scene admits its burst exactly, and each
    refusal carries a retry hint. Counted, not timed (the rate is :func:`test_limits_refill_at_their_rate`)."""
    await edit_scene(biz, _limit(0.01, BURST, pb.RATE_LIMIT_MODE_LOCAL))
    allowed, refused = await _burst(biz, SCORING_KEY, 3 * BURST)
    assert allowed == BURST and len(refused) == 2 * BURST
    hints = [int(v) for r in refused for k, v in r.trailing_metadata() or () if k == "retry-after-ms"]
    assert len(hints) == len(refused) and all(0 < h <= 100_000 for h in hints)  # a token every 100 s


async def test_an_api_key_limit_holds_back_only_its_key(tmp_path: Path, doubles: Doubles):
    keys = api_key_settings()
    keys[1]["rate_limit"] = {"requests_per_second": 0.01, "burst": BURST}
    async with run_biz(biz_settings(tmp_path, doubles.static(), auth={"api_keys": keys})) as biz:
        await edit_scene(biz, _limit(0, 0, pb.RATE_LIMIT_MODE_UNSPECIFIED))
        allowed, refused = await _burst(biz, SCORING_KEY, 2 * BURST)
        assert allowed == BURST and len(refused) == BURST
        # another key is not held back by the scorer's bucket
        await biz.predict.Predict(churn_request(1), metadata=scoring(ADMIN_KEY))


@pytest.mark.parametrize(("rate", "hint_ms"), [(60.0, 17), (40.0, 25)])
async def test_limits_refill_at_their_rate(rate: float, hint_ms: int):
    """On an injected clock, a caller's and a scene's bucket each admit the burst, then exactly ``rate``
    calls per second while callers ask for more, and a refusal's hint is the time to the next token."""
    now = [0.0]
    limits = RateLimits(RateLimitSettings(), clock=lambda: now[0])
    callers = {
        "caller": (Principal("k", None, rate_per_s=rate, burst=BURST, limit_mode="local"), _scene(0.0)),
        "scene": (Principal("k", None, rate_per_s=0.0, burst=0, limit_mode="local"), _scene(rate)),
    }
    for principal, scene in callers.values():
        assert await _admitted(limits, principal, scene, 2 * BURST) == BURST
        with pytest.raises(ResourceExhausted) as refused:
            await limits.admit(principal, scene)  # type: ignore[arg-type]
        assert f"retry in {hint_ms} ms" in refused.value.message
        allowed = 0
        for _ in range(24):  # 3 s in steps of 1/8 s (exact in binary), each refilling less than the burst
            now[0] += 0.125
            allowed += await _admitted(limits, principal, scene, BURST + 1)
        assert allowed == 3 * rate


def _scene(rate: float) -> SimpleNamespace:
    return SimpleNamespace(name="s", rate_per_s=rate, burst=BURST, limit_mode="local")  # admit reads only these


async def _admitted(limits: RateLimits, principal: Principal, scene: SimpleNamespace, calls: int) -> int:
    allowed = 0
    for _ in range(calls):
        try:
            await limits.admit(principal, scene)  # type: ignore[arg-type]
            allowed += 1
        except ResourceExhausted:
            pass
    return allowed


async def test_a_global_limit_is_one_bucket_shared_by_instances(tmp_path: Path, doubles: Doubles):
    """Two instances draw on one Redis bucket: with a refill too slow to matter, together they admit its
    burst once, where local buckets would admit it once each. Counted, not timed (the rate of the Redis
    bucket is measured in the chassis' own tests)."""
    with redis_server(tmp_path) as url:
        first = biz_settings(tmp_path / "a", doubles.static(), rate_limit={"redis_url": url}, thrift={"enabled": False})
        second = biz_settings(
            tmp_path / "b", doubles.static(), rate_limit={"redis_url": url}, thrift={"enabled": False}
        )
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with run_biz(first) as one, run_biz(second) as two:
            for biz in (one, two):  # each instance has its own store: configure both
                await edit_scene(biz, _limit(0.001, BURST, pb.RATE_LIMIT_MODE_GLOBAL))
            outcomes = await asyncio.gather(
                *(_predict(biz, i) for biz in (one, two) for i in range(2 * BURST)), return_exceptions=True
            )
            allowed = [o for o in outcomes if o is None]
            refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            assert len(allowed) == BURST and len(refused) == 3 * BURST, outcomes
            assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)


async def _predict(biz: Harness, index: int) -> None:
    await biz.predict.Predict(churn_request(1 + index % 4), metadata=scoring(SCORING_KEY))


@pytest.mark.parametrize(("workers", "admitted"), [(1, 4), (2, 2), (3, 2)])
async def test_a_local_limit_is_per_instance_whatever_its_workers(workers: int, admitted: int):
    """Each of N workers gets ceil(burst / N) of the burst and rate / N (the refill here is negligible)."""
    caller = Principal("k", None, rate_per_s=0.001, burst=4, limit_mode="local")
    scene = SimpleNamespace(name="s", rate_per_s=0.0)  # admit reads only these of a scene
    limits = RateLimits(RateLimitSettings(), workers=workers)
    allowed = 0
    for _ in range(6):
        try:
            await limits.admit(caller, scene)  # type: ignore[arg-type]
            allowed += 1
        except ResourceExhausted:
            pass
    assert allowed == admitted
