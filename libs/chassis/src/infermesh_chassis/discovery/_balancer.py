"""Client-side load balancing: power of two choices on in-flight requests."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator, Sequence

from infermesh_chassis.discovery._base import Instance
from infermesh_chassis.errors import Unavailable


class Balancer:
    """Picks the instance for each call by the power of two choices over in-flight requests.

    Two distinct instances are sampled at random and the one with fewer calls in flight wins
    (ties go to the first sampled, itself random). In-flight counts are kept per address, so
    a balancer shared by several callers of the same instances sees all their load. Wrap each
    call in :meth:`track` so the counts stay true; the counts are safe to update from threads.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def pick(self, instances: Sequence[Instance]) -> Instance:
        """The less loaded of two instances sampled at random; the only one if there is one."""
        if not instances:
            raise Unavailable("no instances to pick from")
        if len(instances) == 1:
            return instances[0]
        first, second = self._rng.sample(instances, 2)
        return second if self.in_flight(second) < self.in_flight(first) else first

    def track(self, instance: Instance) -> contextlib.AbstractContextManager[None]:
        """Count one call in flight to ``instance`` for the duration of the ``with`` block."""
        return self._tracking(instance.address)

    def in_flight(self, instance: Instance) -> int:
        """Calls to ``instance``'s address currently inside :meth:`track`."""
        return self._in_flight.get(instance.address, 0)

    @contextlib.contextmanager
    def _tracking(self, address: str) -> Iterator[None]:
        with self._lock:
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                remaining = self._in_flight[address] - 1
                if remaining:
                    self._in_flight[address] = remaining
                else:
                    del self._in_flight[address]
