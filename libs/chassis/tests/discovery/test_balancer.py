"""Balancer: power of two choices on in-flight requests."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random

import pytest

from infermesh_chassis.discovery import Balancer, Instance
from infermesh_chassis.errors import Unavailable


def _instances(count: int) -> list[Instance]:
    return [Instance("worker", f"worker-{port}", "127.0.0.1", port) for port in range(7000, 7000 + count)]


def test_single_instance_is_picked_and_none_is_unavailable():
    balancer = Balancer()
    [only] = _instances(1)

    assert balancer.pick([only]) is only
    with pytest.raises(Unavailable, match="no instances"):
        balancer.pick([])


def test_prefers_the_less_loaded_of_two():
    balancer = Balancer(random.Random(1))
    busy, idle = _instances(2)
    with contextlib.ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(balancer.track(busy))
        stack.enter_context(balancer.track(idle))

        assert balancer.in_flight(busy) == 5
        assert {balancer.pick([busy, idle]) for _ in range(200)} == {idle}
        assert {balancer.pick([idle, busy]) for _ in range(200)} == {idle}

    assert balancer.in_flight(busy) == balancer.in_flight(idle) == 0


def test_ties_are_broken_at_random():
    balancer = Balancer(random.Random(2))
    first, second = _instances(2)

    picks = collections.Counter(balancer.pick([first, second]) for _ in range(2000))

    assert 800 < picks[first] < 1200


def test_never_picks_the_most_loaded_of_three():
    balancer = Balancer(random.Random(3))
    low, mid, high = _instances(3)
    with contextlib.ExitStack() as stack:
        for instance, load in ((low, 1), (mid, 2), (high, 3)):
            for _ in range(load):
                stack.enter_context(balancer.track(instance))

        picks = collections.Counter(balancer.pick([low, mid, high]) for _ in range(3000))

    assert high not in picks
    # low wins whenever it is sampled (2 of 3 pairs); mid only in the pair (mid, high).
    assert 1800 < picks[low] < 2200


async def test_spreads_concurrent_tracked_calls_evenly():
    balancer = Balancer(random.Random(4))
    instances = _instances(4)
    delays = random.Random(5)
    served: collections.Counter[Instance] = collections.Counter()
    peak: collections.Counter[Instance] = collections.Counter()

    async def call() -> None:
        instance = balancer.pick(instances)
        with balancer.track(instance):
            served[instance] += 1
            peak[instance] = max(peak[instance], balancer.in_flight(instance))
            await asyncio.sleep(delays.uniform(0, 0.01))

    for _ in range(4):
        await asyncio.gather(*(call() for _ in range(200)))

    assert sum(served.values()) == 800
    assert all(170 <= served[instance] <= 230 for instance in instances), served
    assert max(peak.values()) - min(peak.values()) <= 2, peak
    assert all(balancer.in_flight(instance) == 0 for instance in instances)


async def test_in_flight_returns_to_zero_after_exceptions():
    balancer = Balancer(random.Random(6))
    instances = _instances(3)

    async def failing_call() -> None:
        with balancer.track(balancer.pick(instances)):
            await asyncio.sleep(0.001)
            raise ConnectionError("downstream failed")

    results = await asyncio.gather(*(failing_call() for _ in range(60)), return_exceptions=True)

    assert all(isinstance(result, ConnectionError) for result in results)
    assert [balancer.in_flight(instance) for instance in instances] == [0, 0, 0]
    with pytest.raises(KeyError), balancer.track(instances[0]):
        assert balancer.in_flight(instances[0]) == 1
        raise KeyError("boom")
    assert balancer.in_flight(instances[0]) == 0


def test_in_flight_is_counted_per_address():
    balancer = Balancer()
    one = Instance("model-gateway", "mg-1", "127.0.0.1", 7000)
    same_address = Instance("model-gateway", "mg-1-restarted", "127.0.0.1", 7000)

    with balancer.track(one):
        assert balancer.in_flight(same_address) == 1
