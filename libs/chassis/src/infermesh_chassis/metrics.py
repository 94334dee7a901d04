"""Prometheus metrics: one registry per service, RED metrics for every RPC, a /metrics endpoint.

Metric names follow ``infermesh_<service>_<what>_<unit>``. Each service owns a
:class:`Metrics` (and its own ``CollectorRegistry``), so several services can live in one
process (tests, the embedded stack) without colliding.

In a worker of a multi-process instance (``PROMETHEUS_MULTIPROC_DIR`` set, see
:mod:`infermesh_chassis.workers`) values live in prometheus_client's per-process files that the parent
sums into one /metrics. Gauges then say how their workers combine (``multiprocess_mode``: ``livesum``
by default, what in-flight and queue sizes need), and values read from a function at scrape time are
written to those files every :data:`FUNCTION_REFRESH_S` instead, since the parent cannot call into a worker.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS_S", "Metrics", "MetricsHttpServer", "RpcMetrics", "metric_prefix", "multiprocess_registry"]

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Histogram buckets tuned for sub-millisecond to multi-second RPCs."""

_NAME_SAFE = re.compile(r"[^a-zA-Z0-9_]")
FUNCTION_REFRESH_S = 1.0
"""In a worker of a multi-process instance, how often function-backed metrics are written to its files."""


def metric_prefix(service: str) -> str:
    """``infermesh_<service>``, with what a metric name cannot hold replaced by ``_``."""
    return f"infermesh_{_NAME_SAFE.sub('_', service)}"


def multiprocess_registry(directory: os.PathLike[str] | str) -> CollectorRegistry:
    """A registry that sums the metric files every worker process writes under ``directory``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry


@dataclass(frozen=True, slots=True)
class RpcMetrics:
    """The RED triple for one side (server or client) of every RPC."""

    requests: Counter
    errors: Counter
    latency: Histogram


@dataclass
class Metrics:
    """All metrics of one service; ``service`` becomes part of every metric name."""

    service: str
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.prefix = metric_prefix(self.service)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._refreshers: list[Callable[[], None]] = []
        self._refresh_lock = threading.Lock()
        self._refresh_thread: threading.Thread | None = None
        self.server = self._rpc_metrics("grpc_server", "handled by this service")
        self.client = self._rpc_metrics("grpc_client", "made by this service to others")
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)

    def _rpc_metrics(self, side: str, what: str) -> RpcMetrics:
        labels = ("grpc_service", "grpc_method")
        return RpcMetrics(
            requests=self.counter(f"{side}_requests", f"RPCs {what}.", labels),
            errors=self.counter(
                f"{side}_errors", f"RPCs {what} that ended with a non-OK status.", (*labels, "grpc_code")
            ),
            latency=self.histogram(f"{side}_latency_seconds", f"Latency of RPCs {what}.", labels),
        )

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter named ``infermesh_<service>_<name>_total`` in this service's registry."""
        return _cache_children(Counter(f"{self.prefix}_{name}", documentation, labels, registry=self.registry))

    def counter_function(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A counter named ``infermesh_<service>_<name>_total`` whose value ``read()`` returns when scraped.

        For counts kept as plain integers on a hot path: nothing is updated per increment.
        """
        if not self.multiprocess:
            self.registry.register(_FunctionCounter(f"{self.prefix}_{name}", documentation, read))
            return
        counter = Counter(f"{self.prefix}_{name}", documentation, registry=self.registry)
        written = [0.0]

        def refresh() -> None:
            value = read()
            if value > written[0]:
                counter.inc(value - written[0])
                written[0] = value

        self._refresh_with(refresh)

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...] = (),
        multiprocess_mode: str = "livesum",
    ) -> Gauge:
        """A gauge named ``infermesh_<service>_<name>`` in this service's registry.

        ``multiprocess_mode`` (prometheus_client's) combines the workers of a multi-process instance:
        ``livesum`` for amounts (in flight, queued), ``livemax``/``livemin`` for a state any worker may
        hold, ``liveall`` to keep one series per worker (a ``pid`` label).
        """
        gauge = Gauge(
            f"{self.prefix}_{name}",
            documentation,
            labels,
            registry=self.registry,
            multiprocess_mode=multiprocess_mode,  # type: ignore[arg-type]
        )
        if self.multiprocess and not labels:
            gauge.set_function = lambda read: self._refresh_with(lambda: gauge.set(read()))  # type: ignore[method-assign]
        return _cache_children(gauge)

    def _refresh_with(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` now and every :data:`FUNCTION_REFRESH_S` from a daemon thread (multi-process mode)."""
        refresh()
        with self._refresh_lock:
            self._refreshers.append(refresh)
            if self._refresh_thread is None:
                self._refresh_thread = threading.Thread(target=self._refresh_loop, name="metrics-refresh", daemon=True)
                self._refresh_thread.start()

    def _refresh_loop(self) -> None:
        while True:
            time.sleep(FUNCTION_REFRESH_S)
            with self._refresh_lock:
                refreshers = list(self._refreshers)
            for refresh in refreshers:
                try:
                    refresh()
                except Exception:  # a failing read must not stop the others; the next round tries again
                    continue

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        """A histogram named ``infermesh_<service>_<name>`` in this service's registry."""
        metric = Histogram(f"{self.prefix}_{name}", documentation, labels, registry=self.registry, buckets=buckets)
        return _cache_children(metric)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return prometheus_client.generate_latest(self.registry)


M = TypeVar("M", Counter, Gauge, Histogram)


def _cache_children(metric: M) -> M:
    """``metric`` with a ``labels(...)`` that looks each child up once.

    prometheus_client's own ``labels()`` turns the values into strings, hashes them and takes a lock
    on every call: a cost paid per request on every hot path that counts by label. Children are
    never removed here, so a child found once stays valid.
    """
    if not metric._labelnames:
        return metric
    lookup = metric.labels
    children: dict[tuple[object, ...], Any] = {}

    def labels(*values: object, **by_name: object) -> Any:
        if by_name:
            return lookup(*values, **by_name)
        child = children.get(values)
        if child is None:
            child = children[values] = lookup(*values)
        return child

    metric.labels = labels  # type: ignore[method-assign]
    return metric


class _FunctionCounter(Collector):
    """One unlabelled counter read from a function at collection time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class MetricsHttpServer:
    """The /metrics endpoint of one service, served from a daemon thread."""

    def __init__(self, metrics: Metrics | CollectorRegistry, host: str, port: int) -> None:
        self._registry = metrics if isinstance(metrics, CollectorRegistry) else metrics.registry
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.server_port)

    def start(self) -> None:
        """Bind and serve in the background."""
        server, thread = prometheus_client.start_http_server(self._port, self._host, registry=self._registry)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
