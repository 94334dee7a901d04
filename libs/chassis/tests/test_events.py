"""The event emitter never blocks the caller, batches, counts drops and keeps order across sink failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from infermesh_chassis.events import EncodedBatch, EventEmitter, EventSource, decode_batch
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import EventSettings

SOURCE = EventSource("emitter-test", "i-1")


class Numbered:
    """A feedback event that carries the number ``i`` (as its target request id)."""

    __slots__ = ("i",)
    KIND: ClassVar[str] = "feedback"

    def __init__(self, i: int) -> None:
        self.i = i

    def fields(self) -> Mapping[str, Any]:
        return {"target_request_id": str(self.i)}


class Emitter(EventEmitter):
    """The emitter, emitting numbers."""

    def emit(self, i: int) -> bool:  # type: ignore[override]
        return super().emit(SOURCE, Numbered(i))


class RecordingSink:
    """Takes batches (as the numbers their events carry); fails while ``down``; can be slow."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.down = False
        self.delay_s = delay_s
        self.attempts = 0

    async def send(self, batch: EncodedBatch) -> None:
        self.attempts += 1
        await asyncio.sleep(self.delay_s)
        if self.down:
            raise ConnectionError("queue unreachable")
        self.batches.append([int(e.feedback.target_request_id) for e in decode_batch(batch.payload)])

    @property
    def events(self) -> list[int]:
        return [e for batch in self.batches for e in batch]


def _metric(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(f"infermesh_emitter_test_{name}")
    return 0.0 if value is None else value


async def _until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_batches_respect_size_and_interval():
    sink = RecordingSink()
    emitter = Emitter(sink, EventSettings(batch_size=100, flush_interval_s=0.05), Metrics("emitter-test"))
    emitter.start()
    for i in range(250):
        emitter.emit(i)
    await _until(lambda: len(sink.events) == 250)
    assert all(len(batch) <= 100 for batch in sink.batches)
    assert sink.events == list(range(250))
    emitter.emit(999)
    began = time.monotonic()
    await _until(lambda: sink.events[-1:] == [999])
    assert time.monotonic() - began < 1.0
    await emitter.stop()


async def test_emit_never_blocks_and_counts_drops_when_full():
    sink = RecordingSink(delay_s=10)
    metrics = Metrics("emitter-test")
    emitter = Emitter(sink, EventSettings(buffer_size=1000, batch_size=100, flush_interval_s=0.01), metrics)
    emitter.start()
    began = time.perf_counter()
    accepted = sum(emitter.emit(i) for i in range(20_000))
    per_emit_us = (time.perf_counter() - began) / 20_000 * 1e6
    assert per_emit_us < 50
    assert 1000 <= accepted <= 1100
    assert _metric(metrics, "events_dropped_total") == 20_000 - accepted
    assert _metric(metrics, "events_emitted_total") == 20_000
    await emitter.stop(timeout_s=0.1)


async def test_sink_outage_keeps_events_in_order():
    sink = RecordingSink()
    metrics = Metrics("emitter-test")
    emitter = Emitter(sink, EventSettings(batch_size=10, flush_interval_s=0.01), metrics, max_backoff_s=0.05)
    emitter.start()
    sink.down = True
    for i in range(35):
        emitter.emit(i)
    await _until(lambda: sink.attempts >= 3)
    assert sink.events == []
    sink.down = False
    for i in range(35, 50):
        emitter.emit(i)
    await _until(lambda: len(sink.events) == 50)
    assert sink.events == list(range(50))
    assert _metric(metrics, "events_send_failures_total") == sink.attempts - len(sink.batches) >= 2
    assert _metric(metrics, "events_sent_total") == 50
    await emitter.stop()


async def test_stop_flushes_what_is_buffered():
    sink = RecordingSink()
    emitter = Emitter(sink, EventSettings(batch_size=1000, flush_interval_s=60), Metrics("emitter-test"))
    emitter.start()
    for i in range(10):
        emitter.emit(i)
    await emitter.stop()
    assert sink.events == list(range(10))
    assert not emitter.emit(11)


class Unwritable:
    """A payload whose fields cannot be written (a bug in a service's payload)."""

    __slots__ = ()
    KIND: ClassVar[str] = "feedback"

    def fields(self) -> Mapping[str, Any]:
        return {"target_request_id": 5}  # not a string


async def test_an_unwritable_event_is_dropped_and_counted_and_the_rest_still_go():
    sink = RecordingSink()
    metrics = Metrics("emitter-test")
    emitter = Emitter(sink, EventSettings(batch_size=10, flush_interval_s=0.01), metrics)
    emitter.start()
    for i in range(5):
        emitter.emit(i)
    EventEmitter.emit(emitter, SOURCE, Unwritable())
    for i in range(5, 12):
        emitter.emit(i)
    await _until(lambda: len(sink.events) == 12)
    assert sink.events == list(range(12))
    assert _metric(metrics, "events_dropped_total") == 1
    assert _metric(metrics, "events_sent_total") == 12
    await emitter.stop()
