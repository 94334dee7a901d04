"""Reading a feature view for a request: routing rules, the fallback chain, and the read-through cache.

For each entity the view's routing rules pick a chain of sources (the first rule that
matches the request's routing attributes and the entity's keys, else the view's default
chain). Entities sharing a chain are read together; chains are read concurrently. Each
source gets its own timeout; a source that fails or times out hands the remaining entities
to the next one in the chain, and a source known to be down is skipped while another can
answer. When a view has a cache, fresh entries (records and known absences) are served from
it; answers of the chain's first source fill it (a fallback's are not kept, so the primary
is used again as soon as it recovers). Views without routes or cache whose first source is
the same share one call to it (one MGET for Redis).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_data_gateway.definitions import ViewDef
from infermesh_data_gateway.executor import ViewRead
from infermesh_data_gateway.sources import Health, ReadItem, Record, Source, SourceError

__all__ = ["FeatureReader", "ReadCache", "ViewUnavailable"]

_log = get_logger("infermesh_data_gateway.routing")


class ViewUnavailable(Exception):
    """Every source of a view's chain failed for some entities."""

    def __init__(self, view: str, errors: list[str]) -> None:
        super().__init__(f"feature view {view!r}: every source failed ({'; '.join(errors) or 'no source'})")
        self.view = view
        self.errors = errors


@dataclass(slots=True)
class _Entry:
    expires: float
    record: Record | None
    source: str
    from_fallback: bool


class ReadCache:
    """A read-through cache per view: bounded, entries expire after the view's cache TTL."""

    def __init__(self, metrics: Metrics) -> None:
        self._entries: dict[str, OrderedDict[tuple[Any, ...], _Entry]] = {}
        self._lookups = metrics.counter(
            "cache_lookups", "Read-through cache lookups by view and outcome.", ("view", "outcome")
        )
        self._ratio = metrics.gauge(  # one cache per worker: one series per worker (pid)
            "cache_hit_ratio", "Share of cache lookups that hit, per view.", ("view",), multiprocess_mode="liveall"
        )
        self._counts: dict[str, list[int]] = {}

    def get(self, view: str, key: tuple[Any, ...]) -> _Entry | None:
        """The fresh entry for ``key`` (the chain read and the entity key), or None (a miss)."""
        entries = self._entries.get(view)
        entry = None if entries is None else entries.get(key)
        if entry is not None and entry.expires < time.monotonic():
            del entries[key]  # type: ignore[union-attr]
            entry = None
        counts = self._counts.setdefault(view, [0, 0])
        counts[0 if entry is not None else 1] += 1
        self._lookups.labels(view, "hit" if entry is not None else "miss").inc()
        self._ratio.labels(view).set(counts[0] / (counts[0] + counts[1]))
        return entry

    def put(self, view: ViewDef, key: tuple[Any, ...], record: Record | None, source: str, from_fallback: bool) -> None:
        """Remember what ``source`` answered for ``key`` (an absence too)."""
        assert view.cache_ttl_s is not None
        entries = self._entries.setdefault(view.name, OrderedDict())
        entries[key] = _Entry(time.monotonic() + view.cache_ttl_s, record, source, from_fallback)
        entries.move_to_end(key)
        while len(entries) > view.cache_max_entries:
            entries.popitem(last=False)

    def invalidate(self, view: ViewDef, keys: Sequence[tuple[Any, ...]]) -> None:
        """Forget ``keys`` of ``view`` on every route (after a push or a materialization wrote newer values)."""
        entries = self._entries.get(view.name)
        if entries is not None:
            chains = {view.chain, *(route.chain for route in view.routes)}
            for key in keys:
                for chain in chains:
                    entries.pop((chain, key), None)

    def hit_rate(self, view: str) -> float:
        """Share of lookups of ``view`` that hit so far (0 before any)."""
        hits, misses = self._counts.get(view, (0, 0))
        return hits / (hits + misses) if hits + misses else 0.0


class LabelledCounter(Protocol):
    """A Prometheus counter with labels (what :meth:`Metrics.counter` returns)."""

    def labels(self, *values: str) -> Any:
        """The child counter of these label values."""


class FeatureReader:
    """Reads feature views through routing, fallback chains and the cache."""

    def __init__(self, sources: Mapping[str, Source], cache: ReadCache, fallbacks: LabelledCounter) -> None:
        self.sources = sources
        self.cache = cache
        self._fallbacks = fallbacks
        """Counter of entities served by a fallback, by view and source (shared by every version's reader)."""

    async def read(
        self,
        view: ViewDef,
        items: Sequence[ReadItem],
        keys: Sequence[Mapping[str, Any]],
        attributes: Mapping[str, str],
    ) -> list[ViewRead]:
        """One :class:`ViewRead` per item, in order; ViewUnavailable when a chain is exhausted."""
        results: list[ViewRead | None] = [None] * len(items)
        groups: dict[tuple[str, ...], list[int]] = {}
        for index in range(len(items)):
            chain = view.chain_for(attributes, keys[index]) if view.routes else view.chain
            if view.cache_ttl_s is not None:
                entry = self.cache.get(view.name, (chain, items[index].key))
                if entry is not None:
                    record = entry.record
                    results[index] = ViewRead(
                        None if record is None else record.values,
                        None if record is None else record.ts,
                        entry.source,
                        entry.from_fallback,
                        from_cache=True,
                    )
                    continue
            groups.setdefault(chain, []).append(index)
        if len(groups) == 1:
            chain, indexes = next(iter(groups.items()))
            await self._read_chain(view, chain, indexes, items, results)
        elif groups:
            await asyncio.gather(
                *(self._read_chain(view, chain, indexes, items, results) for chain, indexes in groups.items())
            )
        return [r if r is not None else ViewRead(None) for r in results]

    async def read_views(
        self,
        views: Sequence[ViewDef],
        items: Sequence[Sequence[ReadItem]],
        keys: Sequence[Mapping[str, Any]],
        attributes: Mapping[str, str],
    ) -> list[list[ViewRead]]:
        """:meth:`read` for several views (``items[i]`` for ``views[i]``), concurrently.

        Views without routes and cache whose first source is the same are read in one call to it
        (one round trip for Redis); if that call fails, each continues down its own chain.
        """
        results: list[list[ViewRead]] = [[] for _ in views]
        together: dict[str, list[int]] = {}
        alone: list[int] = []
        for index, view in enumerate(views):
            if view.routes or view.cache_ttl_s is not None:
                alone.append(index)
            else:
                together.setdefault(view.chain[0], []).append(index)
        jobs = []
        for name, indexes in together.items():
            if len(indexes) > 1 and self.sources[name].health is not Health.UNHEALTHY:
                jobs.append(
                    self._read_together(
                        name, [views[i] for i in indexes], [items[i] for i in indexes], indexes, results
                    )
                )
            else:
                alone.extend(indexes)

        async def one(index: int) -> None:
            results[index] = await self.read(views[index], items[index], keys, attributes)

        jobs += [one(index) for index in alone]
        if len(jobs) == 1:
            await jobs[0]
        else:
            await asyncio.gather(*jobs)
        return results

    async def _read_together(
        self,
        name: str,
        views: list[ViewDef],
        items: list[Sequence[ReadItem]],
        indexes: list[int],
        results: list[list[ViewRead]],
    ) -> None:
        source = self.sources[name]
        started = time.perf_counter()
        error = None
        try:
            async with asyncio.timeout(source.timeout_s):
                records = await source.read_online_views(list(zip(views, items, strict=True)))
        except TimeoutError:
            source.failed("timeout")
            error = f"{name}: no answer within {source.timeout_s * 1000:.0f} ms"
        except SourceError as exc:
            source.failed("error")
            error = f"{name}: {exc}"
        if error is None:
            source.succeeded(time.perf_counter() - started)
            for index, view_records in zip(indexes, records, strict=True):
                results[index] = [
                    ViewRead(None, None, name) if r is None else ViewRead(r.values, r.ts, name) for r in view_records
                ]
            return

        async def rest(view: ViewDef, view_items: Sequence[ReadItem], index: int) -> None:
            reads: list[ViewRead | None] = [None] * len(view_items)
            await self._read_chain(
                view, view.chain, list(range(len(view_items))), view_items, reads, failed_first=error
            )
            results[index] = [r if r is not None else ViewRead(None) for r in reads]

        await asyncio.gather(*(rest(v, i, x) for v, i, x in zip(views, items, indexes, strict=True)))

    async def _read_chain(
        self,
        view: ViewDef,
        chain: tuple[str, ...],
        indexes: list[int],
        items: Sequence[ReadItem],
        results: list[ViewRead | None],
        *,
        failed_first: str | None = None,
    ) -> None:
        candidates = chain if failed_first is None else chain[1:]
        order = [name for name in candidates if self.sources[name].health is not Health.UNHEALTHY] or list(candidates)
        errors: list[str] = [] if failed_first is None else [failed_first]
        batch = [items[i] for i in indexes]
        for name in order:
            source = self.sources[name]
            started = time.perf_counter()
            try:
                async with asyncio.timeout(source.timeout_s):
                    records = await source.read_online(view, batch)
            except TimeoutError:
                source.failed("timeout")
                errors.append(f"{name}: no answer within {source.timeout_s * 1000:.0f} ms")
                continue
            except SourceError as exc:
                source.failed("error")
                errors.append(f"{name}: {exc}")
                continue
            except Exception as exc:  # a connector bug must not hide the next source
                source.failed("error")
                _log.exception("source_read_crashed", source=name, view=view.name)
                errors.append(f"{name}: {type(exc).__name__}")
                continue
            source.succeeded(time.perf_counter() - started)
            fallback = name != chain[0]
            if fallback:
                self._fallbacks.labels(view.name, name).inc(len(indexes))
            for index, record in zip(indexes, records, strict=True):
                results[index] = ViewRead(
                    None if record is None else record.values, None if record is None else record.ts, name, fallback
                )
                if view.cache_ttl_s is not None and not fallback:  # a fallback answer is not kept past recovery
                    self.cache.put(view, (chain, items[index].key), record, name, fallback)
            return
        if not view.defaults_when_unavailable:
            raise ViewUnavailable(view.name, errors)
        _log.warning("view_unavailable_defaults_served", view=view.name, errors=errors)
        for index in indexes:
            results[index] = ViewRead(None)
