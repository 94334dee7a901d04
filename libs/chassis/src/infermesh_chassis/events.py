"""Non-blocking event emission for the monitor.

Serving code calls :meth:`EventEmitter.emit`, which only appends to a bounded in-memory
buffer and returns at once; it never awaits, never blocks and never raises because of the
transport. A background task sends the buffer in batches (``batch_size`` events, or
whatever is there after ``flush_interval_s``) to an :class:`EventSink`. When the buffer is
full, new events are dropped and counted (``infermesh_<service>_events_dropped_total``).
When the sink fails, the batch goes back to the front of the buffer and sending backs off,
so events keep their order; the monitor issue adds a disk spool and a NATS sink behind
the same interface.

:func:`new_event` stamps the envelope of the monitor's ``Event`` (id, time, source, request
id); :class:`MonitorSink` delivers batches with the monitor's ``ReportEvents`` RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis import context as ctx
from infermesh_chassis.client import ServiceClient
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import EventSettings

__all__ = ["EVENT_SCHEMA_VERSION", "EventEmitter", "EventSink", "MonitorSink", "new_event"]

EVENT_SCHEMA_VERSION = 1
"""Version of the event schema in protos/infermesh/monitor/v1/monitor.proto."""

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)

_log = get_logger("infermesh_chassis.events")


class EventSink(Protocol[E_contra]):
    """Where batches of events go (the monitor's ReportEvents, NATS JetStream, ...)."""

    async def send(self, events: Sequence[E_contra]) -> None:
        """Deliver ``events`` durably or raise; a raise means none of them counts as sent."""
        ...


class EventEmitter(Generic[E]):
    """Buffers events and sends them in batches in the background (see the module docstring)."""

    def __init__(
        self,
        sink: EventSink[E],
        settings: EventSettings,
        metrics: Metrics,
        *,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._sink = sink
        self._settings = settings
        self._max_backoff_s = max_backoff_s
        self._buffer: deque[E] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._emitted = metrics.counter("events_emitted", "Events handed to the emitter.")
        self._dropped = metrics.counter("events_dropped", "Events dropped because the emitter's buffer was full.")
        self._sent = metrics.counter("events_sent", "Events delivered to the sink.")
        self._failures = metrics.counter("events_send_failures", "Batches the sink failed to take (retried).")
        metrics.gauge("events_buffered", "Events waiting in the emitter's buffer.").set_function(
            lambda: len(self._buffer)
        )

    @property
    def buffered(self) -> int:
        """Events waiting to be sent."""
        return len(self._buffer)

    def emit(self, event: E) -> bool:
        """Queue ``event`` without blocking; False (and a counted drop) when the buffer is full."""
        self._emitted.inc()
        if self._closing or len(self._buffer) >= self._settings.buffer_size:
            self._dropped.inc()
            return False
        self._buffer.append(event)
        if len(self._buffer) >= self._settings.batch_size:
            self._wakeup.set()
        return True

    def start(self) -> None:
        """Start the background sender (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-emitter")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting events, try to send what is buffered within ``timeout_s``, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            _log.warning("event_emitter_stop_timeout", unsent=len(self._buffer))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._settings.flush_interval_s)
                continue
            if len(self._buffer) < self._settings.batch_size and not self._closing:
                with contextlib.suppress(TimeoutError):
                    self._wakeup.clear()
                    await asyncio.wait_for(self._wakeup.wait(), self._settings.flush_interval_s)
            batch = [self._buffer.popleft() for _ in range(min(self._settings.batch_size, len(self._buffer)))]
            try:
                await self._sink.send(batch)
            except Exception as exc:  # the transport is down: keep the events, back off, try again
                self._failures.inc()
                self._buffer.extendleft(reversed(batch))
                backoff = min(self._max_backoff_s, max(0.05, backoff * 2))
                _log.warning("event_send_failed", error=str(exc), batch=len(batch), retry_in_s=backoff)
                if self._closing:
                    return
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            self._sent.inc(len(batch))


def new_event(service: str, instance: str, **payload: object) -> monitor_pb2.Event:
    """An ``Event`` with a fresh id, the current time, its source and the current request id.

    ``payload`` is one of the envelope's oneof fields, e.g. ``inference=InferenceEvent(...)``.
    """
    event = monitor_pb2.Event(
        event_id=uuid.uuid4().hex,
        schema_version=EVENT_SCHEMA_VERSION,
        source=monitor_pb2.EventSource(service=service, instance=instance),
        request_id=ctx.current_request_id() or "",
        **payload,  # type: ignore[arg-type]
    )
    event.time.GetCurrentTime()
    return event


class MonitorSink:
    """Delivers batches to the monitor's ``ReportEvents`` (idempotent: the monitor de-duplicates by id).

    ``client`` is a :class:`ServiceClient` for the monitor built with ``STUB`` and ``IDEMPOTENT``.
    """

    STUB = monitor_pb2_grpc.MonitorServiceStub
    IDEMPOTENT = ("ReportEvents",)

    def __init__(self, client: ServiceClient) -> None:
        self._client = client

    async def send(self, events: Sequence[monitor_pb2.Event]) -> None:
        """Report ``events``; raises (and the emitter retries) when the monitor cannot take them."""
        await self._client.call("ReportEvents", monitor_pb2.ReportEventsRequest(events=events))
