"""Rate limits through the gRPC front: per scene and per API key, local and global (a real Redis shared
by two instances): local ones within 5% of the configured rate over a measured interval, the global one
counted as one bucket shared by both instances.

Callers ask faster than the limit allows; over an interval T a token bucket admits at most
``burst + rate * T``, so ``(admitted - burst) / T`` is the measured rate."""

from __future__ import annotations

import asyncio
import time
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

MEASURE_S = 2.0
BURST = 10


async def _hammer(
    clients: list[Harness], key: str, seconds: float = MEASURE_S, callers: int = 6
) -> tuple[int, float, list]:
    """Predict as fast as ``callers`` per instance can for ``seconds``: (answers, the window in which they
    were sent, refusals' trailers). The window is ``seconds``, not the wall time until the last answer:
    on a loaded machine the calls in flight at the end can take long to answer, and that tail admits
    nothing."""
    allowed = 0
    refusals: list[tuple] = []
    stop_at = time.monotonic() + seconds

    async def caller(biz: Harness, index: int) -> None:
        nonlocal allowed
        while time.monotonic() < stop_at:
            try:
                await biz.predict.Predict(churn_request(1 + index % 4), metadata=scoring(key))
                allowed += 1
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert "rate limit exceeded" in exc.details()
                refusals.append(tuple(exc.trailing_metadata() or ()))
                await asyncio.sleep(0.001)

    await asyncio.gather(*(caller(biz, i) for biz in clients for i in range(callers)))
    return allowed, seconds, refusals


def _limit(rate: float, burst: int, mode: int):
    def edit(scene: pb.Scene) -> None:
        scene.rate_limit.CopyFrom(pb.RateLimit(requests_per_second=rate, burst=burst, mode=mode))
        scene.max_concurrency = 0

    return edit


async def test_scene_limit_local_within_five_percent(biz: Harness, doubles: Doubles):
    await edit_scene(biz, _limit(60, BURST, pb.RATE_LIMIT_MODE_LOCAL))
    allowed, elapsed, refusals = await _hammer([biz], SCORING_KEY)
    assert (allowed - BURST) / elapsed == pytest.approx(60, rel=0.05)
    assert refusals, "the limit never refused a call"
    hints = [int(v) for trailing in refusals for k, v in trailing if k == "retry-after-ms"]
    assert len(hints) == len(refusals) and all(0 < h <= 17 for h in hints)  # a token every 16.7 ms


async def test_api_key_limit_within_five_percent(tmp_path: Path, doubles: Doubles):
    keys = api_key_settings()
    keys[1]["rate_limit"] = {"requests_per_second": 40, "burst": BURST}
    async with run_biz(biz_settings(tmp_path, doubles.static(), auth={"api_keys": keys})) as biz:
        await edit_scene(biz, _limit(0, 0, pb.RATE_LIMIT_MODE_UNSPECIFIED))
        allowed, elapsed, refusals = await _hammer([biz], SCORING_KEY)
        assert (allowed - BURST) / elapsed == pytest.approx(40, rel=0.05)
        assert refusals
        # another key is not held back by the scorer's bucket
        await biz.predict.Predict(churn_request(1), metadata=scoring(ADMIN_KEY))


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
