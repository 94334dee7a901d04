"""Non-blocking event emission for the monitor, through NATS JetStream or the monitor's RPC.

Serving code calls :meth:`EventEmitter.emit` with an :class:`EventSource` and a payload: a
slotted object of plain values (see :class:`EventPayload`) that returns the fields of its part of
the monitor's ``Event`` when asked. ``emit`` stamps the time, the current request id and, inside a sampled
request, the current trace and span ids (:mod:`.tracing`), appends one tuple to
a bounded in-memory buffer and returns at once; it builds no protobuf message, never awaits, never
blocks and never raises because of the transport. A background task cuts the buffer into batches
(``batch_size`` events, or whatever is there after ``flush_interval_s``), builds each batch as one
``EventBatch`` in one pass (one ``events.add(...)`` per event, nested messages built in place from
plain values, in chunks that yield to the event loop between them) and serializes it once into an
:class:`EncodedBatch` for the :class:`EventSink`. When the buffer is full, new events are dropped
and counted (``infermesh_<service>_events_dropped_total``; the emitted and dropped counters are
read from plain integers when scraped, so emitting costs no metric update). A batch the sink
refuses is retried as it is (the same bytes), with a growing backoff, so a retried batch keeps its
id (:func:`batch_id`) and the monitor can drop it whole if an earlier attempt did arrive.

Sinks:

- :class:`NatsSink` publishes each batch as one :class:`EventBatch` message on JetStream, with
  the batch id as ``Nats-Msg-Id`` (JetStream drops a republished batch within its duplicate
  window), and counts it sent only once JetStream's acknowledgement came back.
- :class:`MonitorSink` calls the monitor's ``ReportEvents`` (the fallback without a queue), named by
  the emitting service as an :class:`IngestRpc`: the chassis depends on the event envelope
  (``infermesh.common.v1``, events.proto), never on the monitor's service contract.
- :class:`SpoolingSink` wraps either: when the transport fails, the batch goes to a
  :class:`DiskSpool` (files under ``spool_dir``), and so does every later batch until the spool
  is empty again, so order is kept; a background task replays the spool, oldest first, as soon as
  the transport takes batches again, also after a restart of the process.

Delivery is at least once; the monitor de-duplicates by batch id and event id. The trace context travels
in each event (``trace_id``, ``span_id``), not in a message header: one queue message is a batch of many
requests' events.
:func:`open_event_sink` builds the sink the settings ask for. :func:`encode_events` stamps the
envelope of each ``Event`` (id, schema version, time, source, request id, trace and span ids); :class:`UnitHasher` is
the keyed hash every service applies to unit ids before they leave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import hmac
import itertools
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import grpc
from nats.js import api as js_api

from infermesh.common.v1 import common_pb2, events_pb2
from infermesh_chassis import context as ctx
from infermesh_chassis import jetstream
from infermesh_chassis.client import ServiceClient
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.retry import Backoff, retry
from infermesh_chassis.settings import EventSettings
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_chassis.tracing import current_ids

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "AuditPayload",
    "DiskSpool",
    "EncodedBatch",
    "EventEmitter",
    "EventPayload",
    "EventSink",
    "EventSource",
    "IngestRpc",
    "MonitorSink",
    "NatsSink",
    "PendingEvent",
    "SpoolingSink",
    "UnitHasher",
    "batch_id",
    "decode_batch",
    "encode_batch",
    "encode_events",
    "ensure_stream",
    "hash_unit_id",
    "new_event_id",
    "open_event_sink",
]

EVENT_SCHEMA_VERSION = 1
"""Version of the event schema in protos/infermesh/common/v1/events.proto."""

BUILD_CHUNK = 128
"""Events written into a batch between two yields to the event loop (a few hundred microseconds)."""

Event = events_pb2.Event

_log = get_logger("infermesh_chassis.events")


class EventPayload(Protocol):
    """What one event says, kept as plain values until its batch is built.

    ``KIND`` names the ``Event`` oneof field it fills (``"inference"``, ``"shadow"``, ...);
    :meth:`fields` returns that message's fields as keyword values (nested messages as dicts,
    repeated fields as sequences, maps as dicts), which protobuf writes in place in one call.
    Implementations are slotted classes built on the request path without touching protobuf.
    """

    KIND: ClassVar[str]

    def fields(self) -> Mapping[str, Any]:
        """The payload message's fields (called once, when the batch is built)."""
        ...


class EventSource:
    """The service instance that emits (one per emitting component, built once)."""

    __slots__ = ("fields", "instance", "service")

    def __init__(self, service: str, instance: str) -> None:
        self.service = service
        self.instance = instance
        self.fields = {"service": service, "instance": instance}


class AuditPayload:
    """An audit entry of a service (control plane: the entry is already a message)."""

    __slots__ = ("entry", "service")
    KIND: ClassVar[str] = "audit"

    def __init__(self, service: str, entry: common_pb2.AuditEntry) -> None:
        self.service = service
        self.entry = entry

    def fields(self) -> Mapping[str, Any]:
        """The ``AuditEvent`` fields."""
        return {"service": self.service, "entry": self.entry}


PendingEvent = tuple[EventSource, EventPayload, str, int, tuple[str, str] | None]
"""What :meth:`EventEmitter.emit` records: source, payload, request id ("" when none), time in ns, and the
trace and span ids of a sampled request (None otherwise)."""


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One serialized ``EventBatch``: a queue message, a spool record, a ``ReportEvents`` request."""

    id: str
    """The batch id (:func:`batch_id` of its event ids)."""
    payload: bytes
    """The serialized ``EventBatch`` (the same bytes as a ``ReportEventsRequest``: both are field 1)."""
    events: int
    """Events in the batch."""

    @classmethod
    def from_payload(cls, payload: bytes) -> EncodedBatch:
        """The batch a serialized ``EventBatch`` is (its id recomputed from its event ids)."""
        events = events_pb2.EventBatch.FromString(payload).events
        return cls(batch_id(e.event_id for e in events), payload, len(events))


class EventSink(Protocol):
    """Where batches of events go (the monitor's ReportEvents, NATS JetStream, ...)."""

    async def send(self, batch: EncodedBatch) -> None:
        """Deliver ``batch`` durably or raise; a raise means none of its events counts as sent."""
        ...


def _write(events: Any, records: Sequence[PendingEvent], ids: list[str]) -> None:
    add = events.add
    for source, payload, request_id, time_ns, trace in records:
        event_id = new_event_id()
        seconds, nanos = divmod(time_ns, 1_000_000_000)
        try:
            add(
                event_id=event_id,
                schema_version=EVENT_SCHEMA_VERSION,
                request_id=request_id,
                trace_id="" if trace is None else trace[0],
                span_id="" if trace is None else trace[1],
                time={"seconds": seconds, "nanos": nanos},
                source=source.fields,
                **{payload.KIND: payload.fields()},
            )
        except Exception:  # a payload that cannot be written loses its event, never the batch or the emitter
            _log.exception("event_unwritable", kind=payload.KIND, payload=type(payload).__name__)
            del events[len(ids) :]
            continue
        ids.append(event_id)


async def encode_events(records: Sequence[PendingEvent], chunk: int = BUILD_CHUNK) -> EncodedBatch:
    """Build ``records`` into one ``EventBatch`` (fresh event ids, in order) and serialize it once.

    A record whose payload cannot be written is logged and left out (the batch's ``events`` says
    how many went in). Writes ``chunk`` events at a time and yields to the event loop between chunks, so building a
    large batch never holds up the calls being served for long. (Not in a thread: building runs
    Python code under the GIL, and a second thread would only add switching delays to every call.)
    """
    batch = events_pb2.EventBatch()
    ids: list[str] = []
    for start in range(0, len(records), chunk):
        if start:
            await asyncio.sleep(0)
        _write(batch.events, records[start : start + chunk], ids)
    return EncodedBatch(batch_id(ids), batch.SerializeToString(), len(ids))


class EventEmitter:
    """Records events and sends them in batches in the background (see the module docstring)."""

    def __init__(
        self,
        sink: EventSink,
        settings: EventSettings,
        metrics: Metrics,
        *,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._sink = sink
        self._settings = settings
        self._max_backoff_s = max_backoff_s
        self._buffer: deque[PendingEvent] = deque()
        self._batch: EncodedBatch | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._emitted = 0
        self._dropped = 0
        metrics.counter_function("events_emitted", "Events handed to the emitter.", lambda: self._emitted)
        metrics.counter_function(
            "events_dropped",
            "Events dropped because the emitter's buffer was full or the event could not be written.",
            lambda: self._dropped,
        )
        self._sent = metrics.counter("events_sent", "Events delivered to the sink.")
        self._failures = metrics.counter("events_send_failures", "Batches the sink failed to take (retried).")
        metrics.gauge("events_buffered", "Events waiting in the emitter's buffer.").set_function(lambda: self.buffered)

    @property
    def buffered(self) -> int:
        """Events waiting to be sent (the batch being sent included)."""
        return len(self._buffer) + (self._batch.events if self._batch is not None else 0)

    def emit(self, source: EventSource, payload: EventPayload) -> bool:
        """Record ``payload`` with the time, the current request id and trace, without blocking.

        False (and a counted drop) when the buffer is full or the emitter is stopping.
        """
        self._emitted += 1
        buffer = self._buffer
        if self._closing or len(buffer) >= self._settings.buffer_size:
            self._dropped += 1
            return False
        call = ctx.current()
        if call is None:
            buffer.append((source, payload, "", time.time_ns(), None))
        else:
            trace = None if call.tracing is None else current_ids()
            buffer.append((source, payload, call.request_id, time.time_ns(), trace))
        if len(buffer) == self._settings.batch_size:
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
            _log.warning("event_emitter_stop_timeout", unsent=self.buffered)
            await cancel_and_wait(self._task)
        self._task = None

    async def _wait(self) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._settings.flush_interval_s)

    async def _run(self) -> None:
        while True:
            if self._batch is None:
                if not self._buffer:
                    if self._closing:
                        return
                    await self._wait()
                    continue
                if len(self._buffer) < self._settings.batch_size and not self._closing:
                    await self._wait()
                size = min(self._settings.batch_size, len(self._buffer))
                buffer = self._buffer
                self._batch = await encode_events([buffer.popleft() for _ in range(size)])
                self._dropped += size - self._batch.events
                if not self._batch.events:
                    self._batch = None
                    continue
            batch = self._batch
            try:
                await retry(
                    functools.partial(self._sink.send, batch),
                    Backoff(0.05, self._max_backoff_s),
                    on_failure=functools.partial(self._send_failed, batch),
                )
            except Exception:  # stopping while the transport is down: the batch stays unsent
                return
            self._sent.inc(batch.events)
            self._batch = None

    def _send_failed(self, batch: EncodedBatch, exc: Exception, delay_s: float) -> None:
        """The transport is down: ``batch`` is kept as it is and sent again after ``delay_s``, unless stopping."""
        self._failures.inc()
        _log.warning("event_send_failed", error=str(exc), batch=batch.events, retry_in_s=delay_s)
        if self._closing:
            raise exc


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "little"))


def new_event_id() -> str:
    """A unique event id: 64 random bits drawn once per process, then a 64-bit counter (32 hex digits).

    As unique as a random UUID across processes, and cheap enough to stamp every served request.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


class UnitHasher:
    """The keyed hash of unit ids (HMAC-SHA256, first 16 bytes as hex): what events carry instead of them.

    The key is encoded and the HMAC keyed once; each hash copies that keyed state.
    """

    __slots__ = ("_keyed",)

    def __init__(self, key: str) -> None:
        self._keyed = hmac.new(key.encode(), digestmod=hashlib.sha256)

    def __call__(self, unit_id: str) -> str:
        """The hash of ``unit_id``."""
        keyed = self._keyed.copy()
        keyed.update(unit_id.encode())
        return keyed.hexdigest()[:32]


def hash_unit_id(unit_id: str, key: str) -> str:
    """The keyed hash of one unit id (see :class:`UnitHasher`, which serving code keeps per key)."""
    return UnitHasher(key)(unit_id)


def batch_id(event_ids: Iterable[str]) -> str:
    """The id of a batch, derived from its event ids in order (see ``EventBatch`` in events.proto)."""
    text = "\n".join(event_ids)
    return hashlib.blake2b(f"{text}\n".encode() if text else b"", digest_size=16).hexdigest()


def encode_batch(events: Sequence[events_pb2.Event]) -> bytes:
    """Built ``events`` as one serialized ``EventBatch`` (the monitor's own RPC ingest)."""
    return events_pb2.EventBatch(events=events).SerializeToString()  # type: ignore[no-any-return]


def decode_batch(payload: bytes) -> list[events_pb2.Event]:
    """The events of a serialized ``EventBatch``."""
    return list(events_pb2.EventBatch.FromString(payload).events)


# --- sinks ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestRpc:
    """The unary RPC the ``grpc`` transport delivers batches to: the monitor's ``ReportEvents``.

    The chassis knows no service's contract; the service that emits names the RPC (its generated stub,
    the method, and the request message's ``FromString``). The request must carry the events as field 1,
    as ``EventBatch`` does, so that a batch's bytes are a request; the receiver must de-duplicate by
    event id, since a batch may be delivered again.
    """

    stub: Callable[[grpc.aio.Channel], Any]
    """The receiving service's generated stub class."""
    method: str
    """The method that takes a batch (idempotent: retried like a read)."""
    request: Callable[[bytes], Any]
    """Parses a serialized ``EventBatch`` as the method's request message."""


class MonitorSink:
    """Delivers batches through an :class:`IngestRpc` (idempotent: the monitor de-duplicates by id).

    ``client`` is a :class:`ServiceClient` for the monitor built with ``ingest.stub`` and
    ``(ingest.method,)`` as its idempotent methods.
    """

    def __init__(self, client: ServiceClient, ingest: IngestRpc) -> None:
        self._client = client
        self._ingest = ingest

    async def send(self, batch: EncodedBatch) -> None:
        """Report ``batch``; raises (and the emitter retries) when the monitor cannot take it."""
        await self._client.call(self._ingest.method, self._ingest.request(batch.payload))


_SUBJECT_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def stream_config(settings: EventSettings) -> js_api.StreamConfig:
    """The JetStream stream every emitter publishes to and the monitor consumes from."""
    return js_api.StreamConfig(
        name=settings.nats_stream,
        subjects=[f"{settings.nats_subject}.>"],
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_age=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        duplicate_window=settings.stream_duplicate_window_s,
    )


async def ensure_stream(js: Any, settings: EventSettings) -> None:
    """Create the events stream, or bring an existing one to ``settings`` (idempotent)."""
    await jetstream.ensure_stream(js, stream_config(settings))


async def connect_nats(settings: EventSettings, name: str) -> Any:
    """A NATS connection that reconnects by itself, or ConnectionError within the connect timeout."""
    return await jetstream.connect(settings.nats_url, name, settings.nats_connect_timeout_s)


class NatsSink:
    """Publishes each batch to JetStream and returns once JetStream has stored it (its PubAck)."""

    def __init__(self, settings: EventSettings, service: str) -> None:
        self._settings = settings
        self._service = service
        self.subject = f"{settings.nats_subject}.{_SUBJECT_SAFE.sub('_', service)}"
        self._nc: Any = None
        self._js: Any = None
        self._connecting = asyncio.Lock()

    async def _jetstream(self) -> Any:
        async with self._connecting:
            if self._nc is not None and self._nc.is_closed:
                self._nc = self._js = None
            if self._js is None:
                nc = await connect_nats(self._settings, f"{self._service}-events")
                js = nc.jetstream(timeout=self._settings.nats_publish_timeout_s)
                try:
                    await ensure_stream(js, self._settings)
                except Exception:
                    await nc.close()
                    raise
                self._nc, self._js = nc, js
            return self._js

    async def send(self, batch: EncodedBatch) -> None:
        """Publish ``batch`` as one message; raises unless JetStream confirmed it."""
        js = await self._jetstream()
        await js.publish(
            self.subject,
            batch.payload,
            timeout=self._settings.nats_publish_timeout_s,
            headers={"Nats-Msg-Id": batch.id},
        )

    async def close(self) -> None:
        """Close the connection (what was confirmed is stored; nothing else is pending)."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()


# --- the disk spool --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    path: Path
    events: int
    size: int


class DiskSpool:
    """Batches waiting on disk, oldest first: one file per batch, written atomically.

    ``root`` holds one numbered slot directory per live process of a service; each process locks
    the first free slot, so two instances never share a spool and a restarted instance takes its
    slot back and replays what it left there. The spool refuses a batch once ``max_bytes`` is used.
    """

    def __init__(self, root: Path, *, max_bytes: int, fsync: bool = True) -> None:
        self._root = root
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._records: deque[_Record] = deque()
        self._bytes = 0
        self._events = 0
        self._seq = 0
        self._lock_fd: int | None = None
        self.directory: Path | None = None

    def open(self) -> None:
        """Lock a slot and load what an earlier process left in it."""
        self._root.mkdir(parents=True, exist_ok=True)
        slot = 0
        while True:
            directory = self._root / str(slot)
            directory.mkdir(exist_ok=True)
            fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                slot += 1
                continue
            self._lock_fd, self.directory = fd, directory
            break
        for leftover in directory.glob("*.tmp"):
            leftover.unlink()
        for path in sorted(directory.glob("*.batch")):
            seq, events = (int(part) for part in path.stem.split("-"))
            record = _Record(path, events, path.stat().st_size)
            self._records.append(record)
            self._bytes += record.size
            self._events += record.events
            self._seq = max(self._seq, seq + 1)

    def close(self) -> None:
        """Release the slot (the files stay for the next process)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def batches(self) -> int:
        """Batches waiting."""
        return len(self._records)

    @property
    def events(self) -> int:
        """Events waiting."""
        return self._events

    @property
    def size_bytes(self) -> int:
        """Bytes used."""
        return self._bytes

    def append(self, payload: bytes, events: int) -> bool:
        """Write one batch behind the others; False (nothing written) when the spool is full."""
        if self.directory is None:
            raise RuntimeError("spool not opened")
        if self._bytes + len(payload) > self._max_bytes:
            return False
        path = self.directory / f"{self._seq:016d}-{events}.batch"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            out.write(payload)
            if self._fsync:
                out.flush()
                os.fsync(out.fileno())
        tmp.rename(path)
        self._seq += 1
        self._records.append(_Record(path, events, len(payload)))
        self._bytes += len(payload)
        self._events += events
        return True

    def peek(self) -> tuple[Path, bytes] | None:
        """The oldest batch (its file and contents), or None when the spool is empty."""
        if not self._records:
            return None
        record = self._records[0]
        return record.path, record.path.read_bytes()

    def remove(self, path: Path) -> None:
        """Forget the oldest batch once delivered (``path`` from :meth:`peek`)."""
        record = self._records[0]
        if record.path != path:
            raise RuntimeError(f"{path} is not the oldest spooled batch")
        path.unlink(missing_ok=True)
        self._records.popleft()
        self._bytes -= record.size
        self._events -= record.events


class SpoolingSink:
    """Sends through ``inner``; while it fails, batches wait in ``spool`` and are replayed in order."""

    def __init__(self, inner: EventSink, spool: DiskSpool, metrics: Metrics, *, max_backoff_s: float = 5.0) -> None:
        self._inner = inner
        self._spool = spool
        self._max_backoff_s = max_backoff_s
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._replayed = metrics.counter("events_replayed", "Spooled events delivered once the transport was back.")
        self._spool_dropped = metrics.counter(
            "events_spool_dropped", "Events dropped because the transport was down and the spool was full."
        )
        metrics.gauge("events_spooled", "Events waiting in the disk spool.").set_function(lambda: spool.events)
        metrics.gauge("events_spool_bytes", "Bytes used by the disk spool.").set_function(lambda: spool.size_bytes)

    @property
    def spooled(self) -> int:
        """Events waiting in the spool."""
        return self._spool.events

    def start(self) -> None:
        """Open the spool and start replaying what it holds (needs a running event loop)."""
        if self._task is None:
            self._spool.open()
            self._task = asyncio.get_running_loop().create_task(self._replay(), name="event-spool-replay")
            self._wakeup.set()

    async def send(self, batch: EncodedBatch) -> None:
        """Deliver now when nothing waits and the transport works; otherwise spool behind the rest.

        Raises only when the spool cannot be written (the emitter then keeps and retries the batch).
        """
        if self._spool.batches == 0:
            try:
                await self._inner.send(batch)
                return
            except Exception as exc:
                _log.warning("event_transport_down_spooling", error=str(exc), batch=batch.events)
        if await asyncio.to_thread(self._spool.append, batch.payload, batch.events):
            self._wakeup.set()
            return
        self._spool_dropped.inc(batch.events)
        _log.error("event_spool_full", dropped=batch.events, spool_bytes=self._spool.size_bytes)

    async def _replay(self) -> None:
        while True:
            oldest = await asyncio.to_thread(self._spool.peek)
            if oldest is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            path, payload = oldest
            batch = EncodedBatch.from_payload(payload)
            send = functools.partial(self._inner.send, batch)
            await retry(send, Backoff(0.05, self._max_backoff_s), on_failure=self._replay_waiting)
            await asyncio.to_thread(self._spool.remove, path)
            self._replayed.inc(batch.events)
            if self._spool.batches == 0:
                _log.info("event_spool_drained")

    def _replay_waiting(self, exc: Exception, delay_s: float) -> None:
        _log.info("event_spool_replay_waiting", error=str(exc), spooled=self._spool.events, retry_in_s=delay_s)

    async def close(self) -> None:
        """Stop replaying (what is left stays on disk for the next start) and close the transport."""
        await cancel_and_wait(self._task)
        self._task = None
        self._spool.close()
        close = getattr(self._inner, "close", None)
        if close is not None:
            await close()


def open_event_sink(
    settings: EventSettings,
    service: str,
    metrics: Metrics,
    monitor_sink: Callable[[], EventSink],
) -> EventSink:
    """The sink ``settings`` ask for (NATS or the monitor's RPC, spooled when ``spool_dir`` is set), started.

    ``monitor_sink`` builds the ``grpc`` transport's sink (a :class:`MonitorSink` for the monitor's
    :class:`IngestRpc`); it is called only for that transport. A sink with a ``close()`` coroutine
    must be closed after the emitter stops.
    """
    inner: EventSink = NatsSink(settings, service) if settings.transport == "nats" else monitor_sink()
    if settings.spool_dir is None:
        return inner
    root = settings.spool_dir / _SUBJECT_SAFE.sub("_", service)
    spool = DiskSpool(root, max_bytes=settings.spool_max_bytes, fsync=settings.spool_fsync)
    sink = SpoolingSink(inner, spool, metrics)
    sink.start()
    return sink
