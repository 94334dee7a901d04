"""Windowed serving stats: exact answers from the raw events, and a Prometheus export from a rollup.

:class:`StatsQueries` answers QueryStats (and feeds CheckSlo) from ``inference_events``: exact
quantiles (``quantileExactInclusive``, the same definition as numpy's default percentile) over
exactly the window asked. :class:`WindowExporter` recomputes the 1 min, 5 min and 1 h windows of
every (service, scene, variant, model, version) group every ``export_interval_s`` from the
10-second ``inference_rollup`` (t-digest quantiles), cheap at any event rate, and serves them as
Prometheus gauges ``infermesh_monitor_window_*`` (windows start on a 10 s boundary, so "1m" covers
60 to 70 seconds).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_monitor.settings import AnalysisSettings
from infermesh_monitor.store import Store, StoreError

__all__ = ["DIMENSIONS", "GroupStats", "StatsQueries", "WindowExporter", "micros"]

_log = get_logger("infermesh_monitor.stats")

DIMENSIONS = ("scene", "variant", "model", "model_version", "source_service", "worker")
"""Columns stats can be grouped and filtered by."""

EXPORT_WINDOWS = {"1m": 60, "5m": 300, "1h": 3600}


def micros(epoch_s: float) -> int:
    """Seconds since the epoch as integer microseconds (the form time parameters take)."""
    return round(epoch_s * 1_000_000)


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Stats of one group over a window."""

    group: dict[str, str | int]
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    degraded: int

    @property
    def error_rate(self) -> float:
        """Fraction of requests with a non-OK status."""
        return self.errors / self.count if self.count else 0.0

    @property
    def degraded_rate(self) -> float:
        """Fraction of degraded answers."""
        return self.degraded / self.count if self.count else 0.0


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


class StatsQueries:
    """Exact windowed stats over ``inference_events``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def groups(
        self,
        start_s: float,
        end_s: float,
        group_by: Sequence[str],
        filters: dict[str, str | int],
    ) -> list[GroupStats]:
        """Stats per group of ``group_by`` for events in [start_s, end_s) matching ``filters``."""
        unknown = [d for d in (*group_by, *filters) if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown stats dimensions {unknown}")
        where = [
            "time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')",
            "time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')",
        ]
        params: dict[str, object] = {"start": micros(start_s), "end": micros(end_s)}
        for i, (column, value) in enumerate(sorted(filters.items())):
            kind = "Int64" if column == "model_version" else "String"
            where.append(f"{column} = {{f{i}:{kind}}}")
            params[f"f{i}"] = value
        keys = ", ".join(group_by)
        select = f"{keys}, " if keys else ""
        rows = await self._store.rows(
            f"""SELECT {select}count(), quantilesExactInclusive(0.5, 0.95, 0.99)(latency_ms), avg(latency_ms),
                countIf(status_code != 0), countIf(degraded)
            FROM inference_events WHERE {" AND ".join(where)}
            {f"GROUP BY {keys} ORDER BY {keys}" if keys else ""}""",
            params,
        )
        out = []
        for row in rows:
            group = dict(zip(group_by, row[: len(group_by)], strict=True))
            count, quantiles, mean, errors, degraded = row[len(group_by) :]
            if not count:
                continue
            p50, p95, p99 = (_number(q) for q in quantiles)
            out.append(GroupStats(group, int(count), p50, p95, p99, _number(mean), int(errors), int(degraded)))
        return out


@dataclass(frozen=True, slots=True)
class _Exported:
    labels: tuple[str, str, str, str, str]
    window: str
    requests: int
    throughput: float
    quantiles: tuple[float, float, float]
    error_rate: float
    degraded_rate: float


_LABELS = ("source_service", "scene", "variant", "model", "version")


class WindowExporter(Collector):
    """Prometheus gauges of the 1m/5m/1h windows, refreshed in the background (see the module docstring)."""

    def __init__(self, store: Store, metrics: Metrics, settings: AnalysisSettings) -> None:
        self._store = store
        self._settings = settings
        self._prefix = metrics.prefix
        self._snapshot: list[_Exported] = []
        self._task: asyncio.Task[None] | None = None
        self._refreshes = metrics.counter("window_refreshes", "Recomputations of the exported windows.")
        self._refresh_failures = metrics.counter("window_refresh_failures", "Failed recomputations of the windows.")
        metrics.gauge("slo_p99_latency_ms", "Mesh-wide p99 latency objective (ms) the alert rules compare with.").set(
            settings.slo_p99_latency_ms
        )
        metrics.gauge("slo_error_rate", "Mesh-wide error-rate objective the alert rules compare with.").set(
            settings.slo_error_rate
        )
        metrics.registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The latest snapshot as gauge families (called by the Prometheus client on a scrape)."""
        labels = [*_LABELS, "window"]
        requests = GaugeMetricFamily(f"{self._prefix}_window_requests", "Requests in the window.", labels=labels)
        throughput = GaugeMetricFamily(
            f"{self._prefix}_window_throughput_rps", "Requests per second over the window.", labels=labels
        )
        latency = GaugeMetricFamily(
            f"{self._prefix}_window_latency_ms", "Latency quantiles over the window, ms.", labels=[*labels, "quantile"]
        )
        errors = GaugeMetricFamily(
            f"{self._prefix}_window_error_rate", "Fraction of requests with a non-OK status.", labels=labels
        )
        degraded = GaugeMetricFamily(
            f"{self._prefix}_window_degraded_rate", "Fraction of degraded answers.", labels=labels
        )
        for item in self._snapshot:
            values = [*item.labels, item.window]
            requests.add_metric(values, item.requests)
            throughput.add_metric(values, item.throughput)
            for q, value in zip(("0.5", "0.95", "0.99"), item.quantiles, strict=True):
                latency.add_metric([*values, q], value)
            errors.add_metric(values, item.error_rate)
            degraded.add_metric(values, item.degraded_rate)
        yield from (requests, throughput, latency, errors, degraded)

    async def refresh(self, now_s: float | None = None) -> None:
        """Recompute every window from the rollup."""
        now = time.time() if now_s is None else now_s
        starts = {name: math.floor((now - seconds) / 10) * 10 for name, seconds in EXPORT_WINDOWS.items()}
        params: dict[str, object] = {f"s{name}": start for name, start in starts.items()}
        params["limit"] = self._settings.export_max_groups
        per_window = ", ".join(
            f"""sumIf(requests, bucket >= toDateTime({{s{name}:UInt32}}, 'UTC')),
                sumIf(errors, bucket >= toDateTime({{s{name}:UInt32}}, 'UTC')),
                sumIf(degraded, bucket >= toDateTime({{s{name}:UInt32}}, 'UTC')),
                quantilesTDigestMergeIf(0.5, 0.95, 0.99)(latency, bucket >= toDateTime({{s{name}:UInt32}}, 'UTC'))"""
            for name in EXPORT_WINDOWS
        )
        rows = await self._store.rows(
            f"""SELECT source_service, scene, variant, model, model_version, {per_window}
            FROM inference_rollup WHERE bucket >= toDateTime({{s1h:UInt32}}, 'UTC')
            GROUP BY source_service, scene, variant, model, model_version
            ORDER BY sum(requests) DESC LIMIT {{limit:UInt32}}""",
            params,
        )
        snapshot = []
        for row in rows:
            labels = (str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]))
            for i, (name, start) in enumerate(starts.items()):
                requests, errors, degraded, quantiles = row[5 + 4 * i : 9 + 4 * i]
                if not requests:
                    continue
                p50, p95, p99 = (_number(q) for q in quantiles)
                snapshot.append(
                    _Exported(
                        labels,
                        name,
                        int(requests),
                        int(requests) / max(1.0, now - start),
                        (p50, p95, p99),
                        int(errors) / int(requests),
                        int(degraded) / int(requests),
                    )
                )
        self._snapshot = snapshot
        self._refreshes.inc()

    def start(self) -> None:
        """Refresh every ``export_interval_s`` in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="window-exporter")

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except StoreError as exc:
                self._refresh_failures.inc()
                _log.warning("window_refresh_failed", error=str(exc))
            await asyncio.sleep(self._settings.export_interval_s)

    async def stop(self) -> None:
        """Stop refreshing."""
        await cancel_and_wait(self._task)
        self._task = None
