"""The disk spool keeps batches in order across failures and restarts; retried batches keep their id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from infermesh.common.v1 import events_pb2
from infermesh_chassis.events import (
    DiskSpool,
    EncodedBatch,
    EventEmitter,
    EventSource,
    IngestRpc,
    MonitorSink,
    SpoolingSink,
    UnitHasher,
    batch_id,
    decode_batch,
    encode_events,
    hash_unit_id,
    open_event_sink,
)
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import EventSettings

SOURCE = EventSource("spool-test", "i-1")


class Feedback:
    """A feedback event for request ``r<i>``."""

    __slots__ = ("i",)
    KIND: ClassVar[str] = "feedback"

    def __init__(self, i: int) -> None:
        self.i = i

    def fields(self) -> Mapping[str, Any]:
        return {"target_request_id": f"r{self.i}"}


def _emit(emitter: EventEmitter, i: int) -> None:
    emitter.emit(SOURCE, Feedback(i))


async def _batch(*numbers: int) -> EncodedBatch:
    """A batch as the emitter builds it, of feedback events for ``r<number>``."""
    return await encode_events([(SOURCE, Feedback(i), "", time.time_ns(), None) for i in numbers])


def _ids(events: Sequence[events_pb2.Event]) -> list[str]:
    return [e.feedback.target_request_id for e in events]


class FlakySink:
    """Records batches; fails while ``down``."""

    def __init__(self) -> None:
        self.batches: list[list[events_pb2.Event]] = []
        self.down = False
        self.attempts: list[str] = []
        self.closed = False

    async def send(self, batch: EncodedBatch) -> None:
        self.attempts.append(batch.id)
        if self.down:
            raise ConnectionError("queue unreachable")
        self.batches.append(decode_batch(batch.payload))

    async def close(self) -> None:
        self.closed = True

    @property
    def delivered(self) -> list[str]:
        return [i for batch in self.batches for i in _ids(batch)]


async def _until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_spool_keeps_order_survives_reopen_and_refuses_when_full(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10_000, fsync=True)
    spool.open()
    payloads = [(await _batch(i)).payload for i in range(3)]
    for payload in payloads:
        assert spool.append(payload, 1)
    assert (spool.batches, spool.events) == (3, 3)
    spool.close()

    reopened = DiskSpool(tmp_path, max_bytes=10_000)
    reopened.open()
    assert reopened.directory == tmp_path / "0"
    assert (reopened.batches, reopened.size_bytes) == (3, sum(map(len, payloads)))
    oldest = reopened.peek()
    assert oldest is not None and oldest[1] == payloads[0]
    with pytest.raises(RuntimeError):
        reopened.remove(tmp_path / "0" / "elsewhere.batch")
    reopened.remove(oldest[0])
    assert reopened.append((await _batch(3)).payload, 1)
    order = []
    while (item := reopened.peek()) is not None:
        order.extend(_ids(decode_batch(item[1])))
        reopened.remove(item[0])
    assert order == ["r1", "r2", "r3"]
    assert not reopened.append(b"x" * 10_001, 1)

    second = DiskSpool(tmp_path, max_bytes=10_000)
    second.open()
    assert second.directory == tmp_path / "1", "a live process keeps its slot"
    second.close()
    reopened.close()


async def test_batches_wait_on_disk_while_the_transport_is_down_and_replay_in_order(tmp_path: Path) -> None:
    inner = FlakySink()
    metrics = Metrics("spool-test")
    sink = SpoolingSink(inner, DiskSpool(tmp_path, max_bytes=1 << 20, fsync=False), metrics, max_backoff_s=0.05)
    sink.start()
    emitter = EventEmitter(sink, EventSettings(batch_size=10, flush_interval_s=0.01), metrics)
    emitter.start()
    for i in range(20):
        _emit(emitter, i)
    await _until(lambda: len(inner.delivered) == 20)
    inner.down = True
    for i in range(20, 60):
        _emit(emitter, i)
    await _until(lambda: sink.spooled == 40)
    assert metrics.registry.get_sample_value("infermesh_spool_test_events_spooled") == 40
    inner.down = False
    for i in range(60, 70):
        _emit(emitter, i)
    await _until(lambda: len(inner.delivered) == 70)
    assert inner.delivered == [f"r{i}" for i in range(70)]
    assert sink.spooled == 0
    assert metrics.registry.get_sample_value("infermesh_spool_test_events_replayed_total") >= 40
    assert metrics.registry.get_sample_value("infermesh_spool_test_events_dropped_total") == 0
    await emitter.stop()
    await sink.close()
    assert inner.closed


async def test_what_a_stopped_process_spooled_is_replayed_by_the_next(tmp_path: Path) -> None:
    down = FlakySink()
    down.down = True
    first = SpoolingSink(down, DiskSpool(tmp_path, max_bytes=1 << 20, fsync=False), Metrics("first"))
    first.start()
    for i in range(3):
        await first.send(await _batch(2 * i, 2 * i + 1))
    await first.close()

    up = FlakySink()
    second = SpoolingSink(up, DiskSpool(tmp_path, max_bytes=1 << 20, fsync=False), Metrics("second"))
    second.start()
    await second.send(await _batch(6))
    await _until(lambda: len(up.delivered) == 7)
    assert up.delivered == [f"r{i}" for i in range(7)]
    await second.close()


async def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    inner = FlakySink()
    inner.down = True
    metrics = Metrics("full")
    sink = SpoolingSink(inner, DiskSpool(tmp_path, max_bytes=600, fsync=False), metrics, max_backoff_s=0.05)
    sink.start()
    for i in range(20):
        await sink.send(await _batch(i))
    dropped = metrics.registry.get_sample_value("infermesh_full_events_spool_dropped_total")
    assert dropped and dropped + sink.spooled == 20
    await sink.close()


async def test_a_failed_batch_is_retried_unchanged() -> None:
    inner = FlakySink()
    inner.down = True
    emitter = EventEmitter(
        inner, EventSettings(batch_size=5, flush_interval_s=0.01), Metrics("retry"), max_backoff_s=0.02
    )
    emitter.start()
    for i in range(3):
        _emit(emitter, i)
    await _until(lambda: len(inner.attempts) >= 2)
    for i in range(3, 8):
        _emit(emitter, i)
    await asyncio.sleep(0.05)
    inner.down = False
    await _until(lambda: len(inner.delivered) == 8)
    assert inner.attempts[0] == inner.attempts[1], "the retry sent another batch"
    first_batch = inner.batches[0]
    assert _ids(first_batch) == ["r0", "r1", "r2"], "the failed batch was not re-cut with newer events"
    assert inner.attempts[0] == batch_id(e.event_id for e in first_batch)
    assert inner.delivered == [f"r{i}" for i in range(8)]
    await emitter.stop()


async def test_grpc_transport_without_spool_is_the_default(tmp_path: Path) -> None:
    built: list[str] = []

    class FakeClient:
        pass

    def monitor_sink() -> MonitorSink:
        built.append("monitor")
        return MonitorSink(FakeClient(), IngestRpc(object, "Report", bytes))  # type: ignore[arg-type]

    sink = open_event_sink(EventSettings(), "svc", Metrics("default-sink"), monitor_sink)
    assert type(sink).__name__ == "MonitorSink" and built == ["monitor"]
    spooled = open_event_sink(EventSettings(spool_dir=tmp_path), "svc", Metrics("spooled-sink"), monitor_sink)
    assert isinstance(spooled, SpoolingSink)
    assert (tmp_path / "svc" / "0" / ".lock").exists()
    await spooled.close()


def test_batch_id_and_unit_hash_are_stable() -> None:
    assert batch_id(["a", "b"]) == batch_id(iter(["a", "b"])) != batch_id(["b", "a"])
    assert len(batch_id([])) == 32
    assert hash_unit_id("user-1", "k") == hash_unit_id("user-1", "k") != hash_unit_id("user-1", "other")
    assert len(hash_unit_id("user-1", "")) == 32
    hasher = UnitHasher("k")
    assert hasher("user-1") == hasher("user-1") == hash_unit_id("user-1", "k") != hasher("user-2")
