"""Ingest: validate event batches, drop duplicates, store the rest, exactly once per batch.

A batch arrives as a serialized ``EventBatch`` (a queue message, or a ReportEvents request
re-encoded). Python parses it only to read each event's id, schema version and payload kind;
the events themselves go to ClickHouse as the bytes they arrived in (see :mod:`.schema`).

De-duplication, in two layers:

- **Batches**, exactly: a batch's id is derived from its event ids (chassis ``batch_id``), so
  a retry, a spool replay or a queue redelivery carries the same id. Every stored batch is
  recorded in the ``ingested_batches`` ledger (``pending`` before its events are written,
  ``done`` after); a batch the ledger marks ``done`` is acknowledged and skipped. A batch left
  ``pending`` (the process died between writing and recording) has the rows of that insert
  deleted (by ``insert_id``) before it is stored again, so it ends up stored once.
- **Events**, within a horizon: the ids of the last ``recent_event_ids`` events are remembered,
  so the same event re-sent inside a different batch (a client re-batching its retries; the
  chassis emitter never does) is dropped too. Beyond that horizon such a duplicate is stored again
  (in the low-volume tables it collapses when ClickHouse merges parts; see :mod:`.schema`).

Calls are serialized: one insert at a time, each as large as what arrived together.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from infermesh.common.v1 import events_pb2
from infermesh_chassis.events import EVENT_SCHEMA_VERSION, batch_id
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_monitor.schema import EVENT_TABLES, ingest_settings
from infermesh_monitor.settings import IngestSettings
from infermesh_monitor.store import Store, json_rows

__all__ = ["BatchResult", "Ingestor", "RecentIds", "delimited_events"]

_log = get_logger("infermesh_monitor.ingest")

SUPPORTED_SCHEMA_VERSIONS = frozenset({EVENT_SCHEMA_VERSION})


@dataclass(slots=True)
class BatchResult:
    """What happened to one batch."""

    accepted: int = 0
    """Events newly stored."""
    duplicates: int = 0
    """Events already stored (the whole batch, or single events seen recently)."""
    rejected_event_ids: list[str] = field(default_factory=list)
    """Malformed events (no id, no payload, unknown schema version), by id."""
    malformed: bool = False
    """The batch itself could not be parsed (nothing of it was stored)."""


class RecentIds:
    """A set of the last ``capacity`` ids added (older ones are forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add_all(self, ids: Iterable[str]) -> None:
        """Remember ``ids`` (forgetting the oldest beyond the capacity)."""
        if self._capacity == 0:
            return
        for item in ids:
            if item not in self._ids:
                self._ids.add(item)
                self._order.append(item)
        while len(self._order) > self._capacity:
            self._ids.discard(self._order.popleft())


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    value, shift = byte & 0x7F, 7
    while byte & 0x80:
        pos += 1
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        shift += 7
    return value, pos + 1


def delimited_events(payload: bytes) -> list[bytes]:
    """The events of a serialized ``EventBatch``, each as varint length + message bytes.

    That is the length-delimited stream ClickHouse's ``Protobuf`` format reads, cut out of the
    batch without decoding the events (field 1 entries; any other field is skipped).
    """
    out: list[bytes] = []
    pos, end = 0, len(payload)
    while pos < end:
        key = payload[pos]
        pos += 1
        if key & 0x80:
            key, pos = _varint(payload, pos - 1)
        wire = key & 7
        if wire == 2:
            start = pos
            length, pos = _varint(payload, pos)
            if key >> 3 == 1:
                out.append(payload[start : pos + length])
            pos += length
        elif wire == 0:
            _, pos = _varint(payload, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
    if pos != end:
        raise DecodeError("truncated batch")
    return out


@dataclass(slots=True)
class _Parsed:
    batch_id: str
    frames: list[bytes]
    ids: list[str]
    kinds: list[str | None]
    result: BatchResult


def _parse(payload: bytes) -> _Parsed:
    try:
        events = events_pb2.EventBatch.FromString(payload).events
        frames = delimited_events(payload)
    except (DecodeError, IndexError):
        return _Parsed("", [], [], [], BatchResult(malformed=True))
    ids = [event.event_id for event in events]
    kinds = [
        event.WhichOneof("payload") if event.event_id and event.schema_version in SUPPORTED_SCHEMA_VERSIONS else None
        for event in events
    ]
    result = BatchResult(rejected_event_ids=[i for i, kind in zip(ids, kinds, strict=True) if kind is None])
    return _Parsed(batch_id(ids), frames, ids, kinds, result)


class Ingestor:
    """Stores event batches exactly once (see the module docstring)."""

    def __init__(self, store: Store, settings: IngestSettings, metrics: Metrics) -> None:
        self._store = store
        self._settings = settings
        self._insert_settings = ingest_settings(store)
        self._lock = asyncio.Lock()
        self._recent_events = RecentIds(settings.recent_event_ids)
        self._recent_batches = RecentIds(max(10_000, settings.recent_event_ids // 10))
        self._accepted = metrics.counter("events_ingested", "Events newly stored.")
        self._duplicates = metrics.counter("events_duplicate", "Events dropped as already stored.")
        self._rejected = metrics.counter(
            "events_rejected", "Malformed events refused (no id, no payload, bad version)."
        )
        self._malformed = metrics.counter("batches_malformed", "Batches that could not be parsed at all.")
        self._inserts = metrics.counter("ingest_inserts", "Inserts into storage (each holds one or more batches).")
        self._insert_latency = metrics.histogram(
            "ingest_insert_latency_seconds",
            "Time to store one insert.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._last_event_time = metrics.gauge("ingest_last_insert_timestamp_seconds", "When the last insert finished.")

    async def ingest(self, payloads: Sequence[bytes]) -> list[BatchResult]:
        """Store the batches ``payloads`` (serialized ``EventBatch``); one result per batch, in order.

        Raises a StoreError when storage fails; nothing is then acknowledged, and the same
        batches sent again are stored exactly once.
        """
        parsed = [_parse(payload) for payload in payloads]
        async with self._lock:
            await self._store_new(parsed)
        for item in parsed:
            self._rejected.inc(len(item.result.rejected_event_ids))
            self._duplicates.inc(item.result.duplicates)
            self._accepted.inc(item.result.accepted)
            if item.result.malformed:
                self._malformed.inc()
        return [item.result for item in parsed]

    async def _store_new(self, parsed: list[_Parsed]) -> None:
        candidates = [p for p in parsed if not p.result.malformed and p.batch_id not in self._recent_batches]
        for p in parsed:
            if not p.result.malformed and p.batch_id in self._recent_batches:
                p.result.duplicates = len(p.ids) - len(p.result.rejected_event_ids)
        done, pending_inserts = await self._ledger([p.batch_id for p in candidates])
        if pending_inserts:
            await self._undo(pending_inserts)
        fresh: list[_Parsed] = []
        fresh_ids: set[str] = set()
        by_kind: dict[str, list[bytes]] = {}
        seen_now: set[str] = set()
        for p in candidates:
            if p.batch_id in done or p.batch_id in fresh_ids:
                p.result.duplicates = len(p.ids) - len(p.result.rejected_event_ids)
                continue
            for frame, event_id, kind in zip(p.frames, p.ids, p.kinds, strict=True):
                if kind is None:
                    continue
                if event_id in self._recent_events or event_id in seen_now:
                    p.result.duplicates += 1
                    continue
                seen_now.add(event_id)
                by_kind.setdefault(kind, []).append(frame)
                p.result.accepted += 1
            fresh.append(p)
            fresh_ids.add(p.batch_id)
        if fresh:
            await self._write(fresh, by_kind)
        self._recent_batches.add_all(p.batch_id for p in parsed if not p.result.malformed)
        self._recent_events.add_all(seen_now)

    async def _ledger(self, batch_ids: list[str]) -> tuple[set[str], list[str]]:
        """Batches already stored, and inserts left ``pending`` by a crash that hold some of these batches."""
        if not batch_ids:
            return set(), []
        rows = await self._store.rows(
            "SELECT batch_id, max(state) = 'done', groupArray(insert_id) FROM ingested_batches "
            "WHERE batch_id IN {ids:Array(String)} GROUP BY batch_id",
            {"ids": batch_ids},
        )
        done = {row[0] for row in rows if row[1]}
        pending = sorted({insert_id for row in rows if not row[1] for insert_id in row[2]})
        return done, pending

    async def _undo(self, insert_ids: list[str]) -> None:
        _log.warning("ingest_undo_partial_insert", insert_ids=insert_ids)
        for table in EVENT_TABLES:
            await self._store.command(
                f"DELETE FROM {table} WHERE insert_id IN {{ids:Array(String)}}", {"ids": insert_ids}
            )

    async def _write(self, fresh: list[_Parsed], by_kind: dict[str, list[bytes]]) -> None:
        insert_id = uuid.uuid4().hex
        ledger = [{"batch_id": p.batch_id, "insert_id": insert_id, "events": p.result.accepted} for p in fresh]
        began = time.perf_counter()
        await self._store.insert(
            "ingested_batches", json_rows([{**row, "state": "pending"} for row in ledger]), "JSONEachRow"
        )
        for kind, frames in by_kind.items():
            await self._store.insert(
                f"events_in_{kind}",
                b"".join(frames),
                "Protobuf",
                {**self._insert_settings, "insert_deduplication_token": insert_id},
            )
        await self._store.insert(
            "ingested_batches", json_rows([{**row, "state": "done"} for row in ledger]), "JSONEachRow"
        )
        self._insert_latency.observe(time.perf_counter() - began)
        self._inserts.inc()
        self._last_event_time.set_to_current_time()
