"""What every connector shares: the :class:`Source` interface, its health state and metrics, records."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pandas as pd

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_data_gateway.definitions import SourceDef, ViewDef
from infermesh_data_gateway.types import coerce, micros_to_datetime

TS_COLUMN = "__ts"
"""Column of the event time (UTC microseconds) in frames returned by :meth:`Source.read_offline`."""

_log = get_logger("infermesh_data_gateway.sources")

Key = tuple[Any, ...]


class SourceError(Exception):
    """A source failed to answer (down, timed out, refused, malformed answer)."""


class Health(IntEnum):
    """Health of a source (the numbers of the contract's SourceHealth)."""

    UNKNOWN = 0
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3


@dataclass(frozen=True, slots=True)
class ReadItem:
    """One entity to read: its key values (in the view's key order) and the request's values."""

    key: Key
    request: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    """A view's latest values for one key, and their event time (None when the source does not say)."""

    values: Mapping[str, Any]
    ts: int | None


class SourceMetrics:
    """Metrics shared by every source of a gateway."""

    def __init__(self, metrics: Metrics) -> None:
        self.reads = metrics.counter("source_reads", "Reads from data sources by outcome.", ("source", "outcome"))
        self.latency = metrics.histogram(
            "source_read_latency_seconds", "Latency of reads from data sources.", ("source",)
        )
        self.bad_values = metrics.counter(
            "source_bad_values", "Values a source returned that could not be read as their field's type.", ("source",)
        )
        self.health = metrics.gauge(
            "source_health",
            "Health of each data source: 1 healthy, 2 degraded, 3 down.",
            ("source",),
            multiprocess_mode="livemax",  # the worst any worker sees
        )


class Source(ABC):
    """A configured data source (see the module docstring)."""

    online_writable = False
    offline_readable = False

    def __init__(self, definition: SourceDef, metrics: SourceMetrics) -> None:
        self.definition = definition
        self.name = definition.name
        self.kind = definition.kind
        self.timeout_s = definition.timeout_s
        self.health = Health.UNKNOWN
        self._failures = 0
        self._metrics = metrics
        self._probe_task: asyncio.Task[None] | None = None

    # -- health -----------------------------------------------------------------------------

    def _set_health(self, health: Health) -> None:
        if health is not self.health:
            _log.info("source_health_changed", source=self.name, health=health.name, was=self.health.name)
        self.health = health
        self._metrics.health.labels(self.name).set(int(health))

    def succeeded(self, elapsed_s: float) -> None:
        """Count a successful read."""
        self._failures = 0
        self._metrics.reads.labels(self.name, "ok").inc()
        self._metrics.latency.labels(self.name).observe(elapsed_s)
        if self.health is not Health.HEALTHY:
            self._set_health(Health.HEALTHY)

    def failed(self, outcome: str) -> None:
        """Count a failed read (``timeout`` or ``error``): degraded at once, down after three in a row."""
        self._failures += 1
        self._metrics.reads.labels(self.name, outcome).inc()
        self._set_health(Health.UNHEALTHY if self._failures >= 3 else Health.DEGRADED)

    def start_probing(self) -> None:
        """Check the source every ``health_interval`` in the background (a down source comes back by itself)."""
        if self._probe_task is None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"probe-{self.name}")

    async def _probe_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout_s * 4):
                    await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # a probe that turned our cancellation into its error
                self._failures = max(self._failures, 3)
                if self.health is not Health.UNHEALTHY:
                    _log.warning("source_probe_failed", source=self.name, error=str(exc) or type(exc).__name__)
                self._set_health(Health.UNHEALTHY)
            else:
                if self.health is Health.UNHEALTHY or self.health is Health.UNKNOWN:
                    self._failures = 0
                    self._set_health(Health.HEALTHY)
            await asyncio.sleep(self.definition.health_interval_s)

    async def close(self) -> None:
        """Stop probing and release the pool."""
        await cancel_and_wait(self._probe_task)
        self._probe_task = None

    def _canonical(
        self, view: ViewDef, raw: Mapping[str, Any], columns: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, dtype in view.fields.items():
            value = raw.get(columns.get(name, name) if columns else name)
            try:
                values[name] = coerce(dtype, value)
            except ValueError:
                self._metrics.bad_values.labels(self.name).inc()
                values[name] = None
        return values

    def _offline_timestamps(self, view: ViewDef, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows with every key, and TIMESTAMP fields as nullable int64 microseconds (the batch executor's form)."""
        frame = frame.dropna(subset=[k.name for k in view.keys]).reset_index(drop=True)
        for name, dtype in view.fields.items():
            if dtype.name != "TIMESTAMP":
                continue
            micros = []
            for value in frame[name].tolist():
                try:
                    micros.append(None if pd.isna(value) else coerce(dtype, value))
                except ValueError:
                    self._metrics.bad_values.labels(self.name).inc()
                    micros.append(None)
            frame[name] = pd.array(micros, dtype="Int64")
        return frame

    # -- the operations ----------------------------------------------------------------------

    @abstractmethod
    async def probe(self) -> None:
        """Raise when the source cannot answer."""

    @abstractmethod
    async def read_online(self, view: ViewDef, items: Sequence[ReadItem]) -> list[Record | None]:
        """The latest record of ``view`` for each item (None where there is none), in order."""

    async def read_online_views(
        self, requests: Sequence[tuple[ViewDef, Sequence[ReadItem]]]
    ) -> list[list[Record | None]]:
        """:meth:`read_online` for several views at once (one round trip where the source allows)."""
        return [await self.read_online(view, items) for view, items in requests]

    async def write_online(self, view: ViewDef, rows: Sequence[tuple[Key, Mapping[str, Any], int]]) -> tuple[int, int]:
        """Write (key, canonical values, event time µs) rows, each only if not older than the stored one.

        Returns (written, skipped).
        """
        raise SourceError(f"source {self.name!r} ({self.kind}) is not an online store")

    async def read_offline(self, view: ViewDef, start_us: int | None, end_us: int | None) -> pd.DataFrame:
        """The view's rows with event time in [start, end): key columns, field columns and ``__ts``."""
        raise SourceError(f"source {self.name!r} ({self.kind}) cannot be read in batch")

    async def get_watermark(self, view: str) -> int | None:
        """The last materialization watermark of ``view`` (µs), if any."""
        raise SourceError(f"source {self.name!r} ({self.kind}) keeps no watermarks")

    async def set_watermark(self, view: str, watermark_us: int) -> None:
        """Record the materialization watermark of ``view``."""
        raise SourceError(f"source {self.name!r} ({self.kind}) keeps no watermarks")


def latest_records(
    rows: Sequence[tuple[Key, Record]], keys: Sequence[Key], as_of_us: int | None = None
) -> list[Record | None]:
    """For each of ``keys``, the newest of ``rows`` at or before ``as_of_us`` (None when there is none)."""
    best: dict[Key, Record] = {}
    for key, record in rows:
        if record.ts is not None and as_of_us is not None and record.ts > as_of_us:
            continue
        current = best.get(key)
        if current is None or (record.ts or 0) >= (current.ts or 0):
            best[key] = record
    return [best.get(key) for key in keys]


def now_us() -> int:
    """Now, in UTC microseconds."""
    return time.time_ns() // 1000


def iso_text(micros: int) -> str:
    """``micros`` (UTC µs) as ISO 8601 text with microseconds and ``+00:00``."""
    return micros_to_datetime(micros).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def in_range(frame: pd.DataFrame, start_us: int | None, end_us: int | None) -> pd.DataFrame:
    """The rows of ``frame`` whose ``__ts`` is in [start, end) (an open end where None)."""
    frame = frame.astype({TS_COLUMN: "int64"})
    mask = pd.Series(True, index=frame.index)
    if start_us is not None:
        mask &= frame[TS_COLUMN] >= start_us
    if end_us is not None:
        mask &= frame[TS_COLUMN] < end_us
    return frame[mask].reset_index(drop=True)
