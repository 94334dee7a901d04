"""Recent scores per (scene, unit), for the cached-score step of a fallback chain.

Every normal answer is remembered (bounded LRU, ``ttl_s`` at most); the fallback step returns
one no older than its own ``max_age``. The cache is per instance: a unit whose last answer came
from another instance has nothing cached here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from infermesh_biz_center.domain import Prediction

__all__ = ["CachedAnswer", "ScoreCache"]


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A remembered answer and when it was given (monotonic seconds)."""

    prediction: Prediction
    model: str
    model_version: int
    at: float


class ScoreCache:
    """Bounded LRU of recent answers (see the module docstring)."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], CachedAnswer] = OrderedDict()

    def put(self, scene: str, unit_id: str, prediction: Prediction, model: str, model_version: int) -> None:
        """Remember the answer just given to ``unit_id`` in ``scene``."""
        if self._max_entries <= 0:
            return
        key = (scene, unit_id)
        self._entries[key] = CachedAnswer(prediction, model, model_version, self._clock())
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def get(self, scene: str, unit_id: str, max_age_s: float) -> CachedAnswer | None:
        """The unit's last answer in ``scene`` if it is at most ``max_age_s`` old."""
        answer = self._entries.get((scene, unit_id))
        if answer is None:
            return None
        age = self._clock() - answer.at
        if age > self._ttl_s:
            del self._entries[(scene, unit_id)]
            return None
        return answer if age <= max_age_s else None
