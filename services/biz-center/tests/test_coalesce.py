"""Request coalescing: concurrent requests share downstream calls without changing any answer, one bad
request cannot fail the others, and each member keeps its own deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

import grpc
import pytest
from bizcenter_support import Doubles, Harness, churn_request, edit_scene, scoring

from infermesh_biz_center.coalesce import Coalescer
from infermesh_chassis import context as ctx
from infermesh_chassis.errors import DeadlineExceeded, InvalidArgument, Unavailable


async def test_concurrent_requests_share_downstream_calls_and_answer_the_same(biz: Harness, doubles: Doubles):
    # what is checked here is coalescing, not the SLO: on a loaded machine 48 requests could miss 250 ms
    await edit_scene(biz, lambda scene: scene.slo_deadline.FromSeconds(5))
    alone = {u: await biz.predict.Predict(churn_request(u), metadata=scoring()) for u in (1, 2, 3, 4)}
    assert set(doubles.data.batch_sizes) == {1} and set(doubles.models.batch_sizes) == {1}
    doubles.models.delay_s = 0.02  # let requests pile up behind the calls in flight
    together = await asyncio.gather(
        *(biz.predict.Predict(churn_request(1 + i % 4), metadata=scoring()) for i in range(48))
    )
    assert max(doubles.models.batch_sizes) > 1 and max(doubles.data.batch_sizes) > 1
    assert len(doubles.models.batch_sizes) < 4 + 48  # fewer model calls than requests
    for i, answer in enumerate(together):
        expected = alone[1 + i % 4]
        assert (answer.variant, answer.model_version) == (expected.variant, expected.model_version)
        assert dict(answer.prediction.scores) == pytest.approx(dict(expected.prediction.scores))
        assert not answer.degradation.degraded


async def test_one_bad_request_does_not_fail_its_batch(biz: Harness, doubles: Doubles):
    doubles.data.delay_s = 0.02

    async def call(unit: int) -> str:
        try:
            await biz.predict.Predict(churn_request(unit), metadata=scoring())
            return "ok"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    outcomes = await asyncio.gather(*(call(-1 if i == 5 else 1 + i % 4) for i in range(20)))
    assert outcomes[5] == "INVALID_ARGUMENT"
    assert outcomes[:5] + outcomes[6:] == ["ok"] * 19


async def test_members_keep_their_own_deadlines():
    # Each downstream call waits for the test to release it (no sleeps): what is checked is the order of
    # events, which a slow machine cannot change.
    calls: list[tuple[list[int], float]] = []
    released = [asyncio.Event(), asyncio.Event()]
    called = asyncio.Event()

    async def slow(key: Hashable, items: list[int], timeout_s: float) -> list[int]:
        calls.append((items, timeout_s))
        remaining = ctx.remaining_time()  # downstream clients bound their deadline by the call context's
        assert remaining is not None and remaining <= timeout_s and remaining == pytest.approx(timeout_s, abs=1.0)
        called.set()
        await released[len(calls) - 1].wait()
        return [i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(slow, max_batch=8, max_in_flight=1)
    token = ctx.bind(ctx.CallContext("first", time.monotonic() + 10.0))
    first = asyncio.ensure_future(coalescer.submit("k", 1, 10.0))
    ctx.unbind(token)
    await called.wait()
    called.clear()
    patient = asyncio.ensure_future(coalescer.submit("k", 2, 10.0))
    hasty = asyncio.ensure_future(coalescer.submit("k", 3, 0.25))
    released[0].set()  # the first call returns: the waiting two leave as one batch
    assert await first == 10
    await called.wait()
    assert [items for items, _ in calls] == [[1], [2, 3]]
    assert calls[1][1] > 5  # the batch runs for its most patient member
    with pytest.raises(DeadlineExceeded):
        await hasty  # its own deadline passes while its batch is still running
    assert not patient.done()
    released[1].set()
    assert await patient == 20


async def test_a_batch_failure_is_every_members_and_content_errors_are_split():
    async def flaky(key: Hashable, items: list[int], timeout_s: float) -> list[int]:
        await asyncio.sleep(0.01)
        if key == "down":
            raise Unavailable("downstream is down")
        if -1 in items:
            raise InvalidArgument("items: -1 is not allowed")
        return items

    coalescer: Coalescer[int, int] = Coalescer(flaky, max_batch=8, max_in_flight=1)
    results = await asyncio.gather(*(coalescer.submit("down", i, 1.0) for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    results = await asyncio.gather(*(coalescer.submit("up", i, 1.0) for i in (1, 2, -1, 3, 4)), return_exceptions=True)
    assert results[:2] + results[3:] == [1, 2, 3, 4]
    assert isinstance(results[2], InvalidArgument)
